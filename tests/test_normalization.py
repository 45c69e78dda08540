"""Tests of bnref.normalization: Layer, Group, Instance Normalization, RMSNorm, and (bnref.batch_variants)
Batch Renormalization and Ghost Batch Normalization.

Three kinds of check:
* every backward pass against float64 central differences (bnref.gradcheck), relative error below 1e-8;
* agreement with each framework's native layer (torch 2.13, Keras 3.15 on TensorFlow, CPU) in float32 and
  float64, with bounds from ``bnref.testing.check_close`` (appendix ``ch-bounds``): ``m`` is the length of the
  longest sum behind a value, ``cond`` the condition factor (sum of the absolute values a result is computed
  from, over the size of the result), both computed below from the float64 terms;
* planted faults that must be caught (a backward that differentiates r and d, the wrong group count, whole
  batch statistics instead of ghost batches).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cond

import bnref
from bnref import normalization as nrm
from bnref.testing import check_close, unit_roundoff

RNG_SEEDS = (0, 1, 2)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------
# Condition factors (appendix ch-bounds: the condition scale S over the size of the result)
# ----------------------------------------------------------------------------------------------------


def _standardised_terms(x: np.ndarray, axes: tuple[int, ...], eps: float):
    """float64 x_hat, inv_std and r = |mean| * inv_std over ``axes`` (keepdims)."""
    mu = x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
    return (x - mu) * inv_std, inv_std, np.abs(mu) * inv_std


def _check_standardisation(actual, expected, x, dy, gamma_b, beta_b, axes, param_axes, eps, dtype, what):
    """Compare y, dx (and dgamma, dbeta unless ``param_axes`` is None) of a standardise-then-scale layer.

    ``gamma_b``/``beta_b`` broadcast against x; ``axes`` are the statistics' axes, ``param_axes`` those
    dgamma sums over. The condition scales are those of eq-bound-y, eq-bound-dgamma and eq-bound-dx.
    """
    y, dx = (np.asarray(a, np.float64) for a in actual[:2])
    y_ref, dx_ref = expected[:2]
    x_hat, inv_std, r = _standardised_terms(x, axes, eps)
    m = int(np.prod([x.shape[a] for a in axes]))
    g, b = np.abs(gamma_b), np.abs(beta_b)
    dx_hat = dy * gamma_b
    s_y = g * (np.abs(x_hat) + r) + b
    s_dx = (
        inv_std
        / m
        * (
            m * np.abs(dx_hat)
            + np.sum(np.abs(dx_hat), axis=axes, keepdims=True)
            + (np.abs(x_hat) + r) * np.sum(np.abs(dx_hat) * (np.abs(x_hat) + r), axis=axes, keepdims=True)
        )
    )
    results = [
        check_close(y, y_ref, dtype=dtype, m=m, cond=cond(s_y, y_ref), what=f"{what} y", show="none"),
        check_close(dx, dx_ref, dtype=dtype, m=m, cond=cond(s_dx, dx_ref), what=f"{what} dx", show="none"),
    ]
    if param_axes is not None:
        dgamma, dbeta = (np.asarray(a, np.float64) for a in actual[2:])
        dgamma_ref, dbeta_ref = expected[2:]
        m_param = int(np.prod([x.shape[a] for a in param_axes]))
        s_dgamma = np.sum(np.abs(dy) * (np.abs(x_hat) + r), axis=param_axes)
        s_dbeta = np.sum(np.abs(dy), axis=param_axes)
        results += [
            check_close(
                dgamma,
                dgamma_ref,
                dtype=dtype,
                m=m_param,
                cond=cond(s_dgamma, dgamma_ref),
                what=f"{what} dgamma",
                show="none",
            ),
            check_close(
                dbeta,
                dbeta_ref,
                dtype=dtype,
                m=m_param,
                cond=cond(s_dbeta, dbeta_ref),
                what=f"{what} dbeta",
                show="none",
            ),
        ]
    for res in results:
        assert res.passed, str(res)


# ----------------------------------------------------------------------------------------------------
# Gradient checks, float64 central differences, below 1e-8
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("shape,k", [((4, 5), 1), ((3, 4, 5), 1), ((3, 4, 5), 2), ((2, 3, 2, 2), 3)])
def test_layer_norm_gradcheck(seed, shape, k):
    rng = _rng(seed)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[-k:]), rng.normal(size=shape[-k:])
    _, cache = nrm.layer_norm_forward(x, gamma, beta, normalized_ndim=k)
    grads = nrm.layer_norm_backward(dy, cache)
    f = lambda x, g, b: nrm.layer_norm_forward(x, g, b, normalized_ndim=k)[0]  # noqa: E731
    assert bnref.gradcheck(f, [x, gamma, beta], grads, dy) < 1e-8


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize(
    "shape,groups", [((3, 6), 2), ((3, 6, 4), 3), ((2, 4, 3, 2), 2), ((2, 4, 3, 2), 4), ((2, 4, 3), 1)]
)
def test_group_norm_gradcheck(seed, shape, groups):
    rng = _rng(seed)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    _, cache = nrm.group_norm_forward(x, gamma, beta, groups)
    grads = nrm.group_norm_backward(dy, cache)
    f = lambda x, g, b: nrm.group_norm_forward(x, g, b, groups)[0]  # noqa: E731
    assert bnref.gradcheck(f, [x, gamma, beta], grads, dy) < 1e-8


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_instance_norm_gradcheck_and_is_group_norm_with_c_groups(seed):
    rng = _rng(seed)
    x, dy = rng.normal(size=(2, 3, 4, 2)), rng.normal(size=(2, 3, 4, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    y, cache = nrm.instance_norm_forward(x, gamma, beta)
    grads = nrm.instance_norm_backward(dy, cache)
    f = lambda x, g, b: nrm.instance_norm_forward(x, g, b)[0]  # noqa: E731
    assert bnref.gradcheck(f, [x, gamma, beta], grads, dy) < 1e-8
    # each (example, channel) standardised over its own positions
    x_hat = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(x.var(axis=(2, 3), keepdims=True) + 1e-5)
    assert bnref.relative_error(y, gamma[:, None, None] * x_hat + beta[:, None, None]) < 1e-14


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("shape,axis,gb", [((8, 3), -1, 4), ((4, 3, 2, 2), 1, 2), ((6, 2, 2, 3), -1, 3)])
def test_ghost_batch_norm_gradcheck(seed, shape, axis, gb):
    rng = _rng(seed)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    c = shape[axis]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    _, cache = nrm.ghost_batch_norm_forward(x, gamma, beta, gb, axis=axis)
    grads = nrm.ghost_batch_norm_backward(dy, cache)
    f = lambda x, g, b: nrm.ghost_batch_norm_forward(x, g, b, gb, axis=axis)[0]  # noqa: E731
    assert bnref.gradcheck(f, [x, gamma, beta], grads, dy) < 1e-8


def _renorm_case(seed: int, shape=(6, 3)):
    """A batch whose statistics sit away from the running ones, so that r and d are not trivially 1 and 0."""
    rng = _rng(seed)
    x = rng.normal(loc=0.5, scale=1.5, size=shape)
    c = shape[-1]
    return (
        x,
        rng.normal(size=c),
        rng.normal(size=c),
        rng.normal(scale=0.3, size=c),
        rng.uniform(0.5, 2.0, size=c),
        rng.normal(size=shape),
    )


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_batch_renorm_backward_is_the_gradient_with_r_and_d_frozen(seed):
    """With r, d frozen at the forward's values, y = BN(x; gamma * r, gamma * d + beta): differentiate that."""
    x, gamma, beta, rmean, rvar, dy = _renorm_case(seed)
    r_max, d_max, eps = 1.5, 0.4, 1e-3
    _, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, r_max, d_max, eps=eps)
    r0, d0 = cache.r.copy(), cache.d.copy()
    assert np.any((r0 > 1 / r_max) & (r0 < r_max)), "the case must have an unclipped r"
    grads = nrm.batch_renorm_backward(dy, cache)

    def frozen(x, g, b):
        return bnref.batch_norm_forward(x, g * r0, g * d0 + b, eps=eps, axis=-1)[0]

    assert bnref.gradcheck(frozen, [x, gamma, beta], grads, dy) < 1e-8
    # the forward itself equals the frozen form at this point
    assert (
        bnref.relative_error(
            frozen(x, gamma, beta), nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, r_max, d_max, eps=eps)[0]
        )
        < 1e-14
    )


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_batch_renorm_backward_is_the_true_gradient_where_r_and_d_are_clipped(seed):
    """Where both clips are active, r and d do not move with x: the backward is then the true derivative."""
    x, gamma, beta, _, _, dy = _renorm_case(seed)
    c = gamma.shape[0]
    rmean, rvar = np.full(c, -5.0), np.full(c, 100.0)  # sigma_B / sigma << 1/r_max, (mu_B - mu)/sigma >> d_max
    f = lambda x, g, b: nrm.batch_renorm_forward(x, g, b, rmean, rvar, 2.0, 0.1)[0]  # noqa: E731
    _, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 2.0, 0.1)
    assert np.all(cache.r == 0.5) and np.all(cache.d == 0.1)
    assert bnref.gradcheck(f, [x, gamma, beta], nrm.batch_renorm_backward(dy, cache), dy) < 1e-8


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_planted_fault_renorm_gradient_through_r_and_d_differs(seed):
    """The true derivative of the forward (r and d as variables) is not the paper's gradient: the check sees it."""
    x, gamma, beta, rmean, rvar, dy = _renorm_case(seed)
    rmean = rmean * 0.1  # keep d unclipped too
    f = lambda x: nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 10.0, 10.0)[0]  # noqa: E731
    _, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 10.0, 10.0)
    assert np.all(np.abs(cache.d) < 10) and np.all((cache.r > 0.1) & (cache.r < 10))
    dx_variable = bnref.numerical_gradients(f, [x], dy)[0]
    dx, _, _ = nrm.batch_renorm_backward(dy, cache)
    assert bnref.relative_error(dx, dx_variable) > 1e-3


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_batch_renorm_with_r_max_1_d_max_0_is_batch_norm(seed):
    x, gamma, beta, rmean, rvar, dy = _renorm_case(seed)
    y, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 1.0, 0.0, eps=1e-3)
    y_bn, bn_cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-3, axis=-1)
    assert bnref.relative_error(y, y_bn) < 1e-14
    for a, b in zip(nrm.batch_renorm_backward(dy, cache), bnref.batch_norm_backward(dy, bn_cache), strict=True):
        assert bnref.relative_error(a, b) < 1e-13


def test_batch_renorm_clipping_schedule():
    assert nrm.batch_renorm_clipping(0) == (1.0, 0.0)
    assert nrm.batch_renorm_clipping(5000) == (1.0, 0.0)
    assert nrm.batch_renorm_clipping(25000) == pytest.approx((1 + 2 * 20000 / 35000, 5.0))
    assert nrm.batch_renorm_clipping(40000) == (3.0, 5.0)
    assert nrm.batch_renorm_clipping(10**6) == (3.0, 5.0)
    r = [nrm.batch_renorm_clipping(s, warmup_steps=2, r_max_steps=8, d_max_steps=6) for s in range(10)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(r[:-1], r[1:], strict=True))


def test_batch_renorm_running_update_averages_sigma():
    x, gamma, beta, rmean, rvar, _ = _renorm_case(0)
    eps = 1e-3
    _, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 3.0, 5.0, eps=eps)
    new_mean, new_var = nrm.batch_renorm_running_update(rmean, rvar, cache, momentum=0.9)
    sigma_new = 0.9 * np.sqrt(rvar + eps) + 0.1 * np.sqrt(x.var(axis=0) + eps)
    assert bnref.relative_error(new_mean, 0.9 * rmean + 0.1 * x.mean(axis=0)) < 1e-14
    assert bnref.relative_error(new_var, sigma_new**2 - eps) < 1e-14
    # not the variance average (the planted alternative)
    assert bnref.relative_error(new_var, 0.9 * rvar + 0.1 * x.var(axis=0)) > 1e-6


# ----------------------------------------------------------------------------------------------------
# Ghost batch norm: the stated rules
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_ghost_batch_norm_is_batch_norm_per_ghost_batch_and_not_whole_batch(seed):
    rng = _rng(seed)
    x = rng.normal(size=(8, 3)) + np.arange(8)[:, None]  # ghost batches with different means
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    y, cache = nrm.ghost_batch_norm_forward(x, gamma, beta, 4, axis=1)
    assert len(cache.ghosts) == 2 and cache.means.shape == (2, 3)
    for k in range(2):
        y_k, _ = bnref.batch_norm_forward(x[4 * k : 4 * k + 4], gamma, beta)
        assert bnref.relative_error(y[4 * k : 4 * k + 4], y_k) < 1e-15
    whole, _ = bnref.batch_norm_forward(x, gamma, beta)
    assert bnref.relative_error(y, whole) > 1e-2  # planted fault: whole-batch statistics are caught
    full, _ = nrm.ghost_batch_norm_forward(x, gamma, beta, 8)
    assert bnref.relative_error(full, whole) < 1e-15


def test_ghost_batch_norm_running_update_is_one_update_per_ghost_batch():
    rng = _rng(0)
    x = rng.normal(size=(6, 2)) * 3 + 1
    _, cache = nrm.ghost_batch_norm_forward(x, np.ones(2), np.zeros(2), 2)
    mean, var, step = nrm.ghost_batch_norm_running_update(np.zeros(2), np.ones(2), cache, step=0)
    assert step == 3
    # the weighted sum of K sequential updates, w = 0.1, unbiased ghost variances (m = 2)
    w, k = 0.1, 3
    ghost_means = x.reshape(3, 2, 2).mean(axis=1)
    ghost_vars = x.reshape(3, 2, 2).var(axis=1, ddof=1)
    expect_mean = sum(w * (1 - w) ** (k - 1 - j) * ghost_means[j] for j in range(k))
    expect_var = (1 - w) ** k * 1.0 + sum(w * (1 - w) ** (k - 1 - j) * ghost_vars[j] for j in range(k))
    assert bnref.relative_error(mean, expect_mean) < 1e-14
    assert bnref.relative_error(var, expect_var) < 1e-14


# ----------------------------------------------------------------------------------------------------
# Bad input: a named TypeError for a wrong type, a named ValueError for a wrong value
# ----------------------------------------------------------------------------------------------------


def test_bad_input_raises_named_value_errors():
    x = np.ones((4, 6, 3))
    g6, b6 = np.ones(6), np.zeros(6)
    with pytest.raises(ValueError, match="groups=4 does not divide the 6 channels"):
        nrm.group_norm_forward(x, g6, b6, 4)
    with pytest.raises(ValueError, match="groups must be an integer >= 1; got 0"):
        nrm.group_norm_forward(x, g6, b6, 0)
    with pytest.raises(ValueError, match=r"gamma must have shape \(6,\) to match the 6 channels on axis 1"):
        nrm.group_norm_forward(x, np.ones(3), b6, 2)
    with pytest.raises(ValueError, match=r"gamma must have shape \(6, 3\) to match the last 2 axes of x"):
        nrm.layer_norm_forward(x, g6, b6, normalized_ndim=2)
    with pytest.raises(ValueError, match=r"normalized_ndim must be at most the 3 dimensions of x \(4, 6, 3\); got 4"):
        nrm.layer_norm_forward(x, np.ones((4, 6, 3)), np.zeros((4, 6, 3)), normalized_ndim=4)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"x has non-finite values \(nan or inf\) at flat positions \[0\]"):
        nrm.layer_norm_forward(bad, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="x has non-finite values"):
        nrm.group_norm_forward(bad, g6, b6, 2)
    with pytest.raises(ValueError, match="gamma has non-finite values"):
        nrm.layer_norm_forward(x, np.array([1.0, np.inf, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="instance normalisation needs spatial axes"):
        nrm.instance_norm_forward(np.ones((2, 3)), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        nrm.layer_norm_forward(x, np.ones(3), np.zeros(3), eps=0.0)

    xb, g3, b3 = np.random.default_rng(0).normal(size=(4, 3)), np.ones(3), np.zeros(3)
    with pytest.raises(ValueError, match="r_max must be a finite number >= 1"):
        nrm.batch_renorm_forward(xb, g3, b3, b3, g3, 0.5, 1.0)
    with pytest.raises(ValueError, match="d_max must be a finite number >= 0"):
        nrm.batch_renorm_forward(xb, g3, b3, b3, g3, 2.0, -1.0)
    with pytest.raises(ValueError, match=r"running_var must be >= 0; it is negative at channels \[0, 1, 2\]"):
        nrm.batch_renorm_forward(xb, g3, b3, b3, -g3, 2.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        nrm.batch_renorm_forward(xb[:1], g3, b3, b3, g3, 2.0, 1.0)
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        nrm.batch_renorm_clipping(10, warmup_steps=100, r_max_steps=50)
    _, renorm_cache = nrm.batch_renorm_forward(xb, g3, b3, b3, g3, 2.0, 1.0)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]; got 1.5"):
        nrm.batch_renorm_running_update(b3, g3, renorm_cache, momentum=1.5)
    with pytest.raises(ValueError, match=r"running_var must be >= 0"):
        nrm.batch_renorm_running_update(b3, -g3, renorm_cache)

    with pytest.raises(ValueError, match="ghost_batch_size=8 is larger than the batch of 4"):
        nrm.ghost_batch_norm_forward(xb, g3, b3, 8)
    with pytest.raises(ValueError, match="ghost_batch_size=3 does not divide the batch of 4"):
        nrm.ghost_batch_norm_forward(xb, g3, b3, 3)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        nrm.ghost_batch_norm_forward(xb, g3, b3, 1)
    with pytest.raises(ValueError, match="axis must not be 0"):
        nrm.ghost_batch_norm_forward(xb, np.ones(4), np.zeros(4), 2, axis=0)

    _, cache = nrm.layer_norm_forward(xb, g3, b3)
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(4, 3\); got \(4, 2\)"):
        nrm.layer_norm_backward(np.ones((4, 2)), cache)
    dy = np.ones((4, 3))
    dy[1, 1] = np.inf
    with pytest.raises(ValueError, match=r"dy has non-finite values \(nan or inf\) at flat positions \[4\]"):
        nrm.layer_norm_backward(dy, cache)


def test_wrong_types_raise_named_type_errors():
    x, g3, b3 = np.random.default_rng(0).normal(size=(4, 3)), np.ones(3), np.zeros(3)
    with pytest.raises(TypeError, match=r"x must be a real floating-point array.*got dtype int64.*astype"):
        nrm.layer_norm_forward(np.ones((2, 3), dtype=np.int64), g3, b3)
    with pytest.raises(TypeError, match="gamma must be a real numeric array; got dtype <U1"):
        nrm.layer_norm_forward(x, np.array(["a", "b", "c"]), b3)
    with pytest.raises(TypeError, match=r"groups must be an integer; got 3.0 \(float\)"):
        nrm.group_norm_forward(x, g3, b3, 3.0)
    with pytest.raises(TypeError, match=r"normalized_ndim must be an integer; got True \(bool\)"):
        nrm.layer_norm_forward(x, g3, b3, normalized_ndim=True)
    with pytest.raises(TypeError, match=r"eps must be a real number; got True \(bool\)"):
        nrm.layer_norm_forward(x, g3, b3, eps=True)
    with pytest.raises(TypeError, match="x must be a plain array; got a NumPy masked array"):
        nrm.layer_norm_forward(np.ma.masked_less(x, 0.0), g3, b3)
    with pytest.raises(TypeError, match=r"ghost_batch_size must be an integer; got 2.0"):
        nrm.ghost_batch_norm_forward(x, g3, b3, 2.0)
    with pytest.raises(TypeError, match=r"r_max must be a real number; got '3'"):
        nrm.batch_renorm_forward(x, g3, b3, b3, g3, "3", 1.0)
    _, ln_cache = nrm.layer_norm_forward(x, g3, b3)
    for backward, expected in (
        (nrm.group_norm_backward, "GroupNormCache returned by group_norm_forward"),
        (nrm.rms_norm_backward, "RMSNormCache returned by rms_norm_forward"),
        (nrm.batch_renorm_backward, "BatchRenormCache returned by batch_renorm_forward"),
        (nrm.ghost_batch_norm_backward, "GhostBatchNormCache returned by ghost_batch_norm_forward"),
    ):
        with pytest.raises(TypeError, match=f"cache must be the {expected}; got LayerNormCache"):
            backward(np.ones((4, 3)), ln_cache)
    with pytest.raises(TypeError, match="cache must be the BatchRenormCache"):
        nrm.batch_renorm_running_update(b3, g3, ln_cache)
    with pytest.raises(TypeError, match="cache must be the GhostBatchNormCache"):
        nrm.ghost_batch_norm_running_update(b3, g3, ln_cache, step=0)


def test_cache_does_not_alias_inputs():
    rng = _rng(0)
    x, gamma, beta, dy = rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=3), rng.normal(size=(4, 3))
    _, cache = nrm.layer_norm_forward(x, gamma, beta)
    before = nrm.layer_norm_backward(dy, cache)
    x += 1.0
    gamma *= 2.0
    after = nrm.layer_norm_backward(dy, cache)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------
# Agreement with PyTorch's native layers
# ----------------------------------------------------------------------------------------------------


def _torch_run(module, x: np.ndarray, dy: np.ndarray, dtype):
    import torch

    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    y = module(xt)
    y.backward(torch.tensor(dy, dtype=dtype))
    return y.detach().numpy(), xt.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy()


def _case(seed: int, shape, loc=0.0):
    rng = _rng(seed)
    return rng.normal(loc=loc, size=shape), rng.normal(size=shape)


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k,loc", [((16, 32), 1, 0.0), ((4, 8, 16), 2, 3.0), ((8, 5, 7), 1, 0.0)])
def test_layer_norm_agrees_with_torch(torch, seed, dtype, shape, k, loc):
    x, dy = _case(seed, shape, loc)
    rng = _rng(seed + 100)
    gamma, beta = rng.normal(size=shape[-k:]), rng.normal(size=shape[-k:])
    layer = torch.nn.LayerNorm(shape[-k:], eps=1e-5, dtype=getattr(torch, dtype))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    actual = _torch_run(layer, x.astype(dtype), dy.astype(dtype), getattr(torch, dtype))
    y, cache = nrm.layer_norm_forward(x, gamma, beta, normalized_ndim=k)
    expected = (y, *nrm.layer_norm_backward(dy, cache))
    axes = tuple(range(len(shape) - k, len(shape)))
    _check_standardisation(
        actual, expected, x, dy, gamma, beta, axes, tuple(range(len(shape) - k)), 1e-5, dtype, "LayerNorm"
    )


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "shape,groups", [((8, 6), 3), ((4, 8, 10), 4), ((2, 6, 5, 5), 2), ((2, 6, 5, 5), 6), ((2, 4, 3, 3), 1)]
)
def test_group_norm_agrees_with_torch(torch, seed, dtype, shape, groups):
    x, dy = _case(seed, shape, 1.0)
    rng = _rng(seed + 100)
    c = shape[1]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    layer = torch.nn.GroupNorm(groups, c, eps=1e-5, dtype=getattr(torch, dtype))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    actual = _torch_run(layer, x.astype(dtype), dy.astype(dtype), getattr(torch, dtype))
    y, cache = nrm.group_norm_forward(x, gamma, beta, groups)
    expected = (y, *nrm.group_norm_backward(dy, cache))
    grouped = (shape[0], groups, c // groups, *shape[2:])
    axes = tuple(range(2, len(grouped)))
    pshape = (1, groups, c // groups) + (1,) * (len(shape) - 2)
    xg, dyg = x.reshape(grouped), dy.reshape(grouped)
    actual = (actual[0].reshape(grouped), actual[1].reshape(grouped), actual[2], actual[3])
    expected = (expected[0].reshape(grouped), expected[1].reshape(grouped), expected[2], expected[3])
    param_axes = (0, *range(3, len(grouped)))
    _check_standardisation(
        actual,
        expected,
        xg,
        dyg,
        gamma.reshape(pshape),
        beta.reshape(pshape),
        axes,
        param_axes,
        1e-5,
        dtype,
        "GroupNorm",
    )


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_instance_norm_agrees_with_torch_instance_norm2d(torch, seed, dtype):
    shape = (3, 4, 6, 5)
    x, dy = _case(seed, shape, 2.0)
    rng = _rng(seed + 100)
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    layer = torch.nn.InstanceNorm2d(4, eps=1e-5, affine=True, dtype=getattr(torch, dtype))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    actual = _torch_run(layer, x.astype(dtype), dy.astype(dtype), getattr(torch, dtype))
    y, cache = nrm.instance_norm_forward(x, gamma, beta)
    expected = (y, *nrm.instance_norm_backward(dy, cache))
    b = (1, 4, 1, 1)
    _check_standardisation(
        actual, expected, x, dy, gamma.reshape(b), beta.reshape(b), (2, 3), (0, 2, 3), 1e-5, dtype, "InstanceNorm2d"
    )


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,gb", [((12, 3), 4), ((8, 3, 4, 4), 2)])
def test_ghost_batch_norm_agrees_with_torch_batch_norm_run_on_each_sub_batch(torch, seed, dtype, shape, gb):
    """One nn.BatchNorm layer called on each ghost batch in turn: outputs, gradients and running statistics."""
    x, dy = _case(seed, shape, 1.0)
    rng = _rng(seed + 100)
    c = shape[1]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    tdtype = getattr(torch, dtype)
    layer = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(c, dtype=tdtype)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    layer.train()
    xt = torch.tensor(x.astype(dtype), requires_grad=True)
    yt = torch.cat([layer(chunk) for chunk in torch.split(xt, gb, dim=0)], dim=0)
    yt.backward(torch.tensor(dy.astype(dtype)))
    actual = (yt.detach().numpy(), xt.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy())

    y, cache = nrm.ghost_batch_norm_forward(x, gamma, beta, gb)
    expected = (y, *nrm.ghost_batch_norm_backward(dy, cache))
    mean, var, step = nrm.ghost_batch_norm_running_update(np.zeros(c), np.ones(c), cache, step=0)
    assert step == int(layer.num_batches_tracked) == shape[0] // gb

    # compare ghost batch by ghost batch (the statistics' sets), channels last, as (m, C)
    n_ghost = shape[0] // gb
    for k in range(n_ghost):
        sl = slice(k * gb, (k + 1) * gb)
        xk = np.moveaxis(x[sl], 1, -1).reshape(-1, c)
        dyk = np.moveaxis(dy[sl], 1, -1).reshape(-1, c)
        act = tuple(np.moveaxis(a[sl], 1, -1).reshape(-1, c) for a in actual[:2])
        exp = tuple(np.moveaxis(a[sl], 1, -1).reshape(-1, c) for a in expected[:2])
        # dgamma/dbeta are sums over the whole batch: compared on all examples below
        _check_standardisation(act, exp, xk, dyk, gamma, beta, (0,), None, 1e-5, dtype, f"ghost {k}")
    x_all = np.moveaxis(x, 1, -1).reshape(-1, c)
    dy_all = np.moveaxis(dy, 1, -1).reshape(-1, c)
    m_all, m_ghost = x_all.shape[0], x_all.shape[0] // n_ghost
    # x_hat and r = |mean| / sigma of each row's own ghost batch, in the (m, C) layout (ghost-major rows)
    x_hat = np.moveaxis(np.concatenate([g.x_hat for g in cache.ghosts]), 1, -1).reshape(-1, c)
    sigma = np.sqrt(cache.variances + 1e-5)
    r = np.repeat(np.abs(cache.means) / sigma, m_ghost, axis=0)
    s_dgamma = np.sum(np.abs(dy_all) * (np.abs(x_hat) + r), axis=0)
    s_dbeta = np.sum(np.abs(dy_all), axis=0)
    assert check_close(actual[2], expected[2], dtype=dtype, m=m_all, cond=cond(s_dgamma, expected[2]), show="none")
    assert check_close(actual[3], expected[3], dtype=dtype, m=m_all, cond=cond(s_dbeta, expected[3]), show="none")
    # running statistics (eq-bound-running): each ghost mean sums |x| <= |mean| + sigma X over one ghost batch;
    # each update mixes the old value and the new one, so the scale is the larger of them
    s_mean = np.maximum(np.abs(cache.means) + sigma * np.max(np.abs(x_hat)), 0.0).max(axis=0)
    assert check_close(
        layer.running_mean.numpy(),
        mean,
        dtype=dtype,
        m=m_ghost,
        cond=cond(s_mean, mean),
        what="running_mean",
        show="none",
    )
    s_var = np.maximum(cache.variances.max(axis=0) * m_ghost / (m_ghost - 1), 1.0)
    assert check_close(
        layer.running_var.numpy(), var, dtype=dtype, m=m_ghost, cond=cond(s_var, var), what="running_var", show="none"
    )


# ----------------------------------------------------------------------------------------------------
# Agreement with Keras 3.15 (TensorFlow backend): LayerNormalization, GroupNormalization, renorm
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf_keras():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Keras checks use the TensorFlow backend (GradientTape)")
    return tf, keras


def _keras_run(tf, layer, x: np.ndarray, dy: np.ndarray, dtype: str, **call):
    xt = tf.constant(x.astype(dtype))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, **call)
        loss = tf.reduce_sum(y * tf.constant(dy.astype(dtype)))
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma, layer.beta])
    return y.numpy(), dx.numpy(), dgamma.numpy(), dbeta.numpy()


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k", [((16, 32), 1), ((4, 8, 16), 2)])
def test_layer_norm_agrees_with_keras(tf_keras, seed, dtype, shape, k):
    tf, keras = tf_keras
    x, dy = _case(seed, shape, 2.0)
    rng = _rng(seed + 100)
    gamma, beta = rng.normal(size=shape[-k:]), rng.normal(size=shape[-k:])
    axes = tuple(range(len(shape) - k, len(shape)))
    layer = keras.layers.LayerNormalization(axis=list(axes), epsilon=1e-3, dtype=dtype)
    layer.build(shape)
    layer.set_weights([gamma, beta])
    actual = _keras_run(tf, layer, x, dy, dtype)
    y, cache = nrm.layer_norm_forward(x, gamma, beta, eps=1e-3, normalized_ndim=k)
    expected = (y, *nrm.layer_norm_backward(dy, cache))
    _check_standardisation(
        actual,
        expected,
        x,
        dy,
        gamma,
        beta,
        axes,
        tuple(range(len(shape) - k)),
        1e-3,
        dtype,
        "keras LayerNormalization",
    )


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,groups", [((8, 6), 3), ((2, 5, 5, 6), 2), ((2, 4, 4, 4), 4)])
def test_group_norm_agrees_with_keras_channels_last(tf_keras, seed, dtype, shape, groups):
    tf, keras = tf_keras
    x, dy = _case(seed, shape, 1.0)  # channels last
    rng = _rng(seed + 100)
    c = shape[-1]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    layer = keras.layers.GroupNormalization(groups=groups, axis=-1, epsilon=1e-3, dtype=dtype)
    layer.build(shape)
    layer.set_weights([gamma, beta])
    actual = _keras_run(tf, layer, x, dy, dtype)
    to_first = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    y, cache = nrm.group_norm_forward(to_first(x), gamma, beta, groups, eps=1e-3)
    dx, dgamma, dbeta = nrm.group_norm_backward(to_first(dy), cache)
    grouped = (shape[0], groups, c // groups, *shape[1:-1])
    pshape = (1, groups, c // groups) + (1,) * (len(shape) - 2)
    as_grouped = lambda a: to_first(a).reshape(grouped)  # noqa: E731
    actual = (as_grouped(actual[0]), as_grouped(actual[1]), actual[2], actual[3])
    expected = (y.reshape(grouped), dx.reshape(grouped), dgamma, dbeta)
    _check_standardisation(
        actual,
        expected,
        as_grouped(x),
        as_grouped(dy),
        gamma.reshape(pshape),
        beta.reshape(pshape),
        tuple(range(2, len(grouped))),
        (0, *range(3, len(grouped))),
        1e-3,
        dtype,
        "keras GroupNormalization",
    )


def _renorm_layer(keras, kind: str, dtype: str, c: int):
    kwargs = dict(
        axis=-1,
        epsilon=1e-3,
        momentum=0.9,
        renorm=True,
        renorm_momentum=0.7,
        renorm_clipping={"rmin": 1 / 3, "rmax": 3.0, "dmax": 5.0},
        dtype=dtype,
    )
    if kind == "keras":
        return keras.layers.BatchNormalization(**kwargs)
    from bnref.layers import keras_bn

    return keras_bn.BatchNormalization(**kwargs)


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["keras", "bnref.layers.keras_bn"])
def test_batch_renorm_agrees_with_keras_over_training_steps_with_the_schedule(tf_keras, seed, dtype, kind):
    """Eight training steps of Keras' BatchNormalization(renorm=True) with r_max, d_max set by the paper's schedule
    (scaled: plain BN for 2 steps, r_max = 3 at step 7, d_max = 5 at step 5), batches whose mean and spread drift
    so that r and d are clipped at some steps and not at others. Each step compares y, dx, dgamma, dbeta and the
    four updated statistics with the reference run from the layer's state before the step."""
    tf, keras = tf_keras
    rng = _rng(seed)
    shape, eps, c = (6, 2, 2, 3), 1e-3, 3
    layer = _renorm_layer(keras, kind, dtype, c)
    layer.build(shape)
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    layer.gamma.assign(gamma.astype(dtype))
    layer.beta.assign(beta.astype(dtype))
    clipped_r = unclipped_r = 0
    for step in range(8):
        x = rng.normal(loc=0.5 * step, scale=1.0 + 0.4 * step, size=shape)
        dy = rng.normal(size=shape)
        r_max, d_max = nrm.batch_renorm_clipping(step, warmup_steps=2, r_max_steps=7, d_max_steps=5)
        layer.renorm_clipping = {"rmin": 1.0 / r_max, "rmax": r_max, "dmax": d_max}
        state = {
            w: np.asarray(getattr(layer, w).numpy(), np.float64)
            for w in ("renorm_mean", "renorm_stddev", "moving_mean", "moving_stddev")
        }
        running_var = np.maximum(state["renorm_stddev"] ** 2 - eps, 0.0)
        actual = _keras_run(tf, layer, x, dy, dtype, training=True)

        y, cache = nrm.batch_renorm_forward(x, gamma, beta, state["renorm_mean"], running_var, r_max, d_max, eps=eps)
        dx, dgamma, dbeta = nrm.batch_renorm_backward(dy, cache)
        at_clip = (cache.r == r_max) | (cache.r == 1 / r_max)
        clipped_r += int(np.sum(at_clip))
        unclipped_r += int(np.sum(~at_clip))

        # condition scales (appendix ch-bounds): y = gamma (x_hat r + d) + beta with x_hat, r, d computed in dtype
        bn = cache.bn
        m = bn.m
        dy2, xh2 = dy.reshape(-1, c), bn.x_hat.reshape(-1, c)
        sigma_b, sigma = 1 / bn.inv_std, np.sqrt(running_var + eps)
        rr = np.abs(bn.mean) / sigma_b
        big_x = np.abs(xh2).max(axis=0)
        s_d = (np.abs(bn.mean) + np.abs(state["renorm_mean"]) + sigma_b * big_x) / sigma  # error scale of d
        g, r, d = np.abs(gamma), cache.r, np.abs(cache.d)
        s_y = g * (r * (2 * np.abs(xh2) + rr) + d + s_d) + np.abs(beta)
        s_dgamma = np.sum(np.abs(dy2) * (r * (2 * np.abs(xh2) + rr) + d + s_d), axis=0)
        dxh = np.abs(dy2) * g * r
        s_dx = bn.inv_std / m * (m * dxh + dxh.sum(0) + (np.abs(xh2) + rr) * (dxh * (np.abs(xh2) + rr)).sum(0))
        checks = [
            check_close(
                actual[0].reshape(-1, c), y.reshape(-1, c), dtype=dtype, m=m, cond=cond(s_y, y), what="y", show="none"
            ),
            check_close(
                actual[1].reshape(-1, c),
                dx.reshape(-1, c),
                dtype=dtype,
                m=m,
                cond=cond(s_dx, dx),
                what="dx",
                show="none",
            ),
            check_close(actual[2], dgamma, dtype=dtype, m=m, cond=cond(s_dgamma, dgamma), what="dgamma", show="none"),
            check_close(
                actual[3], dbeta, dtype=dtype, m=m, cond=cond(np.abs(dy2).sum(0), dbeta), what="dbeta", show="none"
            ),
        ]
        # the running statistics: means sum |x| <= |mu_B| + sigma_B X; std from the variance (relative e / 2)
        for prefix, momentum in (("renorm", 0.7), ("moving", 0.9)):
            old_mean, old_std = state[f"{prefix}_mean"], state[f"{prefix}_stddev"]
            new_mean, new_var = nrm.batch_renorm_running_update(
                old_mean, np.maximum(old_std**2 - eps, 0.0), cache, momentum=momentum
            )
            new_std = np.sqrt(new_var + eps)
            s_mean = momentum * np.abs(old_mean) + (1 - momentum) * (np.abs(bn.mean) + sigma_b * big_x)
            s_std = momentum * old_std + (1 - momentum) * sigma_b * (1 + rr)
            std_name = "renorm_stddev" if prefix == "renorm" else "moving_stddev"
            checks += [
                check_close(
                    getattr(layer, f"{prefix}_mean").numpy(),
                    new_mean,
                    dtype=dtype,
                    m=m,
                    cond=cond(s_mean, new_mean),
                    what=f"{prefix}_mean",
                    show="none",
                ),
                check_close(
                    getattr(layer, std_name).numpy(),
                    new_std,
                    dtype=dtype,
                    m=m,
                    cond=cond(s_std, new_std),
                    what=std_name,
                    show="none",
                ),
            ]
        for res in checks:
            assert res.passed, f"step {step}: {res}"
    assert clipped_r > 0 and unclipped_r > 0, "the run must exercise both clipped and unclipped r"


def test_planted_fault_renorm_with_variance_average_disagrees_with_keras(tf_keras):
    """A running update that averages the variance (not sigma) drifts from Keras' renorm_stddev: caught."""
    tf, keras = tf_keras
    rng = _rng(0)
    layer = _renorm_layer(keras, "keras", "float64", 3)
    layer.build((8, 3))
    x = rng.normal(scale=3.0, size=(8, 3))
    _, cache = nrm.batch_renorm_forward(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3) - 1e-3, 3.0, 5.0)
    layer(tf.constant(x), training=True)
    wrong_var = 0.7 * (1.0 - 1e-3) + 0.3 * cache.bn.var
    result = check_close(layer.renorm_stddev.numpy(), np.sqrt(wrong_var + 1e-3), dtype="float64", m=8, show="none")
    assert not result.passed


def test_planted_fault_wrong_groups_or_eps_fail_the_torch_bound(torch):
    """The float32 bounds are tight enough to see a wrong group count and a wrong eps."""
    x, _ = _case(0, (4, 8, 6), 1.0)
    gamma, beta = np.ones(8), np.zeros(8)
    layer = torch.nn.GroupNorm(4, 8, eps=1e-5)
    y_torch = layer(torch.tensor(x.astype("float32"))).detach().numpy()
    y_wrong_groups, _ = nrm.group_norm_forward(x, gamma, beta, 2)
    y_wrong_eps, _ = nrm.group_norm_forward(x * 1e-2, gamma, beta, 4, eps=1e-3)
    y_eps_torch = layer(torch.tensor((x * 1e-2).astype("float32"))).detach().numpy()
    y_right, _ = nrm.group_norm_forward(x, gamma, beta, 4)
    x_hat, _, r = _standardised_terms(x.reshape(4, 4, 12), (2,), 1e-5)  # eq-bound-y: cond = max(|x_hat| + r)
    kw = dict(dtype="float32", m=12, cond=cond(np.abs(x_hat) + r, y_right), show="none")
    assert check_close(y_torch, y_right, **kw).passed
    assert not check_close(y_torch, y_wrong_groups, **kw).passed
    assert not check_close(y_eps_torch, y_wrong_eps, **kw).passed


# ----------------------------------------------------------------------------------------------------
# Precision at |mean|/std = 1e4: Layer and Group Normalization centre as the reference does
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["layer", "group"])
def test_float32_standardisation_keeps_x_hat_accurate_at_mean_over_std_1e4(kind):
    """LN and GN centre with the reference's corrected two-pass (``bnref.reference.mean_and_centred``): in float32
    at |mean|/std = 1e4 their x_hat meets the bound Batch Normalization's does, (XHAT) of tests/test_reference.py,
    ``(2 m + 4) u max|x_hat|``, independent of |mean|/std. The plain two-pass (the mean, then x - mean) misses it:
    its mean is rounded to the float32 grid at 1e4 (spacing 2**-10), which shifts every x_hat of an example."""
    rng = np.random.default_rng(22)
    if kind == "layer":
        x = (1e4 + rng.normal(size=(64, 512))).astype(np.float32)
        _, cache = nrm.layer_norm_forward(x, np.ones(512, np.float32), np.zeros(512, np.float32))
        grouped, axes = x, (1,)
    else:
        x = (1e4 + rng.normal(size=(16, 8, 8, 8))).astype(np.float32)
        _, cache = nrm.group_norm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32), groups=2)
        grouped, axes = x.reshape(16, 2, 4, 8, 8), (2, 3, 4)
    m = int(np.prod([grouped.shape[a] for a in axes]))
    x64 = grouped.astype(np.float64)  # the float32 values, exactly
    mu64 = x64.mean(axis=axes, keepdims=True)
    x_hat_true = (x64 - mu64) / np.sqrt(((x64 - mu64) ** 2).mean(axis=axes, keepdims=True) + 1e-5)
    bound = (2 * m + 4) * unit_roundoff("float32") * np.max(np.abs(x_hat_true))
    assert np.max(np.abs(cache.x_hat - x_hat_true)) <= bound

    mu = np.mean(grouped, axis=axes, keepdims=True)  # the plain two-pass, in float32
    x_hat_plain = (grouped - mu) / np.sqrt(np.mean((grouped - mu) ** 2, axis=axes, keepdims=True) + np.float32(1e-5))
    assert np.max(np.abs(x_hat_plain - x_hat_true)) > bound


# ----------------------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("shape,k", [((4, 5), 1), ((3, 4, 5), 1), ((3, 4, 5), 2), ((2, 3, 2, 2), 3)])
def test_rms_norm_gradcheck(seed, shape, k):
    rng = _rng(seed)
    x, dy, gamma = rng.normal(loc=0.5, size=shape), rng.normal(size=shape), rng.normal(size=shape[-k:])
    _, cache = nrm.rms_norm_forward(x, gamma, normalized_ndim=k)
    grads = nrm.rms_norm_backward(dy, cache)
    f = lambda x, g: nrm.rms_norm_forward(x, g, normalized_ndim=k)[0]  # noqa: E731
    assert bnref.gradcheck(f, [x, gamma], grads, dy) < 1e-8


def test_rms_norm_is_layer_norm_of_centred_rows_without_shift():
    """On rows of mean zero, RMS = std: RMSNorm and Layer Normalization (beta = 0) agree to rounding."""
    rng = _rng(3)
    x = rng.normal(size=(6, 7))
    x -= x.mean(axis=1, keepdims=True)
    gamma = rng.normal(size=7)
    y_rms, _ = nrm.rms_norm_forward(x, gamma, eps=1e-5)
    y_ln, _ = nrm.layer_norm_forward(x, gamma, np.zeros(7), eps=1e-5)
    assert check_close(y_rms, y_ln, dtype="float64", m=7, show="none").passed
    y = nrm.rms_norm_forward(x, np.ones(7), eps=1e-12)[0]  # root mean square 1 per row
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=1)), 1.0, rtol=1e-10)


def _rms_bounds_and_check(actual, expected, x, dy, gamma, eps, k, dtype):
    """y, dx, dgamma of RMSNorm within check_close's bound (appendix ch-bounds).

    Condition scales, with x_hat and inv_rms from float64: ``y = gamma x_hat`` is a product of roundings of a sum
    of squares (no cancellation, S = |y|); ``dx = inv_rms / m (m dx_hat - x_hat sum(dx_hat x_hat))`` has
    ``S = inv_rms / m (m |dx_hat| + |x_hat| sum|dx_hat x_hat|)``; ``dgamma`` sums ``dy x_hat`` over the examples,
    whose x_hat each carry the error of their own sum of squares: two reductions, so twice ``sum|dy x_hat|``."""
    axes = tuple(range(x.ndim - k, x.ndim))
    param_axes = tuple(range(x.ndim - k))
    inv_rms = 1.0 / np.sqrt(np.mean(x**2, axis=axes, keepdims=True) + eps)
    x_hat = x * inv_rms
    m, m_param = int(np.prod(x.shape[-k:])), int(np.prod(x.shape[:-k]))
    dx_hat = np.abs(dy * gamma)
    s_dx = inv_rms / m * (m * dx_hat + np.abs(x_hat) * np.sum(dx_hat * np.abs(x_hat), axis=axes, keepdims=True))
    s_dgamma = 2 * np.sum(np.abs(dy * x_hat), axis=param_axes)
    y, dx, dgamma = (np.asarray(a, np.float64) for a in actual)
    y_ref, dx_ref, dgamma_ref = expected
    for result in (
        check_close(y, y_ref, dtype=dtype, m=m, cond=cond(np.abs(gamma * x_hat), y_ref), what="y", show="none"),
        check_close(dx, dx_ref, dtype=dtype, m=m, cond=cond(s_dx, dx_ref), what="dx", show="none"),
        check_close(
            dgamma,
            dgamma_ref,
            dtype=dtype,
            m=max(m, m_param),
            cond=cond(s_dgamma, dgamma_ref),
            what="dgamma",
            show="none",
        ),
    ):
        assert result.passed, str(result)


def _torch_rms_run(torch, layer, gamma: np.ndarray, x: np.ndarray, dy: np.ndarray):
    """y, dx, dgamma of a torch.nn.RMSNorm with weight gamma, on x and dy in the layer's dtype."""
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
    xt = torch.tensor(x, requires_grad=True)
    yt = layer(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), layer.weight.grad.numpy()


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k,loc", [((16, 32), 1, 0.0), ((4, 8, 16), 2, 3.0), ((8, 5, 7), 1, 0.0)])
def test_rms_norm_agrees_with_torch(torch, seed, dtype, shape, k, loc):
    """torch.nn.RMSNorm (torch 2.13) forward and backward, float32 and float64, eps 1e-6 given explicitly."""
    x, dy = _case(seed, shape, loc)
    gamma = _rng(seed + 100).normal(size=shape[-k:])
    layer = torch.nn.RMSNorm(shape[-k:], eps=1e-6, dtype=getattr(torch, dtype))
    actual = _torch_rms_run(torch, layer, gamma, x.astype(dtype), dy.astype(dtype))
    y, cache = nrm.rms_norm_forward(x, gamma, eps=1e-6, normalized_ndim=k)
    expected = (y, *nrm.rms_norm_backward(dy, cache))
    _rms_bounds_and_check(actual, expected, x, dy, gamma, 1e-6, k, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rms_norm_default_eps_of_torch_is_the_machine_epsilon_of_its_compute_type(torch, dtype):
    """torch.nn.RMSNorm(eps=None) adds torch.finfo(compute type).eps: our eps=np.finfo(dtype).eps reproduces it,
    on rows small enough (|x| ~ 1e-4, mean square ~ 1e-8) for eps to matter in float32."""
    x, dy = _case(0, (6, 16))
    x = x * 1e-4
    gamma = _rng(1).normal(size=16)
    layer = torch.nn.RMSNorm(16, dtype=getattr(torch, dtype))
    assert layer.eps is None
    actual = _torch_rms_run(torch, layer, gamma, x.astype(dtype), dy.astype(dtype))
    eps = float(np.finfo(dtype).eps)
    y, cache = nrm.rms_norm_forward(x, gamma, eps=eps)
    expected = (y, *nrm.rms_norm_backward(dy, cache))
    _rms_bounds_and_check(actual, expected, x, dy, gamma, eps, 1, dtype)
    if dtype == "float32":  # and the default 1e-6 would not: eps is 1e-2 of the mean square here
        y_other, _ = nrm.rms_norm_forward(x, gamma)
        assert not check_close(actual[0], y_other, dtype=dtype, m=16, show="none").passed


def test_rms_norm_bad_input():
    x, g = np.random.default_rng(0).normal(size=(4, 3)), np.ones(3)
    with pytest.raises(ValueError, match="normalized_ndim must be an integer >= 1; got 0"):
        nrm.rms_norm_forward(x, g, normalized_ndim=0)
    with pytest.raises(ValueError, match=r"normalized_ndim must be at most the 2 dimensions of x \(4, 3\); got 3"):
        nrm.rms_norm_forward(x, np.ones((1, 4, 3)), normalized_ndim=3)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\) to match the last 1 axes of x"):
        nrm.rms_norm_forward(x, np.ones(4))
    with pytest.raises(ValueError, match="x must have values to normalise over its last 1 axes"):
        nrm.rms_norm_forward(np.ones((4, 0)), np.ones(0))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"x has non-finite values \(nan or inf\) at flat positions \[7\]"):
        nrm.rms_norm_forward(bad, g)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        nrm.rms_norm_forward(x, g, eps=-1e-6)
    _, cache = nrm.rms_norm_forward(x, g)
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(4, 3\); got \(3, 4\)"):
        nrm.rms_norm_backward(np.ones((3, 4)), cache)
    with pytest.raises(TypeError, match="x must be a real floating-point array"):
        nrm.rms_norm_forward(np.ones((4, 3), dtype=int), g)
    with pytest.raises(TypeError, match=r"normalized_ndim must be an integer; got 1.0"):
        nrm.rms_norm_forward(x, g, normalized_ndim=1.0)
    with pytest.raises(TypeError, match="eps must be a real number; got True"):
        nrm.rms_norm_forward(x, g, eps=True)
    _, ln_cache = nrm.layer_norm_forward(x, g, np.zeros(3))
    with pytest.raises(
        TypeError, match="cache must be the RMSNormCache returned by rms_norm_forward; got LayerNormCache"
    ):
        nrm.rms_norm_backward(np.ones((4, 3)), ln_cache)
    assert bnref.rms_norm_forward is nrm.rms_norm_forward and bnref.RMSNormCache is nrm.RMSNormCache


@pytest.mark.parametrize("name", ["bnref.normalization", "bnref.batch_variants"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
