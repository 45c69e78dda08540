"""Haiku ``haiku.BatchNorm`` (survey pin: dm-haiku 0.0.17 with the newest JAX, CPU).

Read in ``haiku/_src/batch_norm.py`` and ``haiku/_src/moving_averages.py`` of dm-haiku 0.0.17:

* ``BatchNorm(create_scale, create_offset, decay_rate, eps=1e-5, ..., data_format="channels_last")``: no default
  for ``decay_rate``; this adapter takes 0.9, the default of Haiku's own ``haiku.nets.ResNet`` (``bn_config``,
  ``haiku/_src/nets/resnet.py``), with scale and offset created (as there);
* training (``is_training=True``): ``mean = mean(x)``, ``var = mean(x^2) - mean^2`` (the one-pass variance, biased,
  not clamped at 0), ``y = (x - mean) * scale * rsqrt(var + eps) + offset``; inference normalises with
  ``mean_ema.average`` and ``var_ema.average``;
* the running statistics are two ``ExponentialMovingAverage(decay_rate)`` modules with ``zero_debias=True`` (its
  default): ``hidden = decay * hidden + (1 - decay) * value`` from ``hidden = 0``, and ``average = hidden / (1 -
  decay^k)`` at step ``k`` (Adam's debiasing). As a running update ``r_k = (1 - w_k) r_{k-1} + w_k b_k`` of the
  average, the weight of the new value is ``w_k = (1 - d) / (1 - d^k)``: 1 at step 1 (the first batch replaces the
  average), ``1 / (1 + d)`` at step 2, tending to ``1 - d``. ``running_stats()`` returns ``average``, which inference
  uses (``hidden`` is never used directly);
* ``average`` is a state that ``init`` creates from the batch it is given (``set_state`` during ``init``), while
  ``hidden`` and ``counter`` start at 0: this adapter inits with zeros, so the averages start at mean 0, var 0;
* parameters and state take the input's dtype (``w_dtype = inputs.dtype``; ``init`` with a float16 batch makes
  float16 scale, offset and averages), so a float16 layer holds gamma rounded to float16.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnref.check.conformance import Adapter
from bnref.check.rules import RunningRule
from bnref.conventions import Convention

from . import Output

__all__ = ["HaikuAdapter", "DECAY_RATE", "HAIKU", "HAIKU_RULE"]

#: ``haiku.nets.ResNet``'s default ``decay_rate`` (dm-haiku 0.0.17); ``haiku.BatchNorm`` itself has none.
DECAY_RATE = 0.9

#: What ``haiku/_src/batch_norm.py`` (0.0.17) computes: eps 1e-5 inside the square root, the biased one-pass batch
#: variance fed to the averages, channels last; the averages start at 0 (this adapter inits with zeros). Its
#: running-average rule is not a constant weight: see ``HAIKU_RULE`` (``momentum`` here is the decay, for the record).
HAIKU = Convention(
    name="haiku",
    eps=1e-5,
    momentum=DECAY_RATE,
    momentum_weights="old",
    running_var="biased",
    axis=-1,
    init_mean=0.0,
    init_var=0.0,
    var_method="one-pass",
)
#: ``ExponentialMovingAverage(decay_rate, zero_debias=True)``: the zero-debiased average, ``w_k = (1 - d)/(1 - d^k)``.
HAIKU_RULE = RunningRule("debiased", 1.0 - DECAY_RATE)


class HaikuAdapter(Adapter):
    """``haiku.BatchNorm(True, True, decay_rate=0.9)`` in ``hk.transform_with_state``, jitted, channels last."""

    name = "haiku"
    layout = "NHWC"
    convention = HAIKU
    running_rule = HAIKU_RULE

    def __init__(self, decay_rate: float = DECAY_RATE) -> None:
        self.decay_rate = decay_rate
        if decay_rate != DECAY_RATE:
            self.convention = HAIKU.replace(momentum=decay_rate)
            self.running_rule = RunningRule("debiased", 1.0 - decay_rate)

    def versions(self) -> dict[str, str]:
        import haiku
        import jax

        return {"dm-haiku": haiku.__version__, "jax": jax.__version__}

    def describe(self) -> str:
        import haiku
        import jax

        return (
            f"dm-haiku {haiku.__version__}, jax {jax.__version__}: haiku.BatchNorm(create_scale=True, "
            f"create_offset=True, decay_rate={self.decay_rate}), layout NHWC, CPU"
        )

    def create(self, num_features: int, dtype: str) -> None:
        import haiku as hk
        import jax
        import jax.numpy as jnp

        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("float64 needs jax_enable_x64")
        self.jax, self.jnp, self.dtype = jax, jnp, jnp.dtype(dtype)
        if not hasattr(self, "_apply"):  # one transformed function, compiled once per shape and mode
            decay_rate = self.decay_rate

            def forward(x: Any, is_training: bool) -> Any:
                return hk.BatchNorm(True, True, decay_rate=decay_rate)(x, is_training)

            self._model = hk.transform_with_state(forward)
            self._apply = jax.jit(self._model.apply, static_argnames="is_training")

            def grads(params: Any, state: Any, x: Any, dy: Any) -> Any:
                def f(p: Any, x_in: Any) -> Any:
                    return self._model.apply(p, state, None, x_in, is_training=True)  # (y, new state)

                y, vjp, new_state = jax.vjp(f, params, x, has_aux=True)
                return vjp(dy.astype(y.dtype)), new_state

            self._grads = jax.jit(grads)
        shape = [2] * len(self.layout)
        shape[-1] = num_features
        self.params, self.state = self._model.init(None, jnp.zeros(shape, self.dtype), is_training=True)

    def _t(self, a: np.ndarray) -> Any:
        return self.jnp.asarray(np.asarray(a, np.float64 if self.dtype == np.float64 else np.float32), self.dtype)

    def _out(self, y: Any) -> Any:
        return Output(np.asarray(y.astype(self.jnp.float32)), "bfloat16") if y.dtype == self.jnp.bfloat16 else y

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        p = self.params["batch_norm"]
        scale = self.jnp.asarray(gamma.reshape(p["scale"].shape), p["scale"].dtype)
        offset = self.jnp.asarray(beta.reshape(p["offset"].shape), p["offset"].dtype)
        self.params = {"batch_norm": {"scale": scale, "offset": offset}}

    def train_forward(self, x: np.ndarray) -> Any:
        y, self.state = self._apply(self.params, self.state, None, self._t(x), is_training=True)
        return self._out(y)

    def infer_forward(self, x: np.ndarray) -> Any:
        return self._out(self._apply(self.params, self.state, None, self._t(x), is_training=False)[0])

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        # the zero-debiased averages, which inference normalises with
        mean = self.state["batch_norm/~/mean_ema"]["average"]
        var = self.state["batch_norm/~/var_ema"]["average"]
        return np.asarray(mean, np.float64).reshape(-1), np.asarray(var, np.float64).reshape(-1)

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        # a training step: the gradients, and the running statistics updated as train_forward updates them
        (grads, dx), self.state = self._grads(self.params, self.state, self._t(x), self._t(dy))
        g = grads["batch_norm"]
        return dx, np.asarray(g["scale"], np.float64).reshape(-1), np.asarray(g["offset"], np.float64).reshape(-1)
