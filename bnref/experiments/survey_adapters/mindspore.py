"""MindSpore ``mindspore.nn.BatchNorm2d`` (survey pin: mindspore 2.10.*, CPU wheel, NumPy 1.26 beside it).

Read in ``mindspore/nn/layer/normalization.py`` of mindspore 2.10.0 (``_BatchNorm.__init__``, ``BatchNorm2d``):

* ``eps=1e-5, momentum=0.9``; gamma ``'ones'``, beta ``'zeros'``, ``moving_mean_init='zeros'``,
  ``moving_var_init='ones'``, parameters float32 (``dtype=mstype.float32``); ``data_format='NCHW'`` (NHWC on GPU
  only);
* the Note of ``BatchNorm2d``: ``moving_mean = moving_mean * momentum + mu_B * (1 - momentum)``, the same for
  ``moving_var`` with "``sigma^2_B``, the observed variance of each batch" (which variance, biased or unbiased, it
  does not say); ``__init__`` passes ``momentum = 1.0 - momentum`` (0.1) to ``ops.BatchNorm(is_training=True)``,
  whose docstring (``mindspore/ops/operations/manually_defined/ops_def.py``) states ``new_running_mean = (1 -
  momentum) * running_mean + momentum * current_mean``;
* ``construct`` normalises with the batch statistics when ``self.training`` (``set_train(True)``), with the moving
  ones otherwise (``use_batch_statistics=None``); a warning in the docstring announces that the default momentum
  will become 0.1 (PyTorch's meaning) "after version 2.9.0": in 2.10.0 it is still 0.9 on the old value;
* ``ops.BatchNorm`` takes float16 and float32 inputs ("Supported types: float16, float32"); bfloat16 raises
  TypeError on the CPU.

Run in PyNative mode (MindSpore 2.x's default) on the CPU; gradients through ``mindspore.grad``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnref.check.conformance import Adapter
from bnref.conventions import Convention

__all__ = ["MindSporeAdapter", "MINDSPORE"]

#: What the documentation of ``mindspore.nn.BatchNorm2d`` (2.10.0) states: eps 1e-5, ``r = 0.9 r + 0.1 b`` (momentum on
#: the old value), channels on axis 1. Which batch variance feeds ``moving_var`` it leaves open; the survey measures it
#: (unbiased, the reading held here, which is PyTorch's and the paper's).
MINDSPORE = Convention(name="mindspore", eps=1e-5, momentum=0.9, momentum_weights="old", running_var="unbiased", axis=1)


class MindSporeAdapter(Adapter):
    """``mindspore.nn.BatchNorm2d`` with its default arguments, PyNative mode, CPU, NCHW."""

    name = "mindspore"
    layout = "NCHW"
    convention = MINDSPORE

    def versions(self) -> dict[str, str]:
        import mindspore

        return {"mindspore": mindspore.__version__}

    def describe(self) -> str:
        import mindspore

        return (
            f"mindspore {mindspore.__version__}: mindspore.nn.BatchNorm2d (defaults), PyNative mode, layout NCHW, CPU"
        )

    def create(self, num_features: int, dtype: str) -> None:
        import mindspore as ms

        if not hasattr(self, "ms"):
            ms.set_context(mode=ms.PYNATIVE_MODE)
            ms.set_device("CPU")
        self.ms, self.dtype = ms, dtype
        self.bn = ms.nn.BatchNorm2d(num_features)

    def _t(self, a: np.ndarray) -> Any:
        # any other dtype than float16 / float32 reaches ops.BatchNorm, whose TypeError the report shows
        return self.ms.Tensor(np.asarray(a, np.float64)).astype(getattr(self.ms, self.dtype))

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        self.bn.gamma.set_data(self.ms.Tensor(gamma.astype(np.float32)))
        self.bn.beta.set_data(self.ms.Tensor(beta.astype(np.float32)))

    def train_forward(self, x: np.ndarray) -> np.ndarray:
        self.bn.set_train(True)
        return self.bn(self._t(x)).asnumpy()

    def infer_forward(self, x: np.ndarray) -> np.ndarray:
        self.bn.set_train(False)
        return self.bn(self._t(x)).asnumpy()

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bn.moving_mean.asnumpy().copy(), self.bn.moving_variance.asnumpy().copy()

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        self.bn.set_train(True)
        dyt = self._t(dy)

        def loss(xt: Any) -> Any:
            return (self.bn(xt) * dyt).sum()

        dx, (dgamma, dbeta) = self.ms.grad(loss, grad_position=0, weights=self.bn.trainable_params())(self._t(x))
        return dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()
