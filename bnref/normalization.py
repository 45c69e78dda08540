"""NumPy references for the normalisations beyond Batch Normalization, in the style of ``bnref.reference``.

All of them standardise ``x`` with a mean and a variance and then scale and shift; they differ in the set of
values a statistic runs over (book, chapter "Beyond Batch Normalization"):

* Layer Normalization (Ba et al. 2016): per example, over the last ``normalized_ndim`` axes.
* Group Normalization (Wu & He 2018): per example and group of ``C / groups`` channels, over those channels
  and all spatial positions. Instance Normalization (Ulyanov et al. 2016) is the case ``groups == C``.
* Batch Renormalization (Ioffe 2017): Batch Normalization whose normalised values are corrected towards the
  running statistics, ``x_hat * r + d``, with ``r`` and ``d`` clipped and held constant in the gradient.
* Ghost Batch Normalization (Hoffer et al. 2017): Batch Normalization applied separately to each virtual
  sub-batch ("ghost batch") of ``ghost_batch_size`` consecutive examples.

For a set of ``m`` values standardised together, with ``dx_hat = dL/dx_hat``, every backward pass here
ends in the same step (the compact form of the reference's eq. ``eq-dx-compact`` before the scale ``gamma``
is applied)::

    dx = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))      (eq-dx-from-dxhat)

Variances are biased (divisor ``m``) and two-pass, ``mean((x - mu)**2)``, as in the reference. float16 is
computed in float32 and the output cast back. Bad input raises ``ValueError`` naming the problem; no
framework is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .conventions import PYTORCH, Convention
from .reference import (
    BatchNormCache,
    _as_float_array,
    _channel_axis,
    _check_eps,
    _compute_dtype,
    batch_norm_backward,
    batch_norm_forward,
    running_update,
    update_running_stats,
)

__all__ = [
    "BatchRenormCache",
    "GhostBatchNormCache",
    "GroupNormCache",
    "LayerNormCache",
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
]


# ----------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------


def _param(p: object, name: str, shape: tuple[int, ...], what: str, dtype: np.dtype) -> np.ndarray:
    """A parameter of exactly ``shape`` as a new array in ``dtype``, after checking it."""
    arr = np.asarray(p)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}); got shape {arr.shape}")
    arr = np.array(arr, dtype=dtype)  # a copy: the cache never aliases the caller's array
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values (nan or inf)")
    return arr


def _check_finite_input(values: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"{name} has non-finite values (nan or inf) at {np.count_nonzero(~np.isfinite(values))} positions"
        )


def _check_count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _standardise(x: np.ndarray, axes: tuple[int, ...], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``x_hat = (x - mu) / sqrt(var + eps)`` over ``axes`` (two-pass, biased); returns x_hat and inv_std."""
    mu = np.mean(x, axis=axes, keepdims=True)
    x_centred = x - mu
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
    dy = _as_float_array(dy, "dy")
    if dy.shape != shape:
        raise ValueError(f"dy must have the forward input's shape {shape}; got {dy.shape}")
    dy = dy.astype(dtype, copy=False)
    if check_finite:
        _check_finite_input(dy, "dy")
    return dy


# ----------------------------------------------------------------------------------------------------
# Layer Normalization
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNormCache:
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

    @property
    def norm_axes(self) -> tuple[int, ...]:
        """The axes a statistic runs over: the last ``normalized_ndim``."""
        return tuple(range(self.x_hat.ndim - self.normalized_ndim, self.x_hat.ndim))

    @property
    def param_axes(self) -> tuple[int, ...]:
        """The axes ``dgamma`` and ``dbeta`` sum over: the leading (example) axes."""
        return tuple(range(self.x_hat.ndim - self.normalized_ndim))


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
    x = _as_float_array(x, "x")
    normalized_ndim = _check_count(normalized_ndim, "normalized_ndim")
    if normalized_ndim > x.ndim:
        raise ValueError(f"normalized_ndim={normalized_ndim} exceeds the {x.ndim} dimensions of x {x.shape}")
    dtype = _compute_dtype(x.dtype)
    norm_shape = x.shape[x.ndim - normalized_ndim :]
    what = f"the last {normalized_ndim} axes of x {x.shape}"
    gamma = _param(gamma, "gamma", norm_shape, what, dtype)
    beta = _param(beta, "beta", norm_shape, what, dtype)
    eps = _check_eps(eps)
    m = math.prod(norm_shape)
    if m < 1:
        raise ValueError(f"x {x.shape} has no values to normalise over its last {normalized_ndim} axes")
    x_in = x.astype(dtype, copy=False)
    if check_finite:
        _check_finite_input(x_in, "x")
    axes = tuple(range(x.ndim - normalized_ndim, x.ndim))

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
    if not isinstance(cache, LayerNormCache):
        raise ValueError(f"cache must be the LayerNormCache of layer_norm_forward, got {type(cache).__name__}")
    dy = _check_dy(dy, cache.x_hat.shape, cache.x_hat.dtype, check_finite)
    with np.errstate(invalid="ignore", over="ignore"):
        dbeta = np.sum(dy, axis=cache.param_axes)
        dgamma = np.sum(dy * cache.x_hat, axis=cache.param_axes)
        dx_hat = dy * cache.gamma
        dx = _dx_from_dx_hat(dx_hat, cache.x_hat, cache.inv_std, cache.norm_axes, cache.m)
    return dx, dgamma, dbeta


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
    x = _as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    groups = _check_count(groups, "groups")
    if c % groups != 0:
        raise ValueError(f"groups={groups} does not divide the {c} channels of x {x.shape}")
    dtype = _compute_dtype(x.dtype)
    gamma = _param(gamma, "gamma", (c,), f"one per channel of x {x.shape}", dtype)
    beta = _param(beta, "beta", (c,), f"one per channel of x {x.shape}", dtype)
    eps = _check_eps(eps)
    spatial = x.shape[2:]
    m = (c // groups) * math.prod(spatial)
    if m < 1:
        raise ValueError(f"x {x.shape} has no values per group")
    x_in = x.astype(dtype, copy=False)
    if check_finite:
        _check_finite_input(x_in, "x")
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
    if not isinstance(cache, GroupNormCache):
        raise ValueError(f"cache must be the GroupNormCache of group_norm_forward, got {type(cache).__name__}")
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
    x = _as_float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"instance normalisation needs spatial axes: x must be (N, C, L, ...), got shape {x.shape}")
    return group_norm_forward(x, gamma, beta, groups=x.shape[1], eps=eps, check_finite=check_finite)


def instance_norm_backward(
    dy: np.ndarray, cache: GroupNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Instance Normalization: ``group_norm_backward`` (returns dx, dgamma, dbeta)."""
    return group_norm_backward(dy, cache, check_finite=check_finite)


# ----------------------------------------------------------------------------------------------------
# Batch Renormalization
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRenormCache:
    """What ``batch_renorm_forward`` keeps for ``batch_renorm_backward``.

    Attributes
    ----------
    bn : BatchNormCache
        The plain Batch Normalization of the batch (gamma 1, beta 0): ``x_hat``, ``mean`` (``mu_B``),
        ``var``, ``inv_std = 1 / sigma_B``, ``axis``, ``m``.
    r, d : ndarray, shape (C,)
        The clipped corrections, constants of the backward pass.
    gamma : ndarray, shape (C,)
    """

    bn: BatchNormCache
    r: np.ndarray
    d: np.ndarray
    gamma: np.ndarray

    @property
    def sigma_b(self) -> np.ndarray:
        """``sigma_B = sqrt(var_B + eps)``, the batch standard deviation the layer normalises with."""
        return 1.0 / self.bn.inv_std


def _check_clipping(r_max: object, d_max: object) -> tuple[float, float]:
    try:
        r_max, d_max = float(r_max), float(d_max)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"r_max and d_max must be numbers, got {r_max!r} and {d_max!r}") from None
    if not (math.isfinite(r_max) and r_max >= 1.0):
        raise ValueError(f"r_max must be a finite number >= 1 (r is clipped to [1/r_max, r_max]), got {r_max}")
    if not (math.isfinite(d_max) and d_max >= 0.0):
        raise ValueError(f"d_max must be a finite number >= 0 (d is clipped to [-d_max, d_max]), got {d_max}")
    return r_max, d_max


def batch_renorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    r_max: float,
    d_max: float,
    eps: float = 1e-3,
    axis: int = -1,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, BatchRenormCache]:
    """Batch Renormalization in training mode (Ioffe 2017, Algorithm 1), eq. ``eq-batch-renorm``.

    Per channel, with the batch mean ``mu_B`` and biased variance ``var_B`` of ``batch_norm_forward``::

        sigma_B = sqrt(var_B + eps)
        sigma   = sqrt(running_var + eps)
        x_hat   = (x - mu_B) / sigma_B
        r       = clip(sigma_B / sigma, 1 / r_max, r_max)
        d       = clip((mu_B - running_mean) / sigma, -d_max, d_max)
        y       = gamma * (x_hat * r + d) + beta

    ``r`` and ``d`` are treated as constants by ``batch_renorm_backward`` (the paper's stop-gradient).
    With ``r_max = 1, d_max = 0`` this is Batch Normalization.

    Convention for ``sigma``: the paper keeps a running standard deviation ``sigma``; Keras 3.15 keeps it as
    the weight ``renorm_stddev`` (a running average of ``sqrt(var_B + epsilon)``) and uses
    ``max(renorm_stddev, sqrt(epsilon))``. Here the running estimate is passed as a variance and
    ``sigma = sqrt(running_var + eps)``: pass ``running_var = renorm_stddev**2 - eps`` (what Keras itself
    stores as ``moving_variance``) to reproduce Keras, and keep it with ``batch_renorm_running_update``.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, H, W, C) with axis=-1 (Keras), (N, C, H, W) with axis=1, ...
        At least two values per channel.
    gamma, beta, running_mean, running_var : array_like, shape (C,)
        ``running_var >= 0``.
    r_max : float, >= 1
    d_max : float, >= 0
    eps : float
        Keras' default 1e-3.
    axis : int
        The channel axis.
    check_finite : bool

    Returns
    -------
    y : ndarray, same shape and dtype as x
    cache : BatchRenormCache
    """
    r_max, d_max = _check_clipping(r_max, d_max)
    x = _as_float_array(x, "x")
    axis = _channel_axis(x.shape, axis)
    dtype = _compute_dtype(x.dtype)
    channels = x.shape[axis]
    what = f"one per channel on axis {axis} of x {x.shape}"
    gamma = _param(gamma, "gamma", (channels,), what, dtype)
    beta = _param(beta, "beta", (channels,), what, dtype)
    running_mean = _param(running_mean, "running_mean", (channels,), what, dtype)
    running_var = _param(running_var, "running_var", (channels,), what, dtype)
    if np.any(running_var < 0):
        raise ValueError(
            f"running_var must be >= 0; it is negative at channels {np.flatnonzero(running_var < 0).tolist()}"
        )
    eps = _check_eps(eps)
    ones, zeros = np.ones(channels, dtype), np.zeros(channels, dtype)
    _, bn = batch_norm_forward(x, ones, zeros, eps=eps, axis=axis, check_finite=check_finite)
    b = bn.bshape

    with np.errstate(invalid="ignore", over="ignore"):
        sigma_b = np.sqrt(bn.var + eps)
        sigma = np.sqrt(running_var + eps)
        r = np.clip(sigma_b / sigma, 1.0 / r_max, r_max)
        d = np.clip((bn.mean - running_mean) / sigma, -d_max, d_max)
        y = gamma.reshape(b) * (bn.x_hat * r.reshape(b) + d.reshape(b)) + beta.reshape(b)  # eq-batch-renorm
    return y.astype(x.dtype, copy=False), BatchRenormCache(bn=bn, r=r, d=d, gamma=gamma)


def batch_renorm_backward(
    dy: np.ndarray, cache: BatchRenormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Batch Renormalization with ``r`` and ``d`` held constant (Ioffe 2017).

    Per channel, the sums over its ``m`` values::

        dbeta  = sum(dy)
        dgamma = sum(dy * (x_hat * r + d))
        dx_hat = dy * gamma * r
        dx     = inv_std / m * (m dx_hat - sum(dx_hat) - x_hat sum(dx_hat x_hat))   (eq-dx-from-dxhat)

    This is Batch Normalization's backward with ``gamma * r`` in place of ``gamma``. It is *not* the
    derivative of ``batch_renorm_forward`` as a function of ``x`` wherever ``r`` or ``d`` is not clipped
    (they depend on the batch); that is the paper's choice.

    Returns
    -------
    dx : ndarray, shape like dy
    dgamma, dbeta : ndarray, shape (C,)
    """
    if not isinstance(cache, BatchRenormCache):
        raise ValueError(f"cache must be the BatchRenormCache of batch_renorm_forward, got {type(cache).__name__}")
    bn = cache.bn
    dy = _check_dy(dy, bn.x.shape, bn.x.dtype, check_finite)
    axes, b, m = bn.reduce_axes, bn.bshape, bn.m
    r, d, gamma = cache.r.reshape(b), cache.d.reshape(b), cache.gamma.reshape(b)
    with np.errstate(invalid="ignore", over="ignore"):
        dbeta = np.sum(dy, axis=axes)
        dgamma = np.sum(dy * (bn.x_hat * r + d), axis=axes)
        dx_hat = dy * gamma * r
        dx = _dx_from_dx_hat(dx_hat, bn.x_hat, bn.inv_std.reshape(b), axes, m)
    return dx, dgamma, dbeta


def batch_renorm_running_update(
    running_mean: np.ndarray, running_var: np.ndarray, cache: BatchRenormCache, momentum: float = 0.99
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the running statistics of Batch Renormalization: a running mean and a running *std*.

    With ``w = 1 - momentum`` (Keras' momentum rule: the weight of the old value), by eq.
    ``eq-running-update``::

        running_mean <- (1 - w) running_mean + w mu_B
        sigma        <- (1 - w) sqrt(running_var + eps) + w sigma_B,     sigma_B = sqrt(var_B + eps)
        running_var  <- max(sigma^2 - eps, 0)

    The paper averages ``sigma`` (not the variance); Keras 3.15 does the same for ``renorm_stddev`` (with
    ``renorm_momentum``) and for ``moving_stddev`` (with ``momentum``), deriving
    ``moving_variance = relu(moving_stddev^2 - epsilon)``. The same function serves both pairs.

    Returns
    -------
    new_mean, new_var : ndarray, shape (C,)
    """
    if not isinstance(cache, BatchRenormCache):
        raise ValueError(f"cache must be the BatchRenormCache of batch_renorm_forward, got {type(cache).__name__}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    eps, w = cache.bn.eps, 1.0 - float(momentum)
    running_mean, running_var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    sigma = np.sqrt(running_var + eps)
    new_mean = running_update(running_mean, cache.bn.mean, w)
    new_sigma = running_update(sigma, np.sqrt(cache.bn.var.astype(np.float64) + eps), w)
    return new_mean, np.maximum(new_sigma**2 - eps, 0.0)


def batch_renorm_clipping(
    step: int,
    r_max_final: float = 3.0,
    d_max_final: float = 5.0,
    warmup_steps: int = 5000,
    r_max_steps: int = 40000,
    d_max_steps: int = 25000,
) -> tuple[float, float]:
    """The paper's schedule of ``(r_max, d_max)`` at a 0-based training ``step`` (Ioffe 2017, its experiments).

    ``r_max = 1, d_max = 0`` (plain Batch Normalization) for the first ``warmup_steps`` steps; then both are
    relaxed, reaching ``r_max_final`` at step ``r_max_steps`` and ``d_max_final`` at step ``d_max_steps``
    and staying there. The paper says only "gradually relaxed"; the ramp here is linear (our choice). The
    defaults are the paper's ImageNet numbers; a short run scales the three step counts down.
    """
    step = _check_count(step, "step", minimum=0)
    _check_clipping(r_max_final, d_max_final)
    warmup_steps = _check_count(warmup_steps, "warmup_steps", minimum=0)
    if not (r_max_steps > warmup_steps and d_max_steps > warmup_steps):
        raise ValueError(
            f"r_max_steps ({r_max_steps}) and d_max_steps ({d_max_steps}) must exceed warmup_steps ({warmup_steps})"
        )

    def ramp(final: float, start: float, end_step: int) -> float:
        fraction = min(max((step - warmup_steps) / (end_step - warmup_steps), 0.0), 1.0)
        return start + fraction * (final - start)

    return ramp(r_max_final, 1.0, r_max_steps), ramp(d_max_final, 0.0, d_max_steps)


# ----------------------------------------------------------------------------------------------------
# Ghost Batch Normalization
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GhostBatchNormCache:
    """What ``ghost_batch_norm_forward`` keeps: one ``BatchNormCache`` per ghost batch, in order.

    Attributes
    ----------
    ghosts : tuple of BatchNormCache
        Ghost batch ``k`` holds examples ``k * ghost_batch_size`` to ``(k + 1) * ghost_batch_size - 1``.
    ghost_batch_size : int
    axis : int
        The channel axis.
    """

    ghosts: tuple[BatchNormCache, ...]
    ghost_batch_size: int
    axis: int

    @property
    def means(self) -> np.ndarray:
        """Batch mean of each ghost batch, shape (number of ghost batches, C)."""
        return np.stack([g.mean for g in self.ghosts])

    @property
    def variances(self) -> np.ndarray:
        """Biased variance of each ghost batch, shape (number of ghost batches, C)."""
        return np.stack([g.var for g in self.ghosts])


def ghost_batch_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    ghost_batch_size: int,
    eps: float = 1e-5,
    axis: int = 1,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, GhostBatchNormCache]:
    """Ghost Batch Normalization (Hoffer et al. 2017), eq. ``eq-ghost-bn``.

    The batch of ``N`` examples (axis 0) is split into ``N / ghost_batch_size`` consecutive ghost batches,
    and each is normalised with its own statistics by ``batch_norm_forward`` (eqs. ``eq-batch-mean`` to
    ``eq-scale-shift``); ``gamma`` and ``beta`` are shared. ``ghost_batch_size == N`` is Batch
    Normalization.

    Rule for a batch that does not divide: ``ValueError`` (no ragged last ghost batch, whose statistics would
    be noisier than the others').

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, H, W) with axis=1 (default, PyTorch), (N, H, W, C) with axis=-1, ...
    gamma, beta : array_like, shape (C,)
    ghost_batch_size : int
        Divides N; each ghost batch must hold at least 2 values per channel.
    eps : float
    axis : int
        The channel axis; not 0, the batch axis that is split.
    check_finite : bool

    Returns
    -------
    y : ndarray, same shape and dtype as x
    cache : GhostBatchNormCache

    Examples
    --------
    >>> import numpy as np
    >>> from bnref.normalization import ghost_batch_norm_forward
    >>> x = np.array([[0.0], [2.0], [10.0], [14.0]])  # two ghost batches of two examples, one channel
    >>> y, cache = ghost_batch_norm_forward(x, np.ones(1), np.zeros(1), ghost_batch_size=2, eps=1e-12)
    >>> y.ravel().round(6).tolist(), cache.means.ravel().tolist()
    ([-1.0, 1.0, -1.0, 1.0], [1.0, 12.0])
    """
    x = _as_float_array(x, "x")
    axis = _channel_axis(x.shape, axis)
    if axis == 0:
        raise ValueError("axis must not be 0: axis 0 is the batch axis that ghost batch norm splits")
    n = x.shape[0]
    ghost_batch_size = _check_count(ghost_batch_size, "ghost_batch_size")
    if ghost_batch_size > n:
        raise ValueError(f"ghost_batch_size={ghost_batch_size} is larger than the batch of {n} examples")
    if n % ghost_batch_size != 0:
        raise ValueError(
            f"ghost_batch_size={ghost_batch_size} does not divide the batch of {n} examples; "
            "use a batch size that is a multiple of it"
        )
    outputs, ghosts = [], []
    for start in range(0, n, ghost_batch_size):
        y_k, cache_k = batch_norm_forward(
            x[start : start + ghost_batch_size], gamma, beta, eps=eps, axis=axis, check_finite=check_finite
        )
        outputs.append(y_k)
        ghosts.append(cache_k)
    y = np.concatenate(outputs, axis=0)
    return y, GhostBatchNormCache(ghosts=tuple(ghosts), ghost_batch_size=ghost_batch_size, axis=axis)


def ghost_batch_norm_backward(
    dy: np.ndarray, cache: GhostBatchNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Ghost Batch Normalization.

    Each ghost batch's ``dx`` is ``batch_norm_backward`` of its own slice of ``dy`` (eq. ``eq-dx-compact``:
    the ghost batches do not interact); ``dgamma`` and ``dbeta`` are the sums over the ghost batches of
    theirs (the parameters are shared).

    Returns
    -------
    dx : ndarray, shape like dy
    dgamma, dbeta : ndarray, shape (C,)
    """
    if not isinstance(cache, GhostBatchNormCache):
        raise ValueError(
            f"cache must be the GhostBatchNormCache of ghost_batch_norm_forward, got {type(cache).__name__}"
        )
    size = cache.ghost_batch_size
    shape = (size * len(cache.ghosts), *cache.ghosts[0].x.shape[1:])
    dy = _as_float_array(dy, "dy")
    if dy.shape != shape:
        raise ValueError(f"dy must have the forward input's shape {shape}; got {dy.shape}")
    dxs, dgamma, dbeta = [], 0.0, 0.0
    for k, ghost in enumerate(cache.ghosts):
        dx_k, dgamma_k, dbeta_k = batch_norm_backward(dy[k * size : (k + 1) * size], ghost, check_finite=check_finite)
        dxs.append(dx_k)
        dgamma = dgamma + dgamma_k
        dbeta = dbeta + dbeta_k
    return np.concatenate(dxs, axis=0), dgamma, dbeta


def ghost_batch_norm_running_update(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    cache: GhostBatchNormCache,
    step: int,
    convention: Convention | str = PYTORCH,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The running statistics after one Ghost BN step: one update per ghost batch, in order.

    For ghost batches ``k = 1 .. K``, ``update_running_stats`` (eq. ``eq-running-update``, the convention's
    momentum and variance bias, ``m`` the values per channel of one ghost batch) is applied in turn, as
    calling one ``torch.nn.BatchNorm`` layer on each sub-batch does (the usual implementation of Ghost BN,
    e.g. ``gbn.py`` of the GitHub repository Nivgil/Asynchronous-SGD). With a constant weight ``w`` this is
    the weighted sum ``(1 - w)^K r + sum_k w (1 - w)^(K - k) b_k``: later ghost batches weigh more, and one
    training step moves the estimates as far as ``K`` plain BN steps would. (Averaging the ghost batches'
    statistics and updating once is the other possible rule; it is not the one followed here.)

    Parameters
    ----------
    running_mean, running_var : ndarray, shape (C,)
    cache : GhostBatchNormCache
    step : int
        Updates done before this call (``num_batches_tracked``); each ghost batch counts as one.
    convention : Convention or name
        ``PYTORCH`` by default.

    Returns
    -------
    new_mean, new_var : ndarray, shape (C,)
    new_step : int
        ``step`` plus the number of ghost batches.
    """
    if not isinstance(cache, GhostBatchNormCache):
        raise ValueError(
            f"cache must be the GhostBatchNormCache of ghost_batch_norm_forward, got {type(cache).__name__}"
        )
    step = _check_count(step, "step", minimum=0)
    mean, var = np.asarray(running_mean), np.asarray(running_var)
    for ghost in cache.ghosts:
        step += 1
        mean, var = update_running_stats(mean, var, ghost.mean, ghost.var, ghost.m, step, convention)
    return mean, var, step
