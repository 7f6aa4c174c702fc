"""Bad-input matrix across the command-line tools (design §8).

Each case: non-zero exit status, a message naming the offending file and the problem, no
traceback, and no partial or clobbered outputs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from syncas_jax.common.checkpoint import save_checkpoint
from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.data.__main__ import main as preprocess_main
from syncas_jax.evaluate.__main__ import main as evaluate_main
from syncas_jax.infer.__main__ import main as infer_main
from syncas_jax.nets.__main__ import main as convert_main
from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.unet import init_variables
from syncas_jax.synth.__main__ import main as synth_main
from syncas_jax.train.__main__ import main as train_main

SPACING = (2.0, 1.0, 1.0)


def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype=np.int16) -> Path:
    write_volume(array, path, volume_from_array(array, SPACING, affine), dtype)
    return path


def mask(shape=(8, 32, 32)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[2:6, 10:14, 10:14] = 1
    return m


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model"
    meta = {
        "model": {"ngf": 4, "depth": 3, "norm": "batch"},
        "config": {"spacing": SPACING, "patch_size": [16, 32, 32]},
    }
    save_checkpoint(path, init_variables(jax.random.key(0), ModelConfig(ngf=4, depth=3)), meta)
    return path


def check(capsys, status: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ paths


def test_missing_paths(tmp_path, capsys, checkpoint):
    missing = tmp_path / "nope"
    check(capsys, infer_main(["-i", str(missing), "-o", str(tmp_path / "o"), "-m", str(checkpoint)]), str(missing))
    scans = tmp_path / "scans"
    write(scans / "x_NCCT.nii.gz", np.zeros((8, 32, 32), np.int16))
    check(capsys, infer_main(["-i", str(scans), "-o", str(tmp_path / "o"), "-m", str(missing)]), str(missing))
    check(capsys, evaluate_main(["--pred", str(missing), "--ref", str(tmp_path)]), str(missing))
    check(capsys, convert_main([str(missing / "ref.pth"), str(tmp_path / "c")]), "ref.pth")
    check(capsys, train_main(["--config", str(missing)]), str(missing))
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_directory_instead_of_file(tmp_path, capsys):
    folder = tmp_path / "config.json"
    folder.mkdir()
    check(capsys, train_main(["--config", str(folder)]), str(folder), "not a file")
    assert "is a directory" in str(pytest.raises(InputError, read_volume, folder).value)


def test_empty_folders(tmp_path, capsys, checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    check(capsys, infer_main(["-i", str(empty), "-o", str(tmp_path / "o"), "-m", str(checkpoint)]), str(empty))
    check(capsys, evaluate_main(["--pred", str(empty), "--ref", str(empty)]), str(empty))
    assert preprocess_main(["-i", str(empty), "-o", str(tmp_path / "cache")]) != 0


# ------------------------------------------------------------------ broken images


def broken_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = write(folder / "good_NCCT.nii.gz", np.full((8, 32, 32), 40, np.int16))
    text = folder / "notes_NCCT.nii.gz"
    text.write_text("not an image")
    truncated = folder / "truncated_NCCT.nii.gz"
    truncated.write_bytes(gzip.compress(good.read_bytes())[:300])
    flat = folder / "flat_NCCT.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), str(flat))
    four = folder / "four_NCCT.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8, 2), np.int16), np.eye(4)), str(four))
    nan = folder / "nan_NCCT.nii.gz"
    values = np.zeros((32, 32, 8), np.float32)
    values[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(values, np.eye(4)), str(nan))
    return {"good": good, "text": text, "truncated": truncated, "2d": flat, "4d": four, "nan": nan}


def test_infer_reports_each_broken_file_and_finishes_the_rest(tmp_path, capsys, checkpoint):
    files = broken_images(tmp_path / "scans")
    out = tmp_path / "pred"
    status = infer_main(["-i", str(tmp_path / "scans"), "-o", str(out), "-m", str(checkpoint), "--no-tta"])
    err = check(capsys, status)
    for name in ("text", "truncated", "2d", "4d", "nan"):
        assert files[name].name in err, (name, err)
    assert "2D" in err and "4D" in err and "NaN" in err
    assert sorted(p.name for p in out.iterdir()) == ["CA_good_NCCT.nii.gz"]  # nothing partial, nothing hidden


# ------------------------------------------------------------------ pairs that disagree


def test_evaluate_shape_and_affine_mismatch(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write(ref / "a.nii.gz", mask(), dtype=np.uint8)
    write(pred / "a.nii.gz", mask((8, 32, 30)), dtype=np.uint8)
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[0, 3] = 5.0
    write(ref / "b.nii.gz", mask(), dtype=np.uint8)
    write(pred / "b.nii.gz", mask(), affine=shifted, dtype=np.uint8)
    write(ref / "c.nii.gz", mask(), dtype=np.uint8)
    write(pred / "c.nii.gz", mask(), dtype=np.uint8)
    err = check(capsys, evaluate_main(["--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "report")]))
    assert "a.nii.gz" in err and "shape" in err
    assert "b.nii.gz" in err and "affine" in err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [c["metrics"]["dice"] for c in report["cases"]] == [1.0]  # the good case still scored
    assert sorted(f["case"] for f in report["failed"]) == ["a", "b"]


def test_synth_bad_cases_are_skipped_and_counted(tmp_path, capsys):
    cta, out = tmp_path / "cta", tmp_path / "out"
    labels = np.zeros((8, 32, 32), np.int16)
    labels[2:6, 10:14, 10:14] = 128
    write(cta / "mismatch.img.nii.gz", np.zeros((8, 32, 30), np.int16))
    write(cta / "mismatch.label.nii.gz", labels)
    write(cta / "nolabel.img.nii.gz", np.zeros((8, 32, 32), np.int16))
    write(cta / "nocoronary.img.nii.gz", np.zeros((8, 32, 32), np.int16))
    write(cta / "nocoronary.label.nii.gz", np.zeros((8, 32, 32), np.int16))
    status = synth_main(["-i", str(cta), "-o", str(out), "--views", "1"])
    err = check(capsys, status, "mismatch", "nolabel", "nocoronary")
    assert "3 failed" in capsys.readouterr().out or "failed" in err
    assert not [p for p in out.iterdir() if p.name.endswith(".nii.gz")]


# ------------------------------------------------------------------ config and checkpoints


def test_unknown_config_key_and_corrupt_checkpoints(tmp_path, capsys, checkpoint):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"learning_rate": 0.1}))
    check(capsys, train_main(["--config", str(config)]), str(config), "unknown config key 'learning_rate'")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "state").mkdir()
    (corrupt / "meta.json").write_text("{broken")
    scans = tmp_path / "scans"
    write(scans / "x_NCCT.nii.gz", np.zeros((8, 32, 32), np.int16))
    check(capsys, infer_main(["-i", str(scans), "-o", str(tmp_path / "o"), "-m", str(corrupt)]), "meta.json")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    check(capsys, convert_main([str(garbage), str(tmp_path / "conv")]), "garbage.pth")
    assert not (tmp_path / "o").exists() and not (tmp_path / "conv").exists()


def test_output_path_that_is_a_file(tmp_path, capsys, checkpoint):
    scans = tmp_path / "scans"
    write(scans / "x_NCCT.nii.gz", np.zeros((8, 32, 32), np.int16))
    blocker = tmp_path / "pred"
    blocker.write_text("I am a file")
    status = infer_main(["-i", str(scans), "-o", str(blocker), "-m", str(checkpoint), "--no-tta"])
    check(capsys, status, "pred")
    assert blocker.read_text() == "I am a file"


def test_interrupted_synth_then_rerun(tmp_path, capsys):
    """A leftover temporary file from a killed run is ignored; the rerun completes and skips done cases."""
    from syncas_jax.synth.phantom import write_phantom_case

    cta, out = tmp_path / "cta", tmp_path / "out"
    write_phantom_case(cta, "p0", (12, 48, 48), (2.0, 1.5, 1.5), 0)
    out.mkdir()
    (out / ".p0.view0.img.nii.gz.x1y2.nii.gz").write_bytes(b"half")  # what a kill mid-write leaves
    assert synth_main(["-i", str(cta), "-o", str(out), "--views", "1"]) == 0
    first = (out / "p0.view0.img.nii.gz").read_bytes()
    assert synth_main(["-i", str(cta), "-o", str(out), "--views", "1"]) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert (out / "p0.view0.img.nii.gz").read_bytes() == first
