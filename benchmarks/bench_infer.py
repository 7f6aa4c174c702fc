"""Sliding-window inference of a full CT scan: `python benchmarks/bench_infer.py [--quick] [--tta] [--full]`.

Input: a synthetic chest CT of 275×512×512 voxels at (z, y, x) = (0.5, 0.35, 0.35) mm
(int16 NIfTI written to a temporary folder), and the reference architecture with random
weights (torch ReferenceUNet, random batch-norm statistics) saved as a reference `.pth`,
which ours converts on the fly, so both networks hold identical weights.

Two measurements, printed as `name: value` lines:

1. ours end to end, in a fresh subprocess per run (so `ru_maxrss` is that run's peak
   RSS): load checkpoint → read NIfTI → preprocess → sliding window (patch
   (32, 224, 224), step 0.5, Gaussian, TTA off unless --tta) → back to the input grid →
   write the uint8 mask. `ours_e2e_*` lines.
2. the same window batches through ours (jitted, TTA-averaged softmax, Gaussian
   accumulation) and through the PyTorch reference (eval mode, torch.no_grad, same batch,
   same flips, softmax, Gaussian accumulation into a torch tensor), alternately in this
   process, `--rounds` (7) batches spread over the scan; `window_batch_seconds_{ours,torch}`
   are medians, `ratio_ours_over_torch` the median of per-round ratios (< 1: ours faster; the
   goal is ≤ 1/1.5) and `speedup_vs_torch_spread` the per-round speedups' quartiles and range.

Default: a subset. Every run executes `--windows` window batches (3) and extrapolates the
sliding-window time to all batches of the scan: first batch (includes compilation) +
(n − 1) × median of the others. The preprocessing, export and peak RSS are measured in
full (accumulators and outputs are full size; windows not run leave NaN there, which is
harmless for timing). `--full` runs every window (slow on a CPU: the full network on
32×224×224 is ~250 GFLOP per window per mirror). `--quick`: a 40×96×96 scan and
patch (32, 64, 64) (4 windows), all windows, for a smoke run. `--fast` adds two more
end-to-end runs with every window, at the default step and at infer --fast's (0.75, no TTA),
and prints the Dice of the fast mask against the default one (`fast_mask_dice_vs_default`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, emit, emit_load_at_end, emit_machine, median, paired_ratio, ratio_spread

from syncas_jax.infer.cases import DEFAULT_STEP, FAST_STEP

FULL_SHAPE = (275, 512, 512)
QUICK_SHAPE = (40, 96, 96)
SPACING = (0.5, 0.35, 0.35)
FULL_PATCH = (32, 224, 224)
QUICK_PATCH = (32, 64, 64)


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """int16 HU (z, y, x): air, an elliptic body (fat/soft tissue), lungs, a heart with bright vessels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    yy, xx = (y - cy) / shape[1], (x - cx) / shape[2]
    hu = np.full(shape, -1000, np.int16)
    hu[np.broadcast_to(yy**2 / 0.42**2 + xx**2 / 0.46**2 <= 1, shape)] = 40
    lungs = ((np.abs(xx) - 0.2) ** 2 / 0.14**2 + yy**2 / 0.3**2 <= 1) & np.ones(shape[0], bool)[:, None, None]
    hu[lungs] = -850
    heart = ((z - shape[0] / 2) / (0.4 * shape[0])) ** 2 + (yy / 0.18) ** 2 + ((xx - 0.04) / 0.2) ** 2 <= 1
    hu[heart] = 45
    vessels = heart & (np.abs(np.sin(8 * yy + 3 * xx + z / 40)) < 0.04)
    hu[vessels] = 350
    hu += rng.normal(0, 15, shape).astype(np.int16)
    return hu


def write_inputs(folder: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """The CT (.nii.gz) and a reference .pth with random weights; returns their paths."""
    import torch

    from syncas_jax.common.nifti import volume_from_array, write_volume
    from tests import torch_reference as ref

    ct = folder / "bench_NCCT.nii.gz"
    hu = synthetic_ct(shape)
    write_volume(hu, ct, like=volume_from_array(hu, SPACING), dtype=np.int16)
    torch.manual_seed(0)
    net = ref.ReferenceUNet()
    ref.randomize_batchnorm_stats(net, torch.Generator().manual_seed(1))
    weights = folder / "reference.pth"
    ref.save_reference_checkpoint(weights, net, ref.make_heads())
    return ct, weights


# ------------------------------------------------------------------ worker: ours end to end


def worker(args: argparse.Namespace) -> None:
    """One end-to-end run in this (fresh) process; prints one JSON line."""
    start = time.perf_counter()
    from syncas_jax.common.nifti import write_volume
    from syncas_jax.infer.cases import WindowSettings, predict_case, read_input
    from syncas_jax.infer.predict import load_model_for_inference

    seconds: dict[str, float] = {}
    predict_fn, _ = load_model_for_inference(args.weights, precision=args.precision)
    seconds["load_model"] = time.perf_counter() - start
    start = time.perf_counter()
    volume, _ = read_input(Path(args.ct))
    seconds["read"] = time.perf_counter() - start
    stamps: list[float] = []
    total_batches: list[int] = []

    def limited(items, total):  # run the first `windows` batches only, recording when each finished
        total_batches.append(total)
        stamps.append(time.perf_counter())
        for item in itertools.islice(items, args.windows if args.windows > 0 else None):
            yield item
            stamps.append(time.perf_counter())

    settings = WindowSettings(patch_size=tuple(args.patch), step=args.step, tta=args.tta, batch=args.batch)
    prediction = predict_case(volume, predict_fn, settings, progress=limited)
    seconds.update(prediction.seconds)
    start = time.perf_counter()
    write_volume(prediction.segmentation, args.out, like=volume, dtype=np.uint8)
    seconds["write"] = time.perf_counter() - start
    report = {
        "seconds": seconds,
        "batch_seconds": np.diff(stamps).tolist(),
        "batches": total_batches[0],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print("RESULT " + json.dumps(report), flush=True)


def run_worker(ct: Path, weights: Path, out: Path, args: argparse.Namespace, windows: int) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--ct", str(ct),
        "--weights", str(weights),
        "--out", str(out),
        "--windows", str(windows),
        "--batch", str(args.batch),
        "--step", str(args.step),
        "--patch", *map(str, args.patch),
        "--precision", args.precision,
    ] + (["--tta"] if args.tta else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        sys.exit(f"worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def compare_fast(ct: Path, weights: Path, folder: Path, args: argparse.Namespace) -> None:
    """infer --fast (step FAST_STEP, no TTA) end to end with every window, vs the same at args.step."""
    import nibabel as nib

    masks = {}
    for name, step in (("default", args.step), ("fast", FAST_STEP)):
        out = folder / f"CA_{name}_NCCT.nii.gz"
        run = run_worker(ct, weights, out, argparse.Namespace(**{**vars(args), "step": step, "tta": False}), 0)
        emit(f"{name}_all_windows_batches", run["batches"])
        emit(f"{name}_all_windows_e2e_seconds", sum(run["seconds"].values()))
        masks[name] = np.asarray(nib.load(out).dataobj) > 0
    overlap = 2 * np.sum(masks["default"] & masks["fast"])
    emit("fast_mask_dice_vs_default", overlap / max(int(masks["default"].sum() + masks["fast"].sum()), 1))


# ----------------------------------------------------------- window batches: ours vs torch


def compare_windows(ct: Path, weights: Path, args: argparse.Namespace, rounds: int) -> dict[str, float]:
    """Time the same window batches through ours and the torch reference, alternately."""
    import jax
    import jax.numpy as jnp
    import torch

    from syncas_jax.common.nifti import read_volume
    from syncas_jax.common.precision import compute_dtype
    from syncas_jax.data.volume import preprocess_image
    from syncas_jax.infer.predict import load_model_for_inference
    from syncas_jax.nets.sliding_window import (
        MIRROR_COMBINATIONS,
        _accumulate,
        _extract_windows,
        _mirrored_softmax,
        as_predictor,
        gaussian_importance_map,
        pad_to_patch,
        window_starts,
    )
    from tests import torch_reference as ref

    patch = tuple(args.patch)
    image, _ = preprocess_image(read_volume(ct))
    padded, _ = pad_to_patch(image, patch)
    starts = window_starts(padded.shape, patch, args.step)
    n_batches = -(-len(starts) // args.batch)
    rounds = min(rounds, n_batches) if rounds > 0 else n_batches
    mirror = MIRROR_COMBINATIONS if args.tta else ((),)
    gaussian = gaussian_importance_map(patch)

    predictor = as_predictor(load_model_for_inference(weights, precision=args.precision)[0])
    bf16 = compute_dtype(args.precision, "infer") == jnp.bfloat16
    device = torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    image_device, gaussian_device = jnp.asarray(padded), jnp.asarray(gaussian)
    acc = jnp.zeros((*padded.shape, 2), jnp.float32)
    weight = jnp.zeros(padded.shape, jnp.float32)

    net = ref.ReferenceUNet().eval()
    net.load_state_dict(torch.load(weights, weights_only=True)["network_weights"])
    net = net.to(device)
    acc_torch = torch.zeros((2, *padded.shape), device=device)
    gaussian_torch = torch.from_numpy(gaussian.copy()).to(device)
    image_torch = torch.from_numpy(padded).to(device)

    def batch_starts(i: int) -> np.ndarray:
        chosen = starts[i * args.batch : (i + 1) * args.batch]
        return np.concatenate([chosen, np.repeat(chosen[-1:], args.batch - len(chosen), 0)])

    def ours(i: int) -> np.ndarray:
        nonlocal acc, weight
        s = jnp.asarray(batch_starts(i))
        probs = _mirrored_softmax(predictor, _extract_windows(image_device, s, patch), mirror)
        acc, weight = _accumulate(acc, weight, probs, gaussian_device, s, jnp.ones(args.batch, bool))
        acc.block_until_ready()
        return probs

    @torch.no_grad()
    def theirs(i: int) -> torch.Tensor:
        s = batch_starts(i)
        x = torch.stack([image_torch[z : z + patch[0], y : y + patch[1], w : w + patch[2]] for z, y, w in s])[:, None]
        probs = 0
        for axes in mirror:
            dims = [a + 2 for a in axes]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(torch.flip(x, dims) if dims else x)[0]
            out = torch.softmax(logits.float(), 1)
            probs = probs + (torch.flip(out, dims) if dims else out)
        probs = probs / len(mirror)
        for b, (z, y, w) in enumerate(s):
            acc_torch[:, z : z + patch[0], y : y + patch[1], w : w + patch[2]] += probs[b] * gaussian_torch
        if device.type == "cuda":
            torch.cuda.synchronize()
        return probs.cpu()

    start = time.perf_counter()
    first_ours = np.moveaxis(np.asarray(ours(0)), -1, 1)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    first_torch = theirs(0).numpy()
    torch_first_s = time.perf_counter() - start
    times: dict[str, list[float]] = {"ours": [], "torch": []}
    for r in range(rounds):
        order = [("ours", ours), ("torch", theirs)][:: 1 if r % 2 == 0 else -1]
        batch = r * n_batches // rounds  # spread over the scan: air, body and heart windows
        for name, fn in order:
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    return {
        "windows": len(starts),
        "batches": n_batches,
        "preprocessed_shape": "x".join(map(str, image.shape)),
        "max_abs_softmax_diff": float(np.abs(first_ours - first_torch).max()),
        "ours_first_batch_seconds": compile_s,
        "torch_first_batch_seconds": torch_first_s,
        "ours": median(times["ours"]),
        "torch": median(times["torch"]),
        "ratio": paired_ratio(times["ours"], times["torch"]),
        "speedup_spread": ratio_spread(times["torch"], times["ours"]),
        "times": times,
        "rounds": rounds,
        "jax_device": str(jax.devices()[0]),
        "torch_device": f"{device}{' bf16 autocast' if bf16 else ' float32'}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40x96x96 scan, patch 32x64x64, all windows")
    parser.add_argument("--full", action="store_true", help="run every window (no extrapolation)")
    parser.add_argument("--tta", action="store_true", help="8-way mirror TTA (8x slower)")
    parser.add_argument("--windows", type=int, default=3, help="window batches run per measurement (subset mode)")
    parser.add_argument(
        "--rounds", type=int, default=7, help="window batches timed on each network in the comparison (default 7)"
    )
    parser.add_argument("--batch", type=int, default=1, help="windows per network call")
    parser.add_argument("--step", type=float, default=DEFAULT_STEP, help="window step (fraction of the patch)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="also run infer --fast's settings end to end (all windows) and its mask's Dice vs the default's",
    )
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="window size (default 32 224 224)")
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="compute precision of both networks (auto: bfloat16 on TPU, else float32)",
    )
    parser.add_argument("--skip-torch", action="store_true", help="only the end-to-end run of ours")
    # internal: the end-to-end worker
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ct", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    args.patch = args.patch or (QUICK_PATCH if args.quick else FULL_PATCH)
    windows = 0 if (args.full or args.quick) else args.windows

    import jax
    import torch

    emit("device", f"{jax.devices()[0].platform} jax {jax.__version__}, torch {torch.__version__} "
         f"({torch.get_num_threads()} threads), {os.cpu_count()} cpus")  # fmt: skip
    emit_machine()
    emit("scan_shape_zyx", "x".join(map(str, shape)))
    emit("scan_spacing_mm", SPACING)
    emit("patch", "x".join(map(str, args.patch)))
    emit("tta", args.tta)
    emit("batch", args.batch)
    from syncas_jax.common.precision import compute_dtype

    emit("precision", compute_dtype(args.precision, "infer").__name__)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        ct, weights = write_inputs(folder, shape)
        emit("input_write_seconds", time.perf_counter() - start)

        e2e = run_worker(ct, weights, folder / "CA_bench_NCCT.nii.gz", args, windows)
        batch_s = e2e["batch_seconds"]
        n, done = e2e["batches"], len(batch_s)
        steady = median(batch_s[1:]) if done > 1 else batch_s[0]
        stages = e2e["seconds"]
        other = sum(v for k, v in stages.items() if k != "sliding_window")
        measured = other + stages["sliding_window"]
        emit("windows_total", n * args.batch if n else 0)
        emit("window_batches_total", n)
        emit("window_batches_run", done)
        for key, value in stages.items():
            emit(f"ours_e2e_{key}_seconds", value)
        emit("ours_e2e_first_batch_seconds", batch_s[0])
        emit("ours_e2e_batch_seconds", steady)
        emit("ours_e2e_measured_seconds", measured)
        if done < n:
            sliding = stages["sliding_window"] - sum(batch_s) + batch_s[0] + (n - 1) * steady
            emit("ours_e2e_extrapolated_seconds", other + sliding)
        emit("ours_e2e_peak_rss_gib", e2e["peak_rss_gib"])
        if args.fast:
            compare_fast(ct, weights, folder, args)

        if args.skip_torch:
            emit_load_at_end()
            return
        cmp = compare_windows(ct, weights, args, 0 if (args.full or args.quick) else args.rounds)
        emit("torch_device", cmp["torch_device"])
        emit("preprocessed_shape_zyx", cmp["preprocessed_shape"])
        emit("compare_rounds", cmp["rounds"])
        emit("max_abs_softmax_diff_ours_vs_torch", cmp["max_abs_softmax_diff"])
        emit("window_batch_first_seconds_ours", cmp["ours_first_batch_seconds"])
        emit("window_batch_first_seconds_torch", cmp["torch_first_batch_seconds"])
        emit("window_batch_seconds_ours", cmp["ours"])
        emit("window_batch_seconds_torch", cmp["torch"])
        emit("all_windows_seconds_ours_estimate", cmp["ours"] * cmp["batches"])
        emit("all_windows_seconds_torch_estimate", cmp["torch"] * cmp["batches"])
        emit("ratio_ours_over_torch", cmp["ratio"])
        emit("speedup_vs_torch", 1 / cmp["ratio"])
        emit("speedup_vs_torch_spread", cmp["speedup_spread"])
        for name, values in cmp["times"].items():
            emit(f"window_batch_seconds_per_round_{name}", " ".join(f"{v:.3f}" for v in values))
        emit_load_at_end()


if __name__ == "__main__":
    main()
