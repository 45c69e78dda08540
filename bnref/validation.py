"""Input checks shared by every module of the oracle. Internal: not part of bnref's public API.

``reference``, ``normalization``, ``batch_variants``, ``folding``, ``finite_differences``, ``conventions``,
``testing`` and ``records`` check their arguments here, so that one kind of mistake gives one kind of error,
with one kind of message, wherever it is made. The errors follow NumPy and the frameworks:

* ``TypeError`` for an argument of the wrong type: a string, boolean or complex array where real numbers
  belong, an integer array where floating point is needed, a float where a count or an axis belongs,
  ``True`` for ``eps`` (a bool is not a number here), a cache returned by another forward pass, a NumPy
  masked array (``np.asarray`` would drop its mask without a word);
* ``ValueError`` for a value of the right type that is wrong: a shape, an axis out of range, a batch of one
  value per channel in training, a non-finite value, a negative variance, an ``eps`` that is not positive.

Every message names the argument, says what it must be and ends with what it got:
``"<name> must <requirement>; got <what>"``. NumPy is the only import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------


def is_int(value: object) -> bool:
    """True for a Python or NumPy integer; False for a bool (an ``int`` subclass, but not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int``: ``TypeError`` if it is not an integer, ``ValueError`` if below ``minimum``."""
    if not is_int(value):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_real(value: object, name: str) -> float:
    """``value`` as a ``float``: a Python or NumPy real number, or a 0-d real array; ``TypeError`` otherwise."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    return float(value)


def check_positive(value: object, name: str, why: str = "") -> float:
    """A real number ``> 0`` and finite; ``why`` (e.g. "it keeps sqrt(var + eps) > 0") explains the rule."""
    value = check_real(value, name)
    if not (value > 0 and math.isfinite(value)):
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be a positive finite number{reason}; got {value!r}")
    return value


def check_eps(eps: object) -> float:
    """The stabiliser inside ``sqrt(var + eps)``: a real number, positive and finite."""
    return check_positive(eps, "eps", "it keeps sqrt(var + eps) > 0")


def check_unit_interval(value: object, name: str) -> float:
    """A real number in ``[0, 1]`` (a momentum, the weight of a new value)."""
    value = check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}")
    return value


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """One of the strings ``choices``: ``TypeError`` for anything but a string, ``ValueError`` naming them."""
    listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {listed}; got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{name} must be {listed}; got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------------------------------


def as_array(a: object, name: str) -> np.ndarray:
    """``np.asarray(a)``, refusing a masked array, whose mask ``np.asarray`` would drop."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be a plain array; got a NumPy masked array, whose mask would be ignored. "
            f"Pass {name}.compressed() (the unmasked values) or {name}.filled(value)"
        )
    return np.asarray(a)


def as_float_array(x: object, name: str) -> np.ndarray:
    """An array of real floating-point numbers (float16, float32, float64), not copied."""
    arr = as_array(x, name)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a real floating-point array (float16, float32 or float64); got dtype {arr.dtype}. "
            f"Convert it explicitly, e.g. {name}.astype(np.float32)"
        )
    return arr


def as_real_array(a: object, name: str) -> np.ndarray:
    """An array of real numbers, integers included (not bool, complex, strings or objects), not copied."""
    arr = as_array(a, name)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def format_indices(indices: np.ndarray, limit: int = 10) -> str:
    """``[0, 3, 7]``, or the first ``limit`` and how many more."""
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    more = f" and {indices.size - limit} more" if indices.size > limit else ""
    return f"[{shown}]{more}"


def check_finite(a: np.ndarray, name: str, where: str = "flat positions") -> None:
    """``ValueError`` naming the (flat) indices of ``a`` that hold nan or inf."""
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name} has non-finite values (nan or inf) at {where} {format_indices(bad)}")


def check_non_negative(a: np.ndarray, name: str, where: str = "channels") -> None:
    """``ValueError`` naming the (flat) indices of ``a`` that are negative (a variance, say)."""
    negative = np.flatnonzero(a < 0)
    if negative.size:
        raise ValueError(f"{name} must be >= 0; it is negative at {where} {format_indices(negative)}")


def as_param(p: object, name: str, shape: tuple[int, ...], dtype: np.dtype | None, what: str) -> np.ndarray:
    """A parameter of exactly ``shape``, real and finite, as a new array in ``dtype`` (None: its own).

    ``what`` completes the shape message, e.g. "to match the 3 channels on axis 1 of x with shape (4, 3)".
    The copy keeps anything computed from the parameter from aliasing the caller's array.
    """
    arr = as_real_array(p, name)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} {what}; got shape {arr.shape}")
    arr = np.array(arr, dtype=dtype)
    check_finite(arr, name, "channels" if arr.ndim == 1 else "flat positions")
    return arr


def channel_param(p: object, name: str, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> np.ndarray:
    """A per-channel parameter of an input of ``shape`` (channels on ``axis``): ``as_param`` of shape ``(C,)``."""
    c = shape[axis]
    return as_param(p, name, (c,), dtype, f"to match the {c} channels on axis {axis} of x with shape {shape}")


# ----------------------------------------------------------------------------------------------------
# Channels: the axis, the axes a per-channel statistic reduces, the broadcast shape
# ----------------------------------------------------------------------------------------------------


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32 (as the frameworks do); float32 and float64 in their own dtype."""
    return np.result_type(dtype, np.float32)


def channel_axis(shape: tuple[int, ...], axis: object, name: str = "axis") -> int:
    """The channel axis of an input of ``shape`` as an index ``0 <= axis < ndim``, after checking it."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (batch and channels); got shape {shape}")
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of range for an input with {ndim} dimensions {shape}")
    return axis % ndim


def reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces: all but the channel axis."""
    return tuple(d for d in range(ndim) if d != axis)


def broadcast_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel vector against x: ``(1, C, 1, 1)`` for NCHW."""
    return tuple(n if d == axis else 1 for d, n in enumerate(shape))


def values_per_channel(shape: tuple[int, ...], axis: int) -> int:
    """``m``: the number of values each channel holds, the product of all axes but the channel axis."""
    return math.prod(n for d, n in enumerate(shape) if d != axis)


def raise_non_finite(values: np.ndarray, axes: tuple[int, ...], bad: np.ndarray, what: str) -> None:
    """Explain the non-finite statistics of channels ``bad``: non-finite values in ``what``, or overflow."""
    with_non_finite_values = np.flatnonzero(~np.all(np.isfinite(values), axis=axes))
    if with_non_finite_values.size:
        raise ValueError(
            f"{what} has non-finite values (nan or inf) in channels {format_indices(with_non_finite_values)}; "
            "pass check_finite=False to let them propagate as the frameworks do"
        )
    raise ValueError(
        f"the statistics of channels {format_indices(bad)} overflow in {values.dtype} although {what} is finite; "
        "rescale the input or compute in float64"
    )


def check_finite_channels(values: np.ndarray, axes: tuple[int, ...], what: str) -> None:
    """``ValueError`` naming the channels (the axis not in ``axes``) where ``values`` holds nan or inf."""
    bad = np.flatnonzero(~np.all(np.isfinite(values), axis=axes))
    if bad.size:
        raise_non_finite(values, axes, bad, what)


# ----------------------------------------------------------------------------------------------------
# Backward passes: the cache and the upstream gradient
# ----------------------------------------------------------------------------------------------------


def check_cache(cache: object, cls: type, forward: str) -> None:
    """``TypeError`` unless ``cache`` is the ``cls`` that ``forward`` returns."""
    if not isinstance(cache, cls):
        raise TypeError(f"cache must be the {cls.__name__} returned by {forward}; got {type(cache).__name__}")


def as_dy(dy: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The upstream gradient: floating point, of the forward input's ``shape``, in the compute ``dtype``."""
    dy = as_float_array(dy, "dy")
    if dy.shape != shape:
        raise ValueError(f"dy must have the forward input's shape {shape}; got {dy.shape}")
    return dy.astype(dtype, copy=False)
