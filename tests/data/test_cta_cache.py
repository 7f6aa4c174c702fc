"""The CTA cache (`preprocess --cta`): the NCCT cache's grid and labels, what online synthesis needs, bad input."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.transform import radon

from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import volume_from_array, write_volume
from syncas_jax.data.__main__ import main as preprocess_main
from syncas_jax.data.cache import preprocess_case
from syncas_jax.data.cta_cache import preprocess_cta_case, slice_noise_factor
from syncas_jax.data.transforms import compute_new_shape, crop_to_nonzero, resample
from syncas_jax.synth.hu import reassign_hu
from syncas_jax.synth.hu_table import REFERENCE
from syncas_jax.synth.phantom import phantom_affine
from syncas_jax.train.config import config_from_dict
from syncas_jax.train.loop import select_cases
from tests.data.cases import write_case
from tests.data.cta_cases import SPACING, cta_phantom, write_cta_case

TARGET = (3.0, 1.0, 1.0)  # z: 3-D cubic resize (no separate axis); in-plane 0.8 → 1.0 mm


def test_cta_case_shares_the_ncct_grid_and_holds_what_rendering_needs():
    image, labels = cta_phantom((12, 48, 48))
    image[:, :2] = 0  # a zero frame to crop
    affine = phantom_affine(image.shape, SPACING)  # stored in the canonical orientation: arrays compare as they are

    def volume(array):
        return volume_from_array(array, SPACING, affine)

    case = preprocess_cta_case(volume(image), volume(labels), TARGET)
    ncct = preprocess_case([volume(image)], volume((labels == 128).astype(np.uint8)), TARGET)
    np.testing.assert_array_equal(case.label, ncct.label)
    np.testing.assert_array_equal(case.foreground, ncct.foreground)
    for key in ("crop_bbox", "shape_after_crop", "shape_after_resample", "separate_axis"):
        assert case.properties[key] == ncct.properties[key], key
    cropped, _, _ = crop_to_nonzero(image[None])
    shape = compute_new_shape(cropped.shape[1:], SPACING, TARGET)
    np.testing.assert_array_equal(case.hu, np.rint(resample(cropped[0], shape, SPACING, TARGET)).astype(np.int16))
    assert case.hu.dtype == np.int16 and case.organs.dtype == np.uint8 and case.organs.shape == case.label.shape
    assert np.all(case.organs[case.label > 0] == 128)

    # Sinograms: the realistic render of each slice, blurred σ 0.5 and projected (scikit-image as reference).
    hu = case.hu.astype(np.float32)
    realistic = np.asarray(reassign_hu(hu, case.organs, jax.random.key(0), REFERENCE, offsets=False))
    for z in (0, len(realistic) // 2):
        blurred = ndi.gaussian_filter(realistic[z].astype(np.float64), 0.5, mode="nearest", truncate=2.0)
        expected = radon(blurred, np.arange(180.0), circle=False).T  # (A, S)
        assert case.sinogram[z].shape == expected.shape
        error = np.linalg.norm(case.sinogram[z] - expected) / np.linalg.norm(expected)
        assert error < 0.01, error

    # Plaque sites lie on the resampled coronary mask, in mm of the cached grid.
    points = case.centreline[:, :3] / np.asarray(TARGET)
    near = ndi.binary_dilation(case.label > 0, iterations=1)
    inside = near[tuple(np.clip(np.rint(points).astype(int), 0, np.array(near.shape) - 1).T)]
    assert len(points) > 5 and inside.mean() > 0.9
    np.testing.assert_allclose(np.linalg.norm(case.centreline[:, 4:], axis=1), 1.0, atol=1e-5)
    assert np.all(case.centreline[:, 3] > 0)

    # Photon factors: (0.8 / 1.0)² in-plane over the z interpolation's remaining noise variance.
    np.testing.assert_allclose(case.photons, 0.64 / slice_noise_factor(12, len(case.photons), SPACING, TARGET))


def test_slice_noise_factor_is_the_variance_left_by_z_resampling():
    rng = np.random.default_rng(0)
    n_in, n_out = 10, 5
    for spacing, target in [((1.0, 0.8, 0.8), (2.0, 0.8, 0.8)), ((0.5, 0.35, 0.35), (1.0, 0.35, 0.35))]:
        noise = rng.normal(size=(300, n_in, 6, 6)).astype(np.float32)  # independent between slices
        measured = resample(noise, (n_out, 6, 6), spacing, target).var(axis=(0, 2, 3))
        np.testing.assert_allclose(slice_noise_factor(n_in, n_out, spacing, target), measured, rtol=0.06)
    assert np.all(slice_noise_factor(12, 3, (1.0, 0.35, 0.35), (3.0, 0.35, 0.35)) == 1.0)  # nearest along z
    assert slice_noise_factor(10, 5, (1.0, 0.8, 0.8), (2.0, 0.8, 0.8)).max() < 0.99  # cubic: averages


def test_cli_cta_cache_skips_each_bad_case_with_one_line(tmp_path, capsys):
    src, out = tmp_path / "cta", tmp_path / "cache"
    shape = (6, 40, 40)
    write_cta_case(src, "good", shape)
    image, labels = cta_phantom(shape)
    write_cta_case(src, "nocoronary", shape, labels=np.where(labels == 128, 0, labels).astype(np.uint8))
    write_cta_case(src, "noorgan", shape, labels=np.where(labels == 128, 128, 11).astype(np.uint8))
    write_cta_case(src, "othergrid", shape)
    write_volume(labels[:5], src / "othergrid.label.nii.gz", volume_from_array(labels[:5], SPACING), np.uint8)
    with_nan = image.copy()
    with_nan[2, 20, 20] = np.nan
    write_cta_case(src, "nan", shape, image=with_nan)

    args = ["--cta", "-i", str(src), "-o", str(out), "--spacing", "3", "0.8", "0.8"]
    assert preprocess_main(args) == 1
    captured = capsys.readouterr()
    for case_id, fragment in [
        ("nocoronary", "nocoronary.label.nii.gz: no coronary label"),
        ("noorgan", "noorgan.label.nii.gz: no structure of the HU table"),
        ("othergrid", "othergrid.label.nii.gz: shape"),
        ("nan", "nan.img.nii.gz: image contains NaN"),
    ]:
        lines = [line for line in captured.err.splitlines() if line.startswith(f"  failed {case_id}:")]
        assert len(lines) == 1 and fragment in lines[0], captured.err
    assert "preprocessed 1, skipped 0 (already cached), failed 4" in captured.out
    info = json.loads((out / "dataset.json").read_text())
    assert info["kind"] == "cta" and info["cases"] == ["good"] and info["hu_table"] == "reference"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("good")) == ["dataset.json"]
    assert not list(out.glob(".*")), "no temporary files left behind"

    assert preprocess_main(args) == 1
    assert "preprocessed 0, skipped 1 (already cached), failed 4" in capsys.readouterr().out
    assert preprocess_main([*args, "--hu-table", "extended"]) == 2  # the cache was made with another table
    assert "HU table 'reference'" in capsys.readouterr().err
    ncct = tmp_path / "ncct"
    write_case(ncct, "n1")
    assert preprocess_main(["-i", str(ncct), "-o", str(out), "--spacing", "3", "0.8", "0.8"]) == 2
    assert "holds a cta cache, not ncct" in capsys.readouterr().err


def test_synthesis_setting_must_match_the_cache_kind(tmp_path):
    write_cta_case(tmp_path / "cta", "c1", (6, 40, 40))
    assert preprocess_main(["--cta", "-i", str(tmp_path / "cta"), "-o", str(tmp_path / "ctacache")]) == 0
    write_case(tmp_path / "ncct", "n1")
    assert preprocess_main(["-i", str(tmp_path / "ncct"), "-o", str(tmp_path / "ncctcache")]) == 0

    def config(cache, **changes):
        return config_from_dict({"data_dir": str(tmp_path / cache), **changes})[0]

    with pytest.raises(InputError, match="ncctcache: is an NCCT cache; synthesis 'online' needs a CTA cache"):
        select_cases(config("ncctcache", synthesis="online"))
    with pytest.raises(InputError, match="ctacache: is a CTA cache; synthesis 'offline' needs an NCCT cache"):
        select_cases(config("ctacache"))
    with pytest.raises(InputError, match="differs from the config's"):
        select_cases(config("ctacache", synthesis="online", spacing=[3.0, 0.7, 0.7]))
    assert select_cases(config("ctacache", synthesis="online"))[0] == ["c1"]
    with pytest.raises(InputError, match="synthesis must be one of"):
        config("ctacache", synthesis="sometimes")
