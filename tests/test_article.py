"""The article's errors, reproduced: each test shows the article's formula or code next to what BN does.

The errata chapter (book/errata.md) links here. Each assertion could fail if the article were right.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import bnref

RNG = np.random.default_rng(2015)
EPS64 = float(np.finfo(np.float64).eps)

# Tolerances: the reference's x_hat is within (2 m + 4) eps64 max|x_hat| of the exact one (the bound XHAT
# derived in tests/test_reference.py, after the book's appendix "How the checks are bounded", ch-bounds), and
# a NumPy mean or variance of m values adds at most m eps64 relative to the largest term.


def _x_hat_mean_tol(x_hat: np.ndarray) -> np.ndarray:
    """Bound on |mean(x_hat)| per channel: (XHAT) plus the test's own mean of m values."""
    m = x_hat.shape[0]
    return (3 * m + 4) * EPS64 * np.max(np.abs(x_hat), axis=0)


def _batch(n: int = 64, c: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = RNG.normal(loc=RNG.uniform(-3, 3, c), scale=RNG.uniform(0.5, 2, c), size=(n, c))
    return x, RNG.normal(size=c), RNG.normal(size=c)


def test_step3_normalized_mean_is_not_the_mean_of_x_hat() -> None:
    # Article, step 3: mu_hat = mu / sqrt(var + eps). BN's x_hat has batch mean 0 by construction.
    x, gamma, beta = _batch()
    _, cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-5)
    article_mu_hat = cache.mean / np.sqrt(cache.var + 1e-5)
    # float64: the mean of x_hat is rounding noise
    assert np.all(np.abs(cache.x_hat.mean(axis=0)) <= _x_hat_mean_tol(cache.x_hat))
    assert np.all(np.abs(article_mu_hat) > 1e-3), "the article's quantity is not zero, so it is not the mean of x_hat"


def test_steps5_6_output_statistics_are_not_running_statistics() -> None:
    # Article, steps 5-6: recompute mean and variance of z = gamma * x_hat + beta. Those are beta and
    # gamma^2 * var/(var + eps) for every batch: they carry no information about the data, unlike the
    # running estimates of the *input* statistics that inference needs.
    x, gamma, beta = _batch()
    z, cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-5)
    m = x.shape[0]
    # mean(z) - beta = gamma mean(x_hat) plus the roundings of z (u |z|, 2 per element) and of the mean
    z_max = np.max(np.abs(z), axis=0)
    assert np.all(
        np.abs(z.mean(axis=0) - beta) <= np.abs(gamma) * _x_hat_mean_tol(cache.x_hat) + (m + 2) * EPS64 * z_max
    )
    # var(z) = gamma^2 var(x_hat): the variance of x_hat is within (m + 12) u relative (test_reference), each
    # element of z carries 2 roundings of |z| (relative to |gamma| per unit of x_hat), the test's variance m u
    rel = EPS64 * (m + 12 + 2 * z_max / np.abs(gamma))
    np.testing.assert_allclose(z.var(axis=0), gamma**2 * cache.var / (cache.var + 1e-5), rtol=float(np.max(rel)))
    stats = bnref.RunningStats(x.shape[1], bnref.PAPER)
    stats.update(cache)
    # the first cumulative step copies the batch mean; two means of m values agree to m eps64 max|x|
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=0, atol=m * EPS64 * np.max(np.abs(x)))
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
    assert np.all(np.abs(article_gamma - gamma) <= alpha * _x_hat_mean_tol(cache.x_hat) + EPS64 * np.abs(gamma))
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
        # std(x_hat): half the (m + 12) u relative error of its variance, plus the square roots
        m = x.shape[0]
        np.testing.assert_allclose(y.std(), np.sqrt(cache.var / (cache.var + conv.eps))[0], rtol=(m + 16) * EPS64)
        out[conv.name] = y.std()
    assert out["pytorch"] > 2 * out["keras"]


# ------------------------------------------------------------------------------------------------
# The article's Keras code, run as written (in Keras 3)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    """Keras, imported only by the tests that run the article's Keras code: the NumPy tests above run
    without it, and where the suite runs (CI) Keras is installed, so a missing Keras is an error, not a skip."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    return keras


def _article_simple_model(keras, x):  # the article's function of tensors
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.Dense(10, activation="softmax")(x)


@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
def test_article_sequential_with_a_function_fails(keras) -> None:
    def simple_model(x):
        return _article_simple_model(keras, x)

    # Keras 3.15.1 raises ValueError when Sequential([...]) is constructed, before any build or fit (errata E6).
    with pytest.raises(ValueError, match="Layer"):
        keras.models.Sequential([keras.layers.Flatten(input_shape=(28, 28)), simple_model])


@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
def test_article_flatten_28x28_rejects_784_vectors(keras) -> None:
    # Even with the layers written out, the data were reshaped to 784 before a Flatten(input_shape=(28, 28)).
    model = keras.models.Sequential(
        [keras.layers.Flatten(input_shape=(28, 28)), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.zeros((8, 784), dtype="float32")
    y = keras.utils.to_categorical(np.arange(8) % 10, 10)
    with pytest.raises(ValueError, match="(?i)incompatible|expected"):
        model.fit(x, y, epochs=1, verbose=0)
