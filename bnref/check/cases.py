"""The cases every implementation is compared on, and their data: ``Case``, ``make_batches``, the input layouts.

A ``Case`` names a batch shape, its channel axis, a dtype, a convention (or each framework's own), the number of
training steps and the data's ``|mean|/std``; ``make_batches`` draws its batches once, rounded to the case dtype,
so that every implementation and the float64 truth see the same values. The layout helpers write a case's shape as
letters (``"NCHW"``, ``"NHWC"``) and move (m, C) probe data in and out of a layout (``bnref.check.probes``).

NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bnref.check.contract import NotApplicable
from bnref.conventions import KERAS, PYTORCH, Convention, get_convention
from bnref.testing import DTYPES, compute_dtype

__all__ = [
    "Case",
    "NotApplicable",
    "target_convention",
    "framework_convention",
    "round_to",
    "Batches",
    "make_batches",
    "layout_for",
    "layout_shape",
    "to_layout",
    "to_2d",
]

_DEFAULT = "default"


@dataclass(frozen=True)
class Case:
    """One agreement experiment.

    Attributes
    ----------
    shape : tuple of int
        Batch shape, e.g. ``(128, 3)``, ``(8, 3, 5)``, ``(4, 3, 4, 4)`` (NCHW) or ``(4, 4, 4, 3)`` (NHWC).
    axis : int
        The channel axis of ``shape``: 1 for (N, C, ...), -1 for channels last. The torch rows move it to
        dim 1 (``movedim``), as a PyTorch user would; the Keras layers get it as their ``axis``.
    dtype : {"float64", "float32", "float16", "bfloat16"}
        Dtype of the inputs ``x`` and ``dy``. Parameters and running statistics are float32 for half
        precision (the frameworks' mixed-precision practice), the input dtype otherwise.
    convention : str or None
        None: each framework runs its own defaults (torch ``PYTORCH``, Keras ``KERAS``). A name from
        ``bnref.conventions``: every framework is configured to follow that convention's eps and running
        average weight as far as it can (Keras cannot express ``momentum=None``: its rows say so); each keeps
        its own running-variance bias, which is fixed in the framework.
    mode : {"train", "train+inference"}
        ``steps`` training steps, then (for "train+inference") an inference pass on a fresh batch.
    steps : int
        Number of training steps k, each with a fresh batch.
    seed : int
    loc, scale : float
        The data are ``x = loc + scale * z``, z standard normal, so ``|mean|/std ~ |loc|/scale``.
    eps : float or None
        Override the convention's eps (same meaning in every framework).
    momentum : float, None or "default"
        Override the momentum of ``convention`` (in that convention's own meaning); needs a convention.
    """

    shape: tuple[int, ...]
    axis: int = 1
    dtype: str = "float32"
    convention: str | None = None
    mode: Literal["train", "train+inference"] = "train+inference"
    steps: int = 1
    seed: int = 0
    loc: float = 0.0
    scale: float = 1.0
    eps: float | None = None
    momentum: float | None | str = _DEFAULT

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise ValueError(f"shape must have at least 2 positive dimensions, got {self.shape}")
        if not -len(self.shape) <= self.axis < len(self.shape):
            raise ValueError(f"axis {self.axis} is out of range for shape {self.shape}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.mode not in ("train", "train+inference"):
            raise ValueError(f"mode must be 'train' or 'train+inference', got {self.mode!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.m < 2:
            raise ValueError(
                f"shape {self.shape} has {self.m} value per channel; the reference needs >= 2 in training "
                "(a batch of one value per channel is shown by the conventions tests instead)"
            )
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if self.convention is not None:
            get_convention(self.convention)
        elif self.momentum != _DEFAULT:
            raise ValueError(
                "a momentum override needs a convention to say what momentum means (PyTorch: weight of the "
                "new value; Keras: weight of the old one); set convention='pytorch' or 'keras'"
            )
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")

    @property
    def channel_axis(self) -> int:
        return self.axis % len(self.shape)

    @property
    def channels(self) -> int:
        return self.shape[self.channel_axis]

    @property
    def m(self) -> int:
        """Values per channel in one batch."""
        return math.prod(self.shape) // self.shape[self.channel_axis]

    @property
    def layout(self) -> str:
        """The shape as layout letters: "NC", "NCL", "NCHW", "NHWC", ... (see ``layout_for``)."""
        return layout_for(len(self.shape), self.channel_axis)

    @property
    def label(self) -> str:
        conv = self.convention or "native"
        parts = [f"{self.shape} axis={self.axis}", self.dtype, f"k={self.steps}", conv]
        if self.loc:
            parts.append(f"|mean|/std~{abs(self.loc) / self.scale:g}")
        return ", ".join(parts)


def target_convention(case: Case) -> Convention | None:
    """The convention of ``case`` with its eps and momentum overrides (None for each framework's own)."""
    if case.convention is None:
        return None
    conv = get_convention(case.convention)
    changes: dict[str, Any] = {}
    if case.eps is not None:
        changes["eps"] = case.eps
    if case.momentum != _DEFAULT:
        changes["momentum"] = case.momentum
    return conv.replace(**changes) if changes else conv


def new_value_weight_rule(conv: Convention) -> float | None:
    """The weight of the new value (constant), or None for the cumulative average."""
    return None if conv.momentum is None else conv.new_value_weight(1)


def framework_convention(case: Case, framework: str) -> Convention:
    """The convention ``framework`` ("torch" or "keras") runs under in ``case``.

    For a native case (``case.convention is None``) each framework runs its own defaults (``PYTORCH``,
    ``KERAS``, with ``case.eps`` if given). For a shared convention each is configured to follow its eps and
    running-average weight, keeping its own running-variance bias (unbiased / biased), which is fixed in the
    framework. The NumPy rows run the case's convention itself (see ``run_case``).

    Raises
    ------
    NotApplicable
        Keras asked to follow a cumulative average (PyTorch's ``momentum=None``), which it cannot express.
    ValueError
        An unknown framework.
    """
    if framework not in ("torch", "keras"):
        raise ValueError(f"framework must be 'torch' or 'keras'; got {framework!r}")
    base = PYTORCH if framework == "torch" else KERAS
    target = target_convention(case)
    if target is None:
        return base.replace(eps=case.eps) if case.eps is not None else base
    w = new_value_weight_rule(target)
    if framework == "torch":
        momentum = w  # PyTorch's momentum is the new value's weight; None = cumulative
    else:
        if w is None:
            raise NotApplicable("Keras has no cumulative average (momentum=None)")
        momentum = 1.0 - w  # Keras' momentum is the old value's weight
    return base.replace(name=f"{base.name}~{target.name}", eps=target.eps, momentum=momentum)


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to ``dtype`` (round to nearest even) and return them as float64."""
    if dtype == "bfloat16":
        bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.asarray(a).astype(dtype).astype(np.float64)


@dataclass(frozen=True)
class Batches:
    """The data of one case, drawn once and fed to every implementation.

    All arrays are float64 holding values representable in the case dtype (parameters: in the compute
    dtype), so that each implementation receives exactly the values the float64 truth uses.

    Attributes
    ----------
    xs, dys : list of ndarray, shape ``case.shape``
        The training batches and the upstream gradients, one per step.
    x_inference : ndarray, shape ``case.shape``
        The batch of the inference pass.
    gamma, beta : ndarray, shape (C,)
    """

    xs: list[np.ndarray]
    dys: list[np.ndarray]
    x_inference: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray


def make_batches(case: Case) -> Batches:
    """Draw the batches of ``case`` from ``numpy.random.default_rng(case.seed)``.

    ``x = loc + scale * z`` and ``dy = z'`` with ``z, z'`` standard normal, ``gamma ~ U(0.5, 1.5)``,
    ``beta ~ N(0, 0.5^2)``, each rounded to its dtype (round to nearest even).
    """
    rng = np.random.default_rng(case.seed)
    pdtype = compute_dtype(case.dtype)
    c = case.channels
    gamma = round_to(rng.uniform(0.5, 1.5, c), pdtype)
    beta = round_to(rng.normal(0.0, 0.5, c), pdtype)

    def batch() -> np.ndarray:
        return round_to(case.loc + case.scale * rng.standard_normal(case.shape), case.dtype)

    xs, dys = [], []
    for _ in range(case.steps):
        xs.append(batch())
        dys.append(round_to(rng.standard_normal(case.shape), case.dtype))
    return Batches(xs, dys, batch(), gamma, beta)


# ----------------------------------------------------------------------------------------------------
# Layouts: probe data are built as (m, C) arrays, one column per channel, and laid out as an adapter wants
# ----------------------------------------------------------------------------------------------------


def layout_for(ndim: int, axis: int) -> str:
    """The layout string of an input of ``ndim`` dims with channels on ``axis``: NC, NCL / NLC, NCHW / NHWC, ..."""
    axis = axis % ndim
    letters = iter({2: "", 3: "L", 4: "HW", 5: "DHW"}.get(ndim, "ABDEFGHIJKLMOPQRSTUVWXYZ"[: ndim - 2]))
    return "".join("N" if d == 0 else "C" if d == axis else next(letters) for d in range(ndim))


def layout_shape(layout: str, m: int, channels: int) -> tuple[int, ...]:
    """The shape of ``layout`` holding ``m`` values per channel: each axis but N and C of size 2 (1 if m is odd)."""
    others = len(layout) - 2
    side = 2 if m % 2**others == 0 else 1
    sizes = {"N": m // side**others, "C": channels}
    return tuple(sizes.get(ch, side) for ch in layout)


def to_layout(a2d: np.ndarray, layout: str) -> np.ndarray:
    """An (m, C) array as an array of ``layout`` (the inverse of ``to_2d``)."""
    m, c = a2d.shape
    shape = layout_shape(layout, m, c)
    axis = layout.index("C")
    last = tuple(n for d, n in enumerate(shape) if d != axis) + (c,)
    return np.moveaxis(a2d.reshape(last), -1, axis)


def to_2d(a: np.ndarray, axis: int) -> np.ndarray:
    """An array with channels on ``axis`` as (m, C), one column per channel."""
    a = np.asarray(a)
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])
