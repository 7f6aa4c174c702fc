"""Four-tap branch-aware contrastive loss: our jitted loss vs the straightforward PyTorch loop.

Same process, same features, same labels; the two run alternately and we report the
median time of each and their ratio (torch / ours, so > 1 means we are faster).

Shapes are those of the reference's 32×224×224 training patch:
  tap 0  (B, 4, 28, 28)     tap 1 (B, 8, 56, 56)
  tap 2  (B, 16, 112, 112)  tap 3 (B, 32, 224, 224)
Modes
  projected   the loss on already projected, L2-normalised 128-d features of every tap
              (ours: `multi_tap_contrastive_loss`; torch: `contrastive_four_taps_loop`).
  heads       the realistic training cost: raw taps (C = 128, 64, 32, 16) plus the four
              projection heads. Ours projects only the sampled voxels (`projections=`);
              the reference applies the heads to every voxel of both views, then loops.
Both are forward (loss value) only.

Memory: 128-d f32 features at full resolution are B·6.4 M·128·4 bytes per view, i.e.
3.3 GB per view at B = 4. The torch peer gets its own contiguous channels-first copy (its
fastest layout) and the heads mode materialises the projected features, so the default
batch is 2 (≈ 7 GB peak); `--batch 4` runs the spec's batch (≈ 14 GB peak).

    python benchmarks/bench_contrastive.py            # default: batch 2, both modes
    python benchmarks/bench_contrastive.py --batch 4  # the spec's batch, needs ~14 GB free
    python benchmarks/bench_contrastive.py --quick    # smoke run on a 16×64×64 patch
"""

from __future__ import annotations

import argparse
import functools
import os

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import torch  # noqa: E402
from _common import emit, emit_load_at_end, emit_machine, interleaved, median, paired_ratio, ratio_spread  # noqa: I001  (also puts the repo on sys.path)
from scipy import ndimage  # noqa: E402

from syncas_jax.losses.contrastive import multi_tap_contrastive_loss, resize_labels_nearest  # noqa: E402
from syncas_jax.nets.unet import ProjectionHead  # noqa: E402
from tests import torch_reference as ref  # noqa: E402

SPACING = (3.0, 0.35, 0.35)  # mm (z, y, x) of the reference's CTA patches
PROJECTED_DIM = 128


# ------------------------------------------------------------------ labels


def _curve(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length_mm: float) -> np.ndarray:
    """Points (mm) of a smooth wiggly curve from `start` along `direction`, 0.1 mm steps."""
    t = np.linspace(0.0, length_mm, int(length_mm / 0.1))
    direction = direction / np.linalg.norm(direction)
    normal = np.cross(direction, rng.normal(size=3))
    normal /= np.linalg.norm(normal)
    binormal = np.cross(direction, normal)
    wiggle = 4.0 * np.sin(2 * np.pi * t / rng.uniform(25, 60) + rng.uniform(0, 2 * np.pi))
    wiggle2 = 3.0 * np.sin(2 * np.pi * t / rng.uniform(20, 50) + rng.uniform(0, 2 * np.pi))
    return start + t[:, None] * direction + wiggle[:, None] * normal + wiggle2[:, None] * binormal


def _paint(shape, curves_with_radius) -> np.ndarray:
    """Union of tubes: voxels within radius (mm, tapering to 60 %) of each curve."""
    out = np.zeros(shape, bool)
    spacing = np.asarray(SPACING)
    for points, radius in curves_with_radius:
        centre = np.zeros(shape, bool)
        index = np.round(points / spacing).astype(int)
        inside = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
        if not inside.any():
            continue
        centre[tuple(index[inside].T)] = True
        distance = ndimage.distance_transform_edt(~centre, sampling=SPACING)
        out |= distance <= radius
    return out


def coronary_like_labels(rng: np.random.Generator, shape: tuple[int, int, int], pad: str | None) -> np.ndarray:
    """Branch labels of one patch: a branching tree (the largest component, label 1), a second
    long vessel and two short fragments (labels 2.. by decreasing size), background 0, and
    optionally a padded band of −1 (patch beyond the image edge)."""
    extent = np.asarray(shape) * np.asarray(SPACING)
    curves = []
    # Left-coronary-like tree: a trunk plus three side branches leaving it.
    trunk = _curve(rng, extent * [0.1, 0.2, 0.15], np.array([0.4, 0.5, 1.0]), 90)
    curves.append((trunk, 1.6))
    for frac in rng.uniform(0.15, 0.8, size=3):
        origin = trunk[int(frac * (len(trunk) - 1))]
        curves.append((_curve(rng, origin, np.array([0.3, 1.0, rng.uniform(-0.5, 0.5)]), rng.uniform(25, 45)), 1.1))
    # Right-coronary-like vessel (second component) and two short fragments.
    curves.append((_curve(rng, extent * [0.8, 0.85, 0.1], np.array([-0.3, -0.2, 1.0]), 70), 1.3))
    for _ in range(2):
        curves.append((_curve(rng, extent * rng.uniform(0.2, 0.8, 3), rng.normal(size=3), rng.uniform(8, 15)), 0.8))
    vessels = _paint(shape, curves)
    components, count = ndimage.label(vessels)
    sizes = np.bincount(components.ravel())[1:]
    labels = np.zeros(shape, np.int32)
    for rank, component in enumerate(np.argsort(-sizes), start=1):
        labels[components == component + 1] = rank
    if pad == "z":
        labels[-shape[0] // 8 :] = -1
    elif pad == "x":
        labels[..., : shape[2] // 10] = -1
    return labels


def make_labels(batch: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pads = [None, "z", "x", None]
    return np.stack([coronary_like_labels(rng, shape, pads[i % len(pads)]) for i in range(batch)])


# ------------------------------------------------------------------ features


def tap_shapes(batch: int, patch: tuple[int, int, int]) -> list[tuple[int, int, int, int]]:
    z, y, x = patch
    return [(batch, z // f, y // f, x // f) for f in (8, 4, 2, 1)]


@functools.partial(jax.jit, static_argnums=1)
def _unit(key, shape):
    f = jax.random.normal(key, shape, jnp.float32)
    return f / jnp.linalg.norm(f, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnums=1)
def _relu_normal(key, shape):
    return jax.nn.relu(jax.random.normal(key, shape, jnp.float32))


def projected_features(key, shape, channels):
    """Unit 128-d features of view 1 and a correlated view 2 (channels rolled), channels-last."""
    f1 = _unit(key, (*shape, channels))
    f2 = jax.jit(lambda a: jnp.roll(a, 1, axis=-1))(f1)
    return f1, f2


def to_torch(a: jax.Array) -> torch.Tensor:
    """Contiguous channels-first float32 copy (the layout the reference loop reads fastest)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a), -1, 1)))


# ------------------------------------------------------------------ runs


def report_sets(labels: np.ndarray, shapes) -> None:
    """Per tap: how many items are valid (|P| >= 10 and |N| >= 10) and the mean |P|, |Q|."""
    for k, shape in enumerate(shapes):
        lab = np.asarray(resize_labels_nearest(jnp.asarray(labels), shape[1:])).reshape(labels.shape[0], -1)
        pos = (lab == 1).sum(1)
        pseudo = (lab > 1).sum(1)
        valid = ((pos >= 10) & ((lab == 0).sum(1) >= 10)).sum()
        emit(f"tap{k}_valid_items", f"{valid}/{labels.shape[0]} (mean |P| {pos.mean():.0f}, |Q| {pseudo.mean():.0f})")


def compare_with_torch(prefix, ratio_name, fn, args, theirs, repeats, seed):
    """Time jitted `fn(key, *args)` (a fresh key per call) against `theirs()`, interleaved.

    The first call of each (compile / warm-up) prints its loss; then the medians and the
    torch / ours ratios (> 1: we are faster), plain and paired."""
    state = {"key": jax.random.key(seed + 1)}

    def ours():
        state["key"], sub = jax.random.split(state["key"])
        return float(fn(sub, *args))

    runs = {"ours": ours, "torch": theirs}
    for name, run in runs.items():
        emit(f"{prefix}_loss[{name}]", run())
    times = interleaved(runs, repeats, warmup=1)
    for name in runs:
        emit(f"{prefix}_median_s[{name}]", median(times[name]))
    emit(f"{ratio_name}[ours]", median(times["torch"]) / median(times["ours"]))
    emit(f"{ratio_name}_paired[ours]", paired_ratio(times["torch"], times["ours"]))
    emit(f"{ratio_name}_paired_spread[ours]", ratio_spread(times["torch"], times["ours"]))


def bench_projected(labels_np, shapes, repeats, seed):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    taps = [projected_features(k, s, PROJECTED_DIM) for k, s in zip(keys, shapes)]
    taps1 = [t[0] for t in taps]
    taps2 = [t[1] for t in taps]
    del taps
    labels = jnp.asarray(labels_np)
    torch1 = [to_torch(t) for t in taps1]
    torch2 = [to_torch(t) for t in taps2]
    labels_t = torch.from_numpy(labels_np).long()

    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def theirs():
        return float(ref.contrastive_four_taps_loop(torch1, torch2, labels_t, generator=generator))

    ours = jax.jit(multi_tap_contrastive_loss)
    args = (taps1, taps2, labels)
    compare_with_torch("projected", "contrastive_speedup_vs_torch_loop", ours, args, theirs, repeats, seed)


def bench_heads(labels_np, shapes, repeats, seed):
    channels = ref.TAP_CHANNELS
    torch.manual_seed(seed)
    heads_t = ref.make_heads().eval()
    head_params = [
        {
            fc: {
                "kernel": jnp.asarray(h.mlp[i].weight.detach().numpy().T),
                "bias": jnp.asarray(h.mlp[i].bias.detach().numpy()),
            }
            for fc, i in (("fc1", 0), ("fc2", 2))
        }
        for h in heads_t
    ]
    head = ProjectionHead()
    keys = jax.random.split(jax.random.key(seed + 7), 2 * len(shapes))
    raw1 = [_relu_normal(keys[2 * i], (*s, c)) for i, (s, c) in enumerate(zip(shapes, channels))]
    raw2 = [_relu_normal(keys[2 * i + 1], (*s, c)) for i, (s, c) in enumerate(zip(shapes, channels))]
    labels = jnp.asarray(labels_np)
    raw1_t = [to_torch(t) for t in raw1]
    raw2_t = [to_torch(t) for t in raw2]
    labels_t = torch.from_numpy(labels_np).long()

    @jax.jit
    def ours(key, params, taps1, taps2, lab):
        projections = [lambda f, p=p: head.apply({"params": p}, f) for p in params]
        return multi_tap_contrastive_loss(key, taps1, taps2, lab, projections=projections)

    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def theirs():
        p1 = [h(t) for h, t in zip(heads_t, raw1_t)]
        p2 = [h(t) for h, t in zip(heads_t, raw2_t)]
        return float(ref.contrastive_four_taps_loop(p1, p2, labels_t, generator=generator))

    args = (head_params, raw1, raw2, labels)
    compare_with_torch("heads", "contrastive_with_heads_speedup_vs_torch", ours, args, theirs, repeats, seed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 16×64×64 patch, batch 2, 2 repeats")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 2; the spec's is 4)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per peer (default 15 projected, 3 heads)"
    )
    parser.add_argument("--mode", choices=("both", "projected", "heads"), default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: CPU count)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    patch = (16, 64, 64) if args.quick else (32, 224, 224)
    batch = args.batch or 2
    repeats = args.repeats or (2 if args.quick else 15)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    shapes = tap_shapes(batch, patch)

    emit_machine()
    emit("patch", "x".join(map(str, patch)))
    emit("batch", batch)
    emit("torch_threads", torch.get_num_threads())
    emit("jax_backend", jax.default_backend())
    labels_np = make_labels(batch, patch, args.seed)
    report_sets(labels_np, shapes)
    if args.mode in ("both", "projected"):
        bench_projected(labels_np, shapes, repeats, args.seed)
    if args.mode in ("both", "heads"):
        bench_heads(labels_np, shapes, args.repeats or (2 if args.quick else 3), args.seed)
    emit_load_at_end()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
