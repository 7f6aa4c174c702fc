"""Sliding-window inference (syncas_jax.nets.sliding_window) and the infer CLI (syncas_jax.infer).

nnU-Net's window placement and Gaussian map are restated here from their definitions
(nnunetv2.inference.sliding_window_prediction) in plain numpy, and the stitching is
checked against a naive per-window numpy loop with injected predictor functions.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from syncas_jax.common.checkpoint import save_checkpoint
from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.infer.__main__ import main, parse_args
from syncas_jax.infer.cases import DEFAULT_STEP, FAST_STEP, WindowSettings, output_name, predict_case, probability_path
from syncas_jax.infer.predict import inference_settings, load_model_for_inference
from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.sliding_window import (
    MIRROR_COMBINATIONS,
    compute_steps,
    gaussian_importance_map,
    pad_to_patch,
    predict_sliding_window,
    window_starts,
)
from syncas_jax.nets.unet import abstract_variables

PATCH = (16, 32, 32)
TINY_MODEL = {"ngf": 4, "depth": 3, "norm": "batch"}
TINY_CONFIG = {"spacing": [2.0, 1.0, 1.0], "patch_size": list(PATCH)}


# --------------------------------------------------------------- nnU-Net, restated


def nnunet_steps(image_size, tile_size, tile_step_size):
    """nnU-Net's compute_steps_for_sliding_window."""
    target = [t * tile_step_size for t in tile_size]
    num_steps = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size)]
    steps = []
    for dim in range(len(tile_size)):
        max_step = image_size[dim] - tile_size[dim]
        actual = max_step / (num_steps[dim] - 1) if num_steps[dim] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num_steps[dim])])
    return steps


def nnunet_gaussian(tile_size, sigma_scale=1.0 / 8, value_scaling_factor=10):
    """nnU-Net's compute_gaussian (float32 result)."""
    tmp = np.zeros(tile_size)
    tmp[tuple(i // 2 for i in tile_size)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in tile_size], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scaling_factor
    g = g.astype(np.float32)
    g[g == 0] = np.min(g[g != 0])
    return g


SIZES = [
    ((46, 513, 513), (32, 224, 224)),
    ((32, 224, 224), (32, 224, 224)),
    ((33, 225, 300), (32, 224, 224)),
    ((110, 64, 17), (64, 16, 17)),
    ((10, 40, 36), (5, 7, 9)),
]


@pytest.mark.parametrize("image, patch", SIZES)
@pytest.mark.parametrize("step", [0.5, 0.25, 1.0, 0.33])
def test_window_steps_follow_nnunet(image, patch, step):
    assert compute_steps(image, patch, step) == nnunet_steps(image, patch, step)
    starts = window_starts(image, patch, step)
    assert len(starts) == math.prod(len(s) for s in nnunet_steps(image, patch, step))
    covered = np.zeros(image, bool)
    for z, y, x in starts[:200]:
        covered[z : z + patch[0], y : y + patch[1], x : x + patch[2]] = True
    if len(starts) <= 200:
        assert covered.all()


def test_nnunet_step_example_and_errors():
    # nnU-Net's own comment: image 110, patch 64, step 0.5 → starts 0, 23, 46.
    assert compute_steps((110, 64, 64), (64, 64, 64), 0.5)[0] == [0, 23, 46]
    with pytest.raises(ValueError, match="smaller than the patch"):
        compute_steps((10, 40, 36), PATCH)
    with pytest.raises(ValueError, match="step"):
        compute_steps((32, 32, 32), PATCH, 0.0)


@pytest.mark.parametrize("patch", [(32, 224, 224), (16, 32, 32), (5, 7, 9), (17, 17, 17), (1, 2, 3)])
def test_gaussian_follows_nnunet(patch):
    ours = gaussian_importance_map(patch)
    assert ours.dtype == np.float32 and ours.shape == patch
    np.testing.assert_array_equal(ours, nnunet_gaussian(patch))
    assert ours.max() == np.float32(10) and ours.min() > 0
    # Analytically: 10 · exp(-Σ d²/(2σ²)) with σ = patch/8 (all offsets lie within scipy's 4σ truncation).
    grids = np.meshgrid(*[(np.arange(p) - p // 2) / (p / 8) for p in patch], indexing="ij", sparse=True)
    expected = 10 * np.exp(-0.5 * sum(g**2 for g in grids))
    if min(patch) >= 5:
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-12)


def test_pad_to_patch_centres_like_nnunet():
    image = np.ones((10, 40, 36), np.float32)
    padded, region = pad_to_patch(image, PATCH)
    assert padded.shape == (16, 40, 36)
    assert region == (slice(3, 13), slice(0, 40), slice(0, 36))
    assert padded[:3].sum() == 0 and padded[13:].sum() == 0
    np.testing.assert_array_equal(padded[region], image)


# ------------------------------------------------------------------ injected predictors


def pointwise_predictor(windows):
    """Three-class logits that depend only on the voxel's own value (so on its global coordinate)."""
    return jnp.concatenate([jnp.zeros_like(windows), 3 * windows - 1, windows**2], axis=-1)


def position_predictor(windows):
    """Two-class logits that depend on the position inside the window (not mirror-equivariant)."""
    ramp = jnp.cumsum(windows, axis=3) * 0.2 + jnp.arange(windows.shape[1])[None, :, None, None, None] * 0.1
    return jnp.concatenate([jnp.zeros_like(windows), ramp - windows], axis=-1)


def symmetric_blur_predictor(windows):
    """Two-class logits from a symmetric 3×3×3 blur: commutes with every mirroring."""
    kernel = jnp.ones((3, 3, 3, 1, 1), jnp.float32) / 27
    blurred = jax.lax.conv_general_dilated(
        windows, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
    return jnp.concatenate([jnp.zeros_like(blurred), 4 * blurred], axis=-1)


def softmax_np(logits, axis):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def naive_sliding_window(image, predict, patch, step, mirror):
    """Independent numpy stitching: pad, visit every window, average mirrored softmax, Gaussian-weight."""
    shape = image.shape
    below = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    padded = np.pad(image, [(b, max(p - s, 0) - b) for s, p, b in zip(shape, patch, below)])
    gauss = nnunet_gaussian(patch).astype(np.float64)
    total = None
    weight = np.zeros(padded.shape)
    for z, y, x in itertools.product(*nnunet_steps(padded.shape, patch, step)):
        window = padded[z : z + patch[0], y : y + patch[1], x : x + patch[2]]
        probs = 0
        combos = [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)] if mirror else [()]
        for axes in combos:
            flipped = np.flip(window, axes)[None, ..., None]
            logits = np.asarray(predict(jnp.asarray(flipped.copy())), np.float64)[0]
            probs = probs + np.flip(softmax_np(logits, -1), axes)
        probs = probs / len(combos)
        if total is None:
            total = np.zeros((*padded.shape, probs.shape[-1]))
        total[z : z + patch[0], y : y + patch[1], x : x + patch[2]] += probs * gauss[..., None]
        weight[z : z + patch[0], y : y + patch[1], x : x + patch[2]] += gauss
    result = np.moveaxis(total / weight[..., None], -1, 0)
    return result[(slice(None), *(slice(b, b + s) for b, s in zip(below, shape)))]


def coordinate_image(shape):
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (0.05 * z + 0.013 * y - 0.011 * x - 0.3).astype(np.float32)


@pytest.mark.parametrize("shape, batch", [((10, 40, 36), 3), ((20, 47, 70), 2)])
def test_stitching_a_known_function_is_exact(shape, batch):
    image = coordinate_image(shape)
    result = predict_sliding_window(image, pointwise_predictor, PATCH, step=0.5, tta=False, batch=batch)
    assert result.shape == (3, *shape) and result.dtype == np.float32
    expected = softmax_np(np.stack([np.zeros_like(image), 3 * image - 1, image**2]).astype(np.float64), 0)
    np.testing.assert_allclose(result, expected, atol=2e-6)


@pytest.mark.parametrize("tta", [False, True])
def test_stitching_matches_naive_loop(tta):
    image = np.random.default_rng(0).normal(size=(18, 40, 45)).astype(np.float32)
    result = predict_sliding_window(image, position_predictor, PATCH, step=0.5, tta=tta, batch=4)
    expected = naive_sliding_window(image, position_predictor, PATCH, 0.5, tta)
    np.testing.assert_allclose(result, expected, atol=1e-5)
    np.testing.assert_allclose(result.sum(0), 1, atol=1e-5)


def test_tta_with_mirror_equivariant_model_changes_nothing():
    image = np.random.default_rng(1).normal(size=(20, 40, 36)).astype(np.float32)
    plain = predict_sliding_window(image, symmetric_blur_predictor, PATCH, tta=False, batch=2)
    mirrored = predict_sliding_window(image, symmetric_blur_predictor, PATCH, tta=True, batch=2)
    np.testing.assert_allclose(mirrored, plain, atol=1e-6)
    # ...whereas a model that is not mirror-equivariant is changed by it.
    assert len(MIRROR_COMBINATIONS) == 8 and len(set(MIRROR_COMBINATIONS)) == 8
    a = predict_sliding_window(image, position_predictor, PATCH, tta=False, batch=2)
    b = predict_sliding_window(image, position_predictor, PATCH, tta=True, batch=2)
    assert np.abs(a - b).max() > 1e-2


def test_bad_arguments_are_value_errors():
    image = np.zeros((16, 32, 32), np.float32)
    with pytest.raises(ValueError, match="Z, Y, X"):
        predict_sliding_window(image[0], pointwise_predictor, PATCH)
    with pytest.raises(ValueError, match="batch"):
        predict_sliding_window(image, pointwise_predictor, PATCH, batch=0)
    with pytest.raises(ValueError, match="logits"):
        predict_sliding_window(image, lambda w: w[:, :8], PATCH)


# ---------------------------------------------------------------- files and geometry


def test_output_names():
    assert output_name("p01_NCCT.nii.gz") == "CA_p01_NCCT.nii.gz"
    assert output_name("p01NCCT.nii") == "CA_p01NCCT.nii"
    assert output_name("case7.nii.gz") == "case7.nii.gz"
    assert output_name("NCCT_case7.nii.gz") == "NCCT_case7.nii.gz"
    assert probability_path(Path("/o/CA_p01_NCCT.nii.gz")).name == "CA_p01_NCCT_prob.nii.gz"


def oblique_affine(spacing_zyx):
    """A rotated, shifted voxel→world matrix for (i, j, k) = (x, y, z) indices."""
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]])
    affine[:3, 3] = [12.5, -40.25, 7.0]
    return affine


def phantom_ct(shape=(10, 40, 36), seed=0):
    """HU volume with a zero border (exercises the crop), soft tissue, and a bright blob (the 'label')."""
    rng = np.random.default_rng(seed)
    hu = np.zeros(shape, np.float32)
    hu[1:-1, 3:-2, 2:-4] = -500 + rng.normal(0, 5, (shape[0] - 2, shape[1] - 5, shape[2] - 6))
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    blob = ((z - 5) / 3.2) ** 2 + ((y - 18) / 9) ** 2 + ((x - 20) / 7) ** 2 <= 1
    hu[blob] = 200
    return hu, blob


def write_ct(path, hu, spacing=(2.5, 0.8, 0.7)):
    volume = volume_from_array(hu, spacing, oblique_affine(spacing))
    volume.header["descrip"] = b"syncas infer test"
    write_volume(hu, path, like=volume, dtype=np.int16)
    return path


def test_label_through_preprocessing_and_back_overlays_source(tmp_path):
    hu, blob = phantom_ct()
    volume = read_volume(write_ct(tmp_path / "ct.nii.gz", hu))

    def threshold_predictor(windows):  # normalised HU 200 → 0.75, tissue → -1: recovers the blob
        return jnp.concatenate([jnp.zeros_like(windows), 20 * (windows - 0.25)], axis=-1)

    settings = WindowSettings(spacing=(2.0, 1.0, 1.0), patch_size=PATCH, tta=False)
    prediction = predict_case(volume, threshold_predictor, settings, probabilities=True)
    mask = prediction.segmentation
    assert mask.shape == hu.shape and mask.dtype == np.uint8
    assert prediction.probability.shape == hu.shape and prediction.probability.dtype == np.float32
    np.testing.assert_array_equal(mask, prediction.probability > 0.5)
    dice = 2 * np.sum(mask & blob) / (mask.sum() + blob.sum())
    assert dice > 0.9, dice
    np.testing.assert_allclose(np.argwhere(mask).mean(0), np.argwhere(blob).mean(0), atol=0.5)
    # Written back, the mask overlays the blob in the file's own (x, y, z) storage too.
    write_volume(mask, tmp_path / "mask.nii.gz", like=volume, dtype=np.uint8)
    stored_mask = np.asanyarray(nib.load(tmp_path / "mask.nii.gz").dataobj)
    stored_ct = np.asanyarray(nib.load(tmp_path / "ct.nii.gz").dataobj)
    assert 2 * np.sum((stored_mask > 0) & (stored_ct == 200)) / (stored_mask.sum() + (stored_ct == 200).sum()) > 0.9


# ------------------------------------------------------------------- checkpoints, CLI


def random_variables(seed, **model):
    """SynCASNet variables with random values (no traced init: cheap on a CPU).

    Running variances lie in [0.5, 1.5] and means are nonzero, so eval mode is exercised.
    """
    rng = np.random.default_rng(seed)
    shapes = abstract_variables(ModelConfig(**model))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A training-style checkpoint: params, batch_stats, optimizer state and step; config with spacing/patch."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    variables = random_variables(0, **TINY_MODEL)
    momentum = jax.tree.map(np.zeros_like, variables["params"])
    state = {**variables, "opt_state": {"0": {"trace": momentum}, "1": {}}, "step": np.int32(120)}
    save_checkpoint(path, state, {"model": TINY_MODEL, "config": TINY_CONFIG, "step": 120})
    return path


def test_load_model_and_settings(tiny_checkpoint):
    predict_fn, meta = load_model_for_inference(tiny_checkpoint)
    assert meta["model"] == {**TINY_MODEL, "head_bias": False}
    assert inference_settings(meta) == ((2.0, 1.0, 1.0), PATCH)
    assert inference_settings(meta, (1.0, 1.0, 1.0), (16, 16, 24)) == ((1.0, 1.0, 1.0), (16, 16, 24))
    assert inference_settings({"model": {"depth": 4}}) == ((3.0, 0.349609375, 0.349609375), (32, 224, 224))
    with pytest.raises(ValueError, match="multiples of 8"):
        inference_settings(meta, patch_size=(12, 32, 32))
    shape = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((2, *PATCH, 1), jnp.float32)).shape
    assert shape == (2, *PATCH, 2)


def test_head_bias_checkpoint_round_trip(tmp_path):
    """A model trained with head_bias loads with its bias; metadata that disagrees is an error."""
    model = {**TINY_MODEL, "head_bias": True}
    variables = random_variables(1, **model)
    variables["params"]["unet"]["head"]["bias"] = np.array([0.0, 1e4], np.float32)  # coronary everywhere
    save_checkpoint(tmp_path / "biased", variables, {"model": model, "config": TINY_CONFIG})
    predict_fn, meta = load_model_for_inference(tmp_path / "biased")
    assert meta["model"]["head_bias"] is True
    logits = np.asarray(predict_fn(jnp.asarray(np.random.default_rng(0).normal(size=(1, *PATCH, 1)), jnp.float32)))
    assert np.all(np.argmax(logits, -1) == 1)
    save_checkpoint(tmp_path / "mislabelled", variables, {"model": TINY_MODEL, "config": TINY_CONFIG})
    with pytest.raises(InputError, match="do not match the architecture"):
        load_model_for_inference(tmp_path / "mislabelled")


def test_reference_pth_is_converted_on_the_fly(tmp_path):
    torch = pytest.importorskip("torch")
    from tests import torch_reference as ref

    torch.manual_seed(0)
    path = tmp_path / "ref.pth"
    ref.save_reference_checkpoint(path, ref.ReferenceUNet(), ref.make_heads())
    predict_fn, meta = load_model_for_inference(path)
    assert meta["model"] == {"ngf": 16, "depth": 4, "norm": "batch", "head_bias": False}
    assert inference_settings(meta) == ((3.0, 0.349609375, 0.349609375), (32, 224, 224))
    shape = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((1, 32, 32, 32, 1), jnp.float32)).shape
    assert shape == (1, 32, 32, 32, 2)


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_end_to_end(tiny_checkpoint, tmp_path, capsys):
    hu, _ = phantom_ct()
    inputs = tmp_path / "in"
    write_ct(inputs / "p01_NCCT.nii.gz", hu)
    write_ct(inputs / "case2.nii.gz", hu[:, ::-1].copy(), spacing=(3.0, 0.7, 0.9))
    (inputs / "notes.json").write_text("{}")
    out = tmp_path / "out"
    status, stdout, err = run_cli(
        capsys, "-i", inputs, "-o", out, "-m", tiny_checkpoint, "--no-tta", "--save-probabilities", "--batch", "2"
    )
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "CA_p01_NCCT.nii.gz",
        "CA_p01_NCCT_prob.nii.gz",
        "case2.nii.gz",
        "case2_prob.nii.gz",
    ]
    for source, result in [("p01_NCCT", "CA_p01_NCCT"), ("case2", "case2")]:
        image = nib.load(inputs / f"{source}.nii.gz")
        mask = nib.load(out / f"{result}.nii.gz")
        prob = nib.load(out / f"{result}_prob.nii.gz")
        assert mask.shape == image.shape and prob.shape == image.shape
        np.testing.assert_array_equal(mask.affine, image.affine)
        np.testing.assert_array_equal(prob.affine, image.affine)
        assert mask.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
        for key in ("dim", "pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b", "descrip"):
            np.testing.assert_array_equal(mask.header[key], image.header[key], err_msg=key)
        data, p = np.asanyarray(mask.dataobj), np.asanyarray(prob.dataobj)
        assert set(np.unique(data)) <= {0, 1}
        assert p.min() >= 0 and p.max() <= 1
        np.testing.assert_array_equal(data, p > 0.5)

    # The CLI writes what the library computes.
    predict_fn, meta = load_model_for_inference(tiny_checkpoint)
    volume = read_volume(inputs / "p01_NCCT.nii.gz")
    expected = predict_case(volume, predict_fn, WindowSettings((2.0, 1.0, 1.0), PATCH, tta=False, batch=2))
    np.testing.assert_array_equal(
        read_volume(out / "CA_p01_NCCT.nii.gz", dtype=np.uint8).array, expected.segmentation
    )

    # Finished cases are skipped unless --overwrite.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    status, stdout, err = run_cli(
        capsys, "-i", inputs, "-o", out, "-m", tiny_checkpoint, "--no-tta", "--save-probabilities"
    )
    assert status == 0 and "nothing to do" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_single_file_to_named_output(tiny_checkpoint, tmp_path, capsys):
    hu, _ = phantom_ct(seed=3)
    source = write_ct(tmp_path / "scan_NCCT.nii.gz", hu)
    status, _, err = run_cli(
        capsys, "-i", source, "-o", tmp_path / "res" / "mask.nii.gz", "-m", tiny_checkpoint, "--no-tta", "--batch", "2"
    )
    assert status == 0, err
    assert nib.load(tmp_path / "res" / "mask.nii.gz").shape == nib.load(source).shape
    # Writing over the input itself is refused.
    status, _, err = run_cli(capsys, "-i", source, "-o", source, "-m", tiny_checkpoint, "--no-tta", "--overwrite")
    assert status == 1 and "overwrite this input" in err


def test_cli_bad_cases_are_reported_and_others_continue(tiny_checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    hu, _ = phantom_ct(seed=1)
    write_ct(inputs / "good_NCCT.nii.gz", hu)
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.int16), np.eye(4)), inputs / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), inputs / "multi.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti at all")
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "-i", inputs, "-o", out, "-m", tiny_checkpoint, "--no-tta", "--batch", "2")
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3, err
    assert any("flat.nii.gz" in line and "expected a 3D image" in line for line in lines)
    assert any("multi.nii.gz" in line and "expected a 3D image" in line for line in lines)
    assert any("broken.nii.gz" in line and "cannot read NIfTI" in line for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["CA_good_NCCT.nii.gz"]

    text = tmp_path / "scan.txt"
    text.write_text("hello")
    status, _, err = run_cli(capsys, "-i", text, "-o", out, "-m", tiny_checkpoint)
    assert status == 1 and "scan.txt" in err and "not a NIfTI file" in err


def test_cli_unusable_checkpoint_or_folder(tiny_checkpoint, tmp_path, capsys):
    hu, _ = phantom_ct(seed=2)
    source = write_ct(tmp_path / "in" / "a.nii.gz", hu)
    out = tmp_path / "out"

    status, _, err = run_cli(capsys, "-i", source, "-o", out, "-m", tmp_path / "missing")
    assert status == 2 and "missing" in err and "checkpoint not found" in err

    (tmp_path / "plain").mkdir()
    status, _, err = run_cli(capsys, "-i", source, "-o", out, "-m", tmp_path / "plain")
    assert status == 2 and "not a syncas_jax checkpoint" in err

    # Weights of ngf 4 under metadata claiming ngf 8: named as an architecture mismatch.
    wrong = tmp_path / "wrong"
    save_checkpoint(wrong, random_variables(1, **TINY_MODEL), {"model": {**TINY_MODEL, "ngf": 8}})
    status, _, err = run_cli(capsys, "-i", source, "-o", out, "-m", wrong)
    assert status == 2 and "wrong" in err and "do not match the architecture" in err and "ngf=8" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1

    status, _, err = run_cli(capsys, "-i", source, "-o", out, "-m", tiny_checkpoint, "--patch-size", "12", "32", "32")
    assert status == 2 and "multiples of 8" in err

    (tmp_path / "empty").mkdir()
    status, _, err = run_cli(capsys, "-i", tmp_path / "empty", "-o", out, "-m", tiny_checkpoint)
    assert status == 2 and "empty" in err and "no NIfTI files" in err
    assert not out.exists()


def test_cli_help_runs_as_module():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "syncas_jax.infer", "--help"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and "--save-probabilities" in result.stdout


def test_fast_preset_is_no_tta_and_a_longer_step():
    base = ["-i", "in", "-o", "out", "-m", "model"]
    default, fast, fast_step = (parse_args(base + extra) for extra in ([], ["--fast"], ["--fast", "--step", "0.6"]))
    assert (default.step, default.tta) == (DEFAULT_STEP, True)
    assert (fast.step, fast.tta) == (FAST_STEP, False)
    assert (fast_step.step, fast_step.tta) == (0.6, False)
    assert parse_args(base + ["--no-tta"]).tta is False


def test_cli_fast_writes_the_fast_settings_prediction_and_notes_tta_without_mirroring(tmp_path, capsys):
    """--fast on a scan with more windows at step 0.5 than at 0.75 writes predict_case's result for
    step 0.75 without TTA; TTA on a checkpoint trained without augmentation gets a note."""
    path = tmp_path / "ckpt"
    config = {**TINY_CONFIG, "augmentated": False}
    save_checkpoint(path, random_variables(0, **TINY_MODEL), {"model": TINY_MODEL, "config": config})
    hu, _ = phantom_ct(shape=(10, 100, 36))  # 76 voxels along y after the crop: 4 windows at step 0.5, 3 at 0.75
    write_ct(tmp_path / "in" / "p01_NCCT.nii.gz", hu)
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "-i", tmp_path / "in", "-o", out, "-m", path, "--fast")
    assert status == 0, err
    assert "without mirror augmentation" not in err
    predict_fn, _ = load_model_for_inference(path)
    volume = read_volume(tmp_path / "in" / "p01_NCCT.nii.gz")
    settings = WindowSettings((2.0, 1.0, 1.0), PATCH, step=FAST_STEP, tta=False)
    expected = predict_case(volume, predict_fn, settings).segmentation
    np.testing.assert_array_equal(read_volume(out / "CA_p01_NCCT.nii.gz", dtype=np.uint8).array, expected)
    status, _, err = run_cli(capsys, "-i", tmp_path / "in", "-o", out, "-m", path, "--overwrite")
    assert status == 0 and "trained without mirror augmentation" in err
