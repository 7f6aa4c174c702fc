"""The fine-tuning study: arms differ only in what they name, and a tiny study runs end to end."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from syncas_jax.demo.__main__ import main as demo_main
from syncas_jax.study.__main__ import main as study_main
from syncas_jax.study.finetune import FINETUNE_ARMS, LR_FACTOR, arm_config


def test_training_arms_differ_only_in_init_rate_and_data(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo_config.json").write_text(json.dumps({"initial_lr": 0.002, "ngf": 8, "seed": 0, "augmentated": False}))
    configs = {arm: arm_config(tmp_path, demo, arm, seed=3) for arm in FINETUNE_ARMS if arm != "pretrained"}
    for raw in configs.values():
        assert raw.pop("output_dir").startswith(str(tmp_path / "runs"))
        assert raw["augmentated"] is True and raw["seed"] == 3
    finetuned, scratch, mixed = configs["finetuned"], configs["scratch"], configs["finetuned_mixed"]
    assert finetuned.pop("init_checkpoint") == mixed["init_checkpoint"] == str(demo / "train" / "checkpoints" / "best")
    assert finetuned.pop("initial_lr") == 0.002 * LR_FACTOR and scratch.pop("initial_lr") == 0.002
    assert finetuned == scratch
    assert mixed["data_dir"] == [finetuned["data_dir"], str(demo / "cache")] and mixed["data_weights"] == [1.0, 1.0]


@pytest.mark.slow
def test_tiny_finetune_study_end_to_end(tmp_path, capsys):
    demo, out = tmp_path / "demo", tmp_path / "study"
    assert demo_main(["--out", str(demo), "--size", "tiny", "--cases", "3", "--test-cases", "1"]) == 0
    assert study_main(["--finetune", "--pretrained", str(demo), "-o", str(out)]) == 0
    report = json.loads((out / "finetune.json").read_text())
    assert list(report["arms"]) == list(FINETUNE_ARMS)
    for run in report["runs"]:
        assert set(run["cases"]) == {"phantom_003"}  # the demo's held-out patient, under the new protocol
        assert 0.0 <= run["mean"]["dice"] <= 1.0
    # the labelled scans: phantoms after the demo's, at 3 mm slices, staged in nnU-Net's raw layout
    raw = out / "data" / "ft_raw"
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == ["phantom_004.nii.gz", "phantom_005.nii.gz"]
    assert nib.load(raw / "imagesTr" / "phantom_004_0000.nii.gz").header.get_zooms()[2] == 3.0
    test_scan = out / "data" / "test_ncct_3mm_quarter_dose" / "phantom_003_NCCT.nii.gz"
    assert nib.load(test_scan).header.get_zooms()[2] == 3.0
    meta = json.loads((out / "runs" / "finetuned_seed0" / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["init_checkpoint"] == str(demo / "train" / "checkpoints" / "best")
    assert "| finetuned_mixed |" in (out / "finetune.md").read_text()
