"""`python -m syncas_jax.calcium`: the report files, axial slices whatever the file layout, bad input.

The scan is tests/metrics/test_calcium.py's constructed case, placed in the canonical (LPS)
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
from syncas_jax.common.dicom import read_dicom_series
from syncas_jax.common.nifti import volume_from_array, write_volume
from syncas_jax.metrics.calcium import calcium_score
from tests.dicom_series import CORONAL, write_series
from tests.layouts import LAYOUTS, relayout
from tests.metrics.test_calcium import constructed_case

SPACING = (1.5, 0.5, 0.25)
LPS_AFFINE = np.array([[-0.25, 0, 0, 10.0], [0, -0.5, 0, 20.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])


def write_case(folder, name, order=(0, 1, 2), flips=(False, False, False)):
    image, mask = constructed_case()
    stored_image, affine, spacing = relayout(image, LPS_AFFINE, order, flips)
    stored_mask, _, _ = relayout(mask.astype(np.uint8), LPS_AFFINE, order, flips)
    like = volume_from_array(stored_image, spacing, affine)
    write_volume(stored_image, folder / f"{name}.nii.gz", like, np.int16)
    write_volume(stored_mask, folder / f"{name}_mask.nii.gz", like, np.uint8)
    return folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_report_is_per_axial_slice_in_every_layout(tmp_path, layout, capsys):
    image_path, mask_path = write_case(tmp_path, layout, *LAYOUTS[layout])
    assert main(["--image", str(image_path), "--mask", str(mask_path), "-o", str(tmp_path / "out")]) == 0
    assert "Agatston 11.1 (1-99), volume 13.1 mm³, 5 lesions" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / f"{layout}_mask_calcium.json").read_text())
    image, mask = constructed_case()
    assert report == calcium_score(image, mask, SPACING).to_dict()
    assert report["agatston"] == (1 + 4 + 4 + 11.25 + 2) * 0.5 and report["lesion_count"] == 5
    rows = list(csv.DictReader((tmp_path / "out" / f"{layout}_mask_calcium.csv").open()))
    assert [(int(r["slice"]), float(r["score"])) for r in rows] == [(0, 0.5), (1, 2.0), (1, 2.0), (3, 5.625), (4, 1.0)]
    assert (tmp_path / "out" / f"{layout}_mask_calcium.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dicom_series_as_the_image(tmp_path):
    """A coronal series: the report still scores axial slices. The mask goes through the same writer as a
    second series, so it lands on the image's grid without the orientation code under test."""
    image, mask = constructed_case()
    write_series(tmp_path / "series", np.rint(image), LPS_AFFINE, CORONAL)
    write_series(tmp_path / "mask_series", mask.astype(np.float32), LPS_AFFINE, CORONAL)
    series = read_dicom_series(tmp_path / "series").volume
    on_grid = read_dicom_series(tmp_path / "mask_series").volume.array > 0.5
    write_volume(on_grid, tmp_path / "mask.nii.gz", series, np.uint8)
    args = ["--image", str(tmp_path / "series"), "--mask", str(tmp_path / "mask.nii.gz"), "-o", str(tmp_path / "o")]
    assert main([*args, "--no-preview"]) == 0
    report = json.loads((tmp_path / "o" / "mask_calcium.json").read_text())
    expected = calcium_score(image, mask, SPACING).to_dict()
    assert report["lesions"] == [pytest.approx(lesion) for lesion in expected["lesions"]]
    assert report["agatston"] == pytest.approx(11.125) and report["lesion_count"] == 5
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
