"""The adapter contract: how every check of ``bnref.check`` drives one Batch Normalization implementation.

``Adapter`` is the one driver interface. The conformance tool (``bnref.check.conformance``) checks any adapter; the
agreement tables (``bnref.check.agreement``) and the precision sweep (``bnref.check.precision``) drive the
frameworks through the shipped adapters (``bnref.check.adapters``). The functions below call an adapter and hold
what it returns to the contract: an adapter that breaks it raises ``ContractError``, which names the rule broken
and what was returned, so that the tools can report it as one line instead of failing somewhere inside.

NumPy only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from bnref.check.rules import RunningRule
from bnref.conventions import Convention

__all__ = [
    "Adapter",
    "ContractError",
    "NotApplicable",
    "REQUIRED",
    "optional",
    "as_float64",
    "dtype_name",
    "error_text",
    "validate",
    "invoke",
    "call_forward",
    "call_running_stats",
    "call_backward",
    "call_create",
]

#: The methods every adapter must have.
REQUIRED: tuple[str, ...] = ("create", "train_forward", "infer_forward", "running_stats")


class Adapter:
    """How the checks drive one BN implementation. Subclass it and fill in four methods (three more are optional).

    Attributes
    ----------
    name : str
        Shown in the report.
    layout : str or None
        The input layout as letters, ``"N"`` for the batch, ``"C"`` for the channels, any other letters for
        the remaining axes: ``"NC"``, ``"NCL"``, ``"NCHW"``, ``"NHWC"``. None: the channel axis is inferred
        by probing inputs of ``ndim`` dimensions.
    ndim : int
        The rank of the inputs when ``layout`` is None.
    convention : Convention or None
        The convention the implementation claims (eps, running-average weight, running-variance bias, initial
        statistics). Given, each inferred convention is a PASS/FAIL line against it; None, an INFO line.
    running_rule : RunningRule or None
        The running-average rule claimed, where ``convention`` cannot say it (a zero-debiased average, a first
        batch that replaces the initial value): a ``bnref.check.rules.RunningRule``. None: the rule of
        ``convention`` (a constant weight, or ``1/k`` for ``momentum=None``).

    Methods
    -------
    create(num_features, dtype)
        Make a fresh layer (running statistics at their initial values, default parameters) for ``num_features``
        channels and inputs of ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"``). Raise any
        exception for a dtype the implementation does not take.
    train_forward(x) -> y
        Training mode: normalise with the batch statistics and update the running statistics. ``x`` is a float64
        NumPy array whose values are exact in ``dtype``; convert it to your own type. ``y`` has ``x``'s shape and a
        floating-point dtype; return it as a NumPy, torch, TensorFlow or JAX array.
    infer_forward(x) -> y
        Inference mode: normalise with the running statistics.
    running_stats() -> (mean, var)
        The running estimates **that inference uses**, C values each. Where an implementation stores something
        else (Haiku and TensorFlow keep a biased average and divide it by ``1 - decay^k`` when it is read;
        Equinox's ``mode="batch"`` does the same at inference), return what inference normalises with.
    set_params(gamma, beta)  (optional)
        Set the scale and shift, float64 arrays of shape (C,) exact in float32.
    backward(x, dy) -> (dx, dgamma, dbeta)  (optional)
        The gradients of a training-mode forward at ``x`` for the upstream gradient ``dy``.
    train_step(x, dy) -> (y, dx, dgamma, dbeta)  (optional)
        One training step and its gradients from a single forward pass (it updates the running statistics once).
        The agreement tables drive the shipped adapters with it; ``backward`` can be ``train_step(x, dy)[1:]``.
    describe() -> str
        A header line: the framework, its version and backend, the layer.
    """

    name: str = "adapter"
    layout: str | None = "NC"
    ndim: int = 2
    convention: Convention | None = None
    running_rule: RunningRule | None = None

    def describe(self) -> str:
        return self.name

    def create(self, num_features: int, dtype: str) -> None:
        raise NotImplementedError

    def train_forward(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def infer_forward(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def running_stats(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        raise NotImplementedError

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def train_step(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any, Any]:
        raise NotImplementedError


class NotApplicable(ValueError):
    """An implementation cannot express a case: a convention it lacks, a layout or dtype it has no type for."""


class ContractError(Exception):
    """An adapter broke its contract.

    Attributes
    ----------
    call : str
        The call, e.g. ``"train_forward(x)"``.
    contract : str
        The rule it broke, e.g. ``"returns y of x's shape (32, 5)"``.
    got : str
        What it did instead, e.g. ``"returned shape (32, 4)"`` or ``"raised ValueError: ..."``.
    raised : bool
        Whether the adapter raised an exception (rather than returning something that breaks the contract).
    """

    def __init__(self, call: str, contract: str, got: str, raised: bool = False) -> None:
        self.call, self.contract, self.got, self.raised = call, contract, got, raised
        super().__init__(f"{call} {got}; the contract: {contract}")


def optional(adapter: object, method: str) -> Callable | None:
    """The adapter's ``method`` if it provides one (an ``Adapter`` subclass must override the stub)."""
    fn = getattr(adapter, method, None)
    if not callable(fn):
        return None
    if isinstance(adapter, Adapter) and getattr(type(adapter), method, None) is getattr(Adapter, method):
        return None
    return fn


_FLOAT_NAMES = ("bfloat16", "float16", "float32", "float64")
#: Other spellings of the floating-point types (torch.half, "Float16" of MindSpore, ...), lower-cased.
_ALIASES = {"half": "float16", "double": "float64", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def dtype_name(a: object) -> str:
    """The dtype of an array of any framework as NumPy names it: ``"float32"``, ``"bfloat16"``, ``"int64"``, ...

    Reads ``a.dtype`` (or NumPy's for a list); ``torch.float16``, ``tf.float16``, MindSpore's ``Float16`` and
    Paddle's ``paddle.float16`` all give ``"float16"``.
    """
    dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    text = str(dtype).lower().replace("dtype", "")
    found = re.search(r"bfloat16|float16|float32|float64|u?int(8|16|32|64)|bool|complex(64|128)", text)
    if found:
        return found.group(0)
    for alias, name in _ALIASES.items():
        if re.search(rf"\b{alias}\b", text):
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def as_float64(a: object) -> np.ndarray:
    """Any framework's array as a float64 NumPy array, a copy (torch tensors through ``.detach()``)."""
    if hasattr(a, "detach"):  # torch.Tensor (bfloat16 has no NumPy type)
        a = a.detach().to("cpu").double().numpy()
    elif callable(getattr(a, "numpy", None)):  # a TensorFlow tensor: its __array__ takes no copy argument
        a = a.numpy()
    return np.array(a, dtype=np.float64)


def error_text(err: BaseException) -> str:
    """``"ValueError: first line of the message"`` (100 characters at most)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:100]}"


def _describe(value: object) -> str:
    """What was returned, in a few words: its type and, for an array, its shape and dtype."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)}, dtype {dtype_name(value)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def validate(value: object, call: str, shape: tuple[int, ...] | None = None, size: int | None = None) -> np.ndarray:
    """``value`` as float64 if it is a real floating-point array of ``shape`` (or of ``size`` values), else
    ``ContractError`` naming the rule and what ``value`` was."""
    want = f"an array of shape {shape}" if shape is not None else f"an array of {size} values"
    if value is None:
        raise ContractError(call, f"returns {want}", "returned None")
    try:
        name = dtype_name(value)
    except Exception:  # an object NumPy cannot read as an array
        raise ContractError(call, f"returns {want}", f"returned {_describe(value)}") from None
    if name not in _FLOAT_NAMES:
        raise ContractError(call, f"returns {want} of a floating-point dtype", f"returned dtype {name}")
    try:
        out = as_float64(value)
    except Exception as err:
        raise ContractError(call, f"returns {want}", f"returned {_describe(value)} ({error_text(err)})") from None
    if shape is not None and out.shape != tuple(shape):
        raise ContractError(call, f"returns {want}", f"returned shape {out.shape}")
    if size is not None and out.size != size:
        raise ContractError(call, f"returns {want}", f"returned shape {out.shape}")
    return out if size is None else out.reshape(size)


def invoke(adapter: object, method: str, call: str, *args: Any) -> Any:
    """``adapter.<method>(*args)``; an exception it raises becomes a ``ContractError`` (``raised=True``)."""
    try:
        return getattr(adapter, method)(*args)
    except Exception as err:
        raise ContractError(call, "raises nothing on a valid input", f"raised {error_text(err)}", True) from err


def call_create(adapter: object, channels: int, dtype: str) -> None:
    """``adapter.create(channels, dtype)``; an exception becomes a ``ContractError``."""
    invoke(adapter, "create", f"create({channels}, {dtype!r})", channels, dtype)


def call_forward(adapter: object, method: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    """``adapter.train_forward(x)`` or ``infer_forward(x)``: y as float64 (x's shape, real floating point), and
    y's dtype name."""
    call = f"{method}(x of shape {x.shape})"
    y = invoke(adapter, method, call, x)
    return validate(y, call, shape=x.shape), dtype_name(y)


def call_running_stats(adapter: object, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``adapter.running_stats()`` as two float64 arrays of shape (C,)."""
    call = "running_stats()"
    pair = invoke(adapter, "running_stats", call)
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ContractError(call, "returns (mean, var)", f"returned {_describe(pair)}")
    return validate(pair[0], call + "[0]", size=channels), validate(pair[1], call + "[1]", size=channels)


def call_backward(
    adapter: object, x: np.ndarray, dy: np.ndarray, channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``adapter.backward(x, dy)`` as float64 ``dx`` (x's shape), ``dgamma`` and ``dbeta`` (shape (C,))."""
    call = f"backward(x, dy of shape {x.shape})"
    grads = invoke(adapter, "backward", call, x, dy)
    if not isinstance(grads, tuple | list) or len(grads) != 3:
        raise ContractError(call, "returns (dx, dgamma, dbeta)", f"returned {_describe(grads)}")
    dx = validate(grads[0], call + "[0]", shape=x.shape)
    return dx, validate(grads[1], call + "[1]", size=channels), validate(grads[2], call + "[2]", size=channels)
