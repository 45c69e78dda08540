"""Tests of bnref.finite_differences (bnref.gradcheck): the finite-difference oracle must be exact where theory
says so, must reject what it cannot check, and must be able to fail."""

from __future__ import annotations

import doctest
import importlib
import types

import numpy as np
import pytest
from conftest import EPS64
from hypothesis import given, settings
from hypothesis import strategies as st

import bnref
from bnref import batch_norm_backward, batch_norm_forward, gradcheck, numerical_gradients, relative_error

# ----------------------------------------------------------------------------------------------------
# numerical_gradients
# ----------------------------------------------------------------------------------------------------


def rounding_bound(values: list[np.ndarray], dy: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Rounding error of a central difference: L = sum(f * dy) is computed with an absolute error of at
    most ~ (n + 2) eps64 * sum|f dy| (products, then a sum of n terms); two such errors over 2 h."""
    n = dy.size
    s = max(float(np.sum(np.abs(v * dy))) for v in values)
    return (n + 2) * EPS64 * s / steps


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.sampled_from([1e-5, 1e-3, 1e-1]), n=st.integers(1, 12))
def test_central_differences_are_exact_for_quadratics(seed, h, n):
    """For a quadratic, (L(z+h) - L(z-h)) / 2h equals L'(z) exactly: the h^2 L''' / 6 term vanishes.
    So only rounding remains, whatever the step -- even h = 0.1."""
    rng = np.random.default_rng(seed)
    x, w, dy = rng.normal(size=n) * 3, rng.normal(size=n), rng.normal(size=n)

    def f(x_, w_):
        return x_ * w_ + 0.5 * x_**2 - 2.0 * w_

    gx, gw = numerical_gradients(f, [x, w], dy, h=h)
    exact_x, exact_w = dy * (w + x), dy * (x - 2.0)
    steps_x, steps_w = h * np.maximum(1, np.abs(x)), h * np.maximum(1, np.abs(w))
    # the values of f at the shifted points are bounded by f at |z| + h|z| + h: use a doubled |f|
    f_scale = [np.abs(f(x, w)) + np.abs(x * w) + x**2 + 2 * np.abs(w) + 1]
    assert np.all(np.abs(gx - exact_x) <= rounding_bound(f_scale, dy, steps_x))
    assert np.all(np.abs(gw - exact_w) <= rounding_bound(f_scale, dy, steps_w))


def test_matrix_product_is_checked_exactly():
    """f(A, B) = A @ B is bilinear, so the check is exact to rounding; gradcheck returns ~1e-11."""
    rng = np.random.default_rng(1)
    a, b, dy = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    assert gradcheck(lambda a_, b_: a_ @ b_, [a, b], [dy @ b.T, a.T @ dy], dy) < 1e-9


def test_truncation_error_of_a_cubic_follows_the_step_rule():
    """((z+h)^3 - (z-h)^3) / 2h = 3 z^2 + h^2 exactly, with the step h_i = h * max(1, |z_i|): the excess
    over the true derivative is dy * h_i^2, which pins down the documented step rule."""
    z = np.array([-6.0, -2.0, -0.5, 0.0, 0.25, 1.0, 7.0])
    dy = np.array([1.0, -2.0, 0.5, 1.0, 3.0, -1.0, 0.25])
    h = 1e-2
    (g,) = numerical_gradients(lambda z_: z_**3, [z], dy, h=h)
    steps = h * np.maximum(1.0, np.abs(z))
    excess = g - dy * 3 * z**2
    # rounding (~1e-10 here) is far below the predicted excess (>= 2.5e-5)
    bound = rounding_bound([np.abs(z) ** 3 * 1.1], dy, steps)
    assert np.all(np.abs(excess - dy * steps**2) <= bound)
    assert np.all(bound < 1e-4 * np.abs(dy) * steps**2)


def test_inputs_are_not_modified_and_shapes_are_kept():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 3)), rng.normal(size=(4,))
    x0, y0 = x.copy(), y.copy()
    gx, gy = numerical_gradients(lambda a, b: a.sum() * b, [x, y], np.ones(4))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert gx.shape == x.shape and gy.shape == y.shape


def test_output_shape_must_match_dy():
    with pytest.raises(ValueError, match=r"f returned shape \(3,\), but dy has shape \(2,\)"):
        numerical_gradients(lambda a: a, [np.ones(3)], np.ones(2))


# ----------------------------------------------------------------------------------------------------
# Only float64 is accepted
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rejects_low_precision_inputs(dtype):
    message = r"inputs\[0\] must be float64 for a finite-difference check.*float32 rounding"
    with pytest.raises(ValueError, match=message):
        numerical_gradients(lambda a: a, [np.ones(3, dtype=dtype)], np.ones(3))
    with pytest.raises(ValueError, match=r"dy must be float64"):
        numerical_gradients(lambda a: a, [np.ones(3)], np.ones(3, dtype=dtype))
    with pytest.raises(ValueError, match=r"inputs\[1\] must be float64"):
        gradcheck(lambda a, b: a * b, [np.ones(3), np.ones(3, dtype=dtype)], [np.ones(3), np.ones(3)], np.ones(3))


@pytest.mark.parametrize("bad", [np.ones(3, dtype=int), np.ones(3, dtype=bool), np.ones(3, dtype=complex)])
def test_rejects_non_float_inputs(bad):
    with pytest.raises(TypeError, match=r"inputs\[0\] must be a real floating-point array.*got dtype"):
        numerical_gradients(lambda a: a, [bad], np.ones(3))


@pytest.mark.parametrize("h", [0.0, -1e-5, float("nan"), float("inf")])
def test_the_step_must_be_positive_and_finite(h):
    with pytest.raises(ValueError, match=r"h must be a positive finite number \(the relative step.*\); got"):
        numerical_gradients(lambda a: a, [np.ones(3)], np.ones(3), h=h)
    with pytest.raises(ValueError, match="h must be a positive finite number"):
        gradcheck(lambda a: a, [np.ones(3)], [np.ones(3)], np.ones(3), h=h)


@pytest.mark.parametrize("h", [True, "1e-5", None])
def test_the_step_must_be_a_number(h):
    with pytest.raises(TypeError, match="h must be a real number; got"):
        numerical_gradients(lambda a: a, [np.ones(3)], np.ones(3), h=h)


def test_f_must_be_callable():
    with pytest.raises(TypeError, match="f must be a function of the inputs; got ndarray"):
        numerical_gradients(np.ones(3), [np.ones(3)], np.ones(3))


# ----------------------------------------------------------------------------------------------------
# relative_error
# ----------------------------------------------------------------------------------------------------


def test_relative_error_is_normalised_by_the_largest_entry():
    """max|a - b| / max(max|a|, max|b|): a tiny entry that is 100% off but carries only noise does not
    dominate, unlike an entry-wise relative error."""
    a, b = np.array([1.0, 1e-10]), np.array([1.0, 2e-10])
    assert relative_error(a, b) == pytest.approx(1e-10, rel=1e-12)
    assert relative_error(np.array([1e-20]), np.array([2e-20])) == 0.5  # alone, it is 50% off
    assert relative_error(np.array([2.0, -4.0]), np.array([2.0, -3.0])) == 0.25
    assert relative_error(a, b) == relative_error(b, a)


def test_relative_error_edge_cases():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(0), np.zeros(0)) == 0.0
    assert relative_error(np.zeros(2), np.array([0.0, 1e-300])) == 1.0  # all error, no signal
    assert isinstance(relative_error(np.ones(2, np.float32), np.ones(2)), float)
    assert relative_error(3.0, 3.0) == 0.0
    with pytest.raises(ValueError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        relative_error(np.ones(2), np.ones(3))


# ----------------------------------------------------------------------------------------------------
# gradcheck can fail: deliberately wrong batch-norm gradients
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def bn_problem():
    rng = np.random.default_rng(3)
    x, dy = rng.normal(1.0, 2.0, size=(8, 3)), rng.normal(size=(8, 3))
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    _, cache = batch_norm_forward(x, gamma, beta)

    def f(x_, g_, b_):
        return batch_norm_forward(x_, g_, b_)[0]

    return x, gamma, beta, dy, cache, f


def wrong_gradients(kind: str, dy: np.ndarray, cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, k = cache.m, cache.gamma * cache.inv_std
    dbeta = dy.sum(0)
    dgamma = (dy * cache.x_hat).sum(0)
    dx = k * (dy - dbeta / m - cache.x_hat * dgamma / m)
    if kind == "dx without the mean term":  # forgets that the mean depends on x
        dx = k * (dy - cache.x_hat * dgamma / m)
    elif kind == "dx without the variance term":  # forgets that the variance depends on x
        dx = k * (dy - dbeta / m)
    elif kind == "dx with the unbiased variance":  # inv_std from m-1 instead of m
        inv_std_u = 1 / np.sqrt(cache.var * m / (m - 1) + cache.eps)
        dx = cache.gamma * inv_std_u * (dy - dbeta / m - cache.x_hat * dgamma / m)
    elif kind == "dgamma from the centred x":  # x - mean instead of x_hat
        dgamma = (dy * (cache.x - cache.mean)).sum(0)
    return dx, dgamma, dbeta


@pytest.mark.parametrize(
    "kind",
    [
        "dx without the mean term",
        "dx without the variance term",
        "dx with the unbiased variance",
        "dgamma from the centred x",
    ],
)
def test_gradcheck_detects_wrong_gradients(bn_problem, kind):
    x, gamma, beta, dy, cache, f = bn_problem
    right = gradcheck(f, [x, gamma, beta], list(wrong_gradients("right", dy, cache)), dy)
    wrong = gradcheck(f, [x, gamma, beta], list(wrong_gradients(kind, dy, cache)), dy)
    assert right < 1e-8
    assert wrong > 1e-3  # five orders of magnitude above the threshold
    # The test's dx = k (dy - dbeta/m - x_hat dgamma/m) and the reference's k/m (m dy - dbeta - x_hat dgamma)
    # are the same formula grouped differently. With T = max|dy| (1 + max|x_hat|^2), which bounds |dy|,
    # |dbeta|/m and |x_hat dgamma|/m: each route rounds its sums (m - 1 each, relative to m T), k
    # (2 or 3 times) and the products and differences (4 or 5 times), so the routes are within
    # 2 (m - 1 + 8) u k T = (m + 7) eps64 k T of each other (book appendix "How the checks are bounded").
    m, k = cache.m, np.abs(cache.gamma) * cache.inv_std
    t = np.max(np.abs(dy), axis=0) * (1 + np.max(np.abs(cache.x_hat), axis=0) ** 2)
    dx_test, dx_ref = wrong_gradients("right", dy, cache)[0], batch_norm_backward(dy, cache)[0]
    assert np.all(np.abs(dx_test - dx_ref) <= (m + 7) * EPS64 * k * t)


@pytest.mark.parametrize("delta", [1e-5, 1e-6, 1e-7])
def test_gradcheck_resolves_small_relative_errors(bn_problem, delta):
    """Scale the right dx by (1 + delta): gradcheck must report ~delta, because its own noise is ~1e-10.
    This is the resolution that makes the 1e-8 threshold meaningful."""
    x, gamma, beta, dy, cache, f = bn_problem
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    err = gradcheck(f, [x, gamma, beta], [dx * (1 + delta), dgamma, dbeta], dy)
    assert delta / 2 < err < delta * 2


def test_gradcheck_argument_errors():
    one = np.ones(3)
    with pytest.raises(ValueError, match="got 2 inputs but 1 analytic gradients"):
        gradcheck(lambda a, b: a * b, [one, one], [one], one)
    with pytest.raises(ValueError, match=r"analytic gradient 1 has shape \(4,\), its input has \(3,\)"):
        gradcheck(lambda a, b: a * b, [one, one], [one, np.ones(4)], one)


# ----------------------------------------------------------------------------------------------------
# The examples in the docstrings of the NumPy modules run and print what they say
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bnref.reference", "bnref.finite_differences", "bnref.conventions"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no docstring examples to run"


def test_the_function_and_its_module_are_both_reachable():
    """``bnref.gradcheck`` is the function; its module is ``bnref.finite_differences`` (it used to be named
    ``bnref.gradcheck`` too, and the function hid it)."""
    assert callable(bnref.gradcheck) and not isinstance(bnref.gradcheck, types.ModuleType)
    assert isinstance(bnref.finite_differences, types.ModuleType)
    assert bnref.finite_differences.gradcheck is bnref.gradcheck
    assert bnref.finite_differences.numerical_gradients is numerical_gradients
