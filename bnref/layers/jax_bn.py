"""Batch Normalization from scratch in JAX, with the derived backward pass, and a drop-in for Flax's layer.

Public API (every function is jit-able; ``axis`` is the channel axis, or a tuple of feature axes as in Flax):

* ``batch_norm_train(x, gamma, beta, eps=1e-5, axis=-1, ...) -> (y, mean, var)`` -- training-mode BN with the
  batch mean and biased variance. Its gradient is the *derived* compact formula, attached with
  ``jax.custom_vjp`` (book, eqs. ``eq-dbeta``, ``eq-dgamma``, ``eq-dx-compact``), not autodiff through the
  forward. ``mean`` and ``var`` (shape (C,)) are returned for the running estimates, behind
  ``lax.stop_gradient``.
* ``batch_norm_plain(x, gamma, beta, eps=1e-5, axis=-1)`` -- the same forward with no custom gradient: what
  ``jax.grad`` differentiates when the tests check the derived backward against autodiff.
* ``batch_norm_infer(x, gamma, beta, mean, var, eps=1e-5, axis=-1)`` -- inference mode (eq. ``eq-inference``).
* ``running_update(running_mean, running_var, batch_mean, batch_var, m, convention=FLAX, step=1)`` -- one
  update of the running estimates under a ``bnref.conventions.Convention`` (eq. ``eq-running-update``).
* ``BatchNorm`` -- a ``flax.linen`` module, a drop-in for ``flax.linen.BatchNorm`` (it subclasses it, so it
  has the same constructor, fields and defaults and ``isinstance`` checks see a BN layer): the same
  ``params`` (``scale``, ``bias``) and ``batch_stats`` (``mean``, ``var``) collections with the same names,
  shapes, dtypes and initialisation order, so variables initialised for one apply with the other; training
  with ``use_running_average=False`` and ``mutable=['batch_stats']`` as in Flax.

Forward, per channel over the ``m`` values that share it::

    mean    = sum(x) / m                                   (eq-batch-mean)
    var     = sum((x - mean)^2) / m                        (eq-batch-var, biased)
    inv_std = 1 / sqrt(var + eps)                          (eq-bw-inv-std)
    x_hat   = (x - mean) * inv_std                         (eq-x-hat)
    y       = gamma * x_hat + beta                         (eq-scale-shift)

Backward, with ``dy = dL/dy``::

    dbeta  = sum(dy)                                       (eq-dbeta)
    dgamma = sum(dy * x_hat)                               (eq-dgamma)
    dx     = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)      (eq-dx-compact)

Numerics. The variance is the corrected two-pass one of ``bnref.reference`` (mean, centre, subtract the
mean of the centred values once more, then the mean square), so float32 keeps its precision at
``|mean| / std = 1e4``: its variance stays within the two-pass bound of ``bnref.testing`` there, which the
one-pass ``E[x^2] - E[x]^2`` that Flax uses by default misses by far (both checked in
``tests/test_jax_bn.py``). Statistics are
computed in at least float32 (float16/bfloat16 inputs are upcast, as Flax does); ``dx`` is returned in the
input's dtype.

Convention (``bnref.conventions.FLAX``, measured on flax 0.12.8 in ``tests/test_jax_bn.py``): eps 1e-5 inside
the square root, momentum 0.99 kept on the old value, ``r = momentum * r + (1 - momentum) * b``, the *biased*
batch variance fed to the running estimate, channels last.

The drop-in ``BatchNorm`` and ``flax.linen.BatchNorm``: what is the same, and what differs on purpose

* Same: every constructor argument (``use_running_average, axis, momentum, epsilon, dtype, param_dtype,
  use_bias, use_scale, bias_init, scale_init, axis_name, axis_index_groups, use_fast_variance,
  force_float32_reductions``), ``__call__(x, use_running_average=None, *, mask=None)`` with Flax's
  ``merge_param`` rule, the output dtype, no running update during ``init``, statistics averaged over
  ``axis_name`` (under ``jax.pmap``, ``shard_map`` or ``jax.vmap`` with an axis name).
* ``use_fast_variance`` is accepted and stored but **not honoured**: the drop-in always uses the exact
  (corrected two-pass) variance, whose error does not grow with ``|mean| / std``. With
  ``use_fast_variance=False`` Flax and the drop-in compute the same quantities.
* With ``axis_name`` the statistics are global sums divided by global counts (``lax.psum``); Flax averages
  per-device means (``lax.pmean``). These agree when every device holds the same number of values per
  channel, which is always the case without a mask; with a mask the drop-in's is the exact one.
* A mask with no value in a channel gives mean 0 and variance 0 there (Flax gives NaN).
* ``force_float32_reductions=False``: the output and ``batch_stats`` dtypes are Flax's, but the statistics
  are computed in the promotion of the input's and the parameters' dtypes (bfloat16 input with float32
  parameters: float32), where Flax computes them in the input's dtype.
* ``axis_index_groups`` is passed to ``lax.psum`` as Flax passes it to ``lax.pmean``. Under ``jax.vmap`` JAX
  rejects it for both layers (``NotImplementedError``); under ``jax.pmap`` it is not tested here (one CPU
  device).
* Bad input raises ``ValueError``: an axis out of range, a rank below 2 in training, an input whose feature
  shape does not match the existing variables, complex input, ``epsilon <= 0``, and, in training (not during
  ``init``, where Flax models are routinely initialised with a batch of one), a batch with one value per
  channel. Non-finite input raises ``ValueError`` when ``x`` holds concrete values (eager ``apply``); under
  ``jit``, ``grad`` or ``vmap`` values are unknown at trace time and the check becomes a
  ``checkify.debug_check``, which raises only under ``jax.experimental.checkify.checkify``.

This module imports JAX and Flax at import time; ``import bnref`` does not import it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes as flax_dtypes
from jax import lax
from jax.experimental import checkify

from bnref.conventions import FLAX, Convention, get_convention

__all__ = ["BatchNorm", "batch_norm_infer", "batch_norm_plain", "batch_norm_train", "running_update"]


# ----------------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------------


def _feature_axes(ndim: int, axis: int | Iterable[int]) -> tuple[int, ...]:
    """The feature (channel) axes as sorted non-negative ints; ValueError if any is out of range."""
    axes = tuple(axis) if isinstance(axis, Iterable) else (axis,)
    if not axes:
        raise ValueError("axis must name at least one feature axis")
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise ValueError(f"axis must be an int or a sequence of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an input of rank {ndim}")
    canonical = tuple(sorted({int(a) % ndim for a in axes}))
    if len(canonical) != len(axes):
        raise ValueError(f"axis {axis!r} names the same axis twice")
    return canonical


def _reduction_axes(ndim: int, feature_axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d not in feature_axes)


def _feature_shape(shape: tuple[int, ...], feature_axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[a] for a in feature_axes)


def _bshape(shape: tuple[int, ...], feature_axes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel array against ``x``: e.g. (1, 1, 1, C) for NHWC."""
    return tuple(shape[d] if d in feature_axes else 1 for d in range(len(shape)))


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite(x: jax.Array, what: str) -> None:
    """ValueError for NaN/inf in concrete ``x``; under a trace, a ``checkify.debug_check``."""
    if _is_concrete(x):
        bad = ~np.isfinite(np.asarray(x))
        if bad.any():
            raise ValueError(f"{what} holds {int(bad.sum())} non-finite value(s) (NaN or inf)")
    else:
        checkify.debug_check(jnp.all(jnp.isfinite(x)), f"{what} holds non-finite values (NaN or inf)")


def _check_float(x: jax.Array, what: str) -> None:
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{what} must be real; complex input is not supported, got dtype {x.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{what} must be a floating-point array, got dtype {x.dtype}")


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    return float(eps)


def _channel_param(p: jax.Array | None, name: str, shape: tuple[int, ...], fill: float, dtype) -> jax.Array:
    if p is None:
        return jnp.full(shape, fill, dtype)
    p = jnp.asarray(p)
    if p.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (the feature shape of x), got {p.shape}")
    return p


def _compute_dtype(x_dtype, compute_dtype) -> Any:
    """At least float32 (half inputs are upcast, as Flax and the other frameworks do)."""
    return jnp.promote_types(x_dtype, jnp.float32) if compute_dtype is None else jnp.dtype(compute_dtype)


# ----------------------------------------------------------------------------------------------------
# Statistics: corrected two-pass, optionally masked and across a named axis
# ----------------------------------------------------------------------------------------------------


def _total(v: jax.Array, axes: tuple[int, ...], axis_name, groups) -> jax.Array:
    """Sum over ``axes`` (keepdims) and, with ``axis_name``, over every device of the named axis."""
    s = jnp.sum(v, axis=axes, keepdims=True)
    return s if axis_name is None else lax.psum(s, axis_name, axis_index_groups=groups)


def _count(x: jax.Array, w: jax.Array | None, axes, axis_name, groups) -> jax.Array:
    """``m``, the number of values per channel (global with ``axis_name``); with a mask, at least 1."""
    if w is None:
        local = jnp.asarray(math.prod(x.shape[d] for d in axes), x.dtype)
        n = local if axis_name is None else lax.psum(local, axis_name, axis_index_groups=groups)
        return jnp.broadcast_to(n, _bshape(x.shape, _reduction_complement(x.ndim, axes)))
    return jnp.maximum(_total(w, axes, axis_name, groups), 1.0)


def _reduction_complement(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d not in axes)


def _statistics(x: jax.Array, w: jax.Array | None, axes, axis_name, groups):
    """Mean, centred input and biased variance (keepdims), the corrected two-pass way of the reference.

    ``mean = sum(w x) / n``; the centred values ``x - mean`` have mean ``sum(w (x - mean)) / n``, which is
    exactly the rounding error of ``mean`` and is computed to order ``eps * std``; subtracting it once more
    (Chan, Golub & LeVeque's correction, as in ``bnref.reference``) keeps ``mean`` and the centred values
    accurate whatever ``|mean| / std``. Then ``var = sum(w (x - mean)^2) / n``. ``w`` is the mask (1 where
    a value counts) or None (every value counts).
    """
    n = _count(x, w, axes, axis_name, groups)
    weigh = (lambda v: v) if w is None else (lambda v: w * v)
    mean = _total(weigh(x), axes, axis_name, groups) / n  # eq-batch-mean
    centred = x - mean
    mean_error = _total(weigh(centred), axes, axis_name, groups) / n
    centred = centred - mean_error
    var = _total(weigh(centred * centred), axes, axis_name, groups) / n  # eq-batch-var
    return mean + mean_error, centred, var, n


# ----------------------------------------------------------------------------------------------------
# Training-mode BN with the derived gradient (jax.custom_vjp)
# ----------------------------------------------------------------------------------------------------


def _train_forward(x, gamma, beta, w, eps, axes, axis_name, groups, cdtype):
    xc = x.astype(cdtype)
    mean, centred, var, n = _statistics(xc, w, axes, axis_name, groups)
    inv_std = lax.rsqrt(var + jnp.asarray(eps, cdtype))  # eq-bw-inv-std
    x_hat = centred * inv_std  # eq-x-hat
    b = _bshape(x.shape, _reduction_complement(x.ndim, axes))
    y = gamma.astype(cdtype).reshape(b) * x_hat + beta.astype(cdtype).reshape(b)  # eq-scale-shift
    return y, mean, var, (x_hat, inv_std, n)


@functools.lru_cache(maxsize=256)
def _bn_train_fn(eps: float, axes: tuple[int, ...], axis_name, groups, cdtype_name: str, out_dtype_name: str):
    """The custom-VJP training function for one static setting (built once per setting and cached)."""
    cdtype, out_dtype = jnp.dtype(cdtype_name), jnp.dtype(out_dtype_name)

    @jax.custom_vjp
    def bn_train(x, gamma, beta, w):
        y, mean, var, _ = _train_forward(x, gamma, beta, w, eps, axes, axis_name, groups, cdtype)
        return y.astype(out_dtype), mean, var

    def bn_train_fwd(x, gamma, beta, w):
        y, mean, var, (x_hat, inv_std, n) = _train_forward(x, gamma, beta, w, eps, axes, axis_name, groups, cdtype)
        return (y.astype(out_dtype), mean, var), (x_hat, inv_std, n, gamma, beta, w, jnp.zeros((), x.dtype))

    def bn_train_bwd(residuals, cotangents):
        """The derived backward: eqs. eq-dbeta, eq-dgamma, eq-dx-compact (the statistics' cotangents are zero).

        With ``axis_name`` the two sums in ``dx`` run over every device (the statistics did), while
        ``dgamma`` and ``dbeta`` are this device's own sums, the gradient of its ``gamma * x_hat + beta``.
        With a mask ``w`` (``n = sum(w)``) the same derivation gives
        ``dx = gamma inv_std (dy - w / n (dbeta + x_hat dgamma))``.
        """
        x_hat, inv_std, n, gamma, beta, w, x_like = residuals
        dy = cotangents[0].astype(cdtype)
        b = _bshape(x_hat.shape, _reduction_complement(x_hat.ndim, axes))
        g = gamma.astype(cdtype).reshape(b)
        dbeta = jnp.sum(dy, axis=axes, keepdims=True)  # eq-dbeta
        dgamma = jnp.sum(dy * x_hat, axis=axes, keepdims=True)  # eq-dgamma
        dbeta_all, dgamma_all = dbeta, dgamma
        if axis_name is not None:
            dbeta_all = lax.psum(dbeta, axis_name, axis_index_groups=groups)
            dgamma_all = lax.psum(dgamma, axis_name, axis_index_groups=groups)
        if w is None:
            m = n
            dx = g * inv_std / m * (m * dy - dbeta_all - x_hat * dgamma_all)  # eq-dx-compact
        else:
            dx = g * inv_std * (dy - w / n * (dbeta_all + x_hat * dgamma_all))
        return (
            dx.astype(x_like.dtype),
            dgamma.reshape(gamma.shape).astype(gamma.dtype),
            dbeta.reshape(beta.shape).astype(beta.dtype),
            None if w is None else jnp.zeros_like(w),
        )

    bn_train.defvjp(bn_train_fwd, bn_train_bwd)
    return bn_train


def _prepare(x, gamma, beta, eps, axis, mask, axis_index_groups, dtype, compute_dtype, *, min_values: int):
    x = jnp.asarray(x)
    _check_float(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (batch and features), got rank {x.ndim}")
    feature_axes = _feature_axes(x.ndim, axis)
    axes = _reduction_axes(x.ndim, feature_axes)
    m = math.prod(x.shape[d] for d in axes)
    if m < min_values:
        raise ValueError(
            f"training-mode batch norm needs at least {min_values} values per channel to estimate a variance; "
            f"x with shape {x.shape} has {m} per channel (feature axes {feature_axes})"
        )
    eps = _check_eps(eps)
    cdtype = _compute_dtype(x.dtype, compute_dtype)
    fshape = _feature_shape(x.shape, feature_axes)
    gamma = _channel_param(gamma, "gamma", fshape, 1.0, cdtype)
    beta = _channel_param(beta, "beta", fshape, 0.0, cdtype)
    w = None
    if mask is not None:
        mask = jnp.asarray(mask)
        try:
            w = jnp.broadcast_to(mask, x.shape).astype(cdtype)
        except ValueError:
            raise ValueError(f"mask with shape {mask.shape} does not broadcast to x with shape {x.shape}") from None
    groups = None if axis_index_groups is None else tuple(tuple(int(i) for i in g) for g in axis_index_groups)
    out_dtype = x.dtype if dtype is None else jnp.dtype(dtype)
    return x, gamma, beta, w, eps, axes, groups, cdtype, out_dtype, fshape


def batch_norm_train(
    x: jax.Array,
    gamma: jax.Array | None = None,
    beta: jax.Array | None = None,
    eps: float = FLAX.eps,
    axis: int | Sequence[int] = FLAX.axis,
    *,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    dtype: Any = None,
    compute_dtype: Any = None,
    check_finite: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode Batch Normalization returning ``(y, mean, var)``; the gradient of ``y`` is the derived one.

    Forward and backward as in the module docstring (eqs. ``eq-batch-mean`` to ``eq-scale-shift``,
    ``eq-dbeta``, ``eq-dgamma``, ``eq-dx-compact``), the variance in corrected two passes.

    Parameters
    ----------
    x : Array, shape (N, C), (N, H, W, C), ... with the features on ``axis``
        Real floating-point input with at least 2 values per channel (over every device with ``axis_name``
        the count is global, but each call must hold at least 1).
    gamma, beta : Array of the feature shape (``(C,)`` for one feature axis), or None (1 and 0)
    eps : float > 0
        Added to the variance inside the square root (Flax 1e-5, the default).
    axis : int or sequence of int
        The feature axes; every other axis is reduced (Flax's ``axis``; default -1, channels last).
    mask : Array broadcastable to x, optional
        Where a value counts for the statistics (1/True) or not; every value is normalised with them.
    axis_name, axis_index_groups : optional
        Sum the statistics (and the backward's two sums) over this named axis of ``jax.pmap``,
        ``shard_map`` or ``jax.vmap``, as ``lax.psum`` does.
    dtype : optional
        The dtype of ``y`` (default: x's).
    compute_dtype : optional
        The dtype of the arithmetic (default: x's promoted to at least float32).
    check_finite : bool
        If True (default), NaN or inf in a concrete ``x`` raises ValueError (under a trace it becomes a
        ``checkify.debug_check``); if False they propagate into the output, as in the frameworks.

    Returns
    -------
    y : Array, shape of x, in ``dtype``
    mean, var : Array of the feature shape, in the compute dtype: the batch mean and the biased batch
        variance, behind ``lax.stop_gradient`` (they feed the running estimates, never the loss).

    Raises
    ------
    ValueError
        Non-float or complex x, rank below 2, an axis out of range, fewer than 2 values per channel
        (without ``axis_name``), gamma or beta of the wrong shape, eps <= 0, a mask that does not broadcast,
        non-finite values in x (with ``check_finite``).
    """
    min_values = 1 if axis_name is not None else 2
    x, gamma, beta, w, eps, axes, groups, cdtype, out_dtype, fshape = _prepare(
        x, gamma, beta, eps, axis, mask, axis_index_groups, dtype, compute_dtype, min_values=min_values
    )
    if check_finite:
        _check_finite(x, "x")
    bn_train = _bn_train_fn(eps, axes, axis_name, groups, jnp.dtype(cdtype).name, jnp.dtype(out_dtype).name)
    y, mean, var = bn_train(x, gamma, beta, w)
    return y, lax.stop_gradient(mean.reshape(fshape)), lax.stop_gradient(var.reshape(fshape))


def batch_norm_plain(
    x: jax.Array,
    gamma: jax.Array | None = None,
    beta: jax.Array | None = None,
    eps: float = FLAX.eps,
    axis: int | Sequence[int] = FLAX.axis,
    *,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    compute_dtype: Any = None,
) -> jax.Array:
    """The forward of ``batch_norm_train`` with no custom gradient: ``jax.grad`` differentiates it node by node.

    This is the independent route the tests compare the derived backward against. Returns ``y`` only, in
    the compute dtype. It accepts one value per channel (``y = beta`` there), which the module uses while
    Flax initialises a model with a single example.
    """
    x, gamma, beta, w, eps, axes, groups, cdtype, _, _ = _prepare(
        x, gamma, beta, eps, axis, mask, axis_index_groups, None, compute_dtype, min_values=1
    )
    return _train_forward(x, gamma, beta, w, eps, axes, axis_name, groups, cdtype)[0]


def batch_norm_infer(
    x: jax.Array,
    gamma: jax.Array | None,
    beta: jax.Array | None,
    mean: jax.Array,
    var: jax.Array,
    eps: float = FLAX.eps,
    axis: int | Sequence[int] = FLAX.axis,
    *,
    dtype: Any = None,
    compute_dtype: Any = None,
) -> jax.Array:
    """Inference-mode BN with fixed statistics, eq. ``eq-inference``::

        y = (x - mean) * (gamma / sqrt(var + eps)) + beta

    Parameters
    ----------
    x : Array with the features on ``axis``
    gamma, beta : Array of the feature shape, or None (1 and 0)
    mean, var : Array of the feature shape: the running estimates
    eps, axis, dtype, compute_dtype : as in ``batch_norm_train``

    Returns
    -------
    Array, shape of x, in ``dtype`` (default x's). Differentiable by ordinary autodiff.
    """
    x = jnp.asarray(x)
    _check_float(x, "x")
    feature_axes = _feature_axes(x.ndim, axis)
    eps = _check_eps(eps)
    cdtype = _compute_dtype(x.dtype, compute_dtype)
    fshape = _feature_shape(x.shape, feature_axes)
    b = _bshape(x.shape, feature_axes)
    gamma = _channel_param(gamma, "gamma", fshape, 1.0, cdtype).astype(cdtype)
    beta = _channel_param(beta, "beta", fshape, 0.0, cdtype).astype(cdtype)
    mean = _channel_param(mean, "mean", fshape, 0.0, cdtype).astype(cdtype)
    var = _channel_param(var, "var", fshape, 1.0, cdtype).astype(cdtype)
    scale = gamma * lax.rsqrt(var + jnp.asarray(eps, cdtype))
    y = (x.astype(cdtype) - mean.reshape(b)) * scale.reshape(b) + beta.reshape(b)  # eq-inference
    return y.astype(x.dtype if dtype is None else dtype)


def running_update(
    running_mean: jax.Array,
    running_var: jax.Array,
    batch_mean: jax.Array,
    batch_var: jax.Array,
    m: int | jax.Array,
    convention: Convention | str = FLAX,
    step: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """One update of the running mean and variance under a convention, eq. ``eq-running-update``.

    ``r = (1 - w) r + w b`` with ``w = convention.new_value_weight(step)``; for conventions whose momentum is
    the weight on the old value (Flax, Keras) it is written as they write it,
    ``r = momentum * r + (1 - momentum) * b``. The variance fed is the biased batch variance ``batch_var``,
    or ``m / (m - 1)`` times it when ``convention.running_var == "unbiased"``.

    Parameters
    ----------
    running_mean, running_var : Array, feature shape
    batch_mean, batch_var : Array, feature shape (the ``mean`` and ``var`` of ``batch_norm_train``)
    m : int or Array
        Values per channel behind the batch statistics (used by unbiased conventions only).
    convention : Convention or name (default ``FLAX``)
    step : int
        1-based count of training batches including this one (for the cumulative average).

    Returns
    -------
    new_mean, new_var : Array, feature shape
    """
    conv = get_convention(convention)
    if jnp.shape(running_mean) != jnp.shape(batch_mean) or jnp.shape(running_var) != jnp.shape(batch_var):
        raise ValueError(
            "running and batch statistics must have the same shape; got "
            f"{jnp.shape(running_mean)}, {jnp.shape(batch_mean)}, {jnp.shape(running_var)}, {jnp.shape(batch_var)}"
        )
    fed_var = batch_var
    if conv.running_var == "unbiased":
        if _is_concrete(m) and np.any(np.asarray(m) < 2):
            raise ValueError(f"the unbiased variance needs at least 2 values per channel, got m={m}")
        fed_var = batch_var * (m / (m - 1))
    if conv.momentum is not None and conv.momentum_weights == "old":
        momentum = conv.momentum
        return momentum * running_mean + (1 - momentum) * batch_mean, momentum * running_var + (1 - momentum) * fed_var
    w = conv.new_value_weight(step)
    return (1 - w) * running_mean + w * batch_mean, (1 - w) * running_var + w * fed_var


# ----------------------------------------------------------------------------------------------------
# The Flax module: a drop-in for flax.linen.BatchNorm
# ----------------------------------------------------------------------------------------------------


class BatchNorm(nn.BatchNorm):
    """Drop-in replacement for ``flax.linen.BatchNorm`` with bnref's forward and derived backward.

    The constructor, fields and defaults are those of ``flax.linen.BatchNorm`` (this class subclasses it
    and replaces ``__call__`` only): ``use_running_average=None, axis=-1, momentum=0.99, epsilon=1e-5,
    dtype=None, param_dtype=float32, use_bias=True, use_scale=True, bias_init=zeros, scale_init=ones,
    axis_name=None, axis_index_groups=None, use_fast_variance=True, force_float32_reductions=True``.

    * Training (``use_running_average=False``): normalise with the batch mean and biased variance
      (``batch_norm_train``) and, unless initialising, update ``batch_stats`` by
      ``r = momentum * r + (1 - momentum) * b`` (``FLAX`` convention; apply with
      ``mutable=['batch_stats']``).
    * Inference (``use_running_average=True``): ``batch_norm_infer`` with ``batch_stats``.

    ``use_fast_variance`` is accepted and ignored: the variance is always the exact (corrected two-pass)
    one. See the module docstring for the other deliberate differences.
    """

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
        """Normalise ``x`` (shape (N, ..., C) with the features on ``self.axis``); see the class docstring."""
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise ValueError(f"complex input is not supported, got dtype {x.dtype}")
        if x.ndim < 1:
            raise ValueError("x must have at least one dimension (the features)")
        feature_axes = _feature_axes(x.ndim, self.axis)
        reduction_axes = _reduction_axes(x.ndim, feature_axes)
        feature_shape = _feature_shape(x.shape, feature_axes)
        eps = _check_eps(self.epsilon)
        self._check_variable_shapes(feature_shape, x.shape)
        _check_finite(x, "x")

        stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype), feature_shape)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype), feature_shape)
        # Created in Flax's order (batch_stats, scale, bias), so random initialisers draw the same keys.
        scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype) if self.use_bias else None
        if not self.force_float32_reductions:
            scale = None if scale is None else jnp.asarray(scale, self.param_dtype)
            bias = None if bias is None else jnp.asarray(bias, self.param_dtype)

        # Flax's dtypes: statistics in (self.dtype or x's) promoted to float32; the normalisation in the
        # promotion of x, the statistics and the parameters; the result in canonicalize_dtype(x, scale, bias).
        base = x.dtype if self.dtype is None else jnp.dtype(self.dtype)
        if not jnp.issubdtype(base, jnp.inexact):
            base = jnp.float32
        stats_cdtype = jnp.promote_types(base, jnp.float32) if self.force_float32_reductions else base
        cdtype = jnp.result_type(stats_cdtype, *(p.dtype for p in (scale, bias) if p is not None))
        out_dtype = flax_dtypes.canonicalize_dtype(*(a for a in (x, scale, bias) if a is not None), dtype=self.dtype)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(cdtype)

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
            if not self.force_float32_reductions:
                mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
            return batch_norm_infer(x, scale, bias, mean, var, eps, feature_axes, dtype=out_dtype, compute_dtype=cdtype)

        if x.ndim < 2:
            raise ValueError(f"training needs at least 2 dimensions (batch and features), got rank {x.ndim}")
        if self.is_initializing():
            # As Flax: init computes the output but leaves batch_stats at their initial values and uses no
            # collective. Flax models are initialised with a single example, so one value per channel is
            # allowed here (it gives y = bias).
            y = batch_norm_plain(x, scale, bias, eps, feature_axes, mask=mask, compute_dtype=cdtype)
            return y.astype(out_dtype)
        axis_name = self.axis_name
        m = math.prod(x.shape[d] for d in reduction_axes)
        if axis_name is None and m < 2:
            raise ValueError(
                f"training-mode batch norm needs more than 1 value per channel; x with shape {x.shape} has "
                f"{m} per channel (feature axes {feature_axes}). Use a larger batch, or use_running_average=True."
            )
        y, mean, var = batch_norm_train(
            x,
            scale,
            bias,
            eps,
            feature_axes,
            mask=mask,
            axis_name=axis_name,
            axis_index_groups=self.axis_index_groups if axis_name is not None else None,
            dtype=out_dtype,
            compute_dtype=cdtype,
        )
        # FLAX's rule with this layer's momentum: r = momentum * r + (1 - momentum) * b, biased variance.
        rule = FLAX.replace(momentum=self.momentum)
        ra_mean.value, ra_var.value = running_update(ra_mean.value, ra_var.value, mean, var, m, rule)
        return y

    def _check_variable_shapes(self, feature_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> None:
        """ValueError if existing variables do not have the input's feature shape (Flax raises its own error)."""
        names = (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))
        for collection, name in names:
            if self.has_variable(collection, name):
                shape = tuple(jnp.shape(self.get_variable(collection, name)))
                if shape != feature_shape:
                    raise ValueError(
                        f"{collection}/{name} has shape {shape}, but x with shape {x_shape} has feature shape "
                        f"{feature_shape} on axis {self.axis!r}: the input does not match the variables"
                    )
