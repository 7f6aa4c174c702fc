"""grain input pipeline over the preprocessing cache: random patches with foreground oversampling.

Cache layout (`syncas_jax.data.layout`): per case ``{id}.views.npy`` float32
(V, Z, Y, X), ``{id}.label.npy`` int16 (Z, Y, X) branch labels, ``{id}.fg.npy`` int32
(M, 3) foreground (z, y, x) indices, ``{id}.json``. Arrays are opened with
``np.load(mmap_mode="r")`` on each access, so a patch reads only its own bytes.

Batches are dicts ``{"views": float32 (B, V, Z, Y, X), "label": int16 (B, Z, Y, X)}``;
voxels of a patch outside the volume are 0 in the views and -1 in the label (ignored
by the contrastive loss, background for the segmentation target).

Patch placement follows nnU-Net's ``get_bbox``: a volume smaller than the patch is
centred with padding; otherwise the patch lies inside the volume. With probability
`oversample_foreground` per item (an independent draw, not nnU-Net's fixed last third
of the batch) the patch is centred on a random foreground voxel (it may then reach out
of the volume at the upper end); a case without foreground falls back to a random patch.

Training order: cases are shuffled per epoch (`EpochShuffle`) and repeated forever.
The stream is a function of the *global item index* g alone: global batch b holds items
b·B … b·B + B − 1 (B the global batch), item g's case and random draws (grain's per-index
generator) depend only on (seed, g), and a shard (process) p of P takes its contiguous
slice b·B + p·B/P … of every global batch (`ShardBatches`). So P processes together see
exactly the batches one process sees, whatever P and the number of workers, and a run
resumes anywhere by starting at a global batch (`start_batch` = the global step). The
iterator state (``it.get_state()``, a JSON-able dict; ``it.set_state(state)``) resumes it
too. With worker processes, batches arrive in shared memory; call ``it.close()`` when done
to stop the workers.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.data.layout import IMAGE_PAD, LABEL_PAD, PATCH_SIZE, cache_paths

_OPEN_LOCK = threading.Lock()


def open_cached(path: str | os.PathLike) -> np.ndarray:
    """Memory map of a cached .npy array (nothing read yet); InputError naming the file if it cannot be opened."""
    try:
        # np.load parses the .npy header with ast.literal_eval, which CPython 3.11 (≤ 3.11.7 at least)
        # can crash on when threads call it at once ("AST constructor recursion depth mismatch");
        # grain's read threads would. Opening is cheap; the voxels are read later, outside the lock.
        with _OPEN_LOCK:
            return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot memory-map cached array ({error})") from None


class CacheSource:
    """grain random-access source: item i = memory maps of case `case_ids[i]` (nothing read yet)."""

    def __init__(self, cache_dir: str | os.PathLike, case_ids: Sequence[str]):
        if not case_ids:
            raise InputError(cache_dir, "no cases selected for the loader")
        self.cache_dir = str(cache_dir)
        self.case_ids = [str(c) for c in case_ids]
        views = set()
        for case_id in self.case_ids:
            paths = cache_paths(cache_dir, case_id)
            for path in paths.values():
                if not path.exists():
                    raise InputError(path, f"missing from the cache (case {case_id} not preprocessed)")
            v, *_ = self._open(case_id, "views").shape
            views.add(v)
        if len(views) != 1:
            raise InputError(cache_dir, f"selected cases have different numbers of views: {sorted(views)}")
        self.num_views = views.pop()

    def _open(self, case_id: str, kind: str) -> np.ndarray:
        return open_cached(cache_paths(self.cache_dir, case_id)[kind])

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        return {kind: self._open(case_id, kind) for kind in ("views", "label", "fg")}

    def __repr__(self) -> str:
        return f"CacheSource({self.cache_dir!r}, {len(self.case_ids)} cases)"


class EpochShuffle(grain.MapDataset):
    """The parent repeated forever, each epoch in a fresh seeded order (numpy permutation).

    grain's ``shuffle`` uses a Feistel index shuffle that costs ~15 ms per index on a
    handful of cases (fine from ~100); this one is O(1) per index at any size.
    """

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = int(seed)
        self._last: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def __len__(self) -> int:
        return sys.maxsize

    def _order(self, epoch: int) -> np.ndarray:
        cached_epoch, order = self._last
        if cached_epoch != epoch:
            order = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent))
            self._last = (epoch, order)
        return order

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, len(self._parent))
        return self._parent[int(self._order(epoch)[position])]

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed})"


def patch_origin(
    shape: Sequence[int],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Lower corner (voxels, may be negative) of a patch in a volume of `shape`, nnU-Net's get_bbox.

    foreground: (M, 3) candidate centres; when given and non-empty, one is drawn and the
    patch is centred on it (clipped at the lower bound only, as nnU-Net).
    """
    shape = np.asarray(shape)
    patch = np.asarray(patch_size)
    need = np.maximum(patch - shape, 0)
    low = -(need // 2)
    high = shape + need // 2 + need % 2 - patch
    if foreground is not None and len(foreground):
        centre = np.asarray(foreground[rng.integers(len(foreground))])
        return np.maximum(low, centre - patch // 2)
    return rng.integers(low, high + 1)


def window_slices(
    origin: Sequence[int], size: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
    """(source slices in the volume, destination slices in the window, whether the window lies wholly
    inside) for a window of `size` at `origin` (may reach outside) of a volume of `shape`."""
    src, dst = [], []
    for lo, n, extent in zip(origin, size, shape):
        a, b = min(max(lo, 0), extent), max(min(lo + n, extent), 0)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - lo, a - lo + max(b - a, 0)))
    return tuple(src), tuple(dst), all(d.stop - d.start == n for d, n in zip(dst, size))


def fill_patch(
    views: np.ndarray,
    label: np.ndarray,
    origin: Sequence[int],
    out_views: np.ndarray,
    out_label: np.ndarray,
) -> None:
    """Copy the patch at `origin` of views (V, Z, Y, X) and label (Z, Y, X) into out_views (V, *patch)
    and out_label (*patch); voxels outside the volume become 0 and -1."""
    src, dst, inside = window_slices(origin, out_label.shape, label.shape)
    if not inside:
        out_views[...] = IMAGE_PAD
        out_label[...] = LABEL_PAD
    out_views[(slice(None), *dst)] = views[(slice(None), *src)]
    out_label[dst] = label[src]


def extract_patch(
    views: np.ndarray, label: np.ndarray, origin: Sequence[int], patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Views (V, *patch) float32 and label (*patch) int16 at `origin`; outside the volume 0 and -1."""
    out_views = np.empty((views.shape[0], *patch_size), np.float32)
    out_label = np.empty(tuple(patch_size), np.int16)
    fill_patch(views, label, origin, out_views, out_label)
    return out_views, out_label


MIX_STREAM = 0x4D49  # seeds the per-item cache draw of a mixed stream


class WeightedMix(grain.MapDataset):
    """Item g of several caches' sources: the cache drawn by `weights`, then one of its cases uniformly.

    Both draws come from a generator seeded with (seed, g) alone, so the stream stays a function of
    the global item index (resumable, the same on any number of processes). Cases are drawn with
    replacement: a mixed stream has no epochs.
    """

    def __init__(self, parents: Sequence[grain.MapDataset], weights: Sequence[float], seed: int):
        super().__init__(list(parents))
        if len(weights) != len(parents) or min(weights) <= 0:
            raise ValueError(f"need one positive weight per source, got {list(weights)} for {len(parents)}")
        self._bounds = np.cumsum(np.asarray(weights, float) / float(np.sum(weights)))
        self._seed = int(seed)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        rng = np.random.default_rng([self._seed, MIX_STREAM, int(index)])
        source = min(int(np.searchsorted(self._bounds, rng.random(), side="right")), len(self._parents) - 1)
        parent = self._parents[source]
        return parent[int(rng.integers(len(parent)))]

    def __str__(self) -> str:
        return f"WeightedMix(seed={self._seed}, bounds={self._bounds.tolist()})"


class PatchPlanner(grain.transforms.RandomMap):
    """grain RandomMap: draws where the patch of a case lies (reads no voxels).

    With probability `oversample_foreground` the patch is centred on a random foreground voxel;
    items whose global index (the "item" key `index_item` adds) is below `forced_items` always are.
    """

    def __init__(self, patch_size: Sequence[int], oversample_foreground: float = 0.33, forced_items: int = 0):
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive ints, got {patch_size}")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must lie in [0, 1], got {oversample_foreground}")
        self.oversample_foreground = float(oversample_foreground)
        self.forced_items = int(forced_items)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        warm_up = "item" in element and element["item"] < self.forced_items
        force = rng.random() < self.oversample_foreground or warm_up
        origin = patch_origin(element["label"].shape, self.patch_size, rng, element["fg"] if force else None)
        return {**{k: v for k, v in element.items() if k not in ("fg", "item")}, "origin": origin}


def index_item(index: int, element: dict[str, Any]) -> dict[str, Any]:
    """grain map_with_index: the element with its global item index (what `PatchPlanner.forced_items` counts)."""
    return {**element, "item": index}


class PatchBatcher:
    """grain batch_fn: copies each planned patch straight into the batch arrays.

    Inside grain worker processes the batch arrays are allocated in shared memory, so
    every voxel is copied once, from the memory-mapped cache into the array the
    training process receives.
    """

    def __init__(self, patch_size: Sequence[int], num_views: int | None = None):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.num_views = num_views
        self._shared_memory = False

    def enable_shared_memory_output(self) -> None:
        self._shared_memory = True

    def _empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if self._shared_memory:
            from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

            return SharedMemoryArray(shape, dtype)
        return np.empty(shape, dtype)

    def __call__(self, groups: Sequence[Sequence[dict[str, Any]]]) -> dict[str, np.ndarray]:
        """One batch from planned items, given as groups (`ShardBatches` elements) laid end to end."""
        items = [item for group in groups for item in group]
        count = self.num_views or items[0]["views"].shape[0]
        views = self._empty((len(items), count, *self.patch_size), np.float32)
        label = self._empty((len(items), *self.patch_size), np.int16)
        for i, item in enumerate(items):
            fill_patch(batch_views(item["views"], count), item["label"], item["origin"], views[i], label[i])
        return {"views": views, "label": label}


def batch_views(views: np.ndarray, count: int) -> np.ndarray:
    """The first `count` views of a case (V, Z, Y, X); a one-view case (a labelled real scan) gives its
    view as every one of them (broadcast on copy), so the train step gets its two views (design §12)."""
    if views.shape[0] == 1 or views.shape[0] >= count:
        return views[:count]
    raise ValueError(f"a case with {views.shape[0]} views cannot fill {count}")


def _absl_flags_parsed() -> None:
    """grain ≤ 0.2.18 reads an absl flag in mp_prefetch and fails unless flags were parsed (google/grain#1355)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class ShardBatches(grain.MapDataset):
    """Element j = this shard's planned items of global batch `start_batch` + j (a list of B / shards).

    Global batch b holds parent items b·B … b·B + B − 1; shard p takes the contiguous slice
    b·B + p·L … b·B + p·L + L − 1, L = B / shards. Items are whole-batch groups so that grain's
    worker processes (which split elements among themselves) never change a batch's content.
    """

    def __init__(self, parent: grain.MapDataset, batch_size: int, shard_index: int, shard_count: int,
                 start_batch: int = 0):  # fmt: skip
        super().__init__(parent)
        if batch_size < 1 or batch_size % shard_count:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of shard_count {shard_count}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index must lie in [0, {shard_count}), got {shard_index}")
        self._batch, self._local = batch_size, batch_size // shard_count
        self._first = shard_index * self._local
        self._start = int(start_batch)

    def __len__(self) -> int:
        return max(len(self._parent) // self._batch - self._start, 0)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        first = (self._start + int(index)) * self._batch + self._first
        return [self._parent[first + k] for k in range(self._local)]

    def __str__(self) -> str:
        return f"ShardBatches(batch={self._batch}, local={self._local}, first={self._first}, start={self._start})"


def _pipeline(
    ds: grain.MapDataset,
    patch_size: Sequence[int],
    batch_size: int,
    oversample_foreground: float,
    workers: int,
    threads: int,
    shard_index: int,
    shard_count: int,
    start_batch: int = 0,
    batch_fn: PatchBatcher | None = None,
    forced_items: int = 0,
) -> grain.IterDataset:
    """Plan every item of `ds` by its own index, then this shard's batches (global `batch_size`)."""
    if forced_items:  # grain derives random_map's per-index seeds from the chain: keep other runs' streams as they were
        ds = ds.map_with_index(index_item)
    ds = ds.random_map(PatchPlanner(patch_size, oversample_foreground, forced_items))
    ds = ShardBatches(ds, batch_size, shard_index, shard_count, start_batch)
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)
    batch_fn = batch_fn or PatchBatcher(patch_size)
    it = ds.to_iter_dataset(read).batch(1, batch_fn=batch_fn)  # one group → one batch
    if workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return it


def make_train_loader(
    cache_dir: str | os.PathLike,
    case_ids: Sequence[str],
    patch_size: Sequence[int] = PATCH_SIZE,
    batch_size: int = 4,
    seed: int = 0,
    oversample_foreground: float = 0.33,
    workers: int = 2,
    *,
    threads: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
    start_batch: int = 0,
    forced_batches: int = 0,
    source: Any = None,
    batch_fn: PatchBatcher | None = None,
    mix: Sequence[tuple[str | os.PathLike, Sequence[str]]] = (),
    weights: Sequence[float] | None = None,
    num_views: int | None = None,
) -> grain.IterDataset:
    """Endless training batches {"views": float32 (L, V, *patch), "label": int16 (L, *patch)}.

    batch_size: the global batch B, L = B / shard_count; shard_index/shard_count: this process's slice of every global
    batch (multi-host training). start_batch: the first global batch to yield (resume at a global
    step). forced_batches: every patch of the first that many global batches is centred on a
    coronary voxel, whatever `oversample_foreground`. `iter(loader)` gives a grain DatasetIterator:
    ``get_state()`` returns a JSON-able dict, ``set_state(state)`` resumes exactly. workers: worker
    processes (0 = in this process); threads: read threads per worker. The batches do not depend on workers or threads.
    source, batch_fn: another cache's source and batcher (the CTA cache: `syncas_jax.data.cta_loader`).
    mix: further (cache_dir, case_ids) to draw from; weights: one per cache, `cache_dir` first (default equal):
    each item's cache is drawn by weight and its case uniformly (`WeightedMix`) instead of the epoch shuffle.
    num_views: views per item in the batch (default: the cases'); one-view cases fill every view (`batch_views`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    source = CacheSource(cache_dir, case_ids) if source is None else source
    if mix:
        parents = [grain.MapDataset.source(s) for s in (source, *(CacheSource(d, ids) for d, ids in mix))]
        ds = WeightedMix(parents, weights or [1.0] * len(parents), seed).seed(seed)
    else:
        ds = EpochShuffle(grain.MapDataset.source(source), seed).seed(seed)
    batch_fn = batch_fn or PatchBatcher(patch_size, num_views)
    return _pipeline(
        ds,
        patch_size,
        batch_size,
        oversample_foreground,
        workers,
        threads,
        shard_index,
        shard_count,
        start_batch,
        batch_fn,
        forced_batches * batch_size,
    )


def make_val_loader(
    cache_dir: str | os.PathLike,
    case_ids: Sequence[str],
    patch_size: Sequence[int] = PATCH_SIZE,
    batch_size: int = 4,
    num_batches: int | None = None,
    seed: int = 0,
    oversample_foreground: float = 0.33,
    workers: int = 0,
    *,
    threads: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
    source: Any = None,
    batch_fn: PatchBatcher | None = None,
) -> grain.IterDataset:
    """Finite, identical on every pass: `num_batches` global batches of patches cycling through the cases in order.

    num_batches: default ceil(len(case_ids) / batch_size), every case at least once. A shard yields
    its slice of each global batch, as `make_train_loader`. source, batch_fn: as `make_train_loader`.
    """
    if num_batches is None:
        num_batches = math.ceil(len(case_ids) / batch_size)
    source = CacheSource(cache_dir, case_ids) if source is None else source
    ds = grain.MapDataset.source(source).repeat()[: num_batches * batch_size].seed(seed)
    return _pipeline(
        ds, patch_size, batch_size, oversample_foreground, workers, threads, shard_index, shard_count, 0, batch_fn
    )


def split_cases(case_ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded random split of sorted case ids into (train, val); val gets round(fraction·n) cases.

    At least one case each when there are ≥ 2 cases and 0 < val_fraction < 1.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    ids = sorted(str(c) for c in case_ids)
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val
