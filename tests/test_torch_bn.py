"""bnref.layers.torch_bn: the derived backward (gradcheck), the functional form and the drop-in module.

Tolerances (GUIDE section 4):
* float64 gradient checks: central differences with h = 1e-6 have truncation error ~h^2 |y'''| ~ 1e-12 and
  rounding error ~eps64 |y| / h ~ 2.2e-16 * 3 / 1e-6 ~ 7e-10, so torch.autograd.gradcheck's
  ``|analytic - numeric| <= atol + rtol |numeric|`` holds with atol = 1e-8, rtol = 1e-7; with bnref's
  checker (h = 1e-5: truncation ~1e-10, rounding ~1e-10) the max-norm relative error is below 1e-8.
* float64 agreement between two implementations of the same formula: every output is a sum over m terms
  plus a few elementwise operations, so its error is at most C * eps64 * (1 + sqrt(m)) times the sum of
  absolute values it is computed from (bnref.check.agreement's bound, C = 4); the tests below use that bound via
  ``_f64_tol`` for O(1) data.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bnref  # noqa: E402
from bnref import PYTORCH  # noqa: E402
from bnref.layers.torch_bn import BatchNorm, BatchNormFunction, batch_norm, compute_dtype  # noqa: E402
from bnref.testing import BOUND_C  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


def _f64_tol(m: int, scale: float = 1.0) -> float:
    """C * eps64 * (1 + sqrt(m)) * scale: float64 rounding of an m-term reduction (module docstring)."""
    return BOUND_C * EPS64 * (1 + math.sqrt(m)) * scale


def _scales(x: torch.Tensor, dy: torch.Tensor, m: int) -> tuple[float, float, float, float]:
    """Absolute condition scales of y, dx, dgamma, dbeta for gamma = 1, beta = 0 (bnref.check.agreement)."""
    dims = tuple(d for d in range(x.dim()) if d != 1)
    b = [-1 if d == 1 else 1 for d in range(x.dim())]
    mean, sigma = x.mean(dims), torch.sqrt(x.var(dims, unbiased=False) + PYTORCH.eps)
    x_hat = (x - mean.view(b)) / sigma.view(b)
    r, big_x = mean.abs() / sigma, x_hat.abs().amax(dims)
    sum_dy = dy.abs().sum(dims)
    sum_dy_xhat = (dy.abs() * (x_hat.abs() + r.view(b))).sum(dims)
    dgamma = (dy * x_hat).sum(dims)
    dx = (dy.abs().amax(dims) + (sum_dy + (r + big_x) * dgamma.abs() + big_x * sum_dy_xhat) / m) / sigma
    return tuple(float(v.max()) for v in (r + big_x, dx, sum_dy_xhat, sum_dy))


def _native(ndim: int):
    return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]


# ----------------------------------------------------------------------------------------------------
# The autograd Function: gradcheck in float64
# ----------------------------------------------------------------------------------------------------

GRAD_SHAPES = [((4, 3), 1), ((5, 3, 4), 1), ((2, 3, 2, 2), 1), ((2, 2, 2, 3), -1), ((3, 2, 2, 2, 2), 1)]


@pytest.mark.parametrize("shape,axis", GRAD_SHAPES)
def test_function_passes_torch_gradcheck(shape, axis):
    gen = torch.Generator().manual_seed(0)
    c = shape[axis]
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w = (torch.rand(c, dtype=torch.float64, generator=gen) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=torch.float64, generator=gen, requires_grad=True)

    def f(x, w, b):
        return BatchNormFunction.apply(x, w, b, PYTORCH.eps, axis)[0]

    # atol/rtol derived in the module docstring (h = 1e-6).
    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-8, rtol=1e-7)


def test_function_gradcheck_without_affine():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: BatchNormFunction.apply(x, None, None, 1e-3, 1)[0], (x,), eps=1e-6, atol=1e-8, rtol=1e-7
    )


@pytest.mark.parametrize("shape,axis", GRAD_SHAPES[:3])
def test_function_passes_bnref_gradcheck_below_1e8(shape, axis):
    """GUIDE section 4: max-norm relative error of the analytic gradients below 1e-8."""
    rng = np.random.default_rng(1)
    c = shape[axis]
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    g, b = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    y = BatchNormFunction.apply(xt, gt, bt, PYTORCH.eps, axis)[0]
    y.backward(torch.tensor(dy))
    analytic = [t.grad.numpy() for t in (xt, gt, bt)]

    def f(x, g, b):
        return BatchNormFunction.apply(torch.tensor(x), torch.tensor(g), torch.tensor(b), PYTORCH.eps, axis)[0].numpy()

    assert bnref.gradcheck(f, [x, g, b], analytic, dy) < 1e-8


def test_backward_is_the_derived_formula_not_autograd():
    """The graph holds one node for BN (our Function), and its gradients equal the NumPy compact formula."""
    rng = np.random.default_rng(2)
    x, dy = rng.normal(size=(8, 3, 5)), rng.normal(size=(8, 3, 5))
    g, b = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    y, mean, var = BatchNormFunction.apply(xt, gt, bt, PYTORCH.eps, 1)
    assert "BatchNormFunctionBackward" in type(y.grad_fn).__name__
    assert not mean.requires_grad and not var.requires_grad
    y.backward(torch.tensor(dy))
    _, cache = bnref.batch_norm_forward(x, g, b, PYTORCH.eps, axis=1)
    dx, dg, db = bnref.batch_norm_backward(dy, cache)
    m = 8 * 5
    # dx ~ gamma/sigma * |dy| = O(3); dgamma, dbeta: sums of m terms of size O(3)
    assert np.max(np.abs(xt.grad.numpy() - dx)) <= _f64_tol(m, 3.0)
    assert np.max(np.abs(gt.grad.numpy() - dg)) <= _f64_tol(m, 3.0 * m)
    assert np.max(np.abs(bt.grad.numpy() - db)) <= _f64_tol(m, 3.0 * m)


def test_forward_statistics_are_the_biased_two_pass_ones():
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, size=(16, 4, 3))
    _, mean, var = BatchNormFunction.apply(torch.tensor(x), None, None, PYTORCH.eps, 1)
    ref_mean, ref_var = bnref.batch_mean_var(x, axis=1)
    m = 48
    # mean: sum of m terms of size |mean| + std * X with X = max|x_hat| <= sqrt(m - 1); var: terms (std X)^2
    big_x = math.sqrt(m - 1)
    assert np.max(np.abs(mean.numpy() - ref_mean)) <= _f64_tol(m, 5.0 + 2.0 * big_x)
    assert np.max(np.abs(var.numpy() - ref_var)) <= _f64_tol(m, (2.0 * big_x) ** 2)


# ----------------------------------------------------------------------------------------------------
# The functional form
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_functional_matches_F_batch_norm(training):
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.normal(size=(6, 3, 4)))
    w, b = torch.tensor(rng.uniform(0.5, 1.5, 3)), torch.tensor(rng.normal(size=3))
    rm1, rv1 = torch.tensor(rng.normal(size=3)), torch.tensor(rng.uniform(0.5, 2, 3))
    rm2, rv2 = rm1.clone(), rv1.clone()
    rm0 = rm1.clone()
    y1 = batch_norm(x, rm1, rv1, w, b, training, 0.3, 1e-4)
    y2 = torch.nn.functional.batch_norm(x, rm2, rv2, w, b, training, 0.3, 1e-4)
    m = 24
    assert torch.max(torch.abs(y1 - y2)) <= _f64_tol(m, 4.0)
    assert torch.max(torch.abs(rm1 - rm2)) <= _f64_tol(m, 4.0)
    assert torch.max(torch.abs(rv1 - rv2)) <= _f64_tol(m, 4.0)
    assert torch.equal(rm1, rm0) != training  # updated in place in training only


def test_functional_channels_last_equals_permuted():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(3, 4, 4, 5)), requires_grad=True)
    w, b = torch.tensor(rng.uniform(0.5, 1.5, 5)), torch.tensor(rng.normal(size=5))
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    y_last = batch_norm(x, rm, rv, w, b, True, channel_axis=-1)
    rm2, rv2 = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    y_first = batch_norm(x.movedim(-1, 1), rm2, rv2, w, b, True, channel_axis=1).movedim(1, -1)
    m = 48
    assert torch.max(torch.abs(y_last - y_first)) <= _f64_tol(m, 4.0)
    assert torch.max(torch.abs(rv - rv2)) <= _f64_tol(m, 4.0)


def test_functional_validates_input():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="inference mode"):
        batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        batch_norm(x, torch.zeros(2), torch.ones(2), training=True)
    with pytest.raises(ValueError, match="floating-point"):
        batch_norm(torch.ones(4, 3, dtype=torch.long), None, None, training=True)
    with pytest.raises(ValueError, match="eps"):
        batch_norm(x, None, None, training=True, eps=0.0)
    with pytest.raises(ValueError, match="momentum"):
        batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=1.5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm(torch.randn(1, 3), None, None, training=True)


# ----------------------------------------------------------------------------------------------------
# The module: drop-in for nn.BatchNorm1d/2d/3d
# ----------------------------------------------------------------------------------------------------


def test_defaults_come_from_the_pytorch_convention_and_equal_native():
    ours, native = BatchNorm(3), torch.nn.BatchNorm2d(3)
    assert (ours.eps, ours.momentum) == (PYTORCH.eps, PYTORCH.momentum) == (native.eps, native.momentum)
    assert ours.affine and ours.track_running_stats
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(native, name)), name
    assert torch.all(ours.running_mean == PYTORCH.init_mean) and torch.all(ours.running_var == PYTORCH.init_var)
    assert repr(ours).split("(", 1)[1] == repr(native).split("(", 1)[1]


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("ndim", [2, 4, 5])
def test_state_dict_keys_and_load_both_ways(affine, bias, track, ndim):
    if "bias" not in inspect.signature(_native(ndim)).parameters:
        pytest.skip("this PyTorch's BatchNorm has no bias= switch (added in 2.13)")
    ours = BatchNorm(4, affine=affine, track_running_stats=track, bias=bias)
    native = _native(ndim)(4, affine=affine, track_running_stats=track, bias=bias)
    assert repr(ours).split("(", 1)[1] == repr(native).split("(", 1)[1]
    assert list(ours.state_dict()) == list(native.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in native.named_parameters()]
    x = torch.randn(8, 4, *([3] * (ndim - 2)))
    native.train()(x)  # move the native state away from its initial values
    ours.load_state_dict(native.state_dict())
    for k, v in native.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    ours.train()(x * 2 + 1)
    native.load_state_dict(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(native.state_dict()[k], v), k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [PYTORCH.momentum, 0.5, None])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 2, 2)])
def test_module_tracks_native_in_float64(device, momentum, shape):
    """3 training steps then eval: outputs, gradients and buffers equal nn.BatchNorm*'s to float64 precision."""
    gen = torch.Generator().manual_seed(6)
    ours = BatchNorm(3, momentum=momentum, device=device, dtype=torch.float64)
    native = _native(len(shape))(3, momentum=momentum, device=device, dtype=torch.float64)
    m = math.prod(shape) // 3
    for _ in range(3):
        x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
        dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
        outs = []
        for mod in (ours, native):
            xr = x.clone().requires_grad_()
            y = mod(xr)
            y.backward(dy)
            outs.append((y, xr.grad, mod.weight.grad.clone(), mod.bias.grad.clone()))
            mod.weight.grad = mod.bias.grad = None
        # condition scales of bnref.check.agreement (gamma 1, beta 0): y ~ r + X, dbeta ~ sum|dy|,
        # dgamma ~ sum|dy| (|x_hat| + r), dx ~ (max|dy| + (sum|dy| + (r + X)|dgamma| + X sum|dy|(|x_hat| + r))/m)/sigma
        for a, b, scale in zip(outs[0], outs[1], _scales(x, dy, m), strict=True):
            assert torch.max(torch.abs(a - b)) <= _f64_tol(m, scale)
    assert int(ours.num_batches_tracked) == int(native.num_batches_tracked) == 3
    # running values: convex combinations of batch statistics of size <= |mean| + std X and (std X)^2 <= 4 m
    for name in ("running_mean", "running_var"):
        assert torch.max(torch.abs(getattr(ours, name) - getattr(native, name))) <= _f64_tol(m, 4.0 * m), name
    ours.eval(), native.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    # inference: a few roundings on terms of size (|x| + |r_mean|) / sqrt(r_var + eps)
    scale = float(torch.max(torch.abs(x))) + float(torch.max(torch.abs(native.running_mean)))
    scale /= math.sqrt(float(native.running_var.min()) + PYTORCH.eps)
    assert torch.max(torch.abs(ours(x) - native(x))) <= _f64_tol(m, scale)


def test_momentum_none_is_the_cumulative_average():
    """With momentum=None, after k batches running_mean is the plain mean of the k batch means (PAPER)."""
    bn = BatchNorm(2, momentum=None, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    means, unbiased = [], []
    for k in range(5):
        x = torch.randn(6, 2, generator=gen, dtype=torch.float64) * (k + 1) + k
        bn(x)
        means.append(x.mean(0))
        unbiased.append(x.var(0, unbiased=True))
    # 5 updates of O(5) values, each a few roundings: 5 * 4 * eps64 * 5
    tol = 5 * BOUND_C * EPS64 * 5
    assert torch.max(torch.abs(bn.running_mean - torch.stack(means).mean(0))) <= tol
    assert torch.max(torch.abs(bn.running_var - torch.stack(unbiased).mean(0))) <= tol * 5


def test_train_and_eval_semantics():
    gen = torch.Generator().manual_seed(8)
    bn = BatchNorm(3)
    x = torch.randn(16, 3, generator=gen) * 3 + 2
    bn.eval()
    y_eval = bn(x)
    # eval with initial running stats (0, 1): y = x / sqrt(1 + eps), no update, counter unchanged
    assert torch.allclose(y_eval, x / math.sqrt(1 + PYTORCH.eps), rtol=4 * EPS32, atol=0)
    assert int(bn.num_batches_tracked) == 0 and torch.all(bn.running_mean == 0)
    bn.train()
    y_train = bn(x)
    assert int(bn.num_batches_tracked) == 1
    # batch-normalised: mean 0 up to the y bound e (r + X) (bnref.check.agreement), r = |mean|/std ~ 2/3 and
    # X = max|x_hat| <= sqrt(m - 1) for m values (gamma 1, beta 0)
    m, r = 16, 2 / 3
    tol = BOUND_C * EPS32 * (1 + math.sqrt(m)) * (r + math.sqrt(m - 1))
    assert torch.max(torch.abs(y_train.mean(0))) <= tol
    # track_running_stats=False: batch statistics in both modes, no buffers
    free = BatchNorm(3, track_running_stats=False)
    assert free.running_mean is None and free.num_batches_tracked is None
    assert torch.equal(free.train()(x), free.eval()(x))


def test_module_validates_input_like_native():
    bn = BatchNorm(3)
    with pytest.raises(ValueError, match="2D to 5D"):
        bn(torch.randn(3))
    with pytest.raises(ValueError, match="2D to 5D"):
        bn(torch.randn(2, 3, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="3 channels"):
        bn(torch.randn(4, 5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(1, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        torch.nn.BatchNorm1d(3)(torch.randn(1, 3))  # the native message, which ours repeats
    bn.eval()
    assert bn(torch.randn(1, 3)).shape == (1, 3)  # one sample is fine in inference
    assert bn.train()(torch.randn(1, 3, 2)).shape == (1, 3, 2)  # m = N * L = 2 values per channel
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_use_float32_statistics(dtype):
    """Half inputs: output in the input dtype, statistics in float32, as nn.BatchNorm (facts table)."""
    assert compute_dtype(dtype) == torch.float32
    gen = torch.Generator().manual_seed(9)
    x = (torch.randn(64, 4, generator=gen) * 2 + 3).to(dtype)
    ours, native = BatchNorm(4), torch.nn.BatchNorm1d(4)
    xr = x.clone().requires_grad_()
    y = ours(xr)
    y.float().sum().backward()
    assert y.dtype == dtype and xr.grad.dtype == dtype
    assert ours.running_mean.dtype == torch.float32 and ours.weight.grad.dtype == torch.float32
    assert native(x).dtype == dtype
    # Running stats equal the float64 statistics of the (rounded) input to float32 precision, i.e. they were
    # not computed in half precision (whose eps 1e-3 / 8e-3 would show): bound C*eps32*(1+sqrt(m))*(|mean|+std X).
    x64 = x.double().numpy()
    mean, var = bnref.batch_mean_var(x64, axis=1)
    w = PYTORCH.new_value_weight(1)
    expected_mean = (1 - w) * PYTORCH.init_mean + w * mean
    tol = BOUND_C * EPS32 * (1 + math.sqrt(64)) * (3 + 2 * math.sqrt(63))  # max|x_hat| <= sqrt(m - 1)
    assert np.max(np.abs(ours.running_mean.double().numpy() - expected_mean)) <= tol
    assert np.max(np.abs(native.running_mean.double().numpy() - expected_mean)) <= tol


@pytest.mark.parametrize("device", DEVICES)
def test_two_pass_variance_survives_mean_over_std_1e3_in_float32(device):
    """|mean|/std = 1e3 in float32: the two-pass variance keeps float32 precision, the one-pass loses all.

    Two-pass error: C eps32 (1+sqrt(m)) var + (C eps32 (1+sqrt(m)) |mean|)^2 (bnref.check.agreement); with
    m = 256, |mean| = 1e3, std = 1: 4 * 1.19e-7 * 17 + (8.1e-6 * 1e3)^2 ~ 8e-6 + 6.6e-5 < 1e-4 relative.
    One-pass E[x^2] - E[x]^2 rounds E[x^2] ~ 1e6 to float32 spacing 0.06: relative error ~ 0.06 / 1 >> 1e-4.
    """
    gen = torch.Generator().manual_seed(10)
    x64 = torch.randn(256, 3, generator=gen, dtype=torch.float64) + 1e3
    x = x64.float().to(device)
    _, mean, var = BatchNormFunction.apply(x, None, None, PYTORCH.eps, 1)
    _, true_var = bnref.batch_mean_var(x.double().cpu().numpy(), axis=1)
    m = 256
    e = BOUND_C * EPS32 * (1 + math.sqrt(m))
    tol = e * true_var.max() + (e * 1e3) ** 2
    assert np.max(np.abs(var.double().cpu().numpy() - true_var)) <= tol
    one_pass = (x * x).mean(0) - x.mean(0) ** 2
    assert np.max(np.abs(one_pass.double().cpu().numpy() - true_var)) > 10 * tol


# ----------------------------------------------------------------------------------------------------
# Drop-in details (issue 14); the frameworks' own checks are in tests/test_native_suites.py
# ----------------------------------------------------------------------------------------------------


def test_update_rule_is_built_once_and_follows_a_momentum_change():
    bn = BatchNorm(3, momentum=0.2)
    rule = bn._running_update_rule()
    x = torch.randn(8, 3)
    bn(x), bn(x)
    assert bn._running_update_rule() is rule and rule.momentum == 0.2
    bn.momentum = None  # users change momentum after construction; the rule follows
    before = bn.running_mean.clone()
    bn(x)
    k = int(bn.num_batches_tracked)  # 3: the cumulative weight 1/3
    expected = (1 - 1 / k) * before + x.mean(0) / k
    # float32: a few roundings on values of size max|x|
    assert torch.max(torch.abs(bn.running_mean - expected)) <= BOUND_C * EPS32 * (1 + math.sqrt(8)) * float(
        x.abs().max()
    )
    with pytest.raises(ValueError, match="momentum"):
        bn.momentum = 1.5
        bn(x)


def test_classes_are_native_batchnorm_subclasses_with_their_rank_checks():
    from torch.nn.modules.batchnorm import _BatchNorm

    from bnref.layers.torch_bn import BatchNorm1d, BatchNorm2d, BatchNorm3d

    for cls, ranks in ((BatchNorm, {2, 3, 4, 5}), (BatchNorm1d, {2, 3}), (BatchNorm2d, {4}), (BatchNorm3d, {5})):
        assert issubclass(cls, _BatchNorm)
        for rank in range(1, 7):
            x = torch.randn((4, 3, 2, 2, 2, 2)[:rank])
            if rank in ranks:
                assert cls(3)(x).shape == x.shape
            else:
                with pytest.raises(ValueError, match=f"{rank}D input"):
                    cls(3)(x)


def test_shape_mismatch_is_both_value_error_and_runtime_error():
    from bnref.layers.torch_bn import ShapeMismatchError

    bn = BatchNorm(3)
    bn.running_var = torch.ones(4)
    for exc in (ValueError, RuntimeError, ShapeMismatchError):
        with pytest.raises(exc, match="running_var must have shape \\(3,\\)"):
            bn(torch.randn(4, 3))


def test_double_backward_rebuilds_the_statistics_inside_the_graph():
    """Second derivatives through the derived backward equal those of autograd through the plain forward."""
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    w0 = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    dy = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(6, 3, generator=gen, dtype=torch.float64)

    def plain(x, w):  # autograd through the forward: an independent route to the same derivatives
        mean = x.mean(0)
        var = ((x - mean) ** 2).mean(0)
        return (x - mean) / torch.sqrt(var + PYTORCH.eps) * w

    out = []
    for f in (lambda x, w: BatchNormFunction.apply(x, w, None, PYTORCH.eps, 1)[0], plain):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        (dx,) = torch.autograd.grad(f(x, w), x, dy, create_graph=True)
        out.append(torch.autograd.grad(dx, (x, w), v))
    for a, b in zip(*out, strict=True):
        # second derivatives: products of O(1) terms over m = 6 values, each O(|dy| |v| / sigma^2) <= O(30)
        assert torch.max(torch.abs(a - b)) <= _f64_tol(6, 30 * 6)
