"""One canonical orientation for everything the network sees, whatever the file's axis order.

Canonical: file voxel axes (i, j, k) → patient Left, Posterior, Superior (nibabel axcodes
("L", "P", "S"); DICOM's own LPS order and the built-in phantom's), so a (z, y, x) array is a
stack of axial slices from feet to head, each in radiological display orientation (rows
anterior → posterior, columns patient right → left). Files are mapped onto it by the closest
axis permutation and flips of their affine (`nibabel.orientations.io_orientation`, as
TotalSegmentator and nnU-Net's readers do): voxel values are moved, never interpolated, so
the inverse is exact. Spacing follows the axes it belongs to.

Training preprocessing (`syncas_jax.data.cache`) and inference (`syncas_jax.data.volume`) both
reorient here, so a scan stored as RAS, LPS or with its slices along the first file axis
reaches the network as the same array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from syncas_jax.common.nifti import Volume

CANONICAL_AXCODES: tuple[str, str, str] = ("L", "P", "S")
#: "canonical": every scan turned to CANONICAL_AXCODES (ours); "file": the file's own axes, as SimpleITK
#: reads them and the reference trained (design §12). Caches, checkpoints and inference record which.
ORIENTATIONS = ("canonical", "file")


@dataclass(frozen=True)
class Reorientation:
    """File axes → canonical axes: `transform` is nibabel's (3, 2) orientation transform over (i, j, k)
    (row i: the canonical axis that file axis i becomes, and −1 where it is flipped)."""

    transform: tuple[tuple[int, int], ...]
    source_axcodes: tuple[str, ...]

    @property
    def is_identity(self) -> bool:
        return all(new == axis and flip == 1 for axis, (new, flip) in enumerate(self.transform))

    def inverse(self) -> Reorientation:
        inverse = [(0, 1)] * 3
        for axis, (new, flip) in enumerate(self.transform):
            inverse[new] = (axis, flip)
        return Reorientation(tuple(inverse), CANONICAL_AXCODES)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(…, z, y, x) array in file order → (…, z, y, x) in canonical order (a view when possible)."""
        return _apply_zyx(np.asarray(array), self.transform)

    def undo(self, array: np.ndarray) -> np.ndarray:
        """(…, z, y, x) array in canonical order → the file's order."""
        return _apply_zyx(np.asarray(array), self.inverse().transform)

    def spacing(self, spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
        """File (z, y, x) spacing (mm) → canonical (z, y, x) spacing."""
        ijk = [float(s) for s in reversed(tuple(spacing_zyx))]
        out = [0.0] * 3
        for axis, (new, _) in enumerate(self.transform):
            out[new] = ijk[axis]
        return (out[2], out[1], out[0])

    def to_list(self) -> list[list[int]]:
        return [[int(new), int(flip)] for new, flip in self.transform]

    @classmethod
    def from_list(cls, transform: Sequence[Sequence[int]], source_axcodes: Sequence[str] = ()) -> Reorientation:
        return cls(tuple((int(new), int(flip)) for new, flip in transform), tuple(source_axcodes))


def _apply_zyx(array: np.ndarray, transform: Sequence[Sequence[int]]) -> np.ndarray:
    """nibabel's apply_orientation for arrays whose last three axes are (z, y, x) = (k, j, i)."""
    nd = array.ndim
    if nd < 3:
        raise ValueError(f"expected an array with (z, y, x) as its last axes, got shape {array.shape}")
    out = array
    for axis, (_, flip) in enumerate(transform):
        if flip == -1:
            out = np.flip(out, axis=nd - 1 - axis)
    order = list(range(nd))
    for axis, (new, _) in enumerate(transform):
        order[nd - 1 - int(new)] = nd - 1 - axis
    return out.transpose(order)


def reorientation(affine: np.ndarray) -> Reorientation:
    """The permutation and flips taking a file with this voxel→world affine to the canonical axes."""
    source = io_orientation(np.asarray(affine, float))
    transform = ornt_transform(source, axcodes2ornt(CANONICAL_AXCODES))
    return Reorientation(
        tuple((int(new), int(flip)) for new, flip in transform), tuple(nib.orientations.ornt2axcodes(source))
    )


def checkpoint_orientation(meta: dict) -> str:
    """The orientation convention a checkpoint was trained with: meta["orientation"], else its training
    config's, else "canonical" (every checkpoint trained before the convention was recorded)."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return str(meta.get("orientation") or config.get("orientation") or "canonical")


def orient(volume: Volume, orientation: str = "canonical") -> tuple[Volume, Reorientation]:
    """`to_canonical` for "canonical"; for "file" the volume as it is and the identity (its axcodes recorded)."""
    if orientation == "canonical":
        return to_canonical(volume)
    if orientation != "file":
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    source = tuple(nib.orientations.aff2axcodes(np.asarray(volume.affine, float)))
    return volume, Reorientation(((0, 1), (1, 1), (2, 1)), source)


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """The volume in canonical orientation (array, spacing, affine, header moved together) and how to undo it.

    A volume already in canonical orientation is returned as is.
    """
    move = reorientation(volume.affine)
    if move.is_identity:
        return volume, move
    shape_ijk = tuple(reversed(volume.array.shape))
    affine = np.asarray(volume.affine, float) @ inv_ornt_aff(np.asarray(move.transform, float), shape_ijk)
    array = np.ascontiguousarray(move.apply(volume.array))
    spacing = move.spacing(volume.spacing)
    header = volume.header.copy()
    header.set_data_shape(tuple(reversed(array.shape)))
    header.set_zooms(tuple(reversed(spacing)))
    header.set_sform(affine)
    header.set_qform(affine)
    return Volume(array=array, spacing=spacing, affine=affine, header=header, path=volume.path), move
