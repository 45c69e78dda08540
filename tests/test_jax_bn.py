"""bnref.layers.jax_bn: the derived backward (custom_vjp) against autodiff and the NumPy oracle, the Flax drop-in
against flax.linen.BatchNorm, and Flax's BN convention measured on the installed layer (flax 0.12.8, CPU).

Float64. JAX computes in float32 unless 64-bit types are enabled. The float64 tests enable them only inside
the ``x64`` fixture, ``with jax.enable_x64(True):`` -- JAX's context manager for the ``jax_enable_x64``
setting, which restores the previous value when the test ends, so nothing leaks into other tests (the fixture
and test_x64_is_off_outside_the_fixture check that the setting is off outside it).

Tolerances. Every bound is bnref.testing's (book appendix ``ch-bounds``): ``training_bounds`` gives the
absolute bound per channel on y, dx, dgamma, dbeta of one training step computed in a dtype, from the float64
oracle's x_hat and dy; ``running_mean_bound`` / ``running_var_bound`` and ``inference_bound`` the others.
Two implementations that each lie within a bound of the oracle lie within twice that bound of each other.
"""

from __future__ import annotations

import inspect
import math

import flax  # installed wherever the suite runs (requirements.txt): a missing framework is an error, not a skip
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnref import reference
from bnref.conventions import FLAX, FLAX_TWO_PASS, KERAS, PAPER, PYTORCH, get_convention
from bnref.layers.jax_bn import BatchNorm, batch_norm_infer, batch_norm_plain, batch_norm_train, running_update
from bnref.testing import (
    BOUND_C,
    channel_summaries,
    inference_bound,
    machine_eps,
    reduction_error,
    running_mean_bound,
    running_var_bound,
    training_bounds,
)

EPS64 = machine_eps("float64")


@pytest.fixture
def x64():
    """64-bit JAX types for one test only (jax.enable_x64 is a context manager; the setting is restored)."""
    with jax.enable_x64(True):
        yield
    assert not jax.config.jax_enable_x64


def test_x64_is_off_outside_the_fixture():
    assert not jax.config.jax_enable_x64
    assert jnp.ones(1).dtype == jnp.float32


# ----------------------------------------------------------------------------------------------------
# The float64 oracle and its bounds
# ----------------------------------------------------------------------------------------------------


def _as_2d(a: np.ndarray, axis: int) -> np.ndarray:
    """(m, C): the channel axis last, every other axis flattened."""
    return np.moveaxis(np.asarray(a, np.float64), axis, -1).reshape(-1, a.shape[axis])


def _oracle(x, gamma, beta, dy, eps, axis, dtype):
    """The NumPy reference in float64 and the per-channel bounds for a computation in ``dtype``."""
    x64 = np.asarray(x, np.float64)
    y, cache = reference.batch_norm_forward(x64, gamma, beta, eps, axis)
    dx, dgamma, dbeta = reference.batch_norm_backward(np.asarray(dy, np.float64), cache)
    s = channel_summaries(_as_2d(cache.x_hat, axis), _as_2d(dy, axis), cache.mean, cache.var, eps)
    bounds = training_bounds(s, gamma, beta, dgamma, dtype)
    exact = {"y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta, "mean": cache.mean, "var": cache.var}
    return exact, bounds, s


def _assert_within(name, actual, exact, bound_per_channel, axis, factor=1.0):
    """max |actual - exact| per channel <= factor * bound (channel on ``axis`` for full arrays)."""
    diff = np.abs(np.asarray(actual, np.float64) - exact)
    per_channel = _as_2d(diff, axis).max(axis=0) if diff.ndim > 1 else diff
    ratio = per_channel / (factor * bound_per_channel)
    assert np.all(ratio <= 1.0), f"{name}: error / bound = {ratio.max():.3g}"
    return float(ratio.max())


def _case(shape, axis, seed, dtype, loc=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = (rng.normal(size=shape) * scale + loc).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.normal(size=c).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dy


# (N, C), (N, H, W, C) and a non-default axis; few and small, because JAX compiles every primitive once per
# shape and dtype (the whole file must stay within seconds).
SHAPES = [((8, 3), -1), ((2, 2, 2, 3), -1), ((4, 3, 2), 1)]


# ----------------------------------------------------------------------------------------------------
# The functions: custom_vjp vs jax.grad of the plain forward vs the NumPy oracle
# ----------------------------------------------------------------------------------------------------


def _grads(fns, x, gamma, beta, dy, cotangents=None):
    """For each function, y and its vjp with dy (or with its own cotangent where ``cotangents`` gives one):
    all in one jit (compiling one program costs a fifth of running a new shape eagerly, and one program with
    everything less than several)."""
    cotangents = cotangents or [None] * len(fns)

    @jax.jit
    def run(x, gamma, beta, dy, cotangents):
        out = []
        for fn, ct in zip(fns, cotangents, strict=True):
            y, vjp = jax.vjp(fn, x, gamma, beta)
            out.append((y, *vjp(dy if ct is None else ct)))
        return out

    return run(x, gamma, beta, dy, cotangents)


def test_derived_backward_matches_autodiff_and_oracle_in_float64(x64):
    """custom_vjp (the derived backward) and jax.grad of the plain forward, on every shape of SHAPES, against
    the NumPy oracle within the float64 bounds, and against each other within twice them."""
    cases = [_case(shape, axis, 0, np.float64) for shape, axis in SHAPES]

    @jax.jit  # one program for every case: compiling costs more than running here
    def run(cases):
        out = []
        for (x, gamma, beta, dy), (_, axis) in zip(cases, SHAPES, strict=True):
            for fn in (
                lambda x, g, b, axis=axis: batch_norm_train(x, g, b, FLAX.eps, axis)[0],
                lambda x, g, b, axis=axis: batch_norm_plain(x, g, b, FLAX.eps, axis),
            ):
                y, vjp = jax.vjp(fn, x, gamma, beta)
                out.append((y, *vjp(dy)))
        return out

    results = run(cases)
    for k, ((shape, axis), (x, gamma, beta, dy)) in enumerate(zip(SHAPES, cases, strict=True)):
        exact, bounds, _ = _oracle(x, gamma, beta, dy, FLAX.eps, axis, "float64")
        derived, autodiff = results[2 * k], results[2 * k + 1]
        for name, d, a in zip(("y", "dx", "dgamma", "dbeta"), derived, autodiff, strict=True):
            assert d.dtype == jnp.float64
            _assert_within(f"{shape} {name}", d, exact[name], bounds[name], axis)
            _assert_within(f"{shape} {name} (autodiff)", a, exact[name], bounds[name], axis)
            _assert_within(f"{shape} {name} (derived vs autodiff)", d, np.asarray(a), bounds[name], axis, factor=2.0)


def test_float32_within_the_derived_bounds_of_the_float64_oracle():
    """One shape here; the drop-in test below checks the same in float32 on every shape of SHAPES."""
    shape, axis = SHAPES[1]
    x, gamma, beta, dy = _case(shape, axis, 1, np.float32)
    exact, bounds, _ = _oracle(x, gamma, beta, dy, FLAX.eps, axis, "float32")
    [(y, dx, dgamma, dbeta), (var, dx_of_var, _, _)] = _grads(
        [
            lambda x, g, b: batch_norm_train(x, g, b, FLAX.eps, axis)[0],
            lambda x, g, b: batch_norm_train(x, g, b, FLAX.eps, axis)[2],  # the statistics: stop_gradient
        ],
        x,
        gamma,
        beta,
        dy,
        [None, np.ones(3, np.float32)],
    )
    assert y.dtype == dx.dtype == dgamma.dtype == var.dtype == jnp.float32
    for name, a in (("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)):
        _assert_within(name, a, exact[name], bounds[name], axis)
    assert np.all(np.asarray(dx_of_var) == 0)


def test_second_derivatives_equal_autodiffs(x64):
    """The derived backward is written in jnp, so it can itself be differentiated (grad of grad)."""
    x, gamma, _, dy = _case((6, 3), -1, 3, np.float64)
    v = np.random.default_rng(4).normal(size=(6, 3))

    def second(fn):
        inner = lambda x, g: jax.vjp(lambda x: fn(x, g), x)[1](jnp.asarray(dy))[0]  # noqa: E731
        return jax.jit(lambda x, g: jax.vjp(inner, x, g)[1](jnp.asarray(v)))(x, gamma)

    derived = second(lambda x, g: batch_norm_train(x, g, None, check_finite=False)[0])
    autodiff = second(lambda x, g: batch_norm_plain(x, g, None))
    # Second derivatives are sums over the m = 6 values of products of dy, v, gamma and up to two factors
    # (1 + |x_hat|), divided by sigma^2: condition scale m max|gamma| max|dy| max|v| (1 + X)^2 / min(sigma)^2.
    _, cache = reference.batch_norm_forward(x, gamma, np.zeros(3), FLAX.eps, axis=-1)
    sigma2 = cache.var + FLAX.eps
    big_x = np.max(np.abs(cache.x_hat))
    scale = 6 * np.max(np.abs(gamma)) * np.max(np.abs(dy)) * np.max(np.abs(v)) * (1 + big_x) ** 2 / np.min(sigma2)
    for a, b in zip(derived, autodiff, strict=True):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= reduction_error("float64", 6) * scale


def test_variance_keeps_float32_precision_at_mean_over_std_1e4():
    """|mean|/std = 1e4 in float32: the corrected two-pass mean and variance stay within their bounds (see
    _two_pass_var_bound) and y within a bound free of |mean|/std; the one-pass E[x^2] - E[x]^2 (Flax's
    default) misses the variance bound by far."""
    x = (np.random.default_rng(5).normal(size=(256, 3)) + 1e4).astype(np.float32)
    true_mean, true_var, var_bound = _two_pass_var_bound(x)
    y, mean, var = jax.jit(batch_norm_train)(x)
    y_hat = (x.astype(np.float64) - true_mean) / np.sqrt(true_var + FLAX.eps)
    s = channel_summaries(y_hat, np.zeros_like(y_hat), true_mean, true_var, FLAX.eps)
    # y = x_hat (gamma 1, beta 0). The appendix's bound e (r + X) (eq-bound-y) allows the error e |mean| of a
    # plain two-pass mean; the corrected centring removes it: the centred values x - mean are corrected by
    # their own mean, computed to e sigma X, so x_hat is off by about e (1 + X): independent of r = 1e4.
    e = reduction_error("float32", 256)
    assert np.all(np.max(np.abs(np.asarray(y, np.float64) - y_hat), axis=0) <= e * (1 + s.x_max))
    mean_bound = running_mean_bound(np.zeros(3), 1.0, s, true_mean, np.zeros(3), "float32")
    assert np.all(np.abs(np.asarray(var, np.float64) - true_var) <= var_bound)
    assert np.all(np.abs(np.asarray(mean, np.float64) - true_mean) <= mean_bound)
    xj = jnp.asarray(x)
    one_pass = jnp.mean(xj * xj, axis=0) - jnp.mean(xj, axis=0) ** 2
    assert np.max(np.abs(np.asarray(one_pass, np.float64) - true_var) / var_bound) > 10


def test_inference_matches_the_oracle(x64):
    x, gamma, beta, _ = _case((2, 2, 2, 3), -1, 6, np.float64)
    rng = np.random.default_rng(7)
    r_mean, r_var = rng.normal(size=3), rng.uniform(0.5, 2.0, 3)
    y = batch_norm_infer(x, gamma, beta, r_mean, r_var, FLAX.eps, -1)
    expected = reference.batch_norm_inference(x, gamma, beta, r_mean, r_var, FLAX.eps, axis=-1)
    bound = inference_bound(_as_2d(x, -1), gamma, beta, r_mean, r_var, FLAX.eps, 0.0, 0.0, "float64")
    _assert_within("inference y", y, expected, bound, -1)


@pytest.mark.parametrize("convention", [FLAX, PYTORCH, KERAS, PAPER])
def test_running_update_follows_the_convention_like_the_reference(convention, x64):
    rng = np.random.default_rng(8)
    r_mean, r_var, b_mean, b_var = (
        rng.normal(size=3),
        rng.uniform(0.5, 2, 3),
        rng.normal(size=3),
        rng.uniform(0.5, 2, 3),
    )
    step, m = 3, 12
    ours = running_update(r_mean, r_var, b_mean, b_var, m, convention, step)
    expected = reference.update_running_stats(r_mean, r_var, b_mean, b_var, m, step, convention)
    for a, b in zip(ours, expected, strict=True):
        # a convex combination of O(1) values: a few roundings (rule written as momentum*r + (1-momentum)*b
        # for the "old" conventions, as (1-w) r + w b in the reference)
        assert np.max(np.abs(np.asarray(a) - b)) <= BOUND_C * EPS64 * 4


def test_functions_validate_their_input():
    x = np.ones((4, 3), np.float32) + np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        batch_norm_train(np.arange(4.0, dtype=np.float32))
    with pytest.raises(ValueError, match="out of range"):
        batch_norm_train(x, axis=2)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        batch_norm_train(x[:1])
    with pytest.raises(ValueError, match="gamma must have shape \\(3,\\)"):
        batch_norm_train(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="eps"):
        batch_norm_train(x, eps=0.0)
    with pytest.raises(ValueError, match="floating-point"):
        batch_norm_train(np.ones((4, 3), np.int32))
    with pytest.raises(ValueError, match="complex"):
        batch_norm_train(x.astype(np.complex64))
    with pytest.raises(ValueError, match="non-finite"):
        batch_norm_train(np.where(x > 5, np.nan, x))
    with pytest.raises(ValueError, match="broadcast"):
        batch_norm_train(x, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="unbiased variance needs at least 2"):
        running_update(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), 1, PYTORCH)


# ----------------------------------------------------------------------------------------------------
# Flax's convention, measured on the installed flax.linen.BatchNorm
# ----------------------------------------------------------------------------------------------------


def _variables(c: int, dtype=jnp.float32, params=None) -> dict:
    """Flax BatchNorm's initial variables for c channels, built directly (cheaper than init; that they equal
    init's is test_same_variables_names_shapes_dtypes_and_random_init)."""
    if params is None:
        params = {"scale": jnp.ones(c, dtype), "bias": jnp.zeros(c, dtype)}
    return {"params": params, "batch_stats": {"mean": jnp.zeros(c, dtype), "var": jnp.ones(c, dtype)}}


def test_measured_flax_defaults_are_the_flax_convention():
    native = nn.BatchNorm()
    assert flax.__version__ == "0.12.8"
    assert (native.epsilon, native.momentum, native.axis) == (FLAX.eps, FLAX.momentum, FLAX.axis)
    assert native.use_fast_variance == (FLAX.var_method == "one-pass")
    assert get_convention("flax") is FLAX and get_convention("flax-two-pass") is FLAX_TWO_PASS
    assert FLAX_TWO_PASS == FLAX.replace(name="flax-two-pass", var_method="two-pass")


def test_measured_eps_is_inside_the_square_root(x64):
    """Inference with running var v: y = x / sqrt(v + eps). v = 0 gives eps = (x / y)^2; v = 1e-4 tells
    sqrt(v + eps) (0.010488) from sqrt(v) + eps (0.010010)."""
    x = np.linspace(1.0, 2.0, 6).reshape(2, 3)
    native = nn.BatchNorm(use_running_average=True, param_dtype=jnp.float64)
    variables = _variables(3, jnp.float64)
    run = jax.jit(native.apply)
    for v in (0.0, 1e-4):
        stats = {"mean": jnp.zeros(3), "var": jnp.full(3, v)}
        y = np.asarray(run({**variables, "batch_stats": stats}, x))
        denominator = x / y
        if v == 0.0:
            measured_eps = denominator**2
            # x / y recovers sqrt(eps) to a few roundings: relative error of its square <= 2 C eps64
            assert np.max(np.abs(measured_eps / FLAX.eps - 1)) <= 2 * BOUND_C * EPS64
        else:
            assert np.max(np.abs(denominator - math.sqrt(v + FLAX.eps))) <= BOUND_C * EPS64
            assert np.min(np.abs(denominator - (math.sqrt(v) + FLAX.eps))) > 1e-4


def test_measured_momentum_rule_running_variance_and_axes(x64):
    """One step from chosen running values: new = a * old + (1 - a) * batch, solved for a; the variance fed
    compared with the biased and the unbiased batch variance (m = 4: they differ by a factor 4/3); the axes
    reduced read from which batch mean reproduces the update."""
    rng = np.random.default_rng(9)
    cases = [((4, 3), -1, FLAX.momentum), ((4, 3), -1, 0.9), ((2, 3, 2), 1, FLAX.momentum)]
    xs = [rng.normal(size=shape) * 2 + 1 for shape, _, _ in cases]
    olds = [(rng.normal(size=shape[axis]), rng.uniform(1, 2, shape[axis])) for shape, axis, _ in cases]

    @jax.jit
    def run(xs, olds):
        out = []
        for (shape, axis, momentum), x, (old_mean, old_var) in zip(cases, xs, olds, strict=True):
            native = nn.BatchNorm(momentum=momentum, axis=axis, param_dtype=jnp.float64)
            variables = {**_variables(shape[axis], jnp.float64), "batch_stats": {"mean": old_mean, "var": old_var}}
            out.append(native.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[1])
        return out

    for (shape, axis, momentum), x, (old_mean, old_var), state in zip(cases, xs, olds, run(xs, olds), strict=True):
        stats = state["batch_stats"]
        # the axes: Flax reduces over every axis but `axis` (the update matches these batch statistics only)
        batch_mean, batch_var = reference.batch_mean_var(x, axis=axis)
        m = x.size // shape[axis]
        # the weight kept on the old value, solved from the mean's update; float64: error ~ eps64 |values| /
        # |old - batch| ~ 1e-15, far below the 0.09 that separates 0.99 from 0.9 (or 0.01)
        a = (np.asarray(stats["mean"]) - batch_mean) / (old_mean - batch_mean)
        assert np.max(np.abs(a - momentum)) <= 1e-9
        assert FLAX.momentum_weights == "old" and FLAX.momentum == nn.BatchNorm().momentum
        fed = (np.asarray(stats["var"]) - momentum * old_var) / (1 - momentum)
        # float64 update: error ~ eps64 |values| / (1 - momentum) ~ 1e-13, against a 33% difference
        assert np.max(np.abs(fed - batch_var)) <= 1e-9
        assert np.min(np.abs(fed - batch_var * m / (m - 1))) > 0.1 * np.min(batch_var)
        assert FLAX.running_var == "biased"


def _two_pass_var_bound(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact mean, exact biased var, bound on a float32 two-pass variance) per channel of x (m, C).

    bnref.testing.running_var_bound with weight 1 and no previous error (appendix eq-bound-two-pass):
    e var + (e (|mean| + sigma X))^2 with e = C eps32 (1 + sqrt(m)); for m = 256, |mean| = 1e4, var = 1 that
    is 8.1e-6 + (8.1e-6 * 1e4)^2 ~ 6.6e-3. The one-pass E[x^2] - E[x]^2 rounds E[x^2] ~ 1e8 to the float32
    spacing 8.
    """
    true_mean, true_var = reference.batch_mean_var(x.astype(np.float64), axis=-1)
    y_hat = (x.astype(np.float64) - true_mean) / np.sqrt(true_var + FLAX.eps)
    s = channel_summaries(y_hat, np.zeros_like(y_hat), true_mean, true_var, FLAX.eps)
    zero = np.zeros(x.shape[-1])
    return true_mean, true_var, running_var_bound(zero, 1.0, s, true_mean, true_var, zero, "float32", unbiased=False)


def test_measured_fast_variance_loses_precision_at_large_mean_over_std():
    """float32, |mean|/std = 1e4: Flax's default one-pass variance misses the two-pass bound by far;
    use_fast_variance=False keeps within it. The drop-in ignores use_fast_variance: both of its settings give
    the same, exact variance. (momentum 0 makes the running variance the batch variance.)"""
    x = (np.random.default_rng(10).normal(size=(256, 3)) + 1e4).astype(np.float32)
    _, true_var, bound = _two_pass_var_bound(x)
    settings = [(cls, fast) for cls in (nn.BatchNorm, BatchNorm) for fast in (True, False)]
    run = jax.jit(
        lambda v, x: [
            cls(momentum=0.0, use_fast_variance=fast).apply(v, x, use_running_average=False, mutable=True)
            for cls, fast in settings
        ]
    )
    errors, outputs = {}, {}
    for (cls, fast), (y, state) in zip(settings, run(_variables(3), x), strict=True):
        errors[cls, fast] = np.abs(np.asarray(state["batch_stats"]["var"], np.float64) - true_var) / bound
        outputs[cls, fast] = (y, state["batch_stats"]["var"])
    assert FLAX.var_method == "one-pass" and np.max(errors[nn.BatchNorm, True]) > 10
    assert FLAX_TWO_PASS.var_method == "two-pass" and np.max(errors[nn.BatchNorm, False]) <= 1
    assert np.max(errors[BatchNorm, True]) <= 1 and np.max(errors[BatchNorm, False]) <= 1
    for a, b in zip(outputs[BatchNorm, True], outputs[BatchNorm, False], strict=True):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------------------------
# The drop-in: the same variables, outputs, gradients and batch_stats as flax.linen.BatchNorm
# ----------------------------------------------------------------------------------------------------


def test_same_variables_names_shapes_dtypes_and_random_init():
    x = np.ones((2, 2, 2, 3), np.float32)
    init = nn.initializers.normal(1.0)
    kw = dict(scale_init=init, bias_init=init, use_running_average=False)
    ours, native = jax.jit(lambda k, x: [cls(**kw).init(k, x) for cls in (BatchNorm, nn.BatchNorm)])(
        jax.random.key(1), x
    )
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(native)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(native), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    assert issubclass(BatchNorm, nn.BatchNorm)  # so the same dataclass fields, defaults and constructor

    def call_parameters(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls.__call__).parameters.values()]

    assert call_parameters(BatchNorm) == call_parameters(nn.BatchNorm)  # (x, use_running_average=None, *, mask=None)

    class Model(nn.Module):
        bn: type

        @nn.compact
        def __call__(self, x):
            return self.bn(use_running_average=False)(nn.Dense(3)(x))

    names = [
        jax.tree_util.tree_structure(jax.eval_shape(Model(cls).init, jax.random.key(0), np.ones((2, 5), np.float32)))
        for cls in (BatchNorm, nn.BatchNorm)
    ]
    assert names[0] == names[1]  # 'BatchNorm_0' under params and batch_stats in both


def test_drop_in_agrees_with_flax_in_training_and_inference():
    """On every shape of SHAPES, the same variables applied with both: y, dx, dscale, dbias and batch_stats
    within the bounds of the float64 oracle, then inference with the updated statistics. Flax with
    use_fast_variance=False on every shape, and with the default (True) on (N, C) at |mean|/std = 0.25, where
    the one-pass variance costs nothing. (That the drop-in ignores use_fast_variance is checked at
    |mean|/std = 1e4 in test_measured_fast_variance_loses_precision_at_large_mean_over_std.)"""
    cases = []
    for shape, axis in SHAPES:
        x, _, _, dy = _case(shape, axis, 11, np.float32)
        rng = np.random.default_rng(12)
        c = shape[axis]
        params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32), "bias": jnp.asarray(rng.normal(size=c))}
        cases.append((x, dy, _case(shape, axis, 13, np.float32)[0], params))
    names = ("ours", "flax two-pass", "flax default")

    @jax.jit  # one program for every shape and module: compiling costs more than running here
    def run(cases):
        out = []
        for k, ((x, dy, x_new, p), (_, axis)) in enumerate(zip(cases, SHAPES, strict=True)):
            modules = (
                BatchNorm(axis=axis, use_fast_variance=False),
                nn.BatchNorm(axis=axis, use_fast_variance=False),
                nn.BatchNorm(axis=axis),
            )[: 3 if k == 0 else 2]
            per_module = {}
            for name, module in zip(names, modules, strict=False):

                def f(x, p, module=module, c=x.shape[axis]):
                    v = {**_variables(c), "params": p}
                    return module.apply(v, x, use_running_average=False, mutable=["batch_stats"])

                y, vjp, state = jax.vjp(f, x, p, has_aux=True)
                dx, dp = vjp(dy)
                stats = state["batch_stats"]
                y_inf = module.apply({"params": p, "batch_stats": stats}, x_new, use_running_average=True)
                per_module[name] = dict(y=y, dx=dx, dgamma=dp["scale"], dbeta=dp["bias"], stats=stats, y_inf=y_inf)
            out.append(per_module)
        return out

    for (shape, axis), (x, dy, x_new, params), results in zip(SHAPES, cases, run(cases), strict=True):
        c = shape[axis]
        gamma, beta = np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)
        exact, bounds, s = _oracle(x, gamma, beta, dy, FLAX.eps, axis, "float32")
        w, zero = FLAX.new_value_weight(1), np.zeros(c)
        expected_mean = (1 - w) * FLAX.init_mean + w * exact["mean"]
        expected_var = (1 - w) * FLAX.init_var + w * exact["var"]
        mb = running_mean_bound(zero, w, s, exact["mean"], expected_mean, "float32")
        vb = running_var_bound(zero, w, s, exact["mean"], exact["var"], expected_var, "float32", unbiased=False)
        expected_inf = reference.batch_norm_inference(
            x_new.astype(np.float64), gamma, beta, expected_mean, expected_var, FLAX.eps, axis=axis
        )
        x2d = _as_2d(x_new, axis)
        ib = inference_bound(x2d, gamma, beta, expected_mean, expected_var, FLAX.eps, mb, vb, "float32")
        for name, got in results.items():
            where = f"{shape} axis {axis} {name}"
            for key in ("y", "dx", "dgamma", "dbeta"):
                assert got[key].dtype == jnp.float32
                _assert_within(f"{where} {key}", got[key], exact[key], bounds[key], axis)
            _assert_within(f"{where} running mean", got["stats"]["mean"], expected_mean, mb, 0)
            _assert_within(f"{where} running var", got["stats"]["var"], expected_var, vb, 0)
            _assert_within(f"{where} inference y", got["y_inf"], expected_inf, ib, axis)


def test_several_feature_axes_as_flax():
    """axis=(1, 3) on (N, A, H, B): the features are the (A, B) pairs (params of shape (A, B)), each normalised
    over N and H. The oracle: the same array with the feature axes moved last and flattened to A * B channels."""
    rng = np.random.default_rng(20)
    x = (rng.normal(size=(4, 3, 2, 2)) * 2 + 1).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    variables = _variables(6)
    variables = jax.tree_util.tree_map(lambda a: a.reshape(3, 2), variables)
    modules = (BatchNorm(axis=(1, 3), use_fast_variance=False), nn.BatchNorm(axis=(1, 3), use_fast_variance=False))

    @jax.jit
    def run(x, dy):
        out = []
        for module in modules:

            def f(x, module=module):
                return module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

            y, vjp, state = jax.vjp(f, x, has_aux=True)
            out.append((y, vjp(dy)[0], state["batch_stats"]))
        return out

    flat = lambda a: np.moveaxis(np.asarray(a, np.float64), (1, 3), (2, 3)).reshape(8, 6)  # noqa: E731
    exact, bounds, s = _oracle(flat(x), np.ones(6), np.zeros(6), flat(dy), FLAX.eps, -1, "float32")
    w = FLAX.new_value_weight(1)
    expected_var = (1 - w) * FLAX.init_var + w * exact["var"]
    vb = running_var_bound(np.zeros(6), w, s, exact["mean"], exact["var"], expected_var, "float32", unbiased=False)
    for y, dx, stats in run(x, dy):
        assert stats["var"].shape == (3, 2)
        _assert_within("y", flat(y), exact["y"], bounds["y"], -1)
        _assert_within("dx", flat(dx), exact["dx"], bounds["dx"], -1)
        _assert_within("running var", np.asarray(stats["var"]).reshape(6), expected_var, vb, 0)


def test_named_axis_statistics_agree_with_flax_under_vmap():
    """axis_name: two shards under jax.vmap (one CPU device); statistics and the backward's sums span both."""
    rng = np.random.default_rng(14)
    xs = (rng.normal(size=(2, 6, 3)) * 2 + 1).astype(np.float32)
    dy = rng.normal(size=(2, 6, 3)).astype(np.float32)
    exact, bounds, s = _oracle(xs.reshape(12, 3), np.ones(3), np.zeros(3), dy.reshape(12, 3), FLAX.eps, -1, "float32")
    modules = (BatchNorm(axis_name="shards", use_fast_variance=False), nn.BatchNorm(axis_name="shards"))
    variables = _variables(3)

    def step(x, g):
        out = []
        for module in modules:

            def f(x, p, module=module):
                y, st = module.apply({**variables, "params": p}, x, use_running_average=False, mutable=["batch_stats"])
                return y, st["batch_stats"]

            y, vjp, st = jax.vjp(f, x, variables["params"], has_aux=True)
            out.append((y, vjp(g), st))
        return out

    expected_mean = FLAX.new_value_weight(1) * exact["mean"]
    mb = running_mean_bound(np.zeros(3), FLAX.new_value_weight(1), s, exact["mean"], expected_mean, "float32")
    for y, (dx, dp), stats in jax.jit(jax.vmap(step, axis_name="shards"))(xs, dy):
        _assert_within("y", np.asarray(y).reshape(12, 3), exact["y"], bounds["y"], -1)
        _assert_within("dx", np.asarray(dx).reshape(12, 3), exact["dx"], bounds["dx"], -1)
        _assert_within("dbeta", np.asarray(dp["bias"]).sum(0), exact["dbeta"], bounds["dbeta"], 0)
        for shard in range(2):  # every shard holds the global statistics
            _assert_within("running mean", stats["mean"][shard], expected_mean, mb, 0)


def test_mask_agrees_with_flax():
    """A mask: statistics over the kept values only, every value normalised with them. The oracle, per channel
    with n kept values, w = 1 kept / 0 not: mean and biased var of the kept values, and the derivation of
    eq-dx-compact with the sums weighted, dx = gamma inv_std (dy - w / n (sum dy + x_hat sum dy x_hat)).
    Bounds: bnref.testing.training_bounds with m = 10 (a masked sum has at most m terms)."""
    rng = np.random.default_rng(15)
    x = (rng.normal(size=(10, 3)) * 2 + 1).astype(np.float32)
    dy = rng.normal(size=(10, 3)).astype(np.float32)
    mask = rng.uniform(size=(10, 3)) > 0.3
    variables = _variables(3)
    modules = (BatchNorm(use_fast_variance=False), nn.BatchNorm(use_fast_variance=False))

    @jax.jit
    def run(x, dy):
        out = []
        for module in modules:

            def f(x, module=module):
                return module.apply(variables, x, use_running_average=False, mutable=["batch_stats"], mask=mask)[0]

            y, vjp = jax.vjp(f, x)
            out.append((y, vjp(dy)[0]))
        return out

    x64, dy64, w = x.astype(np.float64), dy.astype(np.float64), mask.astype(np.float64)
    n = w.sum(axis=0)
    mean = (w * x64).sum(axis=0) / n
    var = (w * (x64 - mean) ** 2).sum(axis=0) / n
    inv_std = 1 / np.sqrt(var + FLAX.eps)
    x_hat = (x64 - mean) * inv_std
    dx = inv_std * (dy64 - w / n * (dy64.sum(axis=0) + x_hat * (dy64 * x_hat).sum(axis=0)))
    s = channel_summaries(x_hat, dy64, mean, var, FLAX.eps)
    bounds = training_bounds(s, np.ones(3), np.zeros(3), (dy64 * x_hat).sum(axis=0), "float32")
    for y, dx_got in run(x, dy):
        _assert_within("masked y", y, x_hat, bounds["y"], -1)
        _assert_within("masked dx", dx_got, dx, bounds["dx"], -1)


def test_half_precision_input_gives_flax_dtypes():
    """bfloat16 input: the output and batch_stats dtypes are Flax's for dtype=None/bfloat16 and for
    force_float32_reductions=False with float32 or bfloat16 parameters; with force_float32_reductions (the
    default) the statistics are float32 and the outputs agree."""
    x = (np.random.default_rng(16).normal(size=(8, 3)) + 2).astype(jnp.bfloat16)
    settings = (
        {},
        {"dtype": jnp.bfloat16},
        {"force_float32_reductions": False},
        {"force_float32_reductions": False, "param_dtype": jnp.bfloat16},
    )

    def variables(kw):
        return jax.tree_util.tree_map(lambda a: a.astype(kw.get("param_dtype", jnp.float32)), _variables(3))

    @jax.jit
    def run(x):
        out = []
        for kw in settings:
            pair = []
            for cls in (BatchNorm, nn.BatchNorm):
                y, state = cls(**kw).apply(variables(kw), x, use_running_average=False, mutable=["batch_stats"])
                y_inf = cls(**kw).apply({**variables(kw), **state}, x, use_running_average=True)
                pair.append((y, state["batch_stats"]["mean"], y_inf))
            out.append(pair)
        return out

    for kw, ((y0, mean0, inf0), (y1, mean1, inf1)) in zip(settings, run(x), strict=True):
        assert (y0.dtype, mean0.dtype, inf0.dtype) == (y1.dtype, mean1.dtype, inf1.dtype), kw
        if kw.get("force_float32_reductions", True):
            assert y0.dtype == kw.get("dtype", jnp.float32) and mean0.dtype == jnp.float32
            # bfloat16 output: each rounds a float32 value within half a bfloat16 step (eps_bf16 = 2^-7,
            # |y| <= 3); float32 output: eq-bound-y, |x_hat| <= sqrt(m - 1), r ~ 2
            f32_tol = reduction_error("float32", 8) * (2 + np.sqrt(7))
            tol = machine_eps(y0.dtype) * 3 if y0.dtype == jnp.bfloat16 else f32_tol
            assert np.max(np.abs(np.asarray(y0, np.float32) - np.asarray(y1, np.float32))) <= 2 * tol


def test_flax_semantics_mutable_init_and_merge_param():
    """Flax's rules, which the drop-in keeps: init leaves batch_stats alone, training needs them mutable,
    use_running_average must be given once. (Errors of this kind are raised while tracing, so jit is cheap.)"""
    x = np.random.default_rng(17).normal(size=(8, 3)).astype(np.float32) * 3 + 2
    for module in (BatchNorm(), nn.BatchNorm()):
        init = jax.jit(lambda k, x, module=module: module.init(k, x, use_running_average=False))
        for batch in (x, x[:1]):  # one example per channel is fine during init (Flax models are set up so)
            variables = init(jax.random.key(0), batch)
            assert np.all(variables["batch_stats"]["mean"] == 0) and np.all(variables["batch_stats"]["var"] == 1)
        with pytest.raises(flax.errors.ModifyScopeVariableError):
            jax.jit(lambda v, x, module=module: module.apply(v, x, use_running_average=False))(variables, x)
        with pytest.raises(ValueError, match="use_running_average"):
            jax.jit(module.apply)(variables, x)  # neither the attribute nor the argument


def test_drop_in_raises_value_error_on_bad_input():
    bn = BatchNorm()
    x = np.random.default_rng(18).normal(size=(4, 3)).astype(np.float32)
    variables = _variables(3)

    def train(x, module=bn):
        return module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

    with pytest.raises(ValueError, match="axis 2 is out of range"):
        train(x, BatchNorm(axis=2))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        train(x[0])
    with pytest.raises(ValueError, match="does not match the variables"):
        train(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="does not match the variables"):
        train(x, BatchNorm(axis=0))  # 4 features on axis 0, variables for 3
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        train(x[:1])
    with pytest.raises(ValueError, match="non-finite"):
        train(np.where(x > 0, np.inf, x))
    with pytest.raises(ValueError, match="eps"):
        train(x, BatchNorm(epsilon=0.0))
    with pytest.raises(ValueError, match="complex"):
        train(x.astype(np.complex64))
    infer = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=True))
    assert infer(variables, x[:1]).shape == (1, 3)  # inference: any batch, one example included
