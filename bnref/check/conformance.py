"""Conformance: point the NumPy oracle at any Batch Normalization implementation.

``check(adapter) -> Report`` takes a BN implementation through a small adapter and reports, line by line,

* its **conventions, inferred from behaviour** (book, chapter "Frameworks side by side"):

  - which axes it reduces: a probe of distinct axis sizes is normalised over every candidate set of axes by
    the oracle, and the output matches exactly one;
  - ``eps``: channels of ``m`` values ``+-s`` have mean 0 and biased variance ``s^2`` exactly, so a BN
    returns ``|y| = t = s / sqrt(s^2 + eps)`` and ``eps = s^2 (1 / t^2 - 1)``. Channels with ``s^2`` from 1
    to 1e-8 must give one value of ``eps``: an ``eps`` outside the square root (``s / (s + eps)``) gives
    ``2 s eps + eps^2`` and a variance other than the biased one gives ``eps + c s^2``, both of which change
    with ``s``;
  - the running update ``r_k = (1 - w_k) r_{k-1} + w_k b_k`` (eq. ``eq-running-update``): two training steps
    on batches of known mean and variance give ``w_1`` and ``w_2`` (constant ``w``, or ``1/k`` for the
    cumulative average), and the first step's variance update gives the factor ``f`` on the biased batch
    variance, 1 (biased) or ``m / (m - 1)`` (unbiased);
  - the initial running mean and variance.

  With nothing declared these are ``INFO`` lines. An adapter that declares the ``Convention`` it claims
  (``adapter.convention``) gets ``PASS``/``FAIL`` on each, within a tolerance derived from the same error
  model as the bounds (``bnref.testing``).
* its **float32 accuracy** against the float64 oracle run under the *measured* convention (so that the
  numerics are judged apart from the conventions): the training output, the gradients (if the adapter gives
  them), the running mean and variance over three steps and the inference output, each against the bound of
  ``bnref.testing`` (``training_bounds``, ``running_mean_bound``, ``running_var_bound``,
  ``inference_bound``; derived in the book's appendix ``ch-bounds``), three seeds.
* its **edge cases**: a training batch with one value per channel (what it does), a constant channel (the
  output must be ``beta``, within the bound), channels at ``|mean|/std`` from 1 to 1e4 (the largest ratio at
  which the training output stays within its bound; a one-pass variance ``E[x^2] - E[x]^2`` loses it,
  appendix eq. ``eq-bound-two-pass``), and float16 / bfloat16 inputs (the output dtype, and the output
  against the bound for that input dtype).

The ``Report`` renders as a text table (``to_text``), a Markdown table (``to_markdown``) and JSON
(``to_dict``/``to_json``, ``Report.from_dict``). ``to_text(numbers=False)`` leaves out the measured errors,
which depend on the CPU's kernels, and keeps the verdicts, the conventions and the bounds.

Writing an adapter (a subclass of ``Adapter``; inputs arrive as float64 NumPy arrays holding values that are
exact in the dtype given to ``create``; return anything NumPy, torch, TensorFlow or JAX)::

    class MyAdapter(Adapter):
        name, layout = "my BN", "NC"                  # channels on axis 1
        def create(self, num_features, dtype):       # a fresh layer, default parameters
            self.bn = MyBN(num_features, dtype=dtype)
        def train_forward(self, x):                  # training mode: batch statistics, running update
            return self.bn(x, training=True)
        def infer_forward(self, x):                  # inference mode: running statistics
            return self.bn(x, training=False)
        def running_stats(self):
            return self.bn.running_mean, self.bn.running_var

Optional: ``set_params(gamma, beta)`` and ``backward(x, dy) -> (dx, dgamma, dbeta)``; a ``convention`` to be
held to. The shipped adapters (PyTorch, Keras on any backend, Flax, the from-scratch layers) live in
``bnref.check.adapters``; ``adapter_for(name)`` builds one and ``run(name)`` checks it, Keras in a
subprocess with ``KERAS_BACKEND`` set. Planted faults for demonstration: ``PlantedFault``.

Command line: ``python -m bnref.conformance torch|keras-tensorflow|keras-jax|keras-torch|flax|flax-exact|
bnref-torch|bnref-keras|bnref-jax [--json PATH]``.

This module imports NumPy only; each adapter imports its framework when it is created.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnref.check.agreement import Batches, Case, Trace, compare_trace, make_batches
from bnref.check.agreement import _round_to as _round
from bnref.conventions import PYTORCH, Convention
from bnref.reference import batch_norm_backward, batch_norm_forward
from bnref.testing import (
    BOUND_C,
    channel_summaries,
    machine_eps,
    reduction_error,
    running_mean_bound,
    running_var_bound,
)

__all__ = [
    "Adapter",
    "Line",
    "Report",
    "check",
    "PlantedFault",
    "FAULTS",
    "NAMES",
    "adapter_for",
    "run",
    "run_many",
    "ZH",
    "RATIOS",
    "SEEDS",
    "SWEEP",
]

#: The |mean|/std ratios of the sweep.
RATIOS: tuple[float, ...] = (1.0, 3.0, 100.0, 1e3, 1e4)
#: Seeds behind every accuracy verdict (the project's rule: at least three).
SEEDS: tuple[int, ...] = (0, 1, 2)
#: The implementations the command line knows (adapters in ``bnref.check.adapters``).
NAMES: tuple[str, ...] = (
    "torch",
    "keras-tensorflow",
    "keras-jax",
    "keras-torch",
    "flax",
    "flax-exact",
    "bnref-torch",
    "bnref-keras",
    "bnref-jax",
)
#: The Chinese words for the words a report glues into prose (verdicts and convention names).
ZH: dict[str, str] = {
    "PASS": "通过",
    "FAIL": "未通过",
    "INFO": "信息",
    "biased": "有偏",
    "unbiased": "无偏",
    "cumulative": "累积平均",
    "constant": "常数",
    "raises": "报错",
    "returns beta": "返回 beta",
    "returns NaN": "返回 NaN",
    "not supported": "不支持",
}

_F32 = "float32"
#: The name of the line of the |mean|/std sweep.
SWEEP = "|mean|/std sweep"
#: Every probe holds _M values in each of _C channels (one value per channel aside), so that a compiling framework
#: (JAX, XLA) compiles one shape; small enough to cost milliseconds, large enough for m/(m-1) = 1.03 to be read.
_M, _C = 32, 5


# ----------------------------------------------------------------------------------------------------
# The adapter protocol
# ----------------------------------------------------------------------------------------------------


class Adapter:
    """How ``check`` drives one BN implementation. Subclass it and fill in four methods (two more optional).

    Attributes
    ----------
    name : str
        Shown in the report.
    layout : str or None
        The input layout as letters, ``"N"`` for the batch, ``"C"`` for the channels, any other letters for
        the remaining axes: ``"NC"``, ``"NCL"``, ``"NCHW"``, ``"NHWC"``. None: the channel axis is inferred
        by probing inputs of ``ndim`` dimensions.
    ndim : int
        The rank of the inputs when ``layout`` is None.
    convention : Convention or None
        The convention the implementation claims (eps, running-average weight, running-variance bias). Given,
        each inferred convention is a PASS/FAIL line against it; None, an INFO line.

    Methods
    -------
    create(num_features, dtype)
        Make a fresh layer (running mean and variance at their initial values, default parameters) for
        ``num_features`` channels and inputs of ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"``,
        ``"float64"``). Raise any exception for a dtype the implementation does not take.
    train_forward(x) -> y
        Training mode: normalise with the batch statistics and update the running statistics. ``x`` is a
        float64 NumPy array whose values are exact in ``dtype``; convert it to your own type.
    infer_forward(x) -> y
        Inference mode: normalise with the running statistics.
    running_stats() -> (mean, var)
        The running estimates, shape (C,).
    set_params(gamma, beta)  (optional)
        Set the scale and shift, float64 arrays of shape (C,) exact in float32.
    backward(x, dy) -> (dx, dgamma, dbeta)  (optional)
        The gradients of a training-mode forward at ``x`` for the upstream gradient ``dy``.
    describe() -> str
        A header line: the framework, its version and backend, the layer.
    """

    name: str = "adapter"
    layout: str | None = "NC"
    ndim: int = 2
    convention: Convention | None = None

    def describe(self) -> str:
        return self.name

    def create(self, num_features: int, dtype: str) -> None:
        raise NotImplementedError

    def train_forward(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def infer_forward(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def running_stats(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        raise NotImplementedError

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        raise NotImplementedError


def _optional(adapter: object, method: str) -> Callable | None:
    """The adapter's ``method`` if it provides one (an ``Adapter`` subclass must override the stub)."""
    fn = getattr(adapter, method, None)
    if fn is None:
        return None
    if isinstance(adapter, Adapter) and getattr(type(adapter), method) is getattr(Adapter, method):
        return None
    return fn


def _dtype_label(a: object) -> str:
    """The floating-point type of an array of any framework, as a name: "float32", "bfloat16", ..."""
    dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    found = re.search(r"bfloat16|float16|float32|float64", str(dtype))
    return found.group(0) if found else str(dtype)


def _f64(a: object) -> np.ndarray:
    """Any framework's array as a float64 NumPy array (torch tensors through ``.detach()``)."""
    if hasattr(a, "detach"):  # torch.Tensor (bfloat16 has no NumPy type)
        a = a.detach().to("cpu").double().numpy()
    return np.array(a, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"


def _jsonable(obj: Any) -> Any:
    """``obj`` as JSON would give it back: tuples as lists, NumPy scalars and arrays as Python numbers and lists."""

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray | np.generic):
            return o.tolist()
        raise TypeError(f"not JSON-serialisable: {type(o).__name__}")

    return json.loads(json.dumps(obj, default=default))


@dataclass(frozen=True)
class Line:
    """One line of a report.

    Attributes
    ----------
    section : str
        ``"layout"``, ``"conventions"``, ``"float32 accuracy"``, ``"edge cases"`` or ``"half precision"``.
    check : str
        What is checked.
    verdict : str
        ``"PASS"``, ``"FAIL"`` or ``"INFO"`` (a convention with nothing to hold it to, a behaviour).
    measured : str
        What was measured, as text that is the same on every CPU (a convention, a verdict-derived value).
    bound : str
        The bound or the declared value it is held to ("" if none).
    numbers : str
        Measured errors that depend on the CPU's kernels (``to_text(numbers=False)`` leaves them out).
    ratio : float or None
        The worst error / bound (the line passes when it is at most 1), where there is one.
    detail : dict
        Everything else, JSON-ready (estimates per channel, errors per ratio, ...).
    """

    section: str
    check: str
    verdict: str
    measured: str
    bound: str = ""
    numbers: str = ""
    ratio: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in (PASS, FAIL, INFO):
            raise ValueError(f"verdict must be PASS, FAIL or INFO; got {self.verdict!r}")
        object.__setattr__(self, "detail", _jsonable(self.detail))
        object.__setattr__(self, "ratio", None if self.ratio is None else float(self.ratio))

    @property
    def verdict_zh(self) -> str:
        return ZH[self.verdict]


@dataclass(frozen=True)
class Report:
    """The result of ``check``: a header naming the implementation, its versions and backend, and the lines.

    ``convention`` holds the measured convention (eps, new-value weights, variance factor, initial values).
    """

    implementation: str
    header: str
    lines: tuple[Line, ...]
    convention: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.lines))
        object.__setattr__(self, "convention", _jsonable(self.convention))

    @property
    def passed(self) -> bool:
        """No line failed."""
        return all(li.verdict != FAIL for li in self.lines)

    @property
    def failures(self) -> list[str]:
        return [li.check for li in self.lines if li.verdict == FAIL]

    def line(self, check: str) -> Line:
        """The line named ``check`` (ValueError if there is none)."""
        for li in self.lines:
            if li.check == check:
                return li
        raise ValueError(f"no line {check!r} in the report of {self.implementation}; lines: {self.checks}")

    @property
    def checks(self) -> list[str]:
        return [li.check for li in self.lines]

    def verdicts(self) -> dict[str, str]:
        """``{check: verdict}``, the part of a report that is the same on every CPU."""
        return {li.check: li.verdict for li in self.lines}

    def _rows(self, numbers: bool) -> list[list[str]]:
        rows = []
        for li in self.lines:
            measured = li.measured
            if numbers and li.numbers:
                measured = f"{measured}; {li.numbers}" if measured else li.numbers
            rows.append([li.section, li.check, li.verdict, measured or "-", li.bound or "-"])
        return rows

    def to_text(self, numbers: bool = True) -> str:
        """A plain-text table; ``numbers=False`` leaves out the CPU-dependent measured errors."""
        header = ["section", "check", "verdict", "measured", "bound / declared"]
        rows = self._rows(numbers)
        widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
        out = [self.header, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        verdict = "no line failed" if self.passed else f"FAILED: {', '.join(self.failures)}"
        out.append(f"{self.implementation}: {verdict}")
        return "\n".join(out)

    def to_markdown(self, numbers: bool = True) -> str:
        """A Markdown table under a bold header line."""
        esc = [[c.replace("|", "\\|") for c in r] for r in self._rows(numbers)]
        out = [
            f"**{self.header}**",
            "",
            "| section | check | verdict | measured | bound / declared |",
            "|---" * 5 + "|",
        ]
        out += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "bnref.check.conformance/1",
            "implementation": self.implementation,
            "header": self.header,
            "passed": self.passed,
            "convention": self.convention,
            "lines": [dataclasses.asdict(li) for li in self.lines],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        if d.get("schema") != "bnref.check.conformance/1":
            raise ValueError(f"not a bnref.check.conformance/1 report: schema {d.get('schema')!r}")
        lines = tuple(Line(**li) for li in d["lines"])
        return cls(d["implementation"], d["header"], lines, d.get("convention", {}))


# ----------------------------------------------------------------------------------------------------
# Layouts: probe data are built as (m, C) arrays, one column per channel, and laid out as the adapter wants
# ----------------------------------------------------------------------------------------------------


def _layout_shape(layout: str, m: int, channels: int) -> tuple[int, ...]:
    """The shape of ``layout`` holding ``m`` values per channel: each axis but N and C of size 2 (1 if m is odd)."""
    others = len(layout) - 2
    side = 2 if m % 2**others == 0 else 1
    sizes = {"N": m // side**others, "C": channels}
    return tuple(sizes.get(ch, side) for ch in layout)


def _to_layout(a2d: np.ndarray, layout: str) -> np.ndarray:
    """An (m, C) array as an array of ``layout`` (the inverse of ``_to_2d``)."""
    m, c = a2d.shape
    shape = _layout_shape(layout, m, c)
    axis = layout.index("C")
    last = tuple(n for d, n in enumerate(shape) if d != axis) + (c,)
    return np.moveaxis(a2d.reshape(last), -1, axis)


def _to_2d(a: np.ndarray, axis: int) -> np.ndarray:
    """An array with channels on ``axis`` as (m, C), one column per channel."""
    a = np.asarray(a)
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


def _layout_for(ndim: int, axis: int) -> str:
    """The layout string of an input of ``ndim`` dims with channels on ``axis``: NC, NCL / NLC, NCHW / NHWC, ..."""
    letters = iter({2: "", 3: "L", 4: "HW", 5: "DHW"}.get(ndim, "ABCDEFGHIJKLM".replace("C", "")[: ndim - 2]))
    return "".join("N" if d == 0 else "C" if d == axis else next(letters) for d in range(ndim))


# ----------------------------------------------------------------------------------------------------
# Small helpers of the probes
# ----------------------------------------------------------------------------------------------------


def _err_text(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:100]}"


def _snap(value: float, tol: float) -> float:
    """The shortest decimal (1 to 6 significant digits) within ``tol`` of ``value``; ``value`` if none is."""
    if not math.isfinite(value) or value == 0:
        return value
    for digits in range(1, 7):
        short = float(f"{value:.{digits - 1}e}")
        if abs(short - value) <= tol:
            return short
    return value


def _g(v: float) -> str:
    return f"{v:.3g}"


def _fresh(adapter: Any, channels: int, dtype: str, gamma: np.ndarray | None = None, beta=None) -> None:
    """``create`` a fresh layer, and set gamma and beta if given and the adapter can."""
    adapter.create(channels, dtype)
    setter = _optional(adapter, "set_params")
    if setter is not None and gamma is not None:
        setter(np.asarray(gamma, np.float64), np.asarray(beta, np.float64))


def _params(adapter: Any, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5^2) in float32 if the adapter can take them, else 1 and 0."""
    if _optional(adapter, "set_params") is None:
        return np.ones(channels), np.zeros(channels)
    rng = np.random.default_rng(1000 + seed)
    return _round(rng.uniform(0.5, 1.5, channels), _F32), _round(rng.normal(0.0, 0.5, channels), _F32)


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


def _axis_names(ndim: int, layout: str | None) -> str:
    return layout if layout else "".join(f"{d}" for d in range(ndim))


def _probe_layout(adapter: Any) -> tuple[str, Line]:
    """Find the axes the implementation reduces, and its channel axis; return the layout string and a line.

    The probe has distinct axis sizes, a spread of 10 (variance 100, so that any eps up to 1e-2 changes the output
    by less than 1e-4 relative) and means that differ along axis 1. The oracle normalises it over every
    candidate set of axes (keep one axis, keep the batch and one axis, keep none); the output of a BN matches
    the candidate that keeps only the channel axis, to float32 precision, and no other by far.
    """
    layout = adapter.layout
    ndim = len(layout) if layout else int(adapter.ndim)
    sizes = (6, 3, 4, 5, 7, 2)[:ndim]
    rng = np.random.default_rng(7)
    x = _round(
        10.0 * rng.standard_normal(sizes) + rng.normal(0, 20, sizes[1]).reshape((1, -1) + (1,) * (ndim - 2)), _F32
    )
    candidates = [(d,) for d in range(ndim)] + [(0, d) for d in range(1, ndim)] + [()]
    names = _axis_names(ndim, layout)

    def matches(y: np.ndarray) -> list[tuple[int, ...]]:
        out = []
        for keep in candidates:
            ref = _normalise_over(x, keep)
            if y.shape == ref.shape and np.max(np.abs(y - ref)) <= 1e-3 * max(np.max(np.abs(ref)), 1.0):
                out.append(keep)
        return out

    tried: dict[int, str] = {}
    axes_to_try = [layout.index("C")] if layout else list(range(ndim))
    for axis in axes_to_try:
        try:
            _fresh(adapter, sizes[axis], _F32, np.ones(sizes[axis]), np.zeros(sizes[axis]))
            y = _f64(adapter.train_forward(x))
        except Exception as err:  # an implementation refusing the shape is what the probe learns
            tried[axis] = _err_text(err)
            continue
        found = matches(y)
        tried[axis] = f"output matches normalising with axes {found} kept"
        if found == [(axis,)]:
            reduced = "".join(names[d] for d in range(ndim) if d != axis)
            chosen = layout or _layout_for(ndim, axis)
            text = f"reduces {reduced} of {names}, channels on axis {axis}"
            verdict = PASS if layout else INFO
            return chosen, Line("layout", "reduced axes", verdict, text, f"declared {layout}" if layout else "")
        if layout:
            kept = ", ".join("".join(names[d] for d in k) or "none" for k in found) or "no candidate"
            text = f"keeps {kept} of {names} (shape {sizes})"
            return layout, Line("layout", "reduced axes", FAIL, text, f"declared {layout}", detail={"tried": tried})
    raise ValueError(f"{adapter.name}: no channel axis of a {ndim}-D input behaves as BN: {tried}")


# ----------------------------------------------------------------------------------------------------
# Convention probes
# ----------------------------------------------------------------------------------------------------

#: The spreads of the eps probe: s^2 from 1 to 1e-8, so that some channel has s^2 near any eps in [1e-9, 1].
_EPS_SPREADS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class _Measured:
    eps: float
    eps_consistent: bool
    w1: float
    w2: float
    w_tol: tuple[float, float]
    factor: float
    factor_tol: float
    m: int
    init_mean: float
    init_var: float

    @property
    def rule(self) -> str:
        """ "constant", "cumulative" or "other"."""
        if abs(self.w1 - self.w2) <= self.w_tol[0] + self.w_tol[1]:
            return "constant"
        if abs(self.w1 - 1.0) <= self.w_tol[0] and abs(self.w2 - 0.5) <= self.w_tol[1]:
            return "cumulative"
        return "other"

    @property
    def bias(self) -> str:
        if abs(self.factor - 1.0) <= self.factor_tol:
            return "biased"
        if abs(self.factor - self.m / (self.m - 1)) <= self.factor_tol:
            return "unbiased"
        return "other"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rule": self.rule, "bias": self.bias}


def _probe_eps(adapter: Any, layout: str) -> tuple[float, bool, dict[str, Any]]:
    """eps from channels of values +-s (mean 0, biased variance s^2 exactly), and whether the channels agree.

    ``|y| = t = s / sqrt(s^2 + eps)`` gives ``eps = s^2 (1/t^2 - 1)``. The output's error is at most
    ``e(m) t`` (eq-bound-y with r = 0, X = t, gamma = 1, beta = 0), so to first order each estimate is good to
    ``2 e(m) / (1 - t^2)`` relative; channels with ``1 - t^2 < 1e-2`` (eps negligible against s^2) say
    nothing and are skipped.
    """
    m, c = _M, len(_EPS_SPREADS)
    spreads = _round(np.array(_EPS_SPREADS), _F32)
    signs = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    x2d = signs * spreads[None, :]
    _fresh(adapter, c, _F32, np.ones(c), np.zeros(c))
    y2d = _to_2d(_f64(adapter.train_forward(_to_layout(x2d, layout))), layout.index("C"))
    t = np.mean(np.abs(y2d), axis=0)
    e = reduction_error(_F32, m)
    estimates, tols = [], []
    for s, ti in zip(spreads, t, strict=True):
        if 0 < ti and 1 - ti**2 >= 1e-2 and math.isfinite(ti):
            est = s**2 * (1 / ti**2 - 1)
            estimates.append(est)
            tols.append(2 * e / (1 - ti**2) * est + BOUND_C * machine_eps(_F32) * est)
    detail = {"spreads": spreads.tolist(), "t": t.tolist(), "estimates": estimates}
    if not estimates:
        return 0.0, True, {**detail, "note": "eps below what the probe resolves (about 1e-10)"}
    best = int(np.argmin(np.array(tols) / np.array(estimates)))
    consistent = all(abs(a - estimates[best]) <= ta + tols[best] for a, ta in zip(estimates, tols, strict=True))
    return float(_snap(estimates[best], tols[best])), consistent, {**detail, "tolerance": tols[best]}


def _probe_running(adapter: Any, layout: str, eps: float) -> _Measured:
    """w_1, w_2 and the variance factor f from two training steps on batches of known mean and variance.

    Channel values are ``mu +- s`` (m = 32), so the batch mean is ``mu`` and the biased variance ``s^2`` exactly.
    After step k the running mean is ``r_k = (1 - w_k) r_{k-1} + w_k mu_k``, so ``w_k = (r_k - r_{k-1}) /
    (mu_k - r_{k-1})``, and after step 1 the running variance is ``(1 - w_1) v_0 + w_1 f s_1^2``. The
    tolerances are the bounds of one update (``running_mean_bound``, ``running_var_bound``, eq-bound-running)
    carried through these quotients.
    """
    m, c = _M, _C
    mus = (np.array([2.0, 4.0, -3.0, 1.5, -6.0]), np.array([-1.0, 0.5, 6.0, -2.0, 3.0]))
    spreads = (np.array([3.0, 1.0, 2.0, 0.5, 1.5]), np.array([0.5, 2.0, 1.0, 1.0, 2.5]))
    signs = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    _fresh(adapter, c, _F32, np.ones(c), np.zeros(c))
    r0, v0 = (_f64(a) for a in adapter.running_stats())
    prev_mean, prev_var = r0, v0
    ws, tols, stats = [], [], []
    for mu, s in zip(mus, spreads, strict=True):
        x2d = mu[None, :] + signs * s[None, :]
        adapter.train_forward(_to_layout(x2d, layout))
        rm, rv = (_f64(a) for a in adapter.running_stats())
        w = (rm - prev_mean) / (mu - prev_mean)
        x_hat = signs * (s / np.sqrt(s**2 + eps))[None, :] * np.ones((m, c))
        summ = channel_summaries(x_hat, np.zeros((m, c)), mu, s**2, eps)
        b_mean = running_mean_bound(np.zeros(c), float(np.median(w)), summ, mu, rm, _F32)
        ws.append(w)
        tols.append(b_mean / np.abs(mu - prev_mean))
        stats.append((rm, rv, summ, prev_var))
        prev_mean, prev_var = rm, rv
    w1, w2 = float(np.median(ws[0])), float(np.median(ws[1]))
    tol1, tol2 = float(np.max(tols[0])), float(np.max(tols[1]))
    # the variance factor f from step 1: rv_1 = (1 - w_1) v_0 + w_1 f s_1^2
    rv1, summ1 = stats[0][1], stats[0][2]
    v1 = spreads[0] ** 2
    f = (rv1 - (1 - w1) * v0) / (w1 * v1)
    b_var = running_var_bound(np.zeros(c), w1, summ1, mus[0], v1, rv1, _F32, unbiased=True)
    f_tol = (b_var + tol1 * (np.abs(v0) + np.abs(f) * v1)) / (abs(w1) * v1) if w1 else np.full(c, np.inf)
    consistent = np.all(np.abs(ws[0] - w1) <= tols[0] + tol1) and np.all(np.abs(ws[1] - w2) <= tols[1] + tol2)
    if not consistent:
        w1 = w2 = math.nan  # the channels disagree: no running average of this form
    return _Measured(
        eps=eps,
        eps_consistent=True,
        w1=w1,
        w2=w2,
        w_tol=(tol1, tol2),
        factor=float(np.median(f)),
        factor_tol=float(np.max(f_tol)),
        m=m,
        init_mean=float(np.median(r0)),
        init_var=float(np.median(v0)),
    )


def _convention_lines(meas: _Measured, eps_detail: dict, declared: Convention | None) -> tuple[list[Line], Convention]:
    """The convention lines, and the convention the accuracy checks run under (declared where it matches)."""
    lines = []
    eps_tol = float(eps_detail.get("tolerance", 0.0))

    def held(check: str, ok: bool, measured: str, declared_text: str, detail: dict | None = None) -> Line:
        if declared is None:
            return Line("conventions", check, INFO, measured, "", detail=detail or {})
        return Line("conventions", check, PASS if ok else FAIL, measured, declared_text, detail=detail or {})

    # eps enters as sqrt(var + eps), with the biased batch variance: one value from every channel
    consistency = Line(
        "conventions",
        "eps inside sqrt(var + eps)",
        PASS if meas.eps_consistent else FAIL,
        "one eps from every spread" if meas.eps_consistent else "eps estimates change with the spread",
        "estimates agree within 2 e(m) / (1 - t^2)",
        detail=eps_detail,
    )
    lines.append(consistency)
    eps_ok = declared is not None and abs(meas.eps - declared.eps) <= eps_tol + 1e-12 * declared.eps
    lines.append(held("eps", eps_ok, f"eps = {meas.eps:.3g}", f"{declared.eps:g}" if declared else "", eps_detail))
    eps_used = declared.eps if eps_ok else meas.eps

    # the running-average rule
    w1, w2, rule = meas.w1, meas.w2, meas.rule
    w = _snap(w1, meas.w_tol[0]) if rule == "constant" else math.nan
    if rule == "constant":
        text = f"w = {w:.6g} (torch momentum {w:.6g}; Keras/Flax momentum {_g(1 - w)})"
    elif rule == "cumulative":
        text = "w_k = 1/k (cumulative average)"
    else:
        text = f"w_1 = {_g(w1)}, w_2 = {_g(w2)}: no rule r = (1 - w) r + w b"
    ok = False
    declared_text = ""
    if declared is not None:
        d1, d2 = declared.new_value_weight(1), declared.new_value_weight(2)
        ok = abs(w1 - d1) <= meas.w_tol[0] and abs(w2 - d2) <= meas.w_tol[1]
        declared_text = "w_k = 1/k" if declared.momentum is None else f"w = {d1:.6g}"
    lines.append(held("running-average weight", ok, text, declared_text, {"w1": w1, "w2": w2, "tol": meas.w_tol}))

    bias = meas.bias
    factor_text = {
        "biased": "biased (factor 1)",
        "unbiased": f"unbiased (factor m/(m-1) = {_g(meas.m / (meas.m - 1))})",
    }
    text = factor_text.get(bias, f"factor {_g(meas.factor)} on the biased variance (m = {meas.m})")
    ok = declared is not None and bias == declared.running_var
    lines.append(
        held(
            "running variance fed",
            ok,
            text,
            declared.running_var if declared else "",
            {"factor": meas.factor, "tol": meas.factor_tol, "m": meas.m},
        )
    )
    init_text = f"mean {_g(meas.init_mean)}, var {_g(meas.init_var)}"
    ok = declared is not None and (meas.init_mean, meas.init_var) == (declared.init_mean, declared.init_var)
    lines.append(
        held(
            "initial running stats",
            ok,
            init_text,
            f"mean {declared.init_mean:g}, var {declared.init_var:g}" if declared else "",
        )
    )

    used = Convention(
        name="measured",
        eps=eps_used if eps_used > 0 else 1e-300,
        momentum=None if rule == "cumulative" else (w if math.isfinite(w) and 0 <= w <= 1 else 0.0),
        momentum_weights="new",
        running_var="unbiased" if bias == "unbiased" else "biased",
        axis=1,
        init_mean=meas.init_mean,
        init_var=meas.init_var,
    )
    return lines, used


# ----------------------------------------------------------------------------------------------------
# Accuracy against the oracle
# ----------------------------------------------------------------------------------------------------


def _trace(adapter: Any, case: Case, data: Batches, quantities: Sequence[str], with_grads: bool) -> Trace:
    """Drive the adapter through ``data``: training steps (y, running stats), inference, and gradients."""
    trace: Trace = {q: [] for q in quantities}
    c = case.channels
    _fresh(adapter, c, case.dtype, data.gamma, data.beta)
    for x in data.xs:
        y = adapter.train_forward(x)
        trace["y"].append(_f64(y))
        if "running_mean" in trace:
            rm, rv = adapter.running_stats()
            trace["running_mean"].append(_f64(rm).reshape(c))
            trace["running_var"].append(_f64(rv).reshape(c))
    if "y_inference" in trace:
        trace["y_inference"].append(_f64(adapter.infer_forward(data.x_inference)))
    if with_grads:
        _fresh(adapter, c, case.dtype, data.gamma, data.beta)
        for x, dy in zip(data.xs, data.dys, strict=True):
            dx, dgamma, dbeta = adapter.backward(x, dy)
            trace["dx"].append(_f64(dx))
            trace["dgamma"].append(_f64(dgamma).reshape(c))
            trace["dbeta"].append(_f64(dbeta).reshape(c))
    return trace


def _data(adapter: Any, case: Case) -> Batches:
    data = make_batches(case)
    gamma, beta = _params(adapter, case.channels, case.seed)
    return dataclasses.replace(data, gamma=gamma, beta=beta)


def _case(layout: str, m: int, channels: int, **kw: Any) -> Case:
    return Case(_layout_shape(layout, m, channels), axis=layout.index("C"), **kw)


def _worst(diffs: list[dict[str, Any]], q: str) -> tuple[float, float, float]:
    """(worst ratio, its max-norm relative error, its relative bound) of quantity ``q`` over seeds."""
    items = [d[q] for d in diffs]
    worst = max(items, key=lambda d: d.ratio if math.isfinite(d.ratio) else math.inf)
    return float(worst.ratio), float(worst.max_rel), float(worst.rel_bound)


def _ratio_line(
    section: str, check: str, ratio: float, rel: float, rel_bound: float, what: str = "", bound: str = "eq-bound-y"
) -> Line:
    """A PASS/FAIL line for a worst error / bound ratio. ``bound`` names the bound (the same on every CPU); the
    relative bound itself goes with the measured numbers, since it is taken at the worst seed and step."""
    ok = math.isfinite(ratio) and ratio <= 1.0
    if math.isfinite(rel):
        numbers = f"max rel err {rel:.1e}, bound {rel_bound:.1e} (err/bound {ratio:.2g})"
    else:
        numbers = f"NaN or inf in the output (bound {rel_bound:.1e})"
    return Line(section, check, PASS if ok else FAIL, what, bound, numbers, float(ratio))


#: The bound of each quantity (labels of the book's appendix ch-bounds).
_BOUND_OF = {
    "y": "eq-bound-y",
    "dx": "eq-bound-dx",
    "dgamma": "eq-bound-dgamma",
    "dbeta": "eq-bound-dbeta",
    "running_mean": "eq-bound-running",
    "running_var": "eq-bound-running",
    "y_inference": "eq-bound-inference",
}


_ACCURACY = ("y", "dx", "dgamma", "dbeta", "running_mean", "running_var", "y_inference")


def _accuracy_lines(adapter: Any, layout: str, conv: Convention, seeds: Sequence[int]) -> list[Line]:
    with_grads = _optional(adapter, "backward") is not None
    quantities = [q for q in _ACCURACY if with_grads or q not in ("dx", "dgamma", "dbeta")]
    diffs = []
    for seed in seeds:
        case = _case(layout, _M, _C, dtype=_F32, steps=3, seed=seed)
        data = _data(adapter, case)
        trace = _trace(adapter, case, data, quantities, with_grads)
        for q in _ACCURACY:
            trace.setdefault(q, [])
        got = compare_trace(case, conv, trace, data)
        diffs.append({q: got[q] for q in quantities})
    m = _case(layout, _M, _C).m
    names = {
        "y": "training output y",
        "dx": "gradient dx",
        "dgamma": "gradient dgamma",
        "dbeta": "gradient dbeta",
        "running_mean": "running mean (3 steps)",
        "running_var": "running variance (3 steps)",
        "y_inference": "inference output",
    }
    lines = [
        _ratio_line("float32 accuracy", names[q], *_worst(diffs, q), f"m = {m}, {len(seeds)} seeds", _BOUND_OF[q])
        for q in quantities
    ]
    if not with_grads:
        lines.append(Line("float32 accuracy", "gradients", INFO, "not checked: the adapter has no backward"))
    return lines


def _one_value_line(adapter: Any, layout: str, conv: Convention) -> Line:
    """A training batch with one value per channel: what the implementation does (INFO).

    With one value the batch variance is 0 and ``x_hat = (x - mean) / sqrt(eps)`` is 0 in exact arithmetic, so
    a layer that returns something returns ``beta``. ``x - mean`` is then a cancellation: its error, about
    ``e(1) |x|``, is magnified by ``1 / sqrt(eps)``, which is the bound eq-bound-y gives for r = |x| / sqrt(eps).
    """
    c = _C
    gamma, beta = _params(adapter, c, 0)
    x2d = _round(np.array([[0.5, -1.0, 2.0, 3.0, -0.25]]), _F32)
    try:
        _fresh(adapter, c, _F32, gamma, beta)
        y = _to_2d(_f64(adapter.train_forward(_to_layout(x2d, layout))), layout.index("C"))
    except Exception as err:
        return Line("edge cases", "one value per channel", INFO, f"raises {_err_text(err)}")
    if not np.all(np.isfinite(y)):
        return Line("edge cases", "one value per channel", INFO, "returns NaN or inf")
    bound = reduction_error(_F32, 1) * (np.abs(gamma) * np.abs(x2d[0]) / math.sqrt(conv.eps) + np.abs(beta))
    if np.all(np.abs(y[0] - beta) <= bound):
        return Line("edge cases", "one value per channel", INFO, "returns beta (var = 0, x_hat = 0)")
    return Line(
        "edge cases",
        "one value per channel",
        INFO,
        f"returns y = {np.round(y[0], 4).tolist()}, not beta = {beta.tolist()}",
    )


def _y_diff(adapter: Any, case: Case, data: Batches, conv: Convention) -> Any:
    """One training step of a fresh layer on ``data``: its output against the float64 reference (a ``Diff``)."""
    trace = _trace(adapter, case, data, ["y"], False)
    for q in _ACCURACY:
        trace.setdefault(q, [])
    return compare_trace(case, conv, trace, data)["y"]


def _constant_channel_line(adapter: Any, layout: str, conv: Convention, seeds: Sequence[int]) -> Line:
    """A channel whose m values are all equal: its variance is 0, so ``x_hat = 0`` and y must be beta (eq-bound-y).

    The value, 2.5, and its square are sums of few powers of two, so every sum of up to m = 32 copies is exact in
    any order and any correct formula, the one-pass one included, gets a variance of exactly 0: the line checks
    how a layer handles ``var = 0`` (no division by zero, eps inside the square root), the same on every CPU.
    Channels far from zero are the sweep's business.
    """
    diffs = []
    for seed in seeds:
        case = _case(layout, _M, _C, dtype=_F32, steps=1, seed=seed, mode="train")
        data = _data(adapter, case)
        x2d = _to_2d(data.xs[0], case.channel_axis).copy()
        x2d[:, 1] = 2.5
        diffs.append(_y_diff(adapter, case, dataclasses.replace(data, xs=[_to_layout(x2d, layout)]), conv))
    worst = max(diffs, key=lambda d: d.ratio if math.isfinite(d.ratio) else math.inf)
    return _ratio_line(
        "edge cases", "constant channel", float(worst.ratio), float(worst.max_rel), float(worst.rel_bound), "y = beta"
    )


def _sweep_line(adapter: Any, layout: str, conv: Convention, ratios: Sequence[float], seeds: Sequence[int]) -> Line:
    """The float32 training output at |mean|/std = ratio, against eq-bound-y, for every ratio and seed.

    The line passes when every ratio is within the bound for every seed; it reports the largest ratio up to which
    all are (0 if the first is not).
    """
    per_ratio = []
    for ratio in ratios:
        diffs = []
        for seed in seeds:
            case = _case(layout, _M, _C, dtype=_F32, steps=1, seed=seed, loc=ratio, mode="train")
            diffs.append(_y_diff(adapter, case, _data(adapter, case), conv))
        per_ratio.append((ratio, max(diffs, key=lambda d: d.ratio if math.isfinite(d.ratio) else math.inf)))
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
    worst = max((d for _, d in per_ratio), key=lambda d: d.ratio if math.isfinite(d.ratio) else math.inf)
    detail = {
        "ratios": list(ratios),
        "largest_within": largest,
        "err_over_bound": [float(d.ratio) for _, d in per_ratio],
        "max_rel": [float(d.max_rel) for _, d in per_ratio],
        "rel_bound": [float(d.rel_bound) for _, d in per_ratio],
    }
    numbers = "err/bound per ratio " + ", ".join(f"{r:g}: {d.ratio:.2g}" for r, d in per_ratio)
    verdict = PASS if first_fail is None else FAIL
    bound = "eq-bound-y (grows like |mean|/std)"
    return Line("edge cases", SWEEP, verdict, text, bound, numbers, float(worst.ratio), detail)


def _half_lines(adapter: Any, layout: str, conv: Convention, dtype: str, seeds: Sequence[int]) -> list[Line]:
    """Training output for float16 / bfloat16 inputs: its dtype (INFO) and its error against the bound."""
    diffs, out_dtype = [], ""
    for seed in seeds:
        case = _case(layout, _M, _C, dtype=dtype, steps=1, seed=seed, mode="train")
        data = _data(adapter, case)
        try:
            _fresh(adapter, case.channels, dtype, data.gamma, data.beta)
            y = adapter.train_forward(data.xs[0])
        except Exception as err:
            return [Line("half precision", f"{dtype} input", INFO, f"not supported: {_err_text(err)}")]
        out_dtype = _dtype_label(y)
        trace: Trace = {q: [] for q in _ACCURACY}
        trace["y"].append(_f64(y))
        diffs.append(compare_trace(case, conv, trace, data)["y"])
    worst = max(diffs, key=lambda d: d.ratio if math.isfinite(d.ratio) else math.inf)
    return [
        Line("half precision", f"{dtype} input: output dtype", INFO, out_dtype),
        _ratio_line(
            "half precision",
            f"{dtype} training output",
            float(worst.ratio),
            float(worst.max_rel),
            float(worst.rel_bound),
            f"m = {_M}, {len(seeds)} seeds",
            f"eq-bound-y + {dtype} rounding {machine_eps(dtype):.1e}",
        ),
    ]


# ----------------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------------


def check(
    adapter: Any,
    *,
    seeds: Sequence[int] = SEEDS,
    ratios: Sequence[float] = RATIOS,
    half_dtypes: Sequence[str] = ("float16", "bfloat16"),
) -> Report:
    """Check one BN implementation against the NumPy oracle; see the module docstring for every line.

    Parameters
    ----------
    adapter : Adapter (or any object with its methods)
    seeds : the seeds of every accuracy line (at least three for a verdict)
    ratios : the |mean|/std values of the sweep, increasing
    half_dtypes : the half-precision input types tried

    Returns
    -------
    Report
    """
    for method in ("create", "train_forward", "infer_forward", "running_stats"):
        if not callable(getattr(adapter, method, None)):
            raise ValueError(f"the adapter must have a method {method}(); see bnref.check.conformance.Adapter")
    if len(seeds) < 1 or not ratios or list(ratios) != sorted(ratios):
        raise ValueError("seeds must be non-empty and ratios non-empty and increasing")
    if adapter.layout is not None:
        layout = adapter.layout
        if not (isinstance(layout, str) and layout.count("N") == 1 and layout.count("C") == 1 and layout[0] == "N"):
            raise ValueError(f"layout must start with N and contain one C, e.g. 'NC', 'NCHW', 'NHWC'; got {layout!r}")
    name = getattr(adapter, "name", type(adapter).__name__)
    describe = getattr(adapter, "describe", None)
    header = describe() if callable(describe) else name

    layout, layout_line = _probe_layout(adapter)
    lines = [layout_line]
    eps, consistent, eps_detail = _probe_eps(adapter, layout)
    meas = dataclasses.replace(_probe_running(adapter, layout, eps if eps > 0 else 1e-5), eps_consistent=consistent)
    meas = dataclasses.replace(meas, eps=eps)
    conv_lines, conv = _convention_lines(meas, eps_detail, getattr(adapter, "convention", None))
    lines += conv_lines
    conv = conv.replace(axis=layout.index("C"))
    lines += _accuracy_lines(adapter, layout, conv, seeds)
    lines.append(_one_value_line(adapter, layout, conv))
    lines.append(_constant_channel_line(adapter, layout, conv, seeds))
    lines.append(_sweep_line(adapter, layout, conv, ratios, seeds))
    for dtype in half_dtypes:
        lines += _half_lines(adapter, layout, conv, dtype, seeds)
    measured = {**meas.as_dict(), "layout": layout, "eps_used": conv.eps}
    return Report(name, header, tuple(lines), measured)


# ----------------------------------------------------------------------------------------------------
# Planted faults: a NumPy BN with one deliberate mistake each, for demonstration and for the tests
# ----------------------------------------------------------------------------------------------------

#: The planted faults, each with the line of the report that should catch it.
FAULTS: dict[str, str] = {
    "biased-running-var": "running variance fed",
    "momentum-backwards": "running-average weight",
    "eps-outside-sqrt": "eps inside sqrt(var + eps)",
    "one-pass-variance": SWEEP,
}


class PlantedFault(Adapter):
    """A float32 NumPy BN on (N, C) inputs that claims PyTorch's convention, with one planted fault (or none).

    ``fault=None`` is the correct layer, the control: the two-pass batch statistics, ``y = gamma (x - mean) /
    sqrt(var + eps) + beta``, ``r = (1 - 0.1) r + 0.1 b`` with the unbiased variance fed to the running estimate.
    The faults, each a mistake found in real BN code:

    * ``"biased-running-var"``: the biased batch variance feeds the running estimate (PyTorch feeds m/(m-1) times it);
    * ``"momentum-backwards"``: ``r = momentum r + (1 - momentum) b`` with PyTorch's momentum 0.1 (Keras' reading);
    * ``"eps-outside-sqrt"``: ``(x - mean) / (sqrt(var) + eps)``;
    * ``"one-pass-variance"``: ``var = mean(x^2) - mean(x)^2`` in float32 (eq-fwd-one-pass).

    The backward pass is the reference's compact formula in float32. float16 inputs are computed in float32 and
    returned as float16; NumPy has no bfloat16 (``create`` raises).
    """

    layout = "NC"
    convention = PYTORCH

    def __init__(self, fault: str | None = None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)} (or None for the correct layer)")
        self.fault = fault
        self.name = f"planted fault: {fault}" if fault else "planted fault: none (the control)"

    def describe(self) -> str:
        return f"NumPy {np.__version__}: bnref.check.conformance.PlantedFault({self.fault!r}), float32, layout NC"

    def create(self, num_features: int, dtype: str) -> None:
        if dtype not in ("float16", "float32", "float64"):
            raise ValueError(f"NumPy has no {dtype}")
        self.dtype = np.dtype(dtype)
        self.cdtype = np.result_type(self.dtype, np.float32)
        self.gamma = np.ones(num_features, self.cdtype)
        self.beta = np.zeros(num_features, self.cdtype)
        self.running_mean = np.full(num_features, PYTORCH.init_mean, self.cdtype)
        self.running_var = np.full(num_features, PYTORCH.init_var, self.cdtype)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        self.gamma, self.beta = gamma.astype(self.cdtype), beta.astype(self.cdtype)

    def _stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.mean(x, axis=0)
        if self.fault == "one-pass-variance":
            return mean, np.mean(x * x, axis=0) - mean * mean
        return mean, np.mean((x - mean) ** 2, axis=0)

    def train_forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).astype(self.dtype).astype(self.cdtype)
        m = x.shape[0]
        if m < 2:
            raise ValueError("one value per channel: no variance")
        mean, var = self._stats(x)
        with np.errstate(invalid="ignore"):
            if self.fault == "eps-outside-sqrt":
                x_hat = (x - mean) / (np.sqrt(var) + PYTORCH.eps)
            else:
                x_hat = (x - mean) / np.sqrt(var + PYTORCH.eps)
        w = PYTORCH.momentum
        fed = var if self.fault == "biased-running-var" else var * (m / (m - 1))
        if self.fault == "momentum-backwards":
            self.running_mean = w * self.running_mean + (1 - w) * mean
            self.running_var = w * self.running_var + (1 - w) * fed
        else:
            self.running_mean = (1 - w) * self.running_mean + w * mean
            self.running_var = (1 - w) * self.running_var + w * fed
        self.running_mean = self.running_mean.astype(self.cdtype)
        self.running_var = self.running_var.astype(self.cdtype)
        return (self.gamma * x_hat + self.beta).astype(self.dtype)

    def infer_forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).astype(self.dtype).astype(self.cdtype)
        y = self.gamma * (x - self.running_mean) / np.sqrt(self.running_var + PYTORCH.eps) + self.beta
        return y.astype(self.dtype)

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.running_mean.copy(), self.running_var.copy()

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(x).astype(self.cdtype)
        _, cache = batch_norm_forward(x, self.gamma, self.beta, PYTORCH.eps, axis=1)
        return batch_norm_backward(np.asarray(dy).astype(self.cdtype), cache)


# ----------------------------------------------------------------------------------------------------
# The shipped adapters by name, Keras in a subprocess with its backend, and the command line
# ----------------------------------------------------------------------------------------------------

#: The framework each name runs on; a Keras name needs Keras imported with that backend (fixed at import).
_FAMILY = {
    "torch": "torch",
    "bnref-torch": "torch",
    "keras-torch": "torch",
    "flax": "jax",
    "flax-exact": "jax",
    "bnref-jax": "jax",
    "keras-jax": "jax",
    "keras-tensorflow": "tensorflow",
    "bnref-keras": "tensorflow",
}
_NEEDS_KERAS = ("keras-torch", "keras-jax", "keras-tensorflow", "bnref-keras")


def adapter_for(name: str) -> Adapter:
    """The shipped adapter called ``name`` (one of ``NAMES``, or ``"fault:<fault>"`` / ``"fault:none"``).

    A Keras name needs Keras to be importable with its backend in this process; ``run`` takes care of that.
    """
    if name.startswith("fault:"):
        fault = name.split(":", 1)[1]
        adapter = PlantedFault(None if fault == "none" else fault)
        adapter.name = name
        return adapter
    from bnref.check import adapters as conformance_adapters

    return conformance_adapters.make(name)


def _keras_ready(backend: str) -> bool:
    """Whether Keras is loaded here with ``backend``."""
    import sys

    keras = sys.modules.get("keras")
    return keras is not None and keras.backend.backend() == backend


def _plan(names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Which names run here and which in a subprocess per framework.

    A Keras name whose backend is not loaded here goes to a subprocess with ``KERAS_BACKEND`` set; the other names
    of the same framework join it (the framework is imported there anyway); the rest run here.
    """
    children: dict[str, list[str]] = {}
    for name in names:
        if name in _NEEDS_KERAS and not _keras_ready(_FAMILY[name]):
            children.setdefault(_FAMILY[name], [])
    here = []
    for name in names:
        family = _FAMILY.get(name)
        if family in children:
            children[family].append(name)
        else:
            here.append(name)
    return here, children


def run_many(names: Sequence[str], **kwargs: Any) -> dict[str, Report]:
    """Check each named implementation, Keras ones in one subprocess per backend, all started at once.

    A name that needs a Keras backend this process does not have runs in ``python -m bnref.conformance ...
    --in-process`` with ``KERAS_BACKEND`` set, together with the other names of its framework (PyTorch, JAX or
    TensorFlow); the remaining names run here while the subprocesses work. ``kwargs`` (seeds, ratios,
    half_dtypes) go to ``check``.
    """
    import os
    import subprocess
    import sys
    import tempfile

    for name in names:
        if name not in NAMES and not name.startswith("fault:"):
            raise ValueError(f"unknown implementation {name!r}; known: {', '.join(NAMES)}")
    here, groups = _plan(names)
    children = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, group in groups.items():
            path = os.path.join(tmp, f"{backend}.json")
            cmd = [sys.executable, "-m", "bnref.check.conformance", *group, "--in-process", "--quiet", "--json", path]
            cmd += ["--options", json.dumps({k: list(v) for k, v in kwargs.items()})]
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            log = open(os.path.join(tmp, f"{backend}.log"), "w+")  # a file: a full pipe would stall the child
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
            children.append((backend, path, proc, log))
        reports = {name: check(adapter_for(name), **kwargs) for name in here}
        for backend, path, proc, log in children:
            proc.wait()
            log.seek(0)
            err = log.read()
            log.close()
            if proc.returncode != 0:
                raise RuntimeError(f"the conformance check on the Keras {backend} backend failed:\n{err[-3000:]}")
            with open(path) as fh:
                for d in json.load(fh)["reports"]:
                    reports[d["implementation"]] = Report.from_dict(d)
    return {name: reports[name] for name in names}


def run(name: str, **kwargs: Any) -> Report:
    """Check the implementation called ``name`` (see ``NAMES``), in a subprocess where Keras needs one."""
    return run_many([name], **kwargs)[name]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnref.conformance NAME [NAME ...] [--json PATH] [--markdown]``: print each report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bnref.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {', '.join(NAMES)}")
    parser.add_argument("--json", metavar="PATH", help="also write the reports as JSON to PATH")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables instead of text")
    parser.add_argument("--in-process", action="store_true", help="run every name here (KERAS_BACKEND set)")
    parser.add_argument("--quiet", action="store_true", help="print nothing (with --json)")
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in NAMES and not name.startswith("fault:"):
            parser.error(f"unknown implementation {name!r}; known: {', '.join(NAMES)}")
    options = json.loads(args.options)
    if args.in_process:
        reports = {name: check(adapter_for(name), **options) for name in args.names}
    else:
        reports = run_many(args.names, **options)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"reports": [r.to_dict() for r in reports.values()]}, fh, indent=1)
    if not args.quiet:
        print("\n\n".join(r.to_markdown() if args.markdown else r.to_text() for r in reports.values()))
    return 0


if __name__ == "__main__":
    import sys

    from bnref.check.conformance import main as _main  # the module's own copy, not __main__'s

    sys.exit(_main())
