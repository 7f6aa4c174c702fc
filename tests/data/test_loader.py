"""grain loader over the cache: patches, padding, foreground oversampling, determinism, resume, workers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from syncas_jax.common.errors import InputError
from syncas_jax.data.cache import PreprocessedCase, branch_labels, foreground_locations, write_cached_case
from syncas_jax.data.loader import (
    extract_patch,
    make_train_loader,
    make_val_loader,
    patch_origin,
    split_cases,
)

PATCH = (4, 16, 16)
SHAPE = (8, 64, 64)
FG_VOXEL = (6, 50, 9)  # a single foreground voxel near a corner


def _case(seed: int, with_fg: bool = True) -> PreprocessedCase:
    rng = np.random.default_rng(seed)
    views = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    if with_fg:
        mask[FG_VOXEL] = True
    label = branch_labels(mask)
    return PreprocessedCase(views, label, foreground_locations(label), {"num_views": 2})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    for i in range(3):
        write_cached_case(folder, f"c{i}", _case(i))
    write_cached_case(folder, "nofg", _case(9, with_fg=False))
    return folder


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_patch_extraction_pads_outside_the_volume():
    views = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7) + 1
    label = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) + 1
    out_views, out_label = extract_patch(views, label, (-2, 3, 4), (4, 4, 4))
    np.testing.assert_array_equal(out_views[:, 2:, :3, :3], views[:, :2, 3:, 4:])
    np.testing.assert_array_equal(out_label[2:, :3, :3], label[:2, 3:, 4:])
    assert np.all(out_views[:, :2] == 0) and np.all(out_views[:, :, 3:] == 0) and np.all(out_views[..., 3:] == 0)
    assert np.all(out_label[:2] == -1) and np.all(out_label[:, 3:] == -1) and np.all(out_label[..., 3:] == -1)
    inside_views, inside_label = extract_patch(views, label, (1, 1, 1), (3, 4, 5))
    np.testing.assert_array_equal(inside_label, label[1:4, 1:5, 1:6])
    np.testing.assert_array_equal(inside_views, views[:, 1:4, 1:5, 1:6])


def test_patch_origin_follows_nnunet_bounds():
    rng = np.random.default_rng(0)
    origins = np.array([patch_origin((3, 40, 20), (8, 16, 16), rng) for _ in range(500)])
    assert np.all(origins[:, 0] == -2)  # too small along z: centred with padding (need 5 → 2 before, 3 after)
    assert origins[:, 1].min() == 0 and origins[:, 1].max() == 24
    assert origins[:, 2].min() == 0 and origins[:, 2].max() == 4
    centred = patch_origin((3, 40, 20), (8, 16, 16), rng, np.array([[1, 30, 2]]))
    np.testing.assert_array_equal(centred, [-2, 22, 0])


def _fraction_with_foreground(cache, oversample, items):
    loader = make_train_loader(cache, ["c0", "c1", "c2"], PATCH, 4, seed=5, oversample_foreground=oversample, workers=0)
    labels = np.concatenate([b["label"] for b in _take(iter(loader), items // 4)])
    return np.mean(np.any(labels > 0, axis=(1, 2, 3)))


def test_foreground_oversampling_fraction(cache):
    # Chance that a random patch contains the single foreground voxel: origins covering it / all origins.
    per_axis = []
    for size, extent, at in zip(PATCH, SHAPE, FG_VOXEL):
        origins = np.arange(0, extent - size + 1)
        per_axis.append(np.mean((origins <= at) & (at < origins + size)))
    q = float(np.prod(per_axis))
    n = 1200
    for p in (0.0, 0.33):
        expected = p + (1 - p) * q
        frac = _fraction_with_foreground(cache, p, n)
        assert abs(frac - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-9, (p, frac, expected)
    assert _fraction_with_foreground(cache, 1.0, 40) == 1.0


def test_batches_are_deterministic_and_resumable_in_process(cache):
    ids = ["c0", "c1", "c2", "nofg"]
    first = iter(make_train_loader(cache, ids, PATCH, 4, seed=1, oversample_foreground=0.5, workers=0))
    batches = _take(first, 3)
    assert batches[0]["views"].shape == (4, 2, *PATCH) and batches[0]["views"].dtype == np.float32
    assert batches[0]["label"].shape == (4, *PATCH) and batches[0]["label"].dtype == np.int16
    state = json.loads(json.dumps(first.get_state()))
    following = next(first)

    again = _take(iter(make_train_loader(cache, ids, PATCH, 4, seed=1, oversample_foreground=0.5, workers=0)), 3)
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["views"], b["views"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = next(iter(make_train_loader(cache, ids, PATCH, 4, seed=2, oversample_foreground=0.5, workers=0)))
    assert not np.array_equal(other["views"], batches[0]["views"])

    resumed = iter(make_train_loader(cache, ids, PATCH, 4, seed=1, oversample_foreground=0.5, workers=0))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["views"], following["views"])


def test_worker_processes_resume_from_json_state(cache):
    ids = ["c0", "c1", "c2"]
    first = iter(make_train_loader(cache, ids, PATCH, 4, seed=3, workers=2))
    try:
        _take(first, 3)
        state = json.loads(json.dumps(first.get_state()))
        following = _take(first, 2)
    finally:
        first.close()
    resumed = iter(make_train_loader(cache, ids, PATCH, 4, seed=3, workers=2))
    try:
        resumed.set_state(state)
        for expected in following:
            batch = next(resumed)
            np.testing.assert_array_equal(np.asarray(batch["views"]), np.asarray(expected["views"]))
            np.testing.assert_array_equal(np.asarray(batch["label"]), np.asarray(expected["label"]))
    finally:
        resumed.close()
    in_process = _take(iter(make_train_loader(cache, ids, PATCH, 4, seed=3, workers=0)), 5)[3:]
    for expected, batch in zip(following, in_process):  # workers never change a batch
        np.testing.assert_array_equal(np.asarray(batch["views"]), np.asarray(expected["views"]))


def _assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a["views"], b["views"])
        np.testing.assert_array_equal(a["label"], b["label"])


def _joined(*shards):
    return [{k: np.concatenate([batch[k] for batch in parts]) for k in ("views", "label")} for parts in zip(*shards)]


def test_shards_together_are_the_single_stream_and_start_anywhere(cache):
    ids = ["c0", "c1", "c2", "nofg"]
    options = {"seed": 4, "oversample_foreground": 0.5, "workers": 0}
    whole = _take(iter(make_train_loader(cache, ids, PATCH, 4, **options)), 6)
    for count in (2, 4):  # 2 or 4 processes: each takes its contiguous slice of every global batch
        shards = [iter(make_train_loader(cache, ids, PATCH, 4, shard_index=p, shard_count=count, **options))
                  for p in range(count)]  # fmt: skip
        parts = [_take(shard, 6) for shard in shards]
        assert parts[0][0]["views"].shape == (4 // count, 2, *PATCH)
        _assert_same_batches(_joined(*parts), whole)
    later = [iter(make_train_loader(cache, ids, PATCH, 4, shard_index=p, shard_count=2, start_batch=4, **options))
             for p in range(2)]  # fmt: skip
    _assert_same_batches(_joined(*[_take(shard, 2) for shard in later]), whole[4:])

    val = list(make_val_loader(cache, ids, PATCH, batch_size=4, num_batches=3, seed=1))
    halves = [list(make_val_loader(cache, ids, PATCH, 4, 3, seed=1, shard_index=p, shard_count=2)) for p in range(2)]
    _assert_same_batches(_joined(*halves), val)


def test_validation_loader_is_finite_and_repeatable(cache):
    loader = make_val_loader(cache, ["c0", "c1", "nofg"], PATCH, batch_size=2, num_batches=3, seed=0)
    one, two = list(loader), list(loader)
    assert len(one) == 3
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a["views"], b["views"])
    assert len(list(make_val_loader(cache, ["c0", "c1", "nofg"], PATCH, batch_size=2))) == 2


def test_split_cases():
    ids = [f"case{i:02d}" for i in range(10)]
    train, val = split_cases(ids, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert split_cases(reversed(ids), 0.2, seed=0) == (train, val)
    assert split_cases(ids, 0.2, seed=1) != (train, val)
    assert split_cases(["a", "b"], 0.01) == (["a"], ["b"]) or split_cases(["a", "b"], 0.01) == (["b"], ["a"])
    assert split_cases(["a"], 0.2) == (["a"], [])


def test_missing_case_names_the_file(cache):
    with pytest.raises(InputError, match="ghost.views.npy"):
        make_train_loader(cache, ["c0", "ghost"], PATCH, workers=0)
