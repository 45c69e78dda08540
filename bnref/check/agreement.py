"""Every implementation of Batch Normalization on one case, compared with the float64 NumPy reference.

``run_case(case)`` draws ``case.steps`` fresh training batches (and one inference batch), runs them through

* the NumPy reference in the case dtype,
* ``bnref.layers.torch_bn.BatchNorm`` (from scratch) and ``torch.nn.BatchNorm1d/2d/3d`` (native),
* ``bnref.layers.keras_bn.BatchNormalization`` (from scratch) and ``keras.layers.BatchNormalization`` (native),

and compares each with the NumPy reference run in float64 *under that implementation's own convention*
(PyTorch's for the torch rows, Keras' for the Keras rows): the output ``y``, the gradients ``dx``,
``dgamma``, ``dbeta`` (for the upstream gradient ``dy`` drawn with each batch), the running mean and
variance after every step, and the inference output ``y_inference``. A missing framework gives rows that
say "not installed". ``cross_convention`` measures what the two frameworks' *defaults* change.

Keras on every backend. Keras fixes its backend when it is imported, so ``run_cases(cases)`` adds the rows
"keras-tensorflow", "keras-jax" and "keras-torch": ``on_keras_backends`` starts one fresh process per
backend, all at once, each running ``keras.layers.BatchNormalization`` on every case (``keras_backend_rows``;
gradients by the backend's own autodiff) and any other job given to it (``bnref.check.precision.keras_sweep``), so
the cost is one import per backend. Each row's ``version`` names Keras and the backend, e.g. "Keras 3.15.1 on
JAX 0.10.2". Measured on Keras 3.15.1 (``tests/test_frameworks.py``): TensorFlow passes every case; JAX and
torch compute a float64 layer in float32 (``keras.backend.result_type`` maps float64 to float32 on every
backend but TensorFlow); torch's one-pass variance fails float32 cases at ``|mean|/std = 1e3``.

Every cell is checked against a bound derived from the precision, not tuned to the data: the error model of
``bnref.testing`` (``training_bounds``, ``running_mean_bound``, ``running_var_bound``, ``inference_bound``),
derived in the book's appendix "How the checks are bounded" (``ch-bounds``). A cell passes when
``error / bound <= 1`` at every step. The bounds leave room for any summation order (CPU, GPU, another
library), yet a convention slip fails them by orders of magnitude (``tests/test_frameworks.py``).

Weight transfer between the frameworks lives in ``bnref.layers.transfer``.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bnref import relative_error
from bnref.conventions import KERAS, PYTORCH, Convention, get_convention
from bnref.reference import RunningStats, batch_norm_backward, batch_norm_forward, batch_norm_inference
from bnref.testing import (
    DTYPES,
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
    "IMPLEMENTATIONS",
    "Case",
    "Status",
    "NotApplicable",
    "framework_convention",
    "Batches",
    "make_batches",
    "Trace",
    "reference_trace",
    "compare_trace",
    "Diff",
    "Row",
    "AgreementTable",
    "run_case",
    "summary_table",
    "ConventionRow",
    "ConventionTable",
    "cross_convention",
    "KERAS_BACKENDS",
    "BackendRun",
    "on_keras_backends",
    "keras_backend_rows",
    "keras_rows_job",
    "with_keras_backend_rows",
    "run_cases",
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

_DEFAULT = "default"


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
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
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


class NotApplicable(ValueError):
    """An implementation cannot express a case: a convention it lacks, a dtype it has no type for."""


def framework_convention(case: Case, framework: str) -> Convention:
    """The convention ``framework`` ("torch" or "keras") runs under in ``case``.

    For a native case (``case.convention is None``) each framework runs its own defaults (``PYTORCH``,
    ``KERAS``, with ``case.eps`` if given). For a shared convention each is configured to follow its eps and
    running-average weight, keeping its own running-variance bias (unbiased / biased), which is fixed in the
    framework. The NumPy rows run the case's convention itself (see ``run_case``).

    Raises
    ------
    NotApplicable
        Keras asked to follow a cumulative average (PyTorch's ``momentum=None``), which it cannot express.
    ValueError
        An unknown framework.
    """
    if framework not in ("torch", "keras"):
        raise ValueError(f"framework must be 'torch' or 'keras'; got {framework!r}")
    base = PYTORCH if framework == "torch" else KERAS
    target = _target_convention(case)
    if target is None:
        return base.replace(eps=case.eps) if case.eps is not None else base
    w = _new_value_weight_rule(target)
    if framework == "torch":
        momentum = w  # PyTorch's momentum is the new value's weight; None = cumulative
    else:
        if w is None:
            raise NotApplicable("Keras has no cumulative average (momentum=None)")
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
class Batches:
    """The data of one case, drawn once and fed to every implementation.

    All arrays are float64 holding values representable in the case dtype (parameters: in the compute
    dtype), so that each implementation receives exactly the values the float64 truth uses.

    Attributes
    ----------
    xs, dys : list of ndarray, shape ``case.shape``
        The training batches and the upstream gradients, one per step.
    x_inference : ndarray, shape ``case.shape``
        The batch of the inference pass.
    gamma, beta : ndarray, shape (C,)
    """

    xs: list[np.ndarray]
    dys: list[np.ndarray]
    x_inference: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray


def make_batches(case: Case) -> Batches:
    """Draw the batches of ``case`` from ``numpy.random.default_rng(case.seed)``.

    ``x = loc + scale * z`` and ``dy = z'`` with ``z, z'`` standard normal, ``gamma ~ U(0.5, 1.5)``,
    ``beta ~ N(0, 0.5^2)``, each rounded to its dtype (round to nearest even).
    """
    rng = np.random.default_rng(case.seed)
    pdtype = compute_dtype(case.dtype)
    c = case.channels
    gamma = _round_to(rng.uniform(0.5, 1.5, c), pdtype)
    beta = _round_to(rng.normal(0.0, 0.5, c), pdtype)

    def batch() -> np.ndarray:
        return _round_to(case.loc + case.scale * rng.standard_normal(case.shape), case.dtype)

    xs, dys = [], []
    for _ in range(case.steps):
        xs.append(batch())
        dys.append(_round_to(rng.standard_normal(case.shape), case.dtype))
    return Batches(xs, dys, batch(), gamma, beta)


# ----------------------------------------------------------------------------------------------------
# Traces: what one implementation produced, as float64 arrays
# ----------------------------------------------------------------------------------------------------

#: What one implementation produced: for each quantity of ``QUANTITIES`` one float64 array per training step
#: (``y_inference``: one array, after the last step, or none in mode "train").
Trace = dict[str, list[np.ndarray]]


def _empty_trace() -> Trace:
    return {q: [] for q in QUANTITIES}


class _NotInstalled(Exception):
    """The framework of an implementation is not installed; the message names it."""


def _reference_run(case: Case, conv: Convention, data: Batches, dtype: str) -> tuple[Trace, list]:
    """The NumPy reference in ``dtype`` (float64: the truth). Also returns the caches."""
    if dtype == "bfloat16":
        raise NotApplicable("NumPy has no bfloat16")
    pdtype = compute_dtype(dtype)
    gamma, beta = data.gamma.astype(pdtype), data.beta.astype(pdtype)
    stats = RunningStats(case.channels, conv, dtype=np.dtype(pdtype))
    trace, caches = _empty_trace(), []
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
    return _reference_run(case, convention, batches if batches is not None else make_batches(case), dtype)[0]


def _torch_trace(case: Case, conv: Convention, data: Batches, native: bool, device: str) -> Trace:
    try:
        import torch

        from bnref.layers import torch_bn
    except ImportError:
        raise _NotInstalled("PyTorch") from None
    tdtype = getattr(torch, case.dtype)
    pdtype = getattr(torch, compute_dtype(case.dtype))
    ndim, c = len(case.shape), case.channels
    if native:
        cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}.get(
            ndim
        )
        if cls is None:
            raise NotApplicable(f"torch.nn.BatchNorm* takes 2D-5D input, not {ndim}D")
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
    for x, dy in zip(data.xs, data.dys, strict=False):
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


def _keras_trace(case: Case, conv: Convention, data: Batches, native: bool) -> Trace:
    """``keras.layers.BatchNormalization`` (native) or ``bnref.layers.keras_bn.BatchNormalization``
    (scratch), in this process.

    The native layer runs on whichever backend Keras loaded (TensorFlow unless ``KERAS_BACKEND`` says
    otherwise); the from-scratch layer is TensorFlow code and needs the TensorFlow backend.
    """
    try:
        import keras

        if native:
            cls = keras.layers.BatchNormalization
        else:
            import tensorflow  # noqa: F401  (bnref.layers.keras_bn is TensorFlow code)

            from bnref.layers import keras_bn

            cls = keras_bn.BatchNormalization
    except ImportError:
        raise _NotInstalled("TensorFlow/Keras") from None
    return _keras_layer_trace(case, conv, data, cls)


def _keras_layer_trace(case: Case, conv: Convention, data: Batches, cls: Any) -> Trace:
    """Run a Keras BN layer class through ``case``; the gradients come from the loaded backend's autodiff."""
    import keras

    backend = keras.backend.backend()
    step = {"tensorflow": _keras_step_tensorflow, "jax": _keras_step_jax, "torch": _keras_step_torch}.get(backend)
    if step is None:
        raise NotApplicable(f"no gradient code for the Keras backend {backend!r}")
    # Layer dtype policy: float64 runs in float64; half-precision inputs go into a float32 layer, which
    # (native and scratch alike) autocasts them to float32 and returns float32.
    policy = "float64" if case.dtype == "float64" else "float32"
    layer = cls(axis=case.axis, momentum=conv.momentum, epsilon=conv.eps, dtype=policy)
    layer.build(case.shape)
    layer.gamma.assign(data.gamma)
    layer.beta.assign(data.beta)

    def to_numpy(v: Any) -> np.ndarray:
        # bfloat16 comes back as ml_dtypes' bfloat16, which converts exactly; a copy, since variables change in
        # place later
        return np.array(keras.ops.convert_to_numpy(v), np.float64, copy=True)

    trace = _empty_trace()
    y_inf = None
    for x, dy in zip(data.xs, data.dys, strict=False):
        if backend == "jax":  # the step also returns the inference output after it (one compiled call)
            y, dx, dgamma, dbeta, y_inf = step(layer, x, dy, case.dtype, data.x_inference)
        else:
            y, dx, dgamma, dbeta = step(layer, x, dy, case.dtype)
        for q, v in zip(QUANTITIES, (y, dx, dgamma, dbeta, layer.moving_mean, layer.moving_variance), strict=False):
            trace[q].append(to_numpy(v))
    if case.mode == "train+inference":
        if y_inf is None:
            y_inf = layer(keras.ops.convert_to_tensor(data.x_inference, dtype=case.dtype), training=False)
        trace["y_inference"].append(to_numpy(y_inf))
    return trace


def _keras_step_tensorflow(layer: Any, x: np.ndarray, dy: np.ndarray, dtype: str) -> tuple:
    """One training call under TensorFlow: ``tf.GradientTape`` for dx, dgamma, dbeta."""
    import tensorflow as tf

    xt = tf.constant(x, dtype=getattr(tf, dtype))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
    dy_t = tf.cast(tf.constant(dy, dtype=getattr(tf, dtype)), y.dtype)
    dx, dgamma, dbeta = tape.gradient(y, [xt, layer.gamma, layer.beta], output_gradients=dy_t)
    return y, dx, dgamma, dbeta


def _keras_step_jax(layer: Any, x: np.ndarray, dy: np.ndarray, dtype: str, x_inference: np.ndarray) -> tuple:
    """One training call under JAX: ``layer.stateless_call`` differentiated by ``jax.vjp``, compiled by ``jax.jit``.

    The moving statistics come back from the stateless call and are assigned to the layer afterwards, as
    Keras' own JAX trainer does; the same compiled call also returns the inference output on
    ``x_inference`` with the updated statistics. It is compiled once per layer configuration, input shape and
    dtype (about half a second each; running op by op would compile every operation for every new shape).
    """
    import jax
    import jax.numpy as jnp

    key = (
        type(layer),
        layer.axis,
        layer.momentum,
        layer.epsilon,
        layer.dtype_policy.name,
        layer.center,
        layer.scale,
        x.shape,
        dtype,
    )
    if key not in _JAX_STEPS:

        @jax.jit
        def step(xj: Any, trainable: list, frozen: list, dy: Any, x_inf: Any) -> tuple:
            def forward(xj: Any, trainable: list) -> tuple:
                return layer.stateless_call(trainable, frozen, xj, training=True)

            y, vjp, updated = jax.vjp(forward, xj, trainable, has_aux=True)
            dx, dtrainable = vjp(dy.astype(y.dtype))
            y_inf, _ = layer.stateless_call(trainable, updated, x_inf, training=False)
            return y, dx, dtrainable, updated, y_inf

        _JAX_STEPS[key] = step
    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]
    y, dx, dtrainable, updated, y_inf = _JAX_STEPS[key](
        jnp.asarray(x, dtype=dtype), trainable, frozen, jnp.asarray(dy, dtype=dtype), jnp.asarray(x_inference, dtype)
    )
    for v, value in zip(layer.non_trainable_variables, updated, strict=True):
        v.assign(value)
    where = [next(i for i, v in enumerate(layer.trainable_variables) if v is w) for w in (layer.gamma, layer.beta)]
    return y, dx, dtrainable[where[0]], dtrainable[where[1]], y_inf


#: Compiled JAX training steps, per (layer class, configuration, input shape, dtype).
_JAX_STEPS: dict[tuple, Any] = {}


def _keras_step_torch(layer: Any, x: np.ndarray, dy: np.ndarray, dtype: str) -> tuple:
    """One training call under PyTorch: autograd from ``y.backward(dy)``; Keras' weights are torch Parameters."""
    import torch

    xt = torch.as_tensor(x).to(getattr(torch, dtype)).requires_grad_(True)
    y = layer(xt, training=True)
    y.backward(torch.as_tensor(dy).to(getattr(torch, dtype)).to(device=y.device, dtype=y.dtype))
    gamma, beta = layer.gamma.value, layer.beta.value
    dgamma, dbeta = gamma.grad.detach().clone(), beta.grad.detach().clone()
    gamma.grad = beta.grad = None
    return y.detach(), xt.grad, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------
# Error bounds: bnref.testing's model applied to every step (derived in the book's appendix, ch-bounds)
# ----------------------------------------------------------------------------------------------------


def _channels_last(a: np.ndarray, case: Case) -> np.ndarray:
    """``a`` of ``case.shape`` as a 2-D (m, C) array, one column per channel."""
    return np.moveaxis(np.asarray(a), case.channel_axis, -1).reshape(-1, case.channels)


def _bounds(case: Case, conv: Convention, truth: Trace, caches: list, data: Batches) -> dict[str, list[float]]:
    """Absolute error bound per quantity and step (max over channels), from the float64 truth and caches."""
    eps_out = machine_eps(case.dtype)  # the rounding of outputs returned in the input dtype
    w_const = _new_value_weight_rule(conv)
    unbiased = conv.running_var == "unbiased"
    out: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    b_mean = np.zeros(case.channels)
    b_var = np.zeros(case.channels)
    for k, (cache, dy) in enumerate(zip(caches, data.dys, strict=False), start=1):
        s = channel_summaries(
            _channels_last(cache.x_hat, case), _channels_last(dy, case), cache.mean, cache.var, cache.eps
        )
        step = training_bounds(s, data.gamma, data.beta, truth["dgamma"][k - 1], case.dtype)
        for q in ("y", "dx"):
            out[q].append(float(np.max(step[q])) + eps_out * float(np.max(np.abs(truth[q][k - 1]))))
        for q in ("dgamma", "dbeta"):
            out[q].append(float(np.max(step[q])))
        w = w_const if w_const is not None else 1.0 / k
        b_mean = running_mean_bound(b_mean, w, s, cache.mean, truth["running_mean"][k - 1], case.dtype)
        b_var = running_var_bound(b_var, w, s, cache.mean, cache.var, truth["running_var"][k - 1], case.dtype, unbiased)
        out["running_mean"].append(float(np.max(b_mean)))
        out["running_var"].append(float(np.max(b_var)))
    if truth["y_inference"]:
        bound = inference_bound(
            _channels_last(data.x_inference, case),
            data.gamma,
            data.beta,
            truth["running_mean"][-1],
            truth["running_var"][-1],
            conv.eps,
            b_mean,
            b_var,
            case.dtype,
        )
        out["y_inference"].append(float(np.max(bound)) + eps_out * float(np.max(np.abs(truth["y_inference"][0]))))
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


class Status(enum.Enum):
    """Whether an implementation ran on a case; the value is what a table cell shows."""

    RAN = "ok"
    NOT_INSTALLED = "not installed"
    NOT_APPLICABLE = "n/a"
    ERROR = "error"


@dataclass(frozen=True)
class Row:
    """One implementation's line of an ``AgreementTable``.

    ``status`` is ``Status.RAN`` when it ran; otherwise ``reason`` says why not (the framework that is
    missing, the convention or dtype it cannot express, the error it raised) and ``diffs`` is empty.
    ``version`` names the framework versions and backend of a row run in another process (the Keras
    backend rows, e.g. "Keras 3.15.1 on JAX 0.10.2"); empty for the rows run in this process.
    """

    implementation: str
    dtype: str
    convention: str
    status: Status
    reason: str = ""
    diffs: dict[str, Diff] = field(default_factory=dict)
    version: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.RAN

    @property
    def message(self) -> str:
        """The status as one line, e.g. "n/a: NumPy has no bfloat16" or "not installed (PyTorch)"."""
        if self.ok:
            return self.status.value
        if self.status is Status.NOT_INSTALLED:
            return f"{self.status.value} ({self.reason})"
        return f"{self.status.value}: {self.reason}"

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
                cells += [r.message] + [""] * (len(self.quantities) - 1)
            body.append(cells)
        return header, body

    def format_table(self, metric: str = "rel") -> str:
        """Plain-text table (no pandas)."""
        header, body = self._grid(metric)
        widths = []
        for j in range(len(header)):
            cells = [b[j] for b, r in zip(body, self.rows, strict=False) if r.ok or j < 3]
            widths.append(max([len(header[j])] + [len(c) for c in cells]))
        lines = [
            f"case: {self.case.label}   [{metric}]",
            "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip(),
        ]
        for b, r in zip(body, self.rows, strict=False):
            cells = b if r.ok else b[:3] + [r.message]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths + [0], strict=False)).rstrip())
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
            base = {
                "case": self.case.label,
                "implementation": r.implementation,
                "dtype": r.dtype,
                "convention": r.convention,
                "status": r.status.value,
                "reason": r.reason,
                "version": r.version,
            }
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
    data = make_batches(case)
    rows: list[Row] = []
    truths: dict[str, tuple[Trace, dict]] = {}

    def truth_for(conv: Convention) -> tuple[Trace, dict]:
        if conv.name not in truths:
            trace, caches = _reference_run(case, conv, data, "float64")
            truths[conv.name] = (trace, _bounds(case, conv, trace, caches, data))
        return truths[conv.name]

    target = _target_convention(case)
    if target is not None:
        numpy_convs = [target]
    else:
        numpy_convs = [framework_convention(case, f) for f in ("torch", "keras")]

    for name, framework in IMPLEMENTATIONS:
        if framework not in frameworks:
            continue
        if framework == "numpy":
            convs: list[Convention] = numpy_convs
        else:
            try:
                convs = [framework_convention(case, framework)]
            except NotApplicable as why:
                rows.append(Row(name, case.dtype, "-", Status.NOT_APPLICABLE, str(why)))
                continue
        for conv in convs:

            def trace_of(conv: Convention = conv, name: str = name, framework: str = framework) -> Trace:
                if framework == "numpy":
                    return _reference_run(case, conv, data, case.dtype)[0]
                if framework == "torch":
                    return _torch_trace(case, conv, data, native=name.endswith("native"), device=device)
                return _keras_trace(case, conv, data, native=name.endswith("native"))

            rows.append(_run_row(name, case, conv, trace_of, truth_for))
    return AgreementTable(case, rows)


def _run_row(name: str, case: Case, conv: Convention, trace_of: Any, truth_for: Any, version: str = "") -> Row:
    """One implementation's row: run ``trace_of()`` and compare it with the float64 truth under ``conv``."""
    try:
        trace = trace_of()
    except _NotInstalled as why:
        return Row(name, case.dtype, conv.name, Status.NOT_INSTALLED, str(why), version=version)
    except NotApplicable as why:
        return Row(name, case.dtype, conv.name, Status.NOT_APPLICABLE, str(why), version=version)
    except (RuntimeError, ValueError, TypeError) as err:  # a framework refusing the case is a finding
        return Row(name, case.dtype, conv.name, Status.ERROR, f"{type(err).__name__}: {err}", version=version)
    truth, bounds = truth_for(conv)
    return Row(name, case.dtype, conv.name, Status.RAN, diffs=_compare(trace, truth, bounds), version=version)


def compare_trace(case: Case, convention: Convention, trace: Trace, batches: Batches | None = None) -> dict[str, Diff]:
    """Compare any implementation's ``trace`` on the batches of ``case`` with the float64 reference.

    Point the oracle at a BN that ``run_case`` does not know: run it on ``make_batches(case)`` (the same
    ``batches`` must be passed here if they were drawn otherwise), collect a ``Trace``, and get one ``Diff``
    per quantity against the bounds of ``bnref.testing`` under ``convention``.
    """
    data = batches if batches is not None else make_batches(case)
    truth, caches = _reference_run(case, convention, data, "float64")
    return _compare(trace, truth, _bounds(case, convention, truth, caches, data))


def summary_table(tables: Sequence[AgreementTable], metric: Literal["verdict", "ratio"] = "verdict") -> str:
    """One line per case, one column per implementation: "ok"/"FAIL" (or the worst error/bound ratio).

    The columns are ``IMPLEMENTATIONS`` followed by any other rows the tables hold (the Keras backend rows
    of ``run_cases``), in the order they first appear.
    """
    names = [n for n, _ in IMPLEMENTATIONS]
    for t in tables:
        names += [r.implementation for r in t.rows if r.implementation not in names]
    labels = [t.case.label for t in tables]
    width = max([len("case")] + [len(s) for s in labels])
    widths = [max(13, len(n)) for n in names]
    lines = ["case".ljust(width) + "  " + "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    for t, label in zip(tables, labels, strict=False):
        cells = []
        for n in names:
            rows = [r for r in t.rows if r.implementation == n]
            if not rows:
                cells.append("-")
            elif not all(r.ok for r in rows):
                cells.append(next(r.status.value for r in rows if not r.ok))
            elif metric == "verdict":
                cells.append("ok" if all(r.passed for r in rows) else "FAIL")
            else:
                cells.append(f"{max(r.worst_ratio for r in rows):.2g}")
        lines.append(
            label.ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        )
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
    """The result of ``cross_convention``: one ``ConventionRow`` per quantity, or a status saying why not."""

    case: Case
    rows: list[ConventionRow]
    status: Status = Status.RAN
    reason: str = ""

    def format_table(self) -> str:
        lines = [f"torch native vs keras native, default conventions: {self.case.label}"]
        if self.status is not Status.RAN:
            return lines[0] + "\n" + f"{self.status.value} ({self.reason})"
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
    data = make_batches(case)
    traces, truths, bounds = {}, {}, {}
    for framework in ("torch", "keras"):
        conv = framework_convention(case, framework)
        try:
            if framework == "torch":
                traces[framework] = _torch_trace(case, conv, data, native=True, device="cpu")
            else:
                traces[framework] = _keras_trace(case, conv, data, native=True)
        except _NotInstalled as why:
            return ConventionTable(case, [], Status.NOT_INSTALLED, str(why))
        truth, caches = _reference_run(case, conv, data, "float64")
        truths[framework], bounds[framework] = truth, _bounds(case, conv, truth, caches, data)
    rows = []
    for q in QUANTITIES:
        if not truths["torch"][q]:
            continue
        measured = max(
            float(np.max(np.abs(a - b))) for a, b in zip(traces["torch"][q], traces["keras"][q], strict=False)
        )
        predicted = max(
            float(np.max(np.abs(a - b))) for a, b in zip(truths["torch"][q], truths["keras"][q], strict=False)
        )
        bound = max(bt + bk for bt, bk in zip(bounds["torch"][q], bounds["keras"][q], strict=False))
        rows.append(ConventionRow(q, measured, predicted, bound))
    return ConventionTable(case, rows)


# ----------------------------------------------------------------------------------------------------
# Keras on every backend: one fresh process per backend (the backend is fixed when Keras is imported)
# ----------------------------------------------------------------------------------------------------

#: The Keras 3 backends, in table order; their rows are named "keras-<backend>".
KERAS_BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")

#: A backend process runs only functions of bnref's own modules ("bnref.module:function").
_JOB_PACKAGE = "bnref."


@dataclass(frozen=True)
class BackendRun:
    """What one Keras backend process returned.

    Attributes
    ----------
    backend : str
        The ``KERAS_BACKEND`` asked for.
    keras, backend_version : str
        ``keras.__version__`` and the backend framework's version, as the process read them ("" if it failed).
    results : dict
        Job name -> the job's JSON-ready result.
    error : str
        Empty if the process ran; else the end of its stderr (e.g. the backend is not installed).
    """

    backend: str
    keras: str = ""
    backend_version: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def label(self) -> str:
        """E.g. "Keras 3.15.1 on JAX 0.10.2"."""
        names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
        if not self.ok:
            return f"Keras on {names.get(self.backend, self.backend)} (did not run)"
        return f"Keras {self.keras} on {names.get(self.backend, self.backend)} {self.backend_version}"


def _backend_process_main() -> None:
    """The body of a backend process: read jobs (JSON) from argv[1], write results (JSON) to argv[2]."""
    import importlib
    import json
    import sys

    import keras

    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    version = importlib.import_module(module).__version__ if module else ""
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    results = {}
    for name, (target, kwargs) in jobs.items():
        module_name, function = target.split(":")
        results[name] = getattr(importlib.import_module(module_name), function)(**kwargs)
    with open(sys.argv[2], "w") as f:
        json.dump({"backend": backend, "keras": keras.__version__, "backend_version": version, "results": results}, f)


def on_keras_backends(
    jobs: dict[str, tuple[str, dict[str, Any]]],
    backends: Sequence[str] = KERAS_BACKENDS,
    timeout: float = 600.0,
) -> dict[str, BackendRun]:
    """Run ``jobs`` under each Keras backend, one fresh Python process per backend, all at once.

    Keras fixes its backend when it is imported, so each backend needs its own process; starting them
    together and giving each every job makes the cost one import per backend, paid in parallel.

    Parameters
    ----------
    jobs : dict
        Job name -> ``("bnref.module:function", kwargs)``; the function runs in the backend process and
        returns JSON-ready data (``keras_backend_rows`` here, ``bnref.check.precision.keras_sweep``; any function
        of a ``bnref`` module).
    backends : sequence of str
        Values of ``KERAS_BACKEND``. Each process also gets ``TF_CPP_MIN_LOG_LEVEL=3`` and, for JAX,
        ``JAX_ENABLE_X64=1``: without it JAX has no float64 at all (it truncates float64 arrays to float32,
        with a UserWarning), so a float64 case would not even have float64 variables. With it, what the
        float64 cases measure is Keras' own choice: its layer computes in ``keras.backend.result_type(dtype,
        "float32")``, which is float32 for float64 on every backend but TensorFlow (Keras 3.15.1,
        ``keras/src/backend/common/dtypes.py``).
    timeout : float
        Seconds to wait for each process.

    Returns
    -------
    dict
        Backend -> ``BackendRun``; a process that fails (a backend not installed, a job that raises) gives a
        ``BackendRun`` whose ``error`` holds the end of its stderr.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile

    for name, (target, _) in jobs.items():
        module_name = target.split(":")[0]
        if not module_name.startswith(_JOB_PACKAGE) or target.count(":") != 1:
            raise ValueError(f"job {name!r}: {target!r} is not a function of a bnref module ('bnref.module:function')")
    code = "from bnref.check.agreement import _backend_process_main; _backend_process_main()"
    runs: dict[str, BackendRun] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "jobs.json")
        with open(spec, "w") as f:
            json.dump(jobs, f)
        started = {}
        for backend in backends:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            if backend == "jax":
                env["JAX_ENABLE_X64"] = "1"
            out = os.path.join(tmp, f"{backend}.json")
            err = open(os.path.join(tmp, f"{backend}.err"), "w+")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(
                [sys.executable, "-c", code, spec, out], env=env, stdout=subprocess.DEVNULL, stderr=err
            )
            started[backend] = (proc, out, err)
        for backend, (proc, out, err) in started.items():
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                returncode = None
            err.seek(0)
            stderr = err.read()
            err.close()
            if returncode != 0:
                why = "timed out" if returncode is None else f"exit status {returncode}"
                runs[backend] = BackendRun(backend, error=f"{why}: {stderr[-2000:]}")
                continue
            with open(out) as f:
                done = json.load(f)
            runs[backend] = BackendRun(backend, done["keras"], done["backend_version"], done["results"])
    return runs


def _diff_from_json(d: dict[str, Any]) -> Diff:
    return Diff(d["max_abs"], d["max_rel"], d["ratio"], d["bound"], d["rel_bound"])


def keras_backend_rows(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The row of ``keras.layers.BatchNormalization`` on the loaded backend for each case (a job).

    Runs in a backend process of ``on_keras_backends``; ``cases`` are ``dataclasses.asdict(Case)``. Each
    case is compared with the float64 reference under Keras' convention, exactly as ``run_case`` does in
    this process; the gradients come from the backend's own autodiff (``tf.GradientTape``, ``jax.vjp`` of
    ``layer.stateless_call``, ``torch.autograd``). Returns one JSON-ready row per case.
    """
    import keras

    name = f"keras-{keras.backend.backend()}"
    out = []
    for fields in cases:
        case = Case(**fields)
        data = make_batches(case)

        def truth_for(conv: Convention, case: Case = case, data: Batches = data) -> tuple[Trace, dict]:
            trace, caches = _reference_run(case, conv, data, "float64")
            return trace, _bounds(case, conv, trace, caches, data)

        try:
            conv = framework_convention(case, "keras")
        except NotApplicable as why:
            row = Row(name, case.dtype, "-", Status.NOT_APPLICABLE, str(why))
        else:

            def trace_of(case: Case = case, conv: Convention = conv, data: Batches = data) -> Trace:
                return _keras_layer_trace(case, conv, data, keras.layers.BatchNormalization)

            row = _run_row(name, case, conv, trace_of, truth_for)
        out.append(
            {
                "implementation": row.implementation,
                "dtype": row.dtype,
                "convention": row.convention,
                "status": row.status.value,
                "reason": row.reason,
                "diffs": {q: dataclasses.asdict(d) for q, d in row.diffs.items()},
            }
        )
    return out


def keras_rows_job(cases: Sequence[Case]) -> tuple[str, dict[str, Any]]:
    """The job of ``on_keras_backends`` that runs ``cases`` through Keras' layer (``keras_backend_rows``)."""
    return "bnref.check.agreement:keras_backend_rows", {"cases": [dataclasses.asdict(c) for c in cases]}


def with_keras_backend_rows(
    tables: Sequence[AgreementTable], runs: dict[str, BackendRun], job: str = "agreement"
) -> list[AgreementTable]:
    """``tables`` with one more row per backend run, "keras-<backend>", from the results of ``job``.

    A backend whose process failed gives rows with status "not installed" (its framework cannot be
    imported) or "error", and the reason.
    """
    out = []
    for i, table in enumerate(tables):
        rows = list(table.rows)
        for backend, run in runs.items():
            name = f"keras-{backend}"
            if not run.ok:
                missing = "ModuleNotFoundError" in run.error or "Unable to import" in run.error
                status = Status.NOT_INSTALLED if missing else Status.ERROR
                reason = run.error.strip().splitlines()[-1] if run.error.strip() else run.error
                rows.append(Row(name, table.case.dtype, "-", status, reason, version=run.label))
                continue
            got = run.results[job][i]
            diffs = {q: _diff_from_json(d) for q, d in got["diffs"].items()}
            rows.append(
                Row(name, got["dtype"], got["convention"], Status(got["status"]), got["reason"], diffs, run.label)
            )
        out.append(AgreementTable(table.case, rows))
    return out


def run_cases(
    cases: Sequence[Case],
    device: str = "cpu",
    frameworks: Sequence[str] = ("numpy", "torch", "keras"),
    keras_backends: Sequence[str] = KERAS_BACKENDS,
) -> list[AgreementTable]:
    """``run_case`` for each case, plus a row per Keras backend ("keras-tensorflow", "keras-jax", "keras-torch").

    The in-process rows are those of ``run_case``; the backend rows run ``keras.layers.BatchNormalization``
    in one process per backend (``on_keras_backends``), all cases in one go. Their ``version`` names the
    Keras and backend versions.
    """
    runs = on_keras_backends({"agreement": keras_rows_job(cases)}, keras_backends) if keras_backends else {}
    return with_keras_backend_rows([run_case(c, device, frameworks) for c in cases], runs)
