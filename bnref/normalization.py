"""NumPy references for the normalisations beyond Batch Normalization, in the style of ``bnref.reference``.

Each standardises ``x`` per example, never across the batch, and then scales (and shifts); they differ in the
set of values a statistic runs over (book, chapter "Beyond Batch Normalization"):

* Layer Normalization (Ba et al. 2016): per example, over the last ``normalized_ndim`` axes.
* Group Normalization (Wu & He 2018): per example and group of ``C / groups`` channels, over those channels
  and all spatial positions. Instance Normalization (Ulyanov et al. 2016) is the case ``groups == C``.
* RMSNorm (Zhang & Sennrich 2019): per example over the last ``normalized_ndim`` axes like Layer
  Normalization, but divided by the root mean square, without centring and without a shift.

For a set of ``m`` values standardised together, with ``dx_hat = dL/dx_hat``, the backward passes of Layer and
Group Normalization end in the same step (the compact form of the reference's eq. ``eq-dx-compact`` before the
scale ``gamma`` is applied)::

    dx = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))      (eq-dx-from-dxhat)

Variances are biased (divisor ``m``) and computed by the reference's corrected two-pass algorithm
(``bnref.reference.mean_and_centred``), so they keep their precision whatever ``|mean| / std``, as Batch
Normalization's do. float16 is computed in float32 and the output cast back. Bad input raises ``TypeError``
or ``ValueError`` naming the problem (``bnref.validation``); no framework is imported.

The variants of Batch Normalization, Batch Renormalization and Ghost Batch Normalization, live in
``bnref.batch_variants`` and are exported here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import validation as v
from .batch_variants import (
    BatchRenormCache,
    GhostBatchNormCache,
    batch_renorm_backward,
    batch_renorm_clipping,
    batch_renorm_forward,
    batch_renorm_running_update,
    ghost_batch_norm_backward,
    ghost_batch_norm_forward,
    ghost_batch_norm_running_update,
)
from .reference import mean_and_centred

__all__ = [
    "BatchRenormCache",
    "GhostBatchNormCache",
    "GroupNormCache",
    "LayerNormCache",
    "RMSNormCache",
    "batch_renorm_backward",
    "batch_renorm_clipping",
    "batch_renorm_forward",
    "batch_renorm_running_update",
    "ghost_batch_norm_backward",
    "ghost_batch_norm_forward",
    "ghost_batch_norm_running_update",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm_backward",
    "rms_norm_forward",
]


# ----------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------


def _standardise(x: np.ndarray, axes: tuple[int, ...], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``x_hat = (x - mu) / sqrt(var + eps)`` over ``axes``; returns x_hat and inv_std.

    ``mu`` and ``x - mu`` come from the reference's corrected two-pass ``mean_and_centred``, the variance is
    the biased ``mean((x - mu)**2)``: the same arithmetic as ``batch_norm_forward``.
    """
    _, x_centred = mean_and_centred(x, axes)
    var = np.mean(x_centred**2, axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    return x_centred * inv_std, inv_std


def _dx_from_dx_hat(
    dx_hat: np.ndarray, x_hat: np.ndarray, inv_std: np.ndarray, axes: tuple[int, ...], m: int
) -> np.ndarray:
    """``dx = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))``, eq-dx-from-dxhat.

    The sums run over ``axes``, the ``m`` values that were standardised together.
    """
    sum_dx_hat = np.sum(dx_hat, axis=axes, keepdims=True)
    sum_dx_hat_x_hat = np.sum(dx_hat * x_hat, axis=axes, keepdims=True)
    return inv_std / m * (m * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat)


def _check_dy(dy: object, shape: tuple[int, ...], dtype: np.dtype, check_finite: bool) -> np.ndarray:
    dy = v.as_dy(dy, shape, dtype)
    if check_finite:
        v.check_finite(dy, "dy")
    return dy


def _last_axes_input(
    x: object, normalized_ndim: object
) -> tuple[np.ndarray, int, tuple[int, ...], tuple[int, ...], np.dtype]:
    """Layer Normalization's and RMSNorm's input checks: x, normalized_ndim, the normalised shape and axes."""
    x = v.as_float_array(x, "x")
    normalized_ndim = v.check_int(normalized_ndim, "normalized_ndim", minimum=1)
    if normalized_ndim > x.ndim:
        raise ValueError(
            f"normalized_ndim must be at most the {x.ndim} dimensions of x {x.shape}; got {normalized_ndim}"
        )
    norm_shape = x.shape[x.ndim - normalized_ndim :]
    if math.prod(norm_shape) < 1:
        raise ValueError(f"x must have values to normalise over its last {normalized_ndim} axes; got shape {x.shape}")
    axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
    return x, normalized_ndim, norm_shape, axes, v.compute_dtype(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Layer Normalization
# ----------------------------------------------------------------------------------------------------


class _OverLastAxes:
    """The axes of a cache whose statistics run over each example's last ``normalized_ndim`` axes."""

    x_hat: np.ndarray
    normalized_ndim: int

    @property
    def norm_axes(self) -> tuple[int, ...]:
        """The axes a statistic runs over: the last ``normalized_ndim``."""
        return tuple(range(self.x_hat.ndim - self.normalized_ndim, self.x_hat.ndim))

    @property
    def param_axes(self) -> tuple[int, ...]:
        """The axes ``dgamma`` (and ``dbeta``) sum over: the leading (example) axes."""
        return tuple(range(self.x_hat.ndim - self.normalized_ndim))


@dataclass(frozen=True)
class LayerNormCache(_OverLastAxes):
    """What ``layer_norm_forward`` keeps for ``layer_norm_backward``.

    Attributes
    ----------
    x_hat : ndarray, shape like the input
        ``(x - mu) * inv_std``, the statistics taken per example over the last ``normalized_ndim`` axes.
    inv_std : ndarray, shape ``x.shape[:-normalized_ndim] + (1,) * normalized_ndim``
        ``1 / sqrt(var + eps)`` per example.
    gamma : ndarray, shape ``x.shape[-normalized_ndim:]``
    eps : float
    normalized_ndim : int
    m : int
        Values per example: the product of the last ``normalized_ndim`` axes.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    eps: float
    normalized_ndim: int
    m: int


def layer_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-5,
    normalized_ndim: int = 1,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, LayerNormCache]:
    """Layer Normalization (Ba et al. 2016), eq. ``eq-layer-norm``.

    For each example (each index of the leading ``x.ndim - normalized_ndim`` axes), over the ``m`` values
    of its last ``normalized_ndim`` axes::

        mu    = (1/m) sum_j x_j
        var   = (1/m) sum_j (x_j - mu)^2
        x_hat = (x - mu) / sqrt(var + eps)
        y     = gamma * x_hat + beta            (gamma, beta elementwise over the normalised shape)

    This is ``torch.nn.LayerNorm(x.shape[-normalized_ndim:], eps)``; Keras' ``LayerNormalization`` with
    ``axis`` the last ``normalized_ndim`` axes (its default eps is 1e-3). No batch statistics: training
    and inference are the same computation. A normalised shape of one value gives ``var = 0`` and
    ``y = beta``, as in both frameworks.

    Parameters
    ----------
    x : ndarray, shape (..., D_1, ..., D_k) with k = normalized_ndim
        Real floating-point input; float16 is computed in float32.
    gamma, beta : array_like, shape (D_1, ..., D_k)
    eps : float
        Positive stabiliser inside the square root.
    normalized_ndim : int, 1 <= normalized_ndim <= x.ndim
    check_finite : bool
        Raise a ValueError if x has non-finite values.

    Returns
    -------
    y : ndarray, same shape and dtype as x
    cache : LayerNormCache

    Examples
    --------
    >>> import numpy as np
    >>> from bnref.normalization import layer_norm_forward
    >>> y, cache = layer_norm_forward(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]), np.ones(3), np.zeros(3), eps=1e-12)
    >>> y.round(4).tolist()  # each row standardised on its own
    [[-1.2247, 0.0, 1.2247], [-0.7071, -0.7071, 1.4142]]
    """
    x, normalized_ndim, norm_shape, axes, dtype = _last_axes_input(x, normalized_ndim)
    what = f"to match the last {normalized_ndim} axes of x with shape {x.shape}"
    gamma = v.as_param(gamma, "gamma", norm_shape, dtype, what)
    beta = v.as_param(beta, "beta", norm_shape, dtype, what)
    eps = v.check_eps(eps)
    m = math.prod(norm_shape)
    x_in = x.astype(dtype, copy=False)
    if check_finite:
        v.check_finite(x_in, "x")

    with np.errstate(invalid="ignore", over="ignore"):
        x_hat, inv_std = _standardise(x_in, axes, eps)
        y = gamma * x_hat + beta  # eq-layer-norm
    cache = LayerNormCache(x_hat=x_hat, inv_std=inv_std, gamma=gamma, eps=eps, normalized_ndim=normalized_ndim, m=m)
    return y.astype(x.dtype, copy=False), cache


def layer_norm_backward(
    dy: np.ndarray, cache: LayerNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Layer Normalization.

    ::

        dbeta  = sum over examples of dy
        dgamma = sum over examples of dy * x_hat
        dx_hat = dy * gamma
        dx     = inv_std / m * (m dx_hat - sum(dx_hat) - x_hat sum(dx_hat x_hat))   (eq-dx-from-dxhat)

    where in ``dx`` the sums run over each example's ``m`` values.

    Returns
    -------
    dx : ndarray, shape like dy
    dgamma, dbeta : ndarray, shape of gamma
    """
    v.check_cache(cache, LayerNormCache, "layer_norm_forward")
    dy = _check_dy(dy, cache.x_hat.shape, cache.x_hat.dtype, check_finite)
    with np.errstate(invalid="ignore", over="ignore"):
        dbeta = np.sum(dy, axis=cache.param_axes)
        dgamma = np.sum(dy * cache.x_hat, axis=cache.param_axes)
        dx_hat = dy * cache.gamma
        dx = _dx_from_dx_hat(dx_hat, cache.x_hat, cache.inv_std, cache.norm_axes, cache.m)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RMSNormCache(_OverLastAxes):
    """What ``rms_norm_forward`` keeps for ``rms_norm_backward``.

    Attributes
    ----------
    x_hat : ndarray, shape like the input
        ``x * inv_rms``, the statistic taken per example over the last ``normalized_ndim`` axes.
    inv_rms : ndarray, shape ``x.shape[:-normalized_ndim] + (1,) * normalized_ndim``
        ``1 / sqrt(mean(x^2) + eps)`` per example.
    gamma : ndarray, shape ``x.shape[-normalized_ndim:]``
    eps : float
    normalized_ndim : int
    m : int
        Values per example: the product of the last ``normalized_ndim`` axes.
    """

    x_hat: np.ndarray
    inv_rms: np.ndarray
    gamma: np.ndarray
    eps: float
    normalized_ndim: int
    m: int


def rms_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    eps: float = 1e-6,
    normalized_ndim: int = 1,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, RMSNormCache]:
    """RMSNorm, root mean square normalisation (Zhang & Sennrich 2019), eq. ``eq-rms-norm``.

    For each example (each index of the leading ``x.ndim - normalized_ndim`` axes), over the ``m`` values
    of its last ``normalized_ndim`` axes::

        ms      = (1/m) sum_j x_j^2
        inv_rms = 1 / sqrt(ms + eps)
        x_hat   = x * inv_rms
        y       = gamma * x_hat                 (gamma elementwise over the normalised shape)

    Layer Normalization without the mean: nothing is centred and there is no shift ``beta``, so ``y`` keeps
    the sign and direction of each example, rescaled to a root mean square of about 1. This is
    ``torch.nn.RMSNorm(x.shape[-normalized_ndim:], eps)``; torch's default ``eps=None`` is the machine epsilon
    of its compute type (``np.finfo(np.float32).eps`` for float16, bfloat16 and float32 input,
    ``np.finfo(np.float64).eps`` for float64). Keras 3.15's ``RMSNormalization`` computes the same with
    ``epsilon=1e-6``, the default here.

    Parameters and returns as in ``layer_norm_forward``, without ``beta``; the cache is an ``RMSNormCache``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnref.normalization import rms_norm_forward
    >>> y, cache = rms_norm_forward(np.array([[3.0, 4.0], [0.0, -2.0]]), np.ones(2), eps=1e-12)
    >>> y.round(4).tolist()  # each row divided by its root mean square: sqrt(12.5) and sqrt(2)
    [[0.8485, 1.1314], [0.0, -1.4142]]
    """
    x, normalized_ndim, norm_shape, axes, dtype = _last_axes_input(x, normalized_ndim)
    what = f"to match the last {normalized_ndim} axes of x with shape {x.shape}"
    gamma = v.as_param(gamma, "gamma", norm_shape, dtype, what)
    eps = v.check_eps(eps)
    m = math.prod(norm_shape)
    x_in = x.astype(dtype, copy=False)
    if check_finite:
        v.check_finite(x_in, "x")

    with np.errstate(invalid="ignore", over="ignore"):
        ms = np.mean(x_in**2, axis=axes, keepdims=True)
        inv_rms = 1.0 / np.sqrt(ms + eps)
        x_hat = x_in * inv_rms
        y = gamma * x_hat  # eq-rms-norm
    cache = RMSNormCache(x_hat=x_hat, inv_rms=inv_rms, gamma=gamma, eps=eps, normalized_ndim=normalized_ndim, m=m)
    return y.astype(x.dtype, copy=False), cache


def rms_norm_backward(
    dy: np.ndarray, cache: RMSNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of RMSNorm.

    ::

        dgamma = sum over examples of dy * x_hat
        dx_hat = dy * gamma
        dx     = inv_rms / m * (m * dx_hat - x_hat * sum(dx_hat * x_hat))     (eq-rms-dx)

    where in ``dx`` the sum runs over each example's ``m`` values. Derivation: ``x_j`` reaches the loss
    through ``x_hat_j = x_j * inv_rms`` and, like every value of its example, through
    ``inv_rms = (ms + eps)^(-1/2)``, whose derivative is ``d inv_rms / d x_j = -inv_rms^3 x_j / m``. So::

        dx_j = inv_rms dx_hat_j + sum_k (dx_hat_k x_k) (-inv_rms^3 x_j / m)
             = inv_rms / m * (m dx_hat_j - x_hat_j sum_k dx_hat_k x_hat_k)

    using ``x inv_rms = x_hat`` twice. It is eq. ``eq-dx-from-dxhat`` without the term ``- sum(dx_hat)``, which
    there comes from the subtracted mean.

    Returns
    -------
    dx : ndarray, shape like dy
    dgamma : ndarray, shape of gamma
    """
    v.check_cache(cache, RMSNormCache, "rms_norm_forward")
    dy = _check_dy(dy, cache.x_hat.shape, cache.x_hat.dtype, check_finite)
    axes, m = cache.norm_axes, cache.m
    with np.errstate(invalid="ignore", over="ignore"):
        dgamma = np.sum(dy * cache.x_hat, axis=cache.param_axes)
        dx_hat = dy * cache.gamma
        sum_dx_hat_x_hat = np.sum(dx_hat * cache.x_hat, axis=axes, keepdims=True)
        dx = cache.inv_rms / m * (m * dx_hat - cache.x_hat * sum_dx_hat_x_hat)  # eq-rms-dx
    return dx, dgamma


# ----------------------------------------------------------------------------------------------------
# Group Normalization and Instance Normalization
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupNormCache:
    """What ``group_norm_forward`` keeps for ``group_norm_backward``.

    Attributes
    ----------
    x_hat : ndarray, shape (N, G, C // G, *spatial)
        The normalised input, grouped.
    inv_std : ndarray, shape (N, G, 1, 1, ...)
        ``1 / sqrt(var + eps)`` per example and group.
    gamma : ndarray, shape (1, G, C // G, 1, ...)
        The per-channel scale, grouped for broadcasting.
    shape : tuple
        The input's shape (N, C, *spatial).
    groups : int
    eps : float
    m : int
        Values per example and group: ``C // G`` times the spatial size.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    shape: tuple[int, ...]
    groups: int
    eps: float
    m: int

    @property
    def group_axes(self) -> tuple[int, ...]:
        """The axes of the grouped array a statistic runs over: channels in the group and space."""
        return tuple(range(2, self.x_hat.ndim))

    @property
    def param_axes(self) -> tuple[int, ...]:
        """The axes of the grouped array ``dgamma`` sums over: examples and space."""
        return (0, *range(3, self.x_hat.ndim))


def group_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    groups: int,
    eps: float = 1e-5,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, GroupNormCache]:
    """Group Normalization (Wu & He 2018), eq. ``eq-group-norm``, channels first.

    The ``C`` channels are split into ``G = groups`` groups of ``C // G`` consecutive channels. For each
    example ``n`` and group ``g``, over the ``m = (C // G) * H * W`` values of that group::

        mu_ng    = (1/m) sum x
        var_ng   = (1/m) sum (x - mu_ng)^2
        x_hat    = (x - mu_ng) / sqrt(var_ng + eps)
        y[n, c]  = gamma[c] * x_hat[n, c] + beta[c]

    ``groups == 1`` normalises each example over all channels and positions (Layer Normalization of an
    image with per-channel parameters); ``groups == C`` is Instance Normalization. This is
    ``torch.nn.GroupNorm(groups, C, eps)``; Keras' ``GroupNormalization`` is the same on channels-last input
    (default eps 1e-3).

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L) or (N, C, H, W) (any number of trailing spatial axes)
    gamma, beta : array_like, shape (C,)
    groups : int
        A divisor of C.
    eps : float
    check_finite : bool

    Returns
    -------
    y : ndarray, same shape and dtype as x
    cache : GroupNormCache
    """
    x = v.as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...); got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    groups = v.check_int(groups, "groups", minimum=1)
    if c % groups != 0:
        raise ValueError(f"groups={groups} does not divide the {c} channels of x with shape {x.shape}")
    dtype = v.compute_dtype(x.dtype)
    gamma = v.channel_param(gamma, "gamma", x.shape, 1, dtype)
    beta = v.channel_param(beta, "beta", x.shape, 1, dtype)
    eps = v.check_eps(eps)
    spatial = x.shape[2:]
    m = (c // groups) * math.prod(spatial)
    if m < 1:
        raise ValueError(f"x must have at least one value per group; got shape {x.shape}")
    x_in = x.astype(dtype, copy=False)
    if check_finite:
        v.check_finite(x_in, "x")
    grouped = (n, groups, c // groups, *spatial)
    param_shape = (1, groups, c // groups) + (1,) * len(spatial)
    axes = tuple(range(2, len(grouped)))

    with np.errstate(invalid="ignore", over="ignore"):
        x_hat, inv_std = _standardise(x_in.reshape(grouped), axes, eps)
        y = gamma.reshape(param_shape) * x_hat + beta.reshape(param_shape)  # eq-group-norm
    cache = GroupNormCache(
        x_hat=x_hat, inv_std=inv_std, gamma=gamma.reshape(param_shape), shape=x.shape, groups=groups, eps=eps, m=m
    )
    return y.reshape(x.shape).astype(x.dtype, copy=False), cache


def group_norm_backward(
    dy: np.ndarray, cache: GroupNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Group Normalization.

    ::

        dbeta[c]  = sum over examples and positions of dy[:, c]
        dgamma[c] = sum over examples and positions of dy[:, c] * x_hat[:, c]
        dx_hat    = dy * gamma
        dx        = eq-dx-from-dxhat, the sums running over each example's group (m values)

    Returns
    -------
    dx : ndarray, shape (N, C, ...) like dy
    dgamma, dbeta : ndarray, shape (C,)
    """
    v.check_cache(cache, GroupNormCache, "group_norm_forward")
    dy = _check_dy(dy, cache.shape, cache.x_hat.dtype, check_finite).reshape(cache.x_hat.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        dbeta = np.sum(dy, axis=cache.param_axes).reshape(-1)
        dgamma = np.sum(dy * cache.x_hat, axis=cache.param_axes).reshape(-1)
        dx_hat = dy * cache.gamma
        dx = _dx_from_dx_hat(dx_hat, cache.x_hat, cache.inv_std, cache.group_axes, cache.m)
    return dx.reshape(cache.shape), dgamma, dbeta


def instance_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5, *, check_finite: bool = True
) -> tuple[np.ndarray, GroupNormCache]:
    """Instance Normalization (Ulyanov et al. 2016): ``group_norm_forward`` with one channel per group.

    Each example's channel is standardised over its own spatial positions; ``x`` has shape (N, C, L) or
    (N, C, H, W) (at least two positions are needed for a variance that is not zero). This is
    ``torch.nn.InstanceNorm2d(C, eps, affine=True)`` in training mode without running statistics
    (``track_running_stats=False``, its default).
    """
    x = v.as_float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"instance normalisation needs spatial axes: x must be (N, C, L, ...); got shape {x.shape}")
    return group_norm_forward(x, gamma, beta, groups=x.shape[1], eps=eps, check_finite=check_finite)


def instance_norm_backward(
    dy: np.ndarray, cache: GroupNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Instance Normalization: ``group_norm_backward`` (returns dx, dgamma, dbeta)."""
    return group_norm_backward(dy, cache, check_finite=check_finite)
