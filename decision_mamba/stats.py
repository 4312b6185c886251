"""Aggregate statistics of a table with confidence intervals (Agarwal et al. 2021, "Deep
reinforcement learning at the edge of the statistical precipice", and its `rliable` package).

Over a table's datasets (the tasks) and seeds (the runs), per model and protocol, for the
last and the best evaluation of each run:

    IQM          the interquartile mean of all runs' scores pooled over the datasets (the mean
                 of the middle 50%; rliable.metrics.aggregate_iqm)
    mean         their mean (rliable.metrics.aggregate_mean)
    interval     the 95% percentile interval of a stratified bootstrap: each replicate redraws,
                 with replacement, the seeds of every dataset separately (its own number of
                 them), so that every dataset keeps its weight
    profile      the fraction of runs whose score exceeds tau, for tau on a grid (a performance
                 profile), with its bootstrap band
    P(X > Y)     the probability that a run of model X on a dataset scores higher than a run of
                 Y on the same dataset, averaged over the datasets both have run (the
                 Mann-Whitney U statistic over m * n, ties counting one half;
                 rliable.metrics.probability_of_improvement), with its bootstrap interval

The bootstrap draws from a numpy Generator seeded with BOOTSTRAP_SEED, so the files are the
same bits on every run of the aggregator. A group with fewer than MIN_SEEDS seeds on some
dataset shows its point estimates only, and says why.

The point estimates are rliable's own functions. The bootstrap is written here, because
rliable's (rliable.library) cannot be used: it imports `arch`, whose last version rliable
1.2.0 accepts (arch 7.2) does not import under pandas 3, and it draws its indices from numpy's
global random state (np.random.choice), which a library must not reseed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

from decision_mamba.errors import UserError

BOOTSTRAP_SEED = 0
BOOTSTRAP_REPS = 10_000  # rliable's own examples use 2,000 to 50,000
CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer seeds per dataset give intervals that mean nothing

# One group's scores: one array of per-seed scores per dataset (the datasets may have different
# numbers of seeds; rliable's StratifiedIndependentBootstrap takes such a list too).
Scores = Sequence[np.ndarray]


def _rliable_metrics():
    """rliable.metrics, imported when first used: rliable is in the optional `tables` extra."""
    try:
        from rliable import metrics
    except ImportError:
        raise UserError("the table statistics need rliable, in the `tables` extra: pip install -e \".[tables]\" "
                        "(make install includes it)") from None
    return metrics


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: scipy's 25%-trimmed mean, as rliable.metrics.aggregate_iqm computes it
    (over all the values, or along `axis` for a batch of bootstrap replicates)."""
    return scipy.stats.trim_mean(scores, proportiontocut=0.25, axis=axis)


def pooled(scores: Scores) -> np.ndarray:
    return np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores])


def _resample(scores: Scores, rng: np.random.Generator, reps: int) -> np.ndarray:
    """(reps, total runs): each replicate redraws every dataset's runs from that dataset's own."""
    columns = []
    for task in scores:
        task = np.asarray(task, dtype=np.float64)
        columns.append(task[rng.integers(0, len(task), size=(reps, len(task)))])
    return np.concatenate(columns, axis=1)


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
    return float(low), float(high)


@dataclass
class Estimate:
    value: float
    low: float | None = None  # None: too few seeds for an interval
    high: float | None = None


def aggregate_estimates(scores: Scores, *, seed: int = BOOTSTRAP_SEED, reps: int = BOOTSTRAP_REPS,
                        min_seeds: int = MIN_SEEDS) -> dict[str, Estimate]:
    """{"iqm": ..., "mean": ...} of the pooled scores, with stratified-bootstrap intervals
    when every dataset has at least `min_seeds` seeds."""
    metrics = _rliable_metrics()
    matrix = pooled(scores)[:, None]  # rliable's functions take (runs, tasks); pooled, it is one column
    point = {"iqm": float(metrics.aggregate_iqm(matrix)), "mean": float(metrics.aggregate_mean(matrix))}
    if min(len(s) for s in scores) < min_seeds:
        return {name: Estimate(value) for name, value in point.items()}
    replicates = _resample(scores, np.random.default_rng(seed), reps)
    intervals = {"iqm": _interval(iqm(replicates, axis=1)), "mean": _interval(replicates.mean(axis=1))}
    return {name: Estimate(point[name], *intervals[name]) for name in point}


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 of the last two axes' values: (..., m) and (..., n) -> (...)."""
    diff = x[..., :, None] - y[..., None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))


def probability_of_improvement(x: Scores, y: Scores, *, seed: int = BOOTSTRAP_SEED, reps: int = BOOTSTRAP_REPS,
                               min_seeds: int = MIN_SEEDS) -> Estimate:
    """P(a run of X beats a run of Y on the same dataset), averaged over the datasets (paired:
    x[i] and y[i] are the same dataset's seeds), with a stratified bootstrap interval that
    redraws both models' seeds of every dataset, when each has at least `min_seeds`."""
    if len(x) != len(y) or not len(x):
        raise ValueError("probability_of_improvement needs the same datasets, at least one, for both models")
    metrics = _rliable_metrics()
    per_task = [metrics.probability_of_improvement(np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[:, None])
                for a, b in zip(x, y)]
    value = float(np.mean(per_task))
    if min(len(s) for s in (*x, *y)) < min_seeds:
        return Estimate(value)
    rng = np.random.default_rng(seed)
    replicates = np.zeros(reps)
    for a, b in zip(x, y):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        replicates += _improvement(a[rng.integers(0, len(a), (reps, len(a)))], b[rng.integers(0, len(b), (reps, len(b)))])
    return Estimate(value, *_interval(replicates / len(x)))


def performance_profile(scores: Scores, taus: np.ndarray, *, seed: int = BOOTSTRAP_SEED, reps: int = 2_000,
                        min_seeds: int = MIN_SEEDS) -> tuple[np.ndarray, np.ndarray | None]:
    """The fraction of runs with a score above each tau (rliable's score distribution), and its
    (2, len(taus)) bootstrap band, None with fewer than `min_seeds` seeds on some dataset."""
    taus = np.asarray(taus, dtype=np.float64)
    profile = (pooled(scores)[:, None] > taus).mean(axis=0)
    if min(len(s) for s in scores) < min_seeds:
        return profile, None
    replicates = _resample(scores, np.random.default_rng(seed), reps)
    fractions = (replicates[:, :, None] > taus).mean(axis=1)  # (reps, taus)
    tail = 100 * (1 - CONFIDENCE) / 2
    return profile, np.percentile(fractions, [tail, 100 - tail], axis=0)
