"""The same scan stored in other file layouts (axis orders and directions), and masks in world space."""

from __future__ import annotations

import nibabel as nib
import numpy as np


def relayout(hu_zyx, affine, order, flips):
    """The same voxels stored with file axes (i', j', k') = source axes `order`, flipped where `flips`.

    Returns ((z, y, x) array, affine, (z, y, x) spacing) of the new layout.
    """
    ijk = np.asarray(hu_zyx).T
    select = np.zeros((4, 4))
    select[3, 3] = 1
    for new, (old, flip) in enumerate(zip(order, flips)):
        select[old, new] = -1 if flip else 1
        select[old, 3] = ijk.shape[old] - 1 if flip else 0
    moved = np.transpose(ijk, order)
    for axis, flip in enumerate(flips):
        if flip:
            moved = np.flip(moved, axis)
    new_affine = affine @ select
    spacing = tuple(float(s) for s in np.linalg.norm(new_affine[:3, :3], axis=0)[::-1])
    return np.ascontiguousarray(moved.T), new_affine, spacing


LAYOUTS = {  # axis codes of a layout of an LPS source → (order, flips) of the file axes
    "LPS": ((0, 1, 2), (False, False, False)),  # the phantom's own (and DICOM's)
    "RAS": ((0, 1, 2), (True, True, False)),  # x and y flipped
    "SPL": ((2, 1, 0), (False, False, False)),  # slices along the first file axis
    "PIR": ((1, 2, 0), (False, True, True)),  # every axis moved, two flipped
}


def world_points(path):
    """Sorted world coordinates (mm, rounded to 1 µm) of the voxels > 0 of a NIfTI file."""
    image = nib.load(path)
    ijk = np.argwhere(np.asanyarray(image.dataobj) > 0)
    xyz = nib.affines.apply_affine(image.affine, ijk)
    return np.unique(np.round(xyz, 3), axis=0)
