"""DICOM series reading (syncas_jax.common.dicom) against the source volume, dcm2niix and the standard.

Series are written in the test with pydicom (tests/dicom_series.py) from a tiny phantom:
shuffled file names, int16 and uint16 with intercept −1024, slopes 1 and 0.5, 1.5 and 3 mm
slices, LPS, flipped, head-first and coronal layouts.
"""

from __future__ import annotations

import subprocess

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MPEG2MPML, JPEGLosslessSV1, RLELossless

from syncas_jax.common.dicom import find_series_folders, read_dicom_series, read_scan, series_affine
from syncas_jax.common.errors import InputError
from syncas_jax.synth.phantom import make_phantom
from tests.dicom_series import AXIAL_FLIPPED, AXIAL_HEAD_FIRST, AXIAL_LPS, CORONAL, write_series

SHAPE = (12, 48, 48)
LAYOUTS = {"lps": AXIAL_LPS, "flipped": AXIAL_FLIPPED, "head_first": AXIAL_HEAD_FIRST, "coronal": CORONAL}


def phantom(slice_mm=3.0):
    """HU rounded and floored at −1024 (as scanners store it), and the phantom's LPS affine."""
    image, _, affine = make_phantom(SHAPE, (slice_mm, 0.8, 0.8), seed=0)
    return np.maximum(np.rint(image), -1024).astype(np.float32), affine


def canonical(array_zyx, affine):
    """nibabel's closest-canonical (RAS) copy of a (z, y, x) array: (data in (i, j, k), affine)."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array_zyx).T, affine))
    return np.asanyarray(image.dataobj), image.affine


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "slice_mm, unsigned, intercept, slope", [(3.0, False, 0.0, 1.0), (1.5, True, -1024.0, 1.0), (3.0, True, -1024, 0.5)]
)
def test_series_is_the_source_volume_in_world_space(tmp_path, layout, slice_mm, unsigned, intercept, slope):
    hu, affine = phantom(slice_mm)
    write_series(tmp_path / "s", hu, affine, LAYOUTS[layout], unsigned=unsigned, intercept=intercept, slope=slope)
    series = read_dicom_series(tmp_path / "s")
    volume = series.volume
    data, world = canonical(volume.array, volume.affine)
    expected, expected_world = canonical(hu, affine)
    np.testing.assert_allclose(world, expected_world, atol=1e-5)
    np.testing.assert_array_equal(data, expected)
    # Spacing follows the array's axes; the header carries the same geometry.
    np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), volume.spacing[::-1], rtol=1e-6)
    np.testing.assert_allclose(volume.header.get_best_affine(), volume.affine, atol=1e-5)
    assert [int(h) for h in volume.header.get_data_shape()] == list(volume.array.shape[::-1])
    # Datasets come in the volume's slice order: their positions step along the third affine column.
    lps = np.diag([-1, -1, 1]) @ (volume.affine[:3, :3] @ [0, 0, 1])
    steps = np.diff([[float(v) for v in ds.ImagePositionPatient] for ds in series.datasets], axis=0)
    np.testing.assert_allclose(steps, np.tile(lps, (len(steps), 1)), atol=1e-4)


def test_affine_by_hand_from_the_standard():
    """Axial slices, row direction +x (patient left), column direction +y (posterior), LPS.

    Pixel (r, c) of the first slice lies at IPP + c·Δc·(1,0,0) + r·Δr·(0,1,0); dcm2niix's voxel
    (i, j, k) = (c, rows−1−r, k), and RAS = LPS with x, y negated.
    """
    affine = series_affine([1, 0, 0, 0, 1, 0], [-100.0, -120.0, 50.0], [0.5, 0.7], 3.0, rows=10)
    expected = np.array(
        [[-0.7, 0.0, 0.0, 100.0], [0.0, 0.5, 0.0, 120.0 - 9 * 0.5], [0.0, 0.0, 3.0, 50.0], [0.0, 0.0, 0.0, 1.0]]
    )
    np.testing.assert_allclose(affine, expected)


@pytest.mark.parametrize("layout", ["lps", "head_first", "coronal"])
def test_volume_matches_dcm2niix(tmp_path, layout):
    """dcm2niix (the converter's own binary, from PyPI) is the yardstick: same voxels, same affine."""
    binary = dcm2niix.bin  # the converter's binary, shipped in the PyPI package (the test extra)
    hu, affine = phantom(1.5)
    write_series(tmp_path / "s", hu, affine, LAYOUTS[layout], unsigned=True, intercept=-1024.0)
    out = tmp_path / "nifti"
    out.mkdir()
    command = [binary, "-z", "n", "-f", "ref", "-o", str(out), str(tmp_path / "s")]
    subprocess.run(command, check=True, capture_output=True)
    reference = nib.load(out / "ref.nii")
    volume = read_dicom_series(tmp_path / "s").volume
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array.T, reference.get_fdata())
    np.testing.assert_allclose(volume.header.get_zooms(), reference.header.get_zooms()[:3], rtol=1e-6)


def test_compressed_with_a_decoder_reads_like_uncompressed(tmp_path):
    hu, affine = phantom()
    paths = write_series(tmp_path / "s", hu, affine, unsigned=True, intercept=-1024.0)
    plain = read_dicom_series(tmp_path / "s").volume.array
    for path in paths:  # pydicom's own RLE encoder and decoder: no optional dependency
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").volume.array, plain)


def bad_series(tmp_path, problem):
    hu, affine = phantom()
    folder = tmp_path / f"series_{problem}"
    if problem == "mixed":
        write_series(folder, hu, affine, prefix="A")
        write_series(folder, hu, affine, prefix="B", series_number=4)
    elif problem == "missing_slice":
        write_series(folder, hu, affine, drop_slices=[5])
    elif problem == "duplicate":
        write_series(folder, hu, affine, prefix="A", series_uid="1.2.3.4")
        write_series(folder, hu, affine, prefix="B", series_uid="1.2.3.4", drop_slices=range(1, 12))
    elif problem == "tilt":
        write_series(folder, hu, affine, tilt_mm_per_slice=0.5)
    elif problem == "modality":
        write_series(folder, hu, affine, modality="MR")
    elif problem in ("jpeg_lossless", "mpeg2"):
        syntax = JPEGLosslessSV1 if problem == "jpeg_lossless" else MPEG2MPML
        write_series(folder, hu, affine, transfer_syntax=syntax)
    elif problem == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    return folder


PROBLEMS = {
    "mixed": "holds 2 series",
    "missing_slice": "uneven slice spacing.*missing slices",
    "duplicate": "share one position",
    "tilt": "gantry tilt",
    "modality": "modality MR, expected CT",
    "jpeg_lossless": "JPEG Lossless.*(no decoder installed|cannot decode)",
    "mpeg2": "MPEG2.*no DICOM decoder exists",
    "empty": "no DICOM images",
}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_series_give_one_line_naming_the_folder(tmp_path, problem):
    folder = bad_series(tmp_path, problem)
    with pytest.raises(InputError, match=PROBLEMS[problem]) as caught:
        read_dicom_series(folder)
    message = str(caught.value)
    assert message.startswith(str(folder)) and "\n" not in message


def test_find_series_folders_and_read_scan(tmp_path):
    hu, affine = phantom()
    write_series(tmp_path / "export" / "study" / "s2", hu, affine)
    write_series(tmp_path / "export" / "s1", hu, affine)
    (tmp_path / "export" / "README.txt").write_text("not DICOM")
    (tmp_path / "export" / "s1" / "DICOMDIR.txt").write_text("not DICOM either")
    export = tmp_path / "export"
    assert find_series_folders(export) == [export / "s1", export / "study" / "s2"]
    assert find_series_folders(export / "s1") == [export / "s1"]
    assert read_scan(export / "s1").array.shape == SHAPE
