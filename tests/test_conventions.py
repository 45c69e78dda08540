"""Tests of bnref.conventions: each framework's convention as data, checked against the guide's table and
against the frameworks' own defaults and buffers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from conftest import EPS64
from hypothesis import given, settings
from hypothesis import strategies as st

from bnref import (
    CONVENTIONS,
    KERAS,
    PAPER,
    PYTORCH,
    PYTORCH_CUMULATIVE,
    Convention,
    get_convention,
    running_update,
)

# ----------------------------------------------------------------------------------------------------
# The data (measured in the frameworks chapter, book/frameworks.ipynb)
# ----------------------------------------------------------------------------------------------------


def test_pytorch_defaults():
    assert (PYTORCH.eps, PYTORCH.momentum, PYTORCH.momentum_weights) == (1e-5, 0.1, "new")
    assert (PYTORCH.running_var, PYTORCH.axis, PYTORCH.init_mean, PYTORCH.init_var) == ("unbiased", 1, 0.0, 1.0)


def test_pytorch_cumulative_is_pytorch_with_momentum_none():
    assert PYTORCH_CUMULATIVE.momentum is None
    assert PYTORCH_CUMULATIVE == PYTORCH.replace(name="pytorch-cumulative", momentum=None)


def test_keras_defaults():
    assert (KERAS.eps, KERAS.momentum, KERAS.momentum_weights) == (1e-3, 0.99, "old")
    assert (KERAS.running_var, KERAS.axis, KERAS.init_mean, KERAS.init_var) == ("biased", -1, 0.0, 1.0)


def test_paper_is_the_cumulative_average_with_the_unbiased_variance():
    """Algorithm 2: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2]: weight 1/k, unbiased batch variance."""
    assert PAPER.momentum is None and PAPER.running_var == "unbiased"
    assert [PAPER.new_value_weight(k) for k in (1, 2, 5)] == [1.0, 0.5, 0.2]


def test_registry():
    assert set(CONVENTIONS) == {"pytorch", "pytorch-cumulative", "keras", "paper", "flax", "flax-two-pass"}
    for name, conv in CONVENTIONS.items():
        assert conv.name == name
        assert get_convention(name) is conv
        assert get_convention(conv) is conv


def test_unknown_name_lists_the_known_ones():
    message = "unknown convention 'tensorflow'; known: flax, flax-two-pass, keras, paper, pytorch, pytorch-cumulative"
    with pytest.raises(ValueError, match=message):
        get_convention("tensorflow")


# ----------------------------------------------------------------------------------------------------
# The update weight, and what the one rule r = (1 - w) r + w b computes with it
# ----------------------------------------------------------------------------------------------------


def test_new_value_weights():
    for step in (1, 2, 10, 1000):
        assert PYTORCH.new_value_weight(step) == 0.1
        assert KERAS.new_value_weight(step) == 1.0 - 0.99  # 0.010000000000000009 in binary
        assert PYTORCH_CUMULATIVE.new_value_weight(step) == 1.0 / step


@pytest.mark.parametrize("step", [0, -1])
def test_cumulative_weight_needs_a_positive_step(step):
    with pytest.raises(ValueError, match=f"cumulative average needs step >= 1; got {step}"):
        PYTORCH_CUMULATIVE.new_value_weight(step)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30), init=st.floats(-1e6, 1e6))
def test_weight_one_over_k_gives_the_plain_average(values, init):
    """Weights 1/k: the first step replaces the initial value, and r_k is the mean of b_1..b_k. Each step
    rounds three times (3 eps64 |r|) and the errors do not grow (the update is a convex combination)."""
    r = np.array(init)
    for k, b in enumerate(values, start=1):
        r = running_update(r, np.array(b), PAPER.new_value_weight(k))
    scale = max(abs(v) for v in values)
    # 3 roundings per update (the two products and the sum, each <= eps64 |r| with |r| <= scale) plus at
    # most 1 per term in np.mean's own sum: 4 k eps64 scale (book appendix "How the checks are bounded").
    assert abs(float(r) - float(np.mean(values))) <= 4 * len(values) * EPS64 * scale + 1e-300


@pytest.mark.parametrize("conv", [PYTORCH, KERAS], ids=lambda c: c.name)
def test_exponential_weights_after_k_steps(conv):
    """r_k = (1-w)^k r_0 + sum_j w (1-w)^(k-j) b_j, written out from the rule."""
    rng = np.random.default_rng(0)
    b = rng.normal(size=7)
    w = conv.new_value_weight(1)
    r = np.array(1.0)
    for k in range(len(b)):
        r = running_update(r, np.array(b[k]), conv.new_value_weight(k + 1))
    k = len(b)
    expected = (1 - w) ** k * 1.0 + sum(w * (1 - w) ** (k - 1 - j) * b[j] for j in range(k))
    # Per step: 3 roundings in the update and, on the expected side, about 4 in each term (the power, two
    # products; weights <= 1) and 1 in the sum: 8 k eps64 times the largest value (book, ch-bounds).
    assert abs(float(r) - expected) <= 8 * k * EPS64 * max(1.0, np.max(np.abs(b)))


# ----------------------------------------------------------------------------------------------------
# Validation and immutability
# ----------------------------------------------------------------------------------------------------


def make(**changes):
    fields = dict(name="t", eps=1e-5, momentum=0.1, momentum_weights="new", running_var="unbiased", axis=1)
    fields.update(changes)
    return Convention(**fields)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        make(eps=eps)


def test_eps_must_be_finite():
    with pytest.raises(ValueError, match="eps"):
        make(eps=float("inf"))


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_momentum_must_lie_in_the_unit_interval(momentum):
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\] or be None"):
        make(momentum=momentum)


def test_momentum_endpoints_are_allowed():
    assert make(momentum=0.0).new_value_weight(3) == 0.0
    assert make(momentum=1.0, momentum_weights="old").new_value_weight(3) == 0.0


def test_momentum_weights_and_running_var_are_checked():
    with pytest.raises(ValueError, match="momentum_weights must be 'new' or 'old'; got 'both'"):
        make(momentum_weights="both")
    with pytest.raises(ValueError, match="running_var must be 'unbiased' or 'biased'; got 'sample'"):
        make(running_var="sample")


def test_conventions_are_immutable_and_replace_validates():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PYTORCH.eps = 1e-3  # type: ignore[misc]
    changed = PYTORCH.replace(eps=1e-3)
    assert changed.eps == 1e-3 and PYTORCH.eps == 1e-5
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        PYTORCH.replace(eps=0.0)


# ----------------------------------------------------------------------------------------------------
# Against the frameworks themselves
# ----------------------------------------------------------------------------------------------------


def test_pytorch_convention_matches_torch(torch):
    for cls in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d):
        bn = cls(3)
        assert bn.eps == PYTORCH.eps and bn.momentum == PYTORCH.momentum
        assert torch.all(bn.running_mean == PYTORCH.init_mean) and torch.all(bn.running_var == PYTORCH.init_var)
    # momentum = 1: the running buffers become the batch's own statistics, which shows the variance kind
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(5, 3, 2, 2))
    bn = torch.nn.BatchNorm2d(3, momentum=1.0).double()
    bn(torch.from_numpy(x))
    m = 5 * 2 * 2  # N*H*W values per channel
    np.testing.assert_allclose(bn.running_var.numpy(), x.var(axis=(0, 2, 3), ddof=1), rtol=(m + 8) * EPS64)
    # both variances are within (m + 8) eps64 of the exact ones, so their ratio within 2 (m + 8) eps64
    ratio = bn.running_var.numpy() / x.var(axis=(0, 2, 3))
    assert np.all(np.abs(ratio - m / (m - 1)) <= 2 * (m + 8) * EPS64 * m / (m - 1))


def test_keras_convention_matches_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")  # a failure, not a skip, under BNREF_REQUIRE_FRAMEWORKS=1 (conftest.py)

    layer = keras.layers.BatchNormalization()
    assert layer.epsilon == KERAS.eps and layer.momentum == KERAS.momentum and layer.axis == KERAS.axis
    layer.build((None, 3))
    assert np.all(layer.moving_mean.numpy() == KERAS.init_mean)
    assert np.all(layer.moving_variance.numpy() == KERAS.init_var)
    # momentum = 0: the moving statistics become the batch's own, which shows the variance kind (biased)
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(40, 3)).astype(np.float32)
    layer = keras.layers.BatchNormalization(momentum=0.0)
    layer(x, training=True)
    truth = x.astype(np.float64).var(axis=0)
    # float32 sum of 40 squares: relative error <= (m + 4) eps32; the unbiased value would be 2.5% higher
    np.testing.assert_allclose(layer.moving_variance.numpy(), truth, rtol=44 * float(np.finfo(np.float32).eps))


# ----------------------------------------------------------------------------------------------------
# Flax (issue 13). Measured on the installed flax.linen.BatchNorm in tests/test_jax_bn.py (which imports JAX);
# here only the data, so this module stays free of JAX.
# ----------------------------------------------------------------------------------------------------


def test_flax_defaults():
    from bnref.conventions import FLAX

    assert (FLAX.eps, FLAX.momentum, FLAX.momentum_weights) == (1e-5, 0.99, "old")
    assert (FLAX.running_var, FLAX.axis, FLAX.init_mean, FLAX.init_var) == ("biased", -1, 0.0, 1.0)
    assert FLAX.var_method == "one-pass"  # use_fast_variance=True by default
    # the same update weight as Keras: momentum 0.99 is kept on the old value
    assert FLAX.new_value_weight(7) == KERAS.new_value_weight(7) == 1.0 - 0.99


def test_flax_two_pass_is_flax_with_use_fast_variance_false():
    from bnref.conventions import FLAX, FLAX_TWO_PASS

    assert FLAX_TWO_PASS == FLAX.replace(name="flax-two-pass", var_method="two-pass")
    assert get_convention("flax") is FLAX and get_convention("flax-two-pass") is FLAX_TWO_PASS
    assert CONVENTIONS["flax"] is FLAX


def test_var_method_defaults_to_two_pass_and_is_checked():
    for conv in (PYTORCH, PYTORCH_CUMULATIVE, KERAS, PAPER):
        assert conv.var_method == "two-pass"  # the field's default leaves the existing conventions unchanged
    assert make(var_method="one-pass").var_method == "one-pass"
    with pytest.raises(ValueError, match="var_method must be 'two-pass' or 'one-pass'"):
        make(var_method="welford")


# ----------------------------------------------------------------------------------------------------
# Named errors: TypeError for a wrong type, ValueError for a wrong value
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init_var", [-1, -1e-12, float("inf"), float("nan")])
def test_init_var_must_be_a_finite_variance(init_var):
    with pytest.raises(ValueError, match=r"init_var must be a finite number >= 0 \(a variance\); got"):
        make(init_var=init_var)
    with pytest.raises(ValueError, match="init_var must be a finite number >= 0"):
        PYTORCH.replace(init_var=init_var)


def test_init_mean_must_be_finite():
    with pytest.raises(ValueError, match="init_mean must be finite; got nan"):
        make(init_mean=float("nan"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("eps", True, r"eps must be a real number; got True \(bool\)"),
        ("eps", "1e-5", r"eps must be a real number; got '1e-5' \(str\)"),
        ("momentum", True, r"momentum must be a real number; got True \(bool\)"),
        ("momentum", "0.1", r"momentum must be a real number; got '0.1'"),
        ("axis", 1.0, r"axis must be an integer; got 1.0 \(float\)"),
        ("init_var", "1", r"init_var must be a real number; got '1'"),
        ("name", 3, r"name must be a string; got 3 \(int\)"),
        ("running_var", None, r"running_var must be 'unbiased' or 'biased'; got None \(NoneType\)"),
    ],
)
def test_wrong_types_are_type_errors(field, value, message):
    with pytest.raises(TypeError, match=message):
        make(**{field: value})


@pytest.mark.parametrize("name", [["pytorch"], None, 1, PYTORCH.__dict__])
def test_get_convention_of_something_else_than_a_name_is_a_type_error(name):
    with pytest.raises(TypeError, match="convention must be a Convention or the name of one; got"):
        get_convention(name)


def test_step_of_the_cumulative_weight_must_be_an_integer():
    with pytest.raises(TypeError, match=r"step must be an integer; got 1.5 \(float\)"):
        PYTORCH_CUMULATIVE.new_value_weight(1.5)
