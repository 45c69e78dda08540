"""The article's MNIST model, corrected, in Keras 3 and in PyTorch.

The network (the article's ``simple_model``) takes 784 pixel values in [0, 1] and is

* ``placement="after"`` (the article): Dense 64 ReLU -> BN -> Dense 32 ReLU -> BN -> Dense 10 softmax;
* ``placement="before"`` (Ioffe & Szegedy 2015, section 3.2): Dense 64 without bias -> BN -> ReLU ->
  Dense 32 without bias -> BN -> ReLU -> Dense 10 softmax. The bias is dropped because BN subtracts
  the batch mean, which cancels any constant added before it; BN's beta takes over its role;
* ``bn="none"``: Dense 64 ReLU -> Dense 32 ReLU -> Dense 10 softmax. Without BN there is nothing to
  place, so both placements give this same network (biases kept).

``bn`` chooses the normalisation layer: ``"native"`` (``keras.layers.BatchNormalization`` /
``torch.nn.BatchNorm1d``, each with its framework's defaults: eps 1e-3 and momentum 0.99 in Keras,
eps 1e-5 and momentum 0.1 in PyTorch), ``"scratch"`` (bnref's from-scratch layers,
``bnref.layers.keras_bn.BatchNormalization`` and ``bnref.layers.torch_bn.BatchNorm``, drop-in replacements with
the same defaults) or ``"none"``.

Initialisation, identical in both frameworks: Keras' default for ``Dense``, i.e. Glorot-uniform
weights, ``W ~ U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))``, and zero biases. (PyTorch's own
``nn.Linear`` default is different: Kaiming-uniform with ``a = sqrt(5)`` and a uniform bias.) The
weights are drawn once with NumPy from ``seed`` (:func:`initial_weights`) and loaded into either
framework, so a Keras model and a PyTorch model built with the same seed start from the same numbers.
BN starts at gamma = 1, beta = 0, running mean 0, running variance 1 in both.

The PyTorch model ends in logits (no softmax) and is trained with ``nn.CrossEntropyLoss``, which
computes ``-log softmax(z)[y]``: the same function as Keras' softmax layer followed by categorical
cross-entropy on one-hot labels, evaluated in one numerically stable step (log-sum-exp).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # imported for annotations only; the functions import lazily
    import keras
    import torch

__all__ = [
    "BN_CHOICES",
    "PLACEMENTS",
    "INPUT_DIM",
    "HIDDEN",
    "NUM_CLASSES",
    "INITS",
    "check_choice",
    "check_int",
    "check_positive",
    "glorot_uniform",
    "he_uniform",
    "initial_weights",
    "linear_layers",
    "load_linear_weights",
    "build_keras_model",
    "build_torch_model",
]

BnChoice = Literal["native", "scratch", "none"]
Placement = Literal["after", "before"]

BN_CHOICES: tuple[str, ...] = ("native", "scratch", "none")
PLACEMENTS: tuple[str, ...] = ("after", "before")
INPUT_DIM = 784
HIDDEN: tuple[int, ...] = (64, 32)
NUM_CLASSES = 10


def check_int(name: str, value: Any, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``low..high`` (``high`` None: no upper limit), else raise
    ValueError naming ``name``. Booleans are not integers here."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {span}; got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number; got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return v


def check_choice(bn: str, placement: str) -> None:
    """Raise ValueError unless ``bn`` is one of :data:`BN_CHOICES` and ``placement`` of :data:`PLACEMENTS`."""
    if bn not in BN_CHOICES:
        raise ValueError(f"bn must be one of {BN_CHOICES}; got {bn!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")


def _dense_has_bias(bn: str, placement: str) -> bool:
    """A hidden Dense layer keeps its bias unless a BN layer follows it directly."""
    return bn == "none" or placement == "after"


def glorot_uniform(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Glorot/Xavier uniform weights ``(fan_in, fan_out)``, float32, ``U(-a, a)``, ``a = sqrt(6/(fan_in+fan_out))``."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


def he_uniform(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """He/Kaiming uniform weights ``(fan_in, fan_out)``, float32, ``U(-a, a)``, ``a = sqrt(6 / fan_in)``.

    Variance ``2 / fan_in``: keeps the second moment of ReLU activations constant from layer to layer.
    """
    a = np.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


#: Weight initialisers by name: ``draw(fan_in, fan_out, rng) -> float32 (fan_in, fan_out)``.
INITS: dict[str, Any] = {"glorot": glorot_uniform, "he": he_uniform}


def initial_weights(
    seed: int,
    *,
    input_dim: int = INPUT_DIM,
    hidden: tuple[int, ...] = HIDDEN,
    num_classes: int = NUM_CLASSES,
    init: str = "glorot",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The starting weights of every Dense layer, in Keras layout.

    Parameters
    ----------
    seed : int
        Seed of the NumPy generator that draws them, layer by layer from input to output.
    input_dim, hidden, num_classes : int, tuple of int, int
        Layer widths: ``input_dim -> hidden[0] -> ... -> num_classes``.
    init : {"glorot", "he"}
        :func:`glorot_uniform` (Keras' default, the article's model) or :func:`he_uniform`.

    Returns
    -------
    list of (W, b)
        One pair per Dense layer: ``W`` float32 ``(fan_in, fan_out)``, ``b`` float32 ``(fan_out,)``
        zeros. (PyTorch stores ``W.T``.) A layer built without bias ignores ``b``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {tuple(INITS)}; got {init!r}")
    draw = INITS[init]
    rng = np.random.default_rng(seed)
    widths = (input_dim, *hidden, num_classes)
    return [
        (draw(n_in, n_out, rng), np.zeros(n_out, dtype=np.float32))
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Keras 3
# --------------------------------------------------------------------------------------------


def _keras_bn_layer(bn: str, name: str) -> Any:
    import keras

    if bn == "native":
        return keras.layers.BatchNormalization(name=name)
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "bn='scratch' in Keras uses bnref.layers.keras_bn, which is written with TensorFlow "
            f"(tf.custom_gradient); the Keras backend here is {keras.backend.backend()!r}. "
            "Use bn='native', or run with KERAS_BACKEND=tensorflow."
        )
    try:
        from bnref.layers.keras_bn import BatchNormalization
    except ImportError as e:
        raise ValueError(f"bn='scratch' needs bnref.layers.keras_bn, which cannot be imported: {e}") from e
    return BatchNormalization(name=name)


def build_keras_model(
    bn: BnChoice = "native",
    placement: Placement = "after",
    seed: int = 0,
    *,
    input_dim: int = INPUT_DIM,
    hidden: tuple[int, ...] = HIDDEN,
    num_classes: int = NUM_CLASSES,
) -> keras.Sequential:
    """The article's model as an uncompiled ``keras.Sequential``: input ``(batch, 784)``, softmax ``(batch, 10)``.

    Parameters
    ----------
    bn : {"native", "scratch", "none"}
        Which BN layer: ``keras.layers.BatchNormalization``, ``bnref.layers.keras_bn.BatchNormalization``
        (TensorFlow backend only), or none.
    placement : {"after", "before"}
        BN after the ReLU (the article) or between a bias-free Dense and its ReLU (the paper).
    seed : int
        Seed for :func:`initial_weights` (Glorot-uniform weights, zero biases).
    input_dim, hidden, num_classes
        Layer widths; the defaults are the article's.

    Returns
    -------
    keras.Sequential
        Works with every Keras backend for ``bn`` in {"native", "none"}.
    """
    check_choice(bn, placement)
    import keras

    layers: list[Any] = [keras.Input(shape=(input_dim,), name="pixels")]
    dense_layers = []
    with_bias = _dense_has_bias(bn, placement)
    for i, width in enumerate(hidden, start=1):
        if with_bias:
            dense = keras.layers.Dense(width, activation="relu", name=f"dense{i}")
            layers.append(dense)
            if bn != "none":
                layers.append(_keras_bn_layer(bn, f"bn{i}"))
        else:
            dense = keras.layers.Dense(width, use_bias=False, name=f"dense{i}")
            layers += [dense, _keras_bn_layer(bn, f"bn{i}"), keras.layers.Activation("relu", name=f"relu{i}")]
        dense_layers.append(dense)
    out = keras.layers.Dense(num_classes, activation="softmax", name="softmax")
    layers.append(out)
    dense_layers.append(out)
    model = keras.Sequential(layers, name=f"mlp_bn_{bn}_{placement}")

    for dense, (w, b) in zip(
        dense_layers, initial_weights(seed, input_dim=input_dim, hidden=hidden, num_classes=num_classes), strict=True
    ):
        dense.kernel.assign(w)
        if dense.use_bias:
            dense.bias.assign(b)
    return model


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def linear_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The ``torch.nn.Linear`` layers of a model, input to output."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def load_linear_weights(linears: list[torch.nn.Linear], weights: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy Keras-layout weights (:func:`initial_weights`) into PyTorch Linear layers, in place.

    ``weight <- W.T`` (PyTorch stores ``(fan_out, fan_in)``) and ``bias <- b`` where the layer has a
    bias. Raises ValueError when the numbers of layers or the shapes differ.
    """
    import torch

    if len(linears) != len(weights):
        raise ValueError(f"{len(weights)} weight pairs for {len(linears)} Linear layers")
    for i, (linear, (w, b)) in enumerate(zip(linears, weights, strict=True)):
        if tuple(linear.weight.shape) != tuple(w.shape[::-1]) or (linear.bias is not None and b.shape != (w.shape[1],)):
            raise ValueError(
                f"layer {i}: Linear weight {tuple(linear.weight.shape)} does not take W {w.shape}, b {b.shape}"
            )
    with torch.no_grad():
        for linear, (w, b) in zip(linears, weights, strict=True):
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            if linear.bias is not None:
                linear.bias.copy_(torch.from_numpy(b))


def _torch_bn_layer(bn: str, width: int) -> torch.nn.Module:
    import torch

    if bn == "native":
        return torch.nn.BatchNorm1d(width)
    try:
        from bnref.layers.torch_bn import BatchNorm
    except ImportError as e:
        raise ValueError(f"bn='scratch' needs bnref.layers.torch_bn, which cannot be imported: {e}") from e
    return BatchNorm(width)


def build_torch_model(
    bn: BnChoice = "native",
    placement: Placement = "after",
    seed: int = 0,
    *,
    input_dim: int = INPUT_DIM,
    hidden: tuple[int, ...] = HIDDEN,
    num_classes: int = NUM_CLASSES,
) -> torch.nn.Sequential:
    """The article's model as a ``torch.nn.Sequential`` on the CPU: input ``(batch, 784)``, logits ``(batch, 10)``.

    Train it with ``nn.CrossEntropyLoss`` (softmax + categorical cross-entropy in one stable step).
    Arguments as in :func:`build_keras_model`; ``bn="scratch"`` uses ``bnref.layers.torch_bn.BatchNorm``.
    The Linear layers get the same Glorot-uniform weights and zero biases as the Keras model built
    with the same seed (``weight = W.T``).
    """
    check_choice(bn, placement)
    from torch import nn

    modules: list[tuple[str, nn.Module]] = []
    linears: list[nn.Linear] = []
    with_bias = _dense_has_bias(bn, placement)
    widths = (input_dim, *hidden)
    for i, (n_in, width) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
        linear = nn.Linear(n_in, width, bias=with_bias)
        linears.append(linear)
        modules.append((f"dense{i}", linear))
        if with_bias:
            modules.append((f"relu{i}", nn.ReLU()))
            if bn != "none":
                modules.append((f"bn{i}", _torch_bn_layer(bn, width)))
        else:
            modules += [(f"bn{i}", _torch_bn_layer(bn, width)), (f"relu{i}", nn.ReLU())]
    out = nn.Linear(widths[-1], num_classes)
    linears.append(out)
    modules.append(("logits", out))
    model = nn.Sequential(OrderedDict(modules))
    load_linear_weights(linears, initial_weights(seed, input_dim=input_dim, hidden=hidden, num_classes=num_classes))
    return model
