"""Preprocessing: windowing, nnU-Net resampling, branch labels, round trip, and the CLI on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import Volume, read_volume, volume_from_array, write_volume
from syncas_jax.data.__main__ import main as preprocess_main
from syncas_jax.data.cache import branch_labels, foreground_locations, preprocess_case
from syncas_jax.data.transforms import compute_new_shape, normalize_ct, resample, restore_to_original, separate_axis
from syncas_jax.data.volume import preprocess_image
from tests.data.cases import SPACING, write_case

TEST_SPACING = (3.0, 0.7, 0.7)


def test_windowing_values_are_exact():
    hu = np.array([-3000, -1000, -151, -150, -50, 0, 50, 249, 250, 251, 3000], np.int16)
    expected = np.array([-1, -1, -1, -1, -0.5, -0.25, 0, 0.995, 1, 1, 1], np.float32)
    out = normalize_ct(hu)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_separate_axis_rule():
    assert separate_axis((3.0, 0.35, 0.35), (3.0, 0.35, 0.35)) == 0
    assert separate_axis((0.5, 0.35, 0.35), (3.0, 0.35, 0.35)) == 0  # new spacing is anisotropic
    assert separate_axis((1.0, 1.0, 1.0), (1.5, 1.0, 1.0)) is None
    assert separate_axis((1.0, 3.0, 3.0), (1.0, 3.0, 3.0)) is None  # ratio 3 is not above 3
    assert separate_axis((1.0, 4.0, 4.0), (1.0, 4.0, 4.0)) is None  # two coarse axes: one 3D resize
    assert separate_axis((0.4, 0.4, 2.0), (0.4, 0.4, 2.0)) == 2
    assert compute_new_shape((10, 100, 101), (2.0, 0.7, 0.7), (3.0, 0.35, 0.35)) == (7, 200, 202)


def test_resample_isotropic_equals_scipy_zoom_and_reproduces_a_ramp():
    rng = np.random.default_rng(0)
    data = ndi.gaussian_filter(rng.normal(size=(12, 14, 16)), 1.5).astype(np.float32)
    out = resample(data, (18, 21, 12), (1.0, 1.0, 1.0), (2 / 3, 2 / 3, 4 / 3))
    reference = ndi.zoom(data, (18 / 12, 21 / 14, 12 / 16), order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out, reference, atol=1e-6)
    # Known grid: a linear ramp sampled at pixel centres, interior away from the edge clamp.
    z, y, x = np.indices((12, 14, 16), dtype=np.float32)
    ramp = 2 * z - y + 0.5 * x
    out = resample(ramp, (18, 21, 12), (1.0, 1.0, 1.0), (2 / 3, 2 / 3, 4 / 3), order=1)
    oz, oy, ox = np.indices(out.shape, dtype=np.float32)
    centre = [(o + 0.5) * n_in / n_out - 0.5 for o, n_in, n_out in zip((oz, oy, ox), (12, 14, 16), out.shape)]
    expected = 2 * centre[0] - centre[1] + 0.5 * centre[2]
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(out[inner], expected[inner], atol=1e-4)


def test_resample_anisotropic_is_in_plane_then_nearest_along_z():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(10, 12, 12)).astype(np.float32)
    out = resample(data, (4, 18, 18), (1.2, 0.5, 0.5), (3.0, 1 / 3, 1 / 3))
    in_plane = np.stack([ndi.zoom(s, 1.5, order=3, mode="nearest", grid_mode=True) for s in data])
    source = np.floor((np.arange(4) + 0.5) * 10 / 4).astype(int)  # nearest slice centres: 1, 3, 6, 8
    np.testing.assert_array_equal(source, [1, 3, 6, 8])
    np.testing.assert_allclose(out, in_plane[source], atol=1e-5)
    # Labels: per-label linear in-plane, nearest along z; ids preserved.
    label = np.zeros((10, 12, 12), np.int16)
    label[:, 3:9, 2:6] = 2
    label[:, 4:7, 7:11] = 5
    out = resample(label, (4, 18, 18), (1.2, 0.5, 0.5), (3.0, 1 / 3, 1 / 3), is_label=True)
    assert out.dtype == np.int16 and set(np.unique(out)) == {0, 2, 5}
    np.testing.assert_array_equal(out[:, 5:13, 4:8], 2)
    # Leading channel axis.
    both = resample(np.stack([data, 2 * data]), (4, 18, 18), (1.2, 0.5, 0.5), (3.0, 1 / 3, 1 / 3))
    np.testing.assert_allclose(both[1], 2 * both[0], atol=1e-5)


def test_fewer_slices_are_picked_before_the_in_plane_resize_with_the_same_result():
    """Nearest along z only selects slices, so selecting first (fewer planes to resize) must give
    exactly what resizing every plane and then selecting gives (nnU-Net's order)."""
    rng = np.random.default_rng(2)
    data = rng.normal(size=(23, 11, 13)).astype(np.float32)
    out = resample(data, (7, 16, 19), (0.5, 0.5, 0.5), (1.7, 0.35, 0.35))
    in_plane = np.stack([ndi.zoom(s, (16 / 11, 19 / 13), order=3, mode="nearest", grid_mode=True) for s in data])
    expected = ndi.zoom(in_plane, (7 / 23, 1, 1), order=0, mode="nearest", grid_mode=True)
    np.testing.assert_array_equal(out, expected)
    label = (data > 0.8).astype(np.uint8) + (data > 1.5)
    out = resample(label, (7, 16, 19), (0.5, 0.5, 0.5), (1.7, 0.35, 0.35), is_label=True)
    per_label = np.zeros(in_plane.shape, np.uint8)
    for value in (0, 1, 2):
        masks = (label == value).astype(np.float32)
        zoomed = [ndi.zoom(m, (16 / 11, 19 / 13), order=1, mode="nearest", grid_mode=True) for m in masks]
        per_label[np.stack(zoomed) >= 0.5] = value
    np.testing.assert_array_equal(out, ndi.zoom(per_label, (7 / 23, 1, 1), order=0, mode="nearest", grid_mode=True))


def _equal_size_ranking(components: np.ndarray, count: int) -> np.ndarray:
    """Reference ranking: size descending, then first voxel in C order."""
    ids = np.arange(1, count + 1)
    sizes = ndi.sum_labels(np.ones_like(components), components, ids)
    flat = components.ravel()
    first = np.array([np.flatnonzero(flat == i)[0] for i in ids])
    order = ids[np.lexsort((first, -sizes))]
    lookup = np.zeros(count + 1, np.int16)
    lookup[order] = np.arange(1, count + 1)
    return lookup[components]


def test_branch_labels_match_scipy_label_ranked_by_size():
    rng = np.random.default_rng(2)
    mask = ndi.gaussian_filter(rng.normal(size=(16, 40, 40)), 1.2) > 0.25
    mask[0, 0, 0] = mask[0, 0, 2] = True  # two equal single-voxel components: tie broken by position
    mask[0, 0, 1] = mask[0, 1, 0] = mask[1, 0, 0] = False
    components, count = ndi.label(mask, structure=ndi.generate_binary_structure(3, 1))
    assert count > 5
    ours = branch_labels(mask)
    assert ours.dtype == np.int16
    np.testing.assert_array_equal(ours, _equal_size_ranking(components, count))
    sizes = np.bincount(ours.ravel())[1:]
    assert np.all(np.diff(sizes) <= 0)
    assert not branch_labels(np.zeros((3, 4, 5), bool)).any()


def test_foreground_locations_subsample_is_deterministic():
    label = np.zeros((10, 30, 30), np.int16)
    label[2:8, 5:25, 5:25] = 1
    all_fg = foreground_locations(label)
    assert all_fg.dtype == np.int32 and len(all_fg) == 6 * 20 * 20
    some = foreground_locations(label, limit=100)
    assert len(some) == 100 and np.array_equal(some, foreground_locations(label, limit=100))
    assert np.all(label[tuple(some.T)] > 0)


def _read_case(folder, case_id, views=2):
    return (
        [read_volume(folder / f"{case_id}.view{k}.img.nii.gz") for k in range(views)],
        read_volume(folder / f"{case_id}.label.nii.gz"),
    )


def test_round_trip_restores_geometry_and_label(tmp_path):
    hu, mask = write_case(tmp_path, "rt")
    views, label = _read_case(tmp_path, "rt")
    case = preprocess_case(views, label, TEST_SPACING)
    props = case.properties
    assert props["crop_bbox"] == [[0, 8], [2, 46], [2, 46]]  # the zero frame is cropped
    assert case.views.shape == (2, *props["shape_after_resample"]) and case.views.dtype == np.float32
    assert props["shape_after_resample"] == list(compute_new_shape((8, 44, 44), SPACING, TEST_SPACING))
    assert case.label.max() == props["num_branches"] == 3
    assert json.loads(json.dumps(props)) == props

    restored = restore_to_original(case.label, props, is_label=True)
    assert restored.shape == mask.shape and restored.dtype == np.int16
    dice = 2 * np.sum((restored > 0) & (mask > 0)) / (np.sum(restored > 0) + mask.sum())
    assert dice > 0.8, dice
    # Written next to the input, the file has the input's exact geometry.
    write_volume(restored > 0, tmp_path / "restored.nii.gz", like=label, dtype=np.uint8)
    back = read_volume(tmp_path / "restored.nii.gz")
    assert back.array.shape == label.array.shape
    np.testing.assert_array_equal(back.affine, label.affine)
    np.testing.assert_array_equal(np.asarray(props["affine"]), label.affine)

    image = restore_to_original(case.views[0], props, is_label=False)
    inner = (slice(1, -1), slice(6, -6), slice(6, -6))
    assert np.abs(image - normalize_ct(hu[0]))[inner].mean() < 0.1  # the noise alone is σ 0.075
    # A softmax map (C, Z', Y', X'): background probability 1 outside the crop box.
    probs = np.stack([1 - (case.label > 0), case.label > 0]).astype(np.float32)
    restored_probs = restore_to_original(probs, props, is_label=False)
    assert restored_probs.shape == (2, *mask.shape)
    assert np.all(restored_probs[0, :, :2] == 1) and np.all(restored_probs[1, :, :2] == 0)

    single, single_props = preprocess_image(views[0], TEST_SPACING)
    np.testing.assert_array_equal(single, case.views[0])
    assert single_props["crop_bbox"] == props["crop_bbox"]


def test_grid_mismatch_is_reported_with_the_file(tmp_path):
    write_case(tmp_path, "a")
    views, label = _read_case(tmp_path, "a")
    small = volume_from_array(np.zeros((8, 40, 48), np.int16), SPACING)
    small = Volume(small.array, small.spacing, small.affine, small.header, path="elsewhere/small.nii.gz")
    with pytest.raises(InputError, match="small.nii.gz"):
        preprocess_case([views[0], small], label, TEST_SPACING)


def test_cli_caches_good_cases_and_reports_each_bad_one(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "cache"
    src.mkdir()
    write_case(src, "good1")
    write_case(src, "good2", seed=3)
    write_case(src, "empty", label=np.zeros((8, 48, 48), np.uint8))
    # Views of different shapes.
    write_case(src, "shapes")
    other = np.zeros((8, 40, 48), np.int16)
    write_volume(other, src / "shapes.view1.img.nii.gz", volume_from_array(other, SPACING))
    # Label on another grid.
    write_case(src, "badlabel")
    short = np.zeros((6, 48, 48), np.uint8)
    write_volume(short, src / "badlabel.label.nii.gz", volume_from_array(short, SPACING), np.uint8)
    # NaN values in a float image.
    write_case(src, "nan")
    image = read_volume(src / "nan.view0.img.nii.gz")
    with_nan = image.array.copy()
    with_nan[3, 20, 20] = np.nan
    write_volume(with_nan, src / "nan.view0.img.nii.gz", image, dtype=np.float32)
    # Truncated file.
    write_case(src, "trunc")
    data = (src / "trunc.view1.img.nii.gz").read_bytes()
    (src / "trunc.view1.img.nii.gz").write_bytes(data[: len(data) // 2])

    args = ["-i", str(src), "-o", str(out), "--spacing", *map(str, TEST_SPACING)]
    assert preprocess_main([*args, "--workers", "2"]) == 1
    captured = capsys.readouterr()
    for case_id, fragment in [
        ("shapes", "shapes.view1.img.nii.gz"),
        ("badlabel", "badlabel.label.nii.gz"),
        ("nan", "NaN"),
        ("trunc", "trunc.view1.img.nii.gz"),
    ]:
        line = next(line for line in captured.err.splitlines() if line.startswith(f"  failed {case_id}:"))
        assert fragment in line, line
    assert "empty coronary label" in captured.err
    assert "preprocessed 3, skipped 0 (already cached), failed 4" in captured.out

    info = json.loads((out / "dataset.json").read_text())
    assert info["cases"] == ["empty", "good1", "good2"]
    assert info["num_views"] == 2 and info["spacing"] == list(TEST_SPACING)
    assert not list(out.glob(".*")), "no temporary files left behind"
    views = np.load(out / "good1.views.npy", mmap_mode="r")
    label = np.load(out / "good1.label.npy", mmap_mode="r")
    fg = np.load(out / "good1.fg.npy")
    assert views.dtype == np.float32 and label.dtype == np.int16 and fg.dtype == np.int32
    assert views.shape[1:] == label.shape and np.all(label[tuple(fg.T)] > 0)
    assert np.load(out / "empty.fg.npy").shape == (0, 3)

    # Re-run: finished cases are skipped, bad ones fail again.
    assert preprocess_main(args) == 1
    assert "preprocessed 0, skipped 3 (already cached), failed 4" in capsys.readouterr().out
    assert preprocess_main([*args, "--overwrite"]) == 1
    assert "preprocessed 3, skipped 0" in capsys.readouterr().out


def test_cli_rejects_unusable_folders(tmp_path, capsys):
    assert preprocess_main(["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert "missing: input folder not found" in capsys.readouterr().err
    assert preprocess_main(["-i", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "no cases found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess_main(["--help"])


def test_imagecas_single_image_layout(tmp_path):
    hu, mask = write_case(tmp_path, "x", views=1)
    (tmp_path / "x.view0.img.nii.gz").rename(tmp_path / "x.img.nii.gz")
    assert preprocess_main(["-i", str(tmp_path), "-o", str(tmp_path / "c"), "--spacing", *map(str, TEST_SPACING)]) == 0
    assert np.load(tmp_path / "c" / "x.views.npy").shape[0] == 1
