"""decision_mamba/stats.py against hand-computed values, rliable's metrics and scipy's bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from rliable import metrics

from decision_mamba import stats


def test_iqm_and_mean_of_a_small_run_set_by_hand():
    # Two datasets, four seeds each; pooled and sorted: 0 1 2 3 4 10 20 100.
    # IQM: the middle half, 2 3 4 10 -> 19 / 4; mean: 140 / 8.
    scores = [np.array([0.0, 10.0, 20.0, 100.0]), np.array([1.0, 2.0, 3.0, 4.0])]
    found = stats.aggregate_estimates(scores, reps=500)
    assert found["iqm"].value == pytest.approx(4.75) and found["mean"].value == pytest.approx(17.5)
    assert found["iqm"].low <= 4.75 <= found["iqm"].high and found["mean"].low <= 17.5 <= found["mean"].high


def test_probability_of_improvement_of_two_known_score_sets_by_hand():
    # Dataset 1: X = 3 5 7, Y = 4 4 8: 3 beats none, 5 and 7 beat both 4s -> 4 of 9 pairs.
    # Dataset 2: X = 1 2, Y = 2: 1 loses, 2 ties (one half) -> 0.5 of 2 pairs.
    x = [np.array([3.0, 5.0, 7.0]), np.array([1.0, 2.0])]
    y = [np.array([4.0, 4.0, 8.0]), np.array([2.0])]
    assert stats.probability_of_improvement(x, y).value == pytest.approx((4 / 9 + 1 / 4) / 2)
    assert stats.probability_of_improvement(y, x).value == pytest.approx((5 / 9 + 3 / 4) / 2)  # the complement


def test_the_bootstrap_statistics_agree_with_rliable_on_the_same_data():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(50, 10, size=(5, 9)))  # rounded: ties, as scores of the same return have
    y = np.round(rng.normal(48, 10, size=(7, 9)))
    assert stats.iqm(x.ravel()) == pytest.approx(metrics.aggregate_iqm(x))
    ours = stats.probability_of_improvement(list(x.T), list(y.T))
    assert ours.value == pytest.approx(metrics.probability_of_improvement(x, y))
    # the vectorized statistic the bootstrap uses, on one replicate: the data itself
    per_task = [stats._improvement(a, b) for a, b in zip(x.T, y.T)]
    assert np.mean(per_task) == pytest.approx(metrics.probability_of_improvement(x, y))
    # a batch of replicates of IQMs at once equals rliable's IQM of each
    batch = rng.normal(size=(4, 12))
    assert stats.iqm(batch, axis=1) == pytest.approx([metrics.aggregate_iqm(row) for row in batch])


def test_the_interval_of_one_dataset_matches_scipys_percentile_bootstrap():
    scores = np.random.default_rng(0).normal(40.0, 8.0, size=30)
    ours = stats.aggregate_estimates([scores], reps=20_000)["mean"]
    scipys = scipy.stats.bootstrap((scores,), np.mean, n_resamples=20_000, method="percentile",
                                   random_state=np.random.default_rng(1)).confidence_interval
    half_width = (scipys.high - scipys.low) / 2
    assert abs(ours.low - scipys.low) < 0.05 * half_width and abs(ours.high - scipys.high) < 0.05 * half_width


def test_the_bootstrap_is_stratified_a_dataset_without_spread_adds_none():
    # Every seed of dataset 1 scores 10, so only dataset 2's draws move the mean: the
    # interval of the pooled mean is dataset 2's interval, halved (both have 4 of 8 runs).
    constant, spread = np.full(4, 10.0), np.array([0.0, 20.0, 40.0, 60.0])
    both = stats.aggregate_estimates([constant, spread], reps=4000, seed=5)["mean"]
    alone = stats.aggregate_estimates([spread], reps=4000, seed=5)["mean"]
    assert both.low == pytest.approx((10 + alone.low) / 2) and both.high == pytest.approx((10 + alone.high) / 2)


def test_fewer_than_three_seeds_give_no_interval_and_the_same_seed_the_same_bits():
    two = [np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])]
    found = stats.aggregate_estimates(two)
    assert found["mean"].low is None and found["mean"].value == pytest.approx(3.0)
    assert stats.probability_of_improvement(two, two).low is None
    three = [np.array([1.0, 2.0, 7.0]), np.array([3.0, 4.0, 5.0])]
    first, again = stats.aggregate_estimates(three), stats.aggregate_estimates(three)
    assert (first["iqm"].low, first["iqm"].high) == (again["iqm"].low, again["iqm"].high)
    assert first["iqm"].low < first["iqm"].high


def test_performance_profile_by_hand():
    profile, band = stats.performance_profile([np.array([0.0, 10.0]), np.array([20.0, 30.0])], np.array([5.0, 25.0]))
    assert profile.tolist() == [0.75, 0.25] and band is None  # two seeds per dataset: no band
    profile, band = stats.performance_profile([np.array([0.0, 10.0, 20.0])], np.array([-1.0, 15.0, 99.0]))
    assert profile == pytest.approx([1.0, 1 / 3, 0.0])
    assert band[:, 0].tolist() == [1.0, 1.0] and band[:, 2].tolist() == [0.0, 0.0]  # no draw changes these
    assert band[0, 1] < 1 / 3 < band[1, 1]
