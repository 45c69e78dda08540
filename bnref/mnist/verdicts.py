"""The rules that turn per-seed results into the book's verdicts, written once for every chapter.

Every comparison in the book is paired: the two things compared ran with the same seed (same data, initial weights
and batches), so each seed gives one difference. :func:`paired_verdict` says whether those differences show a
consistent sign, :func:`compare_paired` puts the same rule into words for two lists of per-seed values,
:func:`paired_summary` adds the mean difference's 95 % confidence interval, :func:`null_rate` and
:func:`aa_rate` give the rule's false-positive rate (under a Gaussian null, and on an A/A experiment: one method
run under many seeds, compared with itself), and :func:`spread` / :func:`within_spread` summarise recorded
seeds and check a live value against them.

NumPy only; used by the MNIST experiment (:mod:`bnref.mnist.training`) and by every chapter's experiments in
:mod:`bnref.experiments`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = [
    "MIN_SEEDS",
    "CLOSE_SEEDS",
    "PairedSummary",
    "paired_verdict",
    "paired_summary",
    "compare_paired",
    "null_rate",
    "aa_rate",
    "spread",
    "within_spread",
]

#: The fewest seeds a verdict may rest on.
MIN_SEEDS = 3

#: The fewest seeds a *close* verdict may rest on: one whose mean difference is smaller than twice the
#: differences' sample standard deviation. With fewer, :func:`paired_verdict` gives no verdict.
CLOSE_SEEDS = 5

#: The 97.5 % quantile of Student's t distribution for 1 to 30 degrees of freedom (two-sided 95 % intervals),
#: to four decimals; ``tests/test_experiments.py`` checks it against ``scipy.stats.t.ppf``. Beyond 30 degrees of
#: freedom the normal quantile 1.96 is used (the t quantile is below 2.05 there).
T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.306,
    2.2622,
    2.2281,
    2.201,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.093,
    2.086,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)


def paired_verdict(differences: Sequence[float], *, min_seeds: int = MIN_SEEDS, close_seeds: int = CLOSE_SEEDS) -> int:
    """The rule that turns per-seed paired differences (e.g. with BN minus without, same seed) into a verdict.

    A difference counts only when it has the same sign for every seed *and* its mean lies more than
    two standard errors from zero (standard error = sample standard deviation / sqrt(n)). The first
    condition alone would accept a mean carried by one large seed among near-zeros; the second
    alone, with few seeds, a mean dragged by one outlier of either sign. A *close* difference, whose
    mean is smaller than twice the differences' standard deviation, needs :data:`CLOSE_SEEDS` (5) seeds:
    with fewer it gives no verdict. Under a normal null (no true difference) the first two conditions alone
    find a difference in about 18 % of comparisons of 3 seeds; the third brings that to about 7 %, and
    5 seeds to about 6 % (:func:`null_rate`; the claims chapter prints these rates and an A/A experiment's).

    Returns
    -------
    int
        +1 (consistently positive), -1 (consistently negative) or 0 (no consistent difference).

    Raises
    ------
    ValueError
        Fewer than ``min_seeds`` differences, not a 1-D sequence, or a non-finite difference.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) < min_seeds:
        raise ValueError(
            f"a verdict needs at least {min_seeds} paired differences (one per seed, >= {min_seeds} seeds) "
            f"in a 1-D sequence; got shape {d.shape}"
        )
    if not np.all(np.isfinite(d)):
        raise ValueError("paired differences must be finite")
    mean, sd = d.mean(), d.std(ddof=1)
    se = sd / np.sqrt(len(d))
    if len(d) < close_seeds and abs(mean) < 2 * sd:
        return 0
    if np.all(d > 0) and mean > 2 * se:
        return 1
    if np.all(d < 0) and -mean > 2 * se:
        return -1
    return 0


@dataclasses.dataclass(frozen=True)
class PairedSummary:
    """Per-seed paired differences summarised: their number, mean, the mean's two-sided 95 % confidence
    interval (Student's t with ``n - 1`` degrees of freedom) and :func:`paired_verdict`'s verdict."""

    n: int
    mean: float
    low: float
    high: float
    verdict: int

    def __str__(self) -> str:
        return f"{self.mean:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"


def paired_summary(differences: Sequence[float], *, min_seeds: int = MIN_SEEDS) -> PairedSummary:
    """The mean paired difference with its 95 % confidence interval and the verdict (:func:`paired_verdict`).

    The interval is ``mean +- t * sd / sqrt(n)``, ``t`` the 97.5 % quantile of Student's t with ``n - 1`` degrees
    of freedom (:data:`T975`): it assumes the seeds' differences are independent draws from one normal
    distribution, which a few seeds cannot confirm, so read it as the size of the uncertainty, not as an exact
    coverage. Raises ValueError as :func:`paired_verdict` does.
    """
    verdict = paired_verdict(differences, min_seeds=min_seeds)
    d = np.asarray(differences, dtype=np.float64)
    n, mean = len(d), float(d.mean())
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    half = t * float(d.std(ddof=1)) / np.sqrt(n)
    return PairedSummary(n=n, mean=mean, low=mean - half, high=mean + half, verdict=verdict)


def null_rate(n: int, *, trials: int = 200_000, seed: int = 0) -> float:
    """The fraction of ``trials`` comparisons with no true difference in which :func:`paired_verdict` of ``n``
    seeds finds one, for differences drawn independently from one normal distribution centred on zero.

    The rule depends only on the differences' signs and on the ratio of their mean to their standard
    deviation, so the scale of the normal distribution does not matter. A Monte Carlo estimate (its standard
    error is about ``sqrt(p (1 - p) / trials)``, below 0.001 for the default ``trials``); ``seed`` makes it
    the same on every machine.
    """
    if n < MIN_SEEDS:
        raise ValueError(f"the rule needs at least {MIN_SEEDS} seeds; got n={n}")
    d = np.random.default_rng(seed).standard_normal((trials, n))
    return float(np.mean(_verdicts(d) != 0))


def _verdicts(d: np.ndarray) -> np.ndarray:
    """:func:`paired_verdict` of each row of a 2-D array of finite differences (vectorised, same rule)."""
    n = d.shape[1]
    mean, sd = d.mean(axis=1), d.std(axis=1, ddof=1)
    se = sd / np.sqrt(n)
    decided = ~((n < CLOSE_SEEDS) & (np.abs(mean) < 2 * sd))
    up = np.all(d > 0, axis=1) & (mean > 2 * se)
    down = np.all(d < 0, axis=1) & (-mean > 2 * se)
    return np.where(decided & up, 1, np.where(decided & down, -1, 0))


def aa_rate(values: Sequence[float], n: int, *, draws: int = 20_000, seed: int = 0) -> float:
    """The rule's false-positive rate on an A/A experiment: the fraction of comparisons of one method with itself
    in which :func:`paired_verdict` finds a difference.

    ``values`` holds one result (say, test accuracy) per seed of a single method, each seed its own data order and
    initial weights. Each of ``draws`` comparisons takes ``2 n`` distinct seeds at random, pairs the first ``n``
    with the last ``n``, and applies the rule to the ``n`` differences. The draws share seeds, so they are not
    independent; the estimate's uncertainty is that of the ``len(values)`` runs, not of ``draws``.

    Raises
    ------
    ValueError
        Fewer than ``2 n`` values, non-finite values, or ``n`` below :data:`MIN_SEEDS`.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2 * n:
        raise ValueError(f"an A/A comparison of n={n} seeds per arm needs >= {2 * n} runs; got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("A/A values must be finite")
    if n < MIN_SEEDS:
        raise ValueError(f"the rule needs at least {MIN_SEEDS} seeds; got n={n}")
    rng = np.random.default_rng(seed)
    pick = np.argsort(rng.random((draws, len(v))), axis=1)[:, : 2 * n]  # 2n distinct seeds per draw
    return float(np.mean(_verdicts(v[pick[:, :n]] - v[pick[:, n:]]) != 0))


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    more: str,
    less: str,
    same: str = "no measurable difference",
    undecided: str = "undecided",
) -> str:
    """:func:`paired_verdict` of ``a - b`` in words: ``more`` (+1), ``less`` (-1), ``same`` (0), or ``undecided``
    when the rule declines only because the difference is close and there are fewer than :data:`CLOSE_SEEDS`
    seeds (the same sign on every seed and a mean beyond two standard errors, but within two standard deviations).

    ``a[i]`` and ``b[i]`` come from the same seed (same data, initial weights and batches). Needs at least
    :data:`MIN_SEEDS` seeds.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    verdict = paired_verdict(d)
    if verdict == 0 and len(d) < CLOSE_SEEDS and paired_verdict(d, min_seeds=MIN_SEEDS, close_seeds=0) != 0:
        return undecided
    return {1: more, -1: less, 0: same}[verdict]


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"spread needs a 1-D sequence of >= 2 values; got shape {v.shape}")
    return float(v.mean()), float(v.std(ddof=1))


def within_spread(value: float, recorded: Sequence[float], k: float = 3.0) -> bool:
    """Whether a live value lies within ``k`` sample standard deviations of the recorded seeds' mean.

    The chapters' live runs repeat a recorded seed; on another CPU its numbers differ from the record
    by kernel rounding, which training can amplify up to a seed-to-seed difference. A recorded seed
    lies at most ``(n - 1) / sqrt(n)`` standard deviations from the mean of ``n`` seeds (1.79 for
    ``n = 5``), so ``k = 3`` leaves more than one standard deviation for that, while a change of the
    code that moves results by several seed spreads fails the check. Where the CPU's kernels move a
    result more than the seed does (in the claims chapter, BN trained on batches of two),
    the seeds' spread is no yardstick, and the chapter checks the verdict's margin instead.
    """
    mean, sd = spread(recorded)
    if not np.isfinite(value):
        return False
    return bool(abs(value - mean) <= k * sd)
