"""Batch Normalization from scratch in TensorFlow / Keras 3, with the derived backward pass.

* ``batch_norm_train`` -- training-mode BN as a ``tf.custom_gradient`` function whose gradient is the
  derived compact formula (book, eqs. ``eq-dbeta``, ``eq-dgamma``, ``eq-dx-compact``), not TensorFlow's
  autodiff through the forward.
* ``batch_norm_inference`` -- the fixed affine map used at inference (eq. ``eq-inference``).
* ``BatchNormalization`` -- a Keras 3 layer that is a drop-in for ``keras.layers.BatchNormalization``:
  same arguments ``axis, momentum, epsilon, center, scale`` (and initializers), same weights in the same
  order and with the same names (``gamma, beta, moving_mean, moving_variance``), so ``get_weights`` /
  ``set_weights`` move state between the two in either direction, and the same ``training=`` semantics.

Conventions (eps 1e-3, ``moving = momentum * moving + (1 - momentum) * batch`` with momentum 0.99, the
*biased* batch variance fed to ``moving_variance``, channels on ``axis=-1``) are read from
``bnref.conventions.KERAS``.

Two behaviours the layer shares with Keras, and one it does not:

* ``trainable=False`` forces inference mode even when called with ``training=True`` (Keras 3 does the same:
  its ``call`` tests ``training and self.trainable``); a bare ``layer(x)`` runs in inference mode.
* Mixed precision: the statistics and the normalisation are computed in float32 for float16/bfloat16
  inputs and the output is cast to the layer's compute dtype. Note that under the default ``"float32"``
  dtype policy Keras first autocasts a float16 input to float32, so the *output is float32*; it is
  float16 only under a ``"mixed_float16"`` policy.
* A batch with one value per channel in training gives ``var = 0``, ``x_hat = 0`` and so ``y = beta``, as
  in Keras; PyTorch raises a ValueError instead. Masks (Keras' ``mask=`` argument) are not supported.

This module imports TensorFlow and Keras at import time; ``import bnref`` does not import it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from .conventions import KERAS

__all__ = [
    "batch_norm_train",
    "batch_norm_train_with_stats",
    "batch_norm_inference",
    "keras_new_value_weight",
    "BatchNormalization",
]


# ----------------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------------


def _axis(rank: int | None, axis: int) -> int:
    if rank is None:
        raise ValueError("the input's rank must be known")
    if rank < 2:
        raise ValueError(f"x must have at least 2 dimensions (batch and channels), got rank {rank}")
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for an input of rank {rank}")
    return axis % rank


def _reduce_axes(rank: int, axis: int) -> list[int]:
    return [d for d in range(rank) if d != axis]


def _bshape(rank: int, axis: int) -> list[int]:
    return [-1 if d == axis else 1 for d in range(rank)]


def _compute_dtype(dtype: tf.DType) -> tf.DType:
    """float32 for float16/bfloat16 inputs, the input's own dtype otherwise."""
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


# ----------------------------------------------------------------------------------------------------
# Training-mode BN with the derived gradient
# ----------------------------------------------------------------------------------------------------


def batch_norm_train_with_stats(
    x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, axis: int = KERAS.axis, epsilon: float = KERAS.eps
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode BN returning ``(y, mean, var)``; the gradient of ``y`` is the derived one.

    Forward per channel (every axis but ``axis`` reduced, ``m`` values per channel)::

        mean = sum(x) / m;  var = sum((x - mean)^2) / m  (biased, two passes)
        x_hat = (x - mean) / sqrt(var + epsilon);  y = gamma * x_hat + beta

    Backward with ``dy = dL/dy``::

        dbeta = sum(dy);  dgamma = sum(dy * x_hat)
        dx = gamma / (m sqrt(var + epsilon)) * (m dy - dbeta - x_hat dgamma)

    Parameters
    ----------
    x : Tensor, shape (N, ..., C, ...) with the channels on ``axis``
        float32 or float64 (callers upcast half precision first; the layer does).
    gamma, beta : Tensor, shape (C,), dtype of x
    axis : int
    epsilon : float

    Returns
    -------
    y : Tensor, shape and dtype of x
    mean, var : Tensor, shape (C,); batch mean and biased variance, wrapped in ``tf.stop_gradient``
        (they feed the moving averages, never the loss).
    """
    x = tf.convert_to_tensor(x)
    rank = x.shape.rank
    ax = _axis(rank, axis)
    axes, b = _reduce_axes(rank, ax), _bshape(rank, ax)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")

    @tf.custom_gradient
    def _forward(x, gamma, beta):
        m = tf.cast(tf.size(x) // tf.shape(x)[ax], x.dtype)
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        centred = x - mean
        var = tf.reduce_mean(centred * centred, axis=axes, keepdims=True)  # two passes
        # tf.constant, not tf.cast: tf.cast(1e-3, tf.float64) converts through float32 first and gives
        # 1.0000000475e-3, an error of 5e-11 that would show in every float64 comparison.
        inv_std = tf.math.rsqrt(var + tf.constant(epsilon, x.dtype))
        x_hat = centred * inv_std
        gamma_b = tf.reshape(gamma, b)
        y = x_hat * gamma_b + tf.reshape(beta, b)

        def grad(dy, *_unused_stat_grads):
            dbeta = tf.reduce_sum(dy, axis=axes)
            dgamma = tf.reduce_sum(dy * x_hat, axis=axes)
            dx = (gamma_b * inv_std / m) * (m * dy - tf.reshape(dbeta, b) - x_hat * tf.reshape(dgamma, b))
            return dx, dgamma, dbeta

        return (y, tf.reshape(mean, [-1]), tf.reshape(var, [-1])), grad

    y, mean, var = _forward(x, gamma, beta)
    return y, tf.stop_gradient(mean), tf.stop_gradient(var)


def batch_norm_train(
    x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, axis: int = KERAS.axis, epsilon: float = KERAS.eps
) -> tf.Tensor:
    """Training-mode BN output ``y`` with the derived gradient; see ``batch_norm_train_with_stats``."""
    return batch_norm_train_with_stats(x, gamma, beta, axis, epsilon)[0]


def batch_norm_inference(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    moving_mean: tf.Tensor,
    moving_variance: tf.Tensor,
    axis: int = KERAS.axis,
    epsilon: float = KERAS.eps,
) -> tf.Tensor:
    """Inference BN, ``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`` per channel.

    Parameters
    ----------
    x : Tensor with the channels on ``axis``
    gamma, beta, moving_mean, moving_variance : Tensor, shape (C,), dtype of x

    Returns
    -------
    Tensor, shape and dtype of x
    """
    x = tf.convert_to_tensor(x)
    b = _bshape(x.shape.rank, _axis(x.shape.rank, axis))
    scale = gamma * tf.math.rsqrt(moving_variance + tf.constant(epsilon, x.dtype))
    return (x - tf.reshape(moving_mean, b)) * tf.reshape(scale, b) + tf.reshape(beta, b)


def keras_new_value_weight(momentum: float) -> float:
    """Weight of the new batch statistic in Keras' moving average, ``w = 1 - momentum``.

    Read from ``bnref.conventions.KERAS`` (``momentum_weights == "old"``). Keras' momentum is never None,
    so the weight does not depend on the step; step 1 is passed only to satisfy the interface.
    """
    if momentum is None:
        raise ValueError("Keras' momentum must be a number in [0, 1]; Keras has no cumulative average")
    return KERAS.replace(momentum=float(momentum)).new_value_weight(step=1)


def _moving_update(moving: tf.Tensor, batch_value: tf.Tensor, w: float) -> tf.Tensor:
    """``(1 - w) * moving + w * batch`` (book, eq. ``eq-running-update``)."""
    return (1.0 - w) * moving + w * batch_value


def _unbiased_factor(x: tf.Tensor, axis: int) -> tf.Tensor:
    """``m / (m - 1)`` with m the values per channel (unused by Keras' biased convention)."""
    m = tf.cast(tf.size(x) // tf.shape(x)[axis], x.dtype)
    return m / (m - 1)


# ----------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="bnref")
class BatchNormalization(keras.layers.Layer):
    """Drop-in replacement for ``keras.layers.BatchNormalization`` built on ``batch_norm_train``.

    Parameters
    ----------
    axis : int
        The channel axis (default ``KERAS.axis`` = -1, channels last); every other axis is reduced.
    momentum : float
        Keras' momentum: the weight *kept* on the old moving value (default ``KERAS.momentum`` = 0.99).
    epsilon : float
        Added to the variance inside the square root (default ``KERAS.eps`` = 1e-3).
    center, scale : bool
        Whether ``beta`` / ``gamma`` exist (shift 0 / scale 1 otherwise).
    beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer
        Keras initializers; the moving ones default to ``KERAS.init_mean`` and ``KERAS.init_var``.
    **kwargs
        Base layer arguments (``name``, ``dtype``, ``trainable``).

    Call arguments
    --------------
    inputs : tensor with the channels on ``axis``
    training : bool or None
        True: batch statistics, moving averages updated (unless ``trainable`` is False, which forces
        inference mode, as in Keras). False or None (a bare call): moving statistics.
    """

    def __init__(
        self,
        axis: int = KERAS.axis,
        momentum: float = KERAS.momentum,  # type: ignore[assignment]
        epsilon: float = KERAS.eps,
        center: bool = True,
        scale: bool = True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer=None,
        moving_variance_initializer=None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = int(axis)
        keras_new_value_weight(momentum)  # validates momentum
        if not float(epsilon) > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(
            moving_mean_initializer or keras.initializers.Constant(KERAS.init_mean)
        )
        self.moving_variance_initializer = keras.initializers.get(
            moving_variance_initializer or keras.initializers.Constant(KERAS.init_var)
        )
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def build(self, input_shape) -> None:
        rank = len(input_shape)
        ax = _axis(rank, self.axis)
        channels = input_shape[ax]
        if channels is None:
            raise ValueError(f"the channel axis {self.axis} of input shape {tuple(input_shape)} must be known")
        shape = (channels,)
        # Same order and names as Keras: gamma, beta, moving_mean, moving_variance.
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer=self.gamma_initializer, trainable=True, autocast=False
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer=self.beta_initializer, trainable=True, autocast=False
            )
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean", initializer=self.moving_mean_initializer, trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})

    def _affine(self, channels: int, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        gamma = tf.cast(self.gamma, dtype) if self.scale else tf.ones([channels], dtype)
        beta = tf.cast(self.beta, dtype) if self.center else tf.zeros([channels], dtype)
        return gamma, beta

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)
        cdtype = _compute_dtype(x.dtype)
        x = tf.cast(x, cdtype)
        gamma, beta = self._affine(self.moving_mean.shape[0], cdtype)
        moving_mean = tf.cast(self.moving_mean, cdtype)
        moving_variance = tf.cast(self.moving_variance, cdtype)
        if training and self.trainable:
            y, mean, var = batch_norm_train_with_stats(x, gamma, beta, self.axis, self.epsilon)
            w = keras_new_value_weight(self.momentum)
            fed_var = var if KERAS.running_var == "biased" else var * _unbiased_factor(x, self.axis)
            self.moving_mean.assign(tf.cast(_moving_update(moving_mean, mean, w), self.moving_mean.dtype))
            self.moving_variance.assign(tf.cast(_moving_update(moving_variance, fed_var, w), self.moving_variance.dtype))
        else:
            y = batch_norm_inference(x, gamma, beta, moving_mean, moving_variance, self.axis, self.epsilon)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": keras.initializers.serialize(self.moving_variance_initializer),
            }
        )
        return config
