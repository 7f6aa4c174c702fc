"""The calcium study's statistics against independent references, and its non-coronary score on a constructed scan."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from syncas_jax.metrics.calcium import calcium_score
from syncas_jax.study.calcium import bland_altman, icc_2_1, score_outside, weighted_kappa

# Shrout & Fleiss (1979), Table 2: six targets rated by four judges; their ICC(2,1) is 0.29 (ICC(3,1) 0.71).
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_2_1_is_shrout_and_fleiss_table():
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(0.290, abs=0.005)


def test_icc_2_1_is_one_for_identical_raters_and_falls_with_a_bias():
    scores = np.array([0.0, 12.0, 150.0, 610.0, 45.0])
    assert icc_2_1(np.stack([scores, scores], 1)) == pytest.approx(1.0)
    assert icc_2_1(np.stack([scores, scores + 100.0], 1)) < icc_2_1(np.stack([scores, scores + 10.0], 1)) < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_linear_weighted_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 30)
    b = np.clip(a + rng.integers(-1, 2, 30), 0, 3)
    assert weighted_kappa(a, b, 4) == pytest.approx(cohen_kappa_score(a, b, weights="linear", labels=[0, 1, 2, 3]))


def test_kappa_of_perfect_agreement_and_of_a_single_category():
    assert weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == 1.0
    assert np.isnan(weighted_kappa([2, 2], [2, 2], 4))


def test_bland_altman_by_hand():
    bias, low, high = bland_altman([10.0, 20.0, 30.0], [12.0, 20.0, 34.0])  # differences 2, 0, 4: sd 2
    assert (bias, low, high) == pytest.approx((2.0, 2.0 - 3.92, 2.0 + 3.92))


def test_score_outside_is_the_score_of_components_off_the_lesion_map():
    """Two lesions through the mask; the lesion map holds only the first, so the second's score is 'outside'."""
    spacing = (3.0, 0.5, 0.5)
    image = np.full((2, 30, 30), 40.0)
    mask = np.zeros(image.shape, bool)
    mask[:, 10:12, 5:25] = True
    image[0, 10:14, 6:10] = 450.0  # coronary: on the lesion map
    image[1, 10:12, 18:22] = 250.0  # stray: 8 px = 2 mm², weight 2 → 4
    lesions = np.zeros(image.shape, np.uint8)
    lesions[0, 11:13, 7:9] = 2
    total = calcium_score(image, mask, spacing).agatston
    assert score_outside(image, mask, lesions, spacing) == 4.0
    assert total == 16 * 0.25 * 4 + 4.0
    assert score_outside(image, mask, (image > 130).astype(np.uint8), spacing) == 0.0


def test_excluded_score_is_what_the_left_out_bar_would_have_added():
    from syncas_jax.study.calcium import excluded_score
    from tests.metrics.test_calcium import constructed_case

    image, mask, _ = constructed_case()
    score = calcium_score(image, mask, (3.0, 0.5, 0.25))
    assert excluded_score(score, (3.0, 0.5, 0.25)) == 157 * 0.125 * 4  # the bar: 157 px in the margin, 800 HU
