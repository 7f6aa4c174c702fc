"""The clinical lesion (syncas_jax.metrics.calcium) on constructed scans, every expected number written out by hand.

Voxel sizes are binary fractions (0.5 × 0.25 mm pixels = 0.125 mm², 1.5 and 3 mm slices), so areas, weights and
the slice factor multiply exactly. The 3 mm search margin is 6 pixels along rows (0.5 mm) and 12 along columns
(0.25 mm): a margin counted in pixels instead of millimetres gives other numbers.

The lumen (the mask) is rows 10-13, columns 10-40 on every slice (rows 10-14 on slice 2); columns 10-25 carry
the LAD, 26-40 the LCX.

| lesion | slice | pixels (rows × columns) | peak HU | what it tests | scored pixels → mm², weight |
|---|---|---|---|---|---|
| A | 0 | 12-15 × 20-27: half in the lumen, half in the wall | 450 | scored whole, not its lumen half | 32 → 4.0, 4 |
| B | 1 | 15-16 × 20-27: 0.5-1.5 mm from the lumen, not touching | 600 | found through the mask only | none |
| C | 1 | 9-10 × 30-33 | 250 | LCX | 8 → 1.0, 2 |
| bar | 2 | 14-16 × 0-127, the mask's row 14 on it | 800 | a rib the mask strays onto: 227/384 px outside | excluded |
| far bar | 3 | 30-32 × 0-127, 8 mm from the lumen | 800 | outside the margin | none |
| D | 4 | 13 × 36-55: columns 41-52 within 3 mm, 53-55 beyond | 350 | the margin in mm along columns | 17 → 2.125, 3 |
| E | 4 | 13-20 × 20-21: rows 14-19 within 3 mm, 20 beyond | 200 | the margin in mm along rows | 14 → 1.75, 2 |
| F | 5 | 11 × 15-22 | 130 | 8 px = 1 mm² counts, at the threshold | 8 → 1.0, 1 |
| G | 5 | 11 × 30-36 | 900 | 7 px = 0.875 mm² does not | none |
| H | 6, 7 | 11-12 × 36-39 on two slices | 300 | one 3-D lesion on two rows of the table | 8 + 8 → 1.0 + 1.0, 3 |
"""

from __future__ import annotations

import numpy as np
import pytest

from syncas_jax import metrics
from syncas_jax.common.arteries import ARTERY_IDS
from syncas_jax.metrics.calcium import cac_drs, calcium_score, lesion_maps, lesion_weight_map, risk_category


def constructed_case():
    """(image HU, mask, arteries) with the lesions of the module docstring."""
    image = np.full((8, 40, 128), 40.0)
    mask = np.zeros(image.shape, bool)
    mask[:, 10:14, 10:41] = True
    mask[2, 14, 10:41] = True
    arteries = np.zeros(image.shape, np.uint8)
    arteries[:, :, 10:26] = ARTERY_IDS["LAD"]
    arteries[:, :, 26:41] = ARTERY_IDS["LCX"]
    arteries[~mask] = 0
    image[0, 12:16, 20:28] = 450.0  # A
    image[1, 15:17, 20:28] = 600.0  # B
    image[1, 9:11, 30:34] = 250.0  # C
    image[2, 14:17, :] = 800.0  # bar
    image[3, 30:33, :] = 800.0  # far bar
    image[4, 13, 36:56] = 350.0  # D
    image[4, 13:21, 20:22] = 200.0  # E
    image[5, 11, 15:23] = 130.0  # F
    image[5, 11, 30:37] = 900.0  # G
    image[6:8, 11:13, 36:40] = 300.0  # H
    return image, mask, arteries


EXPECTED = [  # slice, row, column, area mm², peak HU, weight, artery
    (0, 13.5, 23.5, 4.0, 450.0, 4, "LAD"),
    (1, 9.5, 31.5, 1.0, 250.0, 2, "LCX"),
    (4, 13.0, 44.0, 2.125, 350.0, 3, "LCX"),
    (4, 16.0, 20.5, 1.75, 200.0, 2, "LAD"),
    (5, 11.0, 18.5, 1.0, 130.0, 1, "LAD"),
    (6, 11.5, 37.5, 1.0, 300.0, 3, "LCX"),
    (7, 11.5, 37.5, 1.0, 300.0, 3, "LCX"),
]


@pytest.mark.parametrize("slice_mm", [1.5, 3.0])
def test_lesions_scored_whole_by_hand(slice_mm):
    image, mask, arteries = constructed_case()
    spacing = (slice_mm, 0.5, 0.25)
    factor = slice_mm / 3.0  # 0.5 or 1: exact
    result = calcium_score(image, mask, spacing, arteries)
    table = [(les.slice, les.row, les.column, les.area_mm2, les.peak_hu, les.weight, les.artery)
             for les in result.lesions]
    assert table == EXPECTED
    scores = [area * weight * factor for *_, area, _, weight, _ in EXPECTED]
    assert [les.score for les in result.lesions] == scores
    assert result.agatston == sum(scores) == (16 + 2 + 6.375 + 3.5 + 1 + 3 + 3) * factor
    assert result.volume_mm3 == (4 + 1 + 2.125 + 1.75 + 1 + 1 + 1) * slice_mm
    assert [les.lesion for les in result.lesions] == [1, 2, 3, 4, 5, 6, 6]  # H is one lesion on two slices
    assert result.lesion_count == 6
    assert result.risk_category == "1-99" and result.cac_drs == "A1/N2"
    lad, lcx = result.arteries["LAD"], result.arteries["LCX"]
    assert (lad.agatston, lad.volume_mm3, lad.lesion_count) == ((16 + 3.5 + 1) * factor, 6.75 * slice_mm, 3)
    assert (lcx.agatston, lcx.volume_mm3, lcx.lesion_count) == ((2 + 6.375 + 6) * factor, 5.125 * slice_mm, 3)
    for empty in ("LM", "RCA", "other"):
        assert result.arteries[empty].agatston == 0 and result.arteries[empty].lesion_count == 0
    assert metrics.agatston_score(image, mask, spacing) == result.agatston  # evaluate's column: same function


def test_bone_the_mask_touches_is_listed_not_scored():
    image, mask, arteries = constructed_case()
    result = calcium_score(image, mask, (3.0, 0.5, 0.25), arteries)
    # Within 3 mm of the mask's row 14 (columns 10-40): row 14 to column 52, rows 15 and 16 (0.5, 1 mm away) to 51.
    assert [(e.slice, e.area_mm2, e.peak_hu) for e in result.excluded] == [(2, 157 * 0.125, 800.0)]
    assert result.excluded[0].outside_fraction == pytest.approx(227 / 384, rel=1e-12)
    assert all(les.slice != 2 for les in result.lesions)
    weights, excluded = lesion_maps(image, mask, (3.0, 0.5, 0.25))
    assert np.array_equal(weights, lesion_weight_map(image, mask, (3.0, 0.5, 0.25)))
    assert weights.dtype == np.uint8 and np.count_nonzero(weights) == 32 + 8 + 17 + 14 + 8 + 16
    assert weights[0, 15, 20] == 4 and weights[4, 13, 52] == 3 and weights[4, 13, 53] == 0 and weights[1, 15, 20] == 0
    assert np.count_nonzero(excluded) == 157 and excluded[2, 14, 52] and excluded[2, 15, 51] and not excluded[2, 15, 52]
    # The same bar held within the margin (a short one) is a lesion: the rule is about structures running out of it.
    image[2, 14:17, 53:] = 40.0
    short = calcium_score(image, mask, (3.0, 0.5, 0.25), arteries)
    assert short.excluded == () and (2, 157 * 0.125) in [(les.slice, les.area_mm2) for les in short.lesions]


def test_without_arteries_every_lesion_is_other_and_cac_drs_has_no_vessel_count():
    image, mask, _ = constructed_case()
    result = calcium_score(image, mask, (3.0, 0.5, 0.25))
    assert {les.artery for les in result.lesions} == {"other"}
    assert result.arteries["other"].agatston == result.agatston and result.arteries["other"].lesion_count == 6
    assert result.cac_drs == "A1"


def test_anisotropic_pixels_at_the_area_threshold():
    """The same 8-pixel lesion is 1 mm² with 0.5 × 0.25 mm pixels and 0.875 mm² with 0.4375 × 0.25 mm pixels."""
    image = np.zeros((1, 6, 12))
    image[0, 2, 1:9] = 500.0
    assert calcium_score(image, image > 0, (3.0, 0.5, 0.25)).agatston == 4.0
    assert calcium_score(image, image > 0, (3.0, 0.4375, 0.25)).lesion_count == 0
    # Transposed pixels: the area uses the product, so swapping y and x spacing gives the same score.
    assert calcium_score(image, image > 0, (3.0, 0.25, 0.5)).agatston == 4.0


def test_empty_and_calcium_free_masks():
    image, mask, _ = constructed_case()
    far = np.zeros_like(mask)
    far[:, 36:40, 100:120] = True  # a mask in soft tissue, more than 3 mm from every bright pixel but the bars
    far[2:4] = False
    for empty in (np.zeros_like(mask), far):
        result = calcium_score(image, empty, (3.0, 0.5, 0.25))
        assert (result.agatston, result.volume_mm3, result.lesion_count) == (0.0, 0.0, 0)
        assert (result.risk_category, result.cac_drs, result.lesions, result.excluded) == ("0", "A0", (), ())
    assert set(calcium_score(image, mask, (3.0, 0.5, 0.25)).to_dict()) == {
        "agatston", "volume_mm3", "lesion_count", "risk_category", "cac_drs", "arteries", "lesions", "excluded",
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


@pytest.mark.parametrize(
    "agatston, vessels, expected",
    [(0.0, 0, "A0"), (0.25, 1, "A1/N1"), (99.75, 2, "A1/N2"), (100.0, 2, "A2/N2"), (299.75, 3, "A2/N3"),
     (300.0, 4, "A3/N4"), (1500.0, None, "A3")],
)  # fmt: skip
def test_cac_drs(agatston, vessels, expected):
    assert cac_drs(agatston, vessels) == expected


def _disc(shape, centre, radius):
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize("structure", ["sternum", "vertebra", "aortic_wall"])
def test_non_coronary_structures_the_mask_strays_onto_stay_out(structure):
    """0.5 mm pixels, 60 × 60 mm slice. A coronary lumen (rows 58-61) carries a real wall lesion at its left end and
    strays, at its right end, onto a bright structure that runs far beyond the 3 mm margin: only the lesion scores."""
    image = np.full((1, 120, 120), 40.0)
    mask = np.zeros(image.shape, bool)
    mask[0, 58:62, 10:70] = True
    image[0, 60:64, 14:18] = 450.0  # 16 px = 4 mm², weight 4, half in the wall
    if structure == "sternum":  # a 5 mm thick plate, 50 mm wide, the lumen's end lying on its edge
        image[0, 61:71, 60:120] = 600.0
    elif structure == "vertebra":  # a 30 mm body with a 1.5 mm cortex; the lumen ends on its rim
        ring = _disc((120, 120), (90, 75), 30) & ~_disc((120, 120), (90, 75), 27)
        image[0][ring] = 700.0
        mask[0, 58:62, 70:76] = True
    else:  # a calcified arc of the aortic wall (radius 15 mm, 1 mm thick, a half circle) the lumen touches
        arc = _disc((120, 120), (90, 70), 30) & ~_disc((120, 120), (90, 70), 28)
        image[0][arc & (np.arange(120)[:, None] < 90)] = 400.0
        mask[0, 58:62, 70:72] = True
    result = calcium_score(image, mask, (3.0, 0.5, 0.5))
    assert [(les.area_mm2, les.weight) for les in result.lesions] == [(4.0, 4)]
    assert result.agatston == 16.0
    assert len(result.excluded) == 1 and result.excluded[0].outside_fraction > 0.25
