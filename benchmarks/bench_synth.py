"""CT acquisition benchmark: radon + Poisson + FBP on 512×512 slices, ours vs its peers, CPU.

Same process, same phantom slices (HU), 180 angles, the spec's noise model. Ours is the
jitted, warm `radon_transform` → `add_poisson_noise` → `fbp_reconstruct` on a batch of
slices (per-slice time = batch time / batch); peers run per slice (scikit-image, ASTRA's
CPU `linear` projector + FBP ram-lak) or batched (torchskradon), each with its own
Poisson step. Rounds alternate between peers; ratios are medians of per-round ratios
(peer / ours, > 1 means we are faster). Accuracy: relative L2 of our sinogram and
noise-free reconstruction from scikit-image's, inside the reconstruction circle.

Peak memory and time of rendering one view of a 275×512×512 case on CPU are measured in
a fresh subprocess (ru_maxrss), so nothing of this process is counted.

    python benchmarks/bench_synth.py            # batch 32, 3 rounds
    python benchmarks/bench_synth.py --quick    # batch 8, 1 round, no 275-slice render
    python benchmarks/bench_synth.py --device-case   # a whole 275×512×512 case on the default device (GPU)
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import REPO, emit, interleaved, median, paired_ratio  # also puts the repo on sys.path

from syncas_jax.synth import ct
from syncas_jax.synth.phantom import make_phantom

N = 512
ANGLES_DEG = np.arange(180.0)
PHOTONS = 5.0e4


@jax.jit
def ours_chain(slices: jnp.ndarray, keys: jax.Array) -> jnp.ndarray:
    """radon → Poisson → FBP of (B, H, W) slices (batch in the trailing axis inside)."""
    sino = ct.radon_transform(jnp.moveaxis(slices, 0, -1))
    sino = jax.vmap(ct.add_poisson_noise, in_axes=(-1, 0, None), out_axes=-1)(sino, keys, PHOTONS)
    return jnp.moveaxis(ct.fbp_reconstruct(sino, slices.shape[1:]), -1, 0)


def numpy_poisson(sino: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    low, span = sino.min(), sino.max() - sino.min()
    return rng.poisson((sino - low) * (PHOTONS / span)) * (span / PHOTONS) + low


def skimage_chain(slices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    from skimage.transform import iradon, radon

    out = []
    for image in slices:
        sino = numpy_poisson(radon(image, ANGLES_DEG, circle=False), rng)
        out.append(iradon(sino, ANGLES_DEG, filter_name="ramp", circle=False))
    return out


def astra_chain_factory():
    import astra

    detectors = ct.detector_size(N, N)
    vol_geom = astra.create_vol_geom(N, N)
    proj_geom = astra.create_proj_geom("parallel", 1.0, detectors, np.deg2rad(ANGLES_DEG))
    projector = astra.create_projector("linear", proj_geom, vol_geom)

    def run(slices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        out = []
        for image in slices:
            sino_id, sino = astra.create_sino(image.astype(np.float32), projector)
            astra.data2d.store(sino_id, numpy_poisson(sino, rng).astype(np.float32))
            rec_id = astra.data2d.create("-vol", vol_geom)
            cfg = astra.astra_dict("FBP")
            cfg.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id)
            cfg["option"] = {"FilterType": "ram-lak"}
            algorithm = astra.algorithm.create(cfg)
            astra.algorithm.run(algorithm)
            out.append(astra.data2d.get(rec_id))
            astra.algorithm.delete(algorithm)
            astra.data2d.delete([sino_id, rec_id])
        return out

    return run


def torchskradon_chain_factory():
    import torch
    from torchskradon.functional import skiradon, skradon

    theta = torch.as_tensor(ANGLES_DEG, dtype=torch.float32)

    def run(slices: np.ndarray, rng: np.random.Generator, device: str = "cpu") -> torch.Tensor:
        with torch.no_grad():
            images = torch.as_tensor(slices, dtype=torch.float32, device=device)[:, None]
            angles = theta.to(device)
            sino = skradon(images, angles, circle=False, preserve_range=True)
            low = sino.amin(dim=(-2, -1), keepdim=True)
            span = sino.amax(dim=(-2, -1), keepdim=True) - low
            sino = torch.poisson((sino - low) * (PHOTONS / span)) * (span / PHOTONS) + low
            return skiradon(sino, angles, circle=False, filter_name="ramp")

    return run


def accuracy(image: np.ndarray) -> tuple[float, float]:
    """Relative L2 of our sinogram and noise-free FBP from scikit-image's (reconstruction circle)."""
    from skimage.transform import iradon, radon

    ref_sino = radon(image, ANGLES_DEG, circle=False)
    ref_rec = iradon(ref_sino, ANGLES_DEG, filter_name="ramp", circle=False)
    sino = np.asarray(jax.jit(ct.radon_transform)(image))
    rec = np.asarray(jax.jit(ct.fbp_reconstruct, static_argnums=1)(sino, image.shape))
    y, x = np.ogrid[:N, :N]
    inside = (y - N // 2) ** 2 + (x - N // 2) ** 2 <= (N // 2) ** 2
    sino_err = np.linalg.norm(sino.T - ref_sino) / np.linalg.norm(ref_sino)
    rec_err = np.linalg.norm((rec - ref_rec)[inside]) / np.linalg.norm(ref_rec[inside])
    return float(sino_err), float(rec_err)


def render_in_subprocess(slices: int) -> None:
    """Render one view of a `slices`×512×512 phantom case in a fresh process; print its time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        small, labels, _ = make_phantom(((slices + 3) // 4, 128, 128), (2.0, 1.6, 1.6), seed=0)
        for name, array in (("image", small), ("labels", labels)):
            big = np.repeat(np.repeat(np.repeat(array, 4, 0), 4, 1), 4, 2)[:slices]
            np.save(Path(tmp) / f"{name}.npy", big)
        result = subprocess.run(
            [sys.executable, __file__, "--render-worker", tmp],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            raise SystemExit("render worker failed")
        print(result.stdout, end="", flush=True)


def render_worker(folder: str) -> None:
    from syncas_jax.synth.engine import case_seed, render_view

    image = np.load(Path(folder) / "image.npy")
    labels = np.load(Path(folder) / "labels.npy")
    shape = "x".join(map(str, image.shape))
    start = time.perf_counter()
    view = render_view(image, labels, case_seed(0, "bench"), 0, spacing=(0.5, 0.4, 0.4))
    elapsed = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    emit(f"render_{shape}_one_view_s_cpu", elapsed)
    emit(f"render_{shape}_plaques", len(view.plaques))
    emit(f"render_{shape}_peak_rss_gib", peak_gib)
    emit("render_peak_under_8gib", peak_gib < 8.0)


def device_case(slices: int, chunks: list[int]) -> None:
    """Warm time to render a `slices`×512×512 case on the default device (meant for a GPU)."""
    from syncas_jax.synth.engine import case_seed, render_view

    emit("device", jax.devices()[0].device_kind)
    small, small_labels, _ = make_phantom(((slices + 3) // 4, 128, 128), (2.0, 1.6, 1.6), seed=0)
    image = np.repeat(np.repeat(np.repeat(small, 4, 0), 4, 1), 4, 2)[:slices]
    labels = np.repeat(np.repeat(np.repeat(small_labels, 4, 0), 4, 1), 4, 2)[:slices]
    shape = "x".join(map(str, image.shape))
    key = jax.random.key(0)
    for chunk in chunks:
        ct.simulate_volume(image, key, chunk=chunk)  # compile
        best = min(timed_call(lambda chunk=chunk: ct.simulate_volume(image, key, chunk=chunk)) for _ in range(3))
        emit(f"acquisition_{shape}_chunk{chunk}_s", best)
    from syncas_jax.synth.hu import reassign_hu

    def reassign():
        return np.asarray(reassign_hu(image, labels, key))

    reassign()
    emit(f"hu_reassignment_{shape}_s", min(timed_call(reassign) for _ in range(3)))
    chunk = chunks[-1]

    def render():
        return render_view(image, labels, case_seed(0, "bench"), 0, spacing=(0.5, 0.4, 0.4), chunk=chunk)

    render()
    emit(f"render_{shape}_one_view_s", min(timed_call(render) for _ in range(2)))
    try:
        peer = torchskradon_chain_factory()
    except Exception as error:
        emit("torchskradon", f"skipped ({type(error).__name__}: {error})")
        return
    import torch

    if torch.cuda.is_available():
        torch_batch = 16
        rng = np.random.default_rng(0)

        def run_peer():
            out = peer(image[:torch_batch].astype(np.float32), rng, device="cuda")
            torch.cuda.synchronize()
            return out

        run_peer()
        per_slice = min(timed_call(run_peer) for _ in range(3)) / torch_batch
        emit("torchskradon_gpu_s_per_slice", per_slice)
        emit(f"torchskradon_gpu_{shape}_s_estimated", per_slice * slices)


def timed_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="slices per call of ours (and torchskradon)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-slices", type=int, default=2, help="slices per call of the per-slice peers")
    parser.add_argument("--render-slices", type=int, default=275)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device-case", action="store_true", help="time a whole case on the default device (GPU)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 275], help="slice chunks for --device-case")
    parser.add_argument("--render-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render_worker:
        render_worker(args.render_worker)
        return
    if args.device_case:
        device_case(args.render_slices, args.chunks)
        return
    if args.quick:
        args.batch, args.rounds = 8, 1

    emit("device", jax.devices()[0].device_kind)
    image, _, _ = make_phantom((args.batch, N, N), (1.0, 0.4, 0.4), seed=1)
    slices = image.astype(np.float32)
    keys = ct.slice_keys(jax.random.key(0), args.batch)
    batch = jnp.asarray(slices)
    rng = np.random.default_rng(0)
    peer_slices = slices[: args.peer_slices].astype(np.float64)

    sino_err, rec_err = accuracy(slices[args.batch // 2].astype(np.float64))
    emit("sinogram_rel_l2_vs_skimage", sino_err)
    emit("fbp_rel_l2_vs_skimage", rec_err)

    runs = {
        "ours": lambda: ours_chain(batch, keys).block_until_ready(),
        "skimage": lambda: skimage_chain(peer_slices, rng),
    }
    per_call = {"ours": args.batch, "skimage": args.peer_slices}
    for name, factory, count in (
        ("astra_cpu", astra_chain_factory, args.peer_slices),
        ("torchskradon", torchskradon_chain_factory, 2),
    ):
        try:
            run = factory()
        except Exception as error:  # optional peer not installed
            emit(f"{name}", f"skipped ({type(error).__name__}: {error})")
            continue
        data = peer_slices if name == "astra_cpu" else slices[:count]
        runs[name] = lambda run=run, data=data: run(data, rng)
        per_call[name] = count

    times = interleaved(runs, repeats=args.rounds)
    per_slice = {name: [t / per_call[name] for t in ts] for name, ts in times.items()}
    for name, ts in per_slice.items():
        emit(f"{name}_s_per_slice", median(ts))
    for name in per_slice:
        if name != "ours":
            emit(f"speedup_vs_{name}", paired_ratio(per_slice[name], per_slice["ours"]))

    if not args.quick:
        render_in_subprocess(args.render_slices)


if __name__ == "__main__":
    main()
