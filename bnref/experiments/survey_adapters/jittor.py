"""Jittor ``jittor.nn.BatchNorm2d`` (survey pin: jittor 1.3.*, from the package registry; it compiles its C++ kernels
with the system's g++ on first use, about 4.5 minutes on 2 idle cores, and runs offline with ``use_mkl=0``,
``nvcc_path=""`` and a writable ``JITTOR_HOME``: the survey sets these). The compiled kernels are cached under
``JITTOR_HOME`` in a folder whose name hashes the installation's path, so a new environment compiles them again.

Read in ``jittor/nn.py`` of jittor 1.3.11.0 (``class BatchNorm``; ``BatchNorm3d = BatchNorm2d = BatchNorm1d =
BatchNorm``), the whole layer in Python:

* ``eps=1e-5, momentum=0.1``; weight 1, bias 0, ``running_mean`` 0 and ``running_var`` 1, all float32;
* training (``is_train``, set by ``Module.train()`` / ``eval()``): ``xmean = mean(x)``, ``x2mean = mean(x*x)``,
  ``xvar = (x2mean - xmean*xmean).maximum(0.0)`` (the one-pass variance, biased), then
  ``y = x * w + b`` with ``w = weight / sqrt(xvar + eps)`` and ``b = bias - xmean * w``;
* ``running_mean += (xmean - running_mean) * momentum``, the same for ``running_var`` with ``xvar`` (the biased
  variance): ``r = (1 - 0.1) r + 0.1 b``;
* inference: ``w = weight / sqrt(running_var + eps)``, ``b = bias - running_mean * w``, ``y = x * w + b``;
* every axis but 1 is reduced (``dims = [0] + list(range(2, x.ndim))``), hence the layout NCHW here.

No documentation page states these; the source is the specification.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bnref.check.conformance import Adapter
from bnref.conventions import Convention

from . import Output

__all__ = ["JittorAdapter", "JITTOR", "ENVIRONMENT"]

#: What ``jittor/nn.py`` (1.3.11.0) computes: eps 1e-5 inside the square root, ``r = 0.9 r + 0.1 b`` fed the biased
#: batch variance, channels on axis 1, the one-pass batch variance ``E[x^2] - E[x]^2`` clamped at 0.
JITTOR = Convention(
    name="jittor", eps=1e-5, momentum=0.1, momentum_weights="new", running_var="biased", axis=1, var_method="one-pass"
)

#: The environment Jittor needs to run offline on a CPU: no MKL download, no CUDA search (``jittor/compiler.py``
#: reads ``nvcc_path`` from the environment, ``jittor/compile_extern.py`` reads ``use_mkl``); ``JITTOR_HOME``, where
#: its compiled kernels are cached, is set by the survey to a folder of its cache.
ENVIRONMENT: dict[str, str] = {"use_mkl": "0", "nvcc_path": "", "use_cuda": "0"}


class JittorAdapter(Adapter):
    """``jittor.nn.BatchNorm2d`` with its default arguments, on the CPU, NCHW."""

    name = "jittor"
    layout = "NCHW"
    convention = JITTOR

    def versions(self) -> dict[str, str]:
        import jittor

        return {"jittor": jittor.__version__}

    def describe(self) -> str:
        import jittor

        return f"jittor {jittor.__version__}: jittor.nn.BatchNorm2d (defaults), layout NCHW, CPU"

    def create(self, num_features: int, dtype: str) -> None:
        for key, value in ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        import jittor as jt

        jt.flags.use_cuda = 0
        self.jt, self.dtype = jt, dtype
        self.bn = jt.nn.BatchNorm2d(num_features)  # parameters and running statistics float32 whatever the input

    def _t(self, a: np.ndarray) -> Any:
        t = self.jt.array(np.asarray(a, np.float64 if self.dtype == "float64" else np.float32))
        return t if self.dtype in ("float32", "float64") else t.cast(self.dtype)

    def _out(self, y: Any) -> Any:
        return Output(y.float32().numpy(), "bfloat16") if str(y.dtype) == "bfloat16" else y.numpy()

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        self.bn.weight.assign(self.jt.array(gamma.astype(np.float32)))
        self.bn.bias.assign(self.jt.array(beta.astype(np.float32)))

    def train_forward(self, x: np.ndarray) -> Any:
        self.bn.train()
        with self.jt.no_grad():
            return self._out(self.bn(self._t(x)))

    def infer_forward(self, x: np.ndarray) -> Any:
        self.bn.eval()
        with self.jt.no_grad():
            return self._out(self.bn(self._t(x)))

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bn.running_mean.numpy().copy(), self.bn.running_var.numpy().copy()

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        self.bn.train()
        xt = self._t(x)
        loss = (self.bn(xt) * self._t(dy)).sum()
        dx, dgamma, dbeta = self.jt.grad(loss, [xt, self.bn.weight, self.bn.bias])
        return dx.numpy(), dgamma.numpy(), dbeta.numpy()
