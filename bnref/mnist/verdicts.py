"""The rules that turn per-seed results into the book's verdicts, written once for every chapter.

Every comparison in the book is paired: the two things compared ran with the same seed (same data, initial weights
and batches), so each seed gives one difference. :func:`paired_verdict` says whether those differences show a
consistent sign, :func:`compare_paired` puts the same rule into words for two lists of per-seed values, and
:func:`spread` / :func:`within_spread` summarise recorded seeds and check a live value against them.

NumPy only; used by the MNIST experiment (:mod:`bnref.mnist.training`) and by every chapter's experiments in
:mod:`bnref.experiments`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_SEEDS", "paired_verdict", "compare_paired", "spread", "within_spread"]

#: The fewest seeds a verdict may rest on.
MIN_SEEDS = 3


def paired_verdict(differences: Sequence[float], *, min_seeds: int = MIN_SEEDS) -> int:
    """The rule that turns per-seed paired differences (e.g. with BN minus without, same seed) into a verdict.

    A difference counts only when it has the same sign for every seed *and* its mean lies more than
    two standard errors from zero (standard error = sample standard deviation / sqrt(n)). The first
    condition alone would accept a mean carried by one large seed among near-zeros; the second
    alone, with few seeds, a mean dragged by one outlier of either sign.

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
    mean, se = d.mean(), d.std(ddof=1) / np.sqrt(len(d))
    if np.all(d > 0) and mean > 2 * se:
        return 1
    if np.all(d < 0) and -mean > 2 * se:
        return -1
    return 0


def compare_paired(
    a: Sequence[float], b: Sequence[float], more: str, less: str, same: str = "no measurable difference"
) -> str:
    """:func:`paired_verdict` of ``a - b`` in words: ``more`` (+1), ``less`` (-1) or ``same`` (0).

    ``a[i]`` and ``b[i]`` come from the same seed (same data, initial weights and batches). Needs at least
    :data:`MIN_SEEDS` seeds.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return {1: more, -1: less, 0: same}[paired_verdict(d)]


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
