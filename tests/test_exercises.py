"""Tests of bnref.exercises: right answers pass, each known mistake gets its own diagnosis, misuse raises.

Every reader's function here is written as a learner would write it, independently of the module's own
variants, so a test fails if a checker stops recognising the code it is meant to recognise.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnref.exercises import (
    CheckResult,
    check_batch_norm_backward,
    check_batch_norm_forward,
    check_layer_norm_forward,
    check_running_update,
)


def axes_of(x):
    return (0,) + tuple(range(2, x.ndim))


def per_channel(p, x):
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


# Batch norm forward -----------------------------------------------------------------------------------------------


def bn_plain(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=axes_of(x), keepdims=True)
    var = x.var(axis=axes_of(x), keepdims=True)
    return per_channel(gamma, x) * (x - mu) / np.sqrt(var + eps) + per_channel(beta, x)


def bn_loops(x, gamma, beta, eps=1e-5):
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        xc = x[:, c]
        mu = xc.sum() / xc.size
        var = ((xc - mu) ** 2).sum() / xc.size  # two passes: the mean first
        y[:, c] = gamma[c] * (xc - mu) / np.sqrt(var + eps) + beta[c]
    return y


def bn_einsum(x, gamma, beta, eps=1e-5):
    xs = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, L)
    m = xs.shape[0] * xs.shape[2]
    mu = np.einsum("ncl->c", xs) / m
    xc = xs - mu[None, :, None]
    var = np.einsum("ncl,ncl->c", xc, xc) / m
    y = np.einsum("c,ncl->ncl", gamma / np.sqrt(var + eps), xc) + beta[None, :, None]
    return y.reshape(x.shape)


def bn_in_float32(x, gamma, beta, eps=1e-5):
    x, gamma, beta = (a.astype(np.float32) for a in (x, gamma, beta))
    return bn_plain(x, gamma, beta, np.float32(eps))


def bn_cs231n(x, gamma, beta, eps=1e-5):
    y = bn_plain(x, gamma, beta, eps)
    return y, {"x": x}  # (out, cache)


def bn_cs231n_output(x, gamma, beta, eps=1e-5):
    return bn_cs231n(x, gamma, beta, eps)[0]


def name_of(fn):
    return fn.__name__


@pytest.mark.parametrize("fn", [bn_plain, bn_loops, bn_einsum, bn_in_float32, bn_cs231n_output], ids=name_of)
def test_right_forward_passes(fn):
    result = check_batch_norm_forward(fn)
    assert result.passed, result.report()
    assert result.mistake is None and result.diagnosis.startswith("Correct")
    assert len(result.cases) == 7 and all(c.passed for c in result.cases)


def bn_unbiased(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=axes_of(x), keepdims=True)
    var = x.var(axis=axes_of(x), ddof=1, keepdims=True)
    return per_channel(gamma, x) * (x - mu) / np.sqrt(var + eps) + per_channel(beta, x)


def bn_eps_outside(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=axes_of(x), keepdims=True)
    std = x.std(axis=axes_of(x), keepdims=True)
    return per_channel(gamma, x) * (x - mu) / (std + eps) + per_channel(beta, x)


def bn_per_pixel(x, gamma, beta, eps=1e-5):
    x_hat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    return per_channel(gamma, x) * x_hat + per_channel(beta, x)


def x_hat_of(x, eps):
    return (x - x.mean(axis=axes_of(x), keepdims=True)) / np.sqrt(x.var(axis=axes_of(x), keepdims=True) + eps)


def bn_no_gamma(x, gamma, beta, eps=1e-5):
    return x_hat_of(x, eps) + per_channel(beta, x)


def bn_no_beta(x, gamma, beta, eps=1e-5):
    return per_channel(gamma, x) * x_hat_of(x, eps)


def bn_swapped(x, gamma, beta, eps=1e-5):
    return per_channel(beta, x) * x_hat_of(x, eps) + per_channel(gamma, x)


def bn_article_step3(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=axes_of(x), keepdims=True)
    var = x.var(axis=axes_of(x), keepdims=True)
    mu_hat, var_hat = mu / np.sqrt(var + eps), var / (var + eps)  # the article's step 3
    return per_channel(gamma, x) * (x - mu_hat) / np.sqrt(var_hat + eps) + per_channel(beta, x)


FORWARD_MISTAKES = [
    (bn_unbiased, "unbiased variance", ["unbiased", "m - 1", "eq-batch-var", "bnref.reference.batch_norm_forward"]),
    (bn_eps_outside, "eps outside the square root", ["sqrt(var) + eps", "sqrt(var + eps)", "eq-x-hat"]),
    (bn_per_pixel, "statistics per pixel", ["axis 0 only", "per channel", "(0, 2, 3)"]),
    (bn_no_gamma, "gamma dropped", ["gamma is missing", "eq-scale-shift"]),
    (bn_no_beta, "beta dropped", ["beta is missing", "eq-scale-shift"]),
    (bn_swapped, "gamma and beta swapped", ["swapped", "beta * x_hat + gamma"]),
    (bn_article_step3, "article step 3", ["step 3", "normalized mean", "normalized variance"]),
]


@pytest.mark.parametrize(("fn", "mistake", "words"), FORWARD_MISTAKES, ids=[m for _, m, _ in FORWARD_MISTAKES])
def test_forward_mistake_is_named(fn, mistake, words):
    result = check_batch_norm_forward(fn)
    assert not result.passed
    assert result.mistake == mistake, result.report()
    for w in words:
        assert w in result.diagnosis


def test_one_pass_variance_is_diagnosed_as_precision_loss():
    def bn_one_pass(x, gamma, beta, eps=1e-5):
        mu = x.mean(axis=axes_of(x), keepdims=True)
        var = (x**2).mean(axis=axes_of(x), keepdims=True) - mu**2  # E[x^2] - E[x]^2
        return per_channel(gamma, x) * (x - mu) / np.sqrt(var + eps) + per_channel(beta, x)

    result = check_batch_norm_forward(bn_one_pass)
    assert not result.passed
    assert {c.name for c in result.cases if not c.passed} == {"large mean", "large mean float32"}
    assert result.mistake == "precision lost at large mean" and "one-pass" in result.diagnosis


def test_the_bound_follows_the_dtype():
    """An error of 1e-9 relative fails every float64 case and no float32 case: the bound is not one constant."""
    result = check_batch_norm_forward(lambda *args: bn_plain(*args) * (1 + 1e-9))
    failed = {c.name for c in result.cases if not c.passed}
    assert failed == {c.name for c in result.cases if c.dtype == "float64"}
    assert result.mistake is None
    assert (
        "matches none of the known mistakes" in result.diagnosis and "First failing case: 'dense'" in result.diagnosis
    )


def test_eps_is_passed_through():
    result = check_batch_norm_forward(lambda x, gamma, beta, eps: bn_plain(x, gamma, beta, 1e-5))
    assert {c.name for c in result.cases if not c.passed} == {"dense float32"}  # the case with eps = 1e-3


# Batch norm backward ----------------------------------------------------------------------------------------------


def bw_compact(dy, x, gamma, eps=1e-5):
    axes, m = axes_of(x), x.size // x.shape[1]
    x_hat = x_hat_of(x, eps)
    inv_std = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    dbeta, dgamma = dy.sum(axis=axes), (dy * x_hat).sum(axis=axes)
    dx = per_channel(gamma, x) * inv_std / m * (m * dy - per_channel(dbeta, x) - x_hat * per_channel(dgamma, x))
    return dx, dgamma, dbeta


def bw_staged(dy, x, gamma, eps=1e-5):
    axes, m = axes_of(x), x.size // x.shape[1]
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc**2).mean(axis=axes, keepdims=True)
    inv_std = (var + eps) ** -0.5
    x_hat = xc * inv_std
    dbeta, dgamma = dy.sum(axis=axes), (dy * x_hat).sum(axis=axes)
    dx_hat = per_channel(gamma, x) * dy
    dinv_std = (dx_hat * xc).sum(axis=axes, keepdims=True)
    dvar = -0.5 * inv_std**3 * dinv_std
    dxc = dx_hat * inv_std + dvar * 2 * xc / m
    dmu = -dxc.sum(axis=axes, keepdims=True)
    return dxc + dmu / m, dgamma, dbeta


def bw_in_float32(dy, x, gamma, eps=1e-5):
    return bw_compact(dy.astype(np.float32), x.astype(np.float32), gamma.astype(np.float32), np.float32(eps))


def bw_loops(dy, x, gamma, eps=1e-5):
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
    for c in range(x.shape[1]):
        xc, dyc = x[:, c], dy[:, c]
        m = xc.size
        x_hat = (xc - xc.mean()) / np.sqrt(xc.var() + eps)
        dbeta[c], dgamma[c] = dyc.sum(), (dyc * x_hat).sum()
        dx[:, c] = gamma[c] / np.sqrt(xc.var() + eps) / m * (m * dyc - dbeta[c] - x_hat * dgamma[c])
    return dx, dgamma, dbeta


@pytest.mark.parametrize("fn", [bw_compact, bw_staged, bw_in_float32, bw_loops], ids=name_of)
def test_right_backward_passes(fn):
    result = check_batch_norm_backward(fn)
    assert result.passed, result.report()
    assert [o.output for o in result.cases[0].outputs] == ["dx", "dgamma", "dbeta"]


def bw_no_mean_path(dy, x, gamma, eps=1e-5):
    axes, m = axes_of(x), x.size // x.shape[1]
    xc = x - x.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt((xc**2).mean(axis=axes, keepdims=True) + eps)
    dx_hat = per_channel(gamma, x) * dy
    dvar = -0.5 * inv_std**3 * (dx_hat * xc).sum(axis=axes, keepdims=True)
    _, dgamma, dbeta = bw_compact(dy, x, gamma, eps)
    return dx_hat * inv_std + dvar * 2 * xc / m, dgamma, dbeta


def bw_no_var_path(dy, x, gamma, eps=1e-5):
    inv_std = 1 / np.sqrt(x.var(axis=axes_of(x), keepdims=True) + eps)
    dxc = per_channel(gamma, x) * dy * inv_std
    _, dgamma, dbeta = bw_compact(dy, x, gamma, eps)
    return dxc - dxc.mean(axis=axes_of(x), keepdims=True), dgamma, dbeta


def bw_constant_stats(dy, x, gamma, eps=1e-5):
    _, dgamma, dbeta = bw_compact(dy, x, gamma, eps)
    return per_channel(gamma, x) * dy / np.sqrt(x.var(axis=axes_of(x), keepdims=True) + eps), dgamma, dbeta


def bw_article_step7(dy, x, gamma, eps=1e-5):
    dx, _, _ = bw_compact(dy, x, gamma, eps)
    x_hat = x_hat_of(x, eps)
    return dx, x_hat.mean(axis=axes_of(x)), np.ones_like(gamma)  # gamma += alpha mean(y); beta += beta * 1


BACKWARD_MISTAKES = [
    (bw_no_mean_path, "no path through the mean", ["path through the batch mean", "eq-bw-dmu"]),
    (bw_no_var_path, "no path through the variance", ["path through the batch variance", "eq-bw-dvar"]),
    (bw_constant_stats, "mean and variance treated as constants", ["both missing", "eq-dx-compact"]),
    (bw_article_step7, "article step 7", ["step 7", "no loss", "sum(dy x_hat)"]),
]


@pytest.mark.parametrize(("fn", "mistake", "words"), BACKWARD_MISTAKES, ids=[m for _, m, _ in BACKWARD_MISTAKES])
def test_backward_mistake_is_named(fn, mistake, words):
    result = check_batch_norm_backward(fn)
    assert not result.passed
    assert result.mistake == mistake, result.report()
    for w in words + ["bnref.reference.batch_norm_backward"]:
        assert w in result.diagnosis


def test_dgamma_over_axis_0_only_is_a_shape_error_that_names_the_mistake():
    def bw_axis0(dy, x, gamma, eps=1e-5):
        dx, _, _ = bw_compact(dy, x, gamma, eps)
        return dx, (dy * x_hat_of(x, eps)).sum(axis=0), dy.sum(axis=0)

    with pytest.raises(ValueError, match=r"dgamma has shape \(3, 5, 5\).*'conv'.*expected shape \(3,\)") as info:
        check_batch_norm_backward(bw_axis0)
    assert "summed over axis 0 only" in str(info.value) and "eq-dgamma" in str(info.value)


def test_two_mistakes_in_two_outputs_are_both_named():
    def bw_two_mistakes(dy, x, gamma, eps=1e-5):
        dx, _, _ = bw_no_mean_path(dy, x, gamma, eps)
        _, dgamma, dbeta = bw_article_step7(dy, x, gamma, eps)
        return dx, dgamma, dbeta

    result = check_batch_norm_backward(bw_two_mistakes)
    assert result.mistake == "no path through the mean + article step 7"
    assert result.diagnosis.startswith("More than one mistake. dx: dx misses the path through the batch mean")
    assert "dgamma, dbeta: dgamma and dbeta follow the article's step 7" in result.diagnosis


def test_an_unknown_mistake_beside_a_known_one_is_said_unknown():
    def bw_averaged(dy, x, gamma, eps=1e-5):  # dx without the mean path, dgamma and dbeta means, not sums
        dx, _, _ = bw_no_mean_path(dy, x, gamma, eps)
        return dx, (dy * x_hat_of(x, eps)).mean(axis=axes_of(x)), dy.mean(axis=axes_of(x))

    result = check_batch_norm_backward(bw_averaged)
    assert result.mistake == "no path through the mean"
    assert "dgamma matches no known mistake. dbeta matches no known mistake." in result.diagnosis


# Running statistics -----------------------------------------------------------------------------------------------


def ru_plain(running_mean, running_var, x, momentum=0.1):
    m = x.size // x.shape[1]
    mean, var = x.mean(axis=axes_of(x)), x.var(axis=axes_of(x)) * m / (m - 1)
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


def ru_in_place(running_mean, running_var, x, momentum=0.1):
    running_mean *= 1 - momentum
    running_mean += momentum * x.mean(axis=axes_of(x))
    running_var *= 1 - momentum
    running_var += momentum * x.var(axis=axes_of(x), ddof=1)
    return running_mean, running_var


def ru_in_float32(running_mean, running_var, x, momentum=0.1):
    return ru_plain(running_mean.astype(np.float32), running_var.astype(np.float32), x.astype(np.float32), momentum)


@pytest.mark.parametrize("fn", [ru_plain, ru_in_place, ru_in_float32], ids=name_of)
def test_right_running_update_passes(fn):
    result = check_running_update(fn)
    assert result.passed, result.report()


def ru_biased(running_mean, running_var, x, momentum=0.1):
    mean, var = x.mean(axis=axes_of(x)), x.var(axis=axes_of(x))
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


def ru_keras_momentum(running_mean, running_var, x, momentum=0.1):
    mean, var = x.mean(axis=axes_of(x)), x.var(axis=axes_of(x), ddof=1)
    return momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var


def ru_keras(running_mean, running_var, x, momentum=0.1):
    mean, var = x.mean(axis=axes_of(x)), x.var(axis=axes_of(x))
    return momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var


def ru_bessel_with_n(running_mean, running_var, x, momentum=0.1):
    n = x.shape[0]
    mean, var = x.mean(axis=axes_of(x)), x.var(axis=axes_of(x)) * n / (n - 1)
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


def ru_article_step5(running_mean, running_var, x, momentum=0.1):
    z = x_hat_of(x, 1e-5)  # z = gamma * y + beta with gamma = 1, beta = 0
    return z.mean(axis=axes_of(x)), z.var(axis=axes_of(x))


def ru_article_step6(running_mean, running_var, x, momentum=0.1):
    mu_new, var_new = ru_article_step5(running_mean, running_var, x)
    return mu_new / np.sqrt(var_new + 1e-5), var_new / (var_new + 1e-5)


RUNNING_MISTAKES = [
    (ru_biased, "biased variance fed", ["biased batch variance", "m / (m - 1)"]),
    (ru_keras_momentum, "Keras' momentum convention", ["weighs the old running value"]),
    (ru_keras, "Keras' convention", ["Keras' rule", "biased variance fed"]),
    (ru_bessel_with_n, "Bessel factor with N", ["N / (N - 1)", "m = N H W"]),
    (ru_article_step5, "article step 5", ["step 5", "output z", "Algorithm 2"]),
    (ru_article_step6, "article step 6", ["step 6", "normalized"]),
]


@pytest.mark.parametrize(("fn", "mistake", "words"), RUNNING_MISTAKES, ids=[m for _, m, _ in RUNNING_MISTAKES])
def test_running_update_mistake_is_named(fn, mistake, words):
    result = check_running_update(fn)
    assert not result.passed
    assert result.mistake == mistake, result.report()
    for w in words + ["eq-running-update", "bnref.reference.update_running_stats"]:
        assert w in result.diagnosis


def test_momentum_is_passed_through():
    result = check_running_update(lambda rm, rv, x, momentum: ru_plain(rm, rv, x, 0.1))
    assert {c.name for c in result.cases if not c.passed} == {"conv"}  # the case with momentum 0.3


# Layer norm -------------------------------------------------------------------------------------------------------


def ln_plain(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + eps) + beta


def ln_loops(x, gamma, beta, eps=1e-5):
    rows = x.reshape(-1, x.shape[-1])
    y = np.empty_like(rows)
    for i, row in enumerate(rows):
        mu = row.sum() / row.size
        y[i] = gamma * (row - mu) / np.sqrt(((row - mu) ** 2).sum() / row.size + eps) + beta
    return y.reshape(x.shape)


def ln_in_float32(x, gamma, beta, eps=1e-5):
    return ln_plain(x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32), np.float32(eps))


@pytest.mark.parametrize("fn", [ln_plain, ln_loops, ln_in_float32], ids=name_of)
def test_right_layer_norm_passes(fn):
    result = check_layer_norm_forward(fn)
    assert result.passed, result.report()
    assert "row" in result.report()


def ln_batch_axis(x, gamma, beta, eps=1e-5):
    return gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta


def ln_unbiased(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(x.var(axis=-1, ddof=1, keepdims=True) + eps) + beta


def ln_eps_outside(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    return gamma * (x - mu) / (x.std(axis=-1, keepdims=True) + eps) + beta


def ln_no_gamma(x, gamma, beta, eps=1e-5):
    return ln_plain(x, np.ones_like(gamma), beta, eps)


def ln_no_beta(x, gamma, beta, eps=1e-5):
    return ln_plain(x, gamma, np.zeros_like(beta), eps)


LN_MISTAKES = [
    (ln_batch_axis, "statistics over the batch axis", ["axis 0", "over the last axis"]),
    (ln_unbiased, "unbiased variance", ["D - 1"]),
    (ln_eps_outside, "eps outside the square root", ["outside the square root"]),
    (ln_no_gamma, "gamma dropped", ["gamma is missing"]),
    (ln_no_beta, "beta dropped", ["beta is missing"]),
]


@pytest.mark.parametrize(("fn", "mistake", "words"), LN_MISTAKES, ids=[m for _, m, _ in LN_MISTAKES])
def test_layer_norm_mistake_is_named(fn, mistake, words):
    result = check_layer_norm_forward(fn)
    assert not result.passed
    assert result.mistake == mistake, result.report()
    for w in words + ["eq-layer-norm", "bnref.normalization.layer_norm_forward"]:
        assert w in result.diagnosis


def test_every_mistake_has_its_own_diagnosis():
    checks = [
        (check_batch_norm_forward, FORWARD_MISTAKES),
        (check_batch_norm_backward, BACKWARD_MISTAKES),
        (check_running_update, RUNNING_MISTAKES),
        (check_layer_norm_forward, LN_MISTAKES),
    ]
    for check, mistakes in checks:
        diagnoses = [check(fn).diagnosis for fn, _, _ in mistakes]
        assert len(set(diagnoses)) == len(diagnoses)


# Failures reported, misuse raised ---------------------------------------------------------------------------------


def test_a_function_that_raises_is_a_failure_with_the_exception_text():
    def broken(x, gamma, beta, eps=1e-5):
        if x.shape[0] == 2:
            raise ZeroDivisionError("no batch of two, please")
        return bn_plain(x, gamma, beta, eps)

    result = check_batch_norm_forward(broken)
    assert not result.passed and result.mistake is None
    assert [c.name for c in result.cases if not c.passed] == ["batch of two"]
    assert result.cases[2].error == "ZeroDivisionError: no batch of two, please"
    assert "ZeroDivisionError: no batch of two, please" in result.diagnosis and "'batch of two'" in result.diagnosis


def test_a_signature_mismatch_is_reported_not_raised():
    result = check_running_update(lambda running_mean, running_var, x: ru_plain(running_mean, running_var, x))
    assert not result.passed and "TypeError" in result.diagnosis


def test_nan_output_fails():
    result = check_layer_norm_forward(lambda x, gamma, beta, eps: np.full_like(x, np.nan))
    assert not result.passed and all(not c.passed for c in result.cases)
    assert "nan" in result.report()


@pytest.mark.parametrize("fn", [None, 3, "bn_plain", np.zeros(3)], ids=repr)
def test_not_callable_is_a_type_error(fn):
    with pytest.raises(TypeError, match="not callable"):
        check_batch_norm_forward(fn)


def test_wrong_return_types_are_type_errors():
    with pytest.raises(TypeError, match=r"tuple of 2 values; expected one array y.*CS231n"):
        check_batch_norm_forward(bn_cs231n)
    with pytest.raises(TypeError, match=r"returned 2 values; expected 3: dx, dgamma, dbeta"):
        check_batch_norm_backward(lambda *args: bw_compact(*args)[:2])
    with pytest.raises(TypeError, match=r"returned one ndarray; expected 2: running_mean, running_var"):
        check_running_update(lambda *args: ru_plain(*args)[0])
    with pytest.raises(TypeError, match=r"y is a list; expected a floating-point NumPy array"):
        check_layer_norm_forward(lambda *args: ln_plain(*args).tolist())
    with pytest.raises(TypeError, match=r"y is an array of dtype int64"):
        check_batch_norm_forward(lambda *args: bn_plain(*args).astype(np.int64))


def test_wrong_shapes_are_value_errors():
    with pytest.raises(ValueError, match=r"y has shape \(4,\) on case 'dense' \(x of shape \(16, 4\)\); expected"):
        check_batch_norm_forward(lambda *args: bn_plain(*args)[0])
    with pytest.raises(ValueError, match=r"dbeta has shape \(1, 4\).*expected shape \(4,\).*reshape"):
        check_batch_norm_backward(lambda *args: (*bw_compact(*args)[:2], bw_compact(*args)[2][None]))
    with pytest.raises(ValueError, match=r"running_var has shape \(\)"):
        check_running_update(lambda *args: (ru_plain(*args)[0], np.float64(1.0)))


def test_report_is_short_and_readable():
    result = check_batch_norm_forward(bn_unbiased)
    text = result.report()
    assert isinstance(result, CheckResult) and repr(result) == text == str(result)
    lines = text.splitlines()
    assert lines[0] == "batch_norm_forward: FAILED (0 of 7 cases)"
    assert lines[1].startswith("  failed: dense, conv, batch of two")
    assert lines[2].startswith("  worst: '") and "relative error" in lines[2] and "bound" in lines[2]
    assert lines[3].startswith("  diagnosis: The variance that normalises x is the unbiased one")
    assert len(lines) == 4
    passed = check_batch_norm_forward(bn_plain).report().splitlines()
    assert passed[0] == "batch_norm_forward: PASSED (7 of 7 cases)" and passed[1].startswith("  passed: dense")


def test_module_example():
    import doctest

    import bnref.exercises

    assert doctest.testmod(bnref.exercises, optionflags=doctest.ELLIPSIS).failed == 0
