"""Conformance adapters for five frameworks the project does not install: PaddlePaddle, MindSpore, Jittor, Haiku
and Equinox (one module each), for the survey ``python -m bnref.experiments.survey``.

Each module defines an ``Adapter`` subclass (``bnref.check.conformance.Adapter``) that imports its framework lazily,
inside its methods, so that every module here imports with NumPy alone; the survey runs each adapter in a virtual
environment that holds its framework (``bnref.experiments.survey``). Each adapter drives the layer as its
documentation says a user would, with the layer's default arguments, and returns from ``running_stats()`` the
statistics that inference uses. The comments cite the file and version of the framework's source each detail was
read from.

``Output`` carries a result whose type NumPy lacks (bfloat16) to the conformance tool: its values as float64 and its
dtype by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Output", "ADAPTERS"]

#: The adapters by name: ``"module:Class"``, where the module is relative to this package.
ADAPTERS: dict[str, str] = {
    "paddle": "paddle:PaddleAdapter",
    "mindspore": "mindspore:MindSporeAdapter",
    "jittor": "jittor:JittorAdapter",
    "haiku": "haiku:HaikuAdapter",
    "equinox-ema": "equinox:EquinoxEmaAdapter",
    "equinox-batch": "equinox:EquinoxBatchAdapter",
}


class Output:
    """An adapter's output as the conformance tool reads it: ``np.asarray(out)`` gives the values, ``out.dtype`` the
    framework's dtype by name (``"bfloat16"``, which NumPy has no type for).

    Parameters
    ----------
    values : array-like
        The values, exactly representable in float64 (a bfloat16 tensor cast to float32 by its framework).
    dtype : str
        The dtype the framework returned, as a NumPy-style name.
    """

    def __init__(self, values: Any, dtype: str) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.dtype = dtype
        self.shape = self.values.shape

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)

    def __repr__(self) -> str:
        return f"Output(shape={self.shape}, dtype={self.dtype})"
