"""What BN does to training: the experiments behind the chapters ``why`` and ``dynamics``.

Each experiment is declared once here, as a :class:`bnref.experiments.registry.Experiment` (name, section,
summary, full configuration, seeds, runner), in the group ``dynamics`` of :data:`REGISTRY`, and run in full by one
command that writes one :class:`bnref.records.ExperimentRecord` per experiment::

    python -m bnref.experiments run dynamics --seeds 3 --out book/results/
    python -m bnref.experiments run dynamics-lenet --device cuda --out /tmp/records

(``python -m bnref.experiments.dynamics run all ...`` is the same command over this group.) The chapters draw
their figures and verdicts from the committed records and run a reduced configuration live
(:func:`run_experiment` with ``overrides``), checked against the records' spread with
:func:`bnref.mnist.verdicts.within_spread`. :func:`check_record` fails when a record's configuration no longer
matches its definition here.

What is here
------------
* :func:`build_lenet`: a LeNet-style convolutional network, with ``BatchNorm2d`` (statistics over
  N, H, W per channel) after each convolution and ``BatchNorm1d`` after each hidden Linear layer, or
  without BN.
* :func:`build_resnet`: a residual MLP whose blocks end in a BN layer; its last ``gamma`` may start at
  zero (Goyal et al. 2017).
* :func:`gaussian_weights`: initial weights ``N(0, scale^2)``, for the sweep over initial scales.
* :func:`train_steps`: minibatch SGD or Adam for a number of steps, with a hook called after each
  backward pass (the gradient is there, the step not yet taken), so an experiment can measure weights
  and gradients.
* :func:`nonlinearity_inputs`: the values that enter each nonlinearity of a network on a batch.
* :func:`weight_norm_step`: the squared-norm change of a weight matrix predicted by one SGD step, and
  :func:`scale_invariant_layers`: the layers it applies to (a Linear layer followed by BN).
* :func:`stopgrad_bias_demo`: Ioffe and Szegedy's example (section 2 of their paper) of a bias that grows
  without bound when the mean subtraction is left out of the gradient, in NumPy.

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnref.experiments import probes as ex
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.mnist.models import (
    build_torch_model,
    check_int,
    check_positive,
    initial_weights,
    linear_layers,
    load_linear_weights,
)
from bnref.mnist.torch_training import as_tensors, evaluate, kept_buffers

__all__ = [
    "REGISTRY",
    "EXPERIMENTS",
    "build_lenet",
    "build_resnet",
    "gaussian_weights",
    "train_steps",
    "nonlinearity_inputs",
    "weight_norm_step",
    "scale_invariant_layers",
    "stopgrad_bias_demo",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
]

NONLINEARITIES = (nn.ReLU, nn.Tanh, nn.Sigmoid)


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------


def build_lenet(*, bn: bool, seed: int = 0, activation: str = "relu", init: str = "default") -> nn.Sequential:
    """A LeNet-style network for 28x28 images, input ``(n, 784)`` in [0, 1], logits ``(n, 10)``.

    ``conv 5x5, 6 channels (padding 2) -> [BN2d] -> act -> max-pool 2 -> conv 5x5, 16 channels -> [BN2d]
    -> act -> max-pool 2 -> Linear 400->120 -> [BN1d] -> act -> Linear 120->84 -> [BN1d] -> act ->
    Linear 84->10``. ``BatchNorm2d`` normalises each channel over the batch and both spatial axes
    (N, H, W). A layer followed by BN has no bias (BN's mean subtraction would cancel it).

    Parameters
    ----------
    bn : bool
    seed : int
        Seeds the initialisation, identical on every CPU.
    activation : {"relu", "tanh"}
    init : {"default", "he"}
        ``"default"``: PyTorch's own (``kaiming_uniform_`` with ``a = sqrt(5)``: weight variance ``1 / (3 fan_in)``,
        a sixth of what keeps a ReLU layer's signal variance constant, so without BN the signal shrinks at every
        layer). ``"he"``: He et al. (2015), every convolution and Linear weight ``N(0, 2 / fan_in)``
        (``kaiming_normal_`` for ReLU) and every bias zero, drawn after the default one from the same seed.
    """
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
    if activation not in acts:
        raise ValueError(f"activation must be one of {tuple(acts)}; got {activation!r}")
    if init not in ("default", "he"):
        raise ValueError(f"init must be 'default' or 'he'; got {init!r}")
    act = acts[activation]

    def block(layer: nn.Module, norm: type[nn.Module], width: int) -> list[nn.Module]:
        return [layer, norm(width), act()] if bn else [layer, act()]

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        *block(nn.Conv2d(1, 6, 5, padding=2, bias=not bn), nn.BatchNorm2d, 6),
        nn.MaxPool2d(2),
        *block(nn.Conv2d(6, 16, 5, bias=not bn), nn.BatchNorm2d, 16),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *block(nn.Linear(400, 120, bias=not bn), nn.BatchNorm1d, 120),
        *block(nn.Linear(120, 84, bias=not bn), nn.BatchNorm1d, 84),
        nn.Linear(84, 10),
    )
    if init == "he":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


class ResidualBlock(nn.Module):
    """``h -> relu(h + BN2(W2 relu(BN1(W1 h))))``, widths equal; ``BN2.weight`` (its gamma) starts at ``last_gamma``."""

    def __init__(self, width: int, last_gamma: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(width, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.linear2 = nn.Linear(width, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        nn.init.constant_(self.bn2.weight, last_gamma)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.linear2(torch.relu(self.bn1(self.linear1(h)))))
        return torch.relu(h + branch)


def build_resnet(
    blocks: int, width: int, *, last_gamma: float, seed: int = 0, input_dim: int = 784, num_classes: int = 10
) -> nn.Sequential:
    """A residual MLP: ``Linear -> BN -> ReLU``, then ``blocks`` :class:`ResidualBlock` s, then a Linear output.

    It has ``2 * blocks + 2`` Linear layers, as many as ``bnref.experiments.probes.build_mlp(2 * blocks + 1,
    width, bn=True)``, and the same He-uniform weights drawn from ``seed``
    (:func:`bnref.mnist.models.initial_weights`), so the two differ only by the skip connections and
    ``last_gamma``.
    """
    check_int("blocks", blocks)
    check_int("width", width, low=2)
    model = nn.Sequential(
        nn.Linear(input_dim, width, bias=False),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        *[ResidualBlock(width, last_gamma) for _ in range(blocks)],
        nn.Linear(width, num_classes),
    )
    hidden = (width,) * (2 * blocks + 1)
    weights = initial_weights(seed, input_dim=input_dim, hidden=hidden, num_classes=num_classes, init="he")
    load_linear_weights(linear_layers(model), weights)
    return model


def gaussian_weights(seed: int, widths: Sequence[int], scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights ``W ~ N(0, scale^2)`` of shape ``(in, out)`` and zero biases for the layers ``widths[i] -> widths[i+1]``.

    The initialisation of the CS231n batch-normalisation exercise: one standard deviation for every
    layer, whatever its fan-in. Drawn with ``numpy.random.default_rng(seed)``, input layer first.
    """
    check_positive("scale", scale)
    rng = np.random.default_rng(seed)
    return [
        (scale * rng.standard_normal((n_in, n_out)), np.zeros(n_out))
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


# --------------------------------------------------------------------------------------------
# training and measuring
# --------------------------------------------------------------------------------------------

Hook = Callable[[int, nn.Module], None]


def train_steps(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    after_backward: Hook | None = None,
) -> np.ndarray:
    """Train ``model`` in place on mean cross-entropy for ``steps`` minibatch steps; return each step's loss.

    Each epoch visits the examples in a new order drawn by ``numpy.random.default_rng(seed)``; the
    last incomplete batch of an epoch is dropped. ``after_backward(step, model)``, if given, is called
    after each backward pass and before the update, so the gradients of step ``step`` and the weights
    they were computed at are both there to measure.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(n, d)`` float32 to logits.
    x : ndarray, shape (n, d)
    y : ndarray, shape (n,), int
    steps, batch_size : int
    lr : float
    seed : int
    optimizer : {"sgd", "adam"}
    momentum : float
        SGD momentum (``torch.optim.SGD``).
    weight_decay : float
        L2 penalty ``weight_decay / 2 * ||w||^2`` on every parameter, as ``torch.optim`` applies it: each
        SGD step multiplies the weights by ``1 - lr * weight_decay`` before subtracting ``lr * g``.
    after_backward : callable, optional

    Returns
    -------
    ndarray, shape (steps,), float64
        Loss of each step on its batch, before the update.
    """
    dev = next(model.parameters()).device
    xs, ys = as_tensors(x, y, device=dev, num_classes=None)
    n = len(ys)
    check_int("steps", steps)
    check_int("batch_size", batch_size, low=2, high=n)
    check_positive("lr", lr)
    params = list(model.parameters())
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {optimizer!r}")
    rng = np.random.default_rng(seed)
    batches_per_epoch = n // batch_size
    losses = np.empty(steps)
    model.train()
    for step in range(steps):
        if step % batches_per_epoch == 0:
            order = torch.from_numpy(rng.permutation(n)).to(dev)
        first = (step % batches_per_epoch) * batch_size
        batch = order[first : first + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
        loss.backward()
        losses[step] = loss.item()
        if after_backward is not None:
            after_backward(step, model)
        opt.step()
    return losses


def nonlinearity_inputs(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The input of every nonlinearity module (ReLU, Tanh, Sigmoid) of ``model`` on the batch ``x``, in order.

    Measured in training mode (BN uses the batch's statistics, as during training); the model's
    buffers (BN running statistics) are put back afterwards, so the probe does not train anything.

    Returns
    -------
    list of ndarray, each (n, units) float64, one per nonlinearity in forward order
    """
    seen: list[np.ndarray] = []
    handles = [
        m.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().double().cpu().numpy()))
        for m in model.modules()
        if isinstance(m, NONLINEARITIES)
    ]
    if not handles:
        raise ValueError("the model has no ReLU, Tanh or Sigmoid module to probe")
    dev = next(model.parameters()).device
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev)
    try:
        with kept_buffers(model), torch.no_grad():
            model.train()
            model(xs)
    finally:
        for h in handles:
            h.remove()
    return [v.reshape(len(v), -1) for v in seen]


def weight_norm_step(w_norm: float, g_norm: float, lr: float, weight_decay: float = 0.0) -> float:
    """Squared norm after one SGD step ``w' = (1 - lr * wd) w - lr g``, ``g`` orthogonal to ``w``, eq. ``eq-dyn-norm``.

    ``||w'||^2 = (1 - lr * wd)^2 ||w||^2 + lr^2 ||g||^2``: no cross term, because a scale-invariant
    loss has a gradient orthogonal to the weights.
    """
    return (1.0 - lr * weight_decay) ** 2 * w_norm**2 + lr**2 * g_norm**2


def scale_invariant_layers(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers followed directly by BN (no bias): the loss does not change when they are scaled."""
    mods = list(model)
    pairs = zip(mods[:-1], mods[1:], strict=True)
    return [m for m, nxt in pairs if isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d)]


def stopgrad_bias_demo(
    u: np.ndarray, target: np.ndarray, *, steps: int, lr: float, stop_gradient: bool
) -> dict[str, np.ndarray]:
    """Ioffe and Szegedy's section-2 example: ``x = u + b``, ``x_hat = x - mean(x)``, loss ``mean((x_hat - t)^2) / 2``.

    Gradient descent on the bias ``b``. With ``stop_gradient`` the mean is treated as a constant, so
    ``dL/db = mean(x_hat - t)``; the update changes ``b`` and the mean by the same amount, the output
    ``x_hat`` and the loss do not change, and ``b`` moves by the same step for ever. With the full
    gradient ``dL/db = 0`` exactly (``x_hat`` does not depend on ``b``) and ``b`` stays put.

    Parameters
    ----------
    u : ndarray, shape (m,)
        The layer's input before the bias, over a batch.
    target : ndarray, shape (m,)
        What the normalised output should be; ``mean(target) != 0`` makes the stop-gradient drift non-zero.
    steps : int
    lr : float
    stop_gradient : bool

    Returns
    -------
    dict with ``b`` (steps + 1,) and ``loss`` (steps + 1,), float64
    """
    u = np.asarray(u, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if u.ndim != 1 or u.shape != target.shape or len(u) < 2:
        raise ValueError(f"u and target must be 1-D arrays of the same length >= 2; got {u.shape}, {target.shape}")
    check_int("steps", steps)
    check_positive("lr", lr)
    b, bs, losses = 0.0, [0.0], []
    for _ in range(steps + 1):
        x = u + b
        x_hat = x - x.mean()
        residual = x_hat - target
        losses.append(0.5 * np.mean(residual**2))
        # dL/dx_hat = residual / m; through x_hat = x - mean(x) the full dL/dx is its centred version
        dx = residual / len(u) if stop_gradient else (residual - residual.mean()) / len(u)
        b = b - lr * dx.sum()
        bs.append(b)
    return {"b": np.array(bs[:-1]), "loss": np.array(losses)}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _subsets(cfg: dict[str, Any], data: Data, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed's training subset of ``cfg["train_size"]`` and the first ``cfg["test_size"]`` test examples."""
    x, y = ex.take_subset(data[0], data[1], cfg["train_size"], seed=seed)
    return x, y, data[2][: cfg["test_size"]], data[3][: cfg["test_size"]]


# --------------------------------------------------------------------------------------------
# runners: one seed each
# --------------------------------------------------------------------------------------------


def _why_net(net: str, bn: bool, seed: int, cfg: dict[str, Any]) -> nn.Module:
    if net == "article":
        return build_torch_model("native" if bn else "none", "before", seed)
    depth, width, act = cfg["deep"]
    return ex.build_mlp(depth, width, bn=bn, activation=act, seed=seed)


class _ActivationProbe:
    """``after_backward`` hook of ``why-activations``: every ``probe_every`` steps, the percentiles of each
    nonlinearity's input on a fixed probe batch (histograms too, at the first and the last probe) and the
    per-layer weight-gradient norms on that batch."""

    def __init__(self, cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
        self.cfg, self.x, self.y = cfg, x, y
        self.edges = np.linspace(-cfg["hist_range"], cfg["hist_range"], cfg["hist_bins"] + 1)
        self.pct: list[list[np.ndarray]] = []
        self.hists: list[list[np.ndarray]] = []
        self.grads: list[np.ndarray] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        every, edges = self.cfg["probe_every"], self.edges
        if step % every:
            return
        z = nonlinearity_inputs(model, self.x)
        self.pct.append([np.percentile(v, self.cfg["percentiles"]) for v in z])
        if step in (0, self.cfg["steps"] - every):
            self.hists.append([np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0] / v.size for v in z])
        with kept_buffers(model):
            self.grads.append(ex.weight_gradient_norms(model, self.x, self.y))


def _run_why(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Activation distributions per layer over training, the article's network and a deep one, +/- BN."""
    x, y, xt, yt = _subsets(cfg, data, seed)
    # held-out images, never trained on, the same for every seed
    probe_x, probe_y = data[2][-cfg["probe_size"] :], data[3][-cfg["probe_size"] :]
    out: dict[str, Any] = {}
    for net in cfg["nets"]:
        for bn in (True, False):
            model = _why_net(net, bn, seed, cfg).to(device)
            probe = _ActivationProbe(cfg, probe_x, probe_y)
            loss = train_steps(
                model, x, y, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
                after_backward=probe,
            )  # fmt: skip
            test_loss, test_acc = evaluate(model, xt, yt)
            out[f"{net}-{'bn' if bn else 'none'}"] = {
                "loss": loss.reshape(-1, cfg["probe_every"]).mean(axis=1),
                "percentiles": np.array(probe.pct),  # (probes, layers, percentiles)
                "hist_first_last": np.array(probe.hists),  # (2, layers, bins)
                "grad_norms": np.array(probe.grads),  # (probes, linear layers)
                "test_loss": test_loss,
                "test_acc": test_acc,
            }
    return out


#: The arms of ``dynamics-lenet``: ``(bn, init)`` for :func:`build_lenet`.
LENET_ARMS = {"bn": (True, "default"), "none": (False, "default"), "none-he": (False, "he")}


def _run_lenet(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """LeNet with BN, without BN, and without BN from He initialisation: training loss and test accuracy after
    every epoch."""
    x, y, xt, yt = _subsets(cfg, data, seed)
    per_epoch = len(y) // cfg["batch_size"]
    out: dict[str, Any] = {}
    for arm in cfg["arms"]:
        bn, init = LENET_ARMS[arm]
        model = build_lenet(bn=bn, seed=seed, activation=cfg["activation"], init=init).to(device)
        curves: dict[str, list[float]] = {"train_loss": [], "test_loss": [], "test_acc": [], "seconds": []}
        for epoch in range(cfg["epochs"]):
            t0 = time.perf_counter()
            loss = train_steps(
                model, x, y, steps=per_epoch, batch_size=cfg["batch_size"], lr=cfg["lr"], momentum=cfg["momentum"],
                seed=seed * 1000 + epoch,
            )  # fmt: skip
            curves["seconds"].append(time.perf_counter() - t0)
            curves["train_loss"].append(float(loss.mean()))
            test_loss, test_acc = evaluate(model, xt, yt)
            curves["test_loss"].append(test_loss)
            curves["test_acc"].append(test_acc)
        out[arm] = curves
    return out


class _NormProbe:
    """``after_backward`` hook of ``dynamics-scale``: at every step, for each layer, ``||W||``, ``||g||`` and the
    cosine between ``W`` and its gradient ``g``, in float64."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self.norms: list[list[float]] = []
        self.grads: list[list[float]] = []
        self.cosines: list[list[float]] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        w = [lin.weight.detach().double() for lin in self.layers]
        g = [lin.weight.grad.detach().double() for lin in self.layers]
        self.norms.append([float(a.norm()) for a in w])
        self.grads.append([float(b.norm()) for b in g])
        self.cosines.append([float((a * b).sum() / (a.norm() * b.norm())) for a, b in zip(w, g, strict=True)])


def _run_scale(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Weight norms, gradient-weight cosines and effective learning rates of BN layers under SGD, per weight decay."""
    x, y, xt, yt = _subsets(cfg, data, seed)
    depth, width = cfg["net"]
    out: dict[str, Any] = {}
    for wd in cfg["weight_decays"]:
        model = ex.build_mlp(depth, width, bn=True, seed=seed).to(device)
        probe = _NormProbe(scale_invariant_layers(model))
        loss = train_steps(
            model, x, y, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
            weight_decay=wd, after_backward=probe,
        )  # fmt: skip
        norms, grads, cosines = probe.norms, probe.grads, probe.cosines
        test_loss, test_acc = evaluate(model, xt, yt)
        every = cfg["record_every"]
        norms_a, grads_a = np.array(norms), np.array(grads)
        # eq-dyn-norm, step by step: the measured squared norm after each step against the prediction
        predicted = weight_norm_step(norms_a[:-1], grads_a[:-1], cfg["lr"], wd)
        out[str(wd)] = {
            "steps": np.arange(0, cfg["steps"], every),
            "w_norm": norms_a[::every],  # (records, layers)
            "g_norm": grads_a[::every],
            "cos_max": float(np.max(np.abs(cosines))),
            "norm_step_rel_err": float(np.max(np.abs(norms_a[1:] ** 2 - predicted) / norms_a[1:] ** 2)),
            "loss": loss.reshape(-1, every).mean(axis=1),
            "test_loss": test_loss,
            "test_acc": test_acc,
        }
    return out


def _run_init_scale(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Final training and test accuracy over a sweep of initial weight scales, with and without BN."""
    x, y, xt, yt = _subsets(cfg, data, seed)
    depth, width = cfg["net"]
    widths = (x.shape[1], *([width] * depth), 10)
    out: dict[str, Any] = {}
    for bn in (True, False):
        rows: dict[str, list[float]] = {"train_acc": [], "test_acc": [], "final_loss": []}
        for scale in cfg["scales"]:
            model = ex.build_mlp(depth, width, bn=bn, seed=seed)
            load_linear_weights(linear_layers(model), gaussian_weights(seed, widths, scale))
            model = model.to(device)
            loss = train_steps(
                model, x, y, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
                optimizer="adam",
            )  # fmt: skip
            rows["final_loss"].append(float(np.mean(loss[-cfg["final_window"] :])))
            rows["train_acc"].append(evaluate(model, x, y)[1])
            rows["test_acc"].append(evaluate(model, xt, yt)[1])
        out["bn" if bn else "none"] = rows
    return out


def _run_resnet(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Per-layer weight-gradient norms at initialisation: plain BN MLP, residual with gamma_last 1 and 0."""
    x, y = ex.take_subset(data[0], data[1], cfg["batch_size"], seed=seed)
    blocks, width = cfg["blocks"], cfg["width"]
    nets = {
        "plain": ex.build_mlp(2 * blocks + 1, width, bn=True, init="he", seed=seed),
        "residual": build_resnet(blocks, width, last_gamma=1.0, seed=seed),
        "residual-zero-gamma": build_resnet(blocks, width, last_gamma=0.0, seed=seed),
    }
    out: dict[str, Any] = {}
    for name, model in nets.items():
        norms = ex.weight_gradient_norms(model.to(device), x, y)
        # a zero gamma blocks every gradient into its branch: those weights get exactly zero at the first step
        hidden = norms[:-1][norms[:-1] > 0]
        growth = ex.fitted_growth_factor(hidden, first=1, last=len(hidden)) if len(hidden) >= 4 else None
        out[name] = {"grad_norms": norms, "growth": growth, "first_over_last": norms[0] / norms[-1]}
    return out


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "why-activations",
            "why",
            "SGD on 10,000 MNIST images: the inputs of every nonlinearity on 1,000 held-out images, every 50 "
            "steps, for the article's network and an 8-layer tanh network, with and without BN",
            {
                "nets": ["article", "deep"],
                "deep": [8, 64, "tanh"],
                "train_size": 10000,
                "test_size": 8000,
                "probe_size": 1000,
                "batch_size": 64,
                "lr": 0.1,
                "steps": 1000,
                "probe_every": 50,
                "percentiles": [5, 15, 50, 85, 95],
                "hist_range": 5.0,
                "hist_bins": 50,
            },
            (0, 1, 2),
            _run_why,
        ),
        Experiment(
            "dynamics-lenet",
            "dynamics (a)",
            "LeNet with BN, without BN (PyTorch's default initialisation) and without BN from He initialisation, "
            "SGD with momentum on 6,000 MNIST images, test accuracy per epoch",
            {
                "arms": ["bn", "none", "none-he"],
                "train_size": 6000,
                "test_size": 5000,
                "batch_size": 128,
                "lr": 0.02,
                "momentum": 0.9,
                "epochs": 4,
                "activation": "relu",
            },
            (0, 1, 2, 3, 4),
            _run_lenet,
        ),
        Experiment(
            "dynamics-scale",
            "dynamics (b)",
            "a 3-layer BN MLP under SGD at weight decays 0, 1e-3, 1e-2: norms of the BN layers' weights, "
            "gradient-weight cosines, effective learning rates",
            {
                "net": [3, 64],
                "train_size": 10000,
                "test_size": 10000,
                "batch_size": 64,
                "lr": 0.5,
                "steps": 1500,
                "record_every": 25,
                "weight_decays": [0.0, 1e-3, 1e-2],
            },
            (0, 1, 2),
            _run_scale,
        ),
        Experiment(
            "dynamics-init-scale",
            "dynamics (c)",
            "a 5-layer MLP (100 units) with weights N(0, s^2) for 9 scales s from 1e-4 to 1e0, with and without BN, "
            "Adam on 1,000 MNIST images",
            {
                "net": [5, 100],
                "train_size": 1000,
                "test_size": 2000,
                "batch_size": 50,
                "lr": 1e-3,
                "steps": 200,
                "final_window": 20,
                "scales": [float(s) for s in np.logspace(-4, 0, 9)],
            },
            (0, 1, 2),
            _run_init_scale,
        ),
        Experiment(
            "dynamics-resnet",
            "dynamics (d)",
            "per-layer weight-gradient norms at initialisation of a 31-layer plain BN MLP and residual MLPs "
            "with the last gamma of each block at 1 or 0",
            {"blocks": 15, "width": 128, "batch_size": 256},
            (0, 1, 2, 3, 4),
            _run_resnet,
        ),
    ]


#: The experiments of the chapters ``why`` and ``dynamics``, the group ``dynamics``.
REGISTRY = Registry({"dynamics": _experiments()}, module="bnref.experiments.dynamics")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check

if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
