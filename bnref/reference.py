"""NumPy reference for Batch Normalization: the oracle every other implementation is checked against.

Notation (book, chapter "The forward transform"): for one channel ``c`` the mini-batch holds ``m`` values
``x_i`` (``m = N`` for dense ``(N, C)`` inputs, ``m = N * H * W`` for images).

* batch mean            ``mu = (1/m) sum_i x_i``                          (eq-batch-mean)
* biased batch variance ``var = (1/m) sum_i (x_i - mu)^2``                (eq-batch-var)
* normalised input      ``x_hat = (x - mu) / sqrt(var + eps)``            (eq-x-hat)
* output                ``y = gamma * x_hat + beta``                      (eq-scale-shift)

Backward (chapter "The backward pass"), per channel, with ``g = dL/dy``:

* ``dbeta = sum_i g_i``                                                    (eq-dbeta)
* ``dgamma = sum_i g_i * x_hat_i``                                         (eq-dgamma)
* ``dx = gamma / (m sqrt(var + eps)) * (m g - dbeta - x_hat * dgamma)``    (eq-dx-compact)

Every function validates its input and raises ``ValueError`` naming the problem; no framework is imported.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal, TypeVar

import numpy as np

from .conventions import Convention, get_convention

__all__ = [
    "BatchNormCache",
    "RunningStats",
    "batch_mean_var",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_inference",
    "inference_affine",
    "fold_into_preceding",
    "running_update",
    "update_running_stats",
]


# ----------------------------------------------------------------------------------------------------
# Layout: which axis holds the channels, and how the other axes are reduced
# ----------------------------------------------------------------------------------------------------


#: Length, in elements, that the rows of ``_Layout.rows`` grow to when the batch allows it (see there).
_ROW_TARGET = 16384


@dataclass(frozen=True)
class _Layout:
    """The input viewed as ``(outer, C, inner)``: everything before the channel axis, the channels,
    everything after it. Per-channel reductions sum over ``outer`` and ``inner``.

    Per-channel element-wise operations (``x - mean``, ``x_hat * gamma``, ...) run on ``rows(a)``, a 2-D
    view of a C-contiguous array whose rows hold ``row_reps`` whole ``(C, inner)`` blocks, against
    ``per_channel(v)``, the vector ``v`` laid out along one such row. Element for element this is the
    same arithmetic as broadcasting ``v.reshape(bshape)`` (bit-identical results), but NumPy's inner loop
    then runs over rows of thousands of contiguous elements instead of ``C`` (or ``inner``) at a time,
    which made each such pass about 1.5 times faster (float32, measured: 97 -> 67 us for (1024, 512),
    1.5 -> 1.0 ms for (64, 64, 32, 32)).
    """

    shape: tuple[int, ...]
    axis: int  # normalised, 0 <= axis < ndim
    outer: int
    channels: int
    inner: int
    row_reps: int  # (C, inner) blocks per row of ``rows``: a power of two dividing ``outer``

    @property
    def m(self) -> int:
        """Number of values each channel sees in the batch."""
        return self.outer * self.inner

    @property
    def bshape(self) -> tuple[int, ...]:
        """Shape that broadcasts a per-channel vector against the input."""
        return tuple(self.channels if d == self.axis else 1 for d in range(len(self.shape)))

    def rows(self, a: np.ndarray) -> np.ndarray:
        """``a`` (shape ``self.shape``) as ``(outer / row_reps, row_reps * C * inner)``; a view when ``a``
        is C-contiguous (the callers make sure of that wherever they write through the view)."""
        return a.reshape(self.outer // self.row_reps, self.row_reps * self.channels * self.inner)

    def per_channel(self, v: np.ndarray) -> np.ndarray:
        """The per-channel vector ``v`` (shape ``(C,)``) laid out along one row of ``rows``."""
        row = np.empty((self.row_reps, self.channels, self.inner), dtype=v.dtype)
        row[...] = v[:, None]  # a plain broadcast copy: np.repeat took 0.4 ms for 64 values x 1024
        return row.reshape(-1)


def _layout(shape: tuple[int, ...], axis: int) -> _Layout:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"x must have at least 2 dimensions (batch and channels), got shape {shape}"
        )
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an input with {ndim} dimensions {shape}")
    axis = int(axis) % ndim
    outer = math.prod(shape[:axis])  # math.prod: exact Python ints, and ~50x cheaper than np.prod here
    inner = math.prod(shape[axis + 1 :])
    block = shape[axis] * inner
    reps = 1
    while block and outer % (2 * reps) == 0 and 2 * reps * block <= _ROW_TARGET:
        reps *= 2
    return _Layout(tuple(shape), axis, outer, shape[axis], inner, reps)


#: Largest (C, inner) slab, in elements, for which ``_channel_sum`` sums the outer axis first.
_SLAB_LIMIT = 32768


def _outer_first(lay: _Layout) -> bool:
    """Whether per-channel sums should run over the outer axis first.

    Both orders have the same error bound (a running sum over ``outer``, pairwise over ``inner``); they
    differ in speed. Outer first accumulates whole ``(C, inner)`` slabs into one buffer, fast while that
    buffer stays in cache; inner first reduces ``outer * C`` rows of ``inner`` contiguous values, fast
    when those rows are long. Measured for float32 forward+backward: outer first took 0.6x the time for
    (256, 64, 7, 7) and 0.94x for (32, 128, 16, 16), but 1.1x for (64, 64, 32, 32) and 1.7x for
    (8, 16, 112, 112), whose slabs (64k and 200k values) no longer fit in cache.
    """
    return lay.channels * lay.inner <= _SLAB_LIMIT


def _channel_sum(a: np.ndarray, lay: _Layout) -> np.ndarray:
    """Sum over every axis but the channel axis, returning shape ``(C,)``.

    The array is viewed as ``(outer, C, inner)`` (free for contiguous arrays). The outer axis is summed
    by a vectorised running sum, the contiguous inner axis by NumPy's pairwise summation; the order is
    chosen for speed by ``_outer_first``.
    """
    a3 = a.reshape(lay.outer, lay.channels, lay.inner)
    if lay.inner == 1:
        return a3[:, :, 0].sum(axis=0)
    if _outer_first(lay):
        return a3.sum(axis=0).sum(axis=1)
    return a3.sum(axis=2).sum(axis=0)


def _channel_sum_of_products(a: np.ndarray, b: np.ndarray, lay: _Layout) -> np.ndarray:
    """``sum(a * b)`` per channel without materialising ``a * b`` (one fused pass via einsum)."""
    a3 = a.reshape(lay.outer, lay.channels, lay.inner)
    b3 = b.reshape(lay.outer, lay.channels, lay.inner)
    if lay.inner == 1:
        return np.einsum("oc,oc->c", a3[:, :, 0], b3[:, :, 0])
    if _outer_first(lay):
        return np.einsum("oci,oci->ci", a3, b3).sum(axis=1)
    return np.einsum("oci,oci->c", a3, b3)


# ----------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., object])


def _quiet_non_finite(func: _F) -> _F:
    """Run ``func`` with NumPy's "invalid value" and "overflow" warnings off.

    The functions decorated with it handle non-finite values themselves: they raise a ValueError that
    names the channels, or, with ``check_finite=False``, let nan and inf propagate silently as the
    frameworks do. A RuntimeWarning from NumPy on the way would only add noise, and under
    ``-W error`` it would replace the informative ValueError.
    """

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        with np.errstate(invalid="ignore", over="ignore"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _as_float_array(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "c":
        raise ValueError(f"{name} must be real floating point; got complex dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        raise ValueError(
            f"{name} must be a floating-point array (float16, float32 or float64); got dtype {arr.dtype}. "
            f"Convert it explicitly, e.g. {name}.astype(np.float32)."
        )
    return arr


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32 (as both frameworks do) and cast back; others in their own dtype."""
    return np.result_type(dtype, np.float32)


def _channel_param(p: object, name: str, lay: _Layout, dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(p)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.shape != (lay.channels,):
        raise ValueError(
            f"{name} must have shape ({lay.channels},) to match the {lay.channels} channels on axis "
            f"{lay.axis} of x with shape {lay.shape}; got shape {arr.shape}"
        )
    arr = arr.astype(dtype, copy=False)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has non-finite values at channels {_fmt_channels(bad)}")
    return arr


def _check_eps(eps: float) -> float:
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a positive number, got {eps!r}") from None
    if not (eps > 0 and np.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number (it keeps sqrt(var + eps) > 0), got {eps!r}")
    return eps


def _fmt_channels(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    more = f" and {idx.size - limit} more" if idx.size > limit else ""
    return f"[{shown}]{more}"


def _raise_non_finite(x: np.ndarray, lay: _Layout, bad: np.ndarray, what: str) -> None:
    """Explain non-finite statistics: non-finite inputs on those channels, or overflow."""
    x3 = x.reshape(lay.outer, lay.channels, lay.inner)
    has_bad_input = ~np.isfinite(x3[:, bad, :]).all(axis=(0, 2))
    if has_bad_input.any():
        raise ValueError(
            f"{what} has non-finite values (nan or inf) in channels {_fmt_channels(bad[has_bad_input])}; "
            "pass check_finite=False to let them propagate as the frameworks do"
        )
    raise ValueError(
        f"the statistics of channels {_fmt_channels(bad)} overflow in {x.dtype} although {what} is finite; "
        "rescale the input or compute in float64"
    )


# ----------------------------------------------------------------------------------------------------
# Forward (training mode)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNormCache:
    """What the training-mode forward pass keeps for the backward pass.

    Attributes
    ----------
    x : ndarray, shape like the input
        The input, in the compute dtype (float32 for float16 inputs).
    x_hat : ndarray, shape like the input
        The normalised input, eq. ``eq-x-hat``: ``(centred - mean_shift) * inv_std``, computed on first
        access and then kept. The forward and compact backward passes work from ``centred`` directly,
        which saves two passes over the data.
    centred : ndarray, shape like the input
        ``x - mu0``, the input minus the provisional mean of the two-pass algorithm (C-contiguous).
    mean_shift : ndarray, shape (C,)
        ``mean - mu0``, the correction of the provisional mean (rounding-error sized).
    mean : ndarray, shape (C,)
        Batch mean per channel, eq. ``eq-batch-mean``.
    var : ndarray, shape (C,)
        Biased batch variance per channel (divisor m), eq. ``eq-batch-var``.
    inv_std : ndarray, shape (C,)
        ``1 / sqrt(var + eps)``.
    gamma : ndarray, shape (C,)
        The scale used.
    eps : float
    axis : int
        The channel axis, normalised to ``0 <= axis < x.ndim``.
    m : int
        Number of values per channel in the batch.
    """

    x: np.ndarray
    centred: np.ndarray
    mean_shift: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    eps: float
    axis: int
    m: int

    @functools.cached_property
    def x_hat(self) -> np.ndarray:
        """The normalised input ``(x - mean) / sqrt(var + eps)``, eq. ``eq-x-hat``."""
        lay = self.layout
        x_hat = lay.rows(self.centred) - lay.per_channel(self.mean_shift)
        x_hat *= lay.per_channel(self.inv_std)
        return x_hat.reshape(lay.shape)

    @property
    def layout(self) -> _Layout:
        return _layout(self.x.shape, self.axis)

    @property
    def unbiased_var(self) -> np.ndarray:
        """``m / (m - 1) * var``, the variance PyTorch feeds its running estimate."""
        return self.var * (self.m / (self.m - 1))


def _two_pass_stats(
    xw: np.ndarray, lay: _Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, biased variance and the centred input, by the corrected two-pass algorithm.

    Pass 1 gives a provisional mean ``mu0``. Pass 2 centres, ``d = x - mu0``, and uses
    ``var = mean(d^2) - mean(d)^2`` (Chan, Golub & LeVeque 1983): the correction term removes the
    first-order effect of rounding error in ``mu0``. Unlike the one-pass ``E[x^2] - E[x]^2``, no large
    numbers are subtracted, so float32 keeps its precision even when ``|mean| >> std``.
    ``xw`` must be C-contiguous. Returns ``(mean, var, d, d_mean)`` with ``d = x - mu0`` a new
    C-contiguous array and ``d_mean = mean - mu0``; the caller folds ``d_mean`` into per-channel constants
    instead of spending a pass over the data on ``d - d_mean``.
    """
    m = lay.m
    mu0 = _channel_sum(xw, lay) / m
    centred = lay.rows(xw) - lay.per_channel(mu0)
    d_mean = _channel_sum(centred, lay) / m
    var = _channel_sum_of_products(centred, centred, lay) / m - d_mean * d_mean
    np.maximum(var, 0, out=var)  # rounding can push a zero variance just below 0
    return mu0 + d_mean, var, centred.reshape(lay.shape), d_mean


@_quiet_non_finite
def batch_mean_var(
    x: np.ndarray,
    axis: int = 1,
    method: Literal["two-pass", "one-pass"] = "two-pass",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel batch mean and biased variance, eqs. ``eq-batch-mean`` and ``eq-batch-var``.

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L), (N, C, H, W), (N, H, W, C), ...
        Real floating-point input; float16 is computed in float32.
    axis : int
        The channel axis; every other axis is reduced.
    method : {"two-pass", "one-pass"}
        ``"two-pass"`` (default) is numerically stable. ``"one-pass"`` computes ``E[x^2] - E[x]^2`` in the
        input's precision; it is here only to show, in the book and a test, how it loses every digit
        when ``|mean| >> std``.

    Returns
    -------
    mean, var : ndarray, shape (C,)
    """
    x = _as_float_array(x, "x")
    lay = _layout(x.shape, axis)
    if lay.m < 1:
        raise ValueError(f"x with shape {x.shape} has no values per channel")
    xw = np.ascontiguousarray(x, dtype=_compute_dtype(x.dtype))
    if method == "two-pass":
        mean, var, _, _ = _two_pass_stats(xw, lay)
        return mean, var
    if method == "one-pass":
        mean = _channel_sum(xw, lay) / lay.m
        mean_sq = _channel_sum_of_products(xw, xw, lay) / lay.m
        return mean, mean_sq - mean * mean
    raise ValueError(f"method must be 'two-pass' or 'one-pass', got {method!r}")


@_quiet_non_finite
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

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, with the mean and the biased variance taken per
    channel over every axis but ``axis``.

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
        The batch mean, biased variance, ``inv_std``, ``x_hat`` and what ``batch_norm_backward`` needs.
    """
    x = _as_float_array(x, "x")
    lay = _layout(x.shape, axis)
    if lay.m < 2:
        raise ValueError(
            f"training-mode batch norm needs at least 2 values per channel to estimate a variance; "
            f"x with shape {x.shape} has {lay.m} per channel (axis {lay.axis}). "
            "Use a larger batch, or batch_norm_inference with running statistics."
        )
    cdtype = _compute_dtype(x.dtype)
    gamma = _channel_param(gamma, "gamma", lay, cdtype)
    beta = _channel_param(beta, "beta", lay, cdtype)
    eps = _check_eps(eps)
    xw = np.ascontiguousarray(x, dtype=cdtype)  # a copy only for float16 or a non-contiguous x

    mean, var, centred, d_mean = _two_pass_stats(xw, lay)
    if check_finite:
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)))
        if bad.size:
            _raise_non_finite(xw, lay, bad, "x")
    inv_std = 1.0 / np.sqrt(var + eps)

    # y = gamma * x_hat + beta with x_hat = (centred - d_mean) * inv_std, as one scale and one shift per
    # channel: y = centred * scale + shift, two passes over the data instead of four.
    scale = gamma * inv_std
    y = lay.rows(centred) * lay.per_channel(scale)
    y += lay.per_channel(beta - d_mean * scale)
    y = y.reshape(lay.shape)
    cache = BatchNormCache(
        x=xw, centred=centred, mean_shift=d_mean, mean=mean, var=var, inv_std=inv_std, gamma=gamma, eps=eps,
        axis=lay.axis, m=lay.m,
    )
    return y.astype(x.dtype, copy=False), cache


# ----------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------


def _check_dy(dy: np.ndarray, cache: BatchNormCache) -> np.ndarray:
    if not isinstance(cache, BatchNormCache):
        raise ValueError(f"cache must be the BatchNormCache returned by batch_norm_forward, got {type(cache).__name__}")
    dy = _as_float_array(dy, "dy")
    if dy.shape != cache.centred.shape:
        raise ValueError(f"dy must have the forward input's shape {cache.centred.shape}; got {dy.shape}")
    return np.ascontiguousarray(dy, dtype=cache.centred.dtype)


def _check_grads_finite(dy: np.ndarray, lay: _Layout, dbeta: np.ndarray, dgamma: np.ndarray) -> None:
    bad = np.flatnonzero(~(np.isfinite(dbeta) & np.isfinite(dgamma)))
    if bad.size:
        _raise_non_finite(dy, lay, bad, "dy")


@_quiet_non_finite
def batch_norm_backward(
    dy: np.ndarray, cache: BatchNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of training-mode Batch Normalization, compact closed form.

    ``dbeta = sum(dy)`` (eq-dbeta), ``dgamma = sum(dy * x_hat)`` (eq-dgamma), and (eq-dx-compact)::

        dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)

    where every sum runs over the m values of a channel.

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
    dx : ndarray, same shape as dy, in the compute dtype
    dgamma, dbeta : ndarray, shape (C,)
    """
    dy = _check_dy(dy, cache)
    lay = cache.layout
    m = cache.m
    # Written with centred = x - mu0 and d = mean - mu0, so that x_hat = (centred - d) * inv_std
    # never has to be formed: sum(dy * x_hat) = inv_std * (sum(dy * centred) - d * dbeta), and
    # x_hat * dgamma / m = centred * a - d * a with a = inv_std * dgamma / m.
    dbeta = _channel_sum(dy, lay)
    d = cache.mean_shift
    dgamma = cache.inv_std * (_channel_sum_of_products(dy, cache.centred, lay) - d * dbeta)
    if check_finite:
        _check_grads_finite(dy, lay, dbeta, dgamma)
    a = cache.inv_std * dgamma / m
    dx = lay.rows(cache.centred) * lay.per_channel(a)  # x_hat * dgamma / m, up to the per-channel d * a
    np.subtract(lay.rows(dy), dx, out=dx)
    dx -= lay.per_channel(dbeta / m - d * a)
    dx *= lay.per_channel(cache.gamma * cache.inv_std)
    return dx.reshape(lay.shape), dgamma, dbeta


@_quiet_non_finite
def batch_norm_backward_staged(
    dy: np.ndarray, cache: BatchNormCache, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients by the chain rule, node by node through the computational graph (book, "The backward pass").

    Forward graph, per channel::

        mu = mean(x)                     (eq-batch-mean)
        xc = x - mu
        var = mean(xc ** 2)              (eq-batch-var)
        inv_std = (var + eps) ** -0.5
        x_hat = xc * inv_std             (eq-x-hat)
        y = gamma * x_hat + beta         (eq-scale-shift)

    Each step below is one local derivative, visited in reverse order. The result equals
    ``batch_norm_backward`` up to rounding; the book derives one from the other.

    Parameters and returns as in ``batch_norm_backward``.
    """
    dy = _check_dy(dy, cache)
    lay = cache.layout
    m = cache.m
    b = lay.bshape
    xc = cache.x - cache.mean.reshape(b)

    # y = gamma * x_hat + beta
    dbeta = _channel_sum(dy, lay)
    dgamma = _channel_sum(dy * cache.x_hat, lay)
    if check_finite:
        _check_grads_finite(dy, lay, dbeta, dgamma)
    dx_hat = dy * cache.gamma.reshape(b)
    # x_hat = xc * inv_std: two parents, xc (elementwise) and inv_std (one per channel)
    dxc = dx_hat * cache.inv_std.reshape(b)
    dinv_std = _channel_sum(dx_hat * xc, lay)
    # inv_std = (var + eps) ** -1/2
    dvar = dinv_std * (-0.5) * cache.inv_std**3
    # var = (1/m) sum xc ** 2: adds a second path into xc
    dxc = dxc + (2.0 / m) * xc * dvar.reshape(b)
    # xc = x - mu: x directly, and through mu
    dmu = -_channel_sum(dxc, lay)
    # mu = (1/m) sum x
    dx = dxc + (dmu / m).reshape(b)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------


def _running_params(
    running_mean: np.ndarray, running_var: np.ndarray, lay: _Layout, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    running_mean = _channel_param(running_mean, "running_mean", lay, dtype)
    running_var = _channel_param(running_var, "running_var", lay, dtype)
    neg = np.flatnonzero(running_var < 0)
    if neg.size:
        raise ValueError(f"running_var must be >= 0; it is negative at channels {_fmt_channels(neg)}")
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
    ``shift = beta - running_mean * scale``.

    Parameters
    ----------
    gamma, beta, running_mean, running_var : array_like, shape (C,)
    eps : float

    Returns
    -------
    scale, shift : ndarray, shape (C,), float64 unless all inputs are float32
    """
    g = np.asarray(gamma)
    if g.ndim != 1:
        raise ValueError(f"gamma must be a vector of shape (C,), got shape {g.shape}")
    lay = _layout((1, g.shape[0]), 1)
    dtype = np.result_type(*(np.asarray(a).dtype for a in (gamma, beta, running_mean, running_var)), np.float32)
    gamma = _channel_param(gamma, "gamma", lay, dtype)
    beta = _channel_param(beta, "beta", lay, dtype)
    running_mean, running_var = _running_params(running_mean, running_var, lay, dtype)
    scale = gamma / np.sqrt(running_var + _check_eps(eps))
    return scale, beta - running_mean * scale


@_quiet_non_finite
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
    x = _as_float_array(x, "x")
    lay = _layout(x.shape, axis)
    cdtype = _compute_dtype(x.dtype)
    gamma = _channel_param(gamma, "gamma", lay, cdtype)
    beta = _channel_param(beta, "beta", lay, cdtype)
    running_mean, running_var = _running_params(running_mean, running_var, lay, cdtype)
    eps = _check_eps(eps)
    xw = x.astype(cdtype, copy=False)
    if check_finite and not np.isfinite(xw).all():
        bad = np.flatnonzero(~np.isfinite(xw.reshape(lay.outer, lay.channels, lay.inner)).all(axis=(0, 2)))
        _raise_non_finite(xw, lay, bad, "x")
    b = lay.bshape
    y = xw - running_mean.reshape(b)
    y *= (gamma / np.sqrt(running_var + eps)).reshape(b)
    y += beta.reshape(b)
    return y.astype(x.dtype, copy=False)


def fold_into_preceding(
    weight: np.ndarray,
    bias: np.ndarray | None,
    scale: np.ndarray,
    shift: np.ndarray,
    out_axis: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference BN (``y = scale * z + shift``) into the linear layer that produces ``z``.

    For ``z = x @ W + b`` followed by BN, ``y = x @ (W * scale) + (b * scale + shift)`` (eq-fold).
    The same holds for a convolution, whose output channels are one axis of its kernel.

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
    weight = np.asarray(weight)
    if not -weight.ndim <= out_axis < weight.ndim:
        raise ValueError(f"out_axis {out_axis} is out of range for a weight of shape {weight.shape}")
    c = weight.shape[out_axis]
    scale, shift = np.asarray(scale), np.asarray(shift)
    if scale.shape != (c,) or shift.shape != (c,):
        raise ValueError(
            f"scale and shift must have shape ({c},) to match axis {out_axis} of the weight {weight.shape}; "
            f"got {scale.shape} and {shift.shape}"
        )
    bias = np.zeros(c, dtype=scale.dtype) if bias is None else np.asarray(bias)
    if bias.shape != (c,):
        raise ValueError(f"bias must have shape ({c},), got {bias.shape}")
    bshape = [1] * weight.ndim
    bshape[out_axis] = c
    return weight * scale.reshape(bshape), bias * scale + shift


# ----------------------------------------------------------------------------------------------------
# Running statistics
# ----------------------------------------------------------------------------------------------------


def running_update(running: np.ndarray, batch_value: np.ndarray, weight: float) -> np.ndarray:
    """The one running-average rule all conventions share, eq. ``eq-running-update``.

    ``r_new = (1 - w) * r + w * b``; ``w`` comes from ``Convention.new_value_weight(step)``.
    """
    running = np.asarray(running)
    batch_value = np.asarray(batch_value)
    if running.shape != batch_value.shape:
        raise ValueError(
            f"running value and batch value must have the same shape; got {running.shape} and {batch_value.shape}"
        )
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the weight of the new value must lie in [0, 1], got {weight}")
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

    Parameters
    ----------
    running_mean, running_var : ndarray, shape (C,)
        The estimates before this batch.
    batch_mean, batch_var : ndarray, shape (C,)
        The batch mean and the *biased* batch variance (``cache.mean``, ``cache.var``).
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
    if conv.running_var == "unbiased":
        if m < 2:
            raise ValueError(f"the unbiased variance needs at least 2 values per channel, got m={m}")
        batch_var = np.asarray(batch_var) * (m / (m - 1))
    w = conv.new_value_weight(step)
    return running_update(running_mean, batch_mean, w), running_update(running_var, batch_var, w)


class RunningStats:
    """Running mean and variance under one convention, updated from forward caches.

    Parameters
    ----------
    channels : int
    convention : Convention or name
    dtype : numpy dtype of the estimates (float64 by default)

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
        self.convention = get_convention(convention)
        self.mean = np.full(channels, self.convention.init_mean, dtype=dtype)
        self.var = np.full(channels, self.convention.init_var, dtype=dtype)
        self.num_batches_tracked = 0

    def update(self, cache: BatchNormCache) -> None:
        """Fold one training batch's statistics into the running estimates."""
        if cache.mean.shape != self.mean.shape:
            raise ValueError(f"cache has {cache.mean.shape[0]} channels, these statistics have {self.mean.shape[0]}")
        self.num_batches_tracked += 1
        mean, var = update_running_stats(
            self.mean, self.var, cache.mean, cache.var, cache.m, self.num_batches_tracked, self.convention
        )
        self.mean = mean.astype(self.mean.dtype, copy=False)
        self.var = var.astype(self.var.dtype, copy=False)

    def __repr__(self) -> str:
        return (
            f"RunningStats(convention={self.convention.name!r}, channels={self.mean.shape[0]}, "
            f"num_batches_tracked={self.num_batches_tracked})"
        )
