"""Full SynCAS training step, ours (jitted) vs the same step in PyTorch, in one process.

    python benchmarks/bench_train_step.py [--batch 2] [--patch 32 128 128] [--precision float32]
                                          [--repeats 3] [--no-torch]

Both run: two views through the U-Net in train mode (batch-norm statistics updated),
½(DiceCE₁ + DiceCE₂) + 0.1 Σ over the four taps of the branch-aware contrastive loss
(512 anchors, 5 negatives, 1 pseudo-negative), backward, gradient clipping at norm 12,
SGD Nesterov 0.99 with weight decay 3e-5. PyTorch uses the reference architecture and
the straightforward per-item loop loss (tests/torch_reference.py) with its heads applied
to every voxel, as the reference does. Steps alternate ours/theirs; medians are reported.
Prints `name: value` lines; `train_step_time_ratio_ours_over_torch` ≤ 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
from _common import emit

from syncas_jax.train.config import config_from_dict
from syncas_jax.train.state import create_train_state, make_model
from syncas_jax.train.step import jit_train_step, step_key


def make_batch(batch: int, patch: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Two noisy views of a few tubes (branches 1..3) with a padded (−1) border."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(patch)
    label = np.zeros((batch, *patch), np.int16)
    for b in range(batch):
        for branch, (cy, cx, r) in enumerate([(0.3, 0.4, 3.0), (0.6, 0.6, 2.0), (0.7, 0.25, 1.5)], start=1):
            tube = (y - cy * patch[1] - b) ** 2 + (x - cx * patch[2]) ** 2 <= r**2
            label[b][tube & (z > branch)] = branch
    label[:, :, :3] = -1
    views = (rng.normal(size=(batch, 2, *patch)) + 2.0 * (label > 0)[:, None]).astype(np.float32)
    return {"views": views, "label": label}


def ours(batch: dict[str, np.ndarray], precision: str):
    config, _ = config_from_dict(
        {"batch_size": batch["views"].shape[0], "patch_size": list(batch["views"].shape[2:]), "precision": precision}
    )
    model = make_model(config)
    state = create_train_state(config, jax.random.key(0))
    step = jit_train_step(model, config.loss, config.negatives_at(0))
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    holder = {"state": state, "i": 0}

    def run() -> None:
        holder["state"], metrics = step(holder["state"], device_batch, step_key(0, holder["i"]))
        holder["i"] += 1
        jax.block_until_ready(metrics)

    return run


def torch_step(batch: dict[str, np.ndarray], device: str, precision: str):
    import torch

    from tests import torch_reference as ref

    net = ref.ReferenceUNet().to(device).train()
    heads = ref.make_heads().to(device).train()
    params = list(net.parameters()) + list(heads.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.99, nesterov=True, weight_decay=3e-5)
    views = torch.from_numpy(batch["views"]).to(device)
    label = torch.from_numpy(batch["label"]).long().to(device)
    target = (label > 0).long()
    generator = torch.Generator().manual_seed(0)  # CPU draws; indices work on CUDA tensors too
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits1, taps1 = net(views[:, 0:1])
            logits2, taps2 = net(views[:, 1:2])
            seg = 0.5 * (
                ref.dice_ce_loss_torch(logits1.float(), target) + ref.dice_ce_loss_torch(logits2.float(), target)
            )
            p1 = [h(t.float()) for h, t in zip(heads, taps1)]
            p2 = [h(t.float()) for h, t in zip(heads, taps2)]
        contrastive = ref.contrastive_four_taps_loop(p1, p2, label, alpha=0.5, generator=generator)
        loss = seg + 0.1 * contrastive
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 12.0)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="time ours only (steps/s)")
    args = parser.parse_args()
    batch = make_batch(args.batch, tuple(args.patch))
    backend = jax.default_backend()
    emit("backend", backend)
    emit("shape", f"batch {args.batch} x 2 views x {tuple(args.patch)}, {args.precision}")

    runs = {"ours": ours(batch, args.precision)}
    if not args.no_torch:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        runs["torch"] = torch_step(batch, "cuda" if backend == "gpu" else "cpu", args.precision)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up: compilation, cuDNN autotuning
        start = time.perf_counter()
        run()
        emit(f"{name}_first_step_seconds", time.perf_counter() - start)
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        emit(f"{name}_step_seconds", float(np.median(values)))
        emit(f"{name}_steps_per_second", 1.0 / float(np.median(values)))
    if "torch" in times:
        emit("train_step_time_ratio_ours_over_torch", float(np.median(times["ours"]) / np.median(times["torch"])))


if __name__ == "__main__":
    main()
