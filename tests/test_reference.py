"""Tests of the NumPy reference (bnref.reference): gradients, forward properties, numerical stability,
running statistics (by hand and against torch / Keras buffers) and input validation.

Every tolerance below is derived from the float precision, the reduction length and, where a check can be
ill-conditioned, a conditioning number computed from quantities independent of the code under test. The
general argument is the book's appendix "How the checks are bounded" (label ``ch-bounds``, ``book/bounds``);
the comments here apply it to the reference's own sequence of roundings.

Notation in the tolerance comments: ``u`` is the unit roundoff of the compute dtype (2**-53 for float64,
2**-24 for float32; we use the machine epsilon ``2u`` from ``np.finfo`` to stay on the safe side), ``m``
the number of values per channel, ``s = sqrt(var + eps)`` the per-channel scale that BN divides by, and
``x_hat = (x - mean) / s``.

Rounding model of the reference's forward pass (``bnref.reference``): ``mu0 = mean(x)``; ``d = x - mu0``
(exact by Sterbenz' lemma when ``|mean| >> std``, otherwise one rounding of size ``u |d|``); the mean of
``d``, a sum of ``m`` values, is the rounding error of ``mu0`` and is itself computed to within
``(m - 1) u max|d|``; ``x - mean = d - mean(d)`` then carries that common shift plus one rounding; the
variance is a sum of ``m`` squares (relative error ``<= (m + 2) u``; a common shift of the centred values
changes it only to second order), so ``inv_std`` is good to ``(m/2 + 3) u``; one more rounding forms
``x_hat``. Altogether, with room to spare,

    |x_hat_computed - x_hat| <= (2 m + 4) u max|x_hat|                                   (XHAT)

with no dependence on |mean|/std: that independence is what the refinement of the mean buys, and several
tests below would fail without it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import EPS64
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import bnref
from bnref import (
    FLAX,
    FLAX_TWO_PASS,
    KERAS,
    PAPER,
    PYTORCH,
    PYTORCH_CUMULATIVE,
    BatchNormCache,
    RunningStats,
    batch_mean_var,
    batch_norm_backward,
    batch_norm_backward_staged,
    batch_norm_forward,
    batch_norm_inference,
    fold_into_preceding,
    gradcheck,
    inference_affine,
    numerical_gradients,
    relative_error,
    running_update,
    update_running_stats,
)
from bnref.testing import machine_eps, reduction_error

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7
FD_STEP = 1e-5  # the default relative step h of bnref.gradcheck
BACKWARDS = pytest.mark.parametrize(
    "backward", [batch_norm_backward, batch_norm_backward_staged], ids=["compact", "staged"]
)


# ====================================================================================================
# Random cases: layouts, scales, locations
# ====================================================================================================


@dataclass
class Case:
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dy: np.ndarray
    eps: float
    axis: int

    @property
    def channel_axis(self) -> int:
        return self.axis % self.x.ndim

    @property
    def bshape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[d] if d == self.channel_axis else 1 for d in range(self.x.ndim))

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        return tuple(d for d in range(self.x.ndim) if d != self.channel_axis)

    @property
    def m(self) -> int:
        return self.x.size // self.x.shape[self.channel_axis]

    def forward(self, x=None, gamma=None, beta=None, **kw):
        return batch_norm_forward(
            self.x if x is None else x,
            self.gamma if gamma is None else gamma,
            self.beta if beta is None else beta,
            eps=self.eps,
            axis=self.axis,
            **kw,
        )


def layout(kind: str, c: int, d: tuple[int, int, int]) -> tuple[tuple[int, ...], int]:
    """A shape and channel axis for each layout the reference must support."""
    a, b, e = d
    return {
        "NC": ((a * b, c), 1),
        "NCL": ((a, c, b), 1),
        "NCHW": ((a, c, b, e), 1),
        "NHWC": ((a, b, e, c), -1),
        "CN": ((c, a * b), 0),  # channels first, batch last: axis=0
        "middle": ((a, b, c, e), 2),  # channels on a middle axis
        "middle-neg": ((a, c, b), -2),  # the same, spelled with a negative axis
    }[kind]


@st.composite
def shapes_and_axes(draw, max_size: int, min_m: int = 3, max_channels: int = 3):
    kind = draw(st.sampled_from(["NC", "NCL", "NCHW", "NHWC", "CN", "middle", "middle-neg"]))
    c = draw(st.integers(1, max_channels))
    big = max_size > 100  # larger dims where no finite differences are taken
    dims = (
        draw(st.integers(1, 8 if big else 4)),
        draw(st.integers(1, 8 if big else 4)),
        draw(st.integers(1, 5 if big else 3)),
    )
    shape, axis = layout(kind, c, dims)
    size = math.prod(shape)
    # m >= 3: with m = 2 every dy lies in span{1, x_hat} of its channel, so the exact dx is
    # gamma/s * dy_perp * eps/(var + eps), ~0 when var >> eps; its relative error is then pure rounding
    # noise of L divided by a vanishing gradient, a property of the check, not of the formula.
    assume(size // c >= min_m and size <= max_size)
    return shape, axis


@st.composite
def bn_cases(draw, max_size: int = 48, max_loc: float = 10.0, log_scale=(-2.0, 3.0), min_m: int = 3):
    """Float64 cases with per-channel scale 10**(log_scale +- 0.5) and location |mean|/std <= max_loc.

    The ranges are chosen by the error analysis in ``test_backward_matches_central_differences``.
    """
    shape, axis = draw(shapes_and_axes(max_size, min_m))
    log_sigma = draw(st.floats(*log_scale))
    loc = draw(st.floats(0.0, max_loc))
    log_gamma = draw(st.floats(-1.0, 1.0))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    c = shape[axis]
    bshape = tuple(c if d == axis % len(shape) else 1 for d in range(len(shape)))
    sigma = 10.0 ** (log_sigma + rng.uniform(-0.5, 0.5, c))
    mu = rng.uniform(-loc, loc, c) * sigma
    x = mu.reshape(bshape) + sigma.reshape(bshape) * rng.normal(size=shape)
    g_scale = 10.0**log_gamma
    gamma = rng.choice([-1.0, 1.0], c) * rng.uniform(0.5, 2.0, c) * g_scale
    beta = rng.normal(size=c) * g_scale
    dy = rng.normal(size=shape)
    return Case(x, gamma, beta, dy, float(eps), axis)


# ====================================================================================================
# Backward against central differences (float64)
# ====================================================================================================
#
# Error analysis of one central difference, dL/dz ~ (L(z + h) - L(z - h)) / (2h), L = sum(y * dy):
#
# * truncation: h^2 |L'''| / 6. BN bends on the scale s = sqrt(var + eps) of each channel, so the
#   relative truncation error is ~ (h / s)^2 times a factor O(1/m) (moving one of m values changes the
#   variance by O(1/m)). gradcheck's step is h * max(1, |z|) with h = 1e-5, i.e. scaled to |z|, not to s:
#   for x with s = 1e-2 the step would be 1e-3 of s and for |mean| = 1e3 * s it would be 1e-2 of s, and
#   the truncation error (1e-3..1e-2)^2 could not meet 1e-8. We therefore difference in the coordinate in
#   which every channel has unit scale, u = x_hat = (x - mean) / s (x = mean + s u, s held fixed); the
#   gradient with respect to u is s * dx (chain rule). Since |u| <= sqrt(m - 1), the steps
#   1e-5 * max(1, |u_i|) stay below 1e-5 sqrt(m - 1), and the truncation ~ 1e-10 (m - 1) / m < 1e-10.
# * rounding: L is a sum of n products y_j dy_j, computed with an absolute error of up to
#   ~ log2(n) eps64 * S, S = sum_j |y_j dy_j|. Divided by the smallest step h = 1e-5 this is the rounding
#   floor of every numeric gradient; relative to the gradient g itself
#       kappa = eps64 * S / (h * max|g|).
#   Moving u_i also rounds x_i = mean + s u_i, an error eps64 |x_i| / s in u units, i.e. a relative error
#   eps64 * max|x / s| / h on the u-gradient, which we add to its kappa. (The other x_j are rounded
#   identically in L(u + h) and L(u - h), and x_j - mean is exact by Sterbenz' lemma when |mean| >> std,
#   so the location costs nothing else: the corrected two-pass centring does not amplify it.)
#   kappa is large when the gradient nearly cancels: dbeta = sum(dy) or dgamma = sum(dy x_hat) close to 0
#   in every channel, dx small because dy lies almost in span{1, x_hat}, or dgamma ~ 0 because var << eps
#   squashes x_hat (then S is dominated by the beta term, whose rounding has nothing to do with gamma).
#   None of these says anything about the formula under test, so such draws are filtered out
#   (kappa <= 1e-9: a factor 10 below the 1e-8 bound for the log2(n) and O(1) constants; over 3000
#   random examples the observed error stayed below 0.75 kappa, and below 4e-10 after the filter;
#   about 14% of draws were filtered). The generator keeps the filter rare: |mean| / std <= 10,
#   var >= eps / 100 (sigma >= 10**-2.5 against eps <= 1e-3) and m >= 3. The var << eps regime has
#   its own test below, with beta = 0.
# * independence: kappa must not be computed from the gradients under test. If it were, a backward that
#   returns a tiny dx (say dx * 1e-30) would look "ill-conditioned" and be filtered out instead of failing.
#   So kappa uses the central differences themselves (which estimate the true gradient to well within
#   kappa once kappa is small) and S from the test's own NumPy forward (np.mean, np.var); the backward
#   under test is called only after the draw has been accepted.
#   test_a_planted_bug_fails_the_central_difference_property shows that such a backward now fails.

KAPPA_MAX = 1e-9


def numpy_forward(case: Case, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """y = gamma (x - mean) / sqrt(var + eps) + beta with NumPy's own mean and var: the test's forward,
    independent of bnref."""
    axes, b = case.reduce_axes, case.bshape
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return gamma.reshape(b) * (x - mean) / np.sqrt(var + case.eps) + beta.reshape(b)


def check_against_central_differences(case: Case, backward, kappa_max: float = KAPPA_MAX) -> tuple[float | None, float]:
    """(max relative error of (dx, dgamma, dbeta) against central differences, kappa); the error is None,
    and the backward is not called, when kappa > kappa_max."""
    axes = case.reduce_axes
    mean = case.x.mean(axis=axes, keepdims=True)
    s = np.sqrt(case.x.var(axis=axes, keepdims=True) + case.eps)
    u = (case.x - mean) / s
    x0 = mean + s * u  # the point the numeric derivative really sees (x up to one rounding)

    def f_u(u_):
        return case.forward(x=mean + s * u_)[0]

    def f_gb(g_, b_):
        return case.forward(x=x0, gamma=g_, beta=b_)[0]

    (num_u,) = numerical_gradients(f_u, [u], case.dy)
    num_gamma, num_beta = numerical_gradients(f_gb, [case.gamma, case.beta], case.dy)
    numeric = (num_u, num_gamma, num_beta)
    noise = EPS64 * float(np.sum(np.abs(numpy_forward(case, x0, case.gamma, case.beta) * case.dy)))
    kappas = [noise / (FD_STEP * max(float(np.max(np.abs(g))), 1e-300)) for g in numeric]
    kappas[0] += EPS64 * float(np.max(np.abs(x0) / s)) / FD_STEP
    kappa = max(kappas)
    if kappa > kappa_max:
        return None, kappa
    _, cache0 = case.forward(x=x0)
    dx, dgamma, dbeta = backward(case.dy, cache0)
    analytic = (dx * s, dgamma, dbeta)  # dx * s: the gradient with respect to u
    return max(relative_error(a, n) for a, n in zip(analytic, numeric, strict=True)), kappa


def central_difference_property(case: Case, backward) -> None:
    err, _ = check_against_central_differences(case, backward)
    assume(err is not None)  # ill-conditioned draw, see the analysis above
    assert err < 1e-8


@BACKWARDS
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(case=bn_cases())
def test_backward_matches_central_differences(backward, case):
    central_difference_property(case, backward)


def planted_tiny_dx(dy, cache):
    """A wrong backward that is right for small batches only: dx * 1e-30 whenever m > 6."""
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    return (dx * 1e-30 if cache.m > 6 else dx), dgamma, dbeta


def test_a_planted_bug_fails_the_central_difference_property():
    """The property above, run on a backward that is wrong whenever m > 6, must fail. With a conditioning
    filter computed from the gradients under test it passed: the tiny dx made every such draw look
    ill-conditioned, and the filter discarded exactly the broken draws."""
    prop = settings(
        max_examples=100,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.filter_too_much],
    )(given(case=bn_cases())(lambda case: central_difference_property(case, planted_tiny_dx)))
    with pytest.raises(AssertionError):
        prop()


@BACKWARDS
@pytest.mark.parametrize(
    "shape, axis", [((5, 3), 1), ((3, 2, 4), 1), ((2, 3, 2, 2), 1), ((2, 2, 2, 3), -1), ((3, 6), 0)]
)
def test_backward_gradcheck_plain_steps_at_unit_scale(backward, shape, axis):
    """gradcheck used plainly on (x, gamma, beta) at once, as the book does: at unit scale the step
    h * max(1, |x|) is ~1e-5 of s, so the truncation is ~1e-10 and no reparametrisation is needed."""
    rng = np.random.default_rng(sum(shape) + axis)
    c = shape[axis]
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    _, cache = batch_norm_forward(x, gamma, beta, axis=axis)
    grads = backward(dy, cache)

    def f(x_, g_, b_):
        return batch_norm_forward(x_, g_, b_, axis=axis)[0]

    assert gradcheck(f, [x, gamma, beta], grads, dy) < 1e-8


@BACKWARDS
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_backward_when_eps_dominates_the_variance(backward, eps):
    """var << eps: BN is nearly linear, x_hat ~ (x - mean) / sqrt(eps) is small. With beta = 0 the L of the
    check is not dominated by a gamma-independent term (see the analysis above), so 1e-8 holds."""
    rng = np.random.default_rng(7)
    case = Case(
        x=3.0 + 1e-3 * rng.normal(size=(6, 3)),
        gamma=rng.uniform(0.5, 1.5, 3),
        beta=np.zeros(3),
        dy=rng.normal(size=(6, 3)),
        eps=eps,
        axis=1,
    )
    _, cache = case.forward()
    assert np.all(cache.var < 1e-4 * eps)
    err, kappa = check_against_central_differences(case, backward)
    assert kappa <= KAPPA_MAX and err < 1e-8


# Staged and compact: the same gradient by two routes; they differ by rounding only.
#
# The compact dx = k (dy - dbeta/m - x_hat dgamma/m) with k = gamma / s. Its entries carry rounding of
# about eps64 * k * (|dy| + mean|dy| + |x_hat| mean|dy x_hat|) (each term, and the sums behind dbeta and
# dgamma, rounded a few times). The staged route recomputes x - mean, which adds eps64 * |x| / s to
# x_hat, i.e. eps64 * k * (|x| / s) * mean|dy x_hat| to dx. When dx itself is small compared with those
# terms (dy nearly in span{1, x_hat}) the relative difference is amplified by that ratio, so we require
#     kappa_s = eps64 * max(that error scale) / max|dx| <= 1e-14
# which leaves a factor 100 for the O(1) constants and the log2(m) of the pairwise sums; over 3000 random
# examples with |mean|/std <= 100 the difference stayed below 1.4 kappa_s (about 3% were filtered).
# As for the central differences, kappa_s is computed from the test's own NumPy quantities (x_hat, s and
# the size of the exact dx from np.mean / np.var), never from the gradients under test.


def staged_compact_property(case: Case, compact) -> None:
    _, cache = case.forward()
    dx, dgamma, dbeta = compact(case.dy, cache)
    dx_s, dgamma_s, dbeta_s = batch_norm_backward_staged(case.dy, cache)
    axes, b, m = case.reduce_axes, case.bshape, case.m
    mean = case.x.mean(axis=axes, keepdims=True)
    s = np.sqrt(case.x.var(axis=axes, keepdims=True) + case.eps)
    x_hat = (case.x - mean) / s
    gamma = case.gamma.reshape(b)
    dy_mean, dyx_mean = case.dy.mean(axis=axes, keepdims=True), (case.dy * x_hat).mean(axis=axes, keepdims=True)
    dx_exact = gamma / s * (case.dy - dy_mean - x_hat * dyx_mean)  # eq-dx-compact, the test's own float64
    k = np.abs(gamma) / s
    mean_dy = np.mean(np.abs(case.dy), axis=axes, keepdims=True)
    mean_dyx = np.mean(np.abs(case.dy * x_hat), axis=axes, keepdims=True)
    loc = np.abs(case.x) / s
    scale = k * (np.abs(case.dy) + mean_dy + (np.abs(x_hat) + loc) * mean_dyx)
    kappa_s = EPS64 * float(np.max(scale)) / max(float(np.max(np.abs(dx_exact))), 1e-300)
    assume(kappa_s <= 1e-14)
    assert relative_error(dx, dx_s) < 1e-12
    # dbeta and dgamma: each route sums the same m terms (dy, or dy * x_hat); a sum of m terms is within
    # (m - 1) u sum|terms| of the exact sum, so two routes differ by at most 2 (m - 1) u sum|terms|
    # = (m - 1) EPS64 * m * mean|terms|.
    assert np.all(np.abs(dbeta - dbeta_s) <= (m - 1) * EPS64 * m * mean_dy.reshape(-1))
    assert np.all(np.abs(dgamma - dgamma_s) <= (m - 1) * EPS64 * m * mean_dyx.reshape(-1))


@settings(max_examples=150, deadline=None)
@given(case=bn_cases(max_size=600, max_loc=100.0, log_scale=(-3.0, 3.0)))
def test_staged_and_compact_backward_agree(case):
    staged_compact_property(case, batch_norm_backward)


def test_a_planted_bug_fails_the_staged_compact_property():
    """The agreement property must fail for a compact backward that returns dx * 1e-30 whenever m > 6."""
    prop = settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate])(
        given(case=bn_cases(max_size=600, max_loc=100.0, log_scale=(-3.0, 3.0)))(
            lambda case: staged_compact_property(case, planted_tiny_dx)
        )
    )
    with pytest.raises(AssertionError):
        prop()


@BACKWARDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_cache_does_not_alias_the_callers_arrays(backward, dtype):
    """The cache holds the forward pass's own copies: a caller that reuses its buffers after the forward
    pass (as a training loop does) must not change what the backward pass returns. Before the cache
    copied x and gamma, mutating them changed what both backward passes return (on this example by 2.5 in
    the staged dx and 0.71 in the compact dx, the compact one through gamma alone)."""
    rng = np.random.default_rng(81)
    x, dy = rng.normal(1.0, 2.0, size=(8, 3)).astype(dtype), rng.normal(size=(8, 3)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.normal(size=3).astype(dtype)
    _, cache = batch_norm_forward(x, gamma, beta)
    before = backward(dy, cache)
    for name in ("x", "x_hat", "mean", "var", "inv_std", "gamma"):
        for caller_array in (x, gamma, beta):
            assert not np.shares_memory(getattr(cache, name), caller_array), name
    x += rng.normal(size=x.shape).astype(dtype)  # the caller reuses its buffers
    gamma *= 2
    beta -= 1
    after = backward(dy, cache)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


# ====================================================================================================
# Forward properties
# ====================================================================================================


def unit_roundoff(dtype) -> float:
    """Machine epsilon of the compute dtype (float16 is computed in float32): twice the unit roundoff."""
    return float(np.finfo(np.result_type(dtype, np.float32)).eps)


def x_hat_tol(m: int, dtype) -> float:
    """Bound (XHAT) on |x_hat_computed - x_hat| in units of max|x_hat| (module docstring)."""
    return (2 * m + 4) * unit_roundoff(dtype)


def y_tol(case: Case, x_hat: np.ndarray, dtype, extra_rel: np.ndarray | float = 0.0) -> np.ndarray:
    """Per-channel bound on |y_computed - y| for y = gamma x_hat + beta, shape bshape.

    The reference computes y = fl(fl(gamma * x_hat) + beta), with gamma and beta first cast to the compute
    dtype. Its error is gamma times the x_hat error (XHAT, plus ``extra_rel`` for input-rounding terms in
    units of x_hat), plus three roundings of size u |gamma x_hat| (casting gamma, the product, the sum) and
    two of size u |beta| (casting beta, the sum).
    """
    u = unit_roundoff(dtype)
    g = np.abs(case.gamma).reshape(case.bshape)
    b = np.abs(case.beta).reshape(case.bshape)
    xmax = np.max(np.abs(x_hat), axis=case.reduce_axes, keepdims=True)
    return g * (x_hat_tol(case.m, dtype) * xmax + extra_rel) + u * (3 * g * xmax + 2 * b)


def dx_tol(m: int, dtype, k: np.ndarray, dy_max: np.ndarray, x_hat_max: np.ndarray) -> np.ndarray:
    """Per-channel bound on |dx_computed - dx| for eq-dx-compact, dx = k (dy - dbeta/m - x_hat dgamma/m).

    With T = max|dy| (1 + max|x_hat|^2), which bounds |dy|, |dbeta|/m and |x_hat dgamma|/m: the sums behind
    dbeta and dgamma are within (m - 1) u of m T; inv_std, hence k, within (m/2 + 3) u (module docstring);
    forming k, the products and the two differences rounds 6 more times. The x_hat error (XHAT) enters
    twice, through dgamma and through x_hat dgamma, each time times max|dy| max|x_hat|.
    """
    e = unit_roundoff(dtype)
    t = dy_max * (1 + x_hat_max**2)
    return k * ((m - 1 + m / 2 + 3 + 6) * e * t + 2 * x_hat_tol(m, dtype) * x_hat_max**2 * dy_max)


forward_cases = bn_cases(max_size=600, max_loc=1e3, log_scale=(-3.0, 3.0), min_m=2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=60, deadline=None)
@given(case=forward_cases)
def test_x_hat_has_zero_mean_and_variance_var_over_var_plus_eps(case, dtype):
    x = case.x.astype(dtype)
    _, cache = case.forward(x=x)
    x_hat = cache.x_hat.astype(np.float64)
    axes, m, u = case.reduce_axes, case.m, unit_roundoff(dtype)
    var_true = np.var(x.astype(np.float64), axis=axes)  # the exact statistics of the values given
    # Mean: the common shift from d_mean's rounding plus ~3u per element (XHAT); the test's own float64
    # pairwise mean adds m * eps64 at most.
    x_hat_max = np.max(np.abs(x_hat), axis=axes)
    assert np.all(np.abs(x_hat.mean(axis=axes)) <= (x_hat_tol(m, dtype) + m * EPS64) * x_hat_max)
    # Variance: the biased variance of x_hat is var / (var + eps) exactly. Per-element relative errors of
    # ~3u change it by 6u, inv_std's relative error (m/2 + 3)u by twice that; the common shift changes
    # nothing. So the relative error is at most (m + 12) u.
    ratio = var_true / (var_true + case.eps)
    assert np.all(np.abs(x_hat.var(axis=axes) - ratio) <= (m + 12) * u * ratio)
    # So "variance 1" holds only up to 1 - var/(var + eps) = eps/(var + eps) < eps/var.
    assert np.all(1 - x_hat.var(axis=axes) <= case.eps / var_true + (m + 12) * u)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=30, deadline=None)
@given(case=forward_cases, log_shift=st.floats(-3.0, 4.0), data=st.data())
def test_y_is_invariant_to_adding_a_constant_per_channel(case, dtype, log_shift, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    _, cache = case.forward(x=case.x.astype(np.float64))
    s = np.sqrt(cache.var + case.eps).reshape(case.bshape)
    shift = rng.choice([-1.0, 1.0], cache.mean.shape).reshape(case.bshape) * 10.0**log_shift * s
    x = case.x.astype(dtype)
    x_shifted = x + shift.astype(dtype)
    y, c1 = case.forward(x=x)
    y2, _ = case.forward(x=x_shifted)
    # Forming x + c rounds each element by u |x + c|: an error u |x + c| / s in x_hat units that no
    # algorithm can undo ("exact up to rounding of |c|/std relative"); each side also carries (XHAT).
    u = unit_roundoff(dtype)
    s_c = np.sqrt(c1.var.astype(np.float64) + case.eps).reshape(case.bshape)
    rel = (
        u
        * (
            np.max(np.abs(x_shifted), axis=case.reduce_axes, keepdims=True)
            + np.max(np.abs(x), axis=case.reduce_axes, keepdims=True)
        )
        / s_c
    )
    assert np.all(np.abs(y2.astype(np.float64) - y) <= 2 * y_tol(case, c1.x_hat, dtype, rel))


@settings(max_examples=30, deadline=None)
@given(case=forward_cases, k=st.integers(-20, 20))
def test_y_is_invariant_to_a_power_of_two_scale_when_eps_scales_too(case, k):
    """x -> 2**k x with eps -> 4**k eps scales every intermediate exactly, so y is bit-for-bit equal."""
    y, _ = case.forward()
    y2, _ = batch_norm_forward(case.x * 2.0**k, case.gamma, case.beta, eps=case.eps * 4.0**k, axis=case.axis)
    np.testing.assert_array_equal(y2, y)


@settings(max_examples=30, deadline=None)
@given(case=forward_cases, log_c=st.floats(-3.0, 3.0))
def test_y_is_invariant_to_scaling_a_channel_when_eps_scales_too(case, log_c):
    """Any c > 0: y(c x; c^2 eps) = y(x; eps) up to rounding c x (u |x| / s in x_hat units, as for a
    shift) and c^2 eps (u relative, less in s)."""
    rng = np.random.default_rng(int(abs(log_c) * 1e6))
    c = 10.0 ** (log_c + rng.uniform(-0.3, 0.3, case.gamma.shape))  # a different c per channel
    y, cache = case.forward()
    # a per-channel eps is not an option of the API, so scale one channel at a time
    for ch in range(c.size):
        one = np.ones_like(c)
        one[ch] = c[ch]
        y2, _ = batch_norm_forward(
            case.x * one.reshape(case.bshape), case.gamma, case.beta, eps=case.eps * c[ch] ** 2, axis=case.axis
        )
        sel = [slice(None)] * case.x.ndim
        sel[case.channel_axis] = ch
        s = np.sqrt(cache.var + case.eps).reshape(case.bshape)
        rounding_cx = EPS64 * (np.max(np.abs(case.x), axis=case.reduce_axes, keepdims=True) / s + 1)
        tol = 2 * y_tol(case, cache.x_hat, np.float64, rounding_cx)
        assert np.all(np.abs(y2[tuple(sel)] - y[tuple(sel)]) <= tol[tuple(sel)])


def test_scaling_without_scaling_eps_changes_y_by_the_predicted_amount():
    """y(c x; eps) = gamma x_hat sqrt((var + eps) / (var + eps / c^2)) + beta: the change is real (of order
    eps/var), matches that formula to rounding, and is bounded by |gamma x_hat| |1 - c^-2| eps / (2 var)."""
    rng = np.random.default_rng(3)
    eps = 1e-3
    x = np.stack([rng.normal(0, 0.05, 64), rng.normal(2, 1.0, 64), rng.normal(-1, 10.0, 64)], axis=1)
    gamma, beta = np.array([1.5, -0.5, 2.0]), np.array([0.1, 0.2, -0.3])
    y, cache = batch_norm_forward(x, gamma, beta, eps=eps)
    var = cache.var
    for c in (0.1, 0.5, 3.0, 100.0):
        y2, _ = batch_norm_forward(c * x, gamma, beta, eps=eps)
        ratio = np.sqrt((var + eps) / (var + eps / c**2))
        predicted = gamma * cache.x_hat * ratio + beta
        # y2 and predicted each carry (XHAT); forming c * x rounds by u |x| / sqrt(var) in x_hat units; ratio
        # inherits half of var's (m + 2) u and 4 roundings of its own; the products and the sum round
        # 3 times, on |gamma x_hat| and |y|. In EPS64 = 2u, with the x_hat bound counted once per side:
        x_hat_max = np.max(np.abs(cache.x_hat), axis=0)
        x_over_std = np.max(np.abs(x), axis=0) / np.sqrt(var)
        tol = np.abs(gamma) * x_hat_max * (
            2 * x_hat_tol(64, np.float64) + EPS64 * (x_over_std + 64 / 4 + 7)
        ) + EPS64 * np.abs(beta)
        assert np.all(np.abs(y2 - predicted) <= tol)
        bound = np.abs(gamma * cache.x_hat) * abs(1 - c**-2) * eps / (2 * var)
        assert np.all(np.abs(y2 - y) <= bound + tol)
        # channel 0 has var ~ 2.5e-3 ~ eps: the change is far above rounding
        assert np.max(np.abs(y2 - y)[:, 0]) > 1e3 * tol[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nchw_and_nhwc_layouts_give_the_same_result(dtype):
    rng = np.random.default_rng(11)
    n, c, h, w = 4, 3, 5, 6
    scale, loc = np.array([1.0, 10.0, 0.1]).reshape(1, c, 1, 1), np.array([0.0, 50.0, -3.0]).reshape(1, c, 1, 1)
    x = (loc + scale * rng.normal(size=(n, c, h, w))).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    y1, c1 = batch_norm_forward(x, gamma, beta, axis=1)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y2, c2 = batch_norm_forward(x_nhwc, gamma, beta, axis=-1)
    assert c1.m == c2.m == n * h * w
    # Same values, different memory order, so different summation order: each side within (XHAT).
    tol = 2 * y_tol(Case(x, gamma, beta, dy, 1e-5, 1), c1.x_hat, dtype)  # each side within y_tol
    assert np.all(np.abs(y2.transpose(0, 3, 1, 2) - y1) <= tol)
    np.testing.assert_allclose(c2.mean, c1.mean, rtol=2 * c1.m * unit_roundoff(dtype), atol=0)
    np.testing.assert_allclose(c2.var, c1.var, rtol=2 * (c1.m + 6) * unit_roundoff(dtype), atol=0)
    dx1, dg1, db1 = batch_norm_backward(dy, c1)
    dx2, dg2, db2 = batch_norm_backward(np.ascontiguousarray(dy.transpose(0, 2, 3, 1)), c2)
    # Each layout's gradients are within dx_tol of the exact ones (the same values, summed in another
    # order); dbeta and dgamma are sums of m terms, within (m - 1) EPS of m max|dy| (times max|x_hat|,
    # plus the x_hat error times m max|dy|, for dgamma).
    m, e = c1.m, unit_roundoff(dtype)
    axes = (0, 2, 3)
    dy_max = np.max(np.abs(dy), axis=axes).astype(np.float64)
    x_hat_max = np.max(np.abs(c1.x_hat), axis=axes).astype(np.float64)
    k = np.abs(gamma) * c1.inv_std
    tol_dx = 2 * dx_tol(m, dtype, k, dy_max, x_hat_max)
    assert np.all(np.abs(dx2.transpose(0, 3, 1, 2) - dx1) <= tol_dx.reshape(1, c, 1, 1))
    assert np.all(np.abs(db2 - db1) <= 2 * (m - 1) * e * m * dy_max)
    tol_dgamma = 2 * m * dy_max * ((m - 1) * e * x_hat_max + x_hat_tol(m, dtype) * x_hat_max)
    assert np.all(np.abs(dg2 - dg1) <= tol_dgamma)


def test_non_contiguous_inputs_agree_with_their_contiguous_copies():
    """Strided, reversed and Fortran-ordered views. NumPy may sum them in memory order, so the results
    agree to rounding (XHAT on each side), not necessarily bit for bit."""
    rng = np.random.default_rng(12)
    base = rng.normal(3.0, 2.0, size=(6, 5, 4))
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    for view in (base[:, :, ::-1], base[::2], np.asfortranarray(base), base[..., 1:], base[::-1, ::-1]):
        y1, c1 = batch_norm_forward(view, gamma, beta, axis=1)
        y2, c2 = batch_norm_forward(np.ascontiguousarray(view), gamma, beta, axis=1)
        case = Case(np.ascontiguousarray(view), gamma, beta, np.zeros(view.shape), 1e-5, 1)
        assert np.all(np.abs(y1 - y2) <= 2 * y_tol(case, c2.x_hat, np.float64))  # each side within y_tol
        dy = rng.normal(size=view.shape)
        dy_view = np.asfortranarray(dy)  # a non-C-contiguous dy as well
        (dx1, dg1, db1), (dx2, dg2, db2) = batch_norm_backward(dy_view, c1), batch_norm_backward(dy, c2)
        m, axes = c1.m, (0, 2)
        dy_max, x_hat_max = np.max(np.abs(dy), axis=axes), np.max(np.abs(c2.x_hat), axis=axes)
        tol_dx = 2 * dx_tol(m, np.float64, np.abs(gamma) * c2.inv_std, dy_max, x_hat_max)
        assert np.all(np.abs(dx1 - dx2) <= tol_dx.reshape(1, -1, 1))
        assert np.all(np.abs(db1 - db2) <= 2 * (m - 1) * EPS64 * m * dy_max)
        assert np.all(np.abs(dg1 - dg2) <= 2 * m * dy_max * ((m - 1) * EPS64 + x_hat_tol(m, np.float64)) * x_hat_max)


@pytest.mark.parametrize(
    "shape, axis, reduce",
    [((10, 3), 1, (0,)), ((4, 3, 5), 1, (0, 2)), ((2, 3, 4, 5), 1, (0, 2, 3)), ((2, 4, 5, 3), -1, (0, 1, 2))],
)
def test_values_per_channel_m_counts_every_reduced_axis(shape, axis, reduce):
    """m = N for dense inputs and N*H*W for images; the unbiased variance uses that m."""
    rng = np.random.default_rng(len(shape))
    x = rng.normal(1.0, 2.0, size=shape)
    c = shape[axis]
    _, cache = batch_norm_forward(x, np.ones(c), np.zeros(c), axis=axis)
    assert cache.m == math.prod(shape) // c
    np.testing.assert_allclose(cache.var, x.var(axis=reduce), rtol=(cache.m + 6) * EPS64)
    np.testing.assert_allclose(cache.unbiased_var, x.var(axis=reduce, ddof=1), rtol=(cache.m + 8) * EPS64)
    # the conv input is the dense input with N*H*W rows
    dense = np.moveaxis(x, axis, -1).reshape(-1, c)
    _, cache_dense = batch_norm_forward(dense, np.ones(c), np.zeros(c), axis=1)
    assert cache_dense.m == cache.m
    np.testing.assert_allclose(cache_dense.var, cache.var, rtol=2 * (cache.m + 6) * EPS64)


def test_float16_input_is_computed_in_float32_and_returned_as_float16():
    rng = np.random.default_rng(5)
    # m = 2048 values near 300: their float16 sum (6e5) would overflow float16 (max 65504)
    x16 = (300 + 4 * rng.normal(size=(2048, 3))).astype(np.float16)
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    y16, cache = batch_norm_forward(x16, gamma, beta)
    assert y16.dtype == np.float16
    assert cache.x.dtype == cache.x_hat.dtype == cache.mean.dtype == cache.var.dtype == np.float32
    # the float16 result is exactly the float32 computation on the same values, rounded once
    y32, cache32 = batch_norm_forward(x16.astype(np.float32), gamma, beta)
    np.testing.assert_array_equal(y16, y32.astype(np.float16))
    np.testing.assert_array_equal(cache.mean, cache32.mean)
    assert np.all(np.isfinite(y16))
    dy = rng.normal(size=x16.shape).astype(np.float16)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == np.float32  # documented: the compute dtype


def test_float64_gamma_does_not_promote_a_float32_forward():
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    y, cache = batch_norm_forward(x, np.array([1.0, 2.0]), np.array([0.5, 0.0]))
    assert y.dtype == cache.x_hat.dtype == cache.gamma.dtype == np.float32


# ====================================================================================================
# Numerical stability of the batch variance
# ====================================================================================================


@pytest.mark.parametrize("shape, axis", [((4096, 3), 1), ((16, 3, 16, 16), 1)])
def test_two_pass_variance_is_stable_where_one_pass_fails(shape, axis):
    rng = np.random.default_rng(21)
    x = (1e4 + rng.normal(size=shape)).astype(np.float32)
    axes = tuple(d for d in range(x.ndim) if d != axis)
    truth = x.astype(np.float64).var(axis=axes)  # the float32 values are exact in float64
    m = x.size // shape[axis]
    _, var_two = batch_mean_var(x, axis=axis)
    _, var_one = batch_mean_var(x, axis=axis, method="one-pass")
    rel_two = np.abs(var_two - truth) / truth
    rel_one = np.abs(var_one - truth) / truth
    # The bound, and the two-pass worst case (a sum of m positive squares: (m + 2) u).
    assert np.all(rel_two < 1e-3)
    assert np.all(rel_two <= (m + 2) * EPS32)
    # One-pass: E[x^2] ~ 1e8 lies in [2**26, 2**27), where float32 numbers are 8 apart, so
    # E[x^2] - E[x]^2 is a multiple of 8 (or worse) while the truth is ~1: every digit is lost.
    assert np.all(rel_one > 1e-3)
    assert np.all(rel_one > 0.5)


def test_float32_forward_keeps_x_hat_accurate_at_mean_over_std_1e4():
    rng = np.random.default_rng(22)
    x = (1e4 + rng.normal(size=(512, 4))).astype(np.float32)
    x64 = x.astype(np.float64)
    x_hat_true = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    _, cache = batch_norm_forward(x, np.ones(4), np.zeros(4))
    err = np.max(np.abs(cache.x_hat - x_hat_true))
    # (XHAT): independent of |mean|/std = 1e4; about 1.5e-4 here, against an O(1) input.
    assert err <= x_hat_tol(512, np.float32) * np.max(np.abs(x_hat_true))
    # For contrast, x_hat from the one-pass statistics in float32 is wrong at O(1).
    mean1, var1 = batch_mean_var(x, method="one-pass")
    with np.errstate(invalid="ignore", divide="ignore"):
        x_hat_one = (x - mean1) / np.sqrt(np.maximum(var1, 0) + np.float32(1e-5))
    assert np.max(np.abs(x_hat_one - x_hat_true)) > 0.1


# ====================================================================================================
# Running statistics: each convention's rule, computed here from its documentation
# ====================================================================================================


def make_batches(k: int, shape: tuple[int, ...], axis: int, seed: int, dtype=np.float64) -> list[np.ndarray]:
    """k batches with different per-channel locations and scales (|mean|/std <= 2)."""
    rng = np.random.default_rng(seed)
    c = shape[axis]
    bshape = tuple(c if d == axis % len(shape) else 1 for d in range(len(shape)))
    out = []
    for _ in range(k):
        sigma = rng.uniform(0.5, 2.0, c)
        mu = rng.uniform(-1.0, 1.0, c) * sigma
        out.append((mu.reshape(bshape) + sigma.reshape(bshape) * rng.normal(size=shape)).astype(dtype))
    return out


def batch_stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(mean, biased var, unbiased var, m) of one batch, straight from NumPy."""
    axes = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
    m = x.size // x.shape[axis]
    return x.mean(axis=axes), x.var(axis=axes), x.var(axis=axes, ddof=1), m


def expected_running(name: str, batches: list[np.ndarray], axis: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The running (mean, var) after each batch, by each convention's documented rule."""
    c = batches[0].shape[axis]
    mean, var = np.zeros(c), np.ones(c)
    seen = []
    out = []
    for x in batches:
        mu, v_biased, v_unbiased, _ = batch_stats(x, axis)
        seen.append((mu, v_biased, v_unbiased))
        if name == "pytorch":  # torch docs: x_new = (1 - momentum) x + momentum x_t, momentum = 0.1, unbiased
            mean, var = 0.9 * mean + 0.1 * mu, 0.9 * var + 0.1 * v_unbiased
        elif name == "keras":  # keras docs: moving = moving * momentum + batch * (1 - momentum), 0.99, biased
            mean, var = mean * 0.99 + mu * 0.01, var * 0.99 + v_biased * 0.01
        elif name == "pytorch-cumulative":  # momentum=None: the simple (cumulative) average of what was seen
            mean = np.mean([s[0] for s in seen], axis=0)
            var = np.mean([s[2] for s in seen], axis=0)
        elif name == "paper":  # Algorithm 2: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2]
            m = batches[0].size // c
            mean = np.mean([s[0] for s in seen], axis=0)
            var = m / (m - 1) * np.mean([s[1] for s in seen], axis=0)
        out.append((mean, var))
    return out


@pytest.mark.parametrize("convention", [PYTORCH, PYTORCH_CUMULATIVE, KERAS, PAPER], ids=lambda c: c.name)
@pytest.mark.parametrize("shape, axis", [((8, 3), 1), ((4, 3, 2, 2), 1), ((3, 2, 2, 3), -1)])
def test_running_statistics_follow_each_conventions_rule(convention, shape, axis):
    k = 6
    batches = make_batches(k, shape, axis, seed=31)
    stats = RunningStats(shape[axis], convention)
    expected = expected_running(convention.name, batches, axis)
    m = math.prod(shape) // shape[axis]
    for step, (x, (mean_e, var_e)) in enumerate(zip(batches, expected, strict=True), start=1):
        c = shape[axis]
        _, cache = batch_norm_forward(x, np.ones(c), np.zeros(c), eps=convention.eps, axis=axis)
        stats.update(cache)
        assert stats.num_batches_tracked == step
        # Both sides in float64: batch statistics within (m + 6) eps64 relative, and 3 eps64 per update.
        tol = (m + 6 + 3 * step) * EPS64
        # a mean of m values is within (m - 1) u max|x| of the exact one: absolute, in units of max|x|
        x_max = max(float(np.max(np.abs(xb))) for xb in batches[:step])
        np.testing.assert_allclose(stats.mean, mean_e, rtol=0, atol=tol * x_max)
        np.testing.assert_allclose(stats.var, var_e, rtol=tol, atol=0)
    # the sequence really moved away from the initial (0, 1)
    assert np.max(np.abs(stats.var - 1)) > 1e-3


def test_paper_running_statistics_are_the_population_statistics_of_algorithm_2():
    """After k batches of equal size m: E[x] = mean of the batch means, Var[x] = m/(m-1) * mean of the
    biased batch variances. It is not the unbiased variance of all k*m values pooled (that also counts
    the spread of the batch means), which the test also shows."""
    batches = make_batches(5, (6, 4), 1, seed=32)
    stats = RunningStats(4, PAPER)
    for x in batches:
        stats.update(batch_norm_forward(x, np.ones(4), np.zeros(4), eps=PAPER.eps)[1])
    means = np.array([x.mean(0) for x in batches])
    variances = np.array([x.var(0) for x in batches])
    # k = 5 cumulative updates of 3 roundings each, batch statistics of m = 6 values (m + 6 roundings,
    # module docstring) and the test's own mean of k values (k roundings), on both sides: eps64 counts
    k, m = 5, 6
    np.testing.assert_allclose(stats.mean, means.mean(0), rtol=0, atol=(3 * k + m + k) * EPS64 * np.max(np.abs(means)))
    np.testing.assert_allclose(stats.var, 6 / 5 * variances.mean(0), rtol=(3 * k + m + 6 + k + 2) * EPS64)
    pooled = np.concatenate(batches).var(0, ddof=1)
    assert np.all(np.abs(stats.var - pooled) > 1e-3 * pooled)
    # the same rule as PyTorch with momentum=None
    cumulative = RunningStats(4, PYTORCH_CUMULATIVE)
    for x in batches:
        cumulative.update(batch_norm_forward(x, np.ones(4), np.zeros(4))[1])
    np.testing.assert_array_equal(cumulative.var, stats.var)


def test_running_update_and_update_running_stats_directly():
    r, b = np.array([1.0, 2.0]), np.array([3.0, -2.0])
    # both sides: two products and a sum, 3 roundings each, on positive-weight terms: 3 eps64 relative apart
    np.testing.assert_allclose(running_update(r, b, 0.25), 0.75 * r + 0.25 * b, rtol=3 * EPS64)
    np.testing.assert_array_equal(running_update(r, b, 1.0), b)
    np.testing.assert_array_equal(running_update(r, b, 0.0), r)
    mean, var = update_running_stats(
        np.zeros(2), np.ones(2), b, np.array([2.0, 4.0]), m=5, step=1, convention="pytorch"
    )
    np.testing.assert_allclose(mean, 0.1 * b, rtol=3 * EPS64)
    np.testing.assert_allclose(var, 0.9 + 0.1 * np.array([2.0, 4.0]) * 5 / 4, rtol=3 * EPS64)
    mean, var = update_running_stats(
        np.zeros(2), np.ones(2), b, np.array([2.0, 4.0]), m=1, step=3, convention=KERAS
    )  # biased: m = 1 is fine
    np.testing.assert_allclose(var, 0.99 + 0.01 * np.array([2.0, 4.0]), rtol=3 * EPS64)


class TestRunningStatsBookkeeping:
    def test_initial_values_come_from_the_convention(self):
        for conv in (PYTORCH, KERAS, PAPER, PYTORCH_CUMULATIVE):
            stats = RunningStats(5, conv)
            np.testing.assert_array_equal(stats.mean, np.full(5, conv.init_mean))
            np.testing.assert_array_equal(stats.var, np.full(5, conv.init_var))
            assert stats.num_batches_tracked == 0 and stats.mean.dtype == np.float64

    def test_convention_by_name_and_dtype(self):
        x = make_batches(1, (6, 2), 1, seed=1)[0]
        _, cache = batch_norm_forward(x, np.ones(2), np.zeros(2))
        by_name, by_obj = RunningStats(2, "keras", dtype=np.float32), RunningStats(2, KERAS, dtype=np.float32)
        by_name.update(cache)
        by_obj.update(cache)
        assert by_name.convention is KERAS
        assert by_name.mean.dtype == by_name.var.dtype == np.float32
        np.testing.assert_array_equal(by_name.var, by_obj.var)

    def test_counts_batches_and_reports_itself(self):
        stats = RunningStats(2, PYTORCH)
        for x in make_batches(3, (5, 2), 1, seed=2):
            stats.update(batch_norm_forward(x, np.ones(2), np.zeros(2))[1])
        assert stats.num_batches_tracked == 3
        assert "pytorch" in repr(stats) and "num_batches_tracked=3" in repr(stats)

    def test_rejects_a_cache_with_another_channel_count(self):
        stats = RunningStats(3, PYTORCH)
        _, cache = batch_norm_forward(np.random.default_rng(0).normal(size=(4, 2)), np.ones(2), np.zeros(2))
        with pytest.raises(ValueError, match="cache must hold 3 channels, as these statistics do; got 2"):
            stats.update(cache)
        assert stats.num_batches_tracked == 0  # a rejected update leaves no trace

    def test_unknown_convention_name(self):
        with pytest.raises(ValueError, match="unknown convention 'caffe'"):
            RunningStats(3, "caffe")


@pytest.mark.parametrize("loc", [0.0, 1e3])
def test_running_stats_feed_the_one_pass_variance_of_a_one_pass_convention(loc):
    """FLAX (use_fast_variance=True) feeds mean(x^2) - mean(x)^2 to the running variance; FLAX_TWO_PASS the
    two-pass variance. In float32 they differ as the one-pass law says (eq-fwd-one-pass): the two-pass variance
    stays within ``e + (e (r + X))^2`` of the truth (appendix eq-bound-two-pass; ``e = reduction_error``,
    ``r = |mean|/std``, ``X = max|x_hat|``); the one-pass one within ``4 e (r + 1)^2`` (the rounding of
    mean(x^2), ``e (r^2 + 1)``, and of mean(x)^2, ``2 e (r + 1)^2``, relative to the variance), and at
    ``r = 1e3`` it is off by the order of ``u r^2``: the spacing of float32 numbers near ``mean(x^2) = 1e6``.
    With momentum 0 (weight 1 on the batch) the running variance is the variance fed."""
    m, c = 256, 8
    x = (loc + np.random.default_rng(5).normal(size=(m, c))).astype(np.float32)
    _, cache = batch_norm_forward(x, np.ones(c), np.zeros(c), eps=FLAX.eps, axis=-1)
    fed = {}
    for conv in (FLAX, FLAX_TWO_PASS):
        stats = RunningStats(c, conv.replace(momentum=0.0))
        stats.update(cache)
        fed[conv.var_method] = stats.var
    x64 = x.astype(np.float64)  # the float32 values, exactly
    truth = x64.var(axis=0)
    r = np.abs(x64.mean(axis=0)) / np.sqrt(truth)
    big_x = np.max(np.abs(x64 - x64.mean(axis=0)), axis=0) / np.sqrt(truth)
    e = reduction_error("float32", m)
    err_two = np.abs(fed["two-pass"] - truth) / truth
    err_one = np.abs(fed["one-pass"] - truth) / truth
    assert np.all(err_two <= e + (e * (r + big_x)) ** 2)
    assert np.all(err_one <= 4 * e * (r + 1) ** 2)
    if loc > 0:
        u = machine_eps("float32") / 2
        assert np.max(err_one) > u * np.min(r) ** 2 / 10  # the order of the one-pass law, u r^2
        assert np.all(err_one > 0) and np.max(err_one) > 100 * np.max(e + (e * (r + big_x)) ** 2)


# ====================================================================================================
# The zero-variance (constant) channel
# ====================================================================================================


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_constant_channel(dtype):
    """A constant channel has var = 0, so x_hat = 0 and y = beta there, exactly. Its gradients stay finite:
    dgamma = 0, dbeta = sum(dy), and dx = gamma / sqrt(eps) * (dy - mean(dy)) -- not zero: a constant
    channel still passes on the centred upstream gradient, amplified by 1/sqrt(eps). dx is zero there
    only when dy is constant on the channel too."""
    rng = np.random.default_rng(41)
    x = rng.normal(size=(6, 3)).astype(dtype)
    x[:, 1] = dtype(0.1)  # 0.1 is not a binary fraction: the float mean is not exactly 0.1 * 6 / 6
    gamma, beta = np.array([1.0, 1.7, 0.5], dtype), np.array([0.0, -0.3, 2.0], dtype)
    eps = 1e-5
    y, cache = batch_norm_forward(x, gamma, beta, eps=eps)
    assert cache.var[1] == 0
    assert np.all(cache.x_hat[:, 1] == 0)
    assert np.all(y[:, 1] == beta[1])
    dy = rng.normal(size=x.shape).astype(dtype)
    for backward in (batch_norm_backward, batch_norm_backward_staged):
        dx, dgamma, dbeta = backward(dy, cache)
        assert np.all(np.isfinite(dx)) and dgamma[1] == 0
        u = unit_roundoff(dtype)
        k = 1.7 / np.sqrt(cache.var[1] + np.float64(eps))
        expected = k * (dy[:, 1] - dy[:, 1].mean(dtype=np.float64))
        # x_hat = 0 here, so dx = k (m dy - dbeta) / m: dbeta/m within (m - 1) u max|dy| plus its division,
        # m dy and the difference u m max|dy| and 2 u m max|dy|, k within 5 u (eps cast to the dtype, sqrt,
        # reciprocal, gamma, 1/m) of a bracket <= 2 max|dy|, the final product u 2 max|dy|: (m + 14) u k max|dy|
        # in all (u = EPS/2; unit_roundoff returns EPS, a factor 2 of margin, as everywhere here).
        m, dy_max = 6, float(np.max(np.abs(dy[:, 1])))
        np.testing.assert_allclose(dx[:, 1], expected, rtol=0, atol=(m + 14) * u * k * dy_max)
        # a sum of m terms: within (m - 1) u sum|dy| of the exact sum
        np.testing.assert_allclose(
            dbeta[1], dy[:, 1].sum(dtype=np.float64), rtol=0, atol=(m - 1) * u * float(np.sum(np.abs(dy[:, 1])))
        )
    dy_const = np.ones_like(dy) * dtype(0.5)
    dx, _, _ = batch_norm_backward(dy_const, cache)
    assert np.all(dx[:, 1] == 0)
    if dtype == np.float64:
        # and it is the derivative: central differences with steps scaled to s = sqrt(eps) (the plain
        # step 1e-5 would be 3e-3 of s here and give a truncation error ~ 1e-6, see the analysis above)
        case = Case(x, gamma, beta, dy, eps, 1)
        for backward in (batch_norm_backward, batch_norm_backward_staged):
            err, kappa = check_against_central_differences(case, backward)
            assert kappa <= KAPPA_MAX and err < 1e-8


# ====================================================================================================
# The reference reproduces the frameworks' running buffers (torch.nn.BatchNorm*, keras BatchNormalization)
# ====================================================================================================
#
# The frameworks run in float32; the reference runs on the same float32 values converted to float64,
# so the difference is the frameworks' float32 rounding, bounded as follows (EPS32 = 2u, for margin):
# * a batch mean is a sum of m values: |error| <= m EPS32 max|x| (worst case of recursive summation);
# * a batch variance is a sum of m squares of centred values; the centring and the sum give a relative
#   error <= (m + 4) EPS32 (1 + |mean|/std)^2 (the last factor covers an implementation that centres
#   with a rounded mean or accumulates a shifted Welford update);
# * each running update (1 - w) r + w b rounds three times: 3 EPS32 |r| per step;
# * the update is a convex combination, so after k steps the errors of the batch statistics do not
#   grow, and the update roundings add up: the bound is max(batch error) + 3 k EPS32 max|r|.
# With m <= 64 and |mean|/std <= 2 this is below 1e-4 relative, while the differences the test must
# detect -- biased vs unbiased variance (a factor m/(m-1), >= 1.6% here), a wrong momentum or a wrong
# initial value -- are at least 10x larger; each test also shows that the wrong convention misses.


def framework_tolerances(batches: list[np.ndarray], axis: int, k: int) -> tuple[float, np.ndarray]:
    """(absolute tolerance for the running mean, relative tolerance per channel for the running var)."""
    stats = [batch_stats(x.astype(np.float64), axis) for x in batches]
    m = stats[0][3]
    max_x = max(float(np.max(np.abs(x))) for x in batches)
    loc = max(float(np.max(np.abs(mu) / np.sqrt(v))) for mu, v, _, _ in stats)
    atol_mean = EPS32 * (m * max_x + 3 * k * max(max_x, 1.0))
    rtol_var = EPS32 * ((m + 4) * (1 + loc) ** 2 + 3 * k)
    return atol_mean, rtol_var


def reference_buffers(batches, axis, convention):
    c = batches[0].shape[axis]
    stats = RunningStats(c, convention)
    for x in batches:
        _, cache = batch_norm_forward(x.astype(np.float64), np.ones(c), np.zeros(c), eps=convention.eps, axis=axis)
        stats.update(cache)
    return stats


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("convention", [PYTORCH, PYTORCH_CUMULATIVE], ids=lambda c: c.name)
@pytest.mark.parametrize(
    "module, shape", [("BatchNorm1d", (16, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (4, 3, 4, 4))]
)
def test_reference_reproduces_torch_running_buffers(torch, module, shape, convention, k):
    batches = make_batches(k, shape, 1, seed=51 + k, dtype=np.float32)
    bn = getattr(torch.nn, module)(shape[1], momentum=convention.momentum)
    assert bn.eps == convention.eps and bn.training
    with torch.no_grad():
        for x in batches:
            bn(torch.from_numpy(x))
    ref = reference_buffers(batches, 1, convention)
    atol_mean, rtol_var = framework_tolerances(batches, 1, k)
    assert int(bn.num_batches_tracked) == ref.num_batches_tracked == k
    np.testing.assert_allclose(bn.running_mean.numpy(), ref.mean, rtol=0, atol=atol_mean)
    np.testing.assert_allclose(bn.running_var.numpy(), ref.var, rtol=rtol_var, atol=0)
    # the check has teeth: the biased running variance (Keras' choice) and a misread momentum fail it
    wrong = reference_buffers(batches, 1, convention.replace(running_var="biased"))
    assert np.all(np.abs(bn.running_var.numpy() - wrong.var) > rtol_var * wrong.var)
    misread = (
        convention.replace(momentum=0.5) if convention.momentum is None else convention.replace(momentum_weights="old")
    )
    wrong = reference_buffers(batches, 1, misread)
    assert np.all(np.abs(bn.running_mean.numpy() - wrong.mean) > atol_mean)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")  # a failure, not a skip, under BNREF_REQUIRE_FRAMEWORKS=1 (tests/conftest.py)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 3, 4)], ids=["dense", "NHWC"])
def test_reference_reproduces_keras_moving_statistics(keras, shape, k):
    batches = make_batches(k, shape, -1, seed=61 + k, dtype=np.float32)
    layer = keras.layers.BatchNormalization()  # defaults: axis=-1, momentum=0.99, epsilon=1e-3
    assert layer.axis == KERAS.axis and layer.momentum == KERAS.momentum and layer.epsilon == KERAS.eps
    for x in batches:
        layer(x, training=True)
    ref = reference_buffers(batches, -1, KERAS)
    atol_mean, rtol_var = framework_tolerances(batches, -1, k)
    moving_mean = np.asarray(layer.moving_mean.numpy())
    moving_var = np.asarray(layer.moving_variance.numpy())
    np.testing.assert_allclose(moving_mean, ref.mean, rtol=0, atol=atol_mean)
    np.testing.assert_allclose(moving_var, ref.var, rtol=rtol_var, atol=0)
    # teeth: PyTorch's unbiased running variance, or momentum read as the weight of the new value, fail.
    # (With momentum 0.99 one step moves the estimate by 1% only, so the unbiased/biased difference is
    # 0.01 var / (m - 1): 1.4e-4 relative for NHWC with m = 36, against a float32 bound of 2.5e-5.)
    wrong = reference_buffers(batches, -1, KERAS.replace(running_var="unbiased"))
    assert np.all(np.abs(moving_var - wrong.var) > rtol_var * wrong.var)
    wrong = reference_buffers(batches, -1, KERAS.replace(momentum_weights="new"))
    assert np.all(np.abs(moving_mean - wrong.mean) > atol_mean)


# ====================================================================================================
# Inference mode and folding
# ====================================================================================================


def test_inference_matches_its_formula_and_its_affine_form():
    rng = np.random.default_rng(71)
    x = rng.normal(2.0, 3.0, size=(5, 4, 3, 3))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    rm, rv = rng.normal(2.0, 1.0, size=4), rng.uniform(0.5, 9.0, size=4)
    b = (1, 4, 1, 1)
    y = batch_norm_inference(x, gamma, beta, rm, rv, eps=1e-3)
    direct = gamma.reshape(b) * (x - rm.reshape(b)) / np.sqrt(rv.reshape(b) + 1e-3) + beta.reshape(b)
    # The same x - rm and sqrt(rv + eps) on both sides; gamma * (d / q) and (gamma * d) / q round twice each
    # on |gamma x_hat|, and each final sum once on |y|.
    g_x_hat = np.abs(gamma.reshape(b) * (x - rm.reshape(b)) / np.sqrt(rv.reshape(b) + 1e-3))
    assert np.all(np.abs(y - direct) <= EPS64 * (2 * g_x_hat + np.abs(direct)))
    scale, shift = inference_affine(gamma, beta, rm, rv, eps=1e-3)
    # With A = |scale| (|x| + |rm|): rounding scale costs u A, the products x * scale and scale * rm u A,
    # the shift u (|beta| + A), the final sum u (A + |beta|); y itself is within u (4 A + |beta|) (x - rm,
    # the division, the product, the sum). In all 8 A + 3 |beta| units of u = EPS64 / 2.
    a = np.abs(scale).reshape(b) * (np.abs(x) + np.abs(rm).reshape(b))
    tol = EPS64 * (4 * a + 1.5 * np.abs(beta).reshape(b))
    assert np.all(np.abs(scale.reshape(b) * x + shift.reshape(b) - y) <= tol)
    # each sample's output depends on that sample alone; a batch of one is fine in inference
    np.testing.assert_array_equal(batch_norm_inference(x[2:3], gamma, beta, rm, rv, eps=1e-3), y[2:3])
    # with the batch's own (biased) statistics, inference is the training transform
    y_train, cache = batch_norm_forward(x, gamma, beta, eps=1e-3)
    y_inf = batch_norm_inference(x, gamma, beta, cache.mean, cache.var, eps=1e-3)
    # Training is within y_tol. Inference subtracts the rounded mean (u |mean| / s in x_hat units) and
    # rounds x - mean, the division, the product and the sum: u (|gamma| (|mean| / s + 3 |x_hat|) + |y|).
    s = np.sqrt(cache.var + 1e-3).reshape(b)
    g = np.abs(gamma).reshape(b)
    tol = y_tol(Case(x, gamma, beta, x, 1e-3, 1), cache.x_hat, np.float64) + EPS64 * (
        g * (np.abs(cache.mean).reshape(b) / s + 3 * np.abs(cache.x_hat)) + np.abs(y_train)
    )
    assert np.all(np.abs(y_inf - y_train) <= tol)


def test_inference_dtypes():
    x16 = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float16)
    y = batch_norm_inference(x16, [1.0, 2.0], [0.0, 1.0], [0.1, 0.2], [1.0, 2.0])
    assert y.dtype == np.float16
    scale, shift = inference_affine(
        np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32), np.ones(2, np.float32)
    )
    assert scale.dtype == shift.dtype == np.float32


@pytest.mark.parametrize("layout", ["keras-dense", "torch-linear", "keras-conv", "torch-conv"])
def test_folding_bn_into_the_preceding_layer(layout):
    rng = np.random.default_rng(72)
    c_in, c_out = 5, 4
    gamma, beta = rng.normal(size=c_out), rng.normal(size=c_out)
    rm, rv = rng.normal(size=c_out), rng.uniform(0.5, 2.0, size=c_out)
    scale, shift = inference_affine(gamma, beta, rm, rv)
    bias = rng.normal(size=c_out)
    if layout in ("keras-dense", "torch-linear"):
        x = rng.normal(size=(6, c_in))
        w = rng.normal(size=(c_in, c_out)) if layout == "keras-dense" else rng.normal(size=(c_out, c_in))
        out_axis = -1 if layout == "keras-dense" else 0
        b = (1, c_out)

        def layer(w_, b_, x_=x):
            return (x_ @ w_ if layout == "keras-dense" else x_ @ w_.T) + b_
    else:  # a 1x1 convolution is a per-pixel matrix product; kernel (1, 1, in, out) or (out, in, 1, 1)
        x = rng.normal(size=(2, c_in, 3, 3))
        w = rng.normal(size=(1, 1, c_in, c_out) if layout == "keras-conv" else (c_out, c_in, 1, 1))
        out_axis = -1 if layout == "keras-conv" else 0
        b = (1, c_out, 1, 1)

        def layer(w_, b_, x_=x):
            kernel = w_[0, 0] if layout == "keras-conv" else w_[:, :, 0, 0].T
            return np.einsum("nihw,io->nohw", x_, kernel) + b_.reshape(b)

    axis = 1
    z = layer(w, bias)
    y = batch_norm_inference(z, gamma, beta, rm, rv, axis=axis)
    w_f, b_f = fold_into_preceding(w, bias, scale, shift, out_axis=out_axis)
    assert w_f.shape == w.shape
    # With P = |x| |W| + |bias| (the layer on absolute values): z is within (c_in + 1) u P; BN then rounds
    # z - rm, the division, the product and the sum (u |scale| (P + |rm|), 2 u |scale| P, u |y|). The folded
    # route rounds W * scale, the c_in products and sums ((c_in + 2) u |scale| P) and b * scale + shift
    # (2 u (|bias scale| + |shift|)). In EPS64 = 2u, the sum of both routes is below:
    p = layer(np.abs(w), np.abs(bias), x_=np.abs(x))
    sc, sh, rm_ = (np.abs(v).reshape(b) for v in (scale, shift, rm))
    tol = EPS64 * (sc * ((c_in + 3) * p + rm_) + np.abs(bias).reshape(b) * sc + sh + np.abs(y))
    assert np.all(np.abs(layer(w_f, b_f) - y) <= tol)
    # a layer without bias folds as bias 0
    w_0, b_0 = fold_into_preceding(w, None, scale, shift, out_axis=out_axis)
    np.testing.assert_array_equal(b_0, shift)


# ====================================================================================================
# Bad input: a ValueError that names the problem
# ====================================================================================================


def ok_x(shape=(4, 3)):
    return np.random.default_rng(0).normal(size=shape)


class TestBadInput:
    @pytest.mark.parametrize("name", ["gamma", "beta"])
    @pytest.mark.parametrize("bad", [np.ones(4), np.ones(2), np.ones((3, 1)), np.ones(()), np.ones((1, 3))])
    def test_parameter_shape_must_match_the_channel_axis(self, name, bad):
        args = {"gamma": np.ones(3), "beta": np.zeros(3), name: bad}
        with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\).*channels on axis 1"):
            batch_norm_forward(ok_x(), args["gamma"], args["beta"])

    def test_parameter_shape_for_channels_last(self):
        with pytest.raises(ValueError, match=r"gamma must have shape \(5,\).*axis 3.*got shape \(3,\)"):
            batch_norm_forward(ok_x((2, 3, 3, 5)), np.ones(3), np.zeros(3), axis=-1)

    @pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
    def test_inference_shapes_must_match(self, name):
        args = {"gamma": np.ones(3), "beta": np.zeros(3), "running_mean": np.zeros(3), "running_var": np.ones(3)}
        args[name] = np.ones(4)
        with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\)"):
            batch_norm_inference(ok_x(), **args)
        if name != "gamma":  # inference_affine takes its channel count from gamma
            with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\)"):
                inference_affine(**args)

    def test_inference_affine_needs_vectors(self):
        with pytest.raises(ValueError, match=r"gamma must be a vector of shape \(C,\); got shape \(3, 1\)"):
            inference_affine(np.ones((3, 1)), np.zeros(3), np.zeros(3), np.ones(3))

    @pytest.mark.parametrize("axis", [2, -3, 7])
    def test_axis_out_of_range(self, axis):
        with pytest.raises(ValueError, match=rf"axis {axis} is out of range.*2 dimensions"):
            batch_norm_forward(ok_x(), np.ones(3), np.zeros(3), axis=axis)
        with pytest.raises(ValueError, match=rf"axis {axis} is out of range"):
            batch_mean_var(ok_x(), axis=axis)
        with pytest.raises(ValueError, match=rf"axis {axis} is out of range"):
            batch_norm_inference(ok_x(), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), axis=axis)

    @pytest.mark.parametrize("axis", [1.0, "1", True, None])
    def test_axis_must_be_an_integer(self, axis):
        with pytest.raises(TypeError, match="axis must be an integer; got"):
            batch_norm_forward(ok_x(), np.ones(3), np.zeros(3), axis=axis)

    @pytest.mark.parametrize(
        "shape, axis", [((1, 3), 1), ((1, 3, 1, 1), 1), ((1, 1, 1, 3), -1), ((3, 1), 0), ((1, 3, 1), 1)]
    )
    def test_training_needs_two_values_per_channel(self, shape, axis):
        c = shape[axis]
        with pytest.raises(ValueError, match="at least 2 values per channel.*has 1 per channel"):
            batch_norm_forward(np.ones(shape), np.ones(c), np.zeros(c), axis=axis)

    @pytest.mark.parametrize("shape", [(1, 3, 2, 2), (1, 3, 2), (2, 3)])
    def test_a_batch_of_one_image_has_enough_values(self, shape):
        x = ok_x(shape)
        y, cache = batch_norm_forward(x, np.ones(3), np.zeros(3))
        assert cache.m == x.size // 3 >= 2 and np.all(np.isfinite(y))
        # and inference takes a batch of one anything
        y1 = batch_norm_inference(x[:1], np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
        assert y1.shape == x[:1].shape

    @pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), -float("inf")])
    def test_eps_must_be_positive_and_finite(self, eps):
        with pytest.raises(ValueError, match="eps must be a positive finite number"):
            batch_norm_forward(ok_x(), np.ones(3), np.zeros(3), eps=eps)
        with pytest.raises(ValueError, match="eps must be a positive finite number"):
            batch_norm_inference(ok_x(), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps=eps)
        with pytest.raises(ValueError, match="eps must be a positive finite number"):
            inference_affine(np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps=eps)

    @pytest.mark.parametrize("eps", ["1e-5", None, [1e-5, 1e-3], True, np.bool_(True)])
    def test_eps_must_be_a_number(self, eps):
        """A bool is an int in Python, but True is no stabiliser: a TypeError, as for a string."""
        with pytest.raises(TypeError, match="eps must be a real number; got"):
            batch_norm_forward(ok_x(), np.ones(3), np.zeros(3), eps=eps)
        with pytest.raises(TypeError, match="eps must be a real number; got"):
            batch_norm_inference(ok_x(), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps=eps)

    @pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
    def test_x_must_be_floating_point(self, dtype):
        for f in (
            lambda x: batch_norm_forward(x, np.ones(3), np.zeros(3)),
            lambda x: batch_mean_var(x),
            lambda x: batch_norm_inference(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)),
        ):
            with pytest.raises(TypeError, match=r"x must be a real floating-point array.*got dtype.*astype"):
                f(np.ones((4, 3), dtype=dtype))

    @pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
    def test_x_must_not_be_complex(self, dtype):
        with pytest.raises(TypeError, match="x must be a real floating-point array.*got dtype complex"):
            batch_norm_forward(np.ones((4, 3), dtype=dtype), np.ones(3), np.zeros(3))

    @pytest.mark.parametrize(
        "bad", [np.ones(3, dtype=complex), np.array([True, False, True]), np.array(["a", "b", "c"])]
    )
    def test_parameters_must_be_real_numbers(self, bad):
        with pytest.raises(TypeError, match="gamma must be a real numeric array; got dtype"):
            batch_norm_forward(ok_x(), bad, np.zeros(3))

    def test_integer_parameters_are_accepted(self):
        y, _ = batch_norm_forward(ok_x(), np.array([1, 2, 3]), np.array([0, 0, 1]))
        assert y.dtype == np.float64

    @pytest.mark.parametrize("shape", [(5,), ()])
    def test_x_needs_batch_and_channel_axes(self, shape):
        with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
            batch_norm_forward(np.ones(shape), np.ones(5), np.zeros(5))

    def test_non_finite_x_names_the_channels(self):
        x = ok_x((6, 5))
        x[2, 1], x[0, 3], x[5, 3] = np.nan, np.inf, -np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a ValueError, not a RuntimeWarning first
            message = r"non-finite values \(nan or inf\) in channels \[1, 3\].*check_finite=False"
            with pytest.raises(ValueError, match=message):
                batch_norm_forward(x, np.ones(5), np.zeros(5))
            with pytest.raises(ValueError, match=r"non-finite.*channels \[1, 3\]"):
                batch_norm_inference(x, np.ones(5), np.zeros(5), np.zeros(5), np.ones(5))

    def test_many_bad_channels_are_summarised(self):
        x = ok_x((3, 15))
        x[0, :] = np.nan
        with pytest.raises(ValueError, match=r"channels \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] and 5 more"):
            batch_norm_forward(x, np.ones(15), np.zeros(15))

    def test_check_finite_false_propagates_nan_like_the_frameworks(self):
        """torch and Keras do not check: a nan or inf poisons the statistics of its channel, so the whole
        channel of y becomes nan, and the other channels are untouched."""
        x = ok_x((6, 4))
        x[3, 1], x[2, 2] = np.nan, np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # silently, as the frameworks do
            y, cache = batch_norm_forward(x, np.ones(4), np.zeros(4), check_finite=False)
        assert np.all(np.isnan(y[:, [1, 2]]))
        y_clean, _ = batch_norm_forward(x[:, [0, 3]], np.ones(2), np.zeros(2))
        # the clean channels are computed by the same operations on the same values: each side within (XHAT)
        x_hat_max = np.max(np.abs(cache.x_hat[:, [0, 3]]))
        np.testing.assert_allclose(y[:, [0, 3]], y_clean, rtol=0, atol=2 * x_hat_tol(6, np.float64) * x_hat_max)
        dx, dgamma, dbeta = batch_norm_backward(np.ones_like(x), cache, check_finite=False)
        assert np.all(np.isnan(dx[:, [1, 2]])) and np.all(np.isfinite(dx[:, [0, 3]]))

    def test_check_finite_false_matches_torch(self, torch):
        x = ok_x((6, 4)).astype(np.float32)
        x[3, 1] = np.nan
        y, _ = batch_norm_forward(x, np.ones(4), np.zeros(4), check_finite=False)
        y_t = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(y_t))

    def test_overflowing_statistics_are_named_as_such(self):
        x = np.array([[1e30, 1.0], [-1e30, 2.0], [3e30, 3.0]], dtype=np.float32)  # squares overflow float32
        message = r"statistics of channels \[0\] overflow in float32 although x is finite"
        with pytest.raises(ValueError, match=message):
            batch_norm_forward(x, np.ones(2), np.zeros(2))
        y, _ = batch_norm_forward(x.astype(np.float64), np.ones(2), np.zeros(2))  # float64 is fine
        assert np.all(np.isfinite(y))

    @pytest.mark.parametrize("name", ["gamma", "beta"])
    def test_non_finite_parameters(self, name):
        args = {"gamma": np.ones(3), "beta": np.zeros(3)}
        args[name] = np.array([1.0, np.nan, np.inf])
        with pytest.raises(ValueError, match=rf"{name} has non-finite values \(nan or inf\) at channels \[1, 2\]"):
            batch_norm_forward(ok_x(), **args)

    @pytest.mark.parametrize("backward", [batch_norm_backward, batch_norm_backward_staged])
    def test_non_finite_dy_names_the_channels(self, backward):
        _, cache = batch_norm_forward(ok_x((5, 4)), np.ones(4), np.zeros(4))
        dy = np.ones((5, 4))
        dy[1, 2], dy[4, 0] = np.inf, np.nan
        with pytest.raises(ValueError, match=r"dy has non-finite values \(nan or inf\) in channels \[0, 2\]"):
            backward(dy, cache)
        dx, _, _ = backward(dy, cache, check_finite=False)
        assert not np.any(np.isfinite(dx[:, [0, 2]])) and np.all(np.isfinite(dx[:, [1, 3]]))

    @pytest.mark.parametrize("backward", [batch_norm_backward, batch_norm_backward_staged])
    def test_dy_shape_and_dtype(self, backward):
        _, cache = batch_norm_forward(ok_x((5, 4)), np.ones(4), np.zeros(4))
        with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(5, 4\); got \(4, 5\)"):
            backward(np.ones((4, 5)), cache)
        with pytest.raises(TypeError, match="dy must be a real floating-point array"):
            backward(np.ones((5, 4), dtype=int), cache)

    @pytest.mark.parametrize("backward", [batch_norm_backward, batch_norm_backward_staged])
    @pytest.mark.parametrize("cache", [None, {"x_hat": np.ones((5, 4))}, (np.ones((5, 4)),)])
    def test_cache_must_come_from_the_forward_pass(self, backward, cache):
        with pytest.raises(TypeError, match="cache must be the BatchNormCache returned by batch_norm_forward; got"):
            backward(np.ones((5, 4)), cache)

    def test_negative_running_var_names_the_channels(self):
        rv = np.array([1.0, -0.5, 2.0, -1e-12])
        with pytest.raises(ValueError, match=r"running_var must be >= 0; it is negative at channels \[1, 3\]"):
            batch_norm_inference(ok_x((3, 4)), np.ones(4), np.zeros(4), np.zeros(4), rv)
        with pytest.raises(ValueError, match=r"running_var must be >= 0.*\[1, 3\]"):
            inference_affine(np.ones(4), np.zeros(4), np.zeros(4), rv)

    def test_batch_mean_var_method_and_size(self):
        with pytest.raises(ValueError, match="method must be 'two-pass' or 'one-pass'; got 'welford'"):
            batch_mean_var(ok_x(), method="welford")
        with pytest.raises(ValueError, match=r"x must have at least one value per channel; got shape \(0, 3\)"):
            batch_mean_var(np.ones((0, 3)))

    def test_running_update_arguments(self):
        with pytest.raises(ValueError, match="must have the same shape"):
            running_update(np.zeros(3), np.zeros(4), 0.1)
        for w in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match=r"weight of the new value must lie in \[0, 1\]"):
                running_update(np.zeros(3), np.zeros(3), w)
        with pytest.raises(ValueError, match="unbiased variance needs at least 2 values per channel; got m=1"):
            update_running_stats(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2), m=1, step=1, convention=PYTORCH)
        with pytest.raises(ValueError, match="cumulative average needs step >= 1"):
            update_running_stats(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2), m=4, step=0, convention=PAPER)

    def test_fold_into_preceding_shapes(self):
        w = np.ones((5, 4))
        with pytest.raises(ValueError, match=r"out_axis 2 is out of range for a weight of shape \(5, 4\)"):
            fold_into_preceding(w, None, np.ones(4), np.zeros(4), out_axis=2)
        with pytest.raises(ValueError, match=r"scale must have shape \(4,\) to match axis -1 of the weight \(5, 4\)"):
            fold_into_preceding(w, None, np.ones(5), np.zeros(5), out_axis=-1)
        with pytest.raises(ValueError, match=r"bias must have shape \(4,\) to match .*; got shape \(5,\)"):
            fold_into_preceding(w, np.ones(5), np.ones(4), np.zeros(4), out_axis=-1)

    def test_import_bnref_loads_numpy_and_the_standard_library_only(self):
        """``import bnref`` is the NumPy reference: no framework, and no other third-party package."""
        code = (
            "import sys, bnref; "
            "tops = {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith('_')))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "['bnref', 'numpy']"

    def test_cache_type_is_exported(self):
        _, cache = batch_norm_forward(ok_x(), np.ones(3), np.zeros(3))
        assert isinstance(cache, BatchNormCache) and bnref.BatchNormCache is BatchNormCache


class TestNamedErrors:
    """Inputs that used to return garbage or an unclear error (issue 19), each now a named error: ``TypeError``
    for a wrong type, ``ValueError`` for a wrong value (``bnref.validation``)."""

    def test_batch_mean_var_with_nan(self):
        x = ok_x((5, 3))
        x[2, 1] = np.nan
        with pytest.raises(ValueError, match=r"x has non-finite values \(nan or inf\) in channels \[1\]"):
            batch_mean_var(x)
        mean, _ = batch_mean_var(x, check_finite=False)  # or let it propagate, as the frameworks do
        assert np.isnan(mean[1]) and np.all(np.isfinite(mean[[0, 2]]))

    @pytest.mark.parametrize("name", ["weight", "bias", "scale", "shift"])
    def test_fold_into_preceding_with_nan(self, name):
        args = {"weight": np.ones((5, 4)), "bias": np.zeros(4), "scale": np.ones(4), "shift": np.zeros(4)}
        args[name] = args[name].copy()
        args[name].flat[1] = np.nan
        with pytest.raises(ValueError, match=rf"{name} has non-finite values \(nan or inf\) at .*\[1\]"):
            fold_into_preceding(args["weight"], args["bias"], args["scale"], args["shift"], out_axis=-1)

    def test_fold_into_preceding_with_a_float_axis_or_a_string_weight(self):
        with pytest.raises(TypeError, match=r"out_axis must be an integer; got 1.5 \(float\)"):
            fold_into_preceding(np.ones((5, 4)), None, np.ones(4), np.zeros(4), out_axis=1.5)
        with pytest.raises(TypeError, match="weight must be a real numeric array; got dtype <U1"):
            fold_into_preceding(np.full((5, 4), "1"), None, np.ones(4), np.zeros(4))

    def test_update_running_stats_with_a_negative_batch_variance_or_a_nan_mean(self):
        ok = dict(running_mean=np.zeros(3), running_var=np.ones(3), batch_mean=np.zeros(3), batch_var=np.ones(3))
        kw = dict(m=4, step=1, convention=PYTORCH)
        with pytest.raises(ValueError, match=r"batch_var must be >= 0; it is negative at channels \[1\]"):
            update_running_stats(**{**ok, "batch_var": np.array([1.0, -50.0, 1.0])}, **kw)
        with pytest.raises(ValueError, match=r"batch_mean has non-finite values \(nan or inf\) at channels \[0\]"):
            update_running_stats(**{**ok, "batch_mean": np.array([np.nan, 0.0, 0.0])}, **kw)
        with pytest.raises(ValueError, match=r"running_var must be >= 0; it is negative at channels \[2\]"):
            update_running_stats(**{**ok, "running_var": np.array([1.0, 1.0, -1.0])}, **kw)
        with pytest.raises(ValueError, match=r"batch_var must have shape \(3,\) to match running_mean; got shape"):
            update_running_stats(**{**ok, "batch_var": np.ones(4)}, **kw)
        with pytest.raises(TypeError, match=r"m must be an integer; got 4.0 \(float\)"):
            update_running_stats(**ok, m=4.0, step=1, convention=PYTORCH)
        with pytest.raises(TypeError, match=r"step must be an integer; got '1' \(str\)"):
            update_running_stats(**ok, m=4, step="1", convention=PYTORCH)
        with pytest.raises(TypeError, match=r"convention must be a Convention or the name of one; got \['pytorch'\]"):
            update_running_stats(**ok, m=4, step=1, convention=["pytorch"])

    @pytest.mark.parametrize(
        "call",
        [
            lambda eps: batch_norm_forward(ok_x(), np.ones(3), np.zeros(3), eps=eps),
            lambda eps: batch_norm_inference(ok_x(), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps=eps),
            lambda eps: inference_affine(np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps=eps),
            lambda eps: PYTORCH.replace(eps=eps),
            lambda eps: bnref.layer_norm_forward(ok_x(), np.ones(3), np.zeros(3), eps=eps),
            lambda eps: bnref.fold_batch_norm(np.ones((3, 2)), None, *np.ones((4, 3)), eps=eps),
        ],
        ids=["forward", "inference", "inference_affine", "Convention", "layer_norm", "fold_batch_norm"],
    )
    def test_eps_true_is_a_type_error(self, call):
        with pytest.raises(TypeError, match=r"eps must be a real number; got True \(bool\)"):
            call(True)

    @pytest.mark.parametrize(
        "call",
        [
            lambda a: batch_norm_forward(a, np.ones(3), np.zeros(3)),
            lambda a: batch_mean_var(a),
            lambda a: batch_norm_inference(a, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)),
            lambda a: batch_norm_forward(ok_x(), np.ma.masked_array(np.ones(3), [0, 1, 0]), np.zeros(3)),
            lambda a: fold_into_preceding(a, None, np.ones(3), np.zeros(3)),
            lambda a: running_update(a[0], np.ones(3), 0.1),
            lambda a: numerical_gradients(lambda z: z, [a], np.ones((4, 3))),
        ],
        ids=["forward", "batch_mean_var", "inference", "gamma", "fold", "running_update", "numerical_gradients"],
    )
    def test_masked_arrays_are_refused_not_unmasked_silently(self, call):
        """np.asarray drops a mask: a masked value would be used as if it were data. Refused, by name."""
        x = np.ma.masked_greater(ok_x(), 1.0)
        assert x.mask.any()
        with pytest.raises(TypeError, match=r"must be a plain array; got a NumPy masked array.*compressed\(\)"):
            call(x)

    def test_running_stats_channels(self):
        with pytest.raises(ValueError, match="channels must be an integer >= 1; got -1"):
            RunningStats(-1, PYTORCH)
        with pytest.raises(ValueError, match="channels must be an integer >= 1; got 0"):
            RunningStats(0, PYTORCH)
        with pytest.raises(TypeError, match=r"channels must be an integer; got 4.0 \(float\)"):
            RunningStats(4.0, PYTORCH)
        with pytest.raises(TypeError, match="dtype must be a floating-point dtype; got int64"):
            RunningStats(4, PYTORCH, dtype=np.int64)

    def test_running_stats_update_given_a_layer_norm_cache(self):
        _, cache = bnref.layer_norm_forward(ok_x(), np.ones(3), np.zeros(3))
        stats = RunningStats(4, PYTORCH)
        message = "cache must be the BatchNormCache returned by batch_norm_forward; got LayerNormCache"
        with pytest.raises(TypeError, match=message):
            stats.update(cache)
        assert stats.num_batches_tracked == 0

    def test_running_update_weight(self):
        with pytest.raises(TypeError, match="the weight of the new value must be a real number; got '0.1'"):
            running_update(np.zeros(3), np.ones(3), "0.1")
        with pytest.raises(ValueError, match=r"running value has non-finite values \(nan or inf\)"):
            running_update(np.array([0.0, np.inf]), np.ones(2), 0.1)
