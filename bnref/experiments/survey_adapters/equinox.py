"""Equinox ``equinox.nn.BatchNorm`` in its two modes (survey pin: equinox 0.13.* with the newest JAX, CPU).

Read in ``equinox/nn/_batch_norm.py`` of equinox 0.13.8:

* ``BatchNorm(input_size, axis_name, eps=1e-5, channelwise_affine=True, momentum=0.99, inference=False, dtype=None,
  mode="legacy")``; ``"legacy"`` means ``"ema"`` with a warning that recommends ``"batch"`` for new code. The layer
  works on one example of shape ``(C, ...)`` inside ``jax.vmap(..., axis_name=...)``, so the batch is axis 0 and the
  channels axis 1: layout NCHW here. Weight, bias and running statistics are float32 (``default_floating_dtype``).
* Batch statistics (``_stats``): ``mean``, then ``var = mean((x - mean)^2)`` (two passes, biased), clamped at 0.
* ``mode="ema"``: the running buffers start "empty" (``jnp.empty``, zeros in JAX) with a flag ``first_time``. In
  training, ``running = (1 - momentum) * batch + momentum * running``, except at the first step, where the batch
  statistics replace the running ones (``lax.select(first_time, batch_mean, mean)``); and the layer then
  normalises with these *running* statistics, not with the batch's (``out = jax.vmap(_norm)(x, mean, var, ...)``
  with the updated running mean and variance). The class docstring says so ("exponential running means and
  variances are kept. During training the batch statistics are used to fill in the running statistics until they
  are populated"). Inference uses the running statistics.
* ``mode="batch"``: training normalises with the batch statistics and updates ``hidden = momentum * hidden + (1 -
  momentum) * batch`` with a counter; ``hidden_mean`` starts at 0 and ``hidden_var`` at **1**
  (``init_hidden = (jnp.zeros(...), jnp.ones(...))``). Inference divides both by ``1 - momentum^counter``
  (``scale = jnp.where(counter == 0, 1, 1 - self.momentum**counter)``, commented "Zero-debias approach"). Zero
  debiasing is exact only for a hidden state that starts at 0: the variance's initial 1 is divided too, so after
  ``k`` steps inference uses ``var_k + momentum^k / (1 - momentum^k)`` (99 after one step with momentum 0.99).
  See ``book/results/equinox-batchnorm-report.md``.

``running_stats()`` returns what inference normalises with: the running buffers in mode "ema", ``hidden / scale``
(computed as the source computes it) in mode "batch".
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from bnref.check.conformance import Adapter
from bnref.check.rules import RunningRule
from bnref.conventions import Convention

from . import Output

__all__ = ["EquinoxAdapter", "EquinoxEmaAdapter", "EquinoxBatchAdapter", "AXIS_NAME", "CONVENTIONS", "RULES"]

#: The name of the vmapped batch axis the layer reduces over.
AXIS_NAME = "batch"

#: What each mode is meant to compute, as ``equinox/nn/_batch_norm.py`` (0.13.8) writes it: eps 1e-5 inside the square
#: root, the biased two-pass batch variance fed to the running statistics, channels on axis 1 of the vmapped batch,
#: momentum 0.99 on the old value. Mode "ema" starts its buffers at 0 (``jnp.empty``, zeros in JAX) and lets the first
#: batch replace them; mode "batch" keeps a zero-debiased average (its comment: "Zero-debias approach") and reads 0 and
#: 1 before any step. Held to this, mode "batch" fails "running variance fed": its hidden variance starts at 1.
CONVENTIONS: dict[str, Convention] = {
    mode: Convention(
        name=f"equinox-{mode}",
        eps=1e-5,
        momentum=0.99,
        momentum_weights="old",
        running_var="biased",
        axis=1,
        init_mean=0.0,
        init_var=0.0 if mode == "ema" else 1.0,
    )
    for mode in ("ema", "batch")
}
#: The running-average rule of each mode.
RULES: dict[str, RunningRule] = {
    "ema": RunningRule("first-replaces", 1.0 - 0.99),
    "batch": RunningRule("debiased", 1.0 - 0.99),
}


class EquinoxAdapter(Adapter):
    """``equinox.nn.BatchNorm(C, "batch", mode=mode)`` under ``jax.vmap`` over the batch, jitted, NCHW."""

    layout = "NCHW"

    def __init__(self, mode: str) -> None:
        if mode not in ("ema", "batch"):
            raise ValueError(f"mode must be 'ema' or 'batch', got {mode!r}")
        self.mode = mode
        self.name = f"equinox-{mode}"
        self.convention, self.running_rule = CONVENTIONS[mode], RULES[mode]

    def versions(self) -> dict[str, str]:
        import equinox
        import jax

        return {"equinox": equinox.__version__, "jax": jax.__version__}

    def describe(self) -> str:
        import equinox
        import jax

        return (
            f"equinox {equinox.__version__}, jax {jax.__version__}: equinox.nn.BatchNorm(mode={self.mode!r}) "
            "under jax.vmap over the batch, layout NCHW, CPU"
        )

    def create(self, num_features: int, dtype: str) -> None:
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("float64 needs jax_enable_x64")
        self.eqx, self.jax, self.jnp, self.dtype = eqx, jax, jnp, jnp.dtype(dtype)
        if not hasattr(self, "_train"):

            def forward(bn: Any, state: Any, x: Any, inference: bool) -> Any:
                layer = functools.partial(bn, inference=inference)
                return jax.vmap(layer, axis_name=AXIS_NAME, in_axes=(0, None), out_axes=(0, None))(x, state)

            def grads(bn: Any, state: Any, x: Any, dy: Any) -> Any:
                def f(wb: Any, x_in: Any) -> Any:  # (y, new state)
                    return forward(eqx.tree_at(lambda m: (m.weight, m.bias), bn, wb), state, x_in, False)

                y, vjp, new_state = jax.vjp(f, (bn.weight, bn.bias), x, has_aux=True)
                return vjp(dy.astype(y.dtype)), new_state

            self._train = eqx.filter_jit(functools.partial(forward, inference=False))
            self._infer = eqx.filter_jit(functools.partial(forward, inference=True))
            self._grads = eqx.filter_jit(grads)
        self.bn, self.state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(num_features, AXIS_NAME, mode=self.mode)

    def _t(self, a: np.ndarray) -> Any:
        return self.jnp.asarray(np.asarray(a, np.float64 if self.dtype == np.float64 else np.float32), self.dtype)

    def _out(self, y: Any) -> Any:
        return Output(np.asarray(y.astype(self.jnp.float32)), "bfloat16") if y.dtype == self.jnp.bfloat16 else y

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        w, b = self.bn.weight, self.bn.bias
        new = (self.jnp.asarray(gamma, w.dtype), self.jnp.asarray(beta, b.dtype))
        self.bn = self.eqx.tree_at(lambda m: (m.weight, m.bias), self.bn, new)

    def train_forward(self, x: np.ndarray) -> Any:
        y, self.state = self._train(self.bn, self.state, self._t(x))
        return self._out(y)

    def infer_forward(self, x: np.ndarray) -> Any:
        return self._out(self._infer(self.bn, self.state, self._t(x))[0])

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "ema":
            mean, var = self.state.get(self.bn.ema_state_index)
            return np.asarray(mean, np.float64), np.asarray(var, np.float64)
        # mode "batch": what __call__ computes for inference (equinox/nn/_batch_norm.py, 0.13.8)
        counter = int(self.state.get(self.bn.batch_counter))
        hidden_mean, hidden_var = self.state.get(self.bn.batch_state_index)
        scale = 1.0 if counter == 0 else 1.0 - self.bn.momentum**counter
        return np.asarray(hidden_mean / scale, np.float64), np.asarray(hidden_var / scale, np.float64)

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        # a training step: the gradients, and the running statistics updated as train_forward updates them (in mode
        # "ema" the second step on normalises with the running statistics, so its gradients are not BN's)
        ((dgamma, dbeta), dx), self.state = self._grads(self.bn, self.state, self._t(x), self._t(dy))
        return dx, dgamma, dbeta


class EquinoxEmaAdapter(EquinoxAdapter):
    """``equinox.nn.BatchNorm(mode="ema")``: what an unspecified ``mode`` gives (``"legacy"``)."""

    def __init__(self) -> None:
        super().__init__("ema")


class EquinoxBatchAdapter(EquinoxAdapter):
    """``equinox.nn.BatchNorm(mode="batch")``: the mode Equinox recommends for new code."""

    def __init__(self) -> None:
        super().__init__("batch")
