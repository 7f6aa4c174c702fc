"""The README's demo, end to end at the tiny size: every stage's outputs are where it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.paths import ROOT


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "syncas_jax.demo", "--out", str(out), "--size", "tiny", "--cases", "3",
         "--test-cases", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo finished" in result.stdout
    assert "held-out scans" in result.stdout and "clDice" in result.stdout  # the table is printed at the end
    assert "realistic renders" in (out / "test_synth" / "synth.log").read_text()  # held-out = scanner-like
    assert "training renders" in (out / "synth" / "synth.log").read_text()
    trained = {p.name.split(".")[0] for p in (out / "cache").glob("*.views.npy")}
    held_out = {p.name[: -len("_NCCT.nii.gz")] for p in (out / "test_ncct").glob("*_NCCT.nii.gz")}
    assert trained and held_out and not trained & held_out  # never trained on

    predictions = sorted((out / "pred").glob("CA_*_NCCT.nii.gz"))
    assert len(predictions) == 1
    scan = nib.load(str(out / "test_ncct" / predictions[0].name[len("CA_") :]))
    pred = nib.load(str(predictions[0]))
    assert pred.shape == scan.shape and np.allclose(pred.affine, scan.affine)
    assert pred.get_data_dtype() == np.uint8

    report = json.loads((out / "report" / "metrics.json").read_text())
    assert 0.0 <= report["summary"]["dice"]["mean"] <= 1.0
    for png in (out / "train" / "progress.png", out / "figure.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert list((out / "report" / "overlays").glob("*.png"))
    assert (out / "train" / "checkpoints" / "best" / "meta.json").exists()
