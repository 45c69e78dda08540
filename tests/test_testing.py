"""The error model of ``bnref.testing`` (derived in the book's appendix "How the checks are bounded", ch-bounds).

Each bound is tested both ways: a correct float computation passes it, and an error planted just above it,
or a known mistake (a one-pass variance, a forgotten |mean|/std factor), fails it. NumPy only.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from bnref import testing
from bnref.testing import BOUND_C, check_close, machine_eps, reduction_error

SEEDS = (0, 1, 2)


def test_machine_eps_and_unit_roundoff():
    assert machine_eps("float64") == 2.0**-52 and machine_eps("float32") == 2.0**-23
    assert machine_eps("float16") == 2.0**-10 and machine_eps("bfloat16") == 2.0**-7
    assert machine_eps(np.float32) == machine_eps(np.dtype("float32")) == machine_eps("torch.float32")
    assert testing.unit_roundoff("float32") == 2.0**-24
    # eps is the gap above 1, u the largest relative error of rounding to nearest
    one = np.float32(1)
    assert np.nextafter(one, np.float32(2)) - one == machine_eps("float32")
    assert np.float32(1 + 0.49 * machine_eps("float32")) == one
    with pytest.raises(ValueError, match="unknown dtype"):
        machine_eps("int32")


def test_compute_dtype_and_reduction_error():
    assert testing.compute_dtype("float16") == testing.compute_dtype("bfloat16") == "float32"
    assert testing.compute_dtype("float64") == "float64"
    assert reduction_error("float32", 100) == BOUND_C * 2.0**-23 * 11
    assert reduction_error("float16", 100) == reduction_error("float32", 100)  # statistics in float32
    for bad in (0, -3):
        with pytest.raises(ValueError, match="m, the reduction length, must be an integer >= 1; got"):
            reduction_error("float32", bad)
    for bad in (2.5, True, "4"):
        with pytest.raises(TypeError, match="m, the reduction length, must be an integer; got"):
            reduction_error("float32", bad)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [16, 4096])
def test_float32_sum_within_the_bound(seed, m):
    """A float32 sum (NumPy's pairwise) against float64; cond = sum|x| / |sum x| (appendix, eq-bound-sum)."""
    x = np.random.default_rng(seed).normal(0.5, 1.0, size=m)
    x32 = x.astype(np.float32)
    exact = np.sum(x32.astype(np.float64))
    cond = float(np.sum(np.abs(x32.astype(np.float64))) / abs(exact))
    # naive left-to-right summation too: worst case m u, typical sqrt(m) u
    naive = np.float32(0)
    for v in x32:
        naive = np.float32(naive + v)
    for got in (np.sum(x32), naive):
        c = check_close(got, exact, dtype="float32", m=m, cond=cond, what="sum", show="none")
        assert c.passed, str(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_error_above_the_bound_fails_and_below_passes(seed):
    rng = np.random.default_rng(seed)
    expected = rng.normal(size=(64, 3))
    probe = check_close(expected, expected, dtype="float32", m=64, show="none")
    assert probe.passed and probe.ratio == 0.0
    worst = np.unravel_index(np.argmax(np.abs(expected)), expected.shape)
    for factor, passes in ((1.01, False), (0.99, True), (100.0, False)):
        actual = expected.copy()
        actual[worst] += factor * probe.bound * np.max(np.abs(expected))
        c = check_close(actual, expected, dtype="float32", m=64, what="dx", show="none")
        assert c.passed is passes, (factor, str(c))
        assert math.isclose(c.ratio, factor, rel_tol=1e-9)


def test_nan_and_zero_reference():
    assert not check_close([np.nan, 1.0], [1.0, 1.0], dtype="float32", m=1, show="none").passed
    assert check_close([0.0, 0.0], [0.0, 0.0], dtype="float32", m=1, show="none").passed
    c = check_close([1e-30, 0.0], [0.0, 0.0], dtype="float32", m=1, show="none")
    assert not c.passed and c.ratio == math.inf


def test_half_precision_adds_the_output_rounding():
    c = check_close([1.0], [1.0], dtype="float16", m=9, show="none")
    assert c.bound == reduction_error("float32", 9) + 2.0**-10


def test_verdict_text(capsys):
    expected = np.linspace(1.0, 2.0, 128)
    c = check_close(expected * (1 + 3.1e-7), expected, dtype="float32", m=128, what="dx")
    printed = capsys.readouterr().out
    assert printed == c.verdict + "\n"
    assert re.fullmatch(r"dx: max rel err <= bound 5\.9e-06 \(float32, m=128\): True", c.verdict)
    assert re.fullmatch(r"dx: max rel err 3\.1e-07 <= bound 5\.9e-06 \(float32, m=128\): True", str(c))
    check_close(expected, expected, dtype="float32", m=128, cond=1e3, what="y", show="full")
    assert capsys.readouterr().out == "y: max rel err 0.0e+00 <= bound 5.9e-03 (float32, m=128, cond=1e+03): True\n"


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="shapes differ"):
        check_close(np.ones(3), np.ones(4), dtype="float32", m=3)
    with pytest.raises(ValueError, match="cond"):
        check_close(np.ones(3), np.ones(3), dtype="float32", m=3, cond=0.5)
    with pytest.raises(ValueError, match="cond"):
        check_close(np.ones(3), np.ones(3), dtype="float32", m=3, cond=math.inf)
    with pytest.raises(ValueError, match="finite"):
        check_close(np.ones(2), [1.0, np.inf], dtype="float32", m=3)
    with pytest.raises(ValueError, match="show"):
        check_close(np.ones(2), np.ones(2), dtype="float32", m=3, show="loud")
    with pytest.raises(ValueError, match="reduction length"):
        check_close(np.ones(2), np.ones(2), dtype="float32", m=0)


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="m, the reduction length, must be an integer; got 3.0"):
        check_close(np.ones(2), np.ones(2), dtype="float32", m=3.0)
    with pytest.raises(TypeError, match="cond, the condition factor, must be a real number; got '2'"):
        check_close(np.ones(2), np.ones(2), dtype="float32", m=3, cond="2")
    with pytest.raises(TypeError, match="expected must be a plain array; got a NumPy masked array"):
        check_close(np.ones(2), np.ma.masked_array([1.0, 5.0], [0, 1]), dtype="float32", m=3)


def _variances(x32: np.ndarray) -> tuple[float, float]:
    """Two-pass and one-pass (E[x^2] - E[x]^2) variance of one float32 channel, computed in float32."""
    mean = np.mean(x32, dtype=np.float32)
    two_pass = np.mean(np.square(x32 - mean), dtype=np.float32)
    one_pass = np.mean(np.square(x32), dtype=np.float32) - np.square(mean)
    return float(two_pass), float(one_pass)


@pytest.mark.parametrize("seed", SEEDS)
def test_two_pass_variance_bound_holds_and_one_pass_fails_it(seed):
    """eq-bound-two-pass: error <= e var + (e (|mean| + sigma X))^2; the one-pass form loses ~eps |mean|^2."""
    m = 1024
    x32 = (1e3 + np.random.default_rng(seed).standard_normal(m)).astype(np.float32)  # |mean|/std = 1e3
    x = x32.astype(np.float64)
    var = x.var()
    x_hat = (x - x.mean()) / np.sqrt(var)
    e = reduction_error("float32", m)
    bound = e * var + (e * (abs(x.mean()) + np.sqrt(var) * np.max(np.abs(x_hat)))) ** 2
    two_pass, one_pass = _variances(x32)
    assert abs(two_pass - var) <= bound
    assert abs(one_pass - var) > 10 * bound


@pytest.mark.parametrize("seed", SEEDS)
def test_y_bound_grows_with_mean_over_std(seed):
    """y = x a + b in float32 (PyTorch's CPU form): its error needs the factor r = |mean|/std (eq-bound-y).

    With ``cond = 1 + r`` check_close passes; without it (cond = 1) the same result fails at r = 1e3.
    """
    m = 512
    x32 = (1e3 + np.random.default_rng(seed).standard_normal(m)).astype(np.float32)
    x = x32.astype(np.float64)
    mean, var, eps = x.mean(), x.var(), 1e-5
    y_exact = (x - mean) / np.sqrt(var + eps)
    a = np.float32(1 / np.sqrt(var + eps))
    b = np.float32(-mean * a)
    y32 = x32 * a + b  # the float32 statistics are exact here: the error is the fused form's alone
    r = abs(mean) / np.sqrt(var + eps)
    assert check_close(y32, y_exact, dtype="float32", m=m, cond=1 + r, show="none").passed
    assert not check_close(y32, y_exact, dtype="float32", m=m, cond=1.0, show="none").passed


@pytest.mark.parametrize("seed", SEEDS)
def test_training_bounds_hold_for_a_literal_float32_forward_and_catch_an_eps_slip(seed):
    rng = np.random.default_rng(seed)
    m, c, eps = 256, 3, 1e-5
    x32 = (rng.normal(5.0, 0.1, size=(m, c))).astype(np.float32)  # r = 50, variance 1e-2
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c)
    x = x32.astype(np.float64)
    mean, var = x.mean(0), x.var(0)
    x_hat = (x - mean) / np.sqrt(var + eps)
    y = gamma * x_hat + beta
    dy = rng.standard_normal((m, c))
    s = testing.channel_summaries(x_hat, dy, mean, var, eps)
    assert s.m == m and s.r.shape == (c,) and np.all(s.r > 10)
    bounds = testing.training_bounds(s, gamma, beta, (dy * x_hat).sum(0), "float32")

    def forward32(eps_used: float) -> np.ndarray:
        mu = x32.mean(0, dtype=np.float32)
        v = np.square(x32 - mu).mean(0, dtype=np.float32)
        return (
            gamma.astype(np.float32) * (x32 - mu) / np.sqrt(v + np.float32(eps_used)) + beta.astype(np.float32)
        ).astype(np.float64)

    assert np.all(np.max(np.abs(forward32(eps) - y), axis=0) <= bounds["y"])
    assert np.any(np.max(np.abs(forward32(1e-3) - y), axis=0) > 10 * bounds["y"])
    with pytest.raises(ValueError, match="2-D"):
        testing.channel_summaries(x_hat[:, 0], dy[:, 0], mean, var, eps)


def test_running_and_inference_bounds_shrink_and_carry():
    """The running bound decays with (1 - w) and adds the new batch's; inference carries both."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 2))
    s = testing.channel_summaries(x - x.mean(0), rng.standard_normal((32, 2)), x.mean(0), x.var(0), 1e-5)
    zero = np.zeros(2)
    first = testing.running_mean_bound(zero, 0.1, s, x.mean(0), 0.1 * x.mean(0), "float32")
    again = testing.running_mean_bound(first, 0.1, s, x.mean(0), 0.1 * x.mean(0), "float32")
    assert np.all(first > 0) and np.all(again > first) and np.all(again < 2 * first)
    v1 = testing.running_var_bound(zero, 0.1, s, x.mean(0), x.var(0), np.ones(2), "float32", unbiased=True)
    v0 = testing.running_var_bound(zero, 0.1, s, x.mean(0), x.var(0), np.ones(2), "float32", unbiased=False)
    assert np.all(v1 > v0)
    args = (x, np.ones(2), zero, zero, np.ones(2), 1e-5)
    alone = testing.inference_bound(*args, zero, zero, "float32")
    carried = testing.inference_bound(*args, first, v1, "float32")
    assert np.all(alone > 0) and np.all(carried > alone)
