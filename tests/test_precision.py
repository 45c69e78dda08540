"""The |mean|/std sweep of ``bnref.check.precision`` (book, frameworks chapter, section sec-fw-precision).

The verdict of every in-process implementation is asserted as measured (PyTorch 2.13, TensorFlow 2.21 /
Keras 3.15.1, JAX 0.10.2 / Flax 0.12.8, CPU); the Keras layer on its three backends is tested in
``tests/test_frameworks.py``, which runs the backend processes once for both. Planted implementations show
that the verdict rule can say each of its three things: a one-pass variance is caught, a shifted one-pass
variance (centred on one sample first) is not, and an error that does not follow the one-pass law is
neither.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bnref  # noqa: E402
from bnref.check import precision  # noqa: E402
from bnref.testing import machine_eps, reduction_error, unit_roundoff  # noqa: E402

EXPECTED = {
    "numpy reference (bnref)": "two-pass",
    "torch nn.BatchNorm1d": "two-pass",
    "torch scratch (bnref.layers.torch_bn)": "two-pass",
    "keras scratch (bnref.layers.keras_bn)": "two-pass",
    "flax BatchNorm, fast variance": "one-pass",  # use_fast_variance=True, Flax's default
    "flax BatchNorm, two-pass": "two-pass",
    "jax scratch (bnref.layers.jax_bn)": "two-pass",
}


@pytest.fixture(scope="module")
def results():
    for module in ("torch", "tensorflow", "keras", "jax", "flax"):
        pytest.importorskip(module)
    return precision.sweep()


def test_every_in_process_implementation_ran(results):
    assert set(results) == set(precision.IMPLEMENTATIONS) == set(EXPECTED)
    for r in results.values():
        assert r.ratios == list(precision.RATIOS) and r.seeds == list(precision.SEEDS)
        assert np.shape(r.var_error) == (len(precision.RATIOS), len(precision.SEEDS))
    assert results["flax BatchNorm, fast variance"].version.startswith("Flax ")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_verdict_as_measured(results, name):
    v = precision.verdict(results[name])
    assert v.kind == EXPECTED[name], (name, v.text, results[name].worst("var"))
    if v.kind == "two-pass":
        assert v.text == "within the two-pass bound up to |mean|/std = 10000"
    else:
        assert v.text == "exceeds the two-pass bound from |mean|/std = 300, as the one-pass law predicts"


def test_flax_fast_variance_follows_the_one_pass_law(results):
    """Beyond r = 100 Flax's one-pass variance is within a factor 100 of u r^2 (or has lost every digit)."""
    r = results["flax BatchNorm, fast variance"]
    for ratio, errors in zip(r.ratios, r.var_error, strict=True):
        law = precision.one_pass_law(ratio)
        if 100 <= ratio and law < 1:
            assert all(law / 100 <= e <= 100 * law for e in errors), (ratio, errors, law)


def test_one_pass_law_and_two_pass_bound_values():
    u = unit_roundoff("float32")
    assert u == 2.0**-24
    assert precision.one_pass_law(1e3) == pytest.approx(u * 1e6, rel=1e-15)
    # at r = 1 the sweep's variance bound is e(m) (eq-bound-two-pass) plus the rounding of reading it back
    x = precision.sweep_data(0.0, 0)
    two_pass = lambda x: (np.zeros_like(x, np.float64), x.astype(np.float64).var(axis=0), 1e-5)  # noqa: E731
    r = precision.sweep_function("exact", two_pass, ratios=[0.0], seeds=[0])
    e = reduction_error("float32", precision.M)
    assert e <= r.var_bound[0][0] <= e * 1.1 + 4 * machine_eps("float32")
    assert r.var_error[0][0] == 0.0 and x.dtype == np.float32


def _one_pass(x: np.ndarray) -> tuple:
    """Planted: the variance E[x^2] - E[x]^2 in float32 (bnref's demonstration of eq-fwd-one-pass)."""
    mean, var = bnref.batch_mean_var(x, axis=1, method="one-pass")
    var64 = var.astype(np.float64)
    with np.errstate(invalid="ignore"):
        y = (x.astype(np.float64) - mean) / np.sqrt(var64 + 1e-5)
    return y, var64, 1e-5


def _shifted_one_pass(x: np.ndarray) -> tuple:
    """Planted: the same one-pass formula on x - x[0] (exact in float32 by Sterbenz), the shifted-data fix."""
    shifted = x - x[:1]
    _, var = bnref.batch_mean_var(shifted, axis=1, method="one-pass")
    mean = x.astype(np.float64).mean(axis=0)
    return (x - mean) / np.sqrt(var.astype(np.float64) + 1e-5), var.astype(np.float64), 1e-5


def _float16_variance(x: np.ndarray) -> tuple:
    """Planted: a two-pass variance rounded to float16, an error of ~5e-4 whatever |mean|/std is."""
    mean, var = bnref.batch_mean_var(x, axis=1)
    var16 = var.astype(np.float16).astype(np.float64)
    return (x - mean) / np.sqrt(var16 + 1e-5), var16, 1e-5


def test_planted_one_pass_variance_is_caught():
    v = precision.verdict(precision.sweep_function("one-pass", _one_pass))
    assert v.kind == "one-pass" and v.exceeds_from == 300.0 and v.within_up_to == 1.0


def test_planted_shifted_one_pass_variance_passes():
    v = precision.verdict(precision.sweep_function("shifted one-pass", _shifted_one_pass))
    assert v.kind == "two-pass"


def test_planted_error_that_is_not_the_one_pass_law_is_neither():
    v = precision.verdict(precision.sweep_function("float16 variance", _float16_variance))
    assert v.kind == "neither" and v.exceeds_from == 1.0 and math.isnan(v.within_up_to)
    assert "not as the one-pass law predicts" in v.text and v.text_zh


def test_non_finite_results_count_as_exceeding():
    def nan_everywhere(x):
        return np.full(x.shape, np.nan), np.full(x.shape[1], np.nan), 1e-5

    r = precision.sweep_function("nan", nan_everywhere, ratios=[1.0, 1e4], seeds=[0])
    assert math.isnan(r.var_error[0][0]) and r.var_ratio[0][0] == math.inf and r.y_ratio[1][0] == math.inf
    assert math.isnan(r.worst("y")[0]) and precision.verdict(r).kind == "neither"


def test_bad_input():
    with pytest.raises(ValueError, match="ratio must be >= 0"):
        precision.sweep_data(-1.0, 0)
    with pytest.raises(ValueError, match="unknown implementations"):
        precision.sweep(["no such layer"])
