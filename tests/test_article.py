"""The article's errors, reproduced: each test shows the article's formula or code next to what BN does.

The errata chapter (book/errata.md) links here. Each assertion could fail if the article were right.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import bnref

RNG = np.random.default_rng(2015)


def _batch(n: int = 64, c: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = RNG.normal(loc=RNG.uniform(-3, 3, c), scale=RNG.uniform(0.5, 2, c), size=(n, c))
    return x, RNG.normal(size=c), RNG.normal(size=c)


def test_step3_normalized_mean_is_not_the_mean_of_x_hat() -> None:
    # Article, step 3: mu_hat = mu / sqrt(var + eps). BN's x_hat has batch mean 0 by construction.
    x, gamma, beta = _batch()
    _, cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-5)
    article_mu_hat = cache.mean / np.sqrt(cache.var + 1e-5)
    # float64: the mean of x_hat is rounding noise, a few eps64 times |x|/std ~ 1e-15.
    np.testing.assert_allclose(cache.x_hat.mean(axis=0), 0.0, atol=1e-12)
    assert np.all(np.abs(article_mu_hat) > 1e-3), "the article's quantity is not zero, so it is not the mean of x_hat"


def test_steps5_6_output_statistics_are_not_running_statistics() -> None:
    # Article, steps 5-6: recompute mean and variance of z = gamma * x_hat + beta. Those are beta and
    # gamma^2 * var/(var + eps) for every batch: they carry no information about the data, unlike the
    # running estimates of the *input* statistics that inference needs.
    x, gamma, beta = _batch()
    z, cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(z.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(z.var(axis=0), gamma**2 * cache.var / (cache.var + 1e-5), rtol=1e-12)
    stats = bnref.RunningStats(x.shape[1], bnref.PAPER)
    stats.update(cache)
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    assert not np.allclose(stats.mean, z.mean(axis=0))


def test_step7_updates_are_not_gradient_descent() -> None:
    # Article, step 7: gamma += alpha * mean(y_hat), beta += beta * mean(1).
    x, gamma, beta = _batch()
    _, cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-5)
    alpha = 0.1
    article_gamma = gamma + alpha * cache.x_hat.mean(axis=0)
    article_beta = beta + beta * 1.0
    # beta doubles at every step, whatever the data and the loss.
    np.testing.assert_array_equal(article_beta, 2 * beta)
    # mean(x_hat) is 0, so the article's gamma "update" does nothing (up to rounding) ...
    np.testing.assert_allclose(article_gamma, gamma, atol=1e-12)
    # ... while the true gradients depend on the loss: two different upstream gradients, two different dgamma.
    dy1, dy2 = RNG.normal(size=x.shape), RNG.normal(size=x.shape)
    _, dgamma1, dbeta1 = bnref.batch_norm_backward(dy1, cache)
    _, dgamma2, dbeta2 = bnref.batch_norm_backward(dy2, cache)
    assert not np.allclose(dgamma1, dgamma2) and not np.allclose(dbeta1, dbeta2)


def test_normalisation_does_not_map_into_a_fixed_range() -> None:
    # Article: normalisation maps inputs "into a fixed range". BN standardises: x_hat is unbounded and its
    # extreme values grow with the batch size (for Gaussian data, max |x_hat| ~ sqrt(2 ln m)).
    small = bnref.batch_norm_forward(RNG.normal(size=(16, 1)), np.ones(1), np.zeros(1))[1].x_hat
    large = bnref.batch_norm_forward(RNG.normal(size=(100_000, 1)), np.ones(1), np.zeros(1))[1].x_hat
    assert np.abs(large).max() > 3.5 > np.abs(small).max()


def test_eps_changes_the_output() -> None:
    # Article: eps is "a constant smaller than 1". Its value matters: the output's standard deviation is
    # sqrt(var / (var + eps)), so for a channel with var ~ 1e-4, PyTorch's 1e-5 gives ~0.95 and Keras'
    # 1e-3 gives ~0.30.
    x = RNG.normal(scale=0.01, size=(128, 1))
    out = {}
    for conv in (bnref.PYTORCH, bnref.KERAS):
        y, cache = bnref.batch_norm_forward(x, np.ones(1), np.zeros(1), eps=conv.eps)
        np.testing.assert_allclose(y.std(), np.sqrt(cache.var / (cache.var + conv.eps))[0], rtol=1e-12)
        out[conv.name] = y.std()
    assert out["pytorch"] > 2 * out["keras"]


# ------------------------------------------------------------------------------------------------
# The article's Keras code, run as written (in Keras 3)
# ------------------------------------------------------------------------------------------------

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")


def _article_simple_model(x):  # the article's function of tensors
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.Dense(10, activation="softmax")(x)


@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
def test_article_sequential_with_a_function_fails() -> None:
    with pytest.raises((TypeError, ValueError), match="Layer"):
        keras.models.Sequential([keras.layers.Flatten(input_shape=(28, 28)), _article_simple_model])


@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
def test_article_flatten_28x28_rejects_784_vectors() -> None:
    # Even with the layers written out, the data were reshaped to 784 before a Flatten(input_shape=(28, 28)).
    model = keras.models.Sequential(
        [keras.layers.Flatten(input_shape=(28, 28)), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.zeros((8, 784), dtype="float32")
    y = keras.utils.to_categorical(np.arange(8) % 10, 10)
    with pytest.raises(ValueError, match="(?i)incompatible|expected"):
        model.fit(x, y, epochs=1, verbose=0)
