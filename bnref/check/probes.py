"""The conformance tool's probes: an implementation's conventions inferred from its behaviour alone.

* ``probe_layout``: which axes it reduces. A probe of distinct axis sizes is normalised over every candidate set of
  axes by the oracle, and the output matches exactly one (up to a common scale, so that a layer normalising with
  another variance still shows the axes it reduces);
* ``probe_eps``: channels of ``m`` values ``+-s`` have mean 0 and biased variance ``s^2`` exactly, so a BN returns
  ``|y| = t = s / sqrt(s^2 + eps)`` and ``eps = s^2 (1 / t^2 - 1)``. Channels with ``s^2`` from 1 to 1e-8 must give
  one value of ``eps``: an ``eps`` outside the square root (``s / (s + eps)``) gives ``2 s eps + eps^2`` and a
  variance other than the biased one gives ``eps + c s^2`` (the unbiased one: ``c = 1 / (m - 1)``), both of which
  change with ``s``;
* ``probe_running``: three training steps on batches of known mean and variance give the weights ``w_1, w_2, w_3``
  of the running update ``r_k = (1 - w_k) r_{k-1} + w_k b_k`` (eq. ``eq-running-update``), which name the
  running-average rule (``bnref.check.rules``); the first step's variance gives the factor ``f`` on the biased
  batch variance, 1 (biased) or ``m / (m - 1)`` (unbiased), and any offset; and the initial statistics.

``convention_lines`` turns the measurements into report lines: ``INFO`` with nothing declared, ``PASS``/``FAIL``
against a declared ``Convention`` (and ``RunningRule``), within tolerances derived from the error model of
``bnref.testing``. NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnref.check.cases import layout_for, round_to, to_2d, to_layout
from bnref.check.contract import ContractError, call_create, call_forward, call_running_stats, invoke, optional
from bnref.check.report import FAIL, INFO, PASS, Line, decimal, decisive, short, snap, spread_text
from bnref.check.rules import STEPS, RunningRule, evidence, infer_rule
from bnref.conventions import Convention
from bnref.testing import (
    BOUND_C,
    channel_summaries,
    machine_eps,
    reduction_error,
    running_mean_bound,
    running_var_bound,
)

__all__ = [
    "F32",
    "PROBE_M",
    "PROBE_C",
    "fresh",
    "params",
    "probe_layout",
    "probe_eps",
    "EpsProbe",
    "probe_running",
    "Measured",
    "convention_lines",
]

F32 = "float32"
#: Every probe holds PROBE_M values in each of PROBE_C channels (one value per channel aside), so that a compiling
#: framework (JAX, XLA) compiles one shape; small enough to cost milliseconds, large enough for m/(m-1) = 1.03 to be
#: read.
PROBE_M, PROBE_C = 32, 5


def fresh(adapter: Any, channels: int, dtype: str, gamma: np.ndarray | None = None, beta=None) -> None:
    """``create`` a fresh layer, and set gamma and beta if given and the adapter can."""
    call_create(adapter, channels, dtype)
    if optional(adapter, "set_params") is not None and gamma is not None:
        g, b = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
        invoke(adapter, "set_params", f"set_params(gamma, beta of {channels} channels)", g, b)


def params(adapter: Any, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5^2) in float32 if the adapter can take them, else 1 and 0."""
    if optional(adapter, "set_params") is None:
        return np.ones(channels), np.zeros(channels)
    rng = np.random.default_rng(1000 + seed)
    return round_to(rng.uniform(0.5, 1.5, channels), F32), round_to(rng.normal(0.0, 0.5, channels), F32)


# ----------------------------------------------------------------------------------------------------
# Layout probe: which axes does it reduce?
# ----------------------------------------------------------------------------------------------------


def _normalise_over(x: np.ndarray, keep: tuple[int, ...]) -> np.ndarray:
    axes = tuple(d for d in range(x.ndim) if d not in keep)
    if not axes:
        return np.zeros_like(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var)


def _matches(y: np.ndarray, ref: np.ndarray) -> float | None:
    """The scale ``a`` with ``y = a ref`` to 1e-3 (1 when ``y = ref`` already, so a BN reads exactly), or None."""
    tol = 1e-3 * max(float(np.max(np.abs(ref))), 1.0)
    if np.max(np.abs(y - ref)) <= tol:
        return 1.0
    denominator = float(np.sum(ref * ref))
    a = float(np.sum(y * ref)) / denominator if denominator > 0 else 0.0
    if 0.5 <= a <= 2.0 and np.max(np.abs(y - a * ref)) <= a * tol:
        return a
    return None


def probe_layout(adapter: Any) -> tuple[str, Line]:
    """Find the axes the implementation reduces, and its channel axis; return the layout string and a line.

    The probe has distinct axis sizes, a spread of 10 (variance 100, so that any eps up to 1e-2 changes the output
    by less than 1e-4 relative) and means that differ along axis 1. The oracle normalises it over every
    candidate set of axes (keep one axis, keep the batch and one axis, keep none); the output of a BN matches
    the candidate that keeps only the channel axis, to float32 precision, and no other by far. A common scale is
    allowed (a layer normalising with ``m/(m-1)`` times the variance still reduces the right axes; the eps line
    says what it normalises with).
    """
    layout = adapter.layout
    ndim = len(layout) if layout else int(adapter.ndim)
    sizes = (6, 3, 4, 5, 7, 2)[:ndim]
    rng = np.random.default_rng(7)
    x = round_to(
        10.0 * rng.standard_normal(sizes) + rng.normal(0, 20, sizes[1]).reshape((1, -1) + (1,) * (ndim - 2)), F32
    )
    candidates = [(d,) for d in range(ndim)] + [(0, d) for d in range(1, ndim)] + [()]
    names = layout if layout else "".join(f"{d}" for d in range(ndim))
    tried: dict[int, str] = {}
    for axis in [layout.index("C")] if layout else list(range(ndim)):
        try:
            fresh(adapter, sizes[axis], F32, np.ones(sizes[axis]), np.zeros(sizes[axis]))
            y, _ = call_forward(adapter, "train_forward", x)
        except ContractError as err:
            if layout or not err.raised:
                raise
            tried[axis] = err.got  # an implementation refusing the shape is what the probe learns
            continue
        found = {keep: a for keep in candidates if (a := _matches(y, _normalise_over(x, keep))) is not None}
        tried[axis] = f"output matches normalising with axes {list(found)} kept"
        if list(found) == [(axis,)]:
            reduced = "".join(names[d] for d in range(ndim) if d != axis)
            chosen = layout or layout_for(ndim, axis)
            text = f"reduces {reduced} of {names}, channels on axis {axis}"
            scale = found[(axis,)]
            numbers = "" if scale == 1.0 else f"output {scale:.4g} times the biased-variance normalisation's"
            declared = f"declared {layout}" if layout else ""
            detail = {"scale": scale}
            return chosen, Line(
                "layout", "reduced axes", PASS if layout else INFO, text, declared, numbers, None, detail
            )
        if layout:
            kept = ", ".join("".join(names[d] for d in k) or "none" for k in found) or "no candidate"
            text = f"keeps {kept} of {names} (shape {sizes})"
            return layout, Line("layout", "reduced axes", FAIL, text, f"declared {layout}", detail={"tried": tried})
    raise ContractError(
        f"train_forward(x of shape {sizes})",
        f"with layout None, one axis of a {ndim}-D input behaves as BN's channel axis",
        "no axis did: " + "; ".join(f"axis {a}: {t}" for a, t in tried.items()),
    )


# ----------------------------------------------------------------------------------------------------
# eps probe
# ----------------------------------------------------------------------------------------------------

#: The spreads of the eps probe: s^2 from 1 to 1e-8, so that some channel has s^2 near any eps in [1e-9, 1].
_EPS_SPREADS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class EpsProbe:
    """What the eps probe measured: ``eps`` (0 if below what it resolves), its tolerance, whether every channel
    gives the same value, and when they do not, the law they follow (``eps + c s^2``, ``c`` = ``growth``)."""

    eps: float
    tol: float
    consistent: bool
    growth: float | None
    detail: dict[str, Any]


def _fit_growth(spreads: list[float], estimates: list[float], tols: list[float]) -> tuple[float, float] | None:
    """``(eps, c)`` with every estimate within its tolerance of ``eps + c s^2``, if there are such (weighted
    least squares over the channels), else None."""
    if len(estimates) < 3:
        return None
    s2, est, tol = (np.asarray(v, np.float64) for v in (np.square(spreads), estimates, tols))
    a = np.stack([np.ones_like(s2), s2], axis=1) / tol[:, None]
    (e0, c), *_ = np.linalg.lstsq(a, est / tol, rcond=None)
    if e0 > 0 and np.all(np.abs(est - (e0 + c * s2)) <= 2 * tol):
        return float(e0), float(c)
    return None


def probe_eps(adapter: Any, layout: str) -> EpsProbe:
    """eps from channels of values +-s (mean 0, biased variance s^2 exactly), and whether the channels agree.

    ``|y| = t = s / sqrt(s^2 + eps)`` gives ``eps = s^2 (1/t^2 - 1)``. The output's error is at most
    ``e(m) t`` (eq-bound-y with r = 0, X = t, gamma = 1, beta = 0), so to first order each estimate is good to
    ``2 e(m) / (1 - t^2)`` relative; channels with ``1 - t^2 < 1e-2`` (eps negligible against s^2) say
    nothing and are skipped. Estimates that disagree are fitted with ``eps + c s^2`` (a variance c + 1 times the
    biased one).
    """
    m, c = PROBE_M, len(_EPS_SPREADS)
    spreads = round_to(np.array(_EPS_SPREADS), F32)
    signs = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    x2d = signs * spreads[None, :]
    fresh(adapter, c, F32, np.ones(c), np.zeros(c))
    y, _ = call_forward(adapter, "train_forward", to_layout(x2d, layout))
    t = np.mean(np.abs(to_2d(y, layout.index("C"))), axis=0)
    e = reduction_error(F32, m)
    used, estimates, tols = [], [], []
    for s, ti in zip(spreads, t, strict=True):
        if 0 < ti and 1 - ti**2 >= 1e-2 and math.isfinite(ti):
            est = s**2 * (1 / ti**2 - 1)
            used.append(float(s))
            estimates.append(est)
            tols.append(2 * e / (1 - ti**2) * est + BOUND_C * machine_eps(F32) * est)
    detail: dict[str, Any] = {"spreads": spreads.tolist(), "t": t.tolist(), "estimates": estimates}
    if not estimates:
        return EpsProbe(0.0, 0.0, True, None, {**detail, "note": "eps below what the probe resolves (about 1e-10)"})
    best = int(np.argmin(np.array(tols) / np.array(estimates)))
    consistent = all(abs(a - estimates[best]) <= ta + tols[best] for a, ta in zip(estimates, tols, strict=True))
    detail["tolerance"] = tols[best]
    if consistent:
        return EpsProbe(float(snap(estimates[best], tols[best])), tols[best], True, None, detail)
    fit = _fit_growth(used, estimates, tols)
    if fit is None:
        return EpsProbe(float(snap(estimates[best], tols[best])), tols[best], False, None, detail)
    e0, growth = fit
    detail.update(fitted_eps=e0, growth=growth)
    return EpsProbe(float(snap(e0, tols[best])), tols[best], False, growth, detail)


# ----------------------------------------------------------------------------------------------------
# Running-statistics probe
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """The running statistics as measured (per-channel values, each with its tolerance)."""

    w: list[list[float]]  # [step][channel]
    w_tol: list[float]  # per step
    rule: RunningRule | None
    factor: list[float]  # per channel, step 1
    factor_tol: float
    offset: float  # the variance's offset after step 1 (0 where none is measured)
    m: int
    init_mean: list[float]
    init_var: list[float]

    @property
    def weights(self) -> list[float]:
        """The median of each step's weights."""
        return [float(np.median(w)) for w in self.w]

    @property
    def bias(self) -> str:
        """ "biased", "unbiased" or "other": the factor on the biased batch variance fed to the running estimate."""
        f = float(np.median(self.factor))
        if any(abs(fc - f) > 2 * self.factor_tol for fc in self.factor):
            return "other"
        if abs(f - 1.0) <= self.factor_tol:
            return "biased"
        if abs(f - self.m / (self.m - 1)) <= self.factor_tol:
            return "unbiased"
        return "other"

    def as_dict(self) -> dict[str, Any]:
        rule = None if self.rule is None else asdict(self.rule)
        w = self.weights
        summary = {f"w{k}": v for k, v in enumerate(w, start=1)}
        init = {"init_mean": float(np.median(self.init_mean)), "init_var": float(np.median(self.init_var))}
        return {
            **summary,
            "w_tol": self.w_tol,
            "rule": self.rule.kind if self.rule else "other",
            "running_rule": rule,
            "factor": float(np.median(self.factor)),
            "factor_tol": self.factor_tol,
            "offset": self.offset,
            "bias": self.bias,
            "m": self.m,
            **init,
        }


#: The batch means and spreads of the three steps: every channel's mean far from where any rule left it.
_MUS = ((2.0, 4.0, -3.0, 1.5, -6.0), (-1.0, 0.5, 6.0, -2.0, 3.0), (5.0, -3.0, -7.0, 4.0, 7.0))
_SPREADS = ((3.0, 1.0, 2.0, 0.5, 1.5), (0.5, 2.0, 1.0, 1.0, 2.5), (1.0, 1.5, 0.5, 2.0, 1.0))


def probe_running(adapter: Any, layout: str, eps: float) -> Measured:
    """w_1, w_2, w_3 and the variance factor f from three training steps on batches of known mean and variance.

    Channel values are ``mu +- s`` (m = 32), so the batch mean is ``mu`` and the biased variance ``s^2`` exactly.
    After step k the running mean is ``r_k = (1 - w_k) r_{k-1} + w_k mu_k``, so ``w_k = (r_k - r_{k-1}) /
    (mu_k - r_{k-1})``, and after step 1 the running variance is ``(1 - w_1) v_0 + w_1 (f s_1^2 + a)``: the factor
    ``f`` and an offset ``a`` (0 for every rule; ``d h_0 / (1 - d)`` for a debiased average whose hidden variance
    starts at ``h_0``). The tolerances are the bounds of one update (``running_mean_bound``, ``running_var_bound``,
    eq-bound-running) carried through these quotients, plus, for a debiased average, the rounding of ``1 - d^k``.
    """
    m, c = PROBE_M, PROBE_C
    signs = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    fresh(adapter, c, F32, np.ones(c), np.zeros(c))
    r0, v0 = call_running_stats(adapter, c)
    prev_mean = r0
    ws, tols, reads, summaries = [], [], [], []
    for mu, s in zip((np.array(v) for v in _MUS), (np.array(v) for v in _SPREADS), strict=True):
        call_forward(adapter, "train_forward", to_layout(mu[None, :] + signs * s[None, :], layout))
        rm, rv = call_running_stats(adapter, c)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = (rm - prev_mean) / (mu - prev_mean)
        x_hat = signs * (s / np.sqrt(s**2 + eps))[None, :] * np.ones((m, c))
        summ = channel_summaries(x_hat, np.zeros((m, c)), mu, s**2, eps)
        b_mean = running_mean_bound(np.zeros(c), float(np.median(w)), summ, mu, rm, F32)
        ws.append(w)
        tols.append(b_mean / np.abs(mu - prev_mean))
        reads.append((rm, rv, prev_mean))
        summaries.append(summ)
        prev_mean = rm
    med = [float(np.median(w)) for w in ws]
    tol = [float(np.max(t)) for t in tols]
    if abs(med[0] - 1.0) <= tol[0] and 0.5 < med[1] < 1.0:
        # a debiased average divides by 1 - d^k, computed from d^k rounded in float32: a relative error of about
        # u d^k / (1 - d^k) in r_k (rules.py); d from w_2 = 1 / (1 + d)
        d = 1.0 / med[1] - 1.0
        for k in range(1, STEPS):
            rm, _, before = reads[k]
            allowance = BOUND_C * machine_eps(F32) * d ** (k + 1) / (1 - d ** (k + 1))
            tol[k] += float(np.max(allowance * (np.abs(rm) + np.abs(before)) / np.abs(np.array(_MUS[k]) - before)))
    consistent = all(np.all(np.abs(w - mk) <= t + tk) for w, mk, t, tk in zip(ws, med, tols, tol, strict=True))
    rule = infer_rule(med, tol) if consistent else None
    # the variance factor f (and an offset a) from step 1: rv_1 = (1 - w_1) v_0 + w_1 (f s_1^2 + a)
    w1 = med[0]
    rv1, v1 = reads[0][1], np.square(_SPREADS[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        fed = (rv1 - (1 - w1) * v0) / w1
        f = fed / v1
    b_var = running_var_bound(np.zeros(c), w1, summaries[0], np.array(_MUS[0]), v1, rv1, F32, unbiased=True)
    f_tol = (b_var + tol[0] * (np.abs(v0) + np.abs(f) * v1)) / (abs(w1) * v1) if w1 else np.full(c, np.inf)
    offset = 0.0
    spread = np.max(f) - np.min(f) if np.all(np.isfinite(f)) else math.inf
    if math.isfinite(spread) and spread > np.max(f_tol):
        slope, intercept = np.polyfit(v1, fed, 1)
        if np.all(np.abs(fed - (intercept + slope * v1)) <= f_tol * v1):
            offset, f = float(intercept), np.full(c, float(slope))
    return Measured(
        w=[w.tolist() for w in ws],
        w_tol=tol,
        rule=rule,
        factor=[float(v) for v in f],
        factor_tol=float(np.max(f_tol)),
        offset=offset,
        m=m,
        init_mean=r0.tolist(),
        init_var=v0.tolist(),
    )


# ----------------------------------------------------------------------------------------------------
# The convention lines
# ----------------------------------------------------------------------------------------------------


def _eps_lines(probe: EpsProbe, declared: Convention | None, m: int) -> tuple[list[Line], float]:
    """The two eps lines, and the eps the accuracy checks run with (the declared one where it matches)."""
    if probe.consistent:
        text = "one eps from every spread"
    elif probe.growth is not None and abs(probe.growth * (m - 1) - 1) <= 0.05:
        text = f"estimates are eps + s^2/(m - 1): normalises with the unbiased variance, m/(m-1) = {short(m / (m - 1))}"
    elif probe.growth is not None:
        times = short(1 + probe.growth)
        text = f"estimates are eps + {short(probe.growth)} s^2: normalises with {times} times the variance"
    else:
        text = "eps estimates change with the spread: " + spread_text(probe.detail["estimates"])
    consistency = Line(
        "conventions",
        "eps inside sqrt(var + eps)",
        PASS if probe.consistent else FAIL,
        text,
        "estimates agree within 2 e(m) / (1 - t^2)",
        detail=probe.detail,
    )
    measured = decimal(probe.eps, probe.tol, most=6)
    if declared is None:
        return [consistency, Line("conventions", "eps", INFO, f"eps = {measured}", "", detail=probe.detail)], probe.eps
    ok = abs(probe.eps - declared.eps) <= probe.tol + 1e-12 * declared.eps
    if ok:
        line = Line("conventions", "eps", PASS, f"eps = {measured}", f"{declared.eps:g}", detail=probe.detail)
    else:
        shown = decisive(probe.eps, probe.tol, declared.eps)
        bound = f"{declared.eps:g} (tolerance {probe.tol:.2g})"
        line = Line("conventions", "eps", FAIL, f"eps = {shown}", bound, detail=probe.detail)
    return [consistency, line], declared.eps if ok else probe.eps


def _rule_line(meas: Measured, declared: RunningRule | None) -> Line:
    weights = meas.weights
    numbers = evidence(weights, meas.w_tol)
    channels_agree = all(
        max(w) - min(w) <= 2 * t for w, t in zip(meas.w, meas.w_tol, strict=True) if all(map(math.isfinite, w))
    )
    detail = {"w": meas.w, "tol": meas.w_tol}
    if meas.rule is not None:
        text = meas.rule.explain()
    elif not channels_agree:
        spreads = "; ".join(f"w_{k} {spread_text(w)}" for k, w in enumerate(meas.w, start=1))
        text = f"the channels disagree ({spreads}): no rule r = (1 - w_k) r + w_k b"
    else:
        text = "no known rule (constant, 1/k, zero-debiased, first batch replaces) gives these weights"
    if declared is None:
        return Line(
            "conventions", "running-average weight", INFO if meas.rule else FAIL, text, "", numbers, None, detail
        )
    expected = declared.weights(len(weights))
    ok = all(abs(w - e) <= t for w, e, t in zip(weights, expected, meas.w_tol, strict=True))
    return Line(
        "conventions", "running-average weight", PASS if ok else FAIL, text, declared.describe(), numbers, None, detail
    )


def _variance_line(meas: Measured, declared: Convention | None) -> Line:
    bias, m = meas.bias, meas.m
    texts = {"biased": "biased (factor 1)", "unbiased": f"unbiased (factor m/(m-1) = {short(m / (m - 1))})"}
    numbers = f"f = {spread_text(meas.factor, lambda v: decimal(v, meas.factor_tol, most=6))}"
    if meas.offset:
        f = meas.factor[0]
        kind = (
            "biased" if abs(f - 1) <= meas.factor_tol else "unbiased" if abs(f - m / (m - 1)) <= meas.factor_tol else ""
        )
        text = f"factor {short(f)}{f' ({kind})' if kind else ''} plus an offset of {short(meas.offset)} after step 1"
        if meas.rule is not None and meas.rule.kind == "debiased":
            d = meas.rule.decay
            text += f": a debiased average whose hidden variance starts at {short(meas.offset * (1 - d) / d)}, not 0"
    else:
        text = texts.get(bias, f"factor {spread_text(meas.factor)} on the biased variance (m = {m})")
    detail = {"factor": meas.factor, "tol": meas.factor_tol, "offset": meas.offset, "m": m}
    if declared is None:
        return Line("conventions", "running variance fed", INFO, text, "", numbers, None, detail)
    verdict = PASS if bias == declared.running_var and not meas.offset else FAIL
    return Line("conventions", "running variance fed", verdict, text, declared.running_var, numbers, None, detail)


def convention_lines(
    probe: EpsProbe, meas: Measured, declared: Convention | None, declared_rule: RunningRule | None
) -> tuple[list[Line], Convention, RunningRule | None, tuple[float, float]]:
    """The convention lines; the convention (eps, variance fed), rule and initial values the accuracy checks run
    under (the declared eps where it matches; no rule where none was found)."""
    if declared_rule is None and declared is not None:
        declared_rule = RunningRule.from_convention(declared)
    lines, eps_used = _eps_lines(probe, declared, meas.m)
    lines.append(_rule_line(meas, declared_rule))
    lines.append(_variance_line(meas, declared))
    init = (float(np.median(meas.init_mean)), float(np.median(meas.init_var)))
    init_text = f"mean {spread_text(meas.init_mean)}, var {spread_text(meas.init_var)}"
    if declared is None:
        lines.append(Line("conventions", "initial running stats", INFO, init_text))
    else:
        values = np.concatenate([meas.init_mean, meas.init_var])
        expected = np.repeat([declared.init_mean, declared.init_var], len(meas.init_mean))
        ok = bool(np.all(values == expected))
        declared_text = f"mean {declared.init_mean:g}, var {declared.init_var:g}"
        lines.append(Line("conventions", "initial running stats", PASS if ok else FAIL, init_text, declared_text))
    used = Convention(
        name="measured",
        eps=eps_used if eps_used > 0 else 1e-300,
        momentum=None,
        momentum_weights="new",
        running_var="unbiased" if meas.bias == "unbiased" else "biased",
        axis=1,
    )
    return (
        lines,
        used,
        meas.rule,
        (init[0] if math.isfinite(init[0]) else 0.0, init[1] if math.isfinite(init[1]) else 1.0),
    )
