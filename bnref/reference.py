"""NumPy reference for Batch Normalization: the oracle every other implementation is checked against.

Each public function is one equation of the book, written with NumPy as the equation reads. For one channel
the mini-batch holds ``m`` values ``x_i`` (``m = N`` for a dense ``(N, C)`` input, ``m = N * H * W`` for
images); every per-channel statistic is a reduction over all axes but the channel axis (``keepdims=True``, so
that it broadcasts back against ``x``).

Forward, training mode (book, chapter "The forward transform"):

* batch mean            ``mu = (1/m) sum_i x_i``                          (eq-batch-mean)
* biased batch variance ``var = (1/m) sum_i (x_i - mu)^2``                (eq-batch-var)
* inverse std           ``inv_std = (var + eps)^(-1/2)``                  (eq-bw-inv-std)
* normalised input      ``x_hat = (x - mu) * inv_std``                    (eq-x-hat)
* output                ``y = gamma * x_hat + beta``                      (eq-scale-shift)

Backward (chapter "The backward pass"), per channel, with ``dy = dL/dy``:

* ``dbeta = sum_i dy_i``                                                   (eq-dbeta)
* ``dgamma = sum_i dy_i * x_hat_i``                                        (eq-dgamma)
* ``dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)``         (eq-dx-compact)

Inference (chapter "Inference"): ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``
(eq-inference), the running estimates following ``r = (1 - w) r + w b`` (eq-running-update).

Precision: float16 inputs are computed in float32 and the outputs cast back (as both frameworks do); float32
and float64 are computed in their own precision. The variance is the two-pass one, ``mean((x - mu)**2)``;
the one-pass ``mean(x**2) - mu**2`` (eq-fwd-one-pass) is available from ``batch_mean_var`` to show how it
fails when ``|mean| >> std``.

Every function checks its input (``bnref.validation``): ``TypeError`` for an argument of the wrong type,
``ValueError`` for a wrong value, each naming the problem. No framework is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import validation as v
from .conventions import Convention, get_convention

__all__ = [
    "BatchNormCache",
    "RunningStats",
    "batch_mean_var",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_forward",
    "batch_norm_inference",
    "fold_into_preceding",
    "inference_affine",
    "mean_and_centred",
    "running_update",
    "update_running_stats",
]


# ----------------------------------------------------------------------------------------------------
# Forward (training mode)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNormCache:
    """What the training-mode forward pass keeps for the backward pass.

    Every array is the forward pass's own: none of them shares memory with the caller's ``x``, ``gamma``
    or ``beta``, so changing those after the forward pass does not change the backward pass.

    Attributes
    ----------
    x : ndarray, shape like the input
        A copy of the input, in the compute dtype (float32 for float16 inputs).
    x_hat : ndarray, shape like the input
        The normalised input ``(x - mean) * inv_std``, eq. ``eq-x-hat``.
    mean : ndarray, shape (C,)
        Batch mean per channel, eq. ``eq-batch-mean``.
    var : ndarray, shape (C,)
        Biased batch variance per channel (divisor m), eq. ``eq-batch-var``.
    inv_std : ndarray, shape (C,)
        ``1 / sqrt(var + eps)``, eq. ``eq-bw-inv-std``.
    gamma : ndarray, shape (C,)
        The scale used, in the compute dtype.
    eps : float
    axis : int
        The channel axis, normalised to ``0 <= axis < x.ndim``.
    m : int
        Number of values per channel in the batch.
    """

    x: np.ndarray
    x_hat: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    eps: float
    axis: int
    m: int

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        """The axes every per-channel sum runs over: all but ``axis``."""
        return v.reduce_axes(self.x.ndim, self.axis)

    @property
    def bshape(self) -> tuple[int, ...]:
        """The shape that broadcasts a per-channel vector against ``x``, e.g. ``(1, C, 1, 1)`` for NCHW."""
        return v.broadcast_shape(self.x.shape, self.axis)

    @property
    def unbiased_var(self) -> np.ndarray:
        """``m / (m - 1) * var``, the variance PyTorch feeds its running estimate."""
        return self.var * (self.m / (self.m - 1))


def mean_and_centred(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The batch mean ``mu`` (eq. ``eq-batch-mean``) and the centred input ``x - mu`` (eq. ``eq-bw-xc``).

    Both have ``keepdims`` shape. In exact arithmetic this is ``mu = mean(x)``, ``x - mu``. In floating
    point the computed ``mu`` is off by a rounding error of order ``eps * |mu|``, which is large against the
    spread of the channel when ``|mu| >> std`` (float32 at ``|mu| / std = 1e4`` loses three digits). The
    centred values themselves reveal that error: their mean is exactly it, and is computed to order
    ``eps * std``. Subtracting it once more (the correction of Chan, Golub & LeVeque's corrected two-pass
    algorithm) leaves centred values, and a ``mu``, accurate whatever ``|mu| / std``.

    Every standardisation of the package centres with it: Batch Normalization (``axes`` all but the
    channel axis) and, in ``bnref.normalization``, Layer and Group Normalization (an example's last axes, a
    group). ``x`` is in the compute dtype; the statistics run over ``axes``.
    """
    mu = np.mean(x, axis=axes, keepdims=True)
    x_centred = x - mu
    mu_error = np.mean(x_centred, axis=axes, keepdims=True)
    x_centred -= mu_error
    return mu + mu_error, x_centred


def batch_mean_var(
    x: np.ndarray,
    axis: int = 1,
    method: Literal["two-pass", "one-pass"] = "two-pass",
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel batch mean and biased variance, eqs. ``eq-batch-mean`` and ``eq-batch-var``.

    ``mu = (1/m) sum_i x_i`` and ``var = (1/m) sum_i (x_i - mu)^2`` over the ``m`` values of each channel.

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L), (N, C, H, W), (N, H, W, C), ...
        Real floating-point input; float16 is computed in float32.
    axis : int
        The channel axis; every other axis is reduced.
    method : {"two-pass", "one-pass"}
        ``"two-pass"`` (default): the mean first, then the mean squared deviation from it; accurate whatever
        ``|mean| / std``. ``"one-pass"``: ``mean(x**2) - mean(x)**2`` (eq. ``eq-fwd-one-pass``) in the
        compute dtype; it is here only to show, in the book and a test, how it loses every digit when
        ``|mean| >> std``, and for the conventions that feed it to the running variance (``RunningStats``).
    check_finite : bool
        If True (default), non-finite inputs raise a ValueError naming the channels.

    Returns
    -------
    mean, var : ndarray, shape (C,)
    """
    x = v.as_float_array(x, "x")
    axis = v.channel_axis(x.shape, axis)
    if v.values_per_channel(x.shape, axis) < 1:
        raise ValueError(f"x must have at least one value per channel; got shape {x.shape}")
    v.check_choice(method, "method", ("two-pass", "one-pass"))
    x = x.astype(v.compute_dtype(x.dtype), copy=False)
    axes = v.reduce_axes(x.ndim, axis)
    if check_finite:
        v.check_finite_channels(x, axes, "x")
    with np.errstate(invalid="ignore", over="ignore"):
        if method == "two-pass":
            mu, x_centred = mean_and_centred(x, axes)
            var = np.mean(x_centred**2, axis=axes, keepdims=True)
        else:
            mu = np.mean(x, axis=axes, keepdims=True)
            var = np.mean(x**2, axis=axes, keepdims=True) - mu**2
    return mu.reshape(-1), var.reshape(-1)


def batch_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-5,
    axis: int = 1,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, BatchNormCache]:
    """Training-mode Batch Normalization with batch statistics, eqs. ``eq-batch-mean`` to ``eq-scale-shift``.

    Per channel, over the ``m`` values of the batch::

        mu      = (1/m) sum_i x_i                  (eq-batch-mean)
        var     = (1/m) sum_i (x_i - mu)^2         (eq-batch-var, biased: divisor m)
        inv_std = 1 / sqrt(var + eps)              (eq-bw-inv-std)
        x_hat   = (x - mu) * inv_std               (eq-x-hat)
        y       = gamma * x_hat + beta             (eq-scale-shift)

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L), (N, C, H, W) with axis=1, or (N, H, W, C) with axis=-1, ...
        Real floating-point input with at least two values per channel.
    gamma, beta : array_like, shape (C,)
        Scale and shift.
    eps : float
        Positive stabiliser inside the square root (PyTorch 1e-5, Keras 1e-3; see ``bnref.conventions``).
    axis : int
        The channel axis.
    check_finite : bool
        If True (default), non-finite inputs raise a ValueError naming the channels. If False they
        propagate into the output as in the frameworks.

    Returns
    -------
    y : ndarray, same shape and dtype as x
    cache : BatchNormCache
        Copies of ``x`` and ``gamma``, and ``x_hat``, ``mean``, ``var``, ``inv_std``: what the backward
        passes need.
    """
    x = v.as_float_array(x, "x")
    axis = v.channel_axis(x.shape, axis)
    m = v.values_per_channel(x.shape, axis)
    if m < 2:
        raise ValueError(
            f"training-mode batch norm needs at least 2 values per channel to estimate a variance; "
            f"x with shape {x.shape} has {m} per channel (axis {axis}). "
            "Use a larger batch, or batch_norm_inference with running statistics."
        )
    dtype = v.compute_dtype(x.dtype)
    gamma = v.channel_param(gamma, "gamma", x.shape, axis, dtype)
    beta = v.channel_param(beta, "beta", x.shape, axis, dtype)
    eps = v.check_eps(eps)
    x_in = np.array(x, dtype=dtype)  # a copy: the cache must not change when the caller's x does
    axes = v.reduce_axes(x.ndim, axis)
    b = v.broadcast_shape(x.shape, axis)

    with np.errstate(invalid="ignore", over="ignore"):  # non-finite values are reported below, by channel
        mu, x_centred = mean_and_centred(x_in, axes)  # eq-batch-mean, x - mu
        var = np.mean(x_centred**2, axis=axes, keepdims=True)  # eq-batch-var
        if check_finite:
            bad = np.flatnonzero(~(np.isfinite(mu) & np.isfinite(var)))
            if bad.size:
                v.raise_non_finite(x_in, axes, bad, "x")
        inv_std = 1.0 / np.sqrt(var + eps)  # eq-bw-inv-std
        x_hat = x_centred * inv_std  # eq-x-hat
        y = gamma.reshape(b) * x_hat + beta.reshape(b)  # eq-scale-shift

    cache = BatchNormCache(
        x=x_in,
        x_hat=x_hat,
        mean=mu.reshape(-1),
        var=var.reshape(-1),
        inv_std=inv_std.reshape(-1),
        gamma=gamma,
        eps=eps,
        axis=axis,
        m=m,
    )
    return y.astype(x.dtype, copy=False), cache


# ----------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------


def batch_norm_backward(
    dy: np.ndarray, cache: BatchNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of training-mode Batch Normalization, compact closed form.

    Per channel, every sum running over the channel's ``m`` values::

        dbeta  = sum(dy)                                               (eq-dbeta)
        dgamma = sum(dy * x_hat)                                       (eq-dgamma)
        dx     = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)  (eq-dx-compact)

    Parameters
    ----------
    dy : ndarray, same shape as the forward input
        Upstream gradient dL/dy.
    cache : BatchNormCache
        From ``batch_norm_forward``.
    check_finite : bool
        Raise a ValueError naming the channels if dy has non-finite values.

    Returns
    -------
    dx : ndarray, same shape as dy, in the compute dtype (float32 for float16)
    dgamma, dbeta : ndarray, shape (C,)
    """
    v.check_cache(cache, BatchNormCache, "batch_norm_forward")
    dy = v.as_dy(dy, cache.x.shape, cache.x.dtype)
    axes, b, m = cache.reduce_axes, cache.bshape, cache.m
    x_hat = cache.x_hat
    gamma, inv_std = cache.gamma.reshape(b), cache.inv_std.reshape(b)

    with np.errstate(invalid="ignore", over="ignore"):
        dbeta = np.sum(dy, axis=axes, keepdims=True)  # eq-dbeta
        dgamma = np.sum(dy * x_hat, axis=axes, keepdims=True)  # eq-dgamma
        if check_finite:
            bad = np.flatnonzero(~(np.isfinite(dbeta) & np.isfinite(dgamma)))
            if bad.size:
                v.raise_non_finite(dy, axes, bad, "dy")
        dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)  # eq-dx-compact
    return dx, dgamma.reshape(-1), dbeta.reshape(-1)


def batch_norm_backward_staged(
    dy: np.ndarray, cache: BatchNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients by the chain rule, node by node through the computational graph (book, "The backward pass").

    Forward graph, per channel::

        mu      = mean(x)                    (eq-batch-mean)
        xc      = x - mu                     (eq-bw-xc)
        var     = mean(xc ** 2)              (eq-bw-var)
        inv_std = (var + eps) ** -0.5        (eq-bw-inv-std)
        x_hat   = xc * inv_std               (eq-x-hat)
        y       = gamma * x_hat + beta       (eq-scale-shift)

    Each line of the body is one local derivative, visited in reverse order; where a node feeds two others
    (``x`` feeds ``mu`` and ``xc``, ``xc`` feeds ``var`` and ``x_hat``) the contributions add up
    (eq. ``eq-bw-chain``). The result equals ``batch_norm_backward`` up to rounding; the book derives one
    from the other.

    Parameters and returns as in ``batch_norm_backward``.
    """
    v.check_cache(cache, BatchNormCache, "batch_norm_forward")
    dy = v.as_dy(dy, cache.x.shape, cache.x.dtype)
    axes, b, m = cache.reduce_axes, cache.bshape, cache.m
    x_hat = cache.x_hat
    mu, gamma, inv_std = cache.mean.reshape(b), cache.gamma.reshape(b), cache.inv_std.reshape(b)

    with np.errstate(invalid="ignore", over="ignore"):
        xc = cache.x - mu  # the forward node xc, eq-bw-xc
        # y = gamma * x_hat + beta
        dbeta = np.sum(dy, axis=axes, keepdims=True)  # eq-dbeta
        dgamma = np.sum(dy * x_hat, axis=axes, keepdims=True)  # eq-dgamma
        if check_finite:
            bad = np.flatnonzero(~(np.isfinite(dbeta) & np.isfinite(dgamma)))
            if bad.size:
                v.raise_non_finite(dy, axes, bad, "dy")
        dx_hat = gamma * dy  # eq-bw-dxhat
        # x_hat = xc * inv_std: two parents, xc (one per value) and inv_std (one per channel)
        dinv_std = np.sum(dx_hat * xc, axis=axes, keepdims=True)  # eq-bw-dinv-std
        # inv_std = (var + eps) ** -1/2
        dvar = -0.5 * inv_std**3 * dinv_std  # eq-bw-dvar
        # var = mean(xc ** 2): the second path into xc
        dxc = dx_hat * inv_std + dvar * 2.0 * xc / m  # eq-bw-dxc
        # xc = x - mu: into mu, which every xc of the channel uses
        dmu = -np.sum(dxc, axis=axes, keepdims=True)  # eq-bw-dmu
        # mu = mean(x): x feeds xc directly and mu
        dx = dxc + dmu / m  # eq-bw-dx-staged
    return dx, dgamma.reshape(-1), dbeta.reshape(-1)


# ----------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------


def _running_params(
    running_mean: object, running_var: object, shape: tuple[int, ...], axis: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    running_mean = v.channel_param(running_mean, "running_mean", shape, axis, dtype)
    running_var = v.channel_param(running_var, "running_var", shape, axis, dtype)
    v.check_non_negative(running_var, "running_var")
    return running_mean, running_var


def inference_affine(
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode BN as one affine map per channel, eq. ``eq-inference-affine``.

    ``y = scale * x + shift`` with ``scale = gamma / sqrt(running_var + eps)`` and
    ``shift = beta - scale * running_mean``.

    Parameters
    ----------
    gamma, beta, running_mean, running_var : array_like, shape (C,)
    eps : float

    Returns
    -------
    scale, shift : ndarray, shape (C,), float64 unless all inputs are float32 (or narrower)
    """
    params = {"gamma": gamma, "beta": beta, "running_mean": running_mean, "running_var": running_var}
    params = {name: v.as_real_array(p, name) for name, p in params.items()}
    if params["gamma"].ndim != 1:
        raise ValueError(f"gamma must be a vector of shape (C,); got shape {params['gamma'].shape}")
    shape, axis = (1, params["gamma"].shape[0]), 1  # the parameters of a (1, C) input
    dtype = np.result_type(*(p.dtype for p in params.values()), np.float32)
    gamma = v.channel_param(params["gamma"], "gamma", shape, axis, dtype)
    beta = v.channel_param(params["beta"], "beta", shape, axis, dtype)
    running_mean, running_var = _running_params(params["running_mean"], params["running_var"], shape, axis, dtype)
    scale = gamma / np.sqrt(running_var + v.check_eps(eps))
    shift = beta - scale * running_mean
    return scale, shift


def batch_norm_inference(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
    axis: int = 1,
    *,
    check_finite: bool = True,
) -> np.ndarray:
    """Inference-mode Batch Normalization with fixed statistics, eq. ``eq-inference``.

    ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``, per channel. Any batch size works,
    one sample included, and each sample's output depends on that sample alone.

    Parameters
    ----------
    x : ndarray, shape (N, C, ...) with the channels on ``axis``
    gamma, beta, running_mean, running_var : array_like, shape (C,)
    eps : float
    axis : int
    check_finite : bool
        Raise a ValueError naming the channels where x has non-finite values.

    Returns
    -------
    y : ndarray, same shape and dtype as x

    See Also
    --------
    inference_affine : the same map folded into ``scale * x + shift``.
    """
    x = v.as_float_array(x, "x")
    axis = v.channel_axis(x.shape, axis)
    dtype = v.compute_dtype(x.dtype)
    gamma = v.channel_param(gamma, "gamma", x.shape, axis, dtype)
    beta = v.channel_param(beta, "beta", x.shape, axis, dtype)
    running_mean, running_var = _running_params(running_mean, running_var, x.shape, axis, dtype)
    eps = v.check_eps(eps)
    x_in = x.astype(dtype, copy=False)
    if check_finite:
        v.check_finite_channels(x_in, v.reduce_axes(x.ndim, axis), "x")
    b = v.broadcast_shape(x.shape, axis)
    with np.errstate(invalid="ignore", over="ignore"):
        x_hat = (x_in - running_mean.reshape(b)) / np.sqrt(running_var.reshape(b) + eps)
        y = gamma.reshape(b) * x_hat + beta.reshape(b)  # eq-inference
    return y.astype(x.dtype, copy=False)


def fold_into_preceding(
    weight: np.ndarray,
    bias: np.ndarray | None,
    scale: np.ndarray,
    shift: np.ndarray,
    out_axis: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference BN (``y = scale * z + shift``) into the linear layer that produces ``z``, eq. ``eq-fold``.

    For ``z = x @ W + b`` followed by BN, ``y = x @ (W * scale) + (b * scale + shift)``. The same holds for a
    convolution, whose output channels are one axis of its kernel.

    Parameters
    ----------
    weight : ndarray
        The layer's weight. Its output-channel axis is ``out_axis``: -1 for a Keras Dense kernel
        ``(in, out)`` or a Keras Conv2D kernel ``(kh, kw, in, out)``; 0 for a PyTorch Linear weight
        ``(out, in)`` or Conv2d weight ``(out, in, kh, kw)``.
    bias : ndarray of shape (C,), or None for a layer without bias
    scale, shift : ndarray, shape (C,)
        From ``inference_affine``.
    out_axis : int

    Returns
    -------
    weight_folded, bias_folded : ndarray
    """
    weight = v.as_real_array(weight, "weight")
    out_axis = v.check_int(out_axis, "out_axis")
    if not -weight.ndim <= out_axis < weight.ndim:
        raise ValueError(f"out_axis {out_axis} is out of range for a weight of shape {weight.shape}")
    v.check_finite(weight, "weight")
    c = weight.shape[out_axis]
    what = f"to match axis {out_axis} of the weight {weight.shape}"
    scale, shift = v.as_real_array(scale, "scale"), v.as_real_array(shift, "shift")
    scale = v.as_param(scale, "scale", (c,), scale.dtype, what)
    shift = v.as_param(shift, "shift", (c,), shift.dtype, what)
    bias = np.zeros(c, dtype=scale.dtype) if bias is None else v.as_real_array(bias, "bias")
    bias = v.as_param(bias, "bias", (c,), bias.dtype, what)
    b = v.broadcast_shape(weight.shape, out_axis % weight.ndim)
    return weight * scale.reshape(b), bias * scale + shift


# ----------------------------------------------------------------------------------------------------
# Running statistics
# ----------------------------------------------------------------------------------------------------


def running_update(running: np.ndarray, batch_value: np.ndarray, weight: float) -> np.ndarray:
    """The one running-average rule all conventions share, eq. ``eq-running-update``.

    ``r_new = (1 - w) * r + w * b``; ``w`` comes from ``Convention.new_value_weight(step)``.
    """
    running = v.as_real_array(running, "running value")
    batch_value = v.as_real_array(batch_value, "batch value")
    if running.shape != batch_value.shape:
        raise ValueError(
            f"running value and batch value must have the same shape; got {running.shape} and {batch_value.shape}"
        )
    v.check_finite(running, "running value")
    v.check_finite(batch_value, "batch value")
    weight = v.check_unit_interval(weight, "the weight of the new value")
    return (1.0 - weight) * running + weight * batch_value


def update_running_stats(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    batch_mean: np.ndarray,
    batch_var: np.ndarray,
    m: int,
    step: int,
    convention: Convention | str,
) -> tuple[np.ndarray, np.ndarray]:
    """One training step's update of the running mean and variance under a convention.

    ``r = (1 - w) r + w b`` (eq. ``eq-running-update``) for the mean and for the variance, where the
    variance fed in is the biased batch variance, or ``m / (m - 1)`` times it for the conventions whose
    ``running_var`` is ``"unbiased"`` (PyTorch, the paper).

    Parameters
    ----------
    running_mean, running_var : ndarray, shape (C,)
        The estimates before this batch; ``running_var >= 0``.
    batch_mean, batch_var : ndarray, shape (C,)
        The batch mean and the *biased* batch variance (``cache.mean``, ``cache.var``); ``batch_var >= 0``.
    m : int
        Values per channel in the batch; the unbiased conventions multiply ``batch_var`` by m/(m-1).
    step : int
        1-based count of training batches including this one (used by the cumulative average).
    convention : Convention or name
        ``PYTORCH``, ``PYTORCH_CUMULATIVE``, ``KERAS`` or ``PAPER`` from ``bnref.conventions``.

    Returns
    -------
    new_mean, new_var : ndarray, shape (C,)
    """
    conv = get_convention(convention)
    m = v.check_int(m, "m", minimum=1)
    step = v.check_int(step, "step", minimum=0)
    running_mean = v.as_real_array(running_mean, "running_mean")
    if running_mean.ndim != 1:
        raise ValueError(f"running_mean must be a vector of shape (C,); got shape {running_mean.shape}")
    shape, what = running_mean.shape, "to match running_mean"
    v.check_finite(running_mean, "running_mean", "channels")
    running_var = v.as_param(running_var, "running_var", shape, None, what)
    batch_mean = v.as_param(batch_mean, "batch_mean", shape, None, what)
    batch_var = v.as_param(batch_var, "batch_var", shape, None, what)
    v.check_non_negative(running_var, "running_var")
    v.check_non_negative(batch_var, "batch_var")
    if conv.running_var == "unbiased":
        if m < 2:
            raise ValueError(f"the unbiased variance needs at least 2 values per channel; got m={m}")
        batch_var = batch_var * (m / (m - 1))
    w = conv.new_value_weight(step)
    return running_update(running_mean, batch_mean, w), running_update(running_var, batch_var, w)


class RunningStats:
    """Running mean and variance under one convention, updated from forward caches.

    The batch variance fed to the running estimate is the convention's (``Convention.var_method``): the
    two-pass variance of the forward pass (``cache.var``), or for a one-pass convention (``FLAX``) the
    one-pass ``mean(x^2) - mean(x)^2`` of the batch (eq. ``eq-fwd-one-pass``), clipped at 0 as
    ``flax.linen.BatchNorm`` clips it. The one-pass variance, and with it the running variance, loses about
    ``2 log10(|mean| / std)`` digits, as Flax's does.

    Parameters
    ----------
    channels : int, >= 1
    convention : Convention or name
    dtype : numpy floating-point dtype of the estimates (float64 by default)

    Examples
    --------
    >>> import numpy as np
    >>> from bnref import batch_norm_forward, RunningStats, PYTORCH
    >>> stats = RunningStats(3, PYTORCH)
    >>> x = np.arange(12.0).reshape(4, 3)
    >>> _, cache = batch_norm_forward(x, np.ones(3), np.zeros(3), eps=PYTORCH.eps)
    >>> stats.update(cache)
    >>> stats.mean.tolist()
    [0.45, 0.55, 0.65]
    """

    def __init__(self, channels: int, convention: Convention | str, dtype: np.dtype = np.float64) -> None:
        channels = v.check_int(channels, "channels", minimum=1)
        self.convention = get_convention(convention)
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"dtype must be a floating-point dtype; got {np.dtype(dtype)}")
        self.mean = np.full(channels, self.convention.init_mean, dtype=dtype)
        self.var = np.full(channels, self.convention.init_var, dtype=dtype)
        self.num_batches_tracked = 0

    def update(self, cache: BatchNormCache) -> None:
        """Fold one training batch's statistics (from ``batch_norm_forward``) into the running estimates."""
        v.check_cache(cache, BatchNormCache, "batch_norm_forward")
        if cache.mean.shape != self.mean.shape:
            raise ValueError(
                f"cache must hold {self.mean.shape[0]} channels, as these statistics do; got {cache.mean.shape[0]}"
            )
        mean, var = cache.mean, cache.var
        if self.convention.var_method == "one-pass":
            mean, var = batch_mean_var(cache.x, cache.axis, method="one-pass")  # eq-fwd-one-pass
            var = np.maximum(var, 0.0)  # as flax.linen.BatchNorm clips it
        self.num_batches_tracked += 1
        mean, var = update_running_stats(
            self.mean, self.var, mean, var, cache.m, self.num_batches_tracked, self.convention
        )
        self.mean = mean.astype(self.mean.dtype, copy=False)
        self.var = var.astype(self.var.dtype, copy=False)

    def __repr__(self) -> str:
        return (
            f"RunningStats(convention={self.convention.name!r}, channels={self.mean.shape[0]}, "
            f"num_batches_tracked={self.num_batches_tracked})"
        )
