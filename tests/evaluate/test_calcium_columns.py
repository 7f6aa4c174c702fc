"""evaluate's Agatston columns are the calcium report's numbers, on axial slices whatever the file layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from syncas_jax.common.nifti import read_volume, write_volume
from syncas_jax.evaluate.__main__ import main as evaluate_main
from syncas_jax.metrics.calcium import agatston_score
from tests.calcium.test_cli import AGATSTON, write_case
from tests.layouts import LAYOUTS


@pytest.mark.parametrize("layout", ["LPS", "SPL"])
def test_agatston_columns_follow_the_axial_slices(tmp_path, layout):
    for folder in ("ref", "pred", "img"):
        (tmp_path / folder).mkdir()
    image_path, mask_path = write_case(tmp_path / "img", "case", *LAYOUTS[layout])
    mask_path.rename(tmp_path / "ref" / "case.nii.gz")
    mask = read_volume(tmp_path / "ref" / "case.nii.gz")
    write_volume(np.zeros_like(mask.array), tmp_path / "pred" / "case.nii.gz", mask, np.uint8)
    args = ["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--image", str(tmp_path / "img")]
    assert evaluate_main([*args, "-o", str(tmp_path / "report"), "--no-overlays"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["cases"][0]["metrics"]
    assert metrics["agatston_ref"] == AGATSTON and metrics["agatston_pred"] == 0.0
    if layout == "SPL":  # scored along the file's first axis instead, the number would differ
        image = read_volume(image_path)
        assert agatston_score(image.array, mask.array > 0, image.spacing) != metrics["agatston_ref"]
