"""Small experiments that test the article's claims about BN (the book's chapter ``claims``).

Every function here is a plain function: it takes NumPy arrays and numbers, builds what it needs in
PyTorch, and returns NumPy arrays, floats or dicts of them, so that a notebook can plot or tabulate the
result and a test can check it on tiny data. PyTorch is imported inside the functions
(``import bnref.experiments.probes`` costs nothing).

What is here
------------
* :func:`take_subset`: a seeded random subset of a data set, as float32 features.
* :func:`build_mlp`: a fully connected ReLU/tanh network of any depth, with or without BN placed before
  each nonlinearity (the paper's placement), optionally with random distribution shifts injected after
  each BN layer (:func:`make_shift_noise`, after Santurkar et al.'s "noisy BatchNorm").
* :func:`weight_gradient_norms`: the norm of the loss gradient with respect to each layer's weight
  matrix, for one batch; :func:`bn_gradient_growth` predicts how it grows from layer to layer in a
  deep BN network (the book's equation ``eq-cl-rate``) and :func:`fitted_growth_factor` measures it.
* :func:`input_shift`: how far a layer's input distribution moved between two measurements.
* :func:`train_sgd`: plain minibatch SGD for a fixed number of steps, recording the training loss of
  every step and, optionally, the input statistics of one layer and Santurkar et al.'s gradient-based
  measure of internal covariate shift.
* :func:`lr_sweep`: :func:`train_sgd` over a list of learning rates.
* :func:`step_seconds`: wall time of one training step, interleaving the models compared.

What is not here, because it has one home elsewhere: coercing inputs (:func:`bnref.mnist.data.as_labeled`,
:func:`bnref.mnist.torch_training.as_tensors`), initial weights and loading them
(:func:`bnref.mnist.models.initial_weights`,
:func:`bnref.mnist.models.load_linear_weights`, :func:`bnref.mnist.models.linear_layers`), argument checks
(:func:`bnref.mnist.models.check_int`, :func:`bnref.mnist.models.check_positive`), evaluation in inference mode
(:func:`bnref.mnist.torch_training.evaluate`) and putting state back (:func:`bnref.mnist.torch_training.snapshot`,
:func:`~bnref.mnist.torch_training.restore`, :func:`~bnref.mnist.torch_training.kept_buffers`). The experiments
themselves, with their configurations and records, are declared in :mod:`bnref.experiments.claims` and the other
chapter modules; ``python -m bnref.experiments`` runs them (:mod:`bnref.experiments.cli`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnref.mnist.data import as_labeled
from bnref.mnist.models import INITS, check_int, check_positive, initial_weights, linear_layers, load_linear_weights

if TYPE_CHECKING:
    import torch

__all__ = [
    "ACTIVATIONS",
    "take_subset",
    "build_mlp",
    "make_shift_noise",
    "weight_gradient_norms",
    "bn_gradient_growth",
    "fitted_growth_factor",
    "input_shift",
    "train_sgd",
    "lr_sweep",
    "step_seconds",
]

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "linear")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def take_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random subset of ``n`` examples (without replacement), as float32 features and int64 labels.

    Parameters
    ----------
    x : ndarray, shape (N, 28, 28) uint8 or (N, d)
        Images are flattened and scaled to [0, 1] (:func:`bnref.mnist.data.to_features`); features are
        cast to float32.
    y : ndarray, shape (N,)
        Integer labels.
    n : int
        Size of the subset, ``1 <= n <= N``.
    seed : int
        Seed of the NumPy generator that picks the examples.

    Returns
    -------
    x_sub : ndarray, shape (n, d), float32
    y_sub : ndarray, shape (n,), int64
    """
    x, y = as_labeled(x, y, num_classes=None)
    n = check_int("n", n, low=1, high=len(x))
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return x[idx], y[idx]


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def make_shift_noise(width: int, *, max_shift: float, max_log_scale: float) -> torch.nn.Module:
    """A layer that moves the distribution of its input at random, anew at every training step.

    In training mode each call draws, per channel ``c``, a shift ``m_c ~ U(-max_shift, max_shift)``
    and a scale ``s_c = exp(u_c)``, ``u_c ~ U(-max_log_scale, max_log_scale)``, and returns
    ``s * x + m`` for input ``x`` of shape ``(batch, width)``. Every example of the batch gets the same
    ``s`` and ``m``, so the next layer sees its input distribution shifted and rescaled, differently
    at each step: internal covariate shift injected on purpose. In inference mode it is the identity.

    This follows the idea of the "noisy BatchNorm" of Santurkar et al. (2018, section 2.1), who
    perturb each activation with noise of non-zero mean and non-unit variance whose distribution
    changes at every step; ours is a per-channel shift and scale shared by the batch, i.e. a pure
    change of distribution. Draws use the global ``torch`` generator (seed it with
    ``torch.manual_seed``).
    """
    import torch

    if not (max_shift >= 0 and max_log_scale >= 0):
        raise ValueError(f"max_shift and max_log_scale must be >= 0; got {max_shift!r}, {max_log_scale!r}")

    class ShiftNoise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.width, self.max_shift, self.max_log_scale = width, float(max_shift), float(max_log_scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                return x
            # drawn on the CPU generator (the same numbers on every device), then moved to x's device
            m = (2 * torch.rand(self.width) - 1) * self.max_shift
            s = torch.exp((2 * torch.rand(self.width) - 1) * self.max_log_scale)
            return x * s.to(x.device) + m.to(x.device)

        def extra_repr(self) -> str:
            return f"{self.width}, max_shift={self.max_shift}, max_log_scale={self.max_log_scale}"

    return ShiftNoise()


def build_mlp(
    depth: int,
    width: int,
    *,
    bn: bool,
    activation: str = "relu",
    init: str = "glorot",
    seed: int = 0,
    input_dim: int = 784,
    num_classes: int = 10,
    shift_noise: tuple[float, float] | None = None,
) -> torch.nn.Sequential:
    """A deep fully connected network: ``depth`` hidden blocks of ``width`` units, then a linear output.

    Each hidden block is ``Linear -> BatchNorm1d -> activation`` with ``bn=True`` (the paper's
    placement; the Linear has no bias, since BN's mean subtraction would cancel it) and
    ``Linear (with bias) -> activation`` with ``bn=False``. The output layer is a Linear layer giving
    logits ``(batch, num_classes)`` (train with cross-entropy).

    Parameters
    ----------
    depth : int
        Number of hidden layers, >= 1.
    width : int
        Units per hidden layer, >= 2.
    bn : bool
        Insert ``torch.nn.BatchNorm1d`` (eps 1e-5, momentum 0.1) before each activation.
    activation : {"relu", "tanh", "linear"}
    init : {"glorot", "he"}
        Weights drawn with NumPy from ``seed`` by :func:`bnref.mnist.models.initial_weights`: Glorot-uniform
        (Keras' default, the article's model) or He-uniform; biases zero.
    seed : int
    input_dim, num_classes : int
    shift_noise : (max_shift, max_log_scale), optional
        With ``bn=True``, put :func:`make_shift_noise` after every BN layer.

    Returns
    -------
    torch.nn.Sequential
        On the CPU, float32. Its Linear layers are listed by :func:`bnref.mnist.models.linear_layers`.
    """
    from torch import nn

    check_int("depth", depth)
    check_int("width", width, low=2)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {tuple(INITS)}; got {init!r}")
    if shift_noise is not None and not bn:
        raise ValueError("shift_noise is injected after BN layers, so it needs bn=True")

    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "linear": nn.Identity}[activation]
    modules: list[nn.Module] = []
    widths = (input_dim, *([width] * depth))
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        linear = nn.Linear(n_in, n_out, bias=not bn)
        modules.append(linear)
        if bn:
            modules.append(nn.BatchNorm1d(n_out))
            if shift_noise is not None:
                modules.append(make_shift_noise(n_out, max_shift=shift_noise[0], max_log_scale=shift_noise[1]))
        modules.append(act())
    modules.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*modules)
    hidden = (width,) * depth
    weights = initial_weights(seed, input_dim=input_dim, hidden=hidden, num_classes=num_classes, init=init)
    load_linear_weights(linear_layers(model), weights)
    return model


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def weight_gradient_norms(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Frobenius norm of ``dL/dW`` for each Linear layer, for one batch, BN in training mode.

    ``L`` is the mean cross-entropy of the batch. The model's parameters are not changed (its BN
    running statistics take one update, as in any training-mode forward pass).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(n, d)`` to logits ``(n, classes)``.
    x : ndarray, shape (n, d)
    y : ndarray, shape (n,)

    Returns
    -------
    ndarray, shape (number of Linear layers,), float64
        Input layer first.
    """
    import torch

    from bnref.mnist.torch_training import as_tensors

    xb, yb = as_tensors(x, y, device=_device_of(model), num_classes=None)
    model.train()
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    norms = [float(lin.weight.grad.norm()) for lin in linear_layers(model)]
    model.zero_grad(set_to_none=True)
    return np.array(norms)


def _activation_and_derivative(activation: str) -> tuple[Callable, Callable]:
    if activation == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda z: (z > 0).astype(np.float64))
    if activation == "tanh":
        return np.tanh, (lambda z: 1.0 - np.tanh(z) ** 2)
    if activation == "linear":
        return (lambda z: z), (lambda z: np.ones_like(z))
    raise ValueError(f"activation must be one of {ACTIVATIONS} or a pair (phi, dphi); got {activation!r}")


def bn_gradient_growth(
    activation: str | tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]],
    *,
    half_width: float = 12.0,
    points: int = 480_000,
) -> float:
    """Predicted growth of the gradient norm per layer toward the input of a deep BN network, eq. ``eq-cl-rate``.

    ``lambda = sqrt(E[phi'(z)^2] / Var[phi(z)])`` with ``z ~ N(0, 1)``: the factor by which the norm of
    ``dL/dW`` grows from one hidden layer (Linear -> BN -> phi, at initialisation) to the one below it,
    in the approximation of a wide layer and a large batch (the book's claims chapter derives it).
    For ReLU it is ``sqrt(pi / (pi - 1)) = 1.211``; for a linear ``phi`` it is 1.

    Parameters
    ----------
    activation : {"relu", "tanh", "linear"} or (phi, dphi)
        The nonlinearity, by name or as two vectorised functions: phi and its derivative.
    half_width, points : float, int
        The expectations are integrals against the normal density on ``[-half_width, half_width]``,
        by the trapezoidal rule on ``points`` equally spaced nodes. An even number of nodes puts
        ``z = 0`` in the middle of an interval, where the rule integrates a jump of ``phi'`` at 0
        exactly. With the defaults (spacing 5e-5) the result is accurate to about 1e-9 for the
        activations above; the tails beyond 12 standard deviations weigh less than 1e-32.

    Returns
    -------
    float
    """
    if isinstance(activation, str):
        phi, dphi = _activation_and_derivative(activation)
    else:
        phi, dphi = activation
    if not (isinstance(points, int) and points >= 1000 and points % 2 == 0):
        raise ValueError(f"points must be an even integer >= 1000; got {points!r}")
    z = np.linspace(-half_width, half_width, points)
    density = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
    f, df = np.asarray(phi(z), dtype=np.float64), np.asarray(dphi(z), dtype=np.float64)
    mean = np.trapezoid(density * f, z)
    var = np.trapezoid(density * f**2, z) - mean**2
    if not var > 0:
        raise ValueError("phi(z) has no variance under N(0, 1); the growth factor is undefined")
    return float(np.sqrt(np.trapezoid(density * df**2, z) / var))


def fitted_growth_factor(norms: np.ndarray, first: int = 1, last: int | None = None) -> float:
    """Per-layer growth factor of gradient norms toward the input, fitted by least squares on a log scale.

    Fits ``log norms[l] = a - l * log(lambda)`` over ``l = first .. last - 1`` and returns ``lambda``;
    ``lambda > 1`` means the norms grow toward the input (layer 0). The default ``first = 1`` leaves out
    the input layer, whose input (raw data) is not normalised like the others.

    Parameters
    ----------
    norms : ndarray, shape (layers,)
        From :func:`weight_gradient_norms`, input layer first; all positive.
    first, last : int
        The slice of layers to fit (``last`` defaults to all but the output layer).
    """
    norms = np.asarray(norms, dtype=np.float64)
    last = len(norms) - 1 if last is None else last
    if norms.ndim != 1 or not (0 <= first and last - first >= 2 and last <= len(norms)):
        raise ValueError(f"need at least two layers in norms[{first}:{last}] of a 1-D array; got shape {norms.shape}")
    part = norms[first:last]
    if np.any(part <= 0) or not np.all(np.isfinite(part)):
        raise ValueError("gradient norms must be positive and finite")
    slope = np.polyfit(np.arange(first, last), np.log(part), 1)[0]
    return float(np.exp(-slope))


def _layer_input_stats(
    model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, *, train: bool = True
) -> np.ndarray:
    """Per-unit mean and standard deviation ``(2, units)`` of the input of ``layer`` over ``x``.

    With ``train`` (the default) the forward pass runs in training mode, so BN layers use the batch
    statistics of ``x`` (as in a training step) and shift-noise layers draw a new shift and scale, as they
    would in a training step; BN running statistics are put back afterwards. Without it, in inference mode:
    BN uses its running statistics and shift noise does nothing. The model's mode is put back.
    """
    import torch

    from bnref.mnist.torch_training import kept_buffers

    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    was_training = model.training
    model.train(train)
    try:
        with kept_buffers(model), torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    h = captured[0]
    return np.stack([h.mean(dim=0).cpu().numpy(), h.std(dim=0, unbiased=False).cpu().numpy()]).astype(np.float64)


def _gradient_ics(model, params_before, layer_index: int, xb, yb, grad_before, rng_state) -> tuple[float, float]:
    """Santurkar et al.'s ICS of one layer after an update: ``||G - G'||`` relative to ``||G||``, and cos(G, G').

    ``G`` (``grad_before``) is the gradient of the layer's weight at the parameters before the step;
    ``G'`` is the same gradient, on the same batch, after the layers *below* it have taken the step
    and the layer itself and those above it have not. ``rng_state`` is the torch generator state of
    the forward pass that gave ``G``, so that random layers (shift noise) draw the same values again.
    """
    import torch

    from bnref.mnist.torch_training import kept_buffers, restore, snapshot

    lins = linear_layers(model)
    params = list(model.parameters())
    after = snapshot(params)
    # put back the old values of the layer and of everything above it
    start = [id(p) for p in params].index(id(lins[layer_index].weight))
    restore(params[start:], params_before[start:])
    rng_after = torch.get_rng_state()
    torch.set_rng_state(rng_state)
    model.zero_grad(set_to_none=True)
    with kept_buffers(model):
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
    torch.set_rng_state(rng_after)
    g_new = lins[layer_index].weight.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    restore(params, after)
    g_old = grad_before
    rel = float((g_new - g_old).norm() / g_old.norm().clamp_min(1e-30))
    cos = float(torch.nn.functional.cosine_similarity(g_new.flatten(), g_old.flatten(), dim=0))
    return rel, cos


def input_shift(stats: np.ndarray) -> np.ndarray:
    """How far a layer's input distribution moved between consecutive measurements (a simple ICS proxy).

    Each unit's input is summarised by its mean and standard deviation, i.e. approximated by a normal
    distribution; the 2-Wasserstein distance between ``N(m1, s1^2)`` and ``N(m2, s2^2)`` is
    ``sqrt((m1 - m2)^2 + (s1 - s2)^2)``. We take its root-mean-square over the units and divide by the
    root-mean-square standard deviation at the later measurement, so the number is scale-free: 0 means
    no change, 1 means a move as large as the typical spread of the inputs.

    Parameters
    ----------
    stats : ndarray, shape (k, 2, units)
        ``probe_stats`` from :func:`train_sgd`: per measurement, per-unit mean (row 0) and std (row 1).

    Returns
    -------
    ndarray, shape (k - 1,)
    """
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 3 or stats.shape[1] != 2 or stats.shape[0] < 2:
        raise ValueError(f"stats must have shape (k >= 2, 2, units); got {stats.shape}")
    if np.any(stats[:, 1] < 0) or not np.all(np.isfinite(stats)):
        raise ValueError("stats must be finite, with non-negative standard deviations in row 1")
    step = np.diff(stats, axis=0)  # (k-1, 2, units)
    w2 = np.sqrt(np.mean(step[:, 0] ** 2 + step[:, 1] ** 2, axis=1))
    spread = np.sqrt(np.mean(stats[1:, 1] ** 2, axis=1))
    return w2 / np.maximum(spread, np.finfo(np.float64).tiny)


def train_sgd(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    momentum: float = 0.0,
    probe: np.ndarray | None = None,
    probe_layer: int | None = None,
    ics_layer: int | None = None,
    record_every: int = 1,
    blowup: float = 1e3,
    probe_eval: bool = False,
) -> dict[str, Any]:
    """Train ``model`` in place with minibatch SGD on mean cross-entropy; record what happened.

    Batches are drawn from a seeded permutation, epoch after epoch. Training stops early if the
    loss becomes non-finite or exceeds ``blowup`` (the run has diverged).

    Parameters
    ----------
    model : torch.nn.Module
        Logits model, trained in training mode.
    x : ndarray, shape (n, d), float32
    y : ndarray, shape (n,), int
    steps : int
        Number of SGD steps.
    lr, momentum : float
        ``torch.optim.SGD`` learning rate and momentum.
    batch_size : int
        ``2 <= batch_size <= n``; the last incomplete batch of each epoch is dropped.
    seed : int
        Seeds the batch order and ``torch.manual_seed`` (dropout-like layers, shift noise).
    probe : ndarray, shape (p, d), optional
        A fixed batch on which to measure the input statistics of the Linear layer ``probe_layer``
        (index into :func:`bnref.mnist.models.linear_layers`) every ``record_every`` steps.
    ics_layer : int, optional
        Index of a Linear layer whose gradient-based internal covariate shift (Santurkar et al.) is
        measured every ``record_every`` steps (costs one more forward and backward pass).
    record_every : int
        Spacing of the probe and ICS measurements.
    probe_eval : bool
        Also measure the probe's statistics in inference mode (BN with its running statistics).
    blowup : float
        A loss above this ends the run as diverged.

    Returns
    -------
    dict
        ``loss``: float64 ``(steps_done,)`` training loss of each step (on its batch, before the update);
        ``diverged``: bool; ``steps_done``: int; ``seconds``: wall time of the loop;
        with ``probe``: ``probe_steps`` ``(k,)`` and ``probe_stats`` ``(k, 2, units)`` (per-unit mean and
        std of the layer's input, measured before the step of that index), with ``probe_eval`` also
        ``probe_stats_eval`` (the same in inference mode);
        with ``ics_layer``: ``ics_steps`` ``(k,)``, ``ics_rel`` ``(k,)`` and ``ics_cos`` ``(k,)``.
    """
    import torch

    from bnref.mnist.torch_training import as_tensors, snapshot

    dev = _device_of(model)
    xb_all, yb_all = as_tensors(x, y, device=dev, num_classes=None)
    n = len(yb_all)
    check_int("steps", steps)
    check_int("batch_size", batch_size, low=2, high=n)  # BN needs two samples
    check_positive("lr", lr)
    check_int("record_every", record_every)
    lins = linear_layers(model)
    for name, idx in (("probe_layer", probe_layer), ("ics_layer", ics_layer)):
        if idx is not None and not (0 <= idx < len(lins)):
            raise ValueError(f"{name} must index one of the {len(lins)} Linear layers; got {idx!r}")
    if (probe is None) != (probe_layer is None):
        raise ValueError("give probe and probe_layer together")
    probe_t = None if probe is None else as_tensors(probe, np.zeros(len(probe), dtype=np.int64), device=dev)[0]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    per_epoch = n // batch_size
    losses: list[float] = []
    probe_steps: list[int] = []
    probe_stats: list[np.ndarray] = []
    probe_stats_eval: list[np.ndarray] = []
    ics_steps: list[int] = []
    ics_rel: list[float] = []
    ics_cos: list[float] = []
    diverged = False
    model.train()
    t0 = time.perf_counter()
    order = rng.permutation(n)
    for step in range(steps):
        k = step % per_epoch
        if k == 0 and step > 0:
            order = rng.permutation(n)
        idx = torch.from_numpy(order[k * batch_size : (k + 1) * batch_size]).to(dev)
        xb, yb = xb_all[idx], yb_all[idx]
        record = step % record_every == 0
        if record and probe_t is not None:
            probe_steps.append(step)
            probe_stats.append(_layer_input_stats(model, lins[probe_layer], probe_t))
            if probe_eval:
                probe_stats_eval.append(_layer_input_stats(model, lins[probe_layer], probe_t, train=False))
        opt.zero_grad(set_to_none=True)
        rng_state = torch.get_rng_state() if record and ics_layer is not None else None
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        value = loss.detach().item()
        losses.append(value)
        if not math.isfinite(value) or value > blowup:
            diverged = True
            break
        loss.backward()
        if record and ics_layer is not None:
            before = snapshot(model.parameters())
            grad_before = lins[ics_layer].weight.grad.detach().clone()
            opt.step()
            rel, cos = _gradient_ics(model, before, ics_layer, xb, yb, grad_before, rng_state)
            ics_steps.append(step)
            ics_rel.append(rel)
            ics_cos.append(cos)
        else:
            opt.step()
    out: dict[str, Any] = {
        "loss": np.array(losses),
        "diverged": diverged,
        "steps_done": len(losses),
        "seconds": time.perf_counter() - t0,
    }
    if probe_t is not None:
        out["probe_steps"] = np.array(probe_steps, dtype=np.int64)
        out["probe_stats"] = np.array(probe_stats)
        if probe_eval:
            out["probe_stats_eval"] = np.array(probe_stats_eval)
    if ics_layer is not None:
        out["ics_steps"] = np.array(ics_steps, dtype=np.int64)
        out["ics_rel"] = np.array(ics_rel)
        out["ics_cos"] = np.array(ics_cos)
    return out


def lr_sweep(
    make_model: Callable[[], torch.nn.Module],
    lrs: Sequence[float],
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    momentum: float = 0.0,
    tail: int = 20,
    blowup: float = 1e3,
) -> dict[str, np.ndarray]:
    """Train a fresh model with SGD at each learning rate; report where each run ended.

    Parameters
    ----------
    make_model : callable
        Returns a new model each call (the same initial weights every time, for a fair comparison).
    lrs : sequence of float
        Learning rates, each > 0.
    x, y, x_test, y_test : ndarray
        Training and test features ``(n, d)`` float32 and labels ``(n,)``.
    steps, batch_size, seed, momentum, blowup
        Passed to :func:`train_sgd` (the same batches for every learning rate).
    tail : int
        The final training loss is the mean over the last ``tail`` steps (less noisy than one batch).

    Returns
    -------
    dict of ndarray, each of shape (len(lrs),)
        ``lr``; ``final_loss`` (mean training loss of the last ``tail`` steps, ``inf`` if diverged);
        ``test_acc`` (inference mode after training; ``nan`` if diverged);
        ``diverged`` (bool).
    """
    from bnref.mnist.torch_training import evaluate

    if not len(lrs):
        raise ValueError("lrs must be a non-empty list of positive learning rates; got none")
    lrs = [check_positive("each of lrs", v) for v in lrs]
    check_int("tail", tail, high=steps)
    final_loss, test_acc, diverged = [], [], []
    for lr in lrs:
        model = make_model()
        run = train_sgd(
            model, x, y, steps=steps, lr=lr, batch_size=batch_size, seed=seed, momentum=momentum, blowup=blowup
        )
        diverged.append(run["diverged"])
        if run["diverged"]:
            final_loss.append(np.inf)
            test_acc.append(np.nan)
        else:
            final_loss.append(float(np.mean(run["loss"][-tail:])))
            test_acc.append(evaluate(model, x_test, y_test)[1])
    return {
        "lr": np.array(lrs),
        "final_loss": np.array(final_loss),
        "test_acc": np.array(test_acc),
        "diverged": np.array(diverged, dtype=bool),
    }


def step_seconds(
    models: dict[str, torch.nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    rounds: int = 30,
    steps_per_round: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Wall time of one training step (forward, backward, SGD update) for each model, interleaved.

    The models take turns: in each of ``rounds`` rounds every model runs ``steps_per_round`` steps on
    the same batches, timed as a block. Interleaving exposes every model to the same background load
    on a shared machine, so ratios of the medians are fairer than separate timings.

    Returns
    -------
    dict of ndarray
        For each name, the seconds per step of each round, shape ``(rounds,)``. Take the median.
    """
    import torch

    from bnref.mnist.torch_training import as_tensors, synchronize

    if not models:
        raise ValueError("models must name at least one model")
    check_int("rounds", rounds)
    check_int("steps_per_round", steps_per_round)
    devices = {_device_of(m) for m in models.values()}
    if len(devices) != 1:
        raise ValueError(f"the models must be on one device; got {sorted(map(str, devices))}")
    dev = devices.pop()
    xb_all, yb_all = as_tensors(x, y, device=dev, num_classes=None)
    n = len(yb_all)
    check_int("batch_size", batch_size, low=2, high=n)
    rng = np.random.default_rng(seed)
    batches = [torch.from_numpy(rng.choice(n, size=batch_size, replace=False)).to(dev) for _ in range(steps_per_round)]
    batches = [(xb_all[i], yb_all[i]) for i in batches]
    opts = {name: torch.optim.SGD(m.parameters(), lr=lr) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}

    def run_block(model, opt) -> None:
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        synchronize(dev)  # queued device work must finish inside the timed block

    for name, model in models.items():  # warm-up: first calls allocate and initialise kernels
        model.train()
        run_block(model, opts[name])
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            run_block(model, opts[name])
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    return {name: np.array(t) for name, t in times.items()}
