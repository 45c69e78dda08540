"""Diagnostics to point at your own PyTorch network while it trains (after Karpathy's "makemore" part 3).

Four questions a practitioner asks of a network that trains badly, each answered by one small function on a model
and a batch, returning NumPy arrays (plot them as you like; the chapter ``normfree`` shows how):

* :func:`saturated_fraction`: for each ``tanh`` layer, the fraction of outputs with ``|t| > 0.97``, where the
  derivative ``1 - t^2`` is below 0.06 and almost no gradient passes.
* :func:`dead_fraction`: for each ReLU layer, the fraction of *dead* units, zero for every example of the batch
  (no gradient reaches their incoming weights from this batch).
* :func:`update_to_data_ratios` and :class:`UpdateRatioRecorder`: ``log10(||lr * grad|| / ||W||)`` for each weight
  matrix, once or at every step of training: how far one SGD step moves each weight relative to its size.
  Karpathy's rule of thumb is about ``-3``; much lower, the layer learns too slowly; much higher, too fast.
* :func:`activation_histograms` and :func:`gradient_histograms`: the distribution of each activation layer's
  outputs and of the loss gradient with respect to them.

The layers are found by module type (:data:`ACTIVATIONS`): an activation applied as a function
(``torch.relu(x)`` inside ``forward``) is invisible to them, so write it as a module (``nn.ReLU()``). Every
function leaves the model as it was: parameters, their ``.grad``, BN's running statistics and the training flag.
Each raises ``ValueError`` naming the problem when the model has no layer of the kind asked for, or when an input,
an output or a gradient is not finite (a diverged network).

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnref.mnist.torch_training import kept_buffers

__all__ = [
    "ACTIVATIONS",
    "TANH_SATURATION",
    "LayerHistograms",
    "activation_layers",
    "layer_outputs",
    "saturated_fraction",
    "dead_fraction",
    "activation_histograms",
    "gradient_histograms",
    "update_to_data_ratios",
    "UpdateRatioRecorder",
]

#: The module types treated as activation layers.
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.LeakyReLU)

#: ``|tanh| > 0.97``: Karpathy's threshold for a saturated tanh unit (local derivative ``1 - t^2 < 0.06``).
TANH_SATURATION = 0.97


class LayerHistograms(NamedTuple):
    """Histograms of one quantity over several layers, on shared bin edges.

    Attributes
    ----------
    names : list of str
        The layers' module names (``model.named_modules()``), in forward order.
    fractions : ndarray, shape (layers, bins)
        The fraction of the layer's values in each bin; values outside ``edges`` are counted in the end bins, so
        each row sums to 1.
    edges : ndarray, shape (bins + 1,)
    mean, std : ndarray, shape (layers,)
        Mean and standard deviation of each layer's values.
    """

    names: list[str]
    fractions: np.ndarray
    edges: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def activation_layers(model: nn.Module, kinds: Sequence[type[nn.Module]] = ACTIVATIONS) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` of one of the types ``kinds``, as ``(name, module)`` in registration order.

    Raises
    ------
    ValueError
        There is none (an activation written as a function, ``torch.relu(x)``, is not a module and is not found).
    """
    kinds = tuple(kinds)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    if not found:
        wanted = ", ".join(k.__name__ for k in kinds)
        raise ValueError(
            f"the model has no {wanted} module; activations applied as functions (torch.relu) cannot be found"
        )
    return found


def _batch(model: nn.Module, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    xs = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=dev, dtype=dtype)
    if xs.ndim < 1 or len(xs) < 1:
        raise ValueError(f"x must be a batch of at least one example; got shape {tuple(xs.shape)}")
    if not torch.isfinite(xs).all():
        raise ValueError("x has non-finite values")
    return xs


def _finite(name: str, what: str, v: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what} of layer {name!r} has non-finite values (has the network diverged?)")
    return v


def _forward(
    model: nn.Module, xs: torch.Tensor, layers: list[tuple[str, nn.Module]], train: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the outputs of ``layers`` (in forward order of the modules' calls, one per module)."""
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out)) for k, (_, m) in enumerate(layers)
    ]
    try:
        model.train(train)
        logits = model(xs)
    finally:
        for h in handles:
            h.remove()
    missing = [layers[k][0] for k in range(len(layers)) if k not in outputs]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    return logits, [outputs[k] for k in range(len(layers))]


def layer_outputs(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    kinds: Sequence[type[nn.Module]] = ACTIVATIONS,
    train: bool = True,
) -> dict[str, np.ndarray]:
    """The output of every activation layer of ``model`` on the batch ``x``, as float64 arrays ``(n, units)``.

    Parameters
    ----------
    model : torch.nn.Module
    x : array or tensor, shape (n, ...)
        One batch, as the model takes it.
    kinds : sequence of module types
        Which layers to read (:data:`ACTIVATIONS`).
    train : bool
        Run the model in training mode (BN normalises with the batch's statistics, as during training) or in
        inference mode. The running statistics and the training flag are put back afterwards.

    Returns
    -------
    dict of str to ndarray, shape (n, units)
        Keyed by module name, in registration order; a module called more than once keeps its last output.

    Raises
    ------
    ValueError
        No such layer, a layer not called, or non-finite values in ``x`` or in a layer's output.
    """
    layers = activation_layers(model, kinds)
    xs = _batch(model, x)
    was_training = model.training
    try:
        with kept_buffers(model), torch.no_grad():
            _, outs = _forward(model, xs, layers, train)
    finally:
        model.train(was_training)
    result = {}
    for (name, _), out in zip(layers, outs, strict=True):
        v = out.detach().double().cpu().numpy()
        result[name] = _finite(name, "the output", v.reshape(len(v), -1))
    return result


def saturated_fraction(
    model: nn.Module, x: np.ndarray | torch.Tensor, *, threshold: float = TANH_SATURATION, train: bool = True
) -> dict[str, float]:
    """For each ``nn.Tanh`` layer, the fraction of its outputs on the batch ``x`` with ``|t| > threshold``.

    A saturated unit passes back ``1 - t^2`` times its incoming gradient: less than 0.06 at the default 0.97. A few
    per cent is harmless; a large fraction means the layer's pre-activations are too large (initial weights too
    large, or a layer that would need normalisation) and the layers below learn slowly.

    Raises
    ------
    ValueError
        No ``nn.Tanh`` layer, ``threshold`` outside (0, 1), or non-finite values.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1) (|tanh| < 1); got {threshold!r}")
    outs = layer_outputs(model, x, kinds=(nn.Tanh,), train=train)
    return {name: float(np.mean(np.abs(t) > threshold)) for name, t in outs.items()}


def dead_fraction(model: nn.Module, x: np.ndarray | torch.Tensor, *, train: bool = True) -> dict[str, float]:
    """For each ``nn.ReLU`` layer, the fraction of its units that output zero for every example of the batch ``x``.

    Such a unit passes back no gradient for this batch, so its incoming weights and bias do not learn from it. A
    unit dead on a large batch is usually dead for good (its pre-activation is negative for every input). Use a
    batch of a few hundred examples: on a small batch a unit may be zero by chance.

    Raises
    ------
    ValueError
        No ``nn.ReLU`` layer, or non-finite values.
    """
    outs = layer_outputs(model, x, kinds=(nn.ReLU,), train=train)
    return {name: float(np.mean(np.all(h == 0, axis=0))) for name, h in outs.items()}


def _histograms(
    names: list[str], values: list[np.ndarray], bins: int, value_range: tuple[float, float] | None
) -> LayerHistograms:
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}")
    if value_range is None:
        top = max(float(np.max(np.abs(v))) for v in values)
        value_range = (-top, top) if top > 0 else (-1.0, 1.0)
    low, high = (float(v) for v in value_range)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"value_range must be two finite numbers low < high; got {value_range!r}")
    edges = np.linspace(low, high, bins + 1)
    fractions = np.array([np.histogram(np.clip(v, low, high), edges)[0] / v.size for v in values])
    return LayerHistograms(
        names=list(names),
        fractions=fractions,
        edges=edges,
        mean=np.array([float(v.mean()) for v in values]),
        std=np.array([float(v.std()) for v in values]),
    )


def activation_histograms(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    bins: int = 50,
    value_range: tuple[float, float] | None = None,
    kinds: Sequence[type[nn.Module]] = ACTIVATIONS,
    train: bool = True,
) -> LayerHistograms:
    """Histograms of each activation layer's outputs on the batch ``x`` (:func:`layer_outputs`).

    Parameters
    ----------
    bins : int
    value_range : (low, high), optional
        The bins' range, shared by all layers; default ``(-m, m)`` with ``m`` the largest absolute value seen. Values
        outside it are counted in the end bins.
    kinds, train
        As in :func:`layer_outputs`.

    Raises
    ------
    ValueError
        As :func:`layer_outputs`, or bad ``bins`` / ``value_range``.
    """
    outs = layer_outputs(model, x, kinds=kinds, train=train)
    return _histograms(list(outs), list(outs.values()), bins, value_range)


def gradient_histograms(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    bins: int = 50,
    value_range: tuple[float, float] | None = None,
    kinds: Sequence[type[nn.Module]] = ACTIVATIONS,
    train: bool = True,
) -> LayerHistograms:
    """Histograms of the gradient of the loss with respect to each activation layer's outputs, on one batch.

    The gradient is taken with ``torch.autograd.grad``: the parameters' ``.grad`` are not touched, and the BN
    running statistics are put back. For a healthy deep network the layers' histograms have similar widths;
    widths that shrink or grow layer after layer toward the input show vanishing or exploding gradients.

    Parameters
    ----------
    y : array or tensor
        The targets ``loss_fn(logits, y)`` takes (class indices for the default cross-entropy).
    loss_fn : callable
        ``loss_fn(model(x), y) -> scalar``; default the mean cross-entropy.
    bins, value_range, kinds, train
        As in :func:`activation_histograms`.

    Raises
    ------
    ValueError
        As :func:`layer_outputs`; a non-finite loss or gradient; a layer whose output the loss does not depend on.
    """
    layers = activation_layers(model, kinds)
    xs = _batch(model, x)
    ys = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(xs.device)
    was_training = model.training
    try:
        with kept_buffers(model):
            logits, outs = _forward(model, xs, layers, train)
            loss = loss_fn(logits, ys)
            if not torch.isfinite(loss):
                raise ValueError(f"the loss is not finite ({float(loss)}); has the network diverged?")
            grads = torch.autograd.grad(loss, outs, allow_unused=True)
    finally:
        model.train(was_training)
    values = []
    for (name, _), g in zip(layers, grads, strict=True):
        if g is None:
            raise ValueError(f"the loss does not depend on the output of layer {name!r}")
        values.append(_finite(name, "the gradient at the output", g.detach().double().cpu().numpy().ravel()))
    return _histograms([name for name, _ in layers], values, bins, value_range)


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    found = [(name, p) for name, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]
    if not found:
        raise ValueError("the model has no weight matrix (a parameter with two or more dimensions) to measure")
    return found


def update_to_data_ratios(model: nn.Module, lr: float) -> dict[str, float]:
    """``log10(||lr * grad|| / ||W||)`` for every weight matrix of ``model``, from the gradients now in ``.grad``.

    Call it after ``loss.backward()`` and before ``optimizer.step()``. The ratio is the relative size of the step
    plain SGD is about to take (with momentum or Adam the step differs; the ratio still compares the gradient's
    scale with the weights'). Karpathy plots ``log10`` of the ratio of standard deviations, which for weights and
    gradients of mean about zero is the same up to a small shift. Parameters with fewer than two dimensions (biases,
    BN's gamma and beta) are left out.

    Returns
    -------
    dict of str to float
        Keyed by parameter name, in registration order. A zero gradient gives ``-inf`` (no update).

    Raises
    ------
    ValueError
        ``lr`` not positive and finite, no weight matrix, a weight without gradient, non-finite weights or
        gradients, or a weight of norm zero.
    """
    if not (isinstance(lr, (int, float, np.floating)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    out = {}
    for name, p in _weights(model):
        if p.grad is None:
            raise ValueError(f"weight {name!r} has no gradient; call it after loss.backward()")
        w_norm = float(p.detach().double().norm())
        g_norm = float(p.grad.detach().double().norm())
        if not (np.isfinite(w_norm) and np.isfinite(g_norm)):
            raise ValueError(f"weight {name!r} or its gradient has non-finite values (has the network diverged?)")
        if w_norm == 0:
            raise ValueError(f"weight {name!r} has norm zero; the ratio is undefined")
        with np.errstate(divide="ignore"):
            out[name] = float(np.log10(lr * g_norm / w_norm))
    return out


class UpdateRatioRecorder:
    """Records :func:`update_to_data_ratios` of a model at every call, for plotting over training.

    Use it inside your training loop, between ``loss.backward()`` and ``optimizer.step()``::

        recorder = UpdateRatioRecorder(model, lr=0.1)
        for step in range(steps):
            ...
            loss.backward()
            recorder(step)
            optimizer.step()
        plt.plot(recorder.steps, recorder.ratios)  # one line per weight matrix

    It also serves as the ``after_backward(step, model)`` hook of :func:`bnref.experiments.dynamics.train_steps`.

    Parameters
    ----------
    model : torch.nn.Module
    lr : float
        The learning rate of the steps (set :attr:`lr` when a schedule changes it).
    every : int
        Record only the steps that are multiples of ``every``.
    """

    def __init__(self, model: nn.Module, lr: float, *, every: int = 1) -> None:
        if not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive integer; got {every!r}")
        self.model, self.lr, self.every = model, lr, int(every)
        self.names = [name for name, _ in _weights(model)]
        self._steps: list[int] = []
        self._rows: list[list[float]] = []

    def __call__(self, step: int | None = None, model: nn.Module | None = None) -> None:
        """Record the ratios of the gradients now in ``.grad``; ``step`` defaults to the number of calls so far."""
        step = len(self._steps) if step is None else int(step)
        if step % self.every:
            return
        ratios = update_to_data_ratios(self.model if model is None else model, self.lr)
        self._steps.append(step)
        self._rows.append([ratios[name] for name in self.names])

    @property
    def steps(self) -> np.ndarray:
        """The recorded steps, shape ``(records,)``."""
        return np.array(self._steps, dtype=np.int64)

    @property
    def ratios(self) -> np.ndarray:
        """``log10(||lr * grad|| / ||W||)``, shape ``(records, weights)``, columns in the order of :attr:`names`."""
        return np.array(self._rows, dtype=np.float64).reshape(len(self._rows), len(self.names))
