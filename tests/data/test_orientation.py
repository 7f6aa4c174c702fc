"""Canonical orientation (syncas_jax.data.orientation) and the training cache going through it.

nibabel's own `apply_orientation` / `aff2axcodes` are the reference for the array moves; the
cache test writes one phantom case in four file layouts and expects the very same cached arrays.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation

from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.data.cache import preprocess_case
from syncas_jax.data.orientation import CANONICAL_AXCODES, reorientation, to_canonical
from syncas_jax.synth.phantom import make_phantom
from tests.layouts import LAYOUTS, relayout

SIGNED_PERMUTATIONS = [
    (order, flips) for order in itertools.permutations(range(3)) for flips in itertools.product((1, -1), repeat=3)
]


def signed_affine(order, flips, zooms=(0.7, 0.9, 2.5)):
    """Voxel axis a → world axis order[a], direction flips[a], length zooms[a] mm; a small rotation and shift."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis, (world, flip) in enumerate(zip(order, flips)):
        affine[world, axis] = flip * zooms[axis]
    angle = 0.2  # oblique, but each voxel axis stays closest to its world axis
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = [4.0, -7.5, 30.0]
    return affine


@pytest.mark.parametrize("order, flips", SIGNED_PERMUTATIONS)
def test_every_signed_permutation_reaches_the_canonical_axes(order, flips):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)  # (z, y, x)
    affine = signed_affine(order, flips)
    volume = volume_from_array(array, (2.5, 0.9, 0.7), affine)
    canonical, move = to_canonical(volume)
    assert nib.aff2axcodes(canonical.affine) == CANONICAL_AXCODES
    assert move.source_axcodes == nib.aff2axcodes(affine)
    expected = apply_orientation(array.T, np.asarray(move.transform)).T  # nibabel on (i, j, k)
    np.testing.assert_array_equal(canonical.array, expected)
    np.testing.assert_array_equal(move.undo(canonical.array), array)
    # Spacing follows its axis; every voxel keeps its world position.
    np.testing.assert_allclose(np.linalg.norm(canonical.affine[:3, :3], axis=0)[::-1], canonical.spacing, rtol=1e-6)
    np.testing.assert_allclose(canonical.header.get_zooms()[::-1], canonical.spacing, rtol=1e-6)
    ijk = np.argwhere(np.ones(array.T.shape, bool))
    values = array.T[tuple(ijk.T)]
    world = nib.affines.apply_affine(affine, ijk)
    canonical_ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(canonical.affine), world)).astype(int)
    np.testing.assert_array_equal(canonical.array.T[tuple(canonical_ijk.T)], values)


def test_canonical_input_is_left_alone():
    image, _, affine = make_phantom((8, 24, 24), (3.0, 0.8, 0.8), seed=0)
    volume = volume_from_array(image, (3.0, 0.8, 0.8), affine)
    canonical, move = to_canonical(volume)
    assert move.is_identity and canonical is volume
    assert reorientation(np.diag([0.8, 0.8, 3.0, 1.0])).source_axcodes == ("R", "A", "S")


def test_training_cache_is_the_same_for_every_file_layout(tmp_path):
    image, labels, affine = make_phantom((12, 48, 48), (3.0, 0.8, 0.8), seed=2)
    view = np.rint(image)
    mask = (labels == 128).astype(np.uint8)
    cached = {}
    for name, (order, flips) in LAYOUTS.items():
        stored_view, stored_affine, spacing = relayout(view, affine, order, flips)
        stored_mask, _, _ = relayout(mask, affine, order, flips)
        like = volume_from_array(stored_view, spacing, stored_affine)
        write_volume(stored_view, tmp_path / f"{name}.view0.img.nii.gz", like, np.int16)
        write_volume(stored_mask, tmp_path / f"{name}.label.nii.gz", like, np.uint8)
        views = [read_volume(tmp_path / f"{name}.view0.img.nii.gz")]
        case = preprocess_case(views, read_volume(tmp_path / f"{name}.label.nii.gz"), (2.0, 1.2, 1.2))
        assert case.properties["source_axcodes"] == list(name)
        assert nib.aff2axcodes(np.asarray(case.properties["affine"])) == CANONICAL_AXCODES
        cached[name] = case
    reference = cached["LPS"]
    assert reference.foreground.shape[0] > 0
    for name, case in cached.items():
        np.testing.assert_array_equal(case.views, reference.views, err_msg=name)
        np.testing.assert_array_equal(case.label, reference.label, err_msg=name)
        np.testing.assert_array_equal(case.foreground, reference.foreground, err_msg=name)
        np.testing.assert_allclose(case.properties["affine"], reference.properties["affine"], atol=1e-4)
        assert case.properties["original_spacing"] == pytest.approx(reference.properties["original_spacing"])
