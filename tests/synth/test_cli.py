"""`python -m syncas_jax.synth` and `python -m syncas_jax.synth.merge` on tiny phantom cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from syncas_jax.common.files import write_json
from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.synth import __main__ as synth_cli
from syncas_jax.synth import merge
from syncas_jax.synth.__main__ import main

PHANTOM_ARGS = ["--phantom-shape", "16", "64", "64", "--phantom-spacing", "1", "0.5", "0.5"]
GOOD = ["phantom_000", "phantom_001"]
BAD = {  # case id → words expected in its failure line
    "bad_shape": "does not match",
    "bad_affine": "affine does not match",
    "no_label": "label file not found",
    "no_coronary": "no coronary label",
    "flat_2d": "expected a 3D image",
    "four_d": "",
    "has_nan": "NaN",
    "corrupt": "cannot read",
}


def write_bad_cases(folder: Path) -> None:
    image = read_volume(folder / "phantom_000.img.nii.gz")
    label = read_volume(folder / "phantom_000.label.nii.gz")

    def case(case_id, img_array, lab_array, img_like=image, lab_like=label, img_dtype=np.int16):
        write_volume(img_array, folder / f"{case_id}.img.nii.gz", img_like, dtype=img_dtype)
        if lab_array is not None:
            write_volume(lab_array, folder / f"{case_id}.label.nii.gz", lab_like, dtype=np.uint8)

    cropped = volume_from_array(image.array[:, :, :60], image.spacing)
    case("bad_shape", cropped.array, label.array, img_like=cropped)
    shifted = volume_from_array(label.array, label.spacing, label.affine.copy())
    shifted.affine[0, 3] += 5.0
    case("bad_affine", image.array, label.array, lab_like=shifted)
    case("no_label", image.array, None)
    case("no_coronary", image.array, np.where(label.array == 128, 0, label.array))
    nan_image = image.array.astype(np.float32).copy()
    nan_image[3, 10, 10] = np.nan
    case("has_nan", nan_image, label.array, img_dtype=np.float32)
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), folder / "flat_2d.img.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.uint8), np.eye(4)), folder / "flat_2d.label.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 16, 2), np.int16), image.affine), folder / "four_d.img.nii.gz")
    case_label = folder / "four_d.label.nii.gz"
    write_volume(label.array, case_label, label, dtype=np.uint8)
    (folder / "corrupt.img.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_volume(label.array, folder / "corrupt.label.nii.gz", label, dtype=np.uint8)


@pytest.fixture(scope="module")
def cta(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cta")
    assert main(["--phantom", "2", "-o", str(folder), *PHANTOM_ARGS]) == 0
    write_bad_cases(folder)
    return folder


@pytest.fixture(scope="module")
def first_run(cta, tmp_path_factory):
    out = tmp_path_factory.mktemp("ncct")
    status = main(["-i", str(cta), "-o", str(out), "--views", "2", "--seed", "3"])
    return out, status


def case_files(folder: Path, case_id: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f"{case_id}."))


def test_phantom_mode_writes_input_cases(cta, capsys):
    image = read_volume(cta / "phantom_000.img.nii.gz")
    label = read_volume(cta / "phantom_000.label.nii.gz", dtype=np.int16)
    assert image.array.shape == (16, 64, 64) and image.spacing == (1.0, 0.5, 0.5)
    assert np.asanyarray(nib.load(cta / "phantom_000.img.nii.gz").dataobj).dtype == np.int16
    assert {5, 118, 120, 123, 128} <= set(np.unique(label.array).tolist())
    assert main(["--phantom", "2", "-o", str(cta), *PHANTOM_ARGS]) == 0  # rerun: nothing rewritten
    assert "0 written, 2 skipped" in capsys.readouterr().out


def test_phantom_start_writes_the_same_patients_on_another_protocol(cta, tmp_path):
    """`--phantom-start 1` writes phantom_001 alone: the same anatomy as in the 2-case run, on any slice grid."""
    again, thick = tmp_path / "again", tmp_path / "thick"
    assert main(["--phantom", "1", "--phantom-start", "1", "-o", str(again), *PHANTOM_ARGS]) == 0
    names = ["phantom_001.arteries.nii.gz", "phantom_001.img.nii.gz", "phantom_001.label.nii.gz"]
    assert [p.name for p in sorted(again.glob("*.nii.gz"))] == names
    for suffix in (".img.nii.gz", ".arteries.nii.gz", ".label.nii.gz"):
        np.testing.assert_array_equal(
            read_volume(again / f"phantom_001{suffix}").array, read_volume(cta / f"phantom_001{suffix}").array
        )
    from syncas_jax.demo.dataset import PhantomSet, Protocol

    shape, spacing = Protocol("thick", 2.0).grid(PhantomSet(1, 1, (16, 64, 64), (1.0, 0.5, 0.5)))
    assert (shape, spacing) == ((8, 64, 64), (2.0, 0.5, 0.5))  # the same 16 mm in z
    args = ["--phantom-shape", *map(str, shape), "--phantom-spacing", *map(str, spacing)]
    assert main(["--phantom", "1", "--phantom-start", "1", "-o", str(thick), *args]) == 0
    # The same patient: phantom_001's anatomy draw (its case seed) on the thick grid, not phantom_000's.
    from syncas_jax.synth.engine import case_seed
    from syncas_jax.synth.phantom import make_phantom

    written = read_volume(thick / "phantom_001.label.nii.gz").array
    np.testing.assert_array_equal(written, make_phantom(shape, spacing, case_seed(0, "phantom_001"))[1])
    assert not np.array_equal(written, make_phantom(shape, spacing, case_seed(0, "phantom_000"))[1])


def test_run_renders_good_cases_and_reports_bad_ones(cta, first_run):
    out, status = first_run
    assert status == 1
    for case_id in GOOD:
        image = read_volume(cta / f"{case_id}.img.nii.gz")
        label_in = read_volume(cta / f"{case_id}.label.nii.gz")
        for k in range(2):
            view_path = out / f"{case_id}.view{k}.img.nii.gz"
            raw = nib.load(view_path)
            assert np.asanyarray(raw.dataobj).dtype == np.int16
            view = read_volume(view_path)
            assert view.array.shape == image.array.shape
            np.testing.assert_allclose(view.affine, image.affine)
            plaques = json.loads((out / f"{case_id}.view{k}.plaques.json").read_text())
            assert isinstance(plaques, list) and len(plaques) <= 15
            for plaque in plaques:
                assert {"center_zyx", "radius_voxels", "kind", "hu", "voxels"} <= set(plaque)
        label_raw = nib.load(out / f"{case_id}.label.nii.gz")
        assert np.asanyarray(label_raw.dataobj).dtype == np.uint8
        label = read_volume(out / f"{case_id}.label.nii.gz")
        np.testing.assert_array_equal(label.array, label_in.array == 128)
        np.testing.assert_allclose(label.affine, image.affine)
    log = (out / "synth.log").read_text().splitlines()
    for case_id, words in BAD.items():
        assert case_files(out, case_id) == [], case_id
        lines = [line for line in log if f"failed {case_id}:" in line]
        assert len(lines) == 1 and words in lines[0], (case_id, lines)
    assert "2 rendered, 0 skipped (done), 8 failed" in log[-1]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_realistic_renders_show_table_hu(cta, tmp_path):
    """--realistic: large structures sit at their table HU in every view (training views move them by up to 200)."""
    from scipy.ndimage import binary_erosion

    good_only = tmp_path / "good"
    good_only.mkdir()
    for suffix in (".img.nii.gz", ".label.nii.gz"):
        (good_only / f"phantom_000{suffix}").symlink_to(cta / f"phantom_000{suffix}")
    out = tmp_path / "realistic"
    assert main(["-i", str(good_only), "-o", str(out), "--views", "3", "--realistic"]) == 0
    labels = read_volume(cta / "phantom_000.label.nii.gz", dtype=np.int16).array
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    interior = binary_erosion(labels == 5, structure=in_plane, iterations=2)  # liver, 55 HU, away from its border
    assert interior.sum() > 100
    for k in range(3):
        view = read_volume(out / f"phantom_000.view{k}.img.nii.gz").array
        assert abs(np.median(view[interior]) - 55.0) < 15.0, k
    assert "realistic renders" in (out / "synth.log").read_text()


def test_rerun_skips_done_cases_and_overwrite_is_deterministic(cta, first_run, capsys):
    out, _ = first_run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("phantom_*")}
    arrays = {name: read_volume(out / name).array for name in before if name.endswith(".nii.gz")}
    assert main(["-i", str(cta), "-o", str(out), "--views", "2", "--seed", "3"]) == 1
    assert "0 rendered, 2 skipped (done), 8 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("phantom_*")} == before
    assert main(["-i", str(cta), "-o", str(out), "--views", "2", "--seed", "3", "--overwrite"]) == 1
    assert "2 rendered" in capsys.readouterr().out
    for name, array in arrays.items():
        np.testing.assert_array_equal(read_volume(out / name).array, array)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("phantom_*")} != before


def test_incomplete_case_is_rendered_and_failure_leaves_nothing(cta, tmp_path, monkeypatch, capsys):
    good_only = tmp_path / "in"
    good_only.mkdir()
    for case_id in GOOD:
        for suffix in (".img.nii.gz", ".label.nii.gz"):
            (good_only / f"{case_id}{suffix}").symlink_to(cta / f"{case_id}{suffix}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "phantom_001.view0.img.nii.gz").write_bytes(b"left over by a killed run")
    calls = {"n": 0}
    real_write_json = write_json

    def failing_write_json(obj, path):
        calls["n"] += 1
        if "phantom_000" in str(path):
            raise OSError("disk full")
        real_write_json(obj, path)

    monkeypatch.setattr(synth_cli, "write_json", failing_write_json)
    assert main(["-i", str(good_only), "-o", str(out), "--views", "1", "--hu-table", "extended"]) == 1
    assert "1 rendered, 0 skipped (done), 1 failed" in capsys.readouterr().out
    assert case_files(out, "phantom_000") == []
    assert [p.name for p in case_files(out, "phantom_001")] == [
        "phantom_001.label.nii.gz",
        "phantom_001.view0.calcium.nii.gz",
        "phantom_001.view0.img.nii.gz",
        "phantom_001.view0.plaques.json",
    ]
    assert read_volume(out / "phantom_001.view0.img.nii.gz").array.shape == (16, 64, 64)


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def test_help_and_bad_folder(tmp_path):
    for module in ("syncas_jax.synth", "syncas_jax.synth.merge"):
        result = run_module(module, "--help")
        assert result.returncode == 0 and "usage" in result.stdout
    result = run_module("syncas_jax.synth", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: input folder not found"]
    result = run_module("syncas_jax.synth", "-i", str(tmp_path), "-o", str(tmp_path))
    assert result.returncode == 2 and "must differ" in result.stderr


def test_merge_multilabel_files_and_mask_folders(cta, tmp_path, capsys):
    label = read_volume(cta / "phantom_000.label.nii.gz", dtype=np.int16)
    labels = label.array
    total = np.where(labels <= 117, labels, 0)
    chambers = np.where((labels >= 118) & (labels <= 124), labels - 117, 0)
    for name, array in (("total", total), ("chambers", chambers), ("coronary", labels == 128)):
        write_volume(array, tmp_path / f"{name}.nii.gz", label, dtype=np.uint8)
    merged_path = tmp_path / "merged.nii.gz"
    args = ["--coronary", str(tmp_path / "coronary.nii.gz"), "-o", str(merged_path)]
    assert (
        merge.main(
            [*args, "--total", str(tmp_path / "total.nii.gz"), "--heartchambers", str(tmp_path / "chambers.nii.gz")]
        )
        == 0
    )
    merged = read_volume(merged_path, dtype=np.int16)
    np.testing.assert_array_equal(merged.array, labels)
    np.testing.assert_allclose(merged.affine, label.affine)
    assert merge.main([*args, "--total", str(tmp_path / "total.nii.gz")]) == 2  # exists, no --overwrite

    masks = tmp_path / "masks"
    names = {5: "liver", 52: "aorta", 61: "atrial_appendage_left"}
    for label_id, name in names.items():
        write_volume(labels == label_id, masks / f"{name}.nii.gz", label, dtype=np.uint8)
    chamber_masks = tmp_path / "chamber_masks"
    write_volume(labels == 118, chamber_masks / "heart_myocardium.nii.gz", label, dtype=np.uint8)
    write_volume(labels == 123, chamber_masks / "aorta.nii.gz", label, dtype=np.uint8)
    assert merge.main([*args, "--overwrite", "--total", str(masks), "--heartchambers", str(chamber_masks)]) == 0
    merged = read_volume(merged_path, dtype=np.int16).array
    keep = np.isin(labels, [5, 52, 61, 118, 123, 128])
    np.testing.assert_array_equal(merged, np.where(keep, labels, 0))
    capsys.readouterr()

    # Wrong task folder, grid mismatch: one clear line, exit 2, output untouched.
    assert merge.main([*args, "--overwrite", "--total", str(chamber_masks)]) == 2
    assert "heart_myocardium.nii.gz: not a class of the TotalSegmentator total task" in capsys.readouterr().err
    small = volume_from_array(labels[:, :, :60], label.spacing)
    write_volume(small.array, tmp_path / "small.nii.gz", small, dtype=np.uint8)
    assert merge.main([*args, "--overwrite", "--total", str(tmp_path / "small.nii.gz")]) == 2
    assert "does not match" in capsys.readouterr().err
    np.testing.assert_array_equal(read_volume(merged_path, dtype=np.int16).array, np.where(keep, labels, 0))
