"""Calcium score (syncas_jax.metrics.calcium) on constructed lesions, scored by hand.

Voxel sizes are binary fractions (0.5 × 0.25 mm pixels = 0.125 mm², 1.5 and 3 mm slices), so
areas, weights and the slice factor multiply exactly: the expected numbers are exact, and a
lesion of 8 pixels is exactly 1 mm² (counted) while 7 pixels are 0.875 mm² (not counted).
"""

from __future__ import annotations

import numpy as np
import pytest

from syncas_jax import metrics
from syncas_jax.metrics.calcium import calcium_score, lesion_weight_map, risk_category


def constructed_case():
    """(image HU, mask) with the lesions listed in `test_calcium_score_by_hand`."""
    image = np.full((5, 24, 32), 40.0)
    mask = np.zeros(image.shape, bool)
    mask[:, 1:20, 1:26] = True
    image[0, 2, 2:10] = 130.0  # A: 8 px = 1.0 mm² at the threshold, peak exactly 130 HU → weight 1
    image[0, 10, 2:9] = 900.0  # B: 7 px = 0.875 mm² → not a lesion
    image[1, 4:8, 4:8] = 250.0  # C: 16 px = 2.0 mm², peak 299 → weight 2
    image[1, 5, 5] = 299.0
    for i in range(8):  # D: 8 px diagonal, 8-connected only = 1.0 mm², peak 400 → weight 4
        image[1, 10 + i, 12 + i] = 150.0
    image[1, 13, 15] = 400.0
    image[2, 6, 2:26] = 129.0  # 24 px just below 130 HU → nothing
    image[2, 21:24, 2:10] = 1000.0  # outside the mask → nothing
    image[3, 12:17, 20:30] = 350.0  # E: 5 × 10 px, of which 5 × 6 inside the mask = 3.75 mm², weight 3
    image[4, 2:4, 2:6] = 210.0  # F: right above nothing, 8 px = 1.0 mm², weight 2
    return image, mask


@pytest.mark.parametrize("slice_mm", [1.5, 3.0])
def test_calcium_score_by_hand(slice_mm):
    image, mask = constructed_case()
    spacing = (slice_mm, 0.5, 0.25)
    factor = slice_mm / 3.0  # 0.5 or 1: exact
    expected_lesions = [  # slice, row, column, area, peak, weight
        (0, 2.0, 5.5, 1.0, 130.0, 1),
        (1, 5.5, 5.5, 2.0, 299.0, 2),
        (1, 13.5, 15.5, 1.0, 400.0, 4),
        (3, 14.0, 22.5, 3.75, 350.0, 3),
        (4, 2.5, 3.5, 1.0, 210.0, 2),
    ]
    result = calcium_score(image, mask, spacing)
    table = [(les.slice, les.row, les.column, les.area_mm2, les.peak_hu, les.weight) for les in result.lesions]
    assert table == expected_lesions
    scores = [area * weight * factor for *_, area, _, weight in expected_lesions]
    assert [les.score for les in result.lesions] == scores
    assert result.agatston == sum(scores) == (1 + 4 + 4 + 11.25 + 2) * factor
    assert result.volume_mm3 == (1 + 2 + 1 + 3.75 + 1) * slice_mm
    assert result.lesion_count == 5
    assert result.risk_category == "1-99"
    assert metrics.agatston_score(image, mask, spacing) == result.agatston  # evaluate's column: same function
    weights = lesion_weight_map(image, mask, spacing)
    assert weights.dtype == np.uint8 and weights.shape == image.shape
    assert np.count_nonzero(weights) == 8 + 16 + 8 + 30 + 8
    assert weights[0, 2, 2] == 1 and weights[1, 13, 15] == 4 and weights[0, 10, 2] == 0 and weights[3, 14, 27] == 0


def test_anisotropic_pixels_at_the_area_threshold():
    """The same 8-pixel lesion is 1 mm² with 0.5 × 0.25 mm pixels and 0.875 mm² with 0.4375 × 0.25 mm pixels."""
    image = np.zeros((1, 6, 12))
    image[0, 2, 1:9] = 500.0
    assert calcium_score(image, image > 0, (3.0, 0.5, 0.25)).agatston == 4.0
    assert calcium_score(image, image > 0, (3.0, 0.4375, 0.25)).lesion_count == 0
    # Transposed pixels: the area uses the product, so swapping y and x spacing gives the same score.
    assert calcium_score(image, image > 0, (3.0, 0.25, 0.5)).agatston == 4.0


def test_empty_and_calcium_free_masks():
    image, mask = constructed_case()
    for empty in (np.zeros_like(mask), mask & (image < 130)):
        result = calcium_score(image, empty, (3.0, 0.5, 0.25))
        assert (result.agatston, result.volume_mm3, result.lesion_count, result.risk_category) == (0.0, 0.0, 0, "0")
        assert result.lesions == ()
    assert set(calcium_score(image, mask, (3.0, 0.5, 0.25)).to_dict()) == {
        "agatston", "volume_mm3", "lesion_count", "risk_category", "lesions",
    }  # fmt: skip
    with pytest.raises(ValueError, match="differs"):
        calcium_score(image[:2], mask, (3.0, 0.5, 0.25))


@pytest.mark.parametrize(
    "agatston, category",
    [(0.0, "0"), (0.25, "1-99"), (1.0, "1-99"), (99.5, "1-99"), (100.0, "100-399"), (399.75, "100-399"),
     (400.0, ">=400"), (2500.0, ">=400")],
)  # fmt: skip
def test_risk_categories(agatston, category):
    assert risk_category(agatston) == category
