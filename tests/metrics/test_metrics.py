"""Metrics: overlap, surface distances (vs DeepMind surface-distance), clDice, Agatston, empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from syncas_jax import metrics
from syncas_jax.metrics import surface

# surface-distance (the independent reference) still uses scipy's deprecated namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance.*")

SPACING = (2.0, 0.5, 0.7)  # (z, y, x) mm, anisotropic


def blobs(seed: int, shape=(16, 40, 36), level=0.53) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2.0) > level


def tube(shape, z: int, y: int, x0: int, x1: int, radius: float) -> np.ndarray:
    """A cylinder along x with a round cross-section (isotropic voxels)."""
    zz, yy = np.mgrid[: shape[0], : shape[1]]
    disk = (zz - z) ** 2 + (yy - y) ** 2 <= radius**2
    out = np.zeros(shape, bool)
    out[:, :, x0:x1] = disk[:, :, None]
    return out


# --------------------------------------------------------------------------- overlap


def test_confusion_and_overlap_by_hand():
    ref = np.zeros((2, 3, 4), bool)
    pred = np.zeros_like(ref)
    ref[0, :2, :2] = True  # 4 voxels
    pred[0, 1:3, :2] = True  # 4 voxels, 2 shared
    counts = metrics.confusion_counts(pred, ref)
    assert counts == {"tp": 2, "fp": 2, "fn": 2, "tn": 18}
    m = metrics.overlap_metrics(pred, ref)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(2 / 6)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(18 / 20)
    assert m["f1"] == pytest.approx(m["dice"])


def test_non_boolean_masks_use_value_above_zero():
    ref = np.zeros((3, 4, 5), np.uint8)
    ref[1, 1:3, 1:3] = 7
    assert metrics.overlap_metrics(ref.astype(np.float32) * 0.3, ref)["dice"] == 1.0


# --------------------------------------------------------------------------- empty masks


def test_both_empty_is_perfect_agreement():
    empty = np.zeros((6, 8, 9), bool)
    m = metrics.case_metrics(empty, empty, SPACING, image_hu=np.full(empty.shape, 500.0))
    for key in ("dice", "iou", "precision", "recall", "specificity", "f1", "cldice", "cl_precision", "cl_recall"):
        assert m[key] == 1.0, key
    assert m["hd95_mm"] == 0.0 and m["msd_mm"] == 0.0
    assert m["agatston_ref"] == 0.0 and m["agatston_pred"] == 0.0
    assert m["tn"] == empty.size


@pytest.mark.parametrize("which", ["pred", "ref"])
def test_one_empty_gives_zero_overlap_and_infinite_distance(which):
    full = blobs(3)
    empty = np.zeros_like(full)
    pred, ref = (empty, full) if which == "pred" else (full, empty)
    m = metrics.case_metrics(pred, ref, SPACING)
    for key in ("dice", "iou", "precision", "recall", "f1", "cldice", "cl_precision", "cl_recall"):
        assert m[key] == 0.0, key
    assert 0.0 < m["specificity"] <= 1.0
    assert m["hd95_mm"] == math.inf and m["msd_mm"] == math.inf
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


# --------------------------------------------------------------------------- surface distances


def test_surfel_area_table_matches_surface_distance():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in (SPACING, (1.0, 1.0, 1.0), (0.35, 0.35, 3.0)):
        expected = lookup.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surface.surfel_area_table(spacing), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("seed", "method"), [(0, "edt"), (1, "edt"), (2, "kdtree"), (3, "kdtree")])
def test_hd95_and_msd_equal_surface_distance_on_anisotropic_masks(seed, method):
    sd = pytest.importorskip("surface_distance")
    pred, ref = blobs(2 * seed), blobs(2 * seed + 1, level=0.54)
    hd95, msd = metrics.surface_distances(pred, ref, SPACING, method=method)
    expected = sd.compute_surface_distances(ref, pred, SPACING)  # (mask_gt, mask_pred)
    assert hd95 == pytest.approx(sd.compute_robust_hausdorff(expected, 95), rel=1e-6)
    assert msd == pytest.approx(np.mean(sd.compute_average_surface_distance(expected)), rel=1e-6)
    ours = metrics.surface_distance_arrays(pred, ref, SPACING, method=method)
    for key in expected:  # same multisets (tie order may differ: our distances are float32-exact)
        np.testing.assert_allclose(np.sort(ours[key]), np.sort(expected[key]), rtol=1e-6, err_msg=key)
    assert metrics.surface_distances(pred, ref, SPACING, percent=100, method=method)[0] == pytest.approx(
        sd.compute_robust_hausdorff(expected, 100), rel=1e-6
    )


def thin_tubes(seed: int, shape=(24, 64, 64)) -> np.ndarray:
    """Sparse vessel-like mask (< 1/32 of the volume): random-walk lines dilated once."""
    rng = np.random.default_rng(seed)
    lines = np.zeros(shape, bool)
    for _ in range(3):
        point = rng.uniform(8, np.array(shape) - 8)
        for _ in range(60):
            point = np.clip(point + rng.normal(0, 1, 3) * [0.4, 1, 1], 1, np.array(shape) - 2)
            lines[tuple(point.astype(int))] = True
    return ndimage.binary_dilation(lines)


def test_sparse_and_dense_surfel_extraction_agree():
    mask = thin_tubes(0)
    assert np.count_nonzero(mask) * 32 < mask.size  # takes the sparse route
    index, codes = surface._surfels(mask)
    dense = surface._corner_codes(mask).ravel()
    expected = np.flatnonzero((dense != 0) & (dense != 255))
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(codes, dense[expected])


@pytest.mark.parametrize("method", ["edt", "kdtree"])
def test_hd95_and_msd_equal_surface_distance_on_thin_tubes(method):
    sd = pytest.importorskip("surface_distance")
    pred, ref = thin_tubes(1), thin_tubes(2)
    pred |= ref & (np.arange(ref.shape[2]) < 40)  # partly right
    hd95, msd = metrics.surface_distances(pred, ref, SPACING, method=method)
    expected = sd.compute_surface_distances(ref, pred, SPACING)
    assert hd95 == pytest.approx(sd.compute_robust_hausdorff(expected, 95), rel=1e-6)
    assert msd == pytest.approx(np.mean(sd.compute_average_surface_distance(expected)), rel=1e-6)


@pytest.mark.parametrize("masks", [lambda: (thin_tubes(4), thin_tubes(5)), lambda: (blobs(8), blobs(9, level=0.54))])
def test_default_method_equals_surface_distance_within_1e5_mm(masks):
    """The default (k-d tree) HD95 and MSD, and every directed distance, within 1e-5 mm of surface-distance."""
    sd = pytest.importorskip("surface_distance")
    pred, ref = masks()
    pred |= ref & (np.arange(ref.shape[2]) < 20)  # partly right
    hd95, msd = metrics.surface_distances(pred, ref, SPACING)
    expected = sd.compute_surface_distances(ref, pred, SPACING)
    assert abs(hd95 - sd.compute_robust_hausdorff(expected, 95)) <= 1e-5
    assert abs(msd - np.mean(sd.compute_average_surface_distance(expected))) <= 1e-5
    ours = metrics.surface_distance_arrays(pred, ref, SPACING)
    for key in ("distances_gt_to_pred", "distances_pred_to_gt"):
        np.testing.assert_allclose(np.sort(ours[key]), np.sort(expected[key]), rtol=0, atol=1e-5, err_msg=key)


def test_surface_distances_of_two_voxels_by_hand():
    # Two single voxels 10 columns apart along x (0.7 mm): the 8 equal-area corner surfels of
    # each lie 9 or 10 columns from the other's -> distances 6.3 mm (x4) and 7.0 mm (x4).
    pred = np.zeros((3, 3, 14), bool)
    ref = np.zeros_like(pred)
    pred[1, 1, 1] = ref[1, 1, 11] = True
    for method in ("edt", "kdtree"):
        hd95, msd = metrics.surface_distances(pred, ref, SPACING, method=method)
        assert hd95 == pytest.approx(7.0, rel=1e-6)
        assert msd == pytest.approx(6.65, rel=1e-6)
    assert metrics.surface_distances(pred, pred, SPACING) == (0.0, 0.0)


def test_surface_distances_are_symmetric_and_translation_invariant():
    pred, ref = blobs(5), blobs(6)
    a = metrics.surface_distances(pred, ref, SPACING)
    assert metrics.surface_distances(ref, pred, SPACING) == pytest.approx(a)
    padded = [np.pad(m, ((3, 0), (0, 5), (2, 2))) for m in (pred, ref)]
    assert metrics.surface_distances(*padded, SPACING) == pytest.approx(a, rel=1e-6)


# --------------------------------------------------------------------------- clDice


def test_skeleton_of_a_tube_is_its_centre_line_and_bbox_crop_is_exact():
    from skimage.morphology import skeletonize

    mask = tube((15, 15, 40), 7, 7, 4, 36, 3.0)
    skel = metrics.skeleton(mask)
    np.testing.assert_array_equal(skel, skeletonize(mask))
    zz, yy, _ = np.nonzero(skel)
    assert skel.sum() > 20 and set(zz) == {7} and set(yy) == {7}


def test_cl_dice_on_known_skeletons():
    shape = (15, 30, 40)
    first, second = tube(shape, 7, 7, 4, 36, 3.0), tube(shape, 7, 22, 4, 36, 3.0)
    ref = first | second
    assert metrics.cl_dice(ref, ref) == (1.0, 1.0, 1.0)
    # Prediction finds one of two identical tubes: its skeleton lies in the reference
    # (precision 1) and covers exactly half of the reference skeleton (recall 1/2).
    cldice, precision, recall = metrics.cl_dice(first, ref)
    assert precision == 1.0
    assert recall == pytest.approx(0.5)
    assert cldice == pytest.approx(2 / 3)
    # A one-voxel-thick line is its own skeleton: a prediction of half its length.
    line = np.zeros(shape, bool)
    line[7, 15, 5:35] = True
    half = np.zeros(shape, bool)
    half[7, 15, 5:20] = True
    assert metrics.cl_dice(half, line) == pytest.approx((2 / 3, 1.0, 0.5))


# --------------------------------------------------------------------------- Agatston


def test_agatston_on_lesions_scored_by_hand():
    spacing = (1.5, 0.5, 0.6)  # pixel area 0.3 mm^2, slice factor 1.5 / 3 = 0.5
    image = np.full((3, 20, 20), 40.0)
    mask = np.zeros(image.shape, bool)
    mask[:, 1:15, 1:15] = True
    # slice 0, lesion A: 12 px, peak 250 HU -> 3.6 mm^2 x 2 = 7.2; an adjacent 120 HU
    # pixel is inside the mask but below 130 HU and adds nothing.
    image[0, 2:5, 2:6] = 190.0
    image[0, 3, 3] = 250.0
    image[0, 5, 2] = 120.0
    # slice 0, lesion B: 3 px at 500 HU = 0.9 mm^2 < 1 mm^2 -> not counted.
    image[0, 12, 10:13] = 500.0
    # slice 0, lesion C: 4 px in a diagonal chain (8-connected only), peak 410 -> 1.2 x 4 = 4.8.
    for i in range(4):
        image[0, 7 + i, 7 + i] = 140.0
    image[0, 8, 8] = 410.0
    # slice 0: bright voxels outside the mask are ignored.
    image[0, 17:20, 17:20] = 900.0
    # slice 1, lesion D right above A: scored per slice, 16 px at 350 HU -> 4.8 x 3 = 14.4.
    image[1, 2:6, 2:6] = 350.0
    # slice 2, lesion E: 4 px at exactly 130 HU -> 1.2 x 1 = 1.2; 10 px at 129 HU -> nothing.
    image[2, 2:4, 2:4] = 130.0
    image[2, 8, 2:12] = 129.0
    expected = (7.2 + 4.8 + 14.4 + 1.2) * 0.5
    assert metrics.agatston_score(image, mask, spacing) == pytest.approx(expected)
    assert metrics.agatston_score(image, np.zeros_like(mask), spacing) == 0.0


@pytest.mark.parametrize(
    ("peak", "pixels", "score"),
    [
        (199.0, 4, 1.0), (200.0, 4, 2.0), (299.0, 4, 2.0), (300.0, 4, 3.0),
        (399.0, 4, 3.0), (400.0, 4, 4.0), (1200.0, 4, 4.0), (500.0, 3, 0.0),
    ],
)  # fmt: skip
def test_agatston_weights_and_area_threshold(peak, pixels, score):
    spacing = (3.0, 0.5, 0.5)  # pixel area 0.25 mm^2 (4 px = exactly 1 mm^2), factor 1
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2, 2 : 2 + pixels] = 131.0
    image[0, 2, 2] = peak
    assert metrics.agatston_score(image, image > 0, spacing) == pytest.approx(score * pixels * 0.25)


# --------------------------------------------------------------------------- per case and summary


def test_case_metrics_keys_and_summary():
    pred, ref = blobs(7), blobs(8)
    m = metrics.case_metrics(pred, ref, SPACING)
    assert tuple(m) == metrics.METRIC_KEYS
    calcified = np.where(ref, 450.0, 40.0)  # the reference's own voxels: lesions within the 3 mm margin
    with_image = metrics.case_metrics(pred, ref, SPACING, image_hu=calcified)
    assert tuple(with_image) == metrics.METRIC_KEYS + metrics.AGATSTON_KEYS
    assert with_image["agatston_ref"] == metrics.calcium_score(calcified, ref, SPACING).agatston > 0
    summary = metrics.summarize([{"dice": 0.5, "hd95_mm": 2.0}, {"dice": 1.0, "hd95_mm": math.inf}])
    assert summary["dice"] == {"mean": 0.75, "std": 0.25, "n": 2}
    assert summary["hd95_mm"] == {"mean": 2.0, "std": 0.0, "n": 1}
    assert metrics.summarize([{"hd95_mm": math.inf}])["hd95_mm"] == {"mean": None, "std": None, "n": 0}


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.case_metrics(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 5), bool), SPACING)
