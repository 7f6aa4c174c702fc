"""`python -m syncas_jax.evaluate`: pairing, report files, bad input per case, exit status."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from syncas_jax import metrics
from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.evaluate import __main__ as evaluate

SPACING = (2.0, 0.5, 0.7)  # (z, y, x) mm
SHAPE = (10, 32, 28)


def blobs(seed: int, level: float = 0.53) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(SHAPE), 2.0) > level


def ct_image(mask: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(40.0, 15.0, mask.shape)
    image[mask & (rng.random(mask.shape) > 0.6)] = 420.0
    return image


def save(array: np.ndarray, path: Path, spacing=SPACING, affine=None, dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    like = volume_from_array(np.asarray(array, np.float32), spacing, affine)
    write_volume(array, path, like, dtype)


def parse_json_strict(text: str):
    def reject(constant):
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """Two good cases: ImageCAS naming and inference naming (CA_ prefix)."""
    ref, pred, img = tmp_path / "ref", tmp_path / "pred", tmp_path / "img"
    r1, p1 = blobs(1), ndimage.binary_dilation(blobs(1))
    r2, p2 = blobs(2), np.roll(blobs(2), 2, axis=2)
    save(r1, ref / "7.label.nii.gz")
    save(p1, pred / "7.nii.gz")
    save(ct_image(r1, 1), img / "7.img.nii.gz", dtype=np.int16)
    save(r2, ref / "p1_NCCT.nii.gz")
    save(p2, pred / "CA_p1_NCCT.nii.gz")
    save(ct_image(r2, 2), img / "p1_NCCT.nii.gz", dtype=np.int16)
    return {"ref": ref, "pred": pred, "img": img, "out": tmp_path / "report", "root": tmp_path}


def run(folders, *extra: str, image: bool = True) -> int:
    args = ["--pred", str(folders["pred"]), "--ref", str(folders["ref"]), "-o", str(folders["out"]), *extra]
    if image:
        args += ["--image", str(folders["img"])]
    return evaluate.main(args)


def test_report_files_and_values(folders, capsys):
    assert run(folders) == 0
    out = folders["out"]
    report = parse_json_strict((out / "metrics.json").read_text())
    cases = {c["case"]: c for c in report["cases"]}
    assert set(cases) == {"7", "p1_NCCT"} and report["failed"] == []
    assert cases["7"]["prediction"].endswith("pred/7.nii.gz")
    assert cases["p1_NCCT"]["prediction"].endswith("CA_p1_NCCT.nii.gz")
    assert cases["7"]["image"].endswith("7.img.nii.gz")
    # Values equal the metrics module on the arrays as read back from the files.
    ref = read_volume(folders["ref"] / "7.label.nii.gz")
    pred = read_volume(folders["pred"] / "7.nii.gz")
    image = read_volume(folders["img"] / "7.img.nii.gz")
    expected = metrics.case_metrics(pred.array > 0, ref.array > 0, ref.spacing, image.array)
    assert cases["7"]["metrics"] == pytest.approx(expected)
    assert expected["agatston_ref"] > 0
    dice = [c["metrics"]["dice"] for c in report["cases"]]
    assert report["summary"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert report["summary"]["dice"]["std"] == pytest.approx(np.std(dice))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["7", "p1_NCCT", "mean", "std"]
    assert float(rows[0]["hd95_mm"]) == pytest.approx(expected["hd95_mm"])
    assert float(rows[2]["dice"]) == pytest.approx(np.mean(dice))
    for case in ("7", "p1_NCCT"):
        assert (out / "overlays" / f"{case}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "clDice" in printed and "AgRef" in printed
    mean_row = next(line for line in printed.splitlines() if line.startswith("mean"))
    assert f"{np.mean(dice):.4f}" in mean_row


def test_without_images_and_overlays(folders):
    assert run(folders, "--no-overlays", image=False) == 0
    report = parse_json_strict((folders["out"] / "metrics.json").read_text())
    assert all("agatston_ref" not in c["metrics"] for c in report["cases"])
    assert not (folders["out"] / "overlays").exists()


def test_imagecas_folder_as_reference_and_image(tmp_path):
    data, pred = tmp_path / "imagecas", tmp_path / "pred"
    mask = blobs(9)
    save(mask, data / "3.label.nii.gz")
    save(ct_image(mask, 9), data / "3.img.nii.gz", dtype=np.int16)
    save(mask, pred / "3.img.nii.gz")  # inference keeps the input's name
    args = ["--ref", str(data), "--image", str(data), "--pred", str(pred), "-o", str(tmp_path / "r")]
    assert evaluate.main([*args, "--no-overlays"]) == 0
    report = parse_json_strict((tmp_path / "r" / "metrics.json").read_text())
    (case,) = report["cases"]
    assert case["case"] == "3" and case["image"].endswith("3.img.nii.gz")
    assert case["prediction"].endswith("pred/3.img.nii.gz")
    assert case["metrics"]["dice"] == 1.0 and case["metrics"]["agatston_ref"] > 0


def test_empty_masks_give_documented_values_and_valid_json(folders):
    empty = np.zeros(SHAPE, np.uint8)
    save(empty, folders["ref"] / "none.nii.gz")
    save(empty, folders["pred"] / "none.nii.gz")
    save(blobs(3), folders["ref"] / "missed.nii.gz")
    save(empty, folders["pred"] / "missed.nii.gz")
    assert run(folders, image=False) == 0
    report = parse_json_strict((folders["out"] / "metrics.json").read_text())
    cases = {c["case"]: c["metrics"] for c in report["cases"]}
    assert cases["none"]["dice"] == 1.0 and cases["none"]["hd95_mm"] == 0.0
    assert cases["missed"]["dice"] == 0.0 and cases["missed"]["hd95_mm"] is None  # inf -> null
    assert report["summary"]["hd95_mm"]["n"] == 3  # the inf of "missed" is left out of mean/std
    rows = {r["case"]: r for r in csv.DictReader((folders["out"] / "metrics.csv").open())}
    assert rows["missed"]["hd95_mm"] == "inf"


def test_bad_cases_are_reported_and_others_continue(folders, capsys):
    ref, pred, img = folders["ref"], folders["pred"], folders["img"]
    mask = blobs(4)
    save(mask, ref / "shape.nii.gz")
    save(np.zeros((10, 32, 27), np.uint8), pred / "shape.nii.gz")
    save(ct_image(mask, 4), img / "shape.nii.gz", dtype=np.int16)
    save(mask, ref / "affine.nii.gz")
    save(mask, pred / "affine.nii.gz", affine=shifted_affine())
    save(ct_image(mask, 5), img / "affine.nii.gz", dtype=np.int16)
    save(mask, ref / "orphan.nii.gz")
    save(mask, ref / "corrupt.nii.gz")
    (pred / "corrupt.nii.gz").write_bytes(b"not a nifti file at all")
    save(ct_image(mask, 6), img / "corrupt.nii.gz", dtype=np.int16)
    save(mask, ref / "noimage.nii.gz")
    save(mask, pred / "noimage.nii.gz")
    (ref / "scan.mha").write_text("MHA")
    (ref / "plaques.json").write_text("{}")  # sidecars are ignored
    assert run(folders) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 6
    text = "\n".join(errors)
    assert "pred/shape.nii.gz: shape (10, 32, 27)" in text
    assert "pred/affine.nii.gz: affine does not match" in text
    assert "ref/orphan.nii.gz: no prediction" in text
    assert "pred/corrupt.nii.gz: cannot read NIfTI" in text
    assert "ref/noimage.nii.gz: no CT image" in text
    assert "ref/scan.mha: not a NIfTI file" in text
    report = parse_json_strict((folders["out"] / "metrics.json").read_text())
    assert {c["case"] for c in report["cases"]} == {"7", "p1_NCCT"}
    assert len(report["failed"]) == 6


def shifted_affine() -> np.ndarray:
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    affine[0, 3] = 5.0  # same spacing, different origin
    return affine


def test_folder_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    args = ["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(tmp_path / "r")]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ref: no reference masks" in err
    args = ["--pred", str(tmp_path / "nope"), "--ref", str(tmp_path / "ref"), "-o", str(tmp_path / "r")]
    assert evaluate.main(args) == 2
    assert "nope: prediction folder not found" in capsys.readouterr().err


def test_module_entry_point(folders):
    (folders["pred"] / "7.nii.gz").unlink()
    command = [
        sys.executable,
        "-m",
        "syncas_jax.evaluate",
        "--ref",
        str(folders["ref"]),
        "--pred",
        str(folders["pred"]),
    ]
    command += ["-o", str(folders["out"]), "--no-overlays"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folders["root"], timeout=120)
    assert result.returncode == 1
    assert "7.label.nii.gz: no prediction" in result.stderr
    assert "p1_NCCT" in result.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "syncas_jax.evaluate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_text.returncode == 0 and "--image" in help_text.stdout and "Pairing" in help_text.stdout
