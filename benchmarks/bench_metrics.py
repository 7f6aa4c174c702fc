"""HD95 / MSD on two 275x512x512 coronary-like masks: ours vs all-pairs distances and surface-distance.

    python benchmarks/bench_metrics.py [--seed 0] [--subsample 1000] [--repeats 5]

Ours: `syncas_jax.metrics.surface_distances` (surfels on the voxel-corner grid) with its
default method (the exact k-d tree nearest-surfel search, reported as `ours_*` and
`speedup_default_*`) and with method "edt" (distance transform, reported as `ours_edt_*`).
All pairs (the reference's method): scipy `cdist` from points of one mask to all points of
the other, minimum per row, both directions. Timed on a random subsample of prediction
points and extrapolated to the full 2 x N x M cost (the full matrices would not fit in
memory), for two point sets: surface voxels (6-neighbour definition) and all foreground
voxels (what the reference's `compute_hausdorff_95` passes to cdist). surface-distance
(DeepMind), when installed, gives the values we must equal. Peers run interleaved in one
process; ratios are medians over rounds. Prints `name: value` lines.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import emit, emit_load_at_end, emit_machine, interleaved, median, paired_ratio, ratio_spread
from scipy import ndimage
from scipy.spatial.distance import cdist

from syncas_jax import metrics

SHAPE = (275, 512, 512)
SPACING = (0.5, 0.35, 0.35)  # (z, y, x) mm, ImageCAS-like


def _branch(rng: np.random.Generator, start: np.ndarray, steps: int) -> np.ndarray:
    """Smooth random walk (voxel coordinates, (z, y, x)) of `steps` points 0.5 voxel apart."""
    direction = rng.normal(size=3)
    points = [start.astype(float)]
    for _ in range(steps):
        direction = direction / np.linalg.norm(direction) + 0.15 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        points.append(points[-1] + 0.5 * direction * np.array([0.7, 1.0, 1.0]))
    return np.array(points)


def _stamp(mask: np.ndarray, centreline: np.ndarray, radius_mm: float) -> None:
    """Draw a tube of `radius_mm` around the centreline (balls stamped along it)."""
    half = np.ceil(radius_mm / np.array(SPACING)).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    ball = sum((g * s) ** 2 for g, s in zip(grids, SPACING)) <= radius_mm**2
    for point in np.round(centreline).astype(int)[::2]:
        lo, hi = point - half, point + half + 1
        if np.any(lo < 0) or np.any(hi > np.array(mask.shape)):
            continue
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= ball


def coronary_masks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference): two trees of thin tubes; the prediction has shifted, thinned,
    missing and spurious branches."""
    rng = np.random.default_rng(seed)
    centre = np.array([140, 256, 256])
    ref, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    for b in range(10):
        start = centre + rng.integers(-30, 30, size=3)
        line = _branch(rng, start, steps=int(rng.integers(300, 700)))
        radius = float(rng.uniform(0.8, 2.0))
        _stamp(ref, line, radius)
        if b == 3:
            continue  # missed branch
        shift = rng.normal(scale=0.8, size=3)
        _stamp(pred, line + shift, radius * float(rng.uniform(0.7, 1.2)))
    for _ in range(2):  # false positive branches
        _stamp(pred, _branch(rng, centre + rng.integers(-60, 60, size=3), 250), 1.0)
    return pred, ref


def _voxel_surface_points(mask: np.ndarray) -> np.ndarray:
    """(N, 3) mm coordinates of mask voxels with a 6-neighbour outside."""
    return np.argwhere(mask & ~ndimage.binary_erosion(mask)) * np.array(SPACING)


def _nearest(rows: np.ndarray, points: np.ndarray) -> np.ndarray:
    """All-pairs minimum distance from each row to `points` (cdist in chunks of 200 rows)."""
    chunks = np.array_split(rows, max(len(rows) // 200, 1))
    return np.concatenate([cdist(chunk, points).min(axis=1) for chunk in chunks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsample", type=int, default=1000, help="prediction points timed all-pairs")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of every peer (default 5)")
    args = parser.parse_args()

    pred, ref = coronary_masks(args.seed)
    rng = np.random.default_rng(args.seed)
    emit_machine()
    emit("shape", "x".join(map(str, SHAPE)))
    emit("spacing_mm", SPACING)
    emit("ref_voxels", int(ref.sum()))
    emit("pred_voxels", int(pred.sum()))

    surf_p, surf_r = _voxel_surface_points(pred), _voxel_surface_points(ref)
    vox_p, vox_r = np.argwhere(pred) * np.array(SPACING), np.argwhere(ref) * np.array(SPACING)
    rows_surf = surf_p[rng.choice(len(surf_p), size=min(args.subsample, len(surf_p)), replace=False)]
    rows_vox = vox_p[rng.choice(len(vox_p), size=min(args.subsample, len(vox_p)), replace=False)]
    # seconds of the subsample -> seconds of both full directed all-pairs passes
    scale_surf = 2.0 * len(surf_p) / len(rows_surf)
    scale_vox = 2.0 * len(vox_p) / len(rows_vox)
    emit("pred_surface_points", len(surf_p))
    emit("ref_surface_points", len(surf_r))

    results: dict[str, tuple[float, float]] = {}
    runs = {
        "ours": lambda: results.__setitem__("ours", metrics.surface_distances(pred, ref, SPACING)),
        "ours_edt": lambda: results.__setitem__(
            "ours_edt", metrics.surface_distances(pred, ref, SPACING, method="edt")
        ),
        "allpairs_surface": lambda: _nearest(rows_surf, surf_r),
        "allpairs_voxels": lambda: _nearest(rows_vox, vox_r),
    }
    try:
        import surface_distance as sd

        def deepmind() -> None:
            d = sd.compute_surface_distances(ref, pred, SPACING)
            results["sd"] = (sd.compute_robust_hausdorff(d, 95), float(np.mean(sd.compute_average_surface_distance(d))))

        runs["surface_distance"] = deepmind
    except ImportError:
        sd = None
    times = interleaved(runs, repeats=args.repeats, warmup=1)

    for name in ("ours", "ours_edt"):
        emit(f"{name}_hd95_mm", f"{results[name][0]:.6f}")
        emit(f"{name}_msd_mm", f"{results[name][1]:.6f}")
        emit(f"{name}_seconds", median(times[name]))
    for kind, scale in (("voxels", scale_vox), ("surface", scale_surf)):
        full = [t * scale for t in times[f"allpairs_{kind}"]]
        emit(f"allpairs_{kind}_extrapolated_seconds", median(full))
        emit(f"speedup_default_vs_allpairs_{kind}", paired_ratio(full, times["ours"]))
        emit(f"speedup_default_vs_allpairs_{kind}_spread", ratio_spread(full, times["ours"]))
        emit(f"speedup_edt_vs_allpairs_{kind}", paired_ratio(full, times["ours_edt"]))
    emit("allpairs_surface_full_matrix_gib", len(surf_p) * len(surf_r) * 8 / 2**30)
    emit("allpairs_voxels_full_matrix_gib", len(vox_p) * len(vox_r) * 8 / 2**30)
    # A distance transform gives the same directed distances as the all-pairs minimum.
    dist = metrics.surface._distance_to(ref & ~ndimage.binary_erosion(ref), SPACING)
    idx = np.round(rows_surf / np.array(SPACING)).astype(int)
    emit("allpairs_vs_distance_transform_max_abs_diff_mm",
         float(np.abs(dist[tuple(idx.T)] - _nearest(rows_surf, surf_r)).max()))  # fmt: skip
    if sd is None:
        emit("surface_distance", "not installed")
        emit_load_at_end()
        return
    emit("surface_distance_hd95_mm", f"{results['sd'][0]:.6f}")
    emit("surface_distance_msd_mm", f"{results['sd'][1]:.6f}")
    emit("surface_distance_seconds", median(times["surface_distance"]))
    emit("speedup_default_vs_surface_distance", paired_ratio(times["surface_distance"], times["ours"]))
    emit("speedup_default_vs_surface_distance_spread", ratio_spread(times["surface_distance"], times["ours"]))
    emit("speedup_edt_vs_surface_distance", paired_ratio(times["surface_distance"], times["ours_edt"]))
    for name in ("ours", "ours_edt"):
        emit(f"{name}_hd95_abs_diff_vs_surface_distance_mm", abs(results[name][0] - results["sd"][0]))
        emit(f"{name}_msd_abs_diff_vs_surface_distance_mm", abs(results[name][1] - results["sd"][1]))
    emit_load_at_end()


if __name__ == "__main__":
    main()
