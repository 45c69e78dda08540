"""Batch Normalization from scratch in TensorFlow / Keras 3, with the derived backward pass.

* ``batch_norm_train`` -- training-mode BN as a ``tf.custom_gradient`` function whose gradient is the
  derived compact formula (book, eqs. ``eq-dbeta``, ``eq-dgamma``, ``eq-dx-compact``), not TensorFlow's
  autodiff through the forward. An optional mask restricts the statistics to the unmasked positions.
* ``batch_norm_inference`` -- the fixed affine map used at inference (eq. ``eq-inference``).
* ``BatchNormalization`` -- a Keras 3 layer that is a drop-in for ``keras.layers.BatchNormalization``:
  every constructor argument of the native layer (``axis, momentum, epsilon, center, scale``, the four
  initializers, the beta/gamma regularizers and constraints, ``synchronized``, ``renorm``,
  ``renorm_clipping``, ``renorm_momentum``), the same weights in the same order and with the same names
  (``gamma, beta, moving_mean, moving_variance`` and, with ``renorm``, ``moving_stddev, renorm_mean,
  renorm_stddev``), masks, the same ``training=`` semantics, and a ``get_config`` that round-trips with
  the native layer's in both directions.

Convention (read from ``bnref.conventions.KERAS``): eps 1e-3; momentum 0.99 is the weight *kept* on the
old value, so the update is written as Keras writes it::

    moving_mean     = moving_mean * momentum + mean * (1 - momentum)
    moving_variance = moving_variance * momentum + var * (1 - momentum)

with the *biased* batch variance (``KERAS.running_var == "biased"``); channels on ``axis=-1``.

Behaviours shared with Keras 3.15:

* ``trainable=False`` forces inference mode even when called with ``training=True``; a bare
  ``layer(x)`` runs in inference mode.
* Mixed precision: the statistics and the normalisation are computed in float32 for float16/bfloat16
  inputs and the output is cast to the layer's compute dtype (float32 under the default policy, float16
  only under ``"mixed_float16"``).
* A batch with one value per channel in training gives ``var = 0``, ``x_hat = 0`` and so ``y = beta``.
* Masks (``mask=``, one dimension less than the input, broadcast over the last axis as Keras does): in
  training the batch statistics are taken over the unmasked positions only; every position is normalised
  with them. In inference the mask changes nothing.

Differences from Keras, deliberate:

* Masked statistics divide by the number of unmasked values ``n`` (by 1 if ``n = 0``); Keras divides by
  ``n + 1e-7``, a relative difference of ``1e-7 / n`` (below float32 resolution for ``n >= 1``).
* ``epsilon <= 0`` raises ValueError at construction (Keras accepts it and returns inf or NaN).
* ``synchronized=True`` is accepted and stored in the config; with one replica (no ``tf.distribute``
  strategy, or a strategy with one replica) the statistics are those of the whole batch, which is what
  synchronisation would give. Under a strategy with more than one replica the layer raises ValueError
  rather than silently using per-replica statistics (cross-replica BN is ``bnref.layers.sync_bn``'s topic).

This module imports TensorFlow and Keras at import time; ``import bnref`` does not import it.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from bnref.conventions import KERAS

__all__ = ["batch_norm_train", "batch_norm_train_with_stats", "batch_norm_inference", "BatchNormalization"]


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


def _mask_weights(mask, x: tf.Tensor) -> tf.Tensor:
    """Keras' mask layout: one dimension less than ``x``, expanded on the last axis and broadcast; 1.0 / 0.0."""
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank != x.shape.rank - 1:
        raise ValueError(
            "The mask provided should be one dimension less than the inputs. Received: "
            f"mask.shape={tuple(mask.shape)}, inputs.shape={tuple(x.shape)}"
        )
    keep = tf.cast(tf.expand_dims(mask, -1), tf.bool)
    return tf.cast(tf.broadcast_to(keep, tf.shape(x)), x.dtype)


# ----------------------------------------------------------------------------------------------------
# Training-mode BN with the derived gradient
# ----------------------------------------------------------------------------------------------------


def batch_norm_train_with_stats(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    axis: int = KERAS.axis,
    epsilon: float = KERAS.eps,
    mask: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode BN returning ``(y, mean, var)``; the gradient of ``y`` is the derived one.

    Forward per channel (every axis but ``axis`` reduced, ``m`` values per channel)::

        mean = sum(x) / m;  var = sum((x - mean)^2) / m  (biased, two passes)
        x_hat = (x - mean) / sqrt(var + epsilon);  y = gamma * x_hat + beta

    Backward with ``dy = dL/dy``::

        dbeta = sum(dy);  dgamma = sum(dy * x_hat)
        dx = gamma / (m sqrt(var + epsilon)) * (m dy - dbeta - x_hat dgamma)

    With a mask (weights ``w`` of 1 at kept and 0 at masked positions, ``n = sum(w)`` per channel) the
    statistics are ``mean = sum(w x) / n`` and ``var = sum(w (x - mean)^2) / n``; every position is
    normalised with them, and the same derivation gives::

        dx = gamma / sqrt(var + epsilon) * (dy - w / n * (dbeta + x_hat dgamma))

    which is the formula above when every ``w`` is 1. (With ``n = 0`` the statistics are 0 and do not
    depend on ``x``; ``n`` is then replaced by 1, and ``w = 0`` removes the second term.)

    Parameters
    ----------
    x : Tensor, shape (N, ..., C, ...) with the channels on ``axis``
        float32 or float64 (callers upcast half precision first; the layer does).
    gamma, beta : Tensor, shape (C,), dtype of x
    axis : int
    epsilon : float
    mask : Tensor or None
        Keras' mask layout: shape of ``x`` without its last axis; true/nonzero where a value counts.

    Returns
    -------
    y : Tensor, shape and dtype of x
    mean, var : Tensor, shape (C,); batch mean and biased variance (over the unmasked values), wrapped in
        ``tf.stop_gradient`` (they feed the moving averages, never the loss).
    """
    x = tf.convert_to_tensor(x)
    rank = x.shape.rank
    ax = _axis(rank, axis)
    axes, b = _reduce_axes(rank, ax), _bshape(rank, ax)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    w = None if mask is None else _mask_weights(mask, x)

    @tf.custom_gradient
    def _forward(x, gamma, beta):
        if w is None:
            m = tf.cast(tf.size(x) // tf.shape(x)[ax], x.dtype)
            mean = tf.reduce_mean(x, axis=axes, keepdims=True)
            centred = x - mean
            var = tf.reduce_mean(centred * centred, axis=axes, keepdims=True)  # two passes
        else:
            n = tf.maximum(tf.reduce_sum(w, axis=axes, keepdims=True), 1.0)
            mean = tf.reduce_sum(w * x, axis=axes, keepdims=True) / n
            centred = x - mean
            var = tf.reduce_sum(w * centred * centred, axis=axes, keepdims=True) / n
        # tf.constant, not tf.cast: tf.cast(1e-3, tf.float64) converts through float32 first and gives
        # 1.0000000475e-3, an error of 5e-11 that would show in every float64 comparison.
        inv_std = tf.math.rsqrt(var + tf.constant(epsilon, x.dtype))
        x_hat = centred * inv_std
        gamma_b = tf.reshape(gamma, b)
        y = x_hat * gamma_b + tf.reshape(beta, b)

        def grad(dy, *_unused_stat_grads):
            dbeta = tf.reduce_sum(dy, axis=axes)
            dgamma = tf.reduce_sum(dy * x_hat, axis=axes)
            if w is None:
                dx = (gamma_b * inv_std / m) * (m * dy - tf.reshape(dbeta, b) - x_hat * tf.reshape(dgamma, b))
            else:
                dx = (gamma_b * inv_std) * (dy - w / n * (tf.reshape(dbeta, b) + x_hat * tf.reshape(dgamma, b)))
            return dx, dgamma, dbeta

        return (y, tf.reshape(mean, [-1]), tf.reshape(var, [-1])), grad

    y, mean, var = _forward(x, gamma, beta)
    return y, tf.stop_gradient(mean), tf.stop_gradient(var)


def batch_norm_train(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    axis: int = KERAS.axis,
    epsilon: float = KERAS.eps,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Training-mode BN output ``y`` with the derived gradient; see ``batch_norm_train_with_stats``."""
    return batch_norm_train_with_stats(x, gamma, beta, axis, epsilon, mask)[0]


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


def _check_renorm_clipping(renorm_clipping: dict | None) -> dict:
    """Keys ``rmax``, ``rmin``, ``dmax`` only; ``rmin <= rmax``; ``dmax >= 0`` (Keras' rules and messages)."""
    clipping = dict(renorm_clipping or {})
    allowed = ["rmax", "rmin", "dmax"]
    if set(clipping) - set(allowed):
        raise ValueError(
            f"Received invalid keys for `renorm_clipping` argument: {clipping}. Supported values: {allowed}."
        )
    rmax, rmin, dmax = clipping.get("rmax"), clipping.get("rmin"), clipping.get("dmax")
    if rmax is not None and rmin is not None and rmax < rmin:
        raise ValueError(f"rmax should be greater than rmin in the `renorm_clipping` argument. Received: {clipping}")
    if dmax is not None and dmax < 0:
        raise ValueError(f"dmax should be non-negative in the `renorm_clipping` argument. Received: {clipping}")
    return clipping


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
        Added to the variance inside the square root (default ``KERAS.eps`` = 1e-3); must be > 0.
    center, scale : bool
        Whether ``beta`` / ``gamma`` exist (shift 0 / scale 1 otherwise).
    beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer
        Keras initializers; the moving ones default to ``"zeros"`` and ``"ones"`` (``KERAS.init_mean``,
        ``KERAS.init_var``; written as Keras writes them so that the configs are equal).
    beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint
        Keras regularizers and constraints for the two trainable weights.
    renorm : bool
        Batch Renormalization (Ioffe 2017) as Keras 3.15 implements it: in training the normalised value
        becomes ``x_hat * r + d`` with ``r = sigma_B / sigma_R`` and ``d = (mu_B - mu_R) / sigma_R``
        (treated as constants in the backward), where ``mu_R, sigma_R`` are the weights ``renorm_mean``
        and ``renorm_stddev``, and ``sigma_B = sqrt(var_B + epsilon)``. ``sigma_R`` is floored at
        ``sqrt(epsilon)``. ``renorm_mean``/``renorm_stddev`` follow ``renorm_momentum``;
        ``moving_mean``/``moving_stddev`` follow ``momentum``, and
        ``moving_variance = max(moving_stddev^2 - epsilon, 0)``. Inference is unchanged.
    renorm_clipping : dict or None
        Optional ``rmin``, ``rmax`` (clip ``r``) and ``dmax`` (clip ``d`` to ``[-dmax, dmax]``).
    renorm_momentum : float
        Momentum of ``renorm_mean`` and ``renorm_stddev`` (default 0.99, Keras' default).
    synchronized : bool
        See the module docstring: whole-batch statistics with one replica; ValueError with several.
    **kwargs
        Base layer arguments (``name``, ``dtype``, ``trainable``).

    Call arguments
    --------------
    inputs : tensor with the channels on ``axis``
    training : bool or None
        True: batch statistics, moving averages updated (unless ``trainable`` is False, which forces
        inference mode, as in Keras). False or None (a bare call): moving statistics.
    mask : tensor or None
        One dimension less than ``inputs``; in training only the unmasked positions enter the statistics.
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
        moving_mean_initializer="zeros",  # KERAS.init_mean
        moving_variance_initializer="ones",  # KERAS.init_var
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        renorm: bool = False,
        renorm_clipping: dict | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = int(axis)
        if momentum is None or not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1] (Keras has no cumulative average), got {momentum!r}")
        if not (float(epsilon) > 0 and math.isfinite(float(epsilon))):
            raise ValueError(f"epsilon must be > 0 and finite, got {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.renorm = bool(renorm)
        # Keras validates and normalises the clipping dict only with renorm on, and stores it as given.
        self.renorm_clipping = _check_renorm_clipping(renorm_clipping) if self.renorm else renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.synchronized = bool(synchronized)
        self.supports_masking = True
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def _fresh(self, initializer):
        """A new instance of a configured initializer, so that two weights never share a seeded one."""
        if isinstance(initializer, keras.initializers.Initializer):
            return initializer.__class__.from_config(initializer.get_config())
        return initializer

    def build(self, input_shape) -> None:
        rank = len(input_shape)
        ax = _axis(rank, self.axis)
        channels = input_shape[ax]
        if channels is None:
            raise ValueError(f"the channel axis {self.axis} of input shape {tuple(input_shape)} must be known")
        shape = (channels,)

        def state(name, initializer):
            return self.add_weight(shape=shape, name=name, initializer=initializer, trainable=False, autocast=False)

        def trained(name, initializer, regularizer, constraint):
            return self.add_weight(
                shape=shape,
                name=name,
                initializer=initializer,
                regularizer=regularizer,
                constraint=constraint,
                trainable=True,
                autocast=False,
            )

        # Same order and names as Keras: gamma, beta, moving_mean, moving_variance (+ the renorm weights).
        if self.scale:
            self.gamma = trained("gamma", self.gamma_initializer, self.gamma_regularizer, self.gamma_constraint)
        if self.center:
            self.beta = trained("beta", self.beta_initializer, self.beta_regularizer, self.beta_constraint)
        self.moving_mean = state("moving_mean", self.moving_mean_initializer)
        self.moving_variance = state("moving_variance", self.moving_variance_initializer)
        if self.renorm:
            # Batch Renorm keeps standard deviations; they start at the square root of the variance initializer.
            def stddev_initializer(shape, dtype=None):
                return tf.sqrt(self._fresh(self.moving_variance_initializer)(shape, dtype=dtype))

            self.moving_stddev = state("moving_stddev", stddev_initializer)
            self.renorm_mean = state("renorm_mean", self._fresh(self.moving_mean_initializer))
            self.renorm_stddev = state("renorm_stddev", stddev_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})

    def _affine(self, channels: int, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        gamma = tf.cast(self.gamma, dtype) if self.scale else tf.ones([channels], dtype)
        beta = tf.cast(self.beta, dtype) if self.center else tf.zeros([channels], dtype)
        return gamma, beta

    def _check_one_replica(self) -> None:
        if self.synchronized and tf.distribute.has_strategy():
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                raise ValueError(
                    f"synchronized=True across {replicas} replicas is not implemented by bnref.layers.keras_bn; "
                    "use keras.layers.BatchNormalization (TensorFlow backend) for cross-replica statistics"
                )

    @staticmethod
    def _moving_update(variable, batch_value: tf.Tensor, momentum: float) -> None:
        """``variable = variable * momentum + batch * (1 - momentum)``, Keras' rule word for word."""
        old = tf.cast(variable, batch_value.dtype)
        variable.assign(tf.cast(old * momentum + batch_value * (1.0 - momentum), variable.dtype))

    def call(self, inputs, training=None, mask=None):
        x = tf.convert_to_tensor(inputs)
        if mask is not None and len(mask.shape) != len(x.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the inputs. Received: "
                f"mask.shape={tuple(mask.shape)}, inputs.shape={tuple(x.shape)}"
            )
        cdtype = _compute_dtype(x.dtype)
        x = tf.cast(x, cdtype)
        gamma, beta = self._affine(self.moving_mean.shape[0], cdtype)
        if not (training and self.trainable):
            moving_mean = tf.cast(self.moving_mean, cdtype)
            moving_variance = tf.cast(self.moving_variance, cdtype)
            y = batch_norm_inference(x, gamma, beta, moving_mean, moving_variance, self.axis, self.epsilon)
            return tf.cast(y, self.compute_dtype)
        self._check_one_replica()
        if not self.renorm:
            y, mean, var = batch_norm_train_with_stats(x, gamma, beta, self.axis, self.epsilon, mask)
            self._moving_update(self.moving_mean, mean, self.momentum)
            self._moving_update(self.moving_variance, var, self.momentum)  # biased var: KERAS.running_var
            return tf.cast(y, self.compute_dtype)
        # Batch Renorm: x_hat from the derived function, then (x_hat * r + d) * gamma + beta.
        ones = tf.ones_like(gamma)
        x_hat, mean, var = batch_norm_train_with_stats(x, ones, tf.zeros_like(beta), self.axis, self.epsilon, mask)
        r, d, sigma_b = self._renorm_correction(mean, var)
        b = _bshape(x.shape.rank, _axis(x.shape.rank, self.axis))
        y = (x_hat * tf.reshape(r, b) + tf.reshape(d, b)) * tf.reshape(gamma, b) + tf.reshape(beta, b)
        self._moving_update(self.renorm_mean, mean, self.renorm_momentum)
        self._moving_update(self.renorm_stddev, sigma_b, self.renorm_momentum)
        self._moving_update(self.moving_mean, mean, self.momentum)
        self._moving_update(self.moving_stddev, sigma_b, self.momentum)
        moving_stddev = tf.cast(self.moving_stddev, cdtype)
        self.moving_variance.assign(
            tf.cast(tf.nn.relu(moving_stddev * moving_stddev - self.epsilon), self.moving_variance.dtype)
        )
        return tf.cast(y, self.compute_dtype)

    def _renorm_correction(self, mean: tf.Tensor, var: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``r = sigma_B / sigma_R`` and ``d = (mu_B - mu_R) / sigma_R``, clipped, as constants; and ``sigma_B``."""
        dtype = mean.dtype
        sigma_b = tf.sqrt(var + tf.constant(self.epsilon, dtype))
        mu_r = tf.cast(self.renorm_mean, dtype)
        sigma_r = tf.maximum(tf.cast(self.renorm_stddev, dtype), tf.sqrt(tf.constant(self.epsilon, dtype)))
        r, d = sigma_b / sigma_r, (mean - mu_r) / sigma_r
        clip = self.renorm_clipping
        # tf.constant, not tf.cast: tf.cast(python float, float64) passes through float32 (r_max = 4/3 would be
        # off by 4e-8), while Keras converts the Python float straight to the layer's dtype.
        if clip.get("rmin") is not None:
            r = tf.maximum(r, tf.constant(clip["rmin"], dtype))
        if clip.get("rmax") is not None:
            r = tf.minimum(r, tf.constant(clip["rmax"], dtype))
        if clip.get("dmax") is not None:
            dmax = tf.constant(clip["dmax"], dtype)
            d = tf.clip_by_value(d, -dmax, dmax)
        return tf.stop_gradient(r), tf.stop_gradient(d), sigma_b

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        """The native layer's config keys and serialisations, so configs move between the two layers."""
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
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": keras.constraints.serialize(self.beta_constraint),
                "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
                "synchronized": self.synchronized,
                "renorm": self.renorm,
                "renorm_clipping": self.renorm_clipping,
                "renorm_momentum": self.renorm_momentum,
            }
        )
        return config
