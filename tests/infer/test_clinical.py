"""Clinical input and output of inference: any file layout, DICOM series, calcium report, DICOM SEG.

Masks are compared in world space: the set of world coordinates (affine · voxel index) of
the mask's voxels, computed here from each file's own affine, independent of the code under
test. The predictor is a deterministic, orientation-sensitive function (a weighted sum of
one-sided differences along z, y and x): a network shown a mirrored or transposed array
gives a different mask, so the tests fail if inference does not reorient (checked below).
"""

from __future__ import annotations

import json
import re

import highdicom as hd
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pydicom
import pytest

from syncas_jax.calcium.__main__ import main as calcium_main
from syncas_jax.common.checkpoint import save_checkpoint
from syncas_jax.common.dicom import dicom_files
from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.data.volume import preprocess_image
from syncas_jax.infer.__main__ import main as infer_main
from syncas_jax.infer.cases import WindowSettings, predict_case, read_input
from syncas_jax.synth.phantom import make_phantom
from tests.common.test_dicom import PROBLEMS, bad_series
from tests.dicom_series import AXIAL_FLIPPED, AXIAL_HEAD_FIRST, AXIAL_LPS, CORONAL, write_series
from tests.infer.test_infer import TINY_CONFIG, TINY_MODEL, random_variables
from tests.layouts import LAYOUTS, relayout, world_points

SHAPE = (12, 48, 48)
SETTINGS = WindowSettings(spacing=(2.0, 1.2, 1.2), patch_size=(24, 40, 40), tta=False)  # z resampled on its own


def rise(w, axis):
    """w − w one voxel back along `axis` (edge-padded): positive where intensity rises along the axis."""
    pad = [(0, 0)] * w.ndim
    pad[axis] = (1, 0)
    previous = jax.lax.slice_in_dim(jnp.pad(w, pad, mode="edge"), 0, w.shape[axis], axis=axis)
    return w - previous


@jax.jit
def directional_predict_fn(windows):
    """(B, Z, Y, X, 1) → logits (B, Z, Y, X, 2): coronary where z·1 + y·0.5 − x·0.25 rises steeply."""
    w = windows[..., 0]
    score = rise(w, 1) + 0.5 * rise(w, 2) - 0.25 * rise(w, 3)
    return jnp.stack([jnp.zeros_like(score), 40.0 * (score - 0.05)], axis=-1)


def phantom(slice_mm=3.0):
    image, _, affine = make_phantom(SHAPE, (slice_mm, 0.8, 0.8), seed=1)
    return np.maximum(np.rint(image), -1024).astype(np.float32), affine


def write_nifti(path, hu_zyx, affine, spacing):
    like = volume_from_array(hu_zyx, spacing, affine)
    write_volume(hu_zyx, path, like=like, dtype=np.int16)
    return path


def predict_file(source, output):
    volume, _ = read_input(source)
    prediction = predict_case(volume, directional_predict_fn, SETTINGS)
    write_volume(prediction.segmentation, output, like=volume, dtype=np.uint8)
    return volume


def test_predictor_is_orientation_sensitive():
    """Without reorientation, a mirrored or transposed file would change this predictor's mask."""
    hu, affine = phantom()
    image, _ = preprocess_image(volume_from_array(hu, (3.0, 0.8, 0.8), affine), SETTINGS.spacing)
    window = jnp.asarray(image)[None, ..., None]
    direct = np.asarray(directional_predict_fn(window)[0, ..., 1] > 0)
    assert 0 < direct.sum() < direct.size // 4
    for axis in (0, 1, 2):
        mirrored = np.flip(np.asarray(directional_predict_fn(jnp.flip(window, axis + 1))[0, ..., 1] > 0), axis)
        assert not np.array_equal(mirrored, direct), axis
    transposed = jnp.transpose(window, (0, 3, 2, 1, 4))
    back = np.asarray(directional_predict_fn(transposed)[0, ..., 1] > 0).transpose(2, 1, 0)
    assert not np.array_equal(back, direct)


def test_every_file_layout_gives_the_same_mask_in_world_space(tmp_path):
    hu, affine = phantom()
    points = {}
    for name, (order, flips) in LAYOUTS.items():
        stored, stored_affine, spacing = relayout(hu, affine, order, flips)
        source = write_nifti(tmp_path / f"{name}.nii.gz", stored, stored_affine, spacing)
        volume = predict_file(source, tmp_path / f"mask_{name}.nii.gz")
        written = nib.load(tmp_path / f"mask_{name}.nii.gz")
        # The mask keeps the input's own layout, affine and header.
        assert written.shape == nib.load(source).shape
        np.testing.assert_array_equal(written.affine, nib.load(source).affine)
        assert written.header["descrip"] == volume.header["descrip"]
        points[name] = world_points(tmp_path / f"mask_{name}.nii.gz")
    assert len(points["LPS"]) > 50
    for name in LAYOUTS:
        np.testing.assert_array_equal(points[name], points["LPS"], err_msg=name)


DICOM_CASES = [  # layout, slice mm, uint16 with intercept -1024
    ("lps", AXIAL_LPS, 3.0, False),
    ("flipped", AXIAL_FLIPPED, 1.5, True),
    ("head_first", AXIAL_HEAD_FIRST, 3.0, True),
    ("coronal", CORONAL, 1.5, False),
]


@pytest.mark.parametrize("name, layout, slice_mm, unsigned", DICOM_CASES, ids=[c[0] for c in DICOM_CASES])
def test_dicom_series_gives_the_nifti_mask_in_world_space(tmp_path, name, layout, slice_mm, unsigned):
    hu, affine = phantom(slice_mm)
    nifti = write_nifti(tmp_path / "scan.nii.gz", hu, affine, (slice_mm, 0.8, 0.8))
    predict_file(nifti, tmp_path / "mask_nifti.nii.gz")
    write_series(tmp_path / "series", hu, affine, layout, unsigned=unsigned, intercept=-1024.0 if unsigned else 0.0)
    predict_file(tmp_path / "series", tmp_path / "mask_dicom.nii.gz")
    expected = world_points(tmp_path / "mask_nifti.nii.gz")
    assert len(expected) > 50
    np.testing.assert_array_equal(world_points(tmp_path / "mask_dicom.nii.gz"), expected)


# ------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, random_variables(3, **TINY_MODEL), {"model": TINY_MODEL, "config": TINY_CONFIG})
    return path


def pixel_world_ras(ds):
    """(rows, columns, 3) RAS mm of every pixel centre of a slice, from the DICOM standard's definition."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    delta_r, delta_c = (float(v) for v in ds.PixelSpacing)
    r, c = np.mgrid[: int(ds.Rows), : int(ds.Columns)]
    lps = ipp + c[..., None] * delta_c * iop[:3] + r[..., None] * delta_r * iop[3:]
    return lps * np.array([-1.0, -1.0, 1.0])


def mask_on_source_slices(mask_path, sources):
    """{SOPInstanceUID: (rows, columns) uint8} the NIfTI mask sampled at each source slice's pixel centres."""
    image = nib.load(mask_path)
    data = np.asanyarray(image.dataobj)
    inverse = np.linalg.inv(image.affine)
    out = {}
    for ds in sources:
        ijk = np.rint(nib.affines.apply_affine(inverse, pixel_world_ras(ds))).astype(int)
        out[ds.SOPInstanceUID] = data[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
    return out


def same_report(a, b):
    """Equal keys, lesion count and category; numbers equal to float32 rounding of the spacing."""
    numbers = ("agatston", "volume_mm3")
    exact = ("lesion_count", "risk_category", "cac_drs")
    assert set(a) == set(b) and [a[k] for k in exact] == [b[k] for k in exact]
    assert [a[k] for k in numbers] == pytest.approx([b[k] for k in numbers], rel=1e-6)
    for name in a["arteries"]:
        assert a["arteries"][name] == pytest.approx(b["arteries"][name], rel=1e-6), name
    assert len(a["lesions"]) == len(b["lesions"]) > 0

    def split(lesion):  # (numbers, names)
        return ({k: v for k, v in lesion.items() if not isinstance(v, str)},
                {k: v for k, v in lesion.items() if isinstance(v, str)})  # fmt: skip

    pairs = [(split(x), split(y)) for x, y in zip(a["lesions"], b["lesions"])]
    return all(xn == pytest.approx(yn, rel=1e-6) and xs == ys for (xn, xs), (yn, ys) in pairs)


def test_cli_on_a_pacs_export(tmp_path, tiny_checkpoint, capsys):
    """A folder with a NIfTI scan, two series folders (one nested) and one folder per bad series."""
    hu, affine = phantom()
    export, out = tmp_path / "export", tmp_path / "out"
    write_nifti(export / "scan.nii.gz", hu, affine, (3.0, 0.8, 0.8))
    write_series(export / "seriesA", hu, affine, AXIAL_LPS, seed=1)
    write_series(export / "study" / "seriesB", hu, affine, AXIAL_FLIPPED, unsigned=True, intercept=-1024.0, seed=2)
    problems = {name: PROBLEMS[name] for name in PROBLEMS if name != "empty"}
    bad = {name: bad_series(export, name) for name in problems}
    args = ["-i", str(export), "-o", str(out), "-m", str(tiny_checkpoint), "--no-tta", "--report", "--dicom-seg",
            "--arteries"]  # fmt: skip
    assert infer_main(args) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for name, folder in bad.items():  # one line each, naming the folder and the problem
        assert any(re.match(f"error: {re.escape(str(folder))}: .*{problems[name]}", line) for line in errors), name
    assert f"predicted 3 case(s), skipped 0, failed {len(bad)}" in captured.out
    masks = {name: out / f"{name}.nii.gz" for name in ("scan", "CA_seriesA", "CA_study_seriesB")}
    artery_maps = {name: out / f"{name}_arteries.nii.gz" for name in masks}
    written = sorted(p.name for p in [*masks.values(), *artery_maps.values()])
    assert sorted(p.name for p in out.glob("*.nii.gz")) == written
    for name, path in artery_maps.items():  # on the mask's grid, an artery for every mask voxel
        arteries, mask = nib.load(path), nib.load(masks[name])
        np.testing.assert_array_equal(arteries.affine, mask.affine)
        np.testing.assert_array_equal(np.asanyarray(arteries.dataobj) > 0, np.asanyarray(mask.dataobj) > 0)
    assert not (out / "scan.seg.dcm").exists() and not list(out.glob("CA_series_*"))

    # One world-space mask, whatever the input's form; the series' masks are in dcm2niix's geometry.
    reference = world_points(masks["scan"])
    for path in masks.values():
        np.testing.assert_array_equal(world_points(path), reference, err_msg=path.name)
    np.testing.assert_allclose(
        nib.load(masks["CA_seriesA"]).affine, read_input(export / "seriesA")[0].affine, atol=1e-6
    )

    # Calcium reports: the same numbers for every form of the scan, and the calcium CLI's on the series.
    reports = {name: json.loads((out / f"{name}_calcium.json").read_text()) for name in masks}
    keys = {"agatston", "volume_mm3", "lesion_count", "risk_category", "cac_drs", "arteries", "lesions", "excluded"}
    assert set(reports["scan"]) == keys
    assert reports["CA_seriesA"] == reports["CA_study_seriesB"]
    assert same_report(reports["scan"], reports["CA_seriesA"])  # NIfTI stores spacing as float32: ~1e-8 apart
    calcium_args = ["--image", str(export / "seriesA"), "--mask", str(masks["CA_seriesA"]), "-o", str(tmp_path),
                    "--arteries", str(artery_maps["CA_seriesA"])]  # fmt: skip
    assert calcium_main(calcium_args) == 0
    assert json.loads((tmp_path / "CA_seriesA_calcium.json").read_text()) == reports["CA_seriesA"]
    for name in masks:
        assert (out / f"{name}_calcium.csv").read_text().startswith("slice,row,column,area_mm2,peak_hu")
        assert (out / f"{name}_calcium.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # DICOM SEG: references the source series; read back (pydicom and highdicom) = the mask on each source slice.
    series_folder = export / "study" / "seriesB"
    sources = [pydicom.dcmread(p) for p in dicom_files(series_folder)]
    expected = mask_on_source_slices(masks["CA_study_seriesB"], sources)
    seg_path = out / "CA_study_seriesB.seg.dcm"
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_array_equal(frame, expected[uid])
        seen.add(uid)
    assert all(not expected[uid].any() for uid in set(expected) - seen)  # omitted frames are empty
    uids = [ds.SOPInstanceUID for ds in sources]
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_instance(uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0], np.stack([expected[uid] for uid in uids]))
    mask_voxels = int(np.asanyarray(nib.load(masks["CA_study_seriesB"]).dataobj).sum())
    assert sum(int(m.sum()) for m in expected.values()) == mask_voxels > 0

    # Re-running skips the finished cases and still reports the broken one.
    assert infer_main(args) == 1
    assert "skipping 3 case(s)" in capsys.readouterr().err
    assert read_volume(masks["scan"]).array.shape == SHAPE
