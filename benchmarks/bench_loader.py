"""Loader and augmentation throughput: `python benchmarks/bench_loader.py [--cases N] [--batches N]`.

Builds a cache of phantom-like cases at the training spacing (two noisy views of a
chest cylinder with a heart and a branching coronary tree; shape (48, 448, 448), the
size of a resampled ImageCAS scan), then measures
* loader: batches/s of (4, 2, 32, 224, 224) patches from grain with 2 worker processes;
* augmentation: seconds per batch of the jitted JAX augmentation on the default JAX
  device (CPU here), after compilation;
* batchgenerators (nnU-Net's CPU augmentation) on the same batch, if installed, with
  nnU-Net's interpolation orders (images 3, labels per-label linear) and with ours
  (1 and nearest), and the speed ratios (> 1: ours is faster).
Prints `name: value` lines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (3.0, 0.349609375, 0.349609375)


def phantom_case(shape: tuple[int, int, int], seed: int):
    """Two windowed views (float32 (2, Z, Y, X)) and branch labels of a synthetic chest."""
    from scipy import ndimage as ndi

    from syncas_jax.data.cache import PreprocessedCase, branch_labels, foreground_locations, normalize_ct

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    body = ((y - cy) / (0.45 * shape[1])) ** 2 + ((x - cx) / (0.48 * shape[2])) ** 2 <= 1
    heart = ((z - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((y - cy) / 90) ** 2 + ((x - cx - 20) / 110) ** 2 <= 1
    hu = np.where(body, -800.0, -1000.0) + np.where(heart, 840.0, 0.0)
    tree = np.zeros(shape, bool)
    for _ in range(6):  # random-walk vessels starting near the heart surface
        p = np.array([rng.uniform(5, shape[0] - 5), cy + rng.uniform(-60, 60), cx + rng.uniform(-60, 60)])
        step = rng.normal(size=3) * np.array([0.15, 1, 1])
        for _ in range(400):
            step = 0.9 * step + 0.1 * rng.normal(size=3) * np.array([0.15, 1, 1])
            p = np.clip(p + step, 0, np.array(shape) - 1)
            tree[tuple(np.round(p).astype(int))] = True
    tree = ndi.binary_dilation(tree, ndi.generate_binary_structure(3, 1), iterations=3) & body
    hu[tree] = 35.0
    views = np.stack([normalize_ct(hu + rng.normal(0, 20, shape)) for _ in range(2)])
    label = branch_labels(tree)
    return PreprocessedCase(views, label, foreground_locations(label), {"num_views": 2, "target_spacing": SPACING})


def bench_loader(cache: Path, cases: list[str], batches: int, workers: int) -> float:
    from syncas_jax.data.loader import make_train_loader

    it = iter(make_train_loader(cache, cases, (32, 224, 224), 4, seed=0, workers=workers))
    for _ in range(3):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        assert batch["views"].shape == (4, 2, 32, 224, 224)
    rate = batches / (time.perf_counter() - start)
    it.close()
    return rate


def bench_augment(batch: dict[str, np.ndarray], repeats: int) -> tuple[float, float]:
    """(compile seconds, seconds per batch) of the jitted JAX augmentation on the default device."""
    import jax

    from syncas_jax.data.augment import augment_batch

    views, label = jax.device_put(batch["views"]), jax.device_put(batch["label"])
    start = time.perf_counter()
    jax.block_until_ready(augment_batch(jax.random.key(0), views, label))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(augment_batch(jax.random.key(i + 1), views, label))
    return compile_s, (time.perf_counter() - start) / repeats


def batchgenerators_pipeline(patch_size: tuple[int, int, int], order_data: int, order_seg: int):
    """nnU-Net v1's "moreDA" CPU pipeline (batchgenerators) with SynCAS' probabilities."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (
        BrightnessMultiplicativeTransform,
        ContrastAugmentationTransform,
        GammaTransform,
    )
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    angle = (-np.pi / 6, np.pi / 6)
    return Compose(
        [
            SpatialTransform(
                patch_size,
                patch_center_dist_from_border=None,
                do_elastic_deform=False,
                do_rotation=True,
                angle_x=angle,
                angle_y=angle,
                angle_z=angle,
                p_rot_per_axis=1,
                do_scale=True,
                scale=(0.85, 1.25),
                border_mode_data="constant",
                border_cval_data=0,
                order_data=order_data,
                border_mode_seg="constant",
                border_cval_seg=-1,
                order_seg=order_seg,
                random_crop=False,
                p_el_per_sample=0,
                p_scale_per_sample=0.2,
                p_rot_per_sample=0.2,
                independent_scale_for_each_axis=False,
            ),
            GaussianNoiseTransform(p_per_sample=0.1),
            GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
            BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
            ContrastAugmentationTransform(p_per_sample=0.15),
            SimulateLowResolutionTransform(
                zoom_range=(0.5, 1),
                per_channel=True,
                p_per_channel=0.5,
                order_downsample=0,
                order_upsample=3,
                p_per_sample=0.25,
                ignore_axes=None,
            ),
            GammaTransform((0.7, 1.5), True, True, retain_stats=True, p_per_sample=0.1),
            GammaTransform((0.7, 1.5), False, True, retain_stats=True, p_per_sample=0.3),
            MirrorTransform((0, 1, 2)),
        ]
    )


def bench_batchgenerators(batch: dict[str, np.ndarray], repeats: int, order_data: int, order_seg: int) -> float:
    """Seconds per batch of batchgenerators on the same batch (views as the two channels)."""
    np.random.seed(0)
    pipeline = batchgenerators_pipeline(batch["label"].shape[1:], order_data, order_seg)
    start = time.perf_counter()
    for _ in range(repeats):
        pipeline(data=np.array(batch["views"]), seg=batch["label"][:, None].astype(np.float32))
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 448, 448))
    parser.add_argument("--repeats", type=int, default=10, help="augmentation batches timed per method")
    parser.add_argument("--augment-only", action="store_true", help="time the JAX augmentation on a random batch")
    args = parser.parse_args()
    if args.augment_only:
        import jax

        rng = np.random.default_rng(0)
        batch = {
            "views": rng.normal(size=(4, 2, 32, 224, 224)).astype(np.float32),
            "label": rng.integers(-1, 5, size=(4, 32, 224, 224)).astype(np.int16),
        }
        compile_s, ours = bench_augment(batch, args.repeats)
        print(f"augment_device: {jax.devices()[0].device_kind}")
        print(f"augment_compile_s: {compile_s:.1f}")
        print(f"augment_s_per_batch: {ours:.4f}")
        return
    from syncas_jax.data.cache import write_cached_case, write_dataset_info

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        cache = Path(tmp)
        start = time.perf_counter()
        cases = [f"case{i:03d}" for i in range(args.cases)]
        for i, case_id in enumerate(cases):
            write_cached_case(cache, case_id, phantom_case(tuple(args.shape), i))
        write_dataset_info(cache, SPACING)
        print(f"cache_build_s: {time.perf_counter() - start:.1f}")
        for workers in (2, 0):
            print(f"loader_batches_per_s_workers{workers}: {bench_loader(cache, cases, args.batches, workers):.2f}")

        from syncas_jax.data.loader import make_val_loader

        loader = make_val_loader(cache, cases, (32, 224, 224), 4, num_batches=1, oversample_foreground=1.0)
        batch = {k: np.array(v) for k, v in next(iter(loader)).items()}
    compile_s, ours = bench_augment(batch, args.repeats)
    print(f"augment_compile_s: {compile_s:.1f}")
    print(f"augment_s_per_batch: {ours:.3f}")
    try:
        import batchgenerators  # noqa: F401
    except ImportError:
        print("batchgenerators: not installed")
        return
    nnunet = bench_batchgenerators(batch, args.repeats, order_data=3, order_seg=1)
    same = bench_batchgenerators(batch, args.repeats, order_data=1, order_seg=0)
    print(f"batchgenerators_nnunet_orders_s_per_batch: {nnunet:.3f}")
    print(f"batchgenerators_linear_nearest_s_per_batch: {same:.3f}")
    print(f"augment_speedup_vs_batchgenerators_nnunet: {nnunet / ours:.2f}")
    print(f"augment_speedup_vs_batchgenerators_linear: {same / ours:.2f}")


if __name__ == "__main__":
    main()
