"""Central finite differences in float64: the independent check of every derived gradient.

For a function ``f`` of several arrays and an upstream gradient ``dy`` of the output's shape, the scalar
``L = sum(f(*inputs) * dy)`` has ``dL/d input`` equal to the vector-Jacobian product that a backward pass
returns. Each entry is estimated by the central difference::

    dL/dx_i ~ (L(x_i + h_i) - L(x_i - h_i)) / (2 h_i),    h_i = h * max(1, |x_i|)

whose truncation error is O(h^2) and whose rounding error is O(eps64 * |L| / h): with h = 1e-5 both are
around 1e-10 relative, far below the 1e-8 the tests demand, *for inputs of order 1 on which f curves on a
scale of order 1*.

The step is relative to each entry's size, not to the scale on which ``f`` bends. Batch Normalization bends
on the scale ``sqrt(var + eps)`` of each channel, so for a channel with a small spread, or one sitting far
from zero (``|mean| >> std``), the step is large on that scale and the truncation error grows like
``(h * max(1, |x|) / sqrt(var + eps))^2``. Check such inputs in standardised coordinates (differentiate
with respect to ``u`` where ``x = mean + std * u``; the gradient in ``x`` is the gradient in ``u`` divided
by ``std``), or pass a smaller ``h``; ``tests/test_reference.py`` does the former.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import validation as v

__all__ = ["numerical_gradients", "relative_error", "gradcheck"]


def _as_float64(a: object, name: str) -> np.ndarray:
    arr = v.as_float_array(a, name)
    if arr.dtype != np.float64:
        raise ValueError(
            f"{name} must be float64 for a finite-difference check (float32 rounding would swamp the "
            f"O(h^2) truncation error); got {arr.dtype}"
        )
    return arr


def numerical_gradients(
    f: Callable[..., np.ndarray],
    inputs: Sequence[np.ndarray],
    dy: np.ndarray,
    h: float = 1e-5,
) -> list[np.ndarray]:
    """Central-difference gradients of ``sum(f(*inputs) * dy)`` with respect to each input, eq. ``eq-bw-central``.

    Parameters
    ----------
    f : callable
        ``f(*inputs) -> ndarray`` of the same shape as ``dy``. Called ``2 * total input size`` times.
    inputs : sequence of float64 ndarrays
        Points at which to differentiate; they are not modified.
    dy : float64 ndarray
        Upstream gradient.
    h : float, > 0
        Relative step; the step for entry ``x_i`` is ``h * max(1, |x_i|)``.

    Returns
    -------
    list of ndarray, one gradient per input, each of that input's shape
    """
    if not callable(f):
        raise TypeError(f"f must be a function of the inputs; got {type(f).__name__}")
    h = v.check_positive(h, "h", "the relative step of the central difference")
    dy = _as_float64(dy, "dy")
    points = [_as_float64(x, f"inputs[{k}]").copy() for k, x in enumerate(inputs)]

    def loss() -> float:
        out = np.asarray(f(*points))
        if out.shape != dy.shape:
            raise ValueError(f"f returned shape {out.shape}, but dy has shape {dy.shape}")
        return float(np.sum(out * dy))

    grads = []
    for x in points:
        g = np.empty_like(x)
        flat, gflat = x.reshape(-1), g.reshape(-1)  # views: writing flat[i] moves the point
        for i in range(flat.size):
            orig = flat[i]
            step = h * max(1.0, abs(orig))
            flat[i] = orig + step
            up = loss()
            flat[i] = orig - step
            down = loss()
            flat[i] = orig
            gflat[i] = (up - down) / (2 * step)
        grads.append(g)
    return grads


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Max-norm relative error ``max|a - b| / max(max|a|, max|b|)``.

    Normalising by the largest entry (not entry by entry) keeps tiny entries, which carry only rounding
    noise, from dominating. Returns 0.0 when both are all zero.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    if scale == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / scale)


def gradcheck(
    f: Callable[..., np.ndarray],
    inputs: Sequence[np.ndarray],
    analytic: Sequence[np.ndarray],
    dy: np.ndarray,
    h: float = 1e-5,
) -> float:
    """Largest relative error between analytic gradients and central differences.

    Parameters
    ----------
    f : callable
        The forward function, ``f(*inputs) -> ndarray`` shaped like ``dy``.
    inputs : sequence of float64 ndarrays
    analytic : sequence of ndarrays
        The gradients to check, one per input, e.g. ``(dx, dgamma, dbeta)`` for ``(x, gamma, beta)``.
    dy : float64 ndarray
    h : float

    Returns
    -------
    float
        ``max_k relative_error(analytic[k], numeric[k])``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnref import batch_norm_forward, batch_norm_backward, gradcheck
    >>> rng = np.random.default_rng(0)
    >>> x, g, b, dy = rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=3), rng.normal(size=(4, 3))
    >>> _, cache = batch_norm_forward(x, g, b)
    >>> dx, dg, db = batch_norm_backward(dy, cache)
    >>> gradcheck(lambda x, g, b: batch_norm_forward(x, g, b)[0], [x, g, b], [dx, dg, db], dy) < 1e-8
    True
    """
    if len(inputs) != len(analytic):
        raise ValueError(f"got {len(inputs)} inputs but {len(analytic)} analytic gradients")
    numeric = numerical_gradients(f, inputs, dy, h)
    for k, (a, n) in enumerate(zip(analytic, numeric, strict=True)):
        if np.shape(a) != n.shape:
            raise ValueError(f"analytic gradient {k} has shape {np.shape(a)}, its input has {n.shape}")
    return max(relative_error(a, n) for a, n in zip(analytic, numeric, strict=True))
