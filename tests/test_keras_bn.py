"""bnref.layers.keras_bn: the custom-gradient function (TF gradient checker) and the drop-in Keras layer.

TensorFlow is imported once for the module (importorskip); cases are small to keep its eager overhead low.

Tolerances:
* tf.test.compute_gradient with delta h = 1e-5 (its default, 1e-3, leaves a truncation error ~h^2 ~ 1e-6):
  truncation ~h^2 |y'''| ~ 1e-10, rounding ~eps64 |y| / h ~ 2.2e-16 * 3 / 1e-5 ~ 7e-11, so the max-norm
  relative error of the Jacobians is below 1e-8 (GUIDE section 4).
* float64 agreement of two implementations: C * eps64 * (1 + sqrt(m)) times the absolute scale of the
  quantity (bnref.check.agreement's bound, C = 4), as in tests/test_torch_bn.py.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import bnref  # noqa: E402
from bnref import KERAS  # noqa: E402
from bnref.layers.keras_bn import (  # noqa: E402
    BatchNormalization,
    batch_norm_inference,
    batch_norm_train,
    batch_norm_train_with_stats,
)
from bnref.testing import BOUND_C  # noqa: E402

EPS64 = float(np.finfo(np.float64).eps)
LAYERS = [keras.layers.BatchNormalization, BatchNormalization]
LAYER_IDS = ["native", "scratch"]


def _f64_tol(m: int, scale: float = 1.0) -> float:
    return BOUND_C * EPS64 * (1 + math.sqrt(m)) * scale


# ----------------------------------------------------------------------------------------------------
# The custom-gradient function
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((5, 3), -1), ((4, 3, 2), 1), ((2, 2, 2, 3), -1), ((2, 3, 2, 2), 1)])
def test_tf_gradient_checker_float64(shape, axis):
    rng = np.random.default_rng(0)
    c = shape[axis]
    x = tf.constant(rng.normal(size=shape))
    g, b = tf.constant(rng.uniform(0.5, 1.5, c)), tf.constant(rng.normal(size=c))
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, g, b: batch_norm_train(x, g, b, axis, KERAS.eps), [x, g, b], delta=1e-5
    )
    for t, n in zip(theoretical, numerical, strict=True):
        assert bnref.relative_error(t, n) < 1e-8


def test_custom_gradient_equals_the_numpy_compact_formula():
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(6, 2, 2, 3)), rng.normal(size=(6, 2, 2, 3))
    g, b = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    xt, gt, bt = tf.constant(x), tf.Variable(g), tf.Variable(b)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y, mean, var = batch_norm_train_with_stats(xt, gt, bt, -1, KERAS.eps)
    dx, dg, db = tape.gradient(y, [xt, gt, bt], output_gradients=tf.constant(dy))
    y_ref, cache = bnref.batch_norm_forward(x, g, b, KERAS.eps, axis=-1)
    dx_ref, dg_ref, db_ref = bnref.batch_norm_backward(dy, cache)
    m = 24
    for a, ref, scale in (
        (y, y_ref, 4),
        (dx, dx_ref, 4),
        (dg, dg_ref, 4 * m),
        (db, db_ref, 4 * m),
        (mean, cache.mean, 4),
        (var, cache.var, 4),
    ):
        assert np.max(np.abs(np.asarray(a) - ref)) <= _f64_tol(m, scale)


def test_statistics_are_outside_the_gradient():
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 3)))
    g, b = tf.Variable(tf.ones(3, tf.float64)), tf.Variable(tf.zeros(3, tf.float64))
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, mean, var = batch_norm_train_with_stats(x, g, b)
        loss = tf.reduce_sum(mean) + tf.reduce_sum(var)
    assert all(gr is None for gr in tape.gradient(loss, [x, g, b]))


def test_function_validates():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        batch_norm_train(tf.ones([3]), tf.ones([3]), tf.zeros([3]))
    with pytest.raises(ValueError, match="out of range"):
        batch_norm_train(tf.ones([2, 3]), tf.ones([3]), tf.zeros([3]), axis=2)
    with pytest.raises(ValueError, match="epsilon"):
        batch_norm_train(tf.ones([2, 3]), tf.ones([3]), tf.zeros([3]), epsilon=0.0)
    with pytest.raises(ValueError, match="one dimension less"):
        batch_norm_train(tf.ones([2, 3]), tf.ones([3]), tf.zeros([3]), mask=tf.ones([2, 3]))


def test_inference_function_is_the_affine_map():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3))
    g, b, rm, rv = rng.uniform(0.5, 1.5, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)
    y = batch_norm_inference(tf.constant(x), *(tf.constant(a) for a in (g, b, rm, rv)), axis=-1, epsilon=KERAS.eps)
    ref = bnref.batch_norm_inference(x, g, b, rm, rv, KERAS.eps, axis=-1)
    # a few float64 roundings on terms of size |gamma| (|x| + |mean|) / sqrt(var + eps) + |beta|
    # <= 1.5 * 5 * 1.5 + 3 < 15
    assert np.max(np.abs(np.asarray(y) - ref)) <= BOUND_C * EPS64 * 15


# ----------------------------------------------------------------------------------------------------
# The layer as a drop-in
# ----------------------------------------------------------------------------------------------------


def test_defaults_come_from_the_keras_convention_and_equal_native():
    ours, native = BatchNormalization(), keras.layers.BatchNormalization()
    for attr, value in (("axis", KERAS.axis), ("momentum", KERAS.momentum), ("epsilon", KERAS.eps)):
        assert getattr(ours, attr) == getattr(native, attr) == value, attr
    assert ours.center and ours.scale
    ours.build((2, 3)), native.build((2, 3))
    for a, b in zip(ours.get_weights(), native.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (
        ours.get_weights()[2].tolist() == [KERAS.init_mean] * 3
        and ours.get_weights()[3].tolist() == [KERAS.init_var] * 3
    )


@pytest.mark.parametrize("axis,shape", [(-1, (4, 3)), (-1, (2, 2, 2, 3)), (1, (2, 3, 2, 2))])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
def test_same_weights_same_order_and_transfer_both_ways(axis, shape, center, scale):
    ours = BatchNormalization(axis=axis, center=center, scale=scale)
    native = keras.layers.BatchNormalization(axis=axis, center=center, scale=scale)
    ours.build(shape), native.build(shape)
    names = lambda layer: [w.path.split("/")[-1] for w in layer.weights]  # noqa: E731
    assert names(ours) == names(native)
    assert [w.trainable for w in ours.weights] == [w.trainable for w in native.weights]
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in native.weights]
    rng = np.random.default_rng(4)
    values = [rng.uniform(0.5, 1.5, size=w.shape).astype("float32") for w in native.weights]
    native.set_weights(values)
    ours.set_weights(native.get_weights())
    x = rng.normal(size=shape).astype("float32")
    np.testing.assert_array_equal(ours.get_weights()[-1], values[-1])
    # identical weights, inference: both compute gamma * (x - mean) / sqrt(var + eps) + beta in float32 with a
    # few roundings each, so they differ by at most C * eps32 * (|gamma| (|x| + |mean|) / sqrt(var + eps) + |beta|)
    g = values[0] if scale else 1.0
    b = values[int(scale)] if center else 0.0
    mean, var = values[-2], values[-1]
    bshape = [1] * len(shape)
    bshape[axis] = -1
    r = lambda v: np.reshape(v, bshape)  # noqa: E731
    tol = (
        BOUND_C
        * 1.2e-7
        * np.max(np.abs(r(g)) * (np.abs(x) + np.abs(r(mean))) / np.sqrt(r(var) + KERAS.eps) + np.abs(r(b)))
    )
    assert np.max(np.abs(np.asarray(ours(x)) - np.asarray(native(x)))) <= tol
    ours.set_weights([v * 2 for v in values])
    native.set_weights(ours.get_weights())
    for a, b in zip(native.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_training_true_uses_batch_stats_and_keras_update_rule(cls):
    """moving = momentum * moving + (1 - momentum) * batch, with the *biased* batch variance."""
    rng = np.random.default_rng(5)
    layer = cls(momentum=0.8, dtype="float64")
    x = rng.normal(2.0, 3.0, size=(10, 4))
    y = np.asarray(layer(x, training=True))
    y_ref, cache = bnref.batch_norm_forward(x, np.ones(4), np.zeros(4), KERAS.eps, axis=-1)
    m = 10
    assert np.max(np.abs(y - y_ref)) <= _f64_tol(m, 4)
    w = 1 - 0.8
    assert np.max(np.abs(layer.moving_mean.numpy() - w * cache.mean)) <= _f64_tol(m, 8)
    assert np.max(np.abs(layer.moving_variance.numpy() - ((1 - w) + w * cache.var))) <= _f64_tol(m, 20)
    unbiased = (1 - w) + w * cache.unbiased_var
    assert np.min(np.abs(layer.moving_variance.numpy() - unbiased)) > 1e3 * _f64_tol(m, 20)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_bare_call_and_training_false_infer_without_update(cls):
    layer = cls()
    x = np.random.default_rng(6).normal(5.0, 2.0, size=(8, 3)).astype("float32")
    for y in (layer(x), layer(x, training=False)):
        # initial moving stats (0, 1): y = x / sqrt(1 + eps), two float32 roundings
        np.testing.assert_allclose(np.asarray(y), x / np.sqrt(1 + KERAS.eps), rtol=BOUND_C * 1.2e-7)
    assert layer.moving_mean.numpy().tolist() == [0.0] * 3


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_trainable_false_forces_inference_even_with_training_true(cls):
    layer = cls()
    x = np.random.default_rng(7).normal(5.0, 2.0, size=(8, 3)).astype("float32")
    layer.build(x.shape)
    layer.trainable = False
    y = np.asarray(layer(x, training=True))
    np.testing.assert_allclose(y, x / np.sqrt(1 + KERAS.eps), rtol=BOUND_C * 1.2e-7)
    assert layer.moving_mean.numpy().tolist() == [0.0] * 3
    layer.trainable = True
    y = np.asarray(layer(x, training=True))
    # batch-normalised: mean 0 up to the y bound C eps32 (1 + sqrt(m)) (r + X) of bnref.check.agreement, with
    # r = |mean|/std ~ 5/2 and X = max|x_hat| <= sqrt(m - 1)
    m = 8
    tol = BOUND_C * 1.2e-7 * (1 + math.sqrt(m)) * (2.5 + math.sqrt(m - 1))
    assert np.max(np.abs(y.mean(axis=0))) <= tol and layer.moving_mean.numpy()[0] != 0.0


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_one_value_per_channel_in_training_returns_beta(cls):
    layer = cls(beta_initializer=keras.initializers.Constant(0.25))
    x = np.random.default_rng(8).normal(size=(1, 3)).astype("float32")
    y = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(y, np.full((1, 3), 0.25, np.float32))
    # the moving variance is pulled towards the batch variance 0: momentum * 1 + (1 - momentum) * 0, with
    # momentum rounded to float32 (relative error <= eps32 / 2)
    np.testing.assert_allclose(layer.moving_variance.numpy(), KERAS.momentum, rtol=1.2e-7)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("in_dtype", ["float16", "bfloat16"])
def test_half_precision_inputs(cls, in_dtype):
    """Default policy: the input is autocast to float32 and the output is float32; mixed_float16: float16."""
    x = np.random.default_rng(9).normal(3.0, 2.0, size=(16, 4)).astype("float32")
    xh = tf.cast(tf.constant(x), in_dtype)
    plain = cls()
    assert plain(xh, training=True).dtype == tf.float32
    mixed = cls(dtype="mixed_float16")
    y = mixed(xh, training=True)
    assert y.dtype == tf.float16
    assert all(w.dtype == "float32" for w in mixed.weights)
    # statistics in float32: the moving mean is (1 - momentum) * mean of the rounded input, to float32 precision
    mean = np.asarray(tf.cast(xh, tf.float64)).mean(axis=0)
    w = 1 - KERAS.momentum
    # float32 mean of 16 values: error C eps32 (1 + sqrt(m)) (|mean| + std max|x_hat|), max|x_hat| <= sqrt(m - 1)
    tol = BOUND_C * 1.2e-7 * (1 + math.sqrt(16)) * (3 + 2 * math.sqrt(15))
    assert np.max(np.abs(mixed.moving_mean.numpy() - w * mean)) <= w * tol


def test_graph_mode_matches_eager_and_config_round_trips():
    layer = BatchNormalization(axis=1, momentum=0.9, epsilon=1e-4)
    x = tf.constant(np.random.default_rng(10).normal(size=(4, 3, 2, 2)).astype("float32"))
    eager_y = layer(x, training=True)
    eager_mean = layer.moving_mean.numpy().copy()
    clone = BatchNormalization.from_config(layer.get_config())
    assert (clone.axis, clone.momentum, clone.epsilon) == (1, 0.9, 1e-4)
    clone.build(x.shape)

    @tf.function
    def step(inp):
        with tf.GradientTape() as tape:
            tape.watch(inp)
            y = clone(inp, training=True)
        return y, tape.gradient(y, [inp, clone.gamma])

    y, grads = step(x)
    # both run the same float32 ops; graph-mode kernels may fuse differently: C eps32 (1 + sqrt(m)) * O(3)
    tol = BOUND_C * 1.2e-7 * (1 + math.sqrt(16)) * 3
    assert np.max(np.abs(np.asarray(y) - np.asarray(eager_y))) <= tol
    assert np.max(np.abs(clone.moving_mean.numpy() - eager_mean)) <= tol
    assert all(g is not None for g in grads)


def test_layer_validates():
    with pytest.raises(ValueError, match="epsilon"):
        BatchNormalization(epsilon=-1.0)
    with pytest.raises(ValueError, match="cumulative"):
        BatchNormalization(momentum=None)
    with pytest.raises(ValueError, match="out of range"):
        BatchNormalization(axis=3).build((2, 3))
    with pytest.raises(ValueError, match="must be known"):
        BatchNormalization().build((2, None))


# ----------------------------------------------------------------------------------------------------
# Masks, Batch Renorm, every constructor argument, configs (issue 14)
# ----------------------------------------------------------------------------------------------------


def _padded(mask_value: float) -> np.ndarray:
    """Ten sequences of two real steps ([1, 5], [2, 5]) padded by two steps of ``mask_value``."""
    seq = [[1, 5], [2, 5], [mask_value, mask_value], [mask_value, mask_value]]
    return np.array([seq] * 10, dtype="float32")


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("mask_value", [0.0, 1.0])
def test_masked_positions_stay_out_of_the_statistics(cls, mask_value):
    """Statistics over the unmasked steps only: mean [1.5, 5], variance [0.25, 0] (Keras' own example)."""
    x = _padded(mask_value)
    mask = np.asarray(keras.layers.Masking(mask_value=mask_value).compute_mask(x))
    assert mask.sum() == 20  # the two padded steps of every sequence are masked
    layer = cls(momentum=0.0)
    y = np.asarray(layer(x, training=True, mask=mask))
    # float32 means of 20 values of size <= 5: C eps32 (1 + sqrt(20)) * 5 (bnref.check.agreement's bound)
    tol = BOUND_C * 1.2e-7 * (1 + math.sqrt(20)) * 5
    np.testing.assert_allclose(layer.moving_mean.numpy(), [1.5, 5.0], rtol=0, atol=tol)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [0.25, 0.0], rtol=0, atol=tol * 5)
    # every position is normalised with the masked statistics: the first channel's real steps give -1, +1
    # (up to epsilon: 0.5 / sqrt(0.25 + 1e-3))
    expected = 0.5 / math.sqrt(0.25 + KERAS.eps)
    np.testing.assert_allclose(y[:, :2, 0], [[-expected, expected]] * 10, rtol=BOUND_C * 1.2e-7 * 10)


def test_masked_values_do_not_change_the_statistics_and_gradient_is_derived():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4, 5, 3))
    mask = rng.uniform(size=(4, 5)) < 0.6
    g, b = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    _, mean, var = batch_norm_train_with_stats(tf.constant(x), tf.constant(g), tf.constant(b), mask=mask)
    x2 = np.where(mask[..., None], x, 1e3)  # change only the masked positions
    _, mean2, var2 = batch_norm_train_with_stats(tf.constant(x2), tf.constant(g), tf.constant(b), mask=mask)
    kept = x[mask]  # (n, 3): the unmasked rows
    n = kept.shape[0]
    for a, a2, ref in ((mean, mean2, kept.mean(0)), (var, var2, kept.var(0))):
        assert np.max(np.abs(np.asarray(a) - ref)) <= _f64_tol(n, 16)
        assert np.max(np.abs(np.asarray(a2) - ref)) <= _f64_tol(n, 16)
    # the masked backward dx = gamma inv_std (dy - w/n (dbeta + x_hat dgamma)) against central differences
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, g, b: batch_norm_train(x, g, b, mask=mask),
        [tf.constant(x), tf.constant(g), tf.constant(b)],
        delta=1e-5,
    )
    for t, num in zip(theoretical, numerical, strict=True):
        assert bnref.relative_error(t, num) < 1e-8  # module docstring: h = 1e-5 in float64


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_fully_masked_batch_gives_zero_statistics(cls):
    layer = cls(center=False, scale=False, momentum=0.5)
    y = np.asarray(layer(np.zeros((4, 5), "float32"), training=True, mask=np.zeros(4, "float32")))
    np.testing.assert_array_equal(y, np.zeros((4, 5), np.float32))
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(5, np.float32))
    np.testing.assert_array_equal(layer.moving_variance.numpy(), np.full(5, 0.5, np.float32))


# Clip bounds exact in binary: Keras 3.15 (TensorFlow backend) rounds python-float bounds through float32
# even for a float64 layer (rmin = 0.8 moved its float64 output by 4e-9), bnref does not.
@pytest.mark.parametrize("clipping", [None, {"rmax": 1.5, "rmin": 0.75, "dmax": 0.25}])
def test_renorm_matches_native_over_three_steps(clipping):
    """Same initial weights: outputs, gradients and all seven weights agree with Keras' renorm."""
    rng = np.random.default_rng(12)
    kwargs = dict(renorm=True, renorm_clipping=clipping, renorm_momentum=0.8, momentum=0.9, dtype="float64")
    ours, native = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    ours.build((6, 3)), native.build((6, 3))
    assert [w.path.split("/")[-1] for w in ours.weights] == [w.path.split("/")[-1] for w in native.weights]
    start = [rng.uniform(0.5, 1.5, 3) for _ in native.weights]
    native.set_weights(start), ours.set_weights(start)
    for _ in range(3):
        x = tf.constant(rng.normal(2.0, 3.0, size=(6, 3)))
        dy = tf.constant(rng.normal(size=(6, 3)))
        grads = []
        for layer in (ours, native):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
            grads.append([y, *tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=dy)])
        for a, b in zip(*grads, strict=True):
            # float64, m = 6, values O(|mean|/std + X) * r <= 10: C eps64 (1 + sqrt(m)) * 10 * m
            assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= _f64_tol(6, 60)
    for a, b in zip(ours.get_weights(), native.get_weights(), strict=True):
        assert np.max(np.abs(a - b)) <= _f64_tol(6, 60)
    assert not np.allclose(ours.renorm_mean.numpy(), start[5])  # the renorm statistics did move


def test_renorm_clipping_is_validated_like_native():
    for bad, message in (
        ({"random_key": 1.0}, "invalid keys"),
        ({"rmax": 0.0, "rmin": 1.0}, "rmax should be"),
        ({"dmax": -1.0}, "dmax should be non-negative"),
    ):
        for cls in LAYERS:
            with pytest.raises(ValueError, match=message):
                cls(renorm=True, renorm_clipping=bad)


def _all_arguments() -> dict:
    return dict(
        axis=1,
        momentum=0.9,
        epsilon=1e-4,
        center=True,
        scale=True,
        beta_initializer="random_normal",
        gamma_initializer=keras.initializers.Constant(2.0),
        moving_mean_initializer="ones",
        moving_variance_initializer="zeros",
        beta_regularizer="l2",
        gamma_regularizer=keras.regularizers.L1(0.1),
        beta_constraint="non_neg",
        gamma_constraint=keras.constraints.MaxNorm(2.0),
        renorm=True,
        renorm_clipping={"rmax": 3.0},
        renorm_momentum=0.95,
        synchronized=False,
        name="bn",
    )


def test_config_round_trips_between_native_and_bnref():
    native = keras.layers.BatchNormalization(**_all_arguments())
    ours = BatchNormalization(**_all_arguments())
    assert ours.get_config() == native.get_config()
    assert BatchNormalization.from_config(native.get_config()).get_config() == native.get_config()
    assert keras.layers.BatchNormalization.from_config(ours.get_config()).get_config() == ours.get_config()
    defaults = keras.layers.BatchNormalization().get_config()
    assert BatchNormalization.from_config(defaults).get_config() == {**defaults}


def test_regularizers_and_constraints_act_like_native():
    x = np.random.default_rng(13).normal(size=(4, 3, 2)).astype("float32")
    layers = [cls(**_all_arguments()) for cls in LAYERS]
    for layer in layers:
        layer.build(x.shape)
        layer.set_weights(layers[0].get_weights())
        layer(x, training=True)
    losses = [[float(v) for v in layer.losses] for layer in layers]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    assert [type(w.constraint) for w in layers[1].trainable_weights] == [
        keras.constraints.MaxNorm,
        keras.constraints.NonNeg,
    ]
    assert [type(w.constraint) for w in layers[0].trainable_weights] == [
        keras.constraints.MaxNorm,
        keras.constraints.NonNeg,
    ]


def test_synchronized_is_whole_batch_with_one_replica_and_refused_with_several(monkeypatch):
    x = np.random.default_rng(14).normal(size=(6, 3)).astype("float32")
    plain, synced = BatchNormalization(), BatchNormalization(synchronized=True)
    np.testing.assert_array_equal(np.asarray(plain(x, training=True)), np.asarray(synced(x, training=True)))
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        np.testing.assert_array_equal(np.asarray(plain(x, training=True)), np.asarray(synced(x, training=True)))

    class TwoReplicas:
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "has_strategy", lambda: True)
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: TwoReplicas())
    with pytest.raises(ValueError, match="synchronized=True across 2 replicas"):
        synced(x, training=True)
    plain(x, training=True)  # synchronized=False: per-replica statistics, as Keras
