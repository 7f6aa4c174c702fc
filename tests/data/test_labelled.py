"""`preprocess --labelled`: labelled real scans in nnU-Net's raw layout, ours and DICOM, and their bad cases.

Known answers: the scans are written at the target spacing in the canonical (LPS) orientation, so
resampling and reorientation are identities and the cache must hold exactly the scan's window and
the chosen label inside the crop box (the test cases' zero frame is two voxels wide in y and x).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from syncas_jax.common.dicom import read_dicom_series
from syncas_jax.common.nifti import volume_from_array, write_volume
from syncas_jax.data.__main__ import main as preprocess_main
from syncas_jax.data.cache import branch_labels, read_dataset_info, read_properties
from syncas_jax.data.layout import cache_paths
from syncas_jax.data.transforms import normalize_ct
from tests.data.cases import SPACING, phantom_views, tube_mask
from tests.dicom_series import AXIAL_FLIPPED, write_series

LPS_AFFINE = np.array([[-SPACING[2], 0, 0, 120.0], [0, -SPACING[1], 0, 80.0], [0, 0, SPACING[0], -300.0], [0, 0, 0, 1]])
INSIDE = (slice(None), slice(2, -2), slice(2, -2))  # the crop box of `phantom_views`' zero frame
SPACING_ARGS = ["--spacing", *map(str, SPACING)]


def scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU, uint8 multi-label map: 1 = a blob standing for the aorta, 2 = the coronary tubes)."""
    coronary = tube_mask()
    hu = phantom_views(coronary, views=1, seed=seed)[0]
    labels = coronary * 2
    labels[2:6, 5:9, 5:9] = 1
    return hu, labels.astype(np.uint8)


def write_nifti(array: np.ndarray, path: Path, dtype=np.int16, affine: np.ndarray = LPS_AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(array, path, volume_from_array(array, SPACING, affine), dtype)


def cached(cache: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    paths = cache_paths(cache, case_id)
    return np.load(paths["views"]), np.load(paths["label"])


def assert_cache_holds(cache: Path, case_id: str, hu: np.ndarray, coronary: np.ndarray) -> None:
    views, label = cached(cache, case_id)
    assert views.shape == (1, *hu[INSIDE].shape)  # one view: the scan
    np.testing.assert_array_equal(views[0], normalize_ct(hu[INSIDE]))
    np.testing.assert_array_equal(label, branch_labels(coronary[INSIDE]))
    assert label.max() == 3  # the three tubes, as for a synthetic case


def test_nnunet_raw_layout_with_dataset_json(tmp_path, capsys):
    raw = tmp_path / "Dataset042_CoronaryNCCT"
    scans = {case_id: scan(seed) for seed, case_id in enumerate(["ncct_001", "ncct_002"])}
    for case_id, (hu, labels) in scans.items():
        write_nifti(hu, raw / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_nifti(labels, raw / "labelsTr" / f"{case_id}.nii.gz", np.uint8)
    info = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "aorta": 1, "coronary_arteries": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(info))
    assert preprocess_main(["--labelled", "-i", str(raw), "-o", str(tmp_path / "cache"), *SPACING_ARGS]) == 0
    assert "preprocessed 2, skipped 0 (already cached), failed 0" in capsys.readouterr().out
    for case_id, (hu, labels) in scans.items():
        assert_cache_holds(tmp_path / "cache", case_id, hu, labels == 2)  # the coronary label, not the aorta
        assert read_properties(tmp_path / "cache", case_id)["label_value"] == 2
    dataset = read_dataset_info(tmp_path / "cache")
    assert dataset["source"] == "labelled" and dataset["num_views"] == 1 and dataset["cases"] == sorted(scans)

    # --label overrides dataset.json: the aorta blob becomes the label (one branch)
    assert (
        preprocess_main(["--labelled", "--label", "1", "-i", str(raw), "-o", str(tmp_path / "aorta"), *SPACING_ARGS])
        == 0
    )
    _, label = cached(tmp_path / "aorta", "ncct_001")
    np.testing.assert_array_equal(label > 0, scans["ncct_001"][1][INSIDE] == 1)


def test_dataset_json_that_names_no_coronary_label_asks_for_label(tmp_path, capsys):
    raw = tmp_path / "raw"
    hu, labels = scan()
    write_nifti(hu, raw / "imagesTr" / "a_0000.nii.gz")
    write_nifti(labels, raw / "labelsTr" / "a.nii.gz", np.uint8)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2}}))
    assert preprocess_main(["--labelled", "-i", str(raw), "-o", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(raw / "dataset.json") in err[0] and "--label N" in err[0]


def test_our_layout_and_dicom_series_with_a_nifti_mask(tmp_path, capsys):
    folder = tmp_path / "labelled"
    hu, labels = scan(0)
    coronary = (labels == 2).astype(np.uint8)
    write_nifti(hu, folder / "a.img.nii.gz")
    write_nifti(coronary, folder / "a.label.nii.gz", np.uint8)
    # a series stored with rows and columns flipped; its mask on the grid the series reads as (dcm2niix's)
    hu_b, labels_b = scan(1)
    write_series(folder / "b", hu_b, LPS_AFFINE, AXIAL_FLIPPED)
    series = read_dicom_series(folder / "b").volume
    mask_b = mask_on_grid((labels_b == 2).astype(np.uint8), LPS_AFFINE, series.array.shape, series.affine)
    write_volume(mask_b, folder / "b.label.nii.gz", volume_from_array(mask_b, series.spacing, series.affine), np.uint8)

    assert preprocess_main(["--labelled", "-i", str(folder), "-o", str(tmp_path / "cache"), *SPACING_ARGS]) == 0
    assert "preprocessed 2" in capsys.readouterr().out
    assert_cache_holds(tmp_path / "cache", "a", hu, coronary)
    assert_cache_holds(tmp_path / "cache", "b", hu_b, labels_b == 2)  # turned back to LPS: the source arrays


def mask_on_grid(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray) -> np.ndarray:
    """`mask` (on `affine`'s grid) sampled at the voxel centres of another grid (nearest, from the affines alone)."""
    k, j, i = np.indices(shape)
    world = target_affine @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    src = np.rint(np.linalg.inv(affine) @ world).astype(int)[:3]
    return mask[src[2], src[1], src[0]].reshape(shape)


def test_bad_cases_are_one_line_each_and_the_others_go_on(tmp_path, capsys):
    folder = tmp_path / "labelled"
    hu, labels = scan()
    write_nifti(hu, folder / "good.img.nii.gz")
    write_nifti(labels, folder / "good.label.nii.gz", np.uint8)
    write_nifti(hu, folder / "empty.img.nii.gz")
    write_nifti(np.zeros_like(labels), folder / "empty.label.nii.gz", np.uint8)
    write_nifti(hu, folder / "grid.img.nii.gz")
    write_nifti(labels[:, :-4], folder / "grid.label.nii.gz", np.uint8)  # another grid
    shifted = LPS_AFFINE.copy()
    shifted[0, 3] += 5.0
    write_nifti(hu, folder / "moved.img.nii.gz")
    write_nifti(labels, folder / "moved.label.nii.gz", np.uint8, affine=shifted)  # same shape, moved
    write_nifti(labels, folder / "lonely.label.nii.gz", np.uint8)  # no image
    write_nifti(hu, folder / "noval.img.nii.gz")
    write_nifti((labels == 1).astype(np.uint8), folder / "noval.label.nii.gz", np.uint8)  # no value 2
    status = preprocess_main(["--labelled", "--label", "2", "-i", str(folder), "-o", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert status == 1
    assert "preprocessed 1, skipped 0 (already cached), failed 5" in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    expected = {
        "empty": "empty coronary mask",
        "grid": "does not match",
        "moved": "affine does not match",
        "lonely": "no image for this label",
        "noval": "label value 2 not in the mask (values present: [1])",
    }
    assert len(errors) == len(expected)
    for case_id, problem in expected.items():
        (line,) = [e for e in errors if f"case {case_id}:" in e]
        assert str(folder / f"{case_id}.label.nii.gz") in line and problem in line
    assert read_dataset_info(tmp_path / "cache")["cases"] == ["good"]


def test_multi_label_mask_without_label_is_refused(tmp_path, capsys):
    folder = tmp_path / "labelled"
    hu, labels = scan()
    write_nifti(hu, folder / "a.img.nii.gz")
    write_nifti(labels, folder / "a.label.nii.gz", np.uint8)
    assert preprocess_main(["--labelled", "-i", str(folder), "-o", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'a.label.nii.gz'}: holds several label values [1, 2]; pass the coronary one: --label N" in err
