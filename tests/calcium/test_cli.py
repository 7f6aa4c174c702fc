"""`python -m syncas_jax.calcium`: the report files, axial slices whatever the file layout, bad input.

The scan is tests/metrics/test_calcium.py's constructed case (with its artery map), placed in the canonical (LPS)
orientation, so the hand-computed lesion table holds in every layout it is stored in.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from syncas_jax.calcium.__main__ import main
from syncas_jax.calcium.arteries import label_arteries
from syncas_jax.common.dicom import read_dicom_series
from syncas_jax.common.nifti import volume_from_array, write_volume
from syncas_jax.metrics.calcium import calcium_score
from tests.dicom_series import CORONAL, write_series
from tests.layouts import LAYOUTS, relayout
from tests.metrics.test_calcium import constructed_case

SPACING = (1.5, 0.5, 0.25)
LPS_AFFINE = np.array([[-0.25, 0, 0, 10.0], [0, -0.5, 0, 20.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])


def write_case(folder, name, order=(0, 1, 2), flips=(False, False, False)):
    """The image, mask and artery map stored in one layout; returns (image path, mask path)."""
    image, mask, arteries = constructed_case()
    stored_image, affine, spacing = relayout(image, LPS_AFFINE, order, flips)
    like = volume_from_array(stored_image, spacing, affine)
    write_volume(stored_image, folder / f"{name}.nii.gz", like, np.int16)
    for suffix, array in (("_mask", mask), ("_arteries", arteries)):
        stored, _, _ = relayout(array.astype(np.uint8), LPS_AFFINE, order, flips)
        write_volume(stored, folder / f"{name}{suffix}.nii.gz", like, np.uint8)
    return folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"


# tests/metrics/test_calcium.py's EXPECTED at 1.5 mm slices (factor 0.5): LAD A 8, E 1.75, F 0.5; LCX C 1, D 3.1875,
# H 1.5 + 1.5; the rib bar excluded.
AGATSTON = (16 + 2 + 6.375 + 3.5 + 1 + 3 + 3) * 0.5
PER_ARTERY = {"LM": 0.0, "LAD": 8 + 1.75 + 0.5, "LCX": 1 + 3.1875 + 3, "RCA": 0.0, "other": 0.0}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_report_is_per_axial_slice_in_every_layout(tmp_path, layout, capsys):
    image_path, mask_path = write_case(tmp_path, layout, *LAYOUTS[layout])
    arteries_path = tmp_path / f"{layout}_arteries.nii.gz"
    args = ["--image", str(image_path), "--mask", str(mask_path), "--arteries", str(arteries_path)]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    line = "Agatston 17.4 (1-99), CAC-DRS A1/N2, volume 17.8 mm³, 6 lesions; LAD 10.2, LCX 7.2; 1 excluded (bone/aorta)"
    assert line in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / f"{layout}_mask_calcium.json").read_text())
    image, mask, arteries = constructed_case()
    assert report == calcium_score(image, mask, SPACING, arteries).to_dict()
    assert report["agatston"] == AGATSTON and report["lesion_count"] == 6 and report["cac_drs"] == "A1/N2"
    assert {name: group["agatston"] for name, group in report["arteries"].items()} == PER_ARTERY
    assert len(report["excluded"]) == 1 and report["excluded"][0]["slice"] == 2
    rows = list(csv.DictReader((tmp_path / "out" / f"{layout}_mask_calcium.csv").open()))
    assert [(int(r["slice"]), float(r["score"]), r["artery"]) for r in rows] == [
        (0, 8.0, "LAD"), (1, 1.0, "LCX"), (4, 3.1875, "LCX"), (4, 1.75, "LAD"), (5, 0.5, "LAD"),
        (6, 1.5, "LCX"), (7, 1.5, "LCX"),
    ]  # fmt: skip
    assert (tmp_path / "out" / f"{layout}_mask_calcium.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_an_artery_map_the_mask_is_labelled_from_its_geometry(tmp_path):
    image_path, mask_path = write_case(tmp_path, "case")
    args = ["--image", str(image_path), "--mask", str(mask_path), "-o", str(tmp_path / "out"), "--no-preview"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "case_mask_calcium.json").read_text())
    image, mask, _ = constructed_case()
    expected = calcium_score(image, mask, SPACING, label_arteries(mask, SPACING)).to_dict()
    assert report == expected and report["agatston"] == AGATSTON
    assert report["cac_drs"].startswith("A1/N")


def test_dicom_series_as_the_image(tmp_path):
    """A coronal series: the report still scores axial slices. The mask goes through the same writer as a
    second series, so it lands on the image's grid without the orientation code under test."""
    image, mask, _ = constructed_case()
    write_series(tmp_path / "series", np.rint(image), LPS_AFFINE, CORONAL)
    write_series(tmp_path / "mask_series", mask.astype(np.float32), LPS_AFFINE, CORONAL)
    series = read_dicom_series(tmp_path / "series").volume
    on_grid = read_dicom_series(tmp_path / "mask_series").volume.array > 0.5
    write_volume(on_grid, tmp_path / "mask.nii.gz", series, np.uint8)
    args = ["--image", str(tmp_path / "series"), "--mask", str(tmp_path / "mask.nii.gz"), "-o", str(tmp_path / "o")]
    assert main([*args, "--no-preview"]) == 0
    report = json.loads((tmp_path / "o" / "mask_calcium.json").read_text())
    expected = calcium_score(image, mask, SPACING, label_arteries(mask, SPACING)).to_dict()
    assert report["lesions"] == [pytest.approx(lesion) for lesion in expected["lesions"]]
    assert report["agatston"] == pytest.approx(AGATSTON) and report["lesion_count"] == 6
    assert not (tmp_path / "o" / "mask_calcium.png").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    image_path, mask_path = write_case(tmp_path, "a")
    _, other_mask = write_case(tmp_path, "b", *LAYOUTS["RAS"])
    cases = [
        (["--image", str(image_path), "--mask", str(other_mask)], "affine does not match"),
        (["--image", str(tmp_path / "missing.nii.gz"), "--mask", str(mask_path)], "file not found"),
        (["--image", str(image_path), "--mask", str(tmp_path)], "is a folder"),
        (["--image", str(tmp_path), "--mask", str(mask_path)], "no DICOM images"),
    ]
    for args, problem in cases:
        run = subprocess.run(
            [sys.executable, "-m", "syncas_jax.calcium", *args, "-o", str(tmp_path / "out")],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], run.stderr
    assert not (tmp_path / "out").exists()
