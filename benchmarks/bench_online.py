"""Online synthesis: train-step time online ÷ offline at the same shapes, and the online views' fidelity.

    python benchmarks/bench_online.py [--batch 2] [--patch 32 64 64] [--repeats 3]
                                      [--fidelity-size 512] [--fidelity-slices 48] [--views 8]
                                      [--skip-step] [--skip-fidelity]

Step (one process, the same phantom case and batch shapes): the offline step trains on stored
views; the online step first renders both views of every patch from the CTA crops
(`data.online.OnlineRenderer`). Both augment (the default config). Rounds alternate; the
paired median ratio is reported, plus the rendering alone and its parts (where the time goes),
and each compiled step's memory (XLA's memory analysis: arguments + outputs + temporaries; on
GPU also the device's peak). `online_over_offline_step_time` is the figure issue 15 aims at
(≤ 1.5 on an accelerator at batch 4 × 32×224×224: `--batch 4 --patch 32 224 224`).

Fidelity (full in-plane size): a procedural phantom case rendered by `synth` at the native grid,
then preprocessed (NCCT cache) vs its CTA cache rendered online, both realistic (no HU offsets)
unless stated: per-structure mean HU, noise std in the left ventricle and the radial NPS
correlation, on the same patch. Cases: in-plane native = training spacing (0.35 mm; z 1 → 3 mm,
nearest); native 0.39 mm (the in-plane photon correction at work); training views (HU offsets);
and the naive alternative (each crop acquired as if it were a whole slice).
"""

from __future__ import annotations

import argparse
import resource
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import jax
import numpy as np
from _common import emit, interleaved, median, paired_ratio
from scipy import ndimage as ndi

from syncas_jax.common.nifti import volume_from_array
from syncas_jax.data.cache import preprocess_case
from syncas_jax.data.cta_cache import preprocess_cta_case
from syncas_jax.data.cta_loader import CtaGeometry, CtaPatchBatcher
from syncas_jax.data.online import OnlineRenderer, batch_crops
from syncas_jax.synth import ct
from syncas_jax.synth.engine import render_case
from syncas_jax.synth.hu import reassign_hu
from syncas_jax.synth.hu_table import REFERENCE
from syncas_jax.synth.online import CROP_MARGIN
from syncas_jax.synth.phantom import LEFT_VENTRICLE, make_phantom, phantom_affine
from syncas_jax.synth.plaques import draw_plaques, paint_plaques, plaque_box
from syncas_jax.synth.texture import noise_std, nps_correlation, radial_nps, structure_means
from syncas_jax.train.config import config_from_dict
from syncas_jax.train.state import create_train_state, make_model
from syncas_jax.train.step import jit_train_step, step_key

STRUCTURES = [0, 118, 119, 120, 121, 122, 123]  # unlabelled tissue, myocardium, chambers, aorta
ARRAYS = ("hu", "organs", "label", "sinogram", "photons", "centreline")


def cta_case(shape, native, target, seed=1, slab=None):
    """A phantom CTA case and its CTA cache arrays; slab: keep only that many slices around the heart."""
    image, labels, _ = make_phantom(shape, native, seed=seed)
    if slab is not None and slab < shape[0]:
        centre = int(np.argwhere(labels == LEFT_VENTRICLE)[:, 0].mean())
        start = int(np.clip(centre - slab // 2, 0, shape[0] - slab))
        image, labels = image[start : start + slab], labels[start : start + slab]
    case = preprocess_cta_case(canonical(image, native), canonical(labels, native), target)
    geometry = CtaGeometry(tuple(target), case.sinogram.shape[2], len(case.centreline),
                           float(case.centreline[:, 3].max()), "reference")  # fmt: skip
    return image, labels, case, geometry


def canonical(array: np.ndarray, spacing) -> object:
    """A Volume in the phantom's (canonical) orientation, so the caches keep the phantom's array layout."""
    return volume_from_array(array, spacing, phantom_affine(array.shape, spacing))


def heart_origin(case, patch) -> np.ndarray:
    """Patch origin centred on the left ventricle (clipped to the volume)."""
    centre = np.argwhere(case.organs == LEFT_VENTRICLE).mean(axis=0).round().astype(int)
    return np.clip(centre - np.asarray(patch) // 2, 0, np.maximum(np.asarray(case.hu.shape) - patch, 0))


def items(case, origin, n):
    arrays = {k: getattr(case, k) for k in ARRAYS}
    return [{**arrays, "origin": origin} for _ in range(n)]


def memory(compiled) -> float:
    """GiB of arguments + outputs + temporaries of a compiled step (XLA's memory analysis)."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**30


# ------------------------------------------------------------------------------------- step


def bench_step(args) -> None:
    patch = tuple(args.patch)
    target = (3.0, args.step_spacing, args.step_spacing)
    slice_size = int(round(args.step_fov / args.step_spacing))
    shape = (max(patch[0] + 8, 24), slice_size, slice_size)
    started = time.perf_counter()
    _, _, case, geometry = cta_case(shape, target, target)
    emit("step_case_shape", f"{case.hu.shape} at {target} mm, crop {patch[1] + 2 * CROP_MARGIN} px in-plane")
    emit("step_case_seconds", time.perf_counter() - started)
    batcher = CtaPatchBatcher(patch, geometry)
    cta_batch = {k: jax.device_put(v) for k, v in batcher([items(case, heart_origin(case, patch), args.batch)]).items()}
    renderer = OnlineRenderer(geometry)
    ncct_batch = jax.device_put(jax.jit(renderer)(jax.random.key(0), cta_batch))

    config, _ = config_from_dict({"batch_size": args.batch, "patch_size": list(patch), "spacing": list(target),
                                  "precision": args.precision})  # fmt: skip
    model = make_model(config)
    from syncas_jax.train.step import make_augment

    augment = make_augment(config.augment)
    runs, compiled = {}, {}
    for name, batch, render in (("offline", ncct_batch, None), ("online", cta_batch, renderer)):
        step = jit_train_step(model, config.loss, config.negatives_at(0), augment, config.segmentation, render)
        state = create_train_state(config, jax.random.key(0))
        started = time.perf_counter()
        compiled[name] = step.lower(state, batch, step_key(0, 0)).compile()
        emit(f"{name}_compile_seconds", time.perf_counter() - started)
        holder = {"state": state, "i": 0}

        def run(holder=holder, batch=batch, fn=compiled[name]) -> None:
            holder["state"], metrics = fn(holder["state"], batch, step_key(0, holder["i"]))
            holder["i"] += 1
            jax.block_until_ready(metrics)

        runs[name] = run
    render_fn = jax.jit(renderer)
    runs["render"] = lambda: jax.block_until_ready(render_fn(jax.random.key(1), cta_batch))
    times = interleaved(runs, args.repeats)
    for name, values in times.items():
        emit(f"{name}_seconds", median(values))
    emit("online_over_offline_step_time", paired_ratio(times["online"], times["offline"]))
    emit("render_fraction_of_online_step", median(times["render"]) / median(times["online"]))
    for name, fn in compiled.items():
        emit(f"{name}_step_memory_gib", memory(fn))
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        emit("device_peak_memory_gib", stats["peak_bytes_in_use"] / 2**30)
    emit("process_peak_rss_gib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    render_parts(case, geometry, patch, args.batch, cta_batch, args.repeats)


def render_parts(case, geometry, patch, batch, cta_batch, repeats) -> None:
    """Seconds of each part of the rendering at the step's shapes (B items, 2 views)."""
    z, yc, xc = cta_batch["hu"].shape[1:]
    n = batch * z
    crops = batch_crops(cta_batch)
    hu = jax.numpy.asarray(cta_batch["hu"][0], jax.numpy.float32)
    stack = jax.numpy.zeros((yc, xc, 3 * n), jax.numpy.float32)
    n_bins = ct.detector_size(yc, xc)
    sino = jax.numpy.zeros((ct.N_ANGLES, n_bins, 2 * n), jax.numpy.float32)
    keys = jax.random.split(jax.random.key(0), 2 * n)
    low, high = jax.numpy.full(2 * n, -1e5), jax.numpy.zeros(2 * n)
    box = plaque_box(geometry.max_lumen_radius_mm, geometry.spacing)
    pixel = min(geometry.spacing[1:])
    lumen = jax.numpy.asarray(cta_batch["label"][0] > 0)
    image = jax.numpy.zeros(lumen.shape)

    def plaques(k):
        drawn = draw_plaques(k, crops.centreline[0], crops.centreline_count[0], pixel)
        return paint_plaques(image, lumen, drawn, geometry.spacing, box, crops.origin_mm[0])[0]

    parts = {
        "reassign_hu_x3": jax.jit(lambda k: [reassign_hu(hu, cta_batch["organs"][0], k, REFERENCE) for _ in range(3)]),
        "project": jax.jit(lambda k: ct.project(stack + jax.random.uniform(k))),
        "noise": jax.jit(lambda k: ct.noisy_sinograms(sino, keys, low, high)),
        "reconstruct": jax.jit(lambda k: ct.reconstruct(sino, (yc, xc))),
        "plaques_x2": jax.jit(lambda k: [plaques(k), plaques(jax.random.fold_in(k, 1))]),
    }
    runs = {name: (lambda f=f: jax.block_until_ready(f(jax.random.key(2)))) for name, f in parts.items()}
    times = interleaved(runs, repeats)
    scale = {"reassign_hu_x3": batch, "plaques_x2": batch}  # timed for one item
    for name, values in times.items():
        emit(f"render_part_{name}_seconds", median(values) * scale.get(name, 1))


# --------------------------------------------------------------------------------- fidelity


def lv_box(organs: np.ndarray) -> tuple[slice, slice]:
    """The largest square inside the left ventricle, 4 px from its edge (dilation, blur), in every patch slice."""
    distance = ndi.distance_transform_edt(np.all(organs == LEFT_VENTRICLE, axis=0)) - 4
    cy, cx = np.unravel_index(np.argmax(distance), distance.shape)
    half = int(distance[cy, cx] / np.sqrt(2))
    if half < 3:
        raise SystemExit("the left ventricle is too small in this patch for noise statistics: use a larger case")
    return slice(cy - half, cy + half), slice(cx - half, cx + half)


def compare(name: str, offline: np.ndarray, online: np.ndarray, organs: np.ndarray, means: bool = True) -> None:
    box = lv_box(organs)
    emit(f"{name}_lv_roi_px", f"{box[0].stop - box[0].start}x{box[1].stop - box[1].start}")
    if means:
        off, on = structure_means(offline, organs, STRUCTURES), structure_means(online, organs, STRUCTURES)
        worst = max(abs(off[i] - on[i]) for i in off)
        emit(f"{name}_structure_means_offline", {i: round(v, 1) for i, v in off.items()})
        emit(f"{name}_structure_means_online", {i: round(v, 1) for i, v in on.items()})
        emit(f"{name}_max_mean_difference_hu", worst)
    std_off, std_on = noise_std(offline, box), noise_std(online, box)
    emit(f"{name}_noise_std_offline_hu", std_off)
    emit(f"{name}_noise_std_online_hu", std_on)
    emit(f"{name}_noise_std_ratio", std_on / std_off)
    emit(f"{name}_nps_correlation", nps_correlation(radial_nps(offline, box), radial_nps(online, box)))


def fidelity_case(args, native_inplane: float, offsets: bool, name: str, naive: bool = False) -> None:
    target = (3.0, 0.35, 0.35)
    native = (1.0, native_inplane, native_inplane)
    size = int(round(args.fidelity_size * 0.35 / native_inplane))
    started = time.perf_counter()
    full_z = int(np.ceil(1.25 * size * native_inplane / native[0]))  # the phantom's unsqueezed anatomy
    image, labels, case, geometry = cta_case((full_z, size, size), native, target, slab=args.fidelity_slices)
    side = min(224, case.hu.shape[1] // 2 // 16 * 16)  # a crop smaller than the slice
    patch = (case.hu.shape[0], side, side)
    origin = heart_origin(case, patch)
    region = tuple(slice(o, o + p) for o, p in zip(origin, patch))
    organs = case.organs[region]

    views = render_case(image, labels, 3, views=args.views, spacing=native, realistic=not offsets)
    coronary = canonical((labels == 128).astype(np.uint8), native)
    ncct = preprocess_case([canonical(v.image, native) for v in views], coronary, target)
    offline = ncct.views[(slice(None), *region)] * 200 + 50
    emit(f"{name}_offline_seconds", time.perf_counter() - started)

    started = time.perf_counter()
    batch = CtaPatchBatcher(patch, geometry)([items(case, origin, args.views // 2)])
    render = jax.jit(OnlineRenderer(geometry, offsets=offsets))
    online = np.asarray(render(jax.random.key(5), batch)["views"]).reshape(-1, *patch) * 200 + 50
    emit(f"{name}_online_seconds", time.perf_counter() - started)
    emit(f"{name}_case", f"native {native} mm {image.shape} -> {case.hu.shape} at {target}, patch {patch}")
    compare(name, offline, online, organs, means=not offsets)
    if naive:
        m = CROP_MARGIN
        crop = batch["hu"].astype(np.float32)
        realistic = np.stack([np.asarray(reassign_hu(c, o, jax.random.key(0), REFERENCE, offsets=False))
                              for c, o in zip(crop, batch["organs"])])  # fmt: skip
        flat = realistic.reshape(-1, *realistic.shape[2:])
        keys = jax.random.split(jax.random.key(9), len(flat))
        naive_views = np.asarray(ct.simulate_slices(flat, keys)).reshape(realistic.shape)
        naive_views = np.clip(naive_views[:, :, m : m + patch[1], m : m + patch[2]], -150, 250)
        compare(f"{name}_naive_crop", offline, naive_views, organs, means=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--step-spacing", type=float, default=0.7, help="in-plane mm of the step's case")
    parser.add_argument("--step-fov", type=float, default=134.0, help="in-plane field of view (mm) of the step's case")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fidelity-size", type=int, default=512, help="in-plane voxels at 0.35 mm")
    parser.add_argument("--fidelity-slices", type=int, default=24, help="native 1 mm slices around the heart")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true")
    args = parser.parse_args()
    emit("backend", jax.default_backend())
    if not args.skip_step:
        emit("step_shape", f"batch {args.batch} x 2 views x {tuple(args.patch)}")
        bench_step(args)
    if not args.skip_fidelity:
        fidelity_case(args, 0.35, False, "native_0.35mm", naive=True)
        fidelity_case(args, 0.39, False, "native_0.39mm")
        fidelity_case(args, 0.35, True, "training_views")


if __name__ == "__main__":
    main()
