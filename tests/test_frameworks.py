"""PyTorch and Keras side by side: the frameworks' conventions as the book states them (chapter
"Frameworks side by side"), the agreement matrix, the conventions that must show as differences, drop-in
training parity and property tests. Weight transfer is tested in ``tests/test_transfer.py``.

Every numerical comparison uses a bound derived from the precision, by the error model of ``bnref.testing``
that the book's appendix "How the checks are bounded" (``ch-bounds``) derives: ``e = C eps_c (1 + sqrt(m))``
(``reduction_error``; C = 4, sqrt(m): probabilistic growth of rounding error in an m-term sum, Higham & Mary
2019) times the absolute scale each quantity is computed from, which carries the ``|mean|/std`` factor of
the frameworks' ``y = x * a + b``, plus the rounding of half-precision outputs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import bnref  # noqa: E402
from bnref import KERAS, PYTORCH, PYTORCH_CUMULATIVE  # noqa: E402
from bnref.check import agreement as ag  # noqa: E402
from bnref.check import precision  # noqa: E402
from bnref.check.agreement import Case, Status, run_case  # noqa: E402
from bnref.layers.keras_bn import BatchNormalization  # noqa: E402
from bnref.layers.torch_bn import BatchNorm  # noqa: E402
from bnref.testing import BOUND_C, reduction_error  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
ROOT = Path(__file__).resolve().parents[1]


def _torch_native(ndim: int):
    return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]


def _e(eps: float, m: int) -> float:
    """The per-reduction error unit C * eps * (1 + sqrt(m)) of bnref.testing (appendix ch-bounds)."""
    dtype = {EPS64: "float64", EPS32: "float32"}[eps]
    return reduction_error(dtype, m)


# ----------------------------------------------------------------------------------------------------
# The conventions table of the book's frameworks chapter, row by row, against the native layers
# ----------------------------------------------------------------------------------------------------


def test_fact_default_eps():
    assert torch.nn.BatchNorm2d(3).eps == PYTORCH.eps == 1e-5
    assert keras.layers.BatchNormalization().epsilon == KERAS.eps == 1e-3


def test_fact_default_momentum_and_axis():
    assert torch.nn.BatchNorm1d(3).momentum == PYTORCH.momentum == 0.1
    layer = keras.layers.BatchNormalization()
    assert layer.momentum == KERAS.momentum == 0.99
    assert layer.axis == KERAS.axis == -1 and PYTORCH.axis == 1


def _first_step(framework: str, x: np.ndarray, **kwargs):
    """Running mean and variance of a native layer after one training step on x (float64)."""
    if framework == "torch":
        bn = _torch_native(x.ndim)(x.shape[1], dtype=torch.float64, **kwargs)
        bn.train()(torch.tensor(x))
        return bn.running_mean.numpy(), bn.running_var.numpy()
    layer = keras.layers.BatchNormalization(axis=1, dtype="float64", **kwargs)
    layer(x, training=True)
    return layer.moving_mean.numpy(), layer.moving_variance.numpy()


@pytest.mark.parametrize("framework,conv", [("torch", PYTORCH), ("keras", KERAS)])
def test_fact_running_update_rule_and_variance_bias(framework, conv):
    """Running update r = (1 - w) r + w b with the convention's w and bias, checked on 3 steps."""
    rng = np.random.default_rng(0)
    if framework == "torch":
        bn = torch.nn.BatchNorm2d(3, dtype=torch.float64).train()
    else:
        layer = keras.layers.BatchNormalization(axis=1, dtype="float64")
    stats = bnref.RunningStats(3, conv)
    for _ in range(3):
        x = rng.normal(1.0, 2.0, size=(4, 3, 2, 2))
        _, cache = bnref.batch_norm_forward(x, np.ones(3), np.zeros(3), conv.eps, axis=1)
        stats.update(cache)
        if framework == "torch":
            bn(torch.tensor(x))
            got = bn.running_mean.numpy(), bn.running_var.numpy()
        else:
            layer(x, training=True)
            got = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    # 3 updates of O(5) values (mean ~1 +- 2, var ~4 * 16/15), a few roundings each: float64 unit e, m = 16
    tol = 3 * _e(EPS64, 16) * 5
    assert np.max(np.abs(got[0] - stats.mean)) <= tol
    assert np.max(np.abs(got[1] - stats.var)) <= tol


def test_fact_momentum_none_is_cumulative_average():
    rng = np.random.default_rng(1)
    bn = torch.nn.BatchNorm1d(2, momentum=None, dtype=torch.float64)
    stats = bnref.RunningStats(2, PYTORCH_CUMULATIVE)
    for k in range(4):
        x = rng.normal(k, k + 1, size=(5, 2))
        bn(torch.tensor(x))
        stats.update(bnref.batch_norm_forward(x, np.ones(2), np.zeros(2), PYTORCH.eps)[1])
    tol = 4 * _e(EPS64, 5) * 20  # 4 updates of values up to ~ (k+1)^2 * 5/4 ~ 20
    assert np.max(np.abs(bn.running_mean.numpy() - stats.mean)) <= tol
    assert np.max(np.abs(bn.running_var.numpy() - stats.var)) <= tol


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_fact_training_normalises_with_the_biased_variance(framework):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3))  # small m: biased and unbiased differ by 4/3
    if framework == "torch":
        y = torch.nn.BatchNorm1d(3, dtype=torch.float64).train()(torch.tensor(x)).detach().numpy()
        eps = PYTORCH.eps
    else:
        y = np.asarray(keras.layers.BatchNormalization(dtype="float64")(x, training=True))
        eps = KERAS.eps
    biased = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    unbiased = (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps)
    tol = _e(EPS64, 4) * 4
    assert np.max(np.abs(y - biased)) <= tol
    assert np.max(np.abs(y - unbiased)) > 1e6 * tol


def test_fact_unbiased_running_variance_uses_n_equal_NHW():
    """Conv inputs: torch's unbiased factor is m/(m-1) with m = N*H*W (not N); Keras feeds the biased var.

    From the initial value 1, after one step: torch r = (1 - 0.1) + 0.1 * m/(m-1) var, Keras
    r = 0.99 + 0.01 var, so (r_torch - 0.9)/0.1 divided by (r_keras - 0.99)/0.01 is exactly m/(m-1), up to
    float64 rounding of the two updates (a few eps64 relative, amplified by 1/w <= 100).
    """
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 4))
    m = 2 * 4 * 4
    _, rv_torch = _first_step("torch", x)
    _, rv_keras = _first_step("keras", x)
    w_t, w_k = PYTORCH.new_value_weight(1), 1 - KERAS.momentum
    ratio = ((rv_torch - (1 - w_t) * PYTORCH.init_var) / w_t) / ((rv_keras - (1 - w_k) * KERAS.init_var) / w_k)
    tol = _e(EPS64, m) * 100 * 4
    assert np.max(np.abs(ratio - m / (m - 1))) <= tol
    assert np.min(np.abs(ratio - 2 / 1)) > 0.5  # not N/(N-1)


def test_fact_reduced_over_every_dim_but_the_channel_axis():
    """torch reduces every dim but 1 (NCHW); Keras every dim but axis (default -1, NHWC): same statistics."""
    rng = np.random.default_rng(4)
    x_nchw = rng.normal(2.0, 1.5, size=(3, 2, 4, 5))
    bn = torch.nn.BatchNorm2d(2, dtype=torch.float64)
    y_t = bn(torch.tensor(x_nchw)).detach().numpy()
    layer = keras.layers.BatchNormalization(epsilon=PYTORCH.eps, momentum=1 - PYTORCH.momentum, dtype="float64")
    y_k = np.asarray(layer(np.moveaxis(x_nchw, 1, -1), training=True))
    m = 3 * 4 * 5
    tol = 2 * _e(EPS64, m) * 5
    assert np.max(np.abs(np.moveaxis(y_k, -1, 1) - y_t)) <= tol
    assert np.max(np.abs(layer.moving_mean.numpy() - bn.running_mean.numpy())) <= tol


def test_fact_init_and_keras_weight_order():
    bn = torch.nn.BatchNorm2d(3)
    assert bn.weight.tolist() == [1.0] * 3 and bn.bias.tolist() == [0.0] * 3
    assert bn.running_mean.tolist() == [PYTORCH.init_mean] * 3 and bn.running_var.tolist() == [PYTORCH.init_var] * 3
    layer = keras.layers.BatchNormalization()
    layer.build((2, 3))
    assert [w.path.split("/")[-1] for w in layer.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    gamma, beta, mean, var = layer.get_weights()
    assert gamma.tolist() == [1.0] * 3 and beta.tolist() == [0.0] * 3
    assert mean.tolist() == [KERAS.init_mean] * 3 and var.tolist() == [KERAS.init_var] * 3


def test_fact_torch_train_eval_switch():
    bn = torch.nn.BatchNorm1d(3)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(5)) * 2 + 5
    y_train = bn.train()(x)
    y_eval = bn.eval()(x)
    assert int(bn.num_batches_tracked) == 1
    assert torch.max(torch.abs(y_train - y_eval)) > 1.0  # batch stats vs running stats: O(1) apart


@pytest.mark.parametrize("cls", [keras.layers.BatchNormalization, BatchNormalization], ids=["native", "scratch"])
def test_fact_keras_fit_trains_predict_and_evaluate_infer(cls):
    """fit() runs training=True (moving stats move); predict()/evaluate() run inference (they do not)."""
    rng = np.random.default_rng(6)
    x = rng.normal(4.0, 2.0, size=(16, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), cls()])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros_like(x), batch_size=16, epochs=1, verbose=0)
    bn = model.layers[-1]
    after_fit = bn.moving_mean.numpy().copy()
    w = 1 - KERAS.momentum
    # one step from 0: moving_mean = w * batch mean. float32 error of the mean: e (|mean| + std X) with
    # X <= sqrt(15) ~ 3.9; the sample means of N(4, 2^2) over 16 values are >= 2.5 (3 standard errors), so
    # relative to the mean this is at most e (2.5 + 2 * 3.9) / 2.5 ~ 4 e
    np.testing.assert_allclose(after_fit, w * x.mean(0), rtol=4 * _e(EPS32, 16))
    y_pred = model.predict(x, verbose=0)
    model.evaluate(x, np.zeros_like(x), verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), after_fit)
    gamma, beta, mean, var = bn.get_weights()
    expected = gamma * (x - mean) / np.sqrt(var + KERAS.eps) + beta
    scale = np.max(np.abs(gamma) * (np.abs(x) + np.abs(mean)) / np.sqrt(var + KERAS.eps) + np.abs(beta))
    assert np.max(np.abs(y_pred - expected)) <= BOUND_C * EPS32 * scale


@pytest.mark.parametrize("cls", [keras.layers.BatchNormalization, BatchNormalization], ids=["native", "scratch"])
def test_fact_keras_training_false_vs_trainable_false(cls):
    """training=False: inference for this call. trainable=False: inference even when training=True."""
    x = np.random.default_rng(7).normal(4.0, 2.0, size=(8, 3)).astype("float32")
    layer = cls()
    y_inf = np.asarray(layer(x, training=False))
    layer.trainable = False
    y_frozen = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(y_frozen, y_inf)
    assert layer.moving_mean.numpy().tolist() == [0.0] * 3
    layer.trainable = True
    y_train = np.asarray(layer(x, training=True))
    assert np.max(np.abs(y_train - y_inf)) > 1.0


def test_fact_batch_of_one_value_per_channel():
    """torch raises ValueError("Expected more than 1 value per channel ..."); Keras returns beta."""
    x = np.random.default_rng(8).normal(size=(1, 3)).astype("float32")
    for module in (torch.nn.BatchNorm1d(3), BatchNorm(3)):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            module.train()(torch.tensor(x))
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(beta_initializer=keras.initializers.Constant(-0.5))
        np.testing.assert_array_equal(np.asarray(layer(x, training=True)), np.full((1, 3), -0.5, np.float32))


def test_fact_low_precision_statistics_in_float32():
    """torch: fp16 in, fp16 out, fp32 running stats; Keras: computes in fp32 and casts to its compute dtype."""
    x = (np.random.default_rng(9).normal(3.0, 2.0, size=(32, 4))).astype(np.float16)
    bn = torch.nn.BatchNorm1d(4)
    assert bn(torch.tensor(x)).dtype == torch.float16 and bn.running_mean.dtype == torch.float32
    mixed = keras.layers.BatchNormalization(dtype="mixed_float16")
    assert mixed(x, training=True).dtype == tf.float16 and mixed.moving_mean.dtype == "float32"
    w = 1 - KERAS.momentum
    mean = x.astype(np.float64).mean(0)
    # float32 statistics: error C eps32 (1 + sqrt(m)) (|mean| + std max|x_hat|), max|x_hat| <= sqrt(m - 1),
    # far below what float16 statistics (eps 1e-3) would give
    tol = _e(EPS32, 32) * (3 + 2 * math.sqrt(31))
    assert np.max(np.abs(mixed.moving_mean.numpy() / w - mean)) <= tol
    assert np.max(np.abs(bn.running_mean.numpy() / PYTORCH.momentum - mean)) <= tol


# ----------------------------------------------------------------------------------------------------
# Conventions that must SHOW as differences
# ----------------------------------------------------------------------------------------------------


def test_difference_unbiased_vs_biased_running_variance_exact_first_step_ratio():
    rng = np.random.default_rng(10)
    for shape in ((5, 3), (4, 3, 6)):
        x = rng.normal(size=shape)
        m = math.prod(shape) // 3
        _, rv_t = _first_step("torch", x)
        _, rv_k = _first_step("keras", x)
        w_t, w_k = PYTORCH.momentum, 1 - KERAS.momentum
        ratio = ((rv_t - (1 - w_t)) / w_t) / ((rv_k - (1 - w_k)) / w_k)
        tol = _e(EPS64, m) * 100 * 4  # float64 rounding of both updates, amplified by 1/w_k = 100
        assert np.max(np.abs(ratio - m / (m - 1))) <= tol
        assert np.min(np.abs(ratio - 1)) > 1e6 * tol  # the difference is real


def test_difference_eps_1e5_vs_1e3_on_small_variance_channels():
    """Same data, same (gamma, beta): y_torch / y_keras = sqrt((var + 1e-3) / (var + 1e-5)) per channel.

    Channel variances 1e-4, 1e-2, 1: predicted ratios 3.3, 1.05, 1.0005. Both are float32 computations;
    each y is within C eps32 (1 + sqrt(m)) (r + X) of exact (bnref.testing.training_bounds), so the measured ratio
    matches the prediction within twice that relative error.
    """
    rng = np.random.default_rng(11)
    std = np.array([1e-2, 1e-1, 1.0])
    x = (rng.standard_normal((64, 3)) * std).astype(np.float32)
    y_t = torch.nn.BatchNorm1d(3)(torch.tensor(x)).detach().numpy().astype(np.float64)
    y_k = np.asarray(keras.layers.BatchNormalization()(x, training=True), np.float64)
    var = x.astype(np.float64).var(0)
    predicted = np.sqrt((var + KERAS.eps) / (var + PYTORCH.eps))
    big = np.abs(y_k) > 0.5  # ratio of entries away from 0
    measured = (y_t / y_k)[big.all(axis=1)]
    # r = |mean|/std <= 0.4 (zero-mean data: the sample mean is within 3 std/sqrt(64) of 0), X <= sqrt(63) ~ 8,
    # and only entries with |y| > 0.5 are compared, so each y's relative error is at most e (0.4 + 8) / 0.5
    rel = 2 * _e(EPS32, 64) * (0.4 + 8) / 0.5
    assert np.max(np.abs(measured / predicted - 1)) <= rel
    assert predicted[0] > 3 and abs(predicted[2] - 1) < 1e-3  # measurable for small variance only


def test_difference_momentum_none_vs_keras_momentum():
    """PyTorch's momentum=None (weight 1/k) makes the first batch replace the init; Keras cannot do it."""
    x = np.random.default_rng(12).normal(5.0, 1.0, size=(10, 2))
    rm_t, _ = _first_step("torch", x, momentum=None)
    rm_k, _ = _first_step("keras", x)
    np.testing.assert_allclose(rm_t, x.mean(0), rtol=_e(EPS64, 10))
    np.testing.assert_allclose(rm_k, (1 - KERAS.momentum) * x.mean(0), rtol=_e(EPS64, 10))
    with pytest.raises(ag.NotApplicable, match="cumulative average"):
        ag.framework_convention(Case((4, 2), convention="pytorch-cumulative"), "keras")


def test_cross_convention_differences_are_exactly_the_conventions():
    for case in (Case((64, 4), steps=3, seed=1), Case((8, 4, 3, 3), steps=2, seed=2)):
        table = ag.cross_convention(case)
        assert table.status is Status.RAN and len(table.rows) == 7
        for row in table.rows:
            assert row.explained, (case.label, row)
        real = {r.quantity: r.measured > 10 * r.bound for r in table.rows}
        assert real["y"] and real["dx"] and real["running_mean"] and real["running_var"] and real["y_inference"]


# ----------------------------------------------------------------------------------------------------
# The agreement matrix
# ----------------------------------------------------------------------------------------------------

LAYOUTS = [((3,), 1), ((3, 5), 1), ((3, 4, 4), 1), ((4, 4, 3), -1)]  # (N,C), (N,C,L), NCHW, NHWC
MATRIX = [
    Case((n, *rest), axis=axis, dtype=dtype, steps=k, seed=n + 10 * k)
    for dtype in ("float64", "float32")
    for rest, axis in LAYOUTS
    for n in (2, 3, 128)
    for k in (1, 5)
]
FAR_FROM_ZERO = [Case((n, *rest), axis=axis, steps=5, loc=1e3, seed=3) for rest, axis in LAYOUTS for n in (3, 128)]
HALF = [
    Case((n, *rest), axis=axis, dtype=d, steps=2, seed=4)
    for d in ("float16", "bfloat16")
    for rest, axis in LAYOUTS[::3]
    for n in (3, 128)
]


@pytest.mark.parametrize("case", MATRIX + FAR_FROM_ZERO + HALF, ids=lambda c: c.label)
def test_agreement_matrix(case):
    table = run_case(case)
    for row in table.rows:
        if case.dtype == "bfloat16" and row.implementation == "numpy":
            assert row.status is Status.NOT_APPLICABLE and row.message == "n/a: NumPy has no bfloat16"
            continue
        assert row.ok, (row.implementation, row.message)
        assert set(row.diffs) == set(ag.QUANTITIES)
        failing = {q: d for q, d in row.diffs.items() if not d.passed}
        assert not failing, f"{row.implementation}: {failing}\n{table.format_table('ratio')}"
    assert table.passed


def test_agreement_with_a_shared_convention_and_overrides():
    """convention='pytorch' with eps/momentum overrides: Keras is configured to follow (momentum 1 - w)."""
    case = Case((16, 3, 2, 2), convention="pytorch", eps=1e-4, momentum=0.3, steps=3)
    table = run_case(case)
    assert table.passed and all(r.ok for r in table.rows)
    conv = ag.framework_convention(case, "keras")
    assert conv.eps == 1e-4 and abs(conv.momentum - 0.7) < 1e-15 and conv.running_var == "biased"
    cumulative = run_case(Case((16, 3), convention="pytorch-cumulative", steps=4))
    assert cumulative.row("torch native").ok and cumulative.row("keras native").status is Status.NOT_APPLICABLE
    assert cumulative.passed


def test_bounds_catch_convention_slips():
    """The derived bounds are not vacuous: each classic slip fails them by a wide margin.

    (At |mean|/std = 1e3 the float32 bound on y is ~1e-4 relative, the size of the eps 1e-5 vs 1e-3 effect on
    unit-variance data: there the frameworks' own rounding hides an eps slip, so it is tested at std 0.1.)
    """

    def setup(case):
        data = ag.make_batches(case)
        truth = ag.reference_trace(case, PYTORCH, "float64", data)
        return data, truth, lambda trace, q: ag.compare_trace(case, PYTORCH, trace, data)[q].ratio

    case = Case((32, 3, 2, 2), steps=2, scale=0.1, seed=5)
    data, truth, worst = setup(case)
    assert worst(ag.reference_trace(case, PYTORCH, "float32", data), "y") <= 1  # the correct one passes
    biased = ag.reference_trace(case, PYTORCH.replace(running_var="biased"), "float32", data)
    assert worst(biased, "running_var") > 10  # forgot m/(m-1): relative 1/m = 8e-3 off
    keras_eps = ag.reference_trace(case, PYTORCH.replace(eps=KERAS.eps), "float32", data)
    assert worst(keras_eps, "y") > 10  # eps 1e-3 on var 1e-2: y off by ~5% relative

    # one-pass variance E[x^2] - E[x]^2 in float32 at |mean|/std = 1e3
    case = Case((32, 3, 2, 2), steps=2, loc=1e3, seed=5)
    data, truth, worst = setup(case)
    one_pass = {q: list(v) for q, v in truth.items()}
    r = np.full(3, PYTORCH.init_var)
    for k, x in enumerate(data.xs):
        mean, var = bnref.batch_mean_var(x.astype(np.float32), axis=1, method="one-pass")
        m = case.m
        r = (1 - PYTORCH.momentum) * r + PYTORCH.momentum * var.astype(np.float64) * m / (m - 1)
        one_pass["running_var"][k] = r.copy()
    assert worst(one_pass, "running_var") > 10


def test_table_renders_and_missing_framework_rows(monkeypatch):
    """Rendering, and the rows of a framework that cannot be imported (simulated: ``import keras`` fails)."""
    table = run_case(Case((4, 3), steps=1))
    text = table.format_table("verdict")
    assert "torch native" in text and "keras scratch" in text and "FAIL" not in text
    assert table.to_markdown().count("\n") == len(table.rows) + 1
    assert "<table>" in table._repr_html_()
    assert {r["implementation"] for r in table.to_records()} == {n for n, _ in ag.IMPLEMENTATIONS}

    monkeypatch.setitem(sys.modules, "keras", None)  # the next "import keras" raises ImportError
    table = run_case(Case((4, 3), steps=1))
    assert table.row("keras native").status is Status.NOT_INSTALLED
    assert table.row("keras native").message == "not installed (TensorFlow/Keras)"
    assert "not installed" in table.format_table()
    assert "not installed" in ag.summary_table([table])
    assert table.passed
    assert ag.cross_convention(Case((4, 3))).status is Status.NOT_INSTALLED
    with pytest.raises(ValueError, match="momentum override needs a convention"):
        Case((4, 3), momentum=0.5)
    with pytest.raises(ValueError, match="value per channel"):
        Case((1, 3))


# ----------------------------------------------------------------------------------------------------
# Drop-in: swap the from-scratch layer into a small model and train 20 steps
# ----------------------------------------------------------------------------------------------------
#
# Bound. At every step each implementation's BN forward and backward is within a relative
# delta = C eps (1 + sqrt(m)) of exact (bnref.check.agreement, O(1) data, m = batch size 32), which perturbs that
# step's parameters by a relative amount of at most delta. A relative perturbation of the parameters grows by a
# factor A over the remaining steps; A is measured, not assumed: train the float64 native model from an initial
# point perturbed by a relative 1e-8 and divide the final max-norm relative change by 1e-8. Over T steps the
# perturbations add up, and two implementations each drift that far from the exact trajectory:
#     max|theta_scratch - theta_native| / max|theta| <= 2 * T * delta * max(A, 1).
# The linear layer before BN has no bias: BN cancels a bias, so its gradient is exactly zero in exact arithmetic
# and pure rounding noise in floating point, which Adam (normalising by sqrt(v)) turns into full-size steps.

STEPS, BATCH = 20, 32


def _torch_mlp(bn_cls, dtype, perturb: float = 0.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16, bias=False), bn_cls(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).to(dtype)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + perturb)
    return model


def _torch_train(model, optimizer: str, dtype) -> np.ndarray:
    gen = torch.Generator().manual_seed(1)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-2)
    )
    model.train()
    for _ in range(STEPS):
        x = torch.randn(BATCH, 6, generator=gen, dtype=torch.float64).to(dtype)
        target = torch.randint(0, 3, (BATCH,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    return np.concatenate([v.detach().double().numpy().ravel() for v in state.values() if v.is_floating_point()])


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_drop_in_training_parity(optimizer, dtype):
    exact = _torch_train(_torch_mlp(torch.nn.BatchNorm1d, torch.float64), optimizer, torch.float64)
    perturbed = _torch_train(_torch_mlp(torch.nn.BatchNorm1d, torch.float64, 1e-8), optimizer, torch.float64)
    amplification = _max_rel(perturbed, exact) / 1e-8
    native = _torch_train(_torch_mlp(torch.nn.BatchNorm1d, dtype), optimizer, dtype)
    scratch = _torch_train(_torch_mlp(BatchNorm, dtype), optimizer, dtype)
    eps = torch.finfo(dtype).eps
    bound = 2 * STEPS * _e(eps, BATCH) * max(amplification, 1.0)
    assert _max_rel(scratch, native) <= bound


def _keras_mlp(bn_cls, dtype: str, weights=None):
    model = keras.Sequential(
        [
            keras.Input((6,), dtype=dtype),
            keras.layers.Dense(16, use_bias=False, dtype=dtype),
            bn_cls(dtype=dtype),
            keras.layers.ReLU(dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )
    if weights is not None:
        model.set_weights(weights)
    return model


def _keras_train(model, optimizer: str, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    opt = keras.optimizers.SGD(0.1, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for _ in range(STEPS):
        x = rng.standard_normal((BATCH, 6)).astype(dtype)
        target = rng.integers(0, 3, BATCH)
        with tf.GradientTape() as tape:
            loss = loss_fn(target, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=False))
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in model.get_weights()])


@pytest.mark.parametrize("optimizer,dtype", [("sgd", "float64"), ("adam", "float32")])
def test_keras_drop_in_training_parity(optimizer, dtype):
    keras.utils.set_random_seed(0)
    init = _keras_mlp(keras.layers.BatchNormalization, "float64").get_weights()
    exact = _keras_train(_keras_mlp(keras.layers.BatchNormalization, "float64", init), optimizer, "float64")
    perturbed_init = [w * (1 + 1e-8) for w in init]
    perturbed = _keras_train(
        _keras_mlp(keras.layers.BatchNormalization, "float64", perturbed_init), optimizer, "float64"
    )
    amplification = _max_rel(perturbed, exact) / 1e-8
    init_d = [w.astype(dtype) for w in init]
    native = _keras_train(_keras_mlp(keras.layers.BatchNormalization, dtype, init_d), optimizer, dtype)
    scratch = _keras_train(_keras_mlp(BatchNormalization, dtype, init_d), optimizer, dtype)
    bound = 2 * STEPS * _e(float(np.finfo(dtype).eps), BATCH) * max(amplification, 1.0)
    assert _max_rel(scratch, native) <= bound


def test_keras_drop_in_fit_graph_mode():
    """model.fit (compiled tf.function) with the scratch layer follows the native one."""
    keras.utils.set_random_seed(1)
    init = _keras_mlp(keras.layers.BatchNormalization, "float32").get_weights()
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((64, 6)).astype("float32"), rng.integers(0, 3, 64)
    out = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        model = _keras_mlp(cls, "float32", init)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        out.append(np.concatenate([w.ravel() for w in model.get_weights()]).astype(np.float64))
    # Bound as above with T = 4 steps; the amplification A is measured here with a relative perturbation
    # of 1e-4 (float32 cannot represent 1e-8), small enough for the linear regime of 4 SGD steps.
    perturbed = _keras_mlp(keras.layers.BatchNormalization, "float32", [w * (1 + 1e-4) for w in init])
    perturbed.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    perturbed.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    moved = np.concatenate([w.ravel() for w in perturbed.get_weights()]).astype(np.float64)
    amplification = _max_rel(moved, out[0]) / 1e-4
    assert _max_rel(out[1], out[0]) <= 2 * 4 * _e(EPS32, BATCH) * max(amplification, 1.0)


# ----------------------------------------------------------------------------------------------------
# Property tests: random shapes and scales, |mean|/std up to 1e3
# ----------------------------------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def cases(draw, dtypes=("float32", "float64")):
    ndim = draw(st.integers(2, 4))
    n = draw(st.integers(2, 12))
    c = draw(st.integers(1, 4))
    spatial = [draw(st.integers(1, 4)) for _ in range(ndim - 2)]
    channels_last = ndim > 2 and draw(st.booleans())
    shape = (n, *spatial, c) if channels_last else (n, c, *spatial)
    scale = 10.0 ** draw(st.floats(-2, 2))
    mean_over_std = draw(st.sampled_from([0.0, 1.0, 10.0, 1e2, 1e3]))
    sign = draw(st.sampled_from([-1.0, 1.0]))
    return Case(
        shape,
        axis=-1 if channels_last else 1,
        dtype=draw(st.sampled_from(dtypes)),
        steps=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
        loc=sign * mean_over_std * scale,
        scale=scale,
    )


@PROPERTY
@given(cases())
def test_property_torch_and_numpy_within_bounds(case):
    table = run_case(case, frameworks=("numpy", "torch"))
    assert all(r.ok for r in table.rows), table.format_table()
    assert table.passed, table.format_table("ratio")


@settings(max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(dtypes=("float32",)))
def test_property_keras_within_bounds(case):
    table = run_case(case, frameworks=("keras",))
    assert all(r.ok for r in table.rows), table.format_table()
    assert table.passed, table.format_table("ratio")


# ----------------------------------------------------------------------------------------------------
# The GPU-ready script, run here on the CPU
# ----------------------------------------------------------------------------------------------------


def test_agreement_device_script_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("agreement_device", ROOT / "benchmarks" / "agreement_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "agreement-cpu.json"
    assert module.main(["--device", "cpu", "--out", str(out), "--quick"]) == 0
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["torch"] == torch.__version__ and record["all_passed"]
    assert len(record["cases"]) == len(module.matrix(quick=True))
    impls = {row["implementation"] for c in record["cases"] for row in c["rows"]}
    assert impls == {"numpy", "torch scratch", "torch native"}  # no Keras rows: TensorFlow not needed
    assert "every cell within its derived bound: True" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# Keras on every backend: the agreement matrix and the |mean|/std sweep, one process per backend
# (book, sections sec-fw-agreement and sec-fw-precision)
# ----------------------------------------------------------------------------------------------------
#
# One batch runs everything the tests ask of the backends (three imports of Keras, in parallel); JAX compiles
# one training step per (shape, dtype), so the cases reuse few shapes: each layout in float32 with 3 and 128
# samples (near zero and at |mean|/std = 1e3), in float64 with 128, and the half types on two layouts.
BACKEND_CASES = (
    [Case((n, *rest), axis=axis, steps=5, seed=n + 50) for rest, axis in LAYOUTS for n in (3, 128)]
    + [Case((n, *rest), axis=axis, steps=5, loc=1e3, seed=3) for rest, axis in LAYOUTS for n in (3, 128)]
    + [Case((128, *rest), axis=axis, dtype="float64", steps=2, seed=7) for rest, axis in LAYOUTS]
    + [
        Case((128, *rest), axis=axis, dtype=d, steps=2, seed=4)
        for d in ("float16", "bfloat16")
        for rest, axis in LAYOUTS[::3]
    ]
)


@pytest.fixture(scope="module")
def backend_runs():
    jobs = {"agreement": ag.keras_rows_job(BACKEND_CASES), "sweep": precision.keras_sweep_job()}
    return ag.on_keras_backends(jobs, backends=(*ag.KERAS_BACKENDS, "no-such-backend"))


def test_keras_backends_ran_and_name_their_versions(backend_runs):
    jax = pytest.importorskip("jax")
    versions = {
        "tensorflow": ("TensorFlow", tf.__version__),
        "jax": ("JAX", jax.__version__),
        "torch": ("PyTorch", torch.__version__),
    }
    for backend, (name, version) in versions.items():
        run = backend_runs[backend]
        assert run.ok, run.error
        assert run.keras == keras.__version__ and run.backend_version == version
        assert run.label == f"Keras {keras.__version__} on {name} {version}"
    broken = backend_runs["no-such-backend"]
    assert not broken.ok and "no-such-backend" in broken.error
    table = ag.with_keras_backend_rows([ag.AgreementTable(Case((4, 3)), [])], {"no-such-backend": broken}, "none")
    assert table[0].row("keras-no-such-backend").status is Status.NOT_INSTALLED
    with pytest.raises(ValueError, match="not a function of"):
        ag.on_keras_backends({"x": ("os:system", {})})


def _expected_failures(backend: str, case: Case) -> set[str]:
    """What Keras 3.15.1 gets wrong, as measured; every other quantity must be within its bound.

    * float64 on JAX and torch: ``keras.backend.result_type`` maps float64 to float32 on every backend but
      TensorFlow (``keras/src/backend/common/dtypes.py``, ``BIT64_TO_BIT32_DTYPE``), and the layer computes in
      ``result_type(inputs.dtype, "float32")``: a float64 layer computes in float32 and fails every float64
      bound (checked below to be within the float32 one).
    * |mean|/std = 1e3 in float32 on torch: the one-pass variance of ``keras/src/backend/torch/nn.py``
      (``moments``) loses the variance, and with it the output and the running variance.
    """
    if case.dtype == "float64" and backend in ("jax", "torch"):
        return set(ag.QUANTITIES)
    if case.loc and backend == "torch":
        return {"y", "running_var"}
    return set()


@pytest.mark.parametrize("backend", ag.KERAS_BACKENDS)
def test_agreement_matrix_on_every_keras_backend(backend_runs, backend):
    tables = [ag.AgreementTable(c, []) for c in BACKEND_CASES]
    tables = ag.with_keras_backend_rows(tables, {backend: backend_runs[backend]})
    for table in tables:
        row = table.row(f"keras-{backend}")
        assert row.ok and set(row.diffs) == set(ag.QUANTITIES), (table.case.label, row.message)
        assert row.version == backend_runs[backend].label
        expected = _expected_failures(backend, table.case)
        failed = {q for q, d in row.diffs.items() if not d.passed}
        assert expected <= failed, (table.case.label, failed)
        # the gradients and the inference output inherit a wrong variance, to a degree that depends on the data
        allowed = expected | {"dx", "dgamma", "y_inference"} if expected else set()
        assert failed <= allowed, (table.case.label, row.diffs)
        if table.case.dtype == "float64" and expected:
            # computes in float32: every quantity within the float32 bound, i.e. eps32/eps64 times the float64 one
            assert all(1e3 < d.ratio <= EPS32 / EPS64 for d in row.diffs.values()), (table.case.label, row.diffs)
        if table.case.loc and expected:
            # one-pass variance at |mean|/std = 1e3 (m >= 3): the running variance is off by far more than its bound
            assert row.diffs["running_var"].ratio > 10, (table.case.label, row.diffs["running_var"])


def test_summary_table_has_a_column_per_keras_backend(backend_runs):
    cases = BACKEND_CASES[:1]
    tables = ag.with_keras_backend_rows(
        [run_case(c, frameworks=("numpy",)) for c in cases], {b: backend_runs[b] for b in ag.KERAS_BACKENDS}
    )
    text = ag.summary_table(tables)
    assert all(f"keras-{b}" in text.splitlines()[0] for b in ag.KERAS_BACKENDS)
    assert "FAIL" not in text and all(r.passed for r in tables[0].rows)
    records = tables[0].to_records()
    assert {r["version"] for r in records if r["implementation"].startswith("keras-")} == {
        backend_runs[b].label for b in ag.KERAS_BACKENDS
    }


@pytest.mark.parametrize("backend,kind", [("tensorflow", "two-pass"), ("jax", "two-pass"), ("torch", "one-pass")])
def test_precision_sweep_of_keras_on_every_backend(backend_runs, backend, kind):
    """Keras 3.15.1: tf.nn.moments and jnp.var are two-pass; the torch backend's moments is one-pass."""
    results = precision.results_from_backend_runs({backend: backend_runs[backend]})
    result = results[f"keras-{backend}"]
    assert result.version == backend_runs[backend].label
    assert precision.verdict(result).kind == kind
