"""PaddlePaddle ``paddle.nn.BatchNorm2D`` (survey pin: paddlepaddle 3.3.*, CPU wheel).

Read in ``paddle/nn/layer/norm.py`` of paddlepaddle 3.3.1 (``_BatchNormBase.__init__``, ``BatchNorm2D``):

* ``momentum=0.9, epsilon=1e-05, data_format='NCHW'``; weight 1, bias 0, ``_mean`` 0 and ``_variance`` 1, all created
  in ``paddle.get_default_dtype()`` (float32, or float32 when the default is float16);
* the docstring: ``moving_mean = moving_mean * momentum + mu_B * (1 - momentum)``, the same for the variance with
  ``sigma_B^2 = 1/m sum (x_i - mu_B)^2`` (the biased batch variance), normalisation ``(x - mu_B) / sqrt(sigma_B^2 +
  epsilon)``; ``forward`` calls ``paddle.nn.functional.batch_norm(..., training=self.training)``, so ``.train()``
  and ``.eval()`` switch between batch and running statistics (``use_global_stats=None``);
* ``BatchNorm2D`` takes 4-D inputs only (``_check_input_dim``), hence the layout NCHW here.

The CPU kernel registers float32 and float64 only (paddlepaddle 3.3.1: a float16 or bfloat16 input raises
"The kernel with key (CPU, ..., float16) of kernel `batch_norm` is not registered").
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from bnref.check.conformance import Adapter
from bnref.conventions import Convention

__all__ = ["PaddleAdapter", "PADDLE"]

#: What the docstring of ``paddle.nn.BatchNorm2D`` (paddlepaddle 3.3.1) states: eps 1e-5 inside the square root,
#: ``r = 0.9 r + 0.1 b`` (momentum on the old value) fed the biased batch variance, channels on axis 1.
PADDLE = Convention(name="paddle", eps=1e-5, momentum=0.9, momentum_weights="old", running_var="biased", axis=1)


class PaddleAdapter(Adapter):
    """``paddle.nn.BatchNorm2D`` with its default arguments, on the CPU, NCHW."""

    name = "paddle"
    layout = "NCHW"
    convention = PADDLE

    def versions(self) -> dict[str, str]:
        import paddle

        return {"paddlepaddle": paddle.__version__}

    def describe(self) -> str:
        import paddle

        return f"paddlepaddle {paddle.__version__}: paddle.nn.BatchNorm2D (defaults), layout NCHW, CPU"

    def create(self, num_features: int, dtype: str) -> None:
        import paddle

        paddle.set_device("cpu")
        self.paddle, self.dtype = paddle, dtype
        # parameters and running statistics in the default dtype: float64 for float64 inputs, else float32
        paddle.set_default_dtype("float64" if dtype == "float64" else "float32")
        self.bn = paddle.nn.BatchNorm2D(num_features)
        paddle.set_default_dtype("float32")

    def _t(self, a: np.ndarray) -> Any:
        t = self.paddle.to_tensor(np.asarray(a, np.float64 if self.dtype == "float64" else np.float32))
        return t if self.dtype in ("float32", "float64") else t.astype(self.dtype)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        dtype = np.float64 if self.dtype == "float64" else np.float32
        with self.paddle.no_grad():
            self.bn.weight.set_value(gamma.astype(dtype))
            self.bn.bias.set_value(beta.astype(dtype))

    def _forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self.bn.train() if training else self.bn.eval()
        with warnings.catch_warnings():  # "When training, we now always track global mean and variance."
            warnings.simplefilter("ignore")
            with self.paddle.no_grad():
                return self.bn(self._t(x)).numpy()

    def train_forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, True)

    def infer_forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, False)

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        # the buffers inference normalises with (``_mean``, ``_variance``: Paddle's own attribute names)
        return self.bn._mean.numpy().copy(), self.bn._variance.numpy().copy()

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        xt = self._t(x)
        xt.stop_gradient = False
        self.bn.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = self.bn(xt)
        dx, dgamma, dbeta = self.paddle.grad([y], [xt, self.bn.weight, self.bn.bias], grad_outputs=[self._t(dy)])
        return dx.numpy(), dgamma.numpy(), dbeta.numpy()
