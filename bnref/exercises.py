"""Checkers for the reader's own Batch Normalization: run it, compare it with the oracle, name the mistake.

Each checker calls the reader's function on fixed cases (dense (N, D); convolutional (N, C, H, W); a batch of
two; a channel with ``|mean| / std`` about 1e3; a channel whose variance is about ``eps``; float32 inputs, one
with ``eps = 1e-3`` to see that ``eps`` is passed through), compares every output with the oracle
(``bnref.reference``, ``bnref.normalization``) within a bound derived from the arithmetic (``bnref.testing``),
and, when an output is off, computes the known wrong variants on the same cases and names the one it matches,
with the equation and the function to revisit. Checkers: ``check_batch_norm_forward``,
``check_batch_norm_backward``, ``check_running_update`` (PyTorch's rule) and ``check_layer_norm_forward``;
each passes the arguments by position. A wrong answer never raises: it gives ``passed=False`` and a diagnosis,
as does a function that raises. The wrong type or number of outputs raises ``TypeError``, a wrong shape
``ValueError``.

Examples
--------
>>> import numpy as np
>>> from bnref.exercises import check_batch_norm_forward
>>> def my_batch_norm(x, gamma, beta, eps=1e-5):
...     axes = (0,) + tuple(range(2, x.ndim))           # every axis but the channels
...     shape = (1, -1) + (1,) * (x.ndim - 2)           # (1, C, 1, 1) for NCHW
...     mu = x.mean(axis=axes, keepdims=True)
...     var = x.var(axis=axes, ddof=1, keepdims=True)   # ddof=1: the unbiased variance
...     return gamma.reshape(shape) * (x - mu) / np.sqrt(var + eps) + beta.reshape(shape)
>>> result = check_batch_norm_forward(my_batch_norm)
>>> result.passed, result.mistake
(False, 'unbiased variance')
>>> print(result.diagnosis)  # doctest: +ELLIPSIS
The variance that normalises x is the unbiased one (divided by m - 1)...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .conventions import KERAS, PYTORCH
from .normalization import layer_norm_forward
from .reference import batch_mean_var, batch_norm_backward, batch_norm_forward, update_running_stats
from .testing import channel_summaries, running_mean_bound, running_var_bound, training_bounds

__all__ = [
    "CaseResult",
    "CheckResult",
    "OutputCheck",
    "check_batch_norm_backward",
    "check_batch_norm_forward",
    "check_layer_norm_forward",
    "check_running_update",
]


# Results --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputCheck:
    """One output of one case at its worst ``unit``, the channel (row, for LN) with the largest error / bound:
    ``rel_error`` is ``max |actual - expected|`` there, ``rel_bound`` its bound, both over ``max |expected|``."""

    output: str  # "y", "dx", "dgamma", "dbeta", "running_mean" or "running_var"
    rel_error: float
    rel_bound: float
    unit: int

    @property
    def passed(self) -> bool:
        return bool(self.rel_error <= self.rel_bound)  # False for NaN

    @property
    def ratio(self) -> float:
        return math.inf if math.isnan(self.rel_error) else self.rel_error / self.rel_bound


@dataclass(frozen=True)
class CaseResult:
    """The reader's function on one case (``x`` of ``shape``, ``dtype``), judged by the bound of ``judged_as`` (the
    less precise of the input's dtype and the outputs'); if it raised, no ``outputs`` and ``error`` "Type: message"."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    judged_as: str
    outputs: tuple[OutputCheck, ...]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outputs)

    @property
    def worst(self) -> OutputCheck | None:
        return max(self.outputs, key=lambda o: o.ratio) if self.outputs else None


@dataclass(frozen=True, repr=False)
class CheckResult:
    """What a checker found: ``passed`` (every output of every case within its bound); ``diagnosis`` in plain
    words (correct; the known mistake matched, with the equation and function to revisit; the exception; or the
    first failing case and its error); ``mistake``, the name of the mistake matched, else None; ``cases``."""

    exercise: str
    passed: bool
    diagnosis: str
    mistake: str | None
    cases: tuple[CaseResult, ...]
    unit: str = "channel"

    def report(self) -> str:
        """A few lines: the verdict, the cases passed and failed, the worst error and its bound, the diagnosis."""
        ok = [c.name for c in self.cases if c.passed]
        bad = [c.name for c in self.cases if not c.passed]
        lines = [f"{self.exercise}: {'PASSED' if self.passed else 'FAILED'} ({len(ok)} of {len(self.cases)} cases)"]
        lines += [f"  passed: {', '.join(ok)}"] if ok else []
        lines += [f"  failed: {', '.join(bad)}"] if bad else []
        case = max((c for c in self.cases if c.outputs), key=lambda c: c.worst.ratio, default=None)
        if case is not None:
            o = case.worst
            lines.append(
                f"  worst: '{case.name}' {o.output} ({self.unit} {o.unit}): relative error {o.rel_error:.1e}, "
                f"bound {o.rel_bound:.1e} ({case.judged_as})"
            )
        return "\n".join([*lines, f"  diagnosis: {self.diagnosis}"])

    __str__ = __repr__ = report


# Small helpers (the layout of BN: channels on axis 1) -----------------------------------------------------------------
def _axes_but_1(x: np.ndarray) -> tuple[int, ...]:
    """The axes a BN statistic reduces: every axis but the channel axis 1, e.g. (0, 2, 3) for NCHW."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A (C,) vector reshaped to broadcast against x: (1, C) or (1, C, 1, 1)."""
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def _channels_last(a: np.ndarray) -> np.ndarray:
    """Any BN output as a 2-D (values, C) array: one column per channel."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]) if a.ndim >= 2 else a.reshape(1, -1)


def _rows_as_columns(a: np.ndarray) -> np.ndarray:
    """A Layer Norm input or output (..., D) as (D, rows): one column per normalised row."""
    return a.reshape(-1, a.shape[-1]).T


def _standardise(x: np.ndarray, axes: tuple[int, ...], eps: float, ddof: int = 0) -> np.ndarray:
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, ddof=ddof, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


# The known mistakes, each a small literal function computing what the mistaken code computes (float64) ----------------
@dataclass(frozen=True)
class _Mistake:
    name: str
    words: str  # the mistake in plain words: the docstring of compute
    revisit: str  # the equations and the function that implements them right
    compute: Callable[..., tuple[np.ndarray, ...]]


def _catalogue(see: str, *entries: tuple[str, Callable, str]) -> tuple[_Mistake, ...]:
    return tuple(_Mistake(name, " ".join((f.__doc__ or name).split()), f"{eqs}, {see}", f) for name, f, eqs in entries)


def _bn_unbiased(x, gamma, beta, eps):
    """The variance that normalises x is the unbiased one (divided by m - 1). In training, BN divides the sum
    of squared deviations by m, the number of values per channel (the biased variance)."""
    x_hat = _standardise(x, _axes_but_1(x), eps, ddof=1)  # the mistake: divisor m - 1
    return (_per_channel(gamma, x) * x_hat + _per_channel(beta, x),)


def _bn_eps_outside(x, gamma, beta, eps):
    """eps is added outside the square root, (x - mu) / (sqrt(var) + eps); it belongs inside,
    (x - mu) / sqrt(var + eps). The two differ most where the variance is comparable to eps."""
    axes = _axes_but_1(x)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + eps)  # sqrt(var) + eps
    return (_per_channel(gamma, x) * x_hat + _per_channel(beta, x),)


def _bn_per_pixel(x, gamma, beta, eps):
    """The mean and variance are taken over axis 0 only, one per pixel (c, h, w). BN takes one mean and one
    variance per channel, over the batch and every spatial position: axes (0, 2, 3) for NCHW."""
    x_hat = _standardise(x, (0,), eps)  # the mistake: axis 0 only
    return (_per_channel(gamma, x) * x_hat + _per_channel(beta, x),)


def _bn_no_gamma(x, gamma, beta, eps):
    """The scale gamma is missing: the output is x_hat + beta instead of gamma * x_hat + beta."""
    return (_standardise(x, _axes_but_1(x), eps) + _per_channel(beta, x),)


def _bn_no_beta(x, gamma, beta, eps):
    """The shift beta is missing: the output is gamma * x_hat instead of gamma * x_hat + beta."""
    return (_per_channel(gamma, x) * _standardise(x, _axes_but_1(x), eps),)


def _bn_swapped(x, gamma, beta, eps):
    """gamma and beta are swapped: the output is beta * x_hat + gamma instead of gamma * x_hat + beta."""
    return (_per_channel(beta, x) * _standardise(x, _axes_but_1(x), eps) + _per_channel(gamma, x),)


def _bn_article_step3(x, gamma, beta, eps):
    """The article's step 3 is used: its "normalized mean" mu / sqrt(var + eps) and "normalized variance"
    var / (var + eps) replace the batch mean and variance. Neither is part of BN: x_hat = (x - mu) /
    sqrt(var + eps) uses the batch mean and the biased batch variance themselves."""
    axes = _axes_but_1(x)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    mu_hat = mu / np.sqrt(var + eps)  # the article's "normalized mean"
    var_hat = var / (var + eps)  # the article's "normalized variance"
    x_hat = (x - mu_hat) / np.sqrt(var_hat + eps)
    return (_per_channel(gamma, x) * x_hat + _per_channel(beta, x),)


_BN_FORWARD_MISTAKES = _catalogue(
    "bnref.reference.batch_norm_forward",
    ("unbiased variance", _bn_unbiased, "eq-batch-var"),
    ("eps outside the square root", _bn_eps_outside, "eq-bw-inv-std and eq-x-hat"),
    ("statistics per pixel", _bn_per_pixel, "eq-batch-mean and eq-batch-var"),
    ("gamma dropped", _bn_no_gamma, "eq-scale-shift"),
    ("beta dropped", _bn_no_beta, "eq-scale-shift"),
    ("gamma and beta swapped", _bn_swapped, "eq-scale-shift"),
    ("article step 3", _bn_article_step3, "eq-batch-mean, eq-batch-var, eq-x-hat (book: the article's errors)"),
)


def _bn_nodes(dy, x, gamma, eps):
    """The forward graph's nodes a backward pass needs: axes, m, xc, inv_std, x_hat, and dx_hat = gamma dy."""
    axes = _axes_but_1(x)
    m = x.size // x.shape[1]
    xc = x - x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt((xc**2).mean(axis=axes, keepdims=True) + eps)
    return axes, m, xc, inv_std, xc * inv_std, _per_channel(gamma, x) * dy


def _bn_right(dy, x, gamma, eps):
    """The right gradients: dx (eq-dx-compact), dgamma = sum(dy x_hat), dbeta = sum(dy) (eq-dgamma, eq-dbeta)."""
    axes, m, _, inv_std, x_hat, dx_hat = _bn_nodes(dy, x, gamma, eps)
    sum_dx_hat, sum_dx_hat_x_hat = dx_hat.sum(axis=axes, keepdims=True), (dx_hat * x_hat).sum(axis=axes, keepdims=True)
    dx = inv_std / m * (m * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat)
    return dx, (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def _bw_no_mean_path(dy, x, gamma, eps):
    """dx misses the path through the batch mean: every x_i also moves mu, which every x_hat_j uses, so dx
    needs the term dmu / m with dmu = -sum(dxc)."""
    axes, m, xc, inv_std, x_hat, dx_hat = _bn_nodes(dy, x, gamma, eps)
    _, dgamma, dbeta = _bn_right(dy, x, gamma, eps)
    dvar = -0.5 * inv_std**3 * (dx_hat * xc).sum(axis=axes, keepdims=True)
    return dx_hat * inv_std + dvar * 2.0 * xc / m, dgamma, dbeta  # the mistake: no + dmu / m


def _bw_no_var_path(dy, x, gamma, eps):
    """dx misses the path through the batch variance: every x_i also moves var, so dxc needs the term
    dvar * 2 (x - mu) / m with dvar = -1/2 inv_std^3 sum(dx_hat (x - mu))."""
    axes, m, xc, inv_std, x_hat, dx_hat = _bn_nodes(dy, x, gamma, eps)
    _, dgamma, dbeta = _bn_right(dy, x, gamma, eps)
    dxc = dx_hat * inv_std  # the mistake: no + dvar * 2 xc / m
    return dxc - dxc.sum(axis=axes, keepdims=True) / m, dgamma, dbeta


def _bw_constant_stats(dy, x, gamma, eps):
    """dx = gamma dy / sqrt(var + eps): the paths through the mean and through the variance are both missing.
    In training mode mu and var depend on x."""
    axes, m, xc, inv_std, x_hat, dx_hat = _bn_nodes(dy, x, gamma, eps)
    _, dgamma, dbeta = _bn_right(dy, x, gamma, eps)
    return dx_hat * inv_std, dgamma, dbeta


def _bw_params_axis0(dy, x, gamma, eps):
    """dgamma and dbeta are summed over axis 0 only, which leaves the spatial axes of a convolutional input.
    Sum over every axis but the channel axis 1: axes (0, 2, 3) for NCHW."""
    axes, m, xc, inv_std, x_hat, dx_hat = _bn_nodes(dy, x, gamma, eps)
    dx, _, _ = _bn_right(dy, x, gamma, eps)
    return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


def _bw_article_step7(dy, x, gamma, eps):
    """dgamma and dbeta follow the article's step 7 (gamma += alpha mean(x_hat), beta += beta * 1), which
    involves no loss at all. The gradients are dgamma = sum(dy x_hat) and dbeta = sum(dy)."""
    axes, m, xc, inv_std, x_hat, dx_hat = _bn_nodes(dy, x, gamma, eps)
    dx, _, _ = _bn_right(dy, x, gamma, eps)
    return dx, x_hat.mean(axis=axes), np.ones_like(gamma)  # no dy anywhere


_BN_BACKWARD_MISTAKES = _catalogue(
    "bnref.reference.batch_norm_backward (compact) and batch_norm_backward_staged (node by node)",
    ("no path through the mean", _bw_no_mean_path, "eq-bw-dmu and eq-bw-dx-staged"),
    ("no path through the variance", _bw_no_var_path, "eq-bw-dvar and eq-bw-dxc"),
    ("mean and variance treated as constants", _bw_constant_stats, "eq-dx-compact"),
    ("dgamma and dbeta over axis 0 only", _bw_params_axis0, "eq-dgamma and eq-dbeta"),
    ("article step 7", _bw_article_step7, "eq-dgamma and eq-dbeta (book: the article's errors)"),
)


def _batch_stats(x):
    axes = _axes_but_1(x)
    return x.size // x.shape[1], x.mean(axis=axes), x.var(axis=axes)


def _ru_biased_fed(running_mean, running_var, x, momentum):
    """The running variance is fed the biased batch variance (divided by m). PyTorch feeds the unbiased one,
    m / (m - 1) times it (the normalisation itself uses the biased one)."""
    m, mean, var = _batch_stats(x)  # the mistake: no m / (m - 1)
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


def _ru_keras_momentum(running_mean, running_var, x, momentum):
    """momentum weighs the old running value (Keras: r = momentum r + (1 - momentum) b). In PyTorch it weighs
    the batch value: r = (1 - momentum) r + momentum b."""
    m, mean, var = _batch_stats(x)
    return momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var * m / (m - 1)


def _ru_keras(running_mean, running_var, x, momentum):
    """This is Keras' rule (bnref.conventions.KERAS): momentum on the old value and the biased variance fed.
    PyTorch's is r = (1 - momentum) r + momentum b, with m / (m - 1) var fed."""
    m, mean, var = _batch_stats(x)
    return momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var


def _ru_bessel_with_n(running_mean, running_var, x, momentum):
    """The unbiased correction uses N / (N - 1) with N the batch size; the count is m = N H W, the values
    per channel."""
    m, mean, var = _batch_stats(x)
    n = x.shape[0]  # the mistake: the batch size instead of m
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var * n / (n - 1)


def _ru_article_step5(running_mean, running_var, x, momentum):
    """The article's step 5: the mean and variance of the output z replace the running estimates. BN keeps
    running averages of the batch mean and variance of x (Ioffe and Szegedy 2015, Algorithm 2)."""
    z = _standardise(x, _axes_but_1(x), PYTORCH.eps)  # the output z with gamma = 1, beta = 0
    return z.mean(axis=_axes_but_1(x)), z.var(axis=_axes_but_1(x))


def _ru_article_step6(running_mean, running_var, x, momentum):
    """The article's step 6: the "normalized" mean and variance of the output z replace the running
    estimates. BN keeps running averages of the batch mean and variance of x (the paper's Algorithm 2)."""
    mean_z, var_z = _ru_article_step5(running_mean, running_var, x, momentum)
    return mean_z / np.sqrt(var_z + PYTORCH.eps), var_z / (var_z + PYTORCH.eps)


_RUNNING_MISTAKES = _catalogue(
    "bnref.reference.update_running_stats with bnref.conventions.PYTORCH",
    ("biased variance fed", _ru_biased_fed, "eq-running-update"),
    ("Keras' momentum convention", _ru_keras_momentum, "eq-running-update"),
    ("Keras' convention", _ru_keras, "eq-running-update"),
    ("Bessel factor with N", _ru_bessel_with_n, "eq-running-update"),
    ("article step 5", _ru_article_step5, "eq-running-update (book: the article's errors)"),
    ("article step 6", _ru_article_step6, "eq-running-update (book: the article's errors)"),
)


def _ln_batch_axis(x, gamma, beta, eps):
    """The mean and variance are taken over axis 0, across examples, as batch norm does. Layer norm takes
    them per example, over the last axis."""
    return (gamma * _standardise(x, (0,), eps) + beta,)


def _ln_unbiased(x, gamma, beta, eps):
    """The variance is the unbiased one (divided by D - 1); layer norm divides by D, the values per row."""
    return (gamma * _standardise(x, (-1,), eps, ddof=1) + beta,)


def _ln_eps_outside(x, gamma, beta, eps):
    """eps is added outside the square root, (x - mu) / (sqrt(var) + eps); it belongs inside."""
    return (gamma * (x - x.mean(axis=-1, keepdims=True)) / (x.std(axis=-1, keepdims=True) + eps) + beta,)


def _ln_no_gamma(x, gamma, beta, eps):
    """The scale gamma is missing: the output is x_hat + beta."""
    return (_standardise(x, (-1,), eps) + beta,)


def _ln_no_beta(x, gamma, beta, eps):
    """The shift beta is missing: the output is gamma * x_hat."""
    return (gamma * _standardise(x, (-1,), eps),)


_LN_MISTAKES = _catalogue(
    "bnref.normalization.layer_norm_forward",
    ("statistics over the batch axis", _ln_batch_axis, "eq-layer-norm"),
    ("unbiased variance", _ln_unbiased, "eq-layer-norm"),
    ("eps outside the square root", _ln_eps_outside, "eq-layer-norm"),
    ("gamma dropped", _ln_no_gamma, "eq-layer-norm"),
    ("beta dropped", _ln_no_beta, "eq-layer-norm"),
)


# The cases, their oracle outputs and their bounds ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Case:
    name: str
    args: tuple  # what the reader's function receives, in the case's dtype
    expected: tuple[np.ndarray, ...]  # the oracle's outputs, float64
    bounds: dict[str, tuple[np.ndarray, ...]]  # absolute bound per channel (row), by the dtype judged
    layout: Callable[[np.ndarray], np.ndarray]  # an output as (values, units): one column per channel (row)
    large_mean: bool
    x: np.ndarray  # the input, for the report


# Each case: name, shape, dtype, eps, the unit with |mean| / std = 1e3 (or None), the unit with var = eps.
_SPECS = {
    "bn": [
        ("dense", (16, 4), np.float64, PYTORCH.eps, None, None),
        ("conv", (4, 3, 5, 5), np.float64, PYTORCH.eps, None, None),
        ("batch of two", (2, 5), np.float64, PYTORCH.eps, None, None),
        ("large mean", (16, 3), np.float64, PYTORCH.eps, 1, None),
        ("tiny variance", (16, 3), np.float64, PYTORCH.eps, None, 2),
        ("dense float32", (32, 4), np.float32, KERAS.eps, None, None),
        ("large mean float32", (16, 3), np.float32, PYTORCH.eps, 0, None),
    ],
    "ln": [
        ("dense", (8, 6), np.float64, PYTORCH.eps, None, None),
        ("sequence", (3, 4, 6), np.float64, PYTORCH.eps, None, None),
        ("batch of two", (2, 6), np.float64, PYTORCH.eps, None, None),
        ("large mean", (8, 6), np.float64, PYTORCH.eps, 3, None),
        ("tiny variance", (8, 6), np.float64, PYTORCH.eps, None, 5),
        ("dense float32", (8, 6), np.float32, KERAS.eps, None, None),
    ],
}


def _inputs(kind: str):
    """Yield name, x, gamma, beta, dy, eps, large_mean per case (fixed seed), in the case's dtype."""
    rng = np.random.default_rng(20)
    for name, shape, dtype, eps, big, tiny in _SPECS[kind]:
        units = (1, shape[1]) + (1,) * (len(shape) - 2) if kind == "bn" else shape[:-1] + (1,)
        loc, scale = rng.uniform(-2, 2, units), rng.uniform(0.5, 2, units)
        if big is not None:
            loc.flat[big] = -1e3 * scale.flat[big]  # |mean| / std about 1e3
        if tiny is not None:
            scale.flat[tiny], loc.flat[tiny] = math.sqrt(eps), 0.5 * math.sqrt(eps)  # var about eps, mean small
        x = loc + scale * rng.standard_normal(shape)
        p = shape[1] if kind == "bn" else shape[-1]
        gamma = rng.uniform(0.5, 2, p)
        beta = rng.choice([-1.0, 1.0], p) * rng.uniform(0.5, 1.5, p)
        arrays = (a.astype(dtype) for a in (x, gamma, beta, rng.standard_normal(shape)))
        yield name, *arrays, eps, big is not None


# The tolerances. Every bound is bnref.testing's ``e * S`` per channel (row), derived in the appendix
# ``ch-bounds`` (eq-bound-unit): ``e = C eps (1 + sqrt(m))``, with ``eps`` the machine epsilon (twice the unit
# roundoff) of the dtype the reader computed in, ``sqrt(m)`` the growth of rounding error in a sum over the
# ``m`` values of a channel (row), and ``S`` the condition scale of the output, which grows with the
# conditioning ``r = |mean| / std`` (eq-bound-y): the large-mean cases get a bound about 1e3 times wider, as
# the arithmetic demands. The oracle computes in float64 and may itself be off by float64's bound: it is added.
_JUDGED = ("float32", "float64")


def _bn_cases(outputs: str) -> list[_Case]:
    keys = ("y",) if outputs == "forward" else ("dx", "dgamma", "dbeta")
    cases = []
    for name, x, gamma, beta, dy, eps, large in _inputs("bn"):
        x64, g64, b64, dy64 = (a.astype(np.float64) for a in (x, gamma, beta, dy))
        y, cache = batch_norm_forward(x64, g64, b64, eps)
        dx, dgamma, dbeta = batch_norm_backward(dy64, cache)
        s = channel_summaries(_channels_last(cache.x_hat), _channels_last(dy64), cache.mean, cache.var, eps)
        by_dtype = {dt: training_bounds(s, g64, b64, dgamma, dt) for dt in _JUDGED}  # eq-bound-y to eq-bound-dx
        bounds = {dt: tuple(b[k] + by_dtype["float64"][k] for k in keys) for dt, b in by_dtype.items()}
        if outputs == "forward":
            cases.append(_Case(name, (x, gamma, beta, eps), (y,), bounds, _channels_last, large, x))
        else:
            cases.append(_Case(name, (dy, x, gamma, eps), (dx, dgamma, dbeta), bounds, _channels_last, large, x))
    return cases


def _running_bounds(s, w: float, mean, var, new) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """eq-bound-running for the mean and for the unbiased variance fed, plus float64's for the oracle. The running
    values passed in are exact: no error is carried from before (``previous = 0``)."""
    zero = np.zeros_like(mean)
    mean_bound = {dt: running_mean_bound(zero, w, s, mean, new[0], dt) for dt in _JUDGED}
    var_bound = {dt: running_var_bound(zero, w, s, mean, var, new[1], dt, unbiased=True) for dt in _JUDGED}
    return {dt: (mean_bound[dt] + mean_bound["float64"], var_bound[dt] + var_bound["float64"]) for dt in _JUDGED}


def _running_cases() -> list[_Case]:
    rng, cases = np.random.default_rng(21), []
    for name, x, *_, large in _inputs("bn"):
        momentum = 0.3 if name == "conv" else PYTORCH.momentum  # 0.3 once: is momentum passed through?
        channels, x64 = x.shape[1], x.astype(np.float64)
        running_mean, running_var = rng.normal(0, 1, channels), rng.uniform(0.5, 2, channels)
        mean, var = batch_mean_var(x64)
        m = x.size // channels
        new = update_running_stats(running_mean, running_var, mean, var, m, 1, PYTORCH.replace(momentum=momentum))
        x_hat = (x64 - _per_channel(mean, x64)) / np.sqrt(_per_channel(var, x64))
        s = channel_summaries(_channels_last(x_hat), np.zeros((m, channels)), mean, var, 0.0)
        args = (running_mean.astype(x.dtype), running_var.astype(x.dtype), x, momentum)
        bounds = _running_bounds(s, momentum, mean, var, new)
        cases.append(_Case(name, args, new, bounds, lambda a: a.reshape(1, -1), large, x))
    return cases


def _ln_cases() -> list[_Case]:
    cases = []
    for name, x, gamma, beta, _, eps, large in _inputs("ln"):
        x64, g64, b64 = (a.astype(np.float64) for a in (x, gamma, beta))
        y, _ = layer_norm_forward(x64, g64, b64, eps)
        rows = _rows_as_columns(x64)  # (D, rows): a row of x plays the part of a channel in the bound
        mean, var = rows.mean(axis=0), rows.var(axis=0)
        s = channel_summaries((rows - mean) / np.sqrt(var + eps), np.zeros_like(rows), mean, var, eps)
        # gamma and beta vary along a row: the row's bound takes their largest magnitudes
        g_row, b_row = np.full(rows.shape[1], np.abs(g64).max()), np.full(rows.shape[1], np.abs(b64).max())
        by_dtype = {dt: training_bounds(s, g_row, b_row, 0 * g_row, dt)["y"] for dt in _JUDGED}  # eq-bound-y
        bounds = {dt: (b + by_dtype["float64"],) for dt, b in by_dtype.items()}
        cases.append(_Case(name, (x, gamma, beta, eps), (y,), bounds, _rows_as_columns, large, x))
    return cases


# Running the reader's function, comparing, diagnosing -----------------------------------------------------------------
def _variant(mistake: _Mistake, case: _Case) -> tuple[np.ndarray, ...]:
    """The mistake's outputs on the case, computed in float64."""
    with np.errstate(all="ignore"):
        return mistake.compute(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in case.args))


def _compare(name: str, actual: np.ndarray, expected: np.ndarray, bound: np.ndarray, layout) -> OutputCheck:
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf in the reader's output fail below
        err = np.max(np.abs(layout(actual.astype(np.float64)) - layout(expected)), axis=0)  # per channel (row)
    unit = int(np.argmax(np.where(np.isnan(err), np.inf, err / bound)))
    scale = float(np.max(np.abs(expected))) or 1.0
    return OutputCheck(name, float(err[unit]) / scale, float(bound[unit]) / scale, unit)


def _matches(actual: np.ndarray, variant: np.ndarray, expected: np.ndarray, bound: np.ndarray, layout) -> bool:
    """Whether ``actual`` is ``variant`` within the bound, grown where the variant is larger (its rounding is too)."""
    if variant.shape != actual.shape:
        return False
    size = np.max(np.abs(layout(variant)), axis=0) / np.maximum(np.max(np.abs(layout(expected)), axis=0), 1e-300)
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(np.max(np.abs(layout(actual) - layout(variant)), axis=0) <= bound * np.maximum(1.0, size)))


def _returned(exercise: str, got: object, names: tuple[str, ...], case: _Case, mistakes) -> tuple[np.ndarray, ...]:
    """The outputs as a tuple of arrays, after checking their type (TypeError) and shape (ValueError)."""
    if len(names) == 1 and isinstance(got, tuple):
        raise TypeError(
            f"{exercise}: your function returned a {type(got).__name__} of {len(got)} values; expected one array "
            f"{names[0]}. If it returns ({names[0]}, cache) as in CS231n, check `lambda *args: fn(*args)[0]`."
        )
    got = (got,) if len(names) == 1 else got
    if not isinstance(got, (tuple, list)) or len(got) != len(names):
        what = f"{len(got)} values" if isinstance(got, (tuple, list)) else f"one {type(got).__name__}"
        raise TypeError(f"{exercise}: your function returned {what}; expected {len(names)}: {', '.join(names)}")
    got = tuple(np.asarray(a) if isinstance(a, np.floating) else a for a in got)  # a NumPy scalar: shape ()
    for k, (name, a, e) in enumerate(zip(names, got, case.expected, strict=True)):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            what = f"an array of dtype {a.dtype}" if isinstance(a, np.ndarray) else f"a {type(a).__name__}"
            raise TypeError(f"{exercise}: {name} is {what}; expected a floating-point NumPy array")
        if a.shape != e.shape:
            hint = f" It has the right number of values: reshape it to {e.shape}." if a.size == e.size else ""
            for mistake in mistakes:  # a known mistake that changes the shape, e.g. a sum over axis 0 only
                v = _variant(mistake, case)[k]
                bound = np.max(case.bounds["float32"][k]) * max(1.0, np.max(np.abs(v)) / np.max(np.abs(e)))  # loosest
                if v.shape == a.shape and np.max(np.abs(a - v)) <= bound:
                    hint = f" Its values match a known mistake: {mistake.words} Revisit {mistake.revisit}."
            raise ValueError(
                f"{exercise}: {name} has shape {a.shape} on case '{case.name}' (x of shape {case.x.shape}); "
                f"expected shape {e.shape}.{hint}"
            )
    return got


def _diagnose(cases, results, returned, names, mistakes) -> tuple[str, str | None]:
    if all(r.passed for r in results):
        return "Correct: every output of every case is within its bound.", None
    raised = next((r for r in results if r.error), None)
    if raised:
        return f"Your function raised {raised.error} on case '{raised.name}' (x of shape {raised.shape}).", None

    def agrees(mistake: _Mistake, k: int) -> bool:  # output k is the mistake's on every case
        return all(
            _matches(got[k], _variant(mistake, case)[k], case.expected[k], case.bounds[judged][k], case.layout)
            for case, (got, judged) in zip(cases, returned, strict=True)
        )

    for mistake in mistakes:
        if all(agrees(mistake, k) for k in range(len(names))):
            return f"{mistake.words} Revisit {mistake.revisit}.", mistake.name
    wrong = [k for k in range(len(names)) if not all(r.outputs[k].passed for r in results)]
    found = {k: next((mk for mk in mistakes if agrees(mk, k)), None) for k in wrong}
    if len(wrong) > 1 and any(found.values()):  # known mistakes in (some of) the wrong outputs
        known = dict.fromkeys(mk for mk in found.values() if mk)  # each mistake once, with the outputs it explains
        said = [f"{', '.join(names[k] for k in found if found[k] is m)}: {m.words} Revisit {m.revisit}." for m in known]
        said += [f"{names[k]} matches no known mistake." for k, mk in found.items() if not mk]
        return " ".join(["More than one mistake.", *said]), " + ".join(mk.name for mk in known)
    failed = [c for c, r in zip(cases, results, strict=True) if not r.passed]
    if all(c.large_mean for c in failed):
        return (
            "Right except where |mean| / std is about 1e3: precision is lost there. The one-pass variance "
            "E[x^2] - E[x]^2 cancels when |mean| >> std; subtract the mean first, then average the squares "
            "(two-pass). Revisit eq-fwd-one-pass and eq-batch-var, bnref.reference.batch_mean_var."
        ), "precision lost at large mean"
    first = next(r for r in results if not r.passed)
    o = first.worst
    return (
        f"Your output matches none of the known mistakes. First failing case: '{first.name}' (x of shape "
        f"{first.shape}, {first.dtype}): {o.output} is off by a relative error of {o.rel_error:.1e} (bound "
        f"{o.rel_bound:.1e})."
    ), None


def _check(exercise: str, fn: object, cases: list[_Case], names: tuple[str, ...], mistakes, unit="channel"):
    if not callable(fn):
        raise TypeError(f"check_{exercise} takes your function; got a {type(fn).__name__}, which is not callable")
    results, returned = [], []
    for case in cases:
        shape, dtype = case.x.shape, case.x.dtype.name
        try:
            got = fn(*(np.copy(a) if isinstance(a, np.ndarray) else a for a in case.args))
        except Exception as exc:  # the reader's bug is reported, not raised
            results.append(CaseResult(case.name, shape, dtype, dtype, (), f"{type(exc).__name__}: {exc}"))
            returned.append(None)
            continue
        got = _returned(exercise, got, names, case, mistakes)
        # The bound is that of the precision actually used: the less precise of the input's and the outputs'.
        judged = "float64" if dtype == "float64" and all(a.dtype == np.float64 for a in got) else "float32"
        checks = zip(names, got, case.expected, case.bounds[judged], strict=True)
        outputs = tuple(_compare(n, a, e, b, case.layout) for n, a, e, b in checks)
        results.append(CaseResult(case.name, shape, dtype, judged, outputs))
        returned.append((got, judged))
    diagnosis, mistake = _diagnose(cases, results, returned, names, mistakes)
    return CheckResult(exercise, all(r.passed for r in results), diagnosis, mistake, tuple(results), unit)


# The checkers ---------------------------------------------------------------------------------------------------------
def check_batch_norm_forward(fn: Callable[..., np.ndarray]) -> CheckResult:
    """Check a training-mode Batch Normalization forward pass (eqs. eq-batch-mean to eq-scale-shift).

    Parameters
    ----------
    fn : callable
        ``fn(x, gamma, beta, eps) -> y``: ``x`` of shape (N, C) or (N, C, H, W), ``gamma`` and ``beta`` of
        shape (C,), ``y`` of the shape of ``x``; the statistics are taken over every axis but 1.

    Returns
    -------
    CheckResult
        ``passed``, ``diagnosis``, ``mistake``, ``cases``; printed or shown in a notebook, the short report.
        Raises TypeError unless ``fn`` is callable and returns one floating-point array, ValueError unless
        ``y`` has the shape of ``x``.
    """
    return _check("batch_norm_forward", fn, _bn_cases("forward"), ("y",), _BN_FORWARD_MISTAKES)


def check_batch_norm_backward(fn: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]) -> CheckResult:
    """Check a Batch Normalization backward pass, training mode (eqs. eq-dbeta, eq-dgamma, eq-dx-compact).

    Parameters
    ----------
    fn : callable
        ``fn(dy, x, gamma, eps) -> (dx, dgamma, dbeta)``: ``dy``, ``x``, ``dx`` of shape (N, C) or
        (N, C, H, W); ``gamma``, ``dgamma``, ``dbeta`` of shape (C,).

    Returns
    -------
    CheckResult
        As ``check_batch_norm_forward``; a wrong shape's ValueError names a known mistake its values match.
    """
    return _check("batch_norm_backward", fn, _bn_cases("backward"), ("dx", "dgamma", "dbeta"), _BN_BACKWARD_MISTAKES)


def check_running_update(fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> CheckResult:
    """Check one update of the running statistics, PyTorch's rule (eq-running-update): ``r = (1 - momentum) r
    + momentum b``, the running variance fed ``m / (m - 1) var`` (``m`` values per channel: N H W for images).

    Parameters
    ----------
    fn : callable
        ``fn(running_mean, running_var, x, momentum) -> (running_mean, running_var)``: the running values of
        shape (C,), ``x`` of shape (N, C) or (N, C, H, W). It may update its arguments in place.

    Returns
    -------
    CheckResult
        As ``check_batch_norm_forward``.
    """
    return _check("running_update", fn, _running_cases(), ("running_mean", "running_var"), _RUNNING_MISTAKES)


def check_layer_norm_forward(fn: Callable[..., np.ndarray]) -> CheckResult:
    """Check a Layer Normalization forward pass (eq-layer-norm): statistics per example, over the last axis.

    Parameters
    ----------
    fn : callable
        ``fn(x, gamma, beta, eps) -> y``: ``x`` of shape (N, D) or (N, T, D), ``gamma`` and ``beta`` of
        shape (D,), ``y`` of the shape of ``x``.

    Returns
    -------
    CheckResult
        As ``check_batch_norm_forward``; its report counts rows where BN's counts channels.
    """
    return _check("layer_norm_forward", fn, _ln_cases(), ("y",), _LN_MISTAKES, unit="row")
