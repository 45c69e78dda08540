"""The float64 truth and the comparison: the NumPy reference run on a case's batches, the derived error bound of
every quantity at every step, and the worst error/bound ratio of an implementation's trace (``Diff``).

The bounds are the error model of ``bnref.testing`` (``training_bounds``, ``running_mean_bound``,
``running_var_bound``, ``inference_bound``), derived in the book's appendix "How the checks are bounded"
(``ch-bounds``), applied to every step. The running statistics follow the case's convention, or any
``RunningRule`` (``bnref.check.rules``) with given initial values, for the rules a ``Convention`` cannot state.

NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnref import relative_error
from bnref.check.cases import Batches, Case, NotApplicable, make_batches, new_value_weight_rule
from bnref.check.rules import RunningRule
from bnref.conventions import Convention
from bnref.reference import (
    RunningStats,
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_inference,
    running_update,
)
from bnref.testing import (
    BOUND_C,
    channel_summaries,
    compute_dtype,
    inference_bound,
    machine_eps,
    running_mean_bound,
    running_var_bound,
    training_bounds,
)

__all__ = [
    "QUANTITIES",
    "Trace",
    "empty_trace",
    "reference_run",
    "reference_trace",
    "bounds",
    "Diff",
    "compare",
    "compare_trace",
]

#: The quantities compared, in table order.
QUANTITIES: tuple[str, ...] = ("y", "dx", "dgamma", "dbeta", "running_mean", "running_var", "y_inference")

#: What one implementation produced: for each quantity of ``QUANTITIES`` one float64 array per training step
#: (``y_inference``: one array, after the last step, or none in mode "train").
Trace = dict[str, list[np.ndarray]]


def empty_trace() -> Trace:
    return {q: [] for q in QUANTITIES}


class _RuleStats:
    """Running statistics under a ``RunningRule`` from given initial values (``RunningStats`` for a rule)."""

    def __init__(self, channels: int, conv: Convention, rule: RunningRule, init: tuple[float, float], dtype) -> None:
        self.unbiased, self.rule, self.step = conv.running_var == "unbiased", rule, 0
        self.mean = np.full(channels, init[0], dtype=dtype)
        self.var = np.full(channels, init[1], dtype=dtype)

    def update(self, cache) -> None:
        self.step += 1
        w = self.rule.new_value_weight(self.step)
        fed = np.asarray(cache.var) * (cache.m / (cache.m - 1)) if self.unbiased else cache.var
        # a first weight of 1 replaces the initial value, whatever it is (NaN included)
        mean, var = (self.mean, self.var) if w < 1 else (np.zeros_like(self.mean), np.zeros_like(self.var))
        self.mean = running_update(mean, cache.mean, w).astype(self.mean.dtype, copy=False)
        self.var = running_update(var, fed, w).astype(self.var.dtype, copy=False)


def reference_run(
    case: Case,
    conv: Convention,
    data: Batches,
    dtype: str,
    rule: RunningRule | None = None,
    init: tuple[float, float] | None = None,
) -> tuple[Trace, list]:
    """The NumPy reference in ``dtype`` (float64: the truth) and its caches.

    The running statistics follow ``conv`` (``RunningStats``), or ``rule`` from ``init`` (mean, var; default the
    convention's) where a rule is given; the variance fed is ``conv``'s (biased or unbiased) either way.
    """
    if dtype == "bfloat16":
        raise NotApplicable("NumPy has no bfloat16")
    pdtype = compute_dtype(dtype)
    gamma, beta = data.gamma.astype(pdtype), data.beta.astype(pdtype)
    if rule is None:
        stats = RunningStats(case.channels, conv, dtype=np.dtype(pdtype))
    else:
        start = init if init is not None else (conv.init_mean, conv.init_var)
        stats = _RuleStats(case.channels, conv, rule, start, np.dtype(pdtype))
    trace, caches = empty_trace(), []
    for x, dy in zip(data.xs, data.dys, strict=False):
        y, cache = batch_norm_forward(x.astype(dtype), gamma, beta, conv.eps, case.axis)
        dx, dgamma, dbeta = batch_norm_backward(dy.astype(dtype), cache)
        stats.update(cache)
        for q, v in zip(QUANTITIES, (y, dx.astype(dtype), dgamma, dbeta, stats.mean, stats.var), strict=False):
            trace[q].append(np.asarray(v, np.float64))
        caches.append(cache)
    if case.mode == "train+inference":
        y_inf = batch_norm_inference(
            data.x_inference.astype(dtype), gamma, beta, stats.mean, stats.var, conv.eps, case.axis
        )
        trace["y_inference"].append(np.asarray(y_inf, np.float64))
    return trace, caches


def reference_trace(
    case: Case, convention: Convention, dtype: str = "float64", batches: Batches | None = None
) -> Trace:
    """The NumPy reference run on the batches of ``case`` under ``convention``, computed in ``dtype``.

    In float64 this is the truth every implementation is compared with. ``batches`` defaults to
    ``make_batches(case)``. Raises ``NotApplicable`` for bfloat16 (NumPy has no such type).
    """
    return reference_run(case, convention, batches if batches is not None else make_batches(case), dtype)[0]


def channels_last(a: np.ndarray, case: Case) -> np.ndarray:
    """``a`` of ``case.shape`` as a 2-D (m, C) array, one column per channel."""
    return np.moveaxis(np.asarray(a), case.channel_axis, -1).reshape(-1, case.channels)


def _debiasing(rule: RunningRule | None, k: int, value: np.ndarray, dtype: str) -> np.ndarray:
    """The rounding of reading a zero-debiased average, ``h_k / (1 - d^k)``, beyond that of the update.

    ``d^k`` comes from a power or ``k`` products in the compute precision, a few roundings of ``d^k``, and ``1 -
    d^k`` is formed exactly (Sterbenz) or with one more rounding: its relative error is up to about ``C eps_c d^k /
    (1 - d^k)`` (``C`` roundings allowed), which the read value inherits (``bnref.check.rules``; 0 at k = 1, where
    ``d^1 = d`` is exact). For d = 0.99 it is 49 ``C eps_c`` at the second step: more than the update's own.
    """
    if rule is None or rule.kind != "debiased" or k < 2:
        return np.zeros_like(np.asarray(value, np.float64))
    d = rule.decay
    return BOUND_C * machine_eps(compute_dtype(dtype)) * d**k / (1 - d**k) * np.abs(value)


def bounds(
    case: Case, conv: Convention, truth: Trace, caches: list, data: Batches, rule: RunningRule | None = None
) -> dict[str, list[float]]:
    """Absolute error bound per quantity and step (max over channels), from the float64 truth and caches.

    The running statistics' bounds follow the weights of ``rule`` where one is given, else of ``conv``.
    """
    eps_out = machine_eps(case.dtype)  # the rounding of outputs returned in the input dtype
    w_const = new_value_weight_rule(conv)
    unbiased = conv.running_var == "unbiased"
    out: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    b_mean = np.zeros(case.channels)
    b_var = np.zeros(case.channels)
    for k, (cache, dy) in enumerate(zip(caches, data.dys, strict=False), start=1):
        s = channel_summaries(
            channels_last(cache.x_hat, case), channels_last(dy, case), cache.mean, cache.var, cache.eps
        )
        step = training_bounds(s, data.gamma, data.beta, truth["dgamma"][k - 1], case.dtype)
        for q in ("y", "dx"):
            out[q].append(float(np.max(step[q])) + eps_out * float(np.max(np.abs(truth[q][k - 1]))))
        for q in ("dgamma", "dbeta"):
            out[q].append(float(np.max(step[q])))
        if rule is not None:
            w = rule.new_value_weight(k)
        else:
            w = w_const if w_const is not None else 1.0 / k
        b_mean = running_mean_bound(b_mean, w, s, cache.mean, truth["running_mean"][k - 1], case.dtype)
        b_var = running_var_bound(b_var, w, s, cache.mean, cache.var, truth["running_var"][k - 1], case.dtype, unbiased)
        read_mean = b_mean + _debiasing(rule, k, truth["running_mean"][k - 1], case.dtype)
        read_var = b_var + _debiasing(rule, k, truth["running_var"][k - 1], case.dtype)
        out["running_mean"].append(float(np.max(read_mean)))
        out["running_var"].append(float(np.max(read_var)))
    if truth["y_inference"]:
        bound = inference_bound(
            channels_last(data.x_inference, case),
            data.gamma,
            data.beta,
            truth["running_mean"][-1],
            truth["running_var"][-1],
            conv.eps,
            read_mean,
            read_var,
            case.dtype,
        )
        out["y_inference"].append(float(np.max(bound)) + eps_out * float(np.max(np.abs(truth["y_inference"][0]))))
    return out


@dataclass(frozen=True)
class Diff:
    """Worst difference of one quantity against the float64 reference, over all steps.

    Attributes
    ----------
    max_abs : float
        ``max |a - ref|``.
    max_rel : float
        ``relative_error(a, ref)`` (max-norm relative, as in ``bnref.gradcheck``).
    ratio : float
        ``max_abs / bound`` at the worst step; the cell passes when ``ratio <= 1``.
    bound : float
        The derived absolute bound at that step.
    rel_bound : float
        ``bound / max|ref|`` at that step: the bound on the scale of ``max_rel``.
    """

    max_abs: float
    max_rel: float
    ratio: float
    bound: float
    rel_bound: float

    @property
    def passed(self) -> bool:
        return bool(self.ratio <= 1.0)


def compare(trace: Trace, truth: Trace, bounds: dict[str, list[float]]) -> dict[str, Diff]:
    """One ``Diff`` per quantity of ``truth``: the worst error over the steps against its bound.

    Raises ``ValueError`` when the trace has another shape than the truth.
    """
    diffs = {}
    for q in QUANTITIES:
        if not truth[q]:
            continue
        worst_abs = worst_rel = 0.0
        worst = (-1.0, 0.0, 0.0)  # (ratio, bound, bound / max|ref|)
        for a, t, bnd in zip(trace[q], truth[q], bounds[q], strict=False):
            if a.shape != t.shape:
                raise ValueError(f"{q}: implementation gave shape {a.shape}, the reference {t.shape}")
            err = float(np.max(np.abs(a - t))) if a.size else 0.0
            if not np.isfinite(err):
                err = math.inf
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, relative_error(a, t) if np.isfinite(err) else math.inf)
            ratio = err / bnd if bnd > 0 else (0.0 if err == 0 else math.inf)
            if ratio > worst[0]:
                scale = float(np.max(np.abs(t))) if t.size else 0.0
                worst = (ratio, bnd, bnd / scale if scale > 0 else math.inf)
        diffs[q] = Diff(float(worst_abs), float(worst_rel), float(worst[0]), float(worst[1]), float(worst[2]))
    return diffs


def compare_trace(
    case: Case,
    convention: Convention,
    trace: Trace,
    batches: Batches | None = None,
    rule: RunningRule | None = None,
    init: tuple[float, float] | None = None,
) -> dict[str, Diff]:
    """Compare any implementation's ``trace`` on the batches of ``case`` with the float64 reference.

    Point the oracle at a BN that ``run_case`` does not know: run it on ``make_batches(case)`` (the same
    ``batches`` must be passed here if they were drawn otherwise), collect a ``Trace``, and get one ``Diff``
    per quantity against the bounds of ``bnref.testing`` under ``convention`` (its running statistics under
    ``rule`` from ``init`` where a rule is given, see ``reference_run``).
    """
    data = batches if batches is not None else make_batches(case)
    truth, caches = reference_run(case, convention, data, "float64", rule, init)
    return compare(trace, truth, bounds(case, convention, truth, caches, data, rule))
