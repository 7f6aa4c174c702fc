"""Our Flax U-Net vs the PyTorch reference architecture on CPU: forward and train step.

Same process, same weights (the PyTorch net's state dict converted with our converter), same
input (default 2×1×32×128×128), both warm (jit compiled / one untimed PyTorch call first),
run alternately; ratios are ours / torch time (< 1 means we are faster).

  forward     eval-mode batch norm, logits (ours: jitted `UNet3D.apply`; torch: no_grad)
  train step  train-mode batch norm, Dice+CE loss on the logits, gradients of every
              parameter (ours: jitted value_and_grad incl. the batch-stat update; torch:
              loss.backward()); no optimiser update on either side.

Threads: XLA:CPU sizes its intra-op pool to the visible cores; torch.set_num_threads is set
to the same number (printed) so the comparison is like for like.

Convolution implementations: `--impl` takes the library's `UNet3D(conv_impl=...)` values
("xla", 3-D convs, what GPUs/TPUs run; "conv2d", what "auto" picks on CPU) and the experimental formulations
of benchmarks/conv_formulations.py, which are swapped into the unchanged model through
`nn.intercept_methods`. Default: xla,conv2d.

`--investigate` adds per-layer tables (every formulation, forward and gradient), whole-network
runs of the main formulations, matmul precision and bf16, and XLA_FLAGS experiments (each in
a subprocess, because XLA_FLAGS is read once per process; these run on the --quick shape to
keep the time bounded). It takes far longer than the default run (about an hour when the
machine is shared).

    python benchmarks/bench_unet.py                 # default run (~10 min: 7 rounds of 3 peers)
    python benchmarks/bench_unet.py --quick         # smoke run (1×1×32×64×64)
    python benchmarks/bench_unet.py --investigate   # the studies above
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from _common import (  # first: puts the repo on sys.path for `tests`
    emit,
    emit_load_at_end,
    emit_machine,
    interleaved,
    median,
    paired_ratio,
    ratio_spread,
)
from conv_formulations import FORMULATIONS, use_formulation

from syncas_jax.losses.dice_ce import dice_ce_loss
from syncas_jax.nets.reference import convert_reference_state
from syncas_jax.nets.unet import CONV_IMPLS, UNet3D
from tests import torch_reference as ref

THREADS = len(os.sched_getaffinity(0))
WARMUP_ROUNDS = 1  # one untimed round of every peer after the checks, so no timed call meets a cold allocator
DEFAULT_REPEATS = 7  # timed rounds: single rounds vary ±5 % on an idle 2-core machine, so 2 could not tell 1.0 from 1.1


# ------------------------------------------------------------------ setup


def make_problem(shape, seed=0):
    """Torch reference net, our converted variables, input and target (channels-first and -last)."""
    torch.manual_seed(seed)
    net = ref.ReferenceUNet()
    ref.randomize_batchnorm_stats(net, torch.Generator().manual_seed(seed))
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    variables = convert_reference_state(state, None)
    variables = {"params": variables["params"]["unet"], "batch_stats": variables["batch_stats"]["unet"]}
    variables = jax.tree.map(jnp.asarray, variables)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)  # (N, 1, D, H, W)
    target = (rng.random((shape[0], *shape[2:])) < 0.05).astype(np.int64)
    return {
        "net": net,
        "torch_state": copy.deepcopy(net.state_dict()),
        "variables": variables,
        "x_t": torch.from_numpy(x),
        "y_t": torch.from_numpy(target),
        "x": jnp.asarray(np.moveaxis(x, 1, -1)),
        "y": jnp.asarray(target.astype(np.int32)),
    }


def our_functions(impl: str = "xla", dtype=jnp.float32):
    """Jitted forward and train step. `impl`: a library conv_impl or a benchmark formulation."""
    if impl in CONV_IMPLS:
        model, context = UNet3D(dtype=dtype, conv_impl=impl), contextlib.nullcontext
    else:
        model, context = UNet3D(dtype=dtype, conv_impl="xla"), functools.partial(use_formulation, impl)

    def forward(variables, x):
        with context():
            return model.apply(variables, x, train=False)[0]

    def loss_fn(params, batch_stats, x, y):
        with context():
            (logits, _), updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
        return dice_ce_loss(logits, y), updates["batch_stats"]

    def train_step(variables, x, y):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"], variables["batch_stats"], x, y
        )
        return loss, grads, stats

    return jax.jit(forward), jax.jit(train_step)


def torch_functions(net):
    @torch.no_grad()
    def forward(x):
        net.eval()
        return net(x)[0]

    def train_step(x, y):
        net.train()
        logits, _ = net(x)
        loss = ref.dice_ce_loss_torch(logits, y)
        loss.backward()
        grads = {name: p.grad for name, p in net.named_parameters()}
        net.zero_grad(set_to_none=True)
        return loss, grads

    return forward, train_step


def block(tree):
    return jax.block_until_ready(tree)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


# ------------------------------------------------------------------ main comparison


def compare_network(problem, impls, repeats, what=("forward", "train"), prefix="", dtype=jnp.float32):
    """Time ours (each formulation in `impls`) and torch alternately; emit ratios ours/torch."""
    net = problem["net"]
    try:
        return _compare_network(problem, impls, repeats, what, prefix, dtype)
    finally:  # torch's train-mode steps moved its batch-norm running statistics: restore them
        net.load_state_dict(problem["torch_state"])


def _compare_network(problem, impls, repeats, what, prefix, dtype):
    net = problem["net"]
    t_forward, t_train = torch_functions(net)
    x, y, v = problem["x"], problem["y"], problem["variables"]
    results = {}
    with torch.no_grad():
        net.eval()
        ref_logits = np.moveaxis(net(problem["x_t"])[0].numpy(), 1, -1)
    ours = {name: our_functions(name, dtype) for name in impls}
    default_logits = None
    for name, (fwd, _) in ours.items():
        logits = np.asarray(fwd(v, x), np.float32)
        if default_logits is None:
            default_logits = logits
        emit(f"{prefix}forward_rel_err_vs_torch[{name}]", rel_err(logits, ref_logits))
        emit(f"{prefix}forward_rel_err_vs_{impls[0]}[{name}]", rel_err(logits, default_logits))
    if "forward" in what:
        runs = {name: functools.partial(lambda f: block(f(v, x)), fwd) for name, (fwd, _) in ours.items()}
        runs["torch"] = lambda: t_forward(problem["x_t"])
        # the error checks above were the warm-up
        results.update({("forward", n): r for n, r in _time_against_torch(runs, repeats, prefix, "forward").items()})
    if "train" in what:
        # gradient agreement with torch, once
        loss_t, grads_t = t_train(problem["x_t"], problem["y_t"])
        first = True
        for name, (_, step) in ours.items():
            loss, grads, _ = step(v, x, y)
            emit(f"{prefix}train_loss[{name}]", float(loss))
            if first:
                emit(f"{prefix}train_loss_torch", loss_t.item())
                g = grads["enc1_conv1"]["conv"]["kernel"]  # model.3.weight
                emit(
                    f"{prefix}grad_rel_err_vs_torch_enc1_conv1[{name}]",
                    rel_err(g, np.transpose(grads_t["model.3.weight"].numpy(), (2, 3, 4, 1, 0))),
                )
                first = False
        runs = {name: functools.partial(lambda f: block(f(v, x, y)), step) for name, (_, step) in ours.items()}
        runs["torch"] = lambda: t_train(problem["x_t"], problem["y_t"])
        results.update({("train", n): r for n, r in _time_against_torch(runs, repeats, prefix, "train_step").items()})
    return results


def _time_against_torch(runs, repeats, prefix, label):
    """Interleaved timing of `runs` (ours by name, plus "torch"); prints medians and ours/torch
    ratios (< 1: we are faster) and returns {name: ratio of medians}."""
    times = interleaved(runs, repeats, warmup=WARMUP_ROUNDS)
    torch_median = median(times["torch"])
    emit(f"{prefix}torch_{label}_median_s", torch_median)
    ratios = {}
    for name in runs:
        if name == "torch":
            continue
        ratios[name] = median(times[name]) / torch_median
        emit(f"{prefix}ours_{label}_median_s[{name}]", median(times[name]))
        emit(f"{prefix}unet_{label}_ratio_ours_over_torch[{name}]", ratios[name])
        emit(f"{prefix}unet_{label}_ratio_paired[{name}]", paired_ratio(times[name], times["torch"]))
        emit(f"{prefix}unet_{label}_ratio_paired_spread[{name}]", ratio_spread(times[name], times["torch"]))
    return ratios


# ------------------------------------------------------------------ investigation: per layer

LAYERS = [  # name, cin, cout, spatial divisor
    ("stem", 1, 16, 1),
    ("enc1_conv2", 16, 16, 1),
    ("enc2_conv2", 32, 32, 2),
    ("enc3_conv2", 64, 64, 4),
    ("enc4_conv2", 128, 128, 8),
    ("bottleneck_conv2", 256, 256, 16),
    ("dec1_conv1", 384, 128, 8),
    ("dec3_conv1", 96, 32, 2),
    ("dec4_conv1", 48, 16, 1),
]


def layer_runs(xp, k, impls, mode):
    """Callables timing one conv (reflect padding already applied) per formulation, plus torch."""
    xj, kj = jnp.asarray(xp), jnp.asarray(k)
    base = np.asarray(jax.jit(FORMULATIONS["xla"])(xj, kj))
    runs = {}
    for name in impls:
        fn = FORMULATIONS[name]
        err = rel_err(jax.jit(fn)(xj, kj), base)
        if err > 1e-5:
            emit(f"MISMATCH[{name}]", err)
        if mode == "forward":
            f = jax.jit(fn)
        else:
            f = jax.jit(jax.grad(lambda a, b, fn=fn: 0.5 * jnp.sum(fn(a, b) ** 2), argnums=(0, 1)))
        runs[name] = functools.partial(lambda f: block(f(xj, kj)), f)
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(xp, -1, 1)))
    kt = torch.from_numpy(np.ascontiguousarray(np.transpose(k, (4, 3, 0, 1, 2))))
    if mode == "forward":

        @torch.no_grad()
        def theirs():
            return F.conv3d(xt, kt)

    else:
        xt.requires_grad_(True)
        kt.requires_grad_(True)

        def theirs():
            y = F.conv3d(xt, kt)
            (0.5 * (y * y).sum()).backward()
            xt.grad = kt.grad = None

    runs["torch"] = theirs
    return runs


def per_layer(shape, impls, repeats, mode):
    """ours/torch time of each distinct conv layer shape of the U-Net, every formulation."""
    n, _, d, h, w = shape
    rng = np.random.default_rng(0)
    totals = {name: 0.0 for name in [*impls, "torch"]}
    for layer, cin, cout, div in LAYERS:
        size = (d // div, h // div, w // div)
        xp = rng.normal(size=(n, *(s + 2 for s in size), cin)).astype(np.float32)
        k = (rng.normal(size=(3, 3, 3, cin, cout)) / np.sqrt(27 * cin)).astype(np.float32)
        times = interleaved(layer_runs(xp, k, impls, mode), repeats)
        t_torch = median(times["torch"])
        cells = []
        for name in times:
            totals[name] += median(times[name])
            cells.append(f"{name} {median(times[name]) / t_torch:.2f}")
        emit(f"layer_{mode}_ratio_vs_torch[{layer} {cin}->{cout} @{'x'.join(map(str, size))}]", ", ".join(cells))
    for name in impls:
        emit(f"layers_total_{mode}_ratio_vs_torch[{name}]", totals[name] / totals["torch"])


# ------------------------------------------------------------------ investigation: XLA flags

FLAG_SETS = [
    "",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot",  # 2-D convs back on Eigen, dots on YNNPACK
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot,eltwise,reduce",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
]
FLAG_IMPLS = ("xla", "sum_d", "conv2d")
INVESTIGATE_LAYER_IMPLS = (
    "xla", "ncdhw", "ncdhw_out", "im2col", "taps27", "sum_d", "fold_d", "fold_dh", "fold_dh2d",
    "sum_d+vjp", "fold_d_eigen", "sum_d_eigen",
)  # fmt: skip
INVESTIGATE_NET_IMPLS = ("xla", "ncdhw", "sum_d", "fold_d", "fold_dh", "fold_d_eigen", "conv2d")


def flag_experiments(repeats):
    """One subprocess per XLA_FLAGS setting (on the --quick shape); each reports its own ours/torch ratios."""
    for flags in FLAG_SETS:
        env = dict(os.environ, XLA_FLAGS=flags)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--quick", "--impl", ",".join(FLAG_IMPLS)]
        proc = subprocess.run([*cmd, "--repeats", str(repeats)], env=env, capture_output=True, text=True)
        label = flags or "(none)"
        if proc.returncode != 0:
            emit(f"xla_flags[{label}]", "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("CHILD "):
                for key, value in json.loads(line[6:]).items():
                    emit(f"xla_flags[{label}] {key}", value)


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    choices = sorted(set(CONV_IMPLS) | set(FORMULATIONS))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1×1×32×64×64, 2 repeats")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed rounds per peer (default {DEFAULT_REPEATS}; --quick 2)"
    )
    parser.add_argument("--impl", default="xla,conv2d", help=f"comma list of {choices}")
    parser.add_argument("--investigate", action="store_true", help="per-layer, layout, precision and XLA flag studies")
    parser.add_argument(
        "--layers",
        default=None,
        help="only the per-layer tables (forward and gradient) for this comma list of formulations, "
        "e.g. sum_d_eigen,conv2d_library (conv2d before and after issue 18)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    shape = (1, 1, 32, 64, 64) if args.quick else (2, 1, 32, 128, 128)
    repeats = args.repeats or (2 if args.quick else DEFAULT_REPEATS)
    impls = args.impl.split(",")
    unknown = set(impls) - set(choices)
    if unknown:
        parser.error(f"unknown --impl {sorted(unknown)}; choose from {choices}")
    torch.set_num_threads(THREADS)
    problem = make_problem(shape)

    if args.child:  # one XLA_FLAGS setting: train-step and forward ratios as JSON
        with contextlib.redirect_stdout(io.StringIO()):
            res = compare_network(problem, impls, repeats)
        print("CHILD " + json.dumps({f"{k[0]}_ratio[{k[1]}]": round(v, 3) for k, v in res.items()}))
        return 0

    if args.layers:
        for mode in ("forward", "grad"):
            per_layer(shape, args.layers.split(","), repeats, mode)
        return 0
    emit_machine()
    emit("input_shape", "x".join(map(str, shape)))
    emit("torch_threads", torch.get_num_threads())
    emit("xla_cpu_threads_visible_cores", THREADS)
    emit("xla_flags", os.environ.get("XLA_FLAGS", ""))
    emit("jax_version", jax.__version__)
    emit("torch_version", torch.__version__)
    compare_network(problem, impls, repeats)

    if args.investigate:
        for mode in ("forward", "grad"):
            per_layer(shape, list(INVESTIGATE_LAYER_IMPLS), repeats, mode)
        compare_network(problem, list(INVESTIGATE_NET_IMPLS), repeats, prefix="net_")
        # jax_default_matmul_precision: XLA:CPU f32 kernels ignore it; "bfloat16" is reported, not a fair f32 peer
        for precision in ("highest", "bfloat16"):
            with jax.default_matmul_precision(precision):
                compare_network(problem, ["xla", "conv2d"], repeats, prefix=f"precision_{precision}_")
        compare_network(problem, ["xla", "conv2d"], repeats, prefix="dtype_bf16_", dtype=jnp.bfloat16)
        flag_experiments(repeats)
    emit_load_at_end()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
