"""The conformance tool's accuracy checks: an implementation against the float64 oracle run under its measured
convention, so that the numerics are judged apart from the conventions.

* float32 accuracy: the training output, the gradients (if the adapter gives them), the running mean and variance
  over three steps and the inference output, each against its bound (``bnref.check.truth``, the book's appendix
  ``ch-bounds``), over the seeds;
* edge cases: a training batch with one value per channel (what it does), a constant channel (the output must be
  ``beta``), the ``|mean|/std`` sweep (the largest ratio at which the training output stays within its bound; a
  one-pass variance loses it, appendix eq. ``eq-bound-two-pass``);
* half precision: the output dtype for float16 / bfloat16 inputs, and the output against the bound for that dtype.

Every call of the adapter goes through ``bnref.check.contract``, which holds what it returns to the contract.
NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnref.check.cases import Batches, Case, layout_shape, make_batches, round_to, to_2d, to_layout
from bnref.check.contract import ContractError, call_backward, call_forward, call_running_stats, optional
from bnref.check.probes import F32, PROBE_C, PROBE_M, fresh, params
from bnref.check.report import FAIL, INFO, PASS, Line, ratio_text
from bnref.check.rules import RunningRule
from bnref.check.truth import Diff, Trace, compare_trace, empty_trace
from bnref.conventions import Convention
from bnref.testing import machine_eps, reduction_error

__all__ = [
    "Model",
    "ratio_line",
    "accuracy_lines",
    "one_value_line",
    "constant_channel_line",
    "sweep_line",
    "half_lines",
    "SWEEP",
]

#: The name of the line of the |mean|/std sweep.
SWEEP = "|mean|/std sweep"


@dataclasses.dataclass(frozen=True)
class Model:
    """What the oracle runs under: the layout, the convention (eps, variance fed), the running-average rule (None:
    none was found, and the running statistics are not checked) and the initial running statistics."""

    layout: str
    convention: Convention
    rule: RunningRule | None
    init: tuple[float, float]

    def compare(self, case: Case, trace: Trace, data: Batches) -> dict[str, Diff]:
        for q in QUANTITY_NAMES:
            trace.setdefault(q, [])
        return compare_trace(case, self.convention, trace, data, self.rule or RunningRule("constant", 0.0), self.init)


def _trace(adapter: Any, case: Case, data: Batches, quantities: Sequence[str], grads: bool) -> Trace:
    """Drive the adapter through ``data``: training steps (y, running stats), inference, and gradients."""
    trace: Trace = {q: [] for q in quantities}
    c = case.channels
    fresh(adapter, c, case.dtype, data.gamma, data.beta)
    for x in data.xs:
        trace["y"].append(call_forward(adapter, "train_forward", x)[0])
        if "running_mean" in trace:
            rm, rv = call_running_stats(adapter, c)
            trace["running_mean"].append(rm)
            trace["running_var"].append(rv)
    if "y_inference" in trace:
        trace["y_inference"].append(call_forward(adapter, "infer_forward", data.x_inference)[0])
    if grads:
        fresh(adapter, c, case.dtype, data.gamma, data.beta)
        for x, dy in zip(data.xs, data.dys, strict=True):
            dx, dgamma, dbeta = call_backward(adapter, x, dy, c)
            trace["dx"].append(dx)
            trace["dgamma"].append(dgamma)
            trace["dbeta"].append(dbeta)
    return trace


def _data(adapter: Any, case: Case) -> Batches:
    data = make_batches(case)
    gamma, beta = params(adapter, case.channels, case.seed)
    return dataclasses.replace(data, gamma=gamma, beta=beta)


def _case(layout: str, m: int, channels: int, **kw: Any) -> Case:
    return Case(layout_shape(layout, m, channels), axis=layout.index("C"), **kw)


def _worst(diffs: Sequence[Diff]) -> Diff:
    return max(diffs, key=lambda d: d.ratio if math.isfinite(d.ratio) else math.inf)


def ratio_line(section: str, check: str, worst: Diff, what: str = "", bound: str = "eq-bound-y") -> Line:
    """A PASS/FAIL line for the worst error / bound ratio. ``bound`` names the bound (the same on every CPU); the
    relative bound itself goes with the measured numbers, since it is taken at the worst seed and step."""
    ratio, rel, rel_bound = float(worst.ratio), float(worst.max_rel), float(worst.rel_bound)
    ok = math.isfinite(ratio) and ratio <= 1.0
    if math.isfinite(rel):
        numbers = f"max rel err {rel:.1e}, bound {rel_bound:.1e} (err/bound {ratio_text(ratio)})"
    else:
        numbers = f"NaN or inf in the output (bound {rel_bound:.1e})"
    return Line(section, check, PASS if ok else FAIL, what, bound, numbers, ratio)


#: The quantities of the accuracy lines, each with its line's name and the bound it is held to (labels of the
#: book's appendix ch-bounds).
QUANTITY_NAMES: dict[str, tuple[str, str]] = {
    "y": ("training output y", "eq-bound-y"),
    "dx": ("gradient dx", "eq-bound-dx"),
    "dgamma": ("gradient dgamma", "eq-bound-dgamma"),
    "dbeta": ("gradient dbeta", "eq-bound-dbeta"),
    "running_mean": ("running mean (3 steps)", "eq-bound-running"),
    "running_var": ("running variance (3 steps)", "eq-bound-running"),
    "y_inference": ("inference output", "eq-bound-inference"),
}


def _normalises_with_running_stats(runs: list[tuple[Case, Batches, Trace]], eps: float) -> bool:
    """Whether every training output is ``gamma (x - r_mean) / sqrt(r_var + eps) + beta`` with the running statistics
    read after its step (to 1e-4), as a layer does that normalises with its running averages in training."""
    for case, data, trace in runs:
        for x, y, rm, rv in zip(data.xs, trace["y"], trace["running_mean"], trace["running_var"], strict=True):
            x2, y2 = to_2d(x, case.channel_axis), to_2d(y, case.channel_axis)
            expected = data.gamma * (x2 - rm) / np.sqrt(rv + eps) + data.beta
            if not np.max(np.abs(y2 - expected)) <= 1e-4 * max(float(np.max(np.abs(expected))), 1.0):
                return False
    return True


def accuracy_lines(adapter: Any, model: Model, seeds: Sequence[int]) -> list[Line]:
    """The float32 accuracy lines: three training steps (and gradients) per seed against the oracle.

    A training output that fails is checked once more against normalising with the layer's own running statistics:
    a layer that uses them in training (Equinox's ``mode="ema"``) is named as such.
    """
    grads = optional(adapter, "backward") is not None
    quantities = [q for q in QUANTITY_NAMES if grads or q not in ("dx", "dgamma", "dbeta")]
    running = ("running_mean", "running_var", "y_inference")
    checked = [q for q in quantities if model.rule is not None or q not in running]
    diffs, runs = [], []
    for seed in seeds:
        case = _case(model.layout, PROBE_M, PROBE_C, dtype=F32, steps=3, seed=seed)
        data = _data(adapter, case)
        trace = _trace(adapter, case, data, quantities, grads)
        got = model.compare(case, trace, data)
        diffs.append({q: got[q] for q in checked})
        runs.append((case, data, trace))
    what = f"m = {_case(model.layout, PROBE_M, PROBE_C).m}, {len(seeds)} seeds"
    lines = []
    for q in quantities:
        name, bound = QUANTITY_NAMES[q]
        if q not in checked:
            lines.append(Line("float32 accuracy", name, INFO, "not checked: no running-average rule was found"))
            continue
        line = ratio_line("float32 accuracy", name, _worst([d[q] for d in diffs]), what, bound)
        if q == "y" and line.verdict == FAIL and _normalises_with_running_stats(runs, model.convention.eps):
            text = f"{what}; normalises with its running statistics (after the update), not the batch's"
            line = dataclasses.replace(line, measured=text)
        lines.append(line)
    if not grads:
        lines.append(Line("float32 accuracy", "gradients", INFO, "not checked: the adapter has no backward"))
    return lines


def _raised(err: ContractError) -> str:
    """The line text of an adapter that raised (a behaviour the edge cases record); other breaches go on up."""
    if not err.raised:
        raise err
    return err.got.removeprefix("raised ")


def one_value_line(adapter: Any, model: Model) -> Line:
    """A training batch with one value per channel: what the implementation does (INFO).

    With one value the batch variance is 0 and ``x_hat = (x - mean) / sqrt(eps)`` is 0 in exact arithmetic, so
    a layer that returns something returns ``beta``. ``x - mean`` is then a cancellation: its error, about
    ``e(1) |x|``, is magnified by ``1 / sqrt(eps)``, which is the bound eq-bound-y gives for r = |x| / sqrt(eps).
    """
    c = PROBE_C
    gamma, beta = params(adapter, c, 0)
    x2d = round_to(np.array([[0.5, -1.0, 2.0, 3.0, -0.25]]), F32)
    try:
        fresh(adapter, c, F32, gamma, beta)
        y, _ = call_forward(adapter, "train_forward", to_layout(x2d, model.layout))
    except ContractError as err:
        return Line("edge cases", "one value per channel", INFO, f"raises {_raised(err)}")
    y = to_2d(y, model.layout.index("C"))
    if not np.all(np.isfinite(y)):
        return Line("edge cases", "one value per channel", INFO, "returns NaN or inf")
    eps = model.convention.eps
    bound = reduction_error(F32, 1) * (np.abs(gamma) * np.abs(x2d[0]) / math.sqrt(eps) + np.abs(beta))
    if np.all(np.abs(y[0] - beta) <= bound):
        return Line("edge cases", "one value per channel", INFO, "returns beta (var = 0, x_hat = 0)")
    text = f"returns y = {np.round(y[0], 4).tolist()}, not beta = {beta.tolist()}"
    return Line("edge cases", "one value per channel", INFO, text)


def _y_diff(adapter: Any, model: Model, case: Case, data: Batches) -> Diff:
    """One training step of a fresh layer on ``data``: its output against the float64 reference."""
    return model.compare(case, _trace(adapter, case, data, ["y"], False), data)["y"]


def constant_channel_line(adapter: Any, model: Model, seeds: Sequence[int]) -> Line:
    """A channel whose m values are all equal: its variance is 0, so ``x_hat = 0`` and y must be beta (eq-bound-y).

    The value, 2.5, and its square are sums of few powers of two, so every sum of up to m = 32 copies is exact in
    any order and any correct formula, the one-pass one included, gets a variance of exactly 0: the line checks
    how a layer handles ``var = 0`` (no division by zero, eps inside the square root), the same on every CPU.
    Channels far from zero are the sweep's business.
    """
    diffs = []
    for seed in seeds:
        case = _case(model.layout, PROBE_M, PROBE_C, dtype=F32, steps=1, seed=seed, mode="train")
        data = _data(adapter, case)
        x2d = to_2d(data.xs[0], case.channel_axis).copy()
        x2d[:, 1] = 2.5
        diffs.append(_y_diff(adapter, model, case, dataclasses.replace(data, xs=[to_layout(x2d, model.layout)])))
    return ratio_line("edge cases", "constant channel", _worst(diffs), "y = beta")


def sweep_line(adapter: Any, model: Model, ratios: Sequence[float], seeds: Sequence[int]) -> Line:
    """The float32 training output at |mean|/std = ratio, against eq-bound-y, for every ratio and seed.

    The line passes when every ratio is within the bound for every seed; it reports the largest ratio up to which
    all are (0 if the first is not).
    """
    per_ratio = []
    for ratio in ratios:
        diffs = []
        for seed in seeds:
            case = _case(model.layout, PROBE_M, PROBE_C, dtype=F32, steps=1, seed=seed, loc=ratio, mode="train")
            diffs.append(_y_diff(adapter, model, case, _data(adapter, case)))
        per_ratio.append((ratio, _worst(diffs)))
    within = [d.ratio <= 1.0 for _, d in per_ratio]  # False for NaN
    largest = 0.0
    for (r, _), ok in zip(per_ratio, within, strict=True):
        if not ok:
            break
        largest = r
    first_fail = next((r for (r, _), ok in zip(per_ratio, within, strict=True) if not ok), None)
    if first_fail is None:
        text = f"within the bound up to {ratios[-1]:g}"
    elif largest:
        text = f"within the bound up to {largest:g}; outside from {first_fail:g}"
    else:
        text = f"outside the bound from {first_fail:g}"
    worst = _worst([d for _, d in per_ratio])
    detail = {
        "ratios": list(ratios),
        "largest_within": largest,
        "err_over_bound": [float(d.ratio) for _, d in per_ratio],
        "max_rel": [float(d.max_rel) for _, d in per_ratio],
        "rel_bound": [float(d.rel_bound) for _, d in per_ratio],
    }
    numbers = "err/bound per ratio " + ", ".join(f"{r:g}: {ratio_text(d.ratio)}" for r, d in per_ratio)
    verdict = PASS if first_fail is None else FAIL
    bound = "eq-bound-y (grows like |mean|/std)"
    return Line("edge cases", SWEEP, verdict, text, bound, numbers, float(worst.ratio), detail)


def half_lines(adapter: Any, model: Model, dtype: str, seeds: Sequence[int]) -> list[Line]:
    """Training output for float16 / bfloat16 inputs: its dtype (INFO) and its error against the bound."""
    diffs, out_dtype = [], ""
    for seed in seeds:
        case = _case(model.layout, PROBE_M, PROBE_C, dtype=dtype, steps=1, seed=seed, mode="train")
        data = _data(adapter, case)
        try:
            fresh(adapter, case.channels, dtype, data.gamma, data.beta)
            y, out_dtype = call_forward(adapter, "train_forward", data.xs[0])
        except ContractError as err:
            return [Line("half precision", f"{dtype} input", INFO, f"not supported: {_raised(err)}")]
        trace = empty_trace()
        trace["y"].append(y)
        diffs.append(model.compare(case, trace, data)["y"])
    return [
        Line("half precision", f"{dtype} input: output dtype", INFO, out_dtype),
        ratio_line(
            "half precision",
            f"{dtype} training output",
            _worst(diffs),
            f"m = {PROBE_M}, {len(seeds)} seeds",
            f"eq-bound-y + {dtype} rounding {machine_eps(dtype):.1e}",
        ),
    ]
