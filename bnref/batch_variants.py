"""NumPy references for the variants of Batch Normalization that keep batch statistics, in the style of
``bnref.reference`` (book, chapter "Beyond Batch Normalization"):

* Batch Renormalization (Ioffe 2017): Batch Normalization whose normalised values are corrected towards the
  running statistics, ``x_hat * r + d``, with ``r`` and ``d`` clipped and held constant in the gradient.
* Ghost Batch Normalization (Hoffer et al. 2017): Batch Normalization applied separately to each virtual
  sub-batch ("ghost batch") of ``ghost_batch_size`` consecutive examples.

Both are built on the reference's ``batch_norm_forward`` and ``batch_norm_backward`` (eqs. ``eq-batch-mean``
to ``eq-dx-compact``) and its running update (eq. ``eq-running-update``). float16 is computed in float32 and
the output cast back. Bad input raises ``TypeError`` or ``ValueError`` naming the problem
(``bnref.validation``); no framework is imported. ``bnref.normalization`` and ``bnref`` export every name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import validation as v
from .conventions import PYTORCH, Convention
from .reference import (
    BatchNormCache,
    batch_norm_backward,
    batch_norm_forward,
    running_update,
    update_running_stats,
)

__all__ = [
    "BatchRenormCache",
    "GhostBatchNormCache",
    "batch_renorm_backward",
    "batch_renorm_clipping",
    "batch_renorm_forward",
    "batch_renorm_running_update",
    "ghost_batch_norm_backward",
    "ghost_batch_norm_forward",
    "ghost_batch_norm_running_update",
]


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
    r_max, d_max = v.check_real(r_max, "r_max"), v.check_real(d_max, "d_max")
    if not (math.isfinite(r_max) and r_max >= 1.0):
        raise ValueError(f"r_max must be a finite number >= 1 (r is clipped to [1/r_max, r_max]); got {r_max}")
    if not (math.isfinite(d_max) and d_max >= 0.0):
        raise ValueError(f"d_max must be a finite number >= 0 (d is clipped to [-d_max, d_max]); got {d_max}")
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
    x = v.as_float_array(x, "x")
    axis = v.channel_axis(x.shape, axis)
    dtype = v.compute_dtype(x.dtype)
    channels = x.shape[axis]
    gamma = v.channel_param(gamma, "gamma", x.shape, axis, dtype)
    beta = v.channel_param(beta, "beta", x.shape, axis, dtype)
    running_mean = v.channel_param(running_mean, "running_mean", x.shape, axis, dtype)
    running_var = v.channel_param(running_var, "running_var", x.shape, axis, dtype)
    v.check_non_negative(running_var, "running_var")
    eps = v.check_eps(eps)
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

        dbeta  = sum(dy)                                                             (eq-dbeta)
        dgamma = sum(dy * (x_hat * r + d))
        dx     = (gamma * r) * inv_std / m * (m * dy - dbeta - x_hat * sum(dy * x_hat))   (eq-dx-compact)

    ``dx`` is Batch Normalization's (``batch_norm_backward``) with ``gamma * r`` in place of ``gamma``, and is
    computed so. It is *not* the derivative of ``batch_renorm_forward`` as a function of ``x`` wherever ``r``
    or ``d`` is not clipped (they depend on the batch); that is the paper's choice.

    Returns
    -------
    dx : ndarray, shape like dy
    dgamma, dbeta : ndarray, shape (C,)
    """
    v.check_cache(cache, BatchRenormCache, "batch_renorm_forward")
    bn = cache.bn
    bn_scaled_by_r = dataclasses.replace(bn, gamma=cache.gamma * cache.r)  # gamma * r in place of gamma
    dx, _, dbeta = batch_norm_backward(dy, bn_scaled_by_r, check_finite=check_finite)  # eq-dx-compact, eq-dbeta
    dy = v.as_dy(dy, bn.x.shape, bn.x.dtype)
    r, d = cache.r.reshape(bn.bshape), cache.d.reshape(bn.bshape)
    with np.errstate(invalid="ignore", over="ignore"):
        dgamma = np.sum(dy * (bn.x_hat * r + d), axis=bn.reduce_axes)
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
    v.check_cache(cache, BatchRenormCache, "batch_renorm_forward")
    eps, w = cache.bn.eps, 1.0 - v.check_unit_interval(momentum, "momentum")
    shape, what = cache.bn.mean.shape, "to match the channels of the cache"
    running_mean = v.as_param(running_mean, "running_mean", shape, np.float64, what)
    running_var = v.as_param(running_var, "running_var", shape, np.float64, what)
    v.check_non_negative(running_var, "running_var")
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
    step = v.check_int(step, "step", minimum=0)
    _check_clipping(r_max_final, d_max_final)
    warmup_steps = v.check_int(warmup_steps, "warmup_steps", minimum=0)
    r_max_steps = v.check_int(r_max_steps, "r_max_steps")
    d_max_steps = v.check_int(d_max_steps, "d_max_steps")
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
    x = v.as_float_array(x, "x")
    axis = v.channel_axis(x.shape, axis)
    if axis == 0:
        raise ValueError("axis must not be 0: axis 0 is the batch axis that ghost batch norm splits")
    n = x.shape[0]
    ghost_batch_size = v.check_int(ghost_batch_size, "ghost_batch_size", minimum=1)
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
    v.check_cache(cache, GhostBatchNormCache, "ghost_batch_norm_forward")
    size = cache.ghost_batch_size
    shape = (size * len(cache.ghosts), *cache.ghosts[0].x.shape[1:])
    dy = v.as_dy(dy, shape, cache.ghosts[0].x.dtype)
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
    v.check_cache(cache, GhostBatchNormCache, "ghost_batch_norm_forward")
    step = v.check_int(step, "step", minimum=0)
    mean, var = np.asarray(running_mean), np.asarray(running_var)
    for ghost in cache.ghosts:
        step += 1
        mean, var = update_running_stats(mean, var, ghost.mean, ghost.var, ghost.m, step, convention)
    return mean, var, step
