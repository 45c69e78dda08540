"""How far apart two floating-point results may be: the error model behind every check in this project.

Every tolerance in ``bnref``'s tests and in the book's chapters comes from this module, and every formula
here is derived in the book's appendix "How the checks are bounded" (``book/bounds.ipynb``, label
``ch-bounds``); the equation labels below (``eq-bound-...``) are that chapter's. NumPy only.

The model in one line. A result computed in a floating-point type whose machine epsilon is ``eps``, by a
reduction over ``m`` values, differs from the exact result by at most::

    e * S,      e = C * eps * (1 + sqrt(m)),   C = 4                                      (eq-bound-unit)

where ``S`` is the *condition scale*: the sum of the absolute values the result is computed from (for a
well-conditioned result ``S`` is the size of the result itself; for a result that cancels, ``S`` is larger
by the condition number). ``sqrt(m)`` is the probabilistic growth of rounding error in a sum of ``m`` terms
(Higham and Mary 2019): with independent, mean-zero rounding errors, the error of a sum exceeds
``lambda * sqrt(m) * u * sum|a_i|`` (``u = eps / 2``) only with probability about ``2 m exp(-lambda^2 / 2)``;
``C = 4`` is ``lambda = 8``, a probability below 1e-10 for ``m = 2048``. The worst case ``m * u`` (Higham
2002, section 4.2) is never approached by real data. The ``1 +`` covers the few elementwise roundings.

Public API
----------
``check_close(actual, expected, dtype=..., m=..., cond=..., what=...) -> Comparison``
    The one helper chapters and tests call: a max-norm relative comparison against
    ``C eps (1 + sqrt(m)) cond`` (plus the output rounding of half precision), printed as one line.
``machine_eps``, ``unit_roundoff``, ``compute_dtype``, ``reduction_error``, ``BOUND_C``
    The ingredients.
``channel_summaries``, ``training_bounds``, ``running_mean_bound``, ``running_var_bound``, ``inference_bound``
    The per-quantity bounds of one Batch Normalization layer (``bnref.check.agreement`` applies them to every
    implementation).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import validation as v

__all__ = [
    "BOUND_C",
    "DTYPES",
    "Comparison",
    "check_close",
    "machine_eps",
    "unit_roundoff",
    "compute_dtype",
    "reduction_error",
    "ChannelSummaries",
    "channel_summaries",
    "training_bounds",
    "running_mean_bound",
    "running_var_bound",
    "inference_bound",
]

#: The constant C of eq-bound-unit: lambda = 2 C = 8 standard deviations in units of u = eps / 2.
BOUND_C = 4.0

#: The floating-point types the model knows.
DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")

_HALF = ("float16", "bfloat16")


def _dtype_name(dtype: object) -> str:
    """Accept "float32", np.float32, np.dtype("float32"), or a framework dtype whose name is in its str."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = ""
    if name not in DTYPES:
        found = re.search(r"bfloat16|float16|float32|float64", str(dtype))
        name = found.group(0) if found else ""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return name


def machine_eps(dtype: object) -> float:
    """Machine epsilon, the gap between 1 and the next float: 2^-52, 2^-23, 2^-10, 2^-7.

    For float64, float32, float16 and bfloat16 (8 significant bits) respectively (appendix, eq-bound-eps).
    """
    name = _dtype_name(dtype)
    if name == "bfloat16":
        return 2.0**-7
    return float(np.finfo(name).eps)


def unit_roundoff(dtype: object) -> float:
    """Unit roundoff u = eps / 2: the largest relative error of rounding one real number to nearest."""
    return machine_eps(dtype) / 2


def compute_dtype(dtype: object) -> str:
    """The type a BN layer computes its statistics in: float32 for half-precision input, else the input's."""
    name = _dtype_name(dtype)
    return "float32" if name in _HALF else name


def reduction_error(dtype: object, m: int) -> float:
    """``e = C eps (1 + sqrt(m))`` (eq-bound-unit), with ``eps`` of the compute dtype (float32 for halves).

    Multiply by a condition scale (the sum of absolute values a result is computed from) to get an
    absolute bound.
    """
    m = v.check_int(m, "m, the reduction length,", minimum=1)
    return BOUND_C * machine_eps(compute_dtype(dtype)) * (1.0 + math.sqrt(m))


# ----------------------------------------------------------------------------------------------------
# The helper for chapters and tests
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The result of ``check_close``.

    Attributes
    ----------
    what : str
        Name of the compared quantity, used in the printed line.
    max_abs : float
        ``max |actual - expected|``.
    max_rel : float
        ``max_abs / max |expected|`` (max-norm relative error; ``inf`` if ``expected`` is all zero and the
        arrays differ, ``nan`` if ``actual`` holds NaN).
    bound : float
        The relative bound ``C eps_c (1 + sqrt(m)) cond + eps_out`` (``eps_out``: the rounding of a
        half-precision result, 0 otherwise).
    dtype : str
    m : int
    cond : float
    """

    what: str
    max_abs: float
    max_rel: float
    bound: float
    dtype: str
    m: int
    cond: float

    @property
    def ratio(self) -> float:
        """``max_rel / bound``; the comparison passes when it is at most 1."""
        return self.max_rel / self.bound

    @property
    def passed(self) -> bool:
        return bool(self.ratio <= 1.0)  # False for NaN

    def _setting(self) -> str:
        cond = f", cond={self.cond:.3g}" if self.cond != 1.0 else ""
        return f"({self.dtype}, m={self.m}{cond})"

    @property
    def verdict(self) -> str:
        """The line without the measured error: the same on every CPU (what notebooks print)."""
        return f"{self.what}: max rel err <= bound {self.bound:.1e} {self._setting()}: {self.passed}"

    def __str__(self) -> str:
        return f"{self.what}: max rel err {self.max_rel:.1e} <= bound {self.bound:.1e} {self._setting()}: {self.passed}"

    def __bool__(self) -> bool:
        return self.passed


def check_close(
    actual: object,
    expected: object,
    *,
    dtype: object,
    m: int,
    cond: float = 1.0,
    what: str = "value",
    show: Literal["verdict", "full", "none"] = "verdict",
) -> Comparison:
    """Compare ``actual`` with a more precise ``expected`` against a bound derived from the arithmetic.

    The bound on the max-norm relative error ``max|actual - expected| / max|expected|`` is::

        C * eps_c * (1 + sqrt(m)) * cond  +  eps_out                                       (eq-bound-check)

    with ``eps_c`` the machine epsilon of the compute dtype (float32 for float16/bfloat16), ``eps_out`` the
    rounding of a half-precision result (its machine epsilon; 0 for float32/float64) and ``C = 4``; the
    derivation is in the book's appendix ``ch-bounds``.

    Parameters
    ----------
    actual : array_like
        The result under test (any float dtype; it is compared in float64).
    expected : array_like
        The reference, computed more precisely (float64 or exactly); same shape as ``actual``.
    dtype : str or dtype
        The floating-point type ``actual`` was computed in: float64, float32, float16 or bfloat16.
    m : int
        The reduction length: the number of terms in the longest sum behind one entry of ``actual`` (for a
        BN layer, the values per channel). 1 for an elementwise computation.
    cond : float, >= 1
        The condition factor: (sum of the absolute values the result is computed from) / (size of the
        result). 1 for a well-conditioned result; for BN in float32 ``1 + |mean|/std`` (appendix,
        eq-bound-y).
    what : str
        Name printed in the verdict.
    show : {"verdict", "full", "none"}
        Print ``Comparison.verdict`` (the same text on every CPU), ``str(Comparison)`` (with the measured
        error) or nothing.

    Returns
    -------
    Comparison
        ``.passed``, ``.ratio``, ``.bound``, ``.max_rel``; ``str()`` gives the one-line verdict with the
        error, e.g. ``"dx: max rel err 3.1e-07 <= bound 2.4e-06 (float32, m=128): True"``.

    Raises
    ------
    ValueError
        On different shapes, an unknown dtype, ``m < 1``, ``cond < 1`` or non-finite ``cond``, a non-finite
        ``expected``, or an unknown ``show``.
    TypeError
        On ``m`` not an integer, ``cond`` not a number, or a masked array.
    """
    name = _dtype_name(dtype)
    m = v.check_int(m, "m, the reduction length,", minimum=1)
    cond = v.check_real(cond, "cond, the condition factor,")
    if not (math.isfinite(cond) and cond >= 1.0):
        raise ValueError(f"cond, the condition factor, must be finite and >= 1; got {cond!r}")
    v.check_choice(show, "show", ("verdict", "full", "none"))
    a = np.asarray(v.as_array(actual, "actual"), dtype=np.float64)
    b = np.asarray(v.as_array(expected, "expected"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ: actual {a.shape}, expected {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{what}: the expected values must be finite")
    if a.size == 0:
        max_abs = 0.0
    elif np.any(np.isnan(a)):
        max_abs = math.nan
    else:
        max_abs = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    if scale > 0:
        max_rel = max_abs / scale
    else:
        max_rel = 0.0 if max_abs == 0 else (math.nan if math.isnan(max_abs) else math.inf)
    eps_out = machine_eps(name) if name in _HALF else 0.0
    bound = reduction_error(name, m) * float(cond) + eps_out
    result = Comparison(what, max_abs, max_rel, bound, name, m, float(cond))
    if show == "verdict":
        print(result.verdict)
    elif show == "full":
        print(result)
    return result


# ----------------------------------------------------------------------------------------------------
# The bounds of one Batch Normalization layer (appendix sections "The training step", "Running statistics",
# "Inference"). Arrays are channel-last and 2-D: (m, C), one column per channel; results are per channel.
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSummaries:
    """Per-channel quantities (shape (C,)) that the BN bounds are written in.

    Attributes
    ----------
    m : int
        Values per channel.
    sigma : ndarray
        ``sqrt(var + eps)``.
    r : ndarray
        ``|mean| / sigma``, the conditioning of the channel (how far it sits from zero).
    x_max : ndarray
        ``X = max |x_hat|``.
    dy_max : ndarray
        ``max |dy|``.
    dy_sum : ndarray
        ``sum |dy|``.
    dy_xhat_sum : ndarray
        ``sum |dy| (|x_hat| + r)``.
    """

    m: int
    sigma: np.ndarray
    r: np.ndarray
    x_max: np.ndarray
    dy_max: np.ndarray
    dy_sum: np.ndarray
    dy_xhat_sum: np.ndarray


def channel_summaries(
    x_hat: np.ndarray, dy: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> ChannelSummaries:
    """Summaries of one training step, from exact (float64) ``x_hat`` and ``dy`` of shape (m, C)."""
    x_hat, dy = np.asarray(x_hat, np.float64), np.asarray(dy, np.float64)
    if x_hat.ndim != 2 or x_hat.shape != dy.shape:
        raise ValueError(f"x_hat and dy must be 2-D (m, C) of one shape; got {x_hat.shape} and {dy.shape}")
    sigma = np.sqrt(np.asarray(var, np.float64) + eps)
    r = np.abs(np.asarray(mean, np.float64)) / sigma
    abs_xhat = np.abs(x_hat)
    abs_dy = np.abs(dy)
    return ChannelSummaries(
        m=x_hat.shape[0],
        sigma=sigma,
        r=r,
        x_max=abs_xhat.max(axis=0),
        dy_max=abs_dy.max(axis=0),
        dy_sum=abs_dy.sum(axis=0),
        dy_xhat_sum=(abs_dy * (abs_xhat + r)).sum(axis=0),
    )


def training_bounds(
    s: ChannelSummaries, gamma: np.ndarray, beta: np.ndarray, dgamma: np.ndarray, dtype: object
) -> dict[str, np.ndarray]:
    """Absolute error bounds per channel on ``y``, ``dx``, ``dgamma``, ``dbeta`` of one training step.

    With ``e = reduction_error(dtype, m)`` (appendix, eq-bound-y, eq-bound-dbeta, eq-bound-dgamma,
    eq-bound-dx)::

        y       e (|gamma| (r + X) + |beta|)
        dbeta   e sum|dy|
        dgamma  e sum|dy| (|x_hat| + r)
        dx      e |gamma| / sigma (max|dy| + (sum|dy| + (r + X) |dgamma| + X sum|dy| (|x_hat| + r)) / m)

    ``dgamma`` is the exact parameter gradient (it enters the condition scale of ``dx``). The rounding of
    an output returned in half precision is not included (add ``machine_eps(dtype) * max|y|``).
    """
    e = reduction_error(dtype, s.m)
    g, b = np.abs(np.asarray(gamma, np.float64)), np.abs(np.asarray(beta, np.float64))
    r, big_x = s.r, s.x_max
    dx_scale = g / s.sigma * (s.dy_max + (s.dy_sum + (r + big_x) * np.abs(dgamma) + big_x * s.dy_xhat_sum) / s.m)
    return {
        "y": e * (g * (r + big_x) + b),
        "dx": e * dx_scale,
        "dgamma": e * s.dy_xhat_sum,
        "dbeta": e * s.dy_sum,
    }


def running_mean_bound(
    previous: np.ndarray, w: float, s: ChannelSummaries, mean: np.ndarray, running_mean: np.ndarray, dtype: object
) -> np.ndarray:
    """Bound on the running mean after one update ``r = (1 - w) r + w mean`` (appendix, eq-bound-running).

    ``B_k = (1 - w) B_{k-1} + w e (|mean| + sigma X) + C eps_c |r_k|``: the previous bound decays, the
    batch mean's error enters with weight ``w``, and the update itself rounds a few times.
    """
    e = reduction_error(dtype, s.m)
    eps_c = machine_eps(compute_dtype(dtype))
    err_mean = e * (np.abs(mean) + s.sigma * s.x_max)
    return (1 - w) * previous + w * err_mean + BOUND_C * eps_c * np.abs(running_mean)


def running_var_bound(
    previous: np.ndarray,
    w: float,
    s: ChannelSummaries,
    mean: np.ndarray,
    var: np.ndarray,
    running_var: np.ndarray,
    dtype: object,
    unbiased: bool,
) -> np.ndarray:
    """Bound on the running variance after one update with weight ``w`` (appendix, eq-bound-running).

    ``B_k = (1 - w) B_{k-1} + w f (e var + (e (|mean| + sigma X))^2) + C eps_c |r_k|`` with
    ``f = m/(m-1)`` if the variance fed is unbiased, else 1. The squared term is a two-pass variance's only
    sensitivity to ``|mean|`` (appendix, eq-bound-two-pass).
    """
    e = reduction_error(dtype, s.m)
    eps_c = machine_eps(compute_dtype(dtype))
    f = s.m / (s.m - 1) if unbiased else 1.0
    err_mean = e * (np.abs(mean) + s.sigma * s.x_max)
    return (1 - w) * previous + w * f * (e * var + err_mean**2) + BOUND_C * eps_c * np.abs(running_var)


def inference_bound(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
    mean_bound: np.ndarray,
    var_bound: np.ndarray,
    dtype: object,
) -> np.ndarray:
    """Bound per channel on the inference output ``gamma (x - r_mean) / sqrt(r_var + eps) + beta``.

    ``x`` has shape (n, C). The elementwise roundings, ``C eps_c (|gamma| (max|x| + |r_mean|) / sigma_r +
    |beta|)``, plus the running statistics' bounds carried through, ``|gamma| B_mean / sigma_r + |gamma| X_r
    B_var / (2 sigma_r^2)`` (``sigma_r = sqrt(r_var + eps)``, ``X_r = max|x - r_mean| / sigma_r``), appendix
    eq-bound-inference. The rounding of a half-precision output is not included.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, C); got shape {x.shape}")
    eps_c = machine_eps(compute_dtype(dtype))
    g, b = np.abs(np.asarray(gamma, np.float64)), np.abs(np.asarray(beta, np.float64))
    sigma_r = np.sqrt(running_var + eps)
    x_r = np.abs(x - running_mean).max(axis=0) / sigma_r
    ops = BOUND_C * eps_c * (g * (np.abs(x).max(axis=0) + np.abs(running_mean)) / sigma_r + b)
    carried = g * mean_bound / sigma_r + g * x_r * var_bound / (2 * sigma_r**2)
    return ops + carried
