"""Geometric artery labelling (syncas_jax.calcium.arteries) on constructed coronary trees with known arteries.

Canonical (Z, Y, X) arrays: slices inferior → superior, rows anterior → posterior, columns patient right → left.
Each vessel is a tube of radius 1.5 mm around a polyline; the answer is the vessel each voxel was drawn for.
Near the bifurcation the split is a matter of millimetres, so the exact check leaves out voxels within 4 mm of it.
"""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from syncas_jax.calcium import arteries
from syncas_jax.calcium.arteries import artery_accuracy, label_arteries
from syncas_jax.common.arteries import ARTERY_IDS, OTHER_ID

SPACING = (1.0, 0.5, 0.5)
SHAPE = (40, 100, 120)
RADIUS_MM = 1.5
BIFURCATION = (30.0, 40.0, 72.0)  # voxel (z, y, x)


def _tube(points: list[tuple[float, float, float]], radius_mm: float = RADIUS_MM) -> np.ndarray:
    """bool SHAPE: voxels within `radius_mm` of the polyline through `points` (voxel coordinates)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1) * np.asarray(SPACING)
    inside = np.zeros(SHAPE, bool)
    for a, b in zip(points[:-1], points[1:]):
        a, b = np.asarray(a) * SPACING, np.asarray(b) * SPACING
        t = np.clip(((grid - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        inside |= np.linalg.norm(grid - (a + t[..., None] * (b - a)), axis=-1) <= radius_mm
    return inside


def _coronaries(lcx_climbs: bool) -> np.ndarray:
    """uint8 SHAPE artery map: LM from its ostium to the bifurcation, LAD anterior and down, LCX posterior, RCA."""
    lcx = [BIFURCATION, (36, 60, 80), (20, 80, 90), (8, 75, 100)] if lcx_climbs else [BIFURCATION, (20, 75, 90)]
    vessels = {
        "LM": [(33, 42, 58), BIFURCATION],
        "LAD": [BIFURCATION, (24, 15, 85), (4, 10, 105)],
        "LCX": lcx,
        "RCA": [(32, 45, 45), (25, 40, 25), (6, 55, 12)],
    }
    arteries = np.zeros(SHAPE, np.uint8)
    for name in ("LAD", "LCX", "RCA", "LM"):  # the LM last: the trunk owns the bifurcation
        arteries[_tube(vessels[name])] = ARTERY_IDS[name]
    return arteries


def _away_from_bifurcation() -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
    return np.linalg.norm((grid - np.asarray(BIFURCATION)) * SPACING, axis=-1) > 4.0


@pytest.mark.parametrize("lcx_climbs", [False, True], ids=["plain", "lcx_above_the_lm"])
def test_each_vessel_gets_its_artery(lcx_climbs):
    truth = _coronaries(lcx_climbs)
    predicted = label_arteries(truth > 0, SPACING)
    assert ((predicted > 0) == (truth > 0)).all()
    away = _away_from_bifurcation() & (truth > 0)
    np.testing.assert_array_equal(predicted[away], truth[away])
    for name, artery in ARTERY_IDS.items():
        assert (predicted == artery).any(), name


def test_a_mirrored_tree_swaps_nothing():
    """Flipping rows (anterior ↔ posterior) makes the LCX the anterior arm: labels follow the geometry, not the ids."""
    truth = _coronaries(lcx_climbs=False)[:, ::-1]
    predicted = label_arteries(truth > 0, SPACING)
    lad, lcx = ARTERY_IDS["LAD"], ARTERY_IDS["LCX"]
    away = _away_from_bifurcation()[:, ::-1] & np.isin(truth, (lad, lcx))
    swapped = np.where(truth == lad, lcx, lad)
    np.testing.assert_array_equal(predicted[away], swapped[away])


def test_pieces_take_the_nearest_artery_or_other():
    truth = _coronaries(lcx_climbs=False)
    mask = truth > 0
    gap = np.zeros(SHAPE, bool)
    gap[12:14, 12:14, 100:102] = True  # 2.5 mm past the LAD's end: a piece of it
    far = np.zeros(SHAPE, bool)
    far[2:4, 90:92, 2:4] = True  # far from every vessel
    predicted = label_arteries(mask | gap | far, SPACING)
    assert (predicted[gap] == ARTERY_IDS["LAD"]).all()
    assert (predicted[far] == OTHER_ID).all()


def test_accuracy_counts_the_voxels_labelled_in_both():
    truth = np.array([1, 2, 3, 4, 0, 2], np.uint8)
    predicted = np.array([1, 2, 2, 4, 3, 0], np.uint8)
    assert artery_accuracy(predicted, truth) == 3 / 4
    assert np.isnan(artery_accuracy(np.zeros(3), np.zeros(3)))
    assert (label_arteries(np.zeros(SHAPE, bool), SPACING) == 0).all()


def test_the_wider_of_the_best_paired_tips_is_the_ostium():
    """A predicted mask that lost the proximal RCA: the RCA starts low, by the distal LCX, so pairing tips alone
    takes the LCX's end for the left ostium; the LM (2 mm radius against 1.5 mm) is the wider tip and wins."""
    vessels = {
        "LM": [(33, 42, 58), BIFURCATION], "LAD": [BIFURCATION, (24, 15, 85), (4, 10, 105)],
        "LCX": [BIFURCATION, (20, 75, 90)], "RCA": [(14, 78, 60), (6, 55, 12)],
    }  # fmt: skip
    truth = np.zeros(SHAPE, np.uint8)
    for name in ("LAD", "LCX", "RCA", "LM"):
        truth[_tube(vessels[name], 2.0 if name == "LM" else RADIUS_MM)] = ARTERY_IDS[name]
    components = cc3d.connected_components(truth > 0, connectivity=26)
    left, right = (int(components[tuple(np.argwhere(truth == ARTERY_IDS[n])[0])]) for n in ("LM", "RCA"))
    box, tree = arteries._component_box(components, left)
    paired_first = arteries._left_ostia(tree, box, components == right, SPACING)[0] + [b.start for b in box]
    assert truth[tuple(paired_first)] == ARTERY_IDS["LCX"]  # the condition under test
    predicted = label_arteries(truth > 0, SPACING)
    away = _away_from_bifurcation() & (truth > 0)
    np.testing.assert_array_equal(predicted[away], truth[away])
