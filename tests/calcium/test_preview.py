"""Which slices the calcium preview shows."""

from __future__ import annotations

import numpy as np

from syncas_jax.calcium.preview import preview_slices


def test_lesion_slices_come_first_then_the_structures_left_out():
    mask = np.ones((6, 4, 4), bool)
    weights = np.zeros(mask.shape, np.uint8)
    excluded = np.zeros(mask.shape, bool)
    weights[4, 0, 0] = 2  # one lesion voxel
    excluded[1] = True  # 16 excluded voxels
    excluded[3, :2] = True  # 8
    excluded[2, 0, 0] = True  # 1
    assert preview_slices(mask, weights, 2, excluded) == [1, 4]  # the lesion's slice despite fewer voxels
    assert preview_slices(mask, weights, 3, excluded) == [1, 3, 4]
    assert preview_slices(mask, weights, 4) == [4]
    assert preview_slices(mask, np.zeros_like(weights)) == [3]  # nothing to show: the mask's middle slice
