"""Every implementation of Batch Normalization on one case, compared with the float64 NumPy reference.

``run_case(case)`` draws ``case.steps`` fresh training batches (and one inference batch), runs them through

* the NumPy reference in the case dtype,
* ``bnref.torch_bn.BatchNorm`` (from scratch) and ``torch.nn.BatchNorm1d/2d/3d`` (native),
* ``bnref.keras_bn.BatchNormalization`` (from scratch) and ``keras.layers.BatchNormalization`` (native),

and compares each with the NumPy reference run in float64 *under that implementation's own convention*
(PyTorch's for the torch rows, Keras' for the Keras rows): the output ``y``, the gradients ``dx``,
``dgamma``, ``dbeta`` (for the upstream gradient ``dy`` drawn with each batch), the running mean and
variance after every step, and the inference output ``y_inference``. A missing framework gives rows that
say "not installed". ``cross_convention`` measures what the two frameworks' *defaults* change.

Error bounds (book, chapter "Frameworks side by side"; GUIDE section 4)
-------------------------------------------------------------------
Every cell is also checked against a bound derived from the precision, not tuned to the data. With ``eps_c``
the machine epsilon of the compute dtype (float32 for float16/bfloat16 inputs), ``m`` the values per
channel, ``sigma = sqrt(var + eps)``, ``r = |mean| / sigma`` and ``X = max |x_hat|`` per channel::

    e = C * eps_c * (1 + sqrt(m)),     C = 4

``sqrt(m)`` is the probabilistic growth of rounding error in a sum of ``m`` terms in any order (Higham and
Mary 2019: if rounding errors are independent and mean-zero, the error of recursive summation is at most
about ``lambda * sqrt(m) * u * sum|a_i|`` except with a probability of order ``2 m exp(-lambda^2 / 2)``;
pairwise and cascaded sums, which NumPy, PyTorch and Eigen use, do better; the worst case, ``m u``, is
never approached by real data). ``C = 4`` is ``lambda = 8`` in units of ``u = eps/2`` (failure probability
~1e-10 for m = 2048); the ``1 +`` covers the few elementwise roundings. Each quantity's bound is ``e`` times the sum of the absolute values it is computed
from (its condition scale), plus the rounding of outputs returned in the input dtype (``eps_out``):

=============  ==================================================================================
quantity        absolute bound per step (max over channels)
=============  ==================================================================================
y               ``e (|gamma| (r + X) + |beta|) + eps_out max|y|``. Frameworks compute
                ``y = x * a + b`` with ``a = gamma/sigma``; ``|x a| <= |gamma| (r + X)``: the error
                grows with ``|mean|/std`` (GUIDE section 2), and so does that of ``x - mean``.
dbeta           ``e sum|dy|``
dgamma          ``e sum|dy| (|x_hat| + r)``: each ``x_hat`` carries an error ``e (r + |x_hat|)``.
dx              ``e |gamma| / sigma (max|dy| + (sum|dy| + (r + X)|dgamma| + X sum|dy|(|x_hat| + r)) / m)``
                ``+ eps_out max|dx|``, from ``dx = gamma/(m sigma) (m dy - dbeta - x_hat dgamma)``.
running_mean    ``B_k = (1 - w) B_{k-1} + w e (|mean| + sigma X) + C eps_c |r_k|``, ``B_0 = 0``.
running_var     ``B_k = (1 - w) B_{k-1} + w f (e var + (e (|mean| + sigma X))^2) + C eps_c |r_k|``,
                ``f = m/(m-1)`` if the variance fed is unbiased else 1. The squared term is a two-pass
                variance's only sensitivity to ``|mean|``; a one-pass ``E[x^2] - E[x]^2`` has an error
                ``~ eps |mean|^2`` and fails this bound as soon as ``|mean|/std >> 1``.
y_inference     ``C eps_c (|gamma| (max|x| + |r_mean|) / sigma_r + |beta|)`` plus the running statistics'
                bounds propagated, ``|gamma| B_mean / sigma_r + |gamma| X_r B_var / (2 sigma_r^2)``, plus
                ``eps_out max|y|`` (``sigma_r = sqrt(r_var + eps)``, ``X_r = max|x - r_mean| / sigma_r``).
=============  ==================================================================================

A table cell passes when ``error / bound <= 1`` at every step. The bounds leave room for any summation
order (CPU, GPU, another library), yet a convention slip fails them by orders of magnitude: a missing
``m/(m-1)`` changes the running variance by ``1/m`` relative, eps 1e-5 instead of 1e-3 changes ``y`` by
``~1e-3 / (2 var)`` relative, a one-pass variance loses ``eps |mean|^2 / var``.
"""

from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from .conventions import KERAS, PYTORCH, Convention, get_convention
from .gradcheck import relative_error
from .reference import RunningStats, batch_norm_backward, batch_norm_forward, batch_norm_inference

__all__ = [
    "QUANTITIES",
    "IMPLEMENTATIONS",
    "Case",
    "Diff",
    "Row",
    "AgreementTable",
    "run_case",
    "run_cases",
    "summary_table",
    "ConventionRow",
    "ConventionTable",
    "cross_convention",
    "torch_to_keras",
    "keras_to_torch",
    "inference_gap",
    "machine_eps",
    "BOUND_C",
]

#: The quantities compared, in table order.
QUANTITIES: tuple[str, ...] = ("y", "dx", "dgamma", "dbeta", "running_mean", "running_var", "y_inference")
_SHORT = {"running_mean": "run_mean", "running_var": "run_var", "y_inference": "y_infer"}

#: The implementations, in table order: (name, framework).
IMPLEMENTATIONS: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("torch scratch", "torch"),
    ("torch native", "torch"),
    ("keras scratch", "keras"),
    ("keras native", "keras"),
)

#: The constant C of the error bounds (module docstring): lambda = 2 C = 8 in units of u = eps/2.
BOUND_C = 4.0

_DTYPES = ("float64", "float32", "float16", "bfloat16")
_DEFAULT = "default"


def machine_eps(dtype: str) -> float:
    """Machine epsilon (spacing of floats at 1): 2^-52, 2^-23, 2^-10, 2^-7 for float64/32/16, bfloat16."""
    if dtype == "bfloat16":
        return 2.0**-7  # 8 significant bits
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(_DTYPES)}")
    return float(np.finfo(dtype).eps)


def _compute_dtype(dtype: str) -> str:
    """Half precision is computed in float32 by every implementation here."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


# ----------------------------------------------------------------------------------------------------
# The case
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One agreement experiment.

    Attributes
    ----------
    shape : tuple of int
        Batch shape, e.g. ``(128, 3)``, ``(8, 3, 5)``, ``(4, 3, 4, 4)`` (NCHW) or ``(4, 4, 4, 3)`` (NHWC).
    axis : int
        The channel axis of ``shape``: 1 for (N, C, ...), -1 for channels last. The torch rows move it to
        dim 1 (``movedim``), as a PyTorch user would; the Keras layers get it as their ``axis``.
    dtype : {"float64", "float32", "float16", "bfloat16"}
        Dtype of the inputs ``x`` and ``dy``. Parameters and running statistics are float32 for half
        precision (the frameworks' mixed-precision practice), the input dtype otherwise.
    convention : str or None
        None: each framework runs its own defaults (torch ``PYTORCH``, Keras ``KERAS``). A name from
        ``bnref.conventions``: every framework is configured to follow that convention's eps and running
        average weight as far as it can (Keras cannot express ``momentum=None``: its rows say so); each keeps
        its own running-variance bias, which is fixed in the framework.
    mode : {"train", "train+inference"}
        ``steps`` training steps, then (for "train+inference") an inference pass on a fresh batch.
    steps : int
        Number of training steps k, each with a fresh batch.
    seed : int
    loc, scale : float
        The data are ``x = loc + scale * z``, z standard normal, so ``|mean|/std ~ |loc|/scale``.
    eps : float or None
        Override the convention's eps (same meaning in every framework).
    momentum : float, None or "default"
        Override the momentum of ``convention`` (in that convention's own meaning); needs a convention.
    """

    shape: tuple[int, ...]
    axis: int = 1
    dtype: str = "float32"
    convention: str | None = None
    mode: Literal["train", "train+inference"] = "train+inference"
    steps: int = 1
    seed: int = 0
    loc: float = 0.0
    scale: float = 1.0
    eps: float | None = None
    momentum: float | None | str = _DEFAULT

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise ValueError(f"shape must have at least 2 positive dimensions, got {self.shape}")
        if not -len(self.shape) <= self.axis < len(self.shape):
            raise ValueError(f"axis {self.axis} is out of range for shape {self.shape}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {self.dtype!r}")
        if self.mode not in ("train", "train+inference"):
            raise ValueError(f"mode must be 'train' or 'train+inference', got {self.mode!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.m < 2:
            raise ValueError(
                f"shape {self.shape} has {self.m} value per channel; the reference needs >= 2 in training "
                "(a batch of one value per channel is shown by the conventions tests instead)"
            )
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if self.convention is not None:
            get_convention(self.convention)
        elif self.momentum != _DEFAULT:
            raise ValueError(
                "a momentum override needs a convention to say what momentum means (PyTorch: weight of the "
                "new value; Keras: weight of the old one); set convention='pytorch' or 'keras'"
            )
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")

    @property
    def channel_axis(self) -> int:
        return self.axis % len(self.shape)

    @property
    def channels(self) -> int:
        return self.shape[self.channel_axis]

    @property
    def m(self) -> int:
        """Values per channel in one batch."""
        return math.prod(self.shape) // self.shape[self.channel_axis]

    @property
    def label(self) -> str:
        conv = self.convention or "native"
        parts = [f"{self.shape} axis={self.axis}", self.dtype, f"k={self.steps}", conv]
        if self.loc:
            parts.append(f"|mean|/std~{abs(self.loc) / self.scale:g}")
        return ", ".join(parts)


def _target_convention(case: Case) -> Convention | None:
    if case.convention is None:
        return None
    conv = get_convention(case.convention)
    changes: dict[str, Any] = {}
    if case.eps is not None:
        changes["eps"] = case.eps
    if case.momentum != _DEFAULT:
        changes["momentum"] = case.momentum
    return conv.replace(**changes) if changes else conv


def _new_value_weight_rule(conv: Convention) -> float | None:
    """The weight of the new value (constant), or None for the cumulative average."""
    return None if conv.momentum is None else conv.new_value_weight(1)


def framework_convention(case: Case, framework: str) -> Convention | str:
    """The convention ``framework`` runs under in ``case``, or a string saying why it cannot.

    ``"numpy"`` runs the case's convention itself (for a native case: PyTorch's and Keras' both, see
    ``run_case``). ``"torch"`` and ``"keras"`` keep their own running-variance bias (unbiased / biased).
    """
    base = {"torch": PYTORCH, "keras": KERAS}[framework]
    target = _target_convention(case)
    if target is None:
        return base.replace(eps=case.eps) if case.eps is not None else base
    w = _new_value_weight_rule(target)
    if framework == "torch":
        momentum = w  # PyTorch's momentum is the new value's weight; None = cumulative
    else:
        if w is None:
            return "n/a: Keras has no cumulative average (momentum=None)"
        momentum = 1.0 - w  # Keras' momentum is the old value's weight
    return base.replace(name=f"{base.name}~{target.name}", eps=target.eps, momentum=momentum)


# ----------------------------------------------------------------------------------------------------
# Data: batches rounded to the case dtype (the truth uses the rounded values)
# ----------------------------------------------------------------------------------------------------


def _round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to ``dtype`` (round to nearest even) and return them as float64."""
    if dtype == "bfloat16":
        bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.asarray(a).astype(dtype).astype(np.float64)


@dataclass(frozen=True)
class _Data:
    xs: list[np.ndarray]  # training batches, float64 holding case-dtype values
    dys: list[np.ndarray]
    x_inference: np.ndarray
    gamma: np.ndarray  # float64 holding parameter-dtype values
    beta: np.ndarray


def _make_data(case: Case) -> _Data:
    rng = np.random.default_rng(case.seed)
    pdtype = _compute_dtype(case.dtype)
    c = case.channels
    gamma = _round_to(rng.uniform(0.5, 1.5, c), pdtype)
    beta = _round_to(rng.normal(0.0, 0.5, c), pdtype)

    def batch() -> np.ndarray:
        return _round_to(case.loc + case.scale * rng.standard_normal(case.shape), case.dtype)

    xs, dys = [], []
    for _ in range(case.steps):
        xs.append(batch())
        dys.append(_round_to(rng.standard_normal(case.shape), case.dtype))
    return _Data(xs, dys, batch(), gamma, beta)


# ----------------------------------------------------------------------------------------------------
# Traces: what one implementation produced, as float64 arrays
# ----------------------------------------------------------------------------------------------------

Trace = dict[str, list[np.ndarray]]


def _empty_trace() -> Trace:
    return {q: [] for q in QUANTITIES}


class _NotAvailable(Exception):
    """The implementation cannot run this case (framework missing, dtype unsupported, ...)."""


def _reference_trace(case: Case, conv: Convention, data: _Data, dtype: str) -> tuple[Trace, list]:
    """The NumPy reference in ``dtype`` (float64: the truth). Also returns the float64 caches."""
    if dtype == "bfloat16":
        raise _NotAvailable("n/a: NumPy has no bfloat16")
    pdtype = _compute_dtype(dtype)
    gamma, beta = data.gamma.astype(pdtype), data.beta.astype(pdtype)
    stats = RunningStats(case.channels, conv, dtype=np.dtype(pdtype))
    trace, caches = _empty_trace(), []
    for x, dy in zip(data.xs, data.dys):
        y, cache = batch_norm_forward(x.astype(dtype), gamma, beta, conv.eps, case.axis)
        dx, dgamma, dbeta = batch_norm_backward(dy.astype(dtype), cache)
        stats.update(cache)
        for q, v in zip(QUANTITIES, (y, dx.astype(dtype), dgamma, dbeta, stats.mean, stats.var)):
            trace[q].append(np.asarray(v, np.float64))
        caches.append(cache)
    if case.mode == "train+inference":
        y_inf = batch_norm_inference(
            data.x_inference.astype(dtype), gamma, beta, stats.mean, stats.var, conv.eps, case.axis
        )
        trace["y_inference"].append(np.asarray(y_inf, np.float64))
    return trace, caches


def _torch_trace(case: Case, conv: Convention, data: _Data, native: bool, device: str) -> Trace:
    try:
        import torch

        from . import torch_bn
    except ImportError:
        raise _NotAvailable("not installed (PyTorch)") from None
    tdtype = getattr(torch, case.dtype)
    pdtype = getattr(torch, _compute_dtype(case.dtype))
    ndim, c = len(case.shape), case.channels
    if native:
        cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}.get(ndim)
        if cls is None:
            raise _NotAvailable(f"n/a: torch.nn.BatchNorm* takes 2D-5D input, not {ndim}D")
    else:
        cls = torch_bn.BatchNorm
    bn = cls(c, eps=conv.eps, momentum=conv.momentum, device=device, dtype=pdtype)
    with torch.no_grad():
        bn.weight.copy_(torch.as_tensor(data.gamma))
        bn.bias.copy_(torch.as_tensor(data.beta))

    def to_torch(a: np.ndarray) -> torch.Tensor:
        # the values are representable in the case dtype, so this conversion is exact
        return torch.as_tensor(a).to(device=device, dtype=tdtype).movedim(case.channel_axis, 1)

    def to_numpy(t: torch.Tensor, channels_dim: int | None = 1) -> np.ndarray:
        if channels_dim is not None:
            t = t.movedim(1, case.channel_axis)
        return t.detach().to("cpu", torch.float64).numpy().copy()  # a copy: buffers change in place later

    trace = _empty_trace()
    bn.train()
    for x, dy in zip(data.xs, data.dys):
        xt = to_torch(x).requires_grad_(True)
        y = bn(xt)
        y.backward(to_torch(dy))
        trace["y"].append(to_numpy(y))
        trace["dx"].append(to_numpy(xt.grad))
        trace["dgamma"].append(to_numpy(bn.weight.grad, None))
        trace["dbeta"].append(to_numpy(bn.bias.grad, None))
        trace["running_mean"].append(to_numpy(bn.running_mean, None))
        trace["running_var"].append(to_numpy(bn.running_var, None))
        bn.weight.grad = bn.bias.grad = None
    if case.mode == "train+inference":
        bn.eval()
        with torch.no_grad():
            trace["y_inference"].append(to_numpy(bn(to_torch(data.x_inference))))
    return trace


def _keras_trace(case: Case, conv: Convention, data: _Data, native: bool) -> Trace:
    try:
        import keras
        import tensorflow as tf

        from . import keras_bn
    except ImportError:
        raise _NotAvailable("not installed (TensorFlow/Keras)") from None
    cls = keras.layers.BatchNormalization if native else keras_bn.BatchNormalization
    # Layer dtype policy: float64 runs in float64; half-precision inputs go into a float32 layer, which
    # (native and scratch alike) autocasts them to float32 and returns float32.
    policy = "float64" if case.dtype == "float64" else "float32"
    layer = cls(axis=case.axis, momentum=conv.momentum, epsilon=conv.eps, dtype=policy)
    layer.build(case.shape)
    layer.gamma.assign(data.gamma)
    layer.beta.assign(data.beta)
    tdtype = getattr(tf, case.dtype)

    trace = _empty_trace()
    for x, dy in zip(data.xs, data.dys):
        xt = tf.constant(x, dtype=tdtype)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
        dx, dgamma, dbeta = tape.gradient(
            y, [xt, layer.gamma, layer.beta], output_gradients=tf.cast(tf.constant(dy, dtype=tdtype), y.dtype)
        )
        for q, v in zip(QUANTITIES, (y, dx, dgamma, dbeta, layer.moving_mean, layer.moving_variance)):
            trace[q].append(np.array(tf.cast(v, tf.float64), copy=True))
    if case.mode == "train+inference":
        y_inf = layer(tf.constant(data.x_inference, dtype=tdtype), training=False)
        trace["y_inference"].append(np.asarray(tf.cast(y_inf, tf.float64)))
    return trace


# ----------------------------------------------------------------------------------------------------
# Error bounds (derivation in the module docstring)
# ----------------------------------------------------------------------------------------------------


def _bounds(case: Case, conv: Convention, truth: Trace, caches: list, data: _Data) -> dict[str, list[float]]:
    """Absolute error bound per quantity and step, from the float64 truth (module docstring)."""
    eps_c = machine_eps(_compute_dtype(case.dtype))
    eps_out = machine_eps(case.dtype)
    m, ax = case.m, case.channel_axis
    e = BOUND_C * eps_c * (1.0 + math.sqrt(m))
    f = m / (m - 1) if conv.running_var == "unbiased" else 1.0
    w_const = _new_value_weight_rule(conv)
    gamma, beta = np.abs(data.gamma), np.abs(data.beta)

    def per_channel(a: np.ndarray, how) -> np.ndarray:
        return how(np.moveaxis(a, ax, -1).reshape(-1, case.channels), axis=0)

    out: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    b_mean = np.zeros(case.channels)
    b_var = np.zeros(case.channels)
    for k, (cache, dy) in enumerate(zip(caches, data.dys), start=1):
        sigma = np.sqrt(cache.var + cache.eps)
        r = np.abs(cache.mean) / sigma
        abs_xhat = np.abs(cache.x_hat)
        big_x = per_channel(abs_xhat, np.max)
        sum_dy = per_channel(np.abs(dy), np.sum)
        sum_dy_xhat = per_channel(np.abs(dy) * (abs_xhat + r.reshape(cache.layout.bshape)), np.sum)
        dgamma = truth["dgamma"][k - 1]
        out["y"].append(np.max(e * (gamma * (r + big_x) + beta)) + eps_out * np.max(np.abs(truth["y"][k - 1])))
        out["dbeta"].append(np.max(e * sum_dy))
        out["dgamma"].append(np.max(e * sum_dy_xhat))
        dx_scale = gamma / sigma * (
            per_channel(np.abs(dy), np.max) + (sum_dy + (r + big_x) * np.abs(dgamma) + big_x * sum_dy_xhat) / m
        )
        out["dx"].append(np.max(e * dx_scale) + eps_out * np.max(np.abs(truth["dx"][k - 1])))
        w = w_const if w_const is not None else 1.0 / k
        err_mean = e * (np.abs(cache.mean) + sigma * big_x)
        b_mean = (1 - w) * b_mean + w * err_mean + BOUND_C * eps_c * np.abs(truth["running_mean"][k - 1])
        b_var = (1 - w) * b_var + w * f * (e * cache.var + err_mean**2) + BOUND_C * eps_c * np.abs(
            truth["running_var"][k - 1]
        )
        out["running_mean"].append(float(np.max(b_mean)))
        out["running_var"].append(float(np.max(b_var)))
    if truth["y_inference"]:
        r_mean, r_var = truth["running_mean"][-1], truth["running_var"][-1]
        sigma_r = np.sqrt(r_var + conv.eps)
        max_x = per_channel(np.abs(data.x_inference), np.max)
        x_r = per_channel(np.abs(data.x_inference - r_mean.reshape(caches[0].layout.bshape)), np.max) / sigma_r
        ops = BOUND_C * eps_c * (gamma * (max_x + np.abs(r_mean)) / sigma_r + beta)
        propagated = gamma * b_mean / sigma_r + gamma * x_r * b_var / (2 * sigma_r**2)
        out["y_inference"].append(
            float(np.max(ops + propagated)) + eps_out * np.max(np.abs(truth["y_inference"][0]))
        )
    return out


# ----------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Row:
    """One implementation's line of an ``AgreementTable``.

    ``status`` is "ok" when it ran; otherwise it says why not ("not installed (PyTorch)", "n/a: ...",
    "error: ...") and ``diffs`` is empty.
    """

    implementation: str
    dtype: str
    convention: str
    status: str
    diffs: dict[str, Diff] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def passed(self) -> bool:
        """All compared quantities within their bounds (rows that did not run count as passed)."""
        return all(d.passed for d in self.diffs.values())

    @property
    def worst_ratio(self) -> float:
        return max((d.ratio for d in self.diffs.values()), default=0.0)


def _cell(d: Diff | None, metric: str) -> str:
    if d is None:
        return "-"
    if metric == "verdict":
        return "ok" if d.passed else "FAIL"
    value = {"abs": d.max_abs, "rel": d.max_rel, "ratio": d.ratio, "bound": d.bound}[metric]
    return f"{value:.1e}" if metric != "ratio" else f"{value:.2g}"


_METRICS = ("rel", "abs", "ratio", "bound", "verdict")


@dataclass(frozen=True)
class AgreementTable:
    """The result of ``run_case``: one ``Row`` per implementation.

    Render with ``format_table(metric)`` (plain text), ``to_markdown(metric)`` or in a notebook (HTML).
    ``metric`` is "rel" (max-norm relative error), "abs", "ratio" (error / derived bound), "bound" or
    "verdict" ("ok" / "FAIL", stable text for nbval).
    """

    case: Case
    rows: list[Row]

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(q for q in QUANTITIES if q != "y_inference" or self.case.mode == "train+inference")

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def row(self, implementation: str, convention: str | None = None) -> Row:
        """The row of ``implementation`` (and ``convention``, for the NumPy rows of a native case)."""
        for r in self.rows:
            if r.implementation == implementation and (convention is None or r.convention == convention):
                return r
        raise ValueError(f"no row {implementation!r} in this table; rows: {[r.implementation for r in self.rows]}")

    def _grid(self, metric: str) -> tuple[list[str], list[list[str]]]:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(_METRICS)}; got {metric!r}")
        header = ["implementation", "dtype", "convention"] + [_SHORT.get(q, q) for q in self.quantities]
        body = []
        for r in self.rows:
            cells = [r.implementation, r.dtype, r.convention]
            if r.ok:
                cells += [_cell(r.diffs.get(q), metric) for q in self.quantities]
            else:
                cells += [r.status] + [""] * (len(self.quantities) - 1)
            body.append(cells)
        return header, body

    def format_table(self, metric: str = "rel") -> str:
        """Plain-text table (no pandas)."""
        header, body = self._grid(metric)
        widths = []
        for j in range(len(header)):
            cells = [b[j] for b, r in zip(body, self.rows) if r.ok or j < 3]
            widths.append(max([len(header[j])] + [len(c) for c in cells]))
        lines = [f"case: {self.case.label}   [{metric}]", "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        for b, r in zip(body, self.rows):
            cells = b if r.ok else b[:3] + [r.status]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths + [0])).rstrip())
        return "\n".join(lines)

    def to_markdown(self, metric: str = "rel") -> str:
        header, body = self._grid(metric)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        header, body = self._grid("rel")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
        caption = html.escape(f"{self.case.label}: max-norm relative error vs the float64 reference")
        return f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    def __str__(self) -> str:
        return self.format_table()

    def __repr__(self) -> str:
        return f"AgreementTable({self.case.label!r}, {len(self.rows)} rows, passed={self.passed})"

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready list: one dict per (implementation, quantity), or per row that did not run."""
        out = []
        for r in self.rows:
            base = {"case": self.case.label, "implementation": r.implementation, "dtype": r.dtype,
                    "convention": r.convention, "status": r.status}
            if not r.ok:
                out.append(base)
            for q, d in r.diffs.items():
                out.append({**base, "quantity": q, **dataclasses.asdict(d), "passed": d.passed})
        return out


def _compare(trace: Trace, truth: Trace, bounds: dict[str, list[float]]) -> dict[str, Diff]:
    diffs = {}
    for q in QUANTITIES:
        if not truth[q]:
            continue
        worst_abs = worst_rel = 0.0
        worst = (-1.0, 0.0, 0.0)  # (ratio, bound, bound / max|ref|)
        for a, t, bnd in zip(trace[q], truth[q], bounds[q]):
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


def run_case(
    case: Case,
    device: str = "cpu",
    frameworks: Sequence[str] = ("numpy", "torch", "keras"),
) -> AgreementTable:
    """Run ``case`` through every implementation and compare each with the float64 reference.

    Parameters
    ----------
    case : Case
    device : str
        Torch device for the torch rows ("cpu", "cuda", "cuda:1", ...).
    frameworks : sequence of {"numpy", "torch", "keras"}
        Which implementations to run (the GPU script runs "numpy" and "torch" only).

    Returns
    -------
    AgreementTable
        Rows in the order of ``IMPLEMENTATIONS``; for a native case the NumPy row appears once per
        framework convention. Rows that cannot run say why.
    """
    unknown = set(frameworks) - {"numpy", "torch", "keras"}
    if unknown:
        raise ValueError(f"unknown frameworks {sorted(unknown)}; choose from numpy, torch, keras")
    data = _make_data(case)
    rows: list[Row] = []
    truths: dict[str, tuple[Trace, list, dict]] = {}

    def truth_for(conv: Convention) -> tuple[Trace, list, dict]:
        if conv.name not in truths:
            trace, caches = _reference_trace(case, conv, data, "float64")
            truths[conv.name] = (trace, caches, _bounds(case, conv, trace, caches, data))
        return truths[conv.name]

    numpy_convs: list[Convention] = []
    target = _target_convention(case)
    if target is not None:
        numpy_convs = [target]
    else:
        numpy_convs = [c for c in (framework_convention(case, f) for f in ("torch", "keras")) if isinstance(c, Convention)]

    for name, framework in IMPLEMENTATIONS:
        if framework not in frameworks:
            continue
        convs: list[Convention | str] = numpy_convs if framework == "numpy" else [framework_convention(case, framework)]
        for conv in convs:
            conv_name = conv.name if isinstance(conv, Convention) else "-"
            if isinstance(conv, str):
                rows.append(Row(name, case.dtype, conv_name, conv))
                continue
            try:
                if framework == "numpy":
                    trace, _ = _reference_trace(case, conv, data, case.dtype)
                elif framework == "torch":
                    trace = _torch_trace(case, conv, data, native=name.endswith("native"), device=device)
                else:
                    trace = _keras_trace(case, conv, data, native=name.endswith("native"))
            except _NotAvailable as why:
                rows.append(Row(name, case.dtype, conv_name, str(why)))
                continue
            except (RuntimeError, ValueError, TypeError) as err:  # a framework refusing the case is a finding
                rows.append(Row(name, case.dtype, conv_name, f"error: {type(err).__name__}: {err}"))
                continue
            truth, _, bounds = truth_for(conv)
            rows.append(Row(name, case.dtype, conv_name, "ok", _compare(trace, truth, bounds)))
    return AgreementTable(case, rows)


def run_cases(cases: Sequence[Case], **kwargs: Any) -> list[AgreementTable]:
    """``run_case`` over several cases."""
    return [run_case(c, **kwargs) for c in cases]


def summary_table(tables: Sequence[AgreementTable], metric: Literal["verdict", "ratio"] = "verdict") -> str:
    """One line per case, one column per implementation: "ok"/"FAIL" (or the worst error/bound ratio)."""
    names = [n for n, _ in IMPLEMENTATIONS]
    labels = [t.case.label for t in tables]
    width = max([len("case")] + [len(s) for s in labels])
    lines = ["case".ljust(width) + "  " + "  ".join(n.ljust(13) for n in names)]
    for t, label in zip(tables, labels):
        cells = []
        for n in names:
            rows = [r for r in t.rows if r.implementation == n]
            if not rows:
                cells.append("-")
            elif not all(r.ok for r in rows):
                cells.append(next(r.status for r in rows if not r.ok).split(" (")[0].split(":")[0])
            elif metric == "verdict":
                cells.append("ok" if all(r.passed for r in rows) else "FAIL")
            else:
                cells.append(f"{max(r.worst_ratio for r in rows):.2g}")
        lines.append(label.ljust(width) + "  " + "  ".join(c.ljust(13) for c in cells).rstrip())
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# What the default conventions change: torch native vs Keras native on the same data
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConventionRow:
    """One quantity: how far the two frameworks' defaults are apart, measured and predicted.

    ``measured``: max |torch - keras| of the native layers. ``predicted``: the same for the float64
    reference run under ``PYTORCH`` and ``KERAS``. ``explained`` is True when the two agree within the
    sum of the derived error bounds of both frameworks, i.e. the whole difference is the conventions'.
    """

    quantity: str
    measured: float
    predicted: float
    bound: float

    @property
    def explained(self) -> bool:
        return abs(self.measured - self.predicted) <= self.bound


@dataclass(frozen=True)
class ConventionTable:
    case: Case
    rows: list[ConventionRow]
    status: str = "ok"

    def format_table(self) -> str:
        lines = [f"torch native vs keras native, default conventions: {self.case.label}"]
        if self.status != "ok":
            return lines[0] + "\n" + self.status
        lines.append(f"{'quantity':<13}{'measured':>11}{'predicted':>11}  explained by the conventions")
        for r in self.rows:
            lines.append(f"{r.quantity:<13}{r.measured:>11.3e}{r.predicted:>11.3e}  {r.explained}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = ["| quantity | measured | predicted | explained |", "|---|---|---|---|"]
        lines += [f"| {r.quantity} | {r.measured:.3e} | {r.predicted:.3e} | {r.explained} |" for r in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def cross_convention(case: Case) -> ConventionTable:
    """torch native (``PYTORCH``) against Keras native (``KERAS``) on the same batches.

    The differences are the conventions' (eps 1e-5 vs 1e-3 in ``y`` and the gradients; momentum 0.1 vs
    0.01 and unbiased vs biased variance in the running estimates, and through them in ``y_inference``);
    each is predicted by the float64 reference under both conventions.
    ``case.convention`` must be None (native defaults); eps/momentum overrides are not allowed.
    """
    if case.convention is not None or case.eps is not None:
        raise ValueError("cross_convention compares the frameworks' own defaults; use a Case without convention or eps")
    data = _make_data(case)
    traces, truths, bounds = {}, {}, {}
    for framework in ("torch", "keras"):
        conv = framework_convention(case, framework)
        assert isinstance(conv, Convention)
        try:
            if framework == "torch":
                traces[framework] = _torch_trace(case, conv, data, native=True, device="cpu")
            else:
                traces[framework] = _keras_trace(case, conv, data, native=True)
        except _NotAvailable as why:
            return ConventionTable(case, [], str(why))
        truth, caches = _reference_trace(case, conv, data, "float64")
        truths[framework], bounds[framework] = truth, _bounds(case, conv, truth, caches, data)
    rows = []
    for q in QUANTITIES:
        if not truths["torch"][q]:
            continue
        measured = max(float(np.max(np.abs(a - b))) for a, b in zip(traces["torch"][q], traces["keras"][q]))
        predicted = max(float(np.max(np.abs(a - b))) for a, b in zip(truths["torch"][q], truths["keras"][q]))
        bound = max(bt + bk for bt, bk in zip(bounds["torch"][q], bounds["keras"][q]))
        rows.append(ConventionRow(q, measured, predicted, bound))
    return ConventionTable(case, rows)


# ----------------------------------------------------------------------------------------------------
# Weight transfer between torch.nn.BatchNorm* (or bnref's) and Keras BatchNormalization (or bnref's)
# ----------------------------------------------------------------------------------------------------


def _check_keras_built(layer: Any) -> None:
    if getattr(layer, "moving_mean", None) is None:
        raise ValueError(
            "the Keras layer is not built; call it once on an input or layer.build(input_shape) first "
            "(building needs the input rank, which a BatchNorm module does not know)"
        )


def _check_pair(bn: Any, layer: Any) -> None:
    _check_keras_built(layer)
    if bn.running_mean is None:
        raise ValueError("the torch module has track_running_stats=False: there are no running statistics to move")
    c_keras = int(layer.moving_mean.shape[0])
    if bn.num_features != c_keras:
        raise ValueError(f"channel counts differ: torch {bn.num_features}, Keras {c_keras}")
    keras_affine = (layer.gamma is not None, layer.beta is not None)
    torch_affine = (bn.weight is not None, bn.bias is not None)
    if keras_affine != torch_affine:
        raise ValueError(
            f"affine parameters differ: torch has weight={torch_affine[0]} bias={torch_affine[1]}, "
            f"Keras has gamma (scale)={keras_affine[0]} beta (center)={keras_affine[1]}"
        )


def torch_to_keras(bn: Any, layer: Any) -> None:
    """Copy a torch BN module's state into a built Keras BN layer (native or bnref's).

    gamma <- weight, beta <- bias, moving_mean <- running_mean, moving_variance <- running_var; the Keras
    ``epsilon`` is set to torch's ``eps`` and ``momentum`` to ``1 - momentum`` (Keras weights the old
    value). Inference outputs then agree to float32 precision (``inference_gap``). Training does not stay
    in step: torch feeds the unbiased variance ``m/(m-1) var`` to its running estimate and Keras the biased
    one, so the moving variances drift apart by a relative ``~ w/(m-1)`` per step. A torch module with
    ``momentum=None`` (cumulative average) has no Keras equivalent; Keras' momentum is then left as is.
    If the layer runs inside a compiled ``tf.function``, retrace it: epsilon and momentum are Python floats.
    """
    _check_pair(bn, layer)
    import torch

    with torch.no_grad():
        values = {
            "gamma": bn.weight,
            "beta": bn.bias,
            "moving_mean": bn.running_mean,
            "moving_variance": bn.running_var,
        }
        for name, tensor in values.items():
            var = getattr(layer, name)
            if var is not None and tensor is not None:
                var.assign(tensor.detach().to("cpu", torch.float64).numpy().astype(var.dtype))
    layer.epsilon = float(bn.eps)
    if bn.momentum is not None:
        layer.momentum = 1.0 - float(bn.momentum)


def keras_to_torch(layer: Any, bn: Any) -> None:
    """Copy a Keras BN layer's state into a torch BN module: the inverse of ``torch_to_keras``.

    ``eps = epsilon``, ``momentum = 1 - momentum``; ``num_batches_tracked`` is left unchanged.
    """
    _check_pair(bn, layer)
    import torch

    with torch.no_grad():
        targets = {"gamma": bn.weight, "beta": bn.bias, "moving_mean": bn.running_mean, "moving_variance": bn.running_var}
        for name, tensor in targets.items():
            var = getattr(layer, name)
            if var is not None and tensor is not None:
                tensor.copy_(torch.as_tensor(np.asarray(var.numpy(), np.float64)))
    bn.eps = float(layer.epsilon)
    bn.momentum = 1.0 - float(layer.momentum)


def inference_gap(bn: Any, layer: Any, x: np.ndarray) -> float:
    """Max-norm relative difference of the two layers' inference outputs on ``x``.

    Parameters
    ----------
    bn : torch BN module (native or bnref's); put in eval mode for this call and restored after.
    layer : Keras BN layer, built.
    x : ndarray with the channels on ``layer.axis``; the torch module gets it with the channels moved to dim 1.

    Returns
    -------
    float
        ``relative_error(torch_output, keras_output)``; about float32 precision (1e-7) after
        ``torch_to_keras`` / ``keras_to_torch``.
    """
    import torch

    _check_keras_built(layer)
    x = np.asarray(x)
    axis = layer.axis % x.ndim
    param = next((p for p in bn.buffers() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    was_training = bn.training
    bn.eval()
    try:
        with torch.no_grad():
            yt = bn(torch.as_tensor(x).to(dtype).movedim(axis, 1)).movedim(1, axis)
        yt = yt.to("cpu", torch.float64).numpy()
    finally:
        bn.train(was_training)
    yk = np.asarray(layer(x.astype(layer.compute_dtype), training=False), np.float64)
    return relative_error(yt, yk)
