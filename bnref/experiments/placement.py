"""Where BN goes: the experiments behind the chapter ``placement``.

Two experiments, declared in the group ``bn-placement`` of :data:`REGISTRY` and run by one command each::

    python -m bnref.experiments.placement run placement --out book/results/
    python -m bnref.experiments.placement run dropout --out book/results/

* ``placement``: BN before the ReLU (the paper), after it (the article) and no BN, on the article's MLP and on the
  LeNet of the chapter ``dynamics``, with the same seeds, data and budget; test accuracy per epoch, the training
  loss curve, and the per-channel mean and standard deviation of what each weighted layer after the first receives
  (:func:`next_layer_inputs`).
* ``dropout``: the variance shift of inverted dropout in front of BN (Li et al. 2019). An MLP with dropout before
  two of its BN layers is trained; its BN layers' running variances are compared with the variance of their input
  at inference (dropout off), with the derivation (:func:`predicted_train_variance`), and the test accuracy with the
  two remedies: dropout after the last BN only, and the statistics recomputed with dropout off
  (:func:`bnref.layers.precise_bn.precise_bn` under :func:`dropout_off`).

What is here
------------
* :func:`build_article`, :func:`build_placed_lenet`: the two networks for a placement ``"before"``, ``"after"`` or
  ``"none"``.
* :func:`next_layer_inputs`: per-channel mean, standard deviation and fraction of negative values of the input of
  every Linear or Conv2d layer but the first, in training mode.
* :func:`build_dropout_mlp`, :func:`dropout_off`: the dropout network and a context in which its dropout does
  nothing even in training mode.
* :func:`dropout_variance`, :func:`predicted_train_variance`: the variance shift, for one unit and through the
  Linear layer in front of a BN layer.

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from bnref.experiments import probes as ex
from bnref.experiments.dynamics import build_lenet, train_steps
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.layers.precise_bn import precise_bn
from bnref.mnist.models import build_torch_model
from bnref.mnist.torch_training import evaluate, kept_buffers

__all__ = [
    "REGISTRY",
    "EXPERIMENTS",
    "PLACES",
    "DROPOUT_ARMS",
    "build_article",
    "build_placed_lenet",
    "next_layer_inputs",
    "build_dropout_mlp",
    "dropout_off",
    "dropout_variance",
    "predicted_train_variance",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
]

#: Where BN sits: before the ReLU (the paper), after it (the article), or no BN.
PLACES: tuple[str, ...] = ("before", "after", "none")

#: The networks of ``dropout``: no dropout, dropout in front of two BN layers, dropout after the last BN only.
DROPOUT_ARMS: tuple[str, ...] = ("none", "before-bn", "after-last-bn")


def _check_place(placement: str) -> None:
    if placement not in PLACES:
        raise ValueError(f"placement must be one of {PLACES}; got {placement!r}")


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------


def build_article(placement: str, seed: int = 0) -> nn.Sequential:
    """The article's MLP (784-64-32-10, Glorot-uniform weights from ``seed``) with BN before or after each ReLU or
    without BN (:func:`bnref.mnist.models.build_torch_model`)."""
    _check_place(placement)
    if placement == "none":
        return build_torch_model("none", "after", seed)
    return build_torch_model("native", placement, seed)


def build_placed_lenet(placement: str, seed: int = 0) -> nn.Sequential:
    """The LeNet of :func:`bnref.experiments.dynamics.build_lenet` with BN before or after each ReLU, or without BN.

    ``"before"`` is ``build_lenet(bn=True)``: ``conv (no bias) -> BN -> ReLU`` and ``Linear (no bias) -> BN -> ReLU``,
    PyTorch's default initialisation from ``seed``. ``"after"`` moves each BN behind its ReLU: ``conv (with bias) ->
    ReLU -> BN -> max-pool`` and ``Linear -> ReLU -> BN``, the same default initialisation. (BN with ``gamma > 0``
    is increasing in each channel, so max-pooling after it picks the same position as before it.) ``"none"`` is
    ``build_lenet(bn=False, init="he")``, the fair network without BN of the chapter ``dynamics``.
    """
    _check_place(placement)
    if placement == "before":
        return build_lenet(bn=True, seed=seed)
    if placement == "none":
        return build_lenet(bn=False, seed=seed, init="he")
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.BatchNorm2d(6),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.BatchNorm2d(16),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.BatchNorm1d(120),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.BatchNorm1d(84),
        nn.Linear(84, 10),
    )


def _weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def next_layer_inputs(model: nn.Module, x: np.ndarray) -> list[dict[str, Any]]:
    """What every Linear or Conv2d layer after the first receives, on the batch ``x``, in training mode.

    For each such layer, per input channel (a convolution's channel over the batch and both spatial axes, a Linear
    layer's input unit over the batch): the mean and the standard deviation (``ddof=0``), in float64, and the
    fraction of all its input values below zero. The model's buffers (BN running statistics) are put back
    afterwards.

    Returns
    -------
    list of dict
        One per layer, input to output: ``{"mean": (C,), "std": (C,), "negative": float}``.
    """
    layers = _weighted(model)[1:]
    if not layers:
        raise ValueError("the model has fewer than two Linear or Conv2d layers: no layer receives another's output")
    seen: list[np.ndarray] = []
    handles = [m.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().double())) for m in layers]
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32), device=next(model.parameters()).device)
    try:
        with kept_buffers(model), torch.no_grad():
            was_training = model.training
            model.train()
            model(xs)
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    out = []
    for v in seen:
        per_channel = v.transpose(0, 1).reshape(v.shape[1], -1)
        out.append(
            {
                "mean": per_channel.mean(dim=1).cpu().numpy(),
                "std": per_channel.std(dim=1, unbiased=False).cpu().numpy(),
                "negative": float((v < 0).double().mean()),
            }
        )
    return out


def build_dropout_mlp(arm: str, *, keep: float, width: int = 128, seed: int = 0) -> nn.Sequential:
    """A 784-``width``-``width``-``width``-10 MLP with BN before each ReLU, and dropout placed by ``arm``.

    ``"none"``: no dropout. ``"before-bn"``: dropout after the first and the second ReLU, so the second and the
    third BN layer receive (through a Linear layer) what dropout let through. ``"after-last-bn"``: one dropout after
    the last ReLU, in front of the output layer and behind every BN. Inverted dropout, ``torch.nn.Dropout(1 - keep)``:
    in training each value is kept with probability ``keep`` and divided by ``keep``. He-uniform weights from
    ``seed`` (:func:`bnref.experiments.probes.build_mlp`), the same for every arm.
    """
    if arm not in DROPOUT_ARMS:
        raise ValueError(f"arm must be one of {DROPOUT_ARMS}; got {arm!r}")
    _check_keep(keep)
    base = list(ex.build_mlp(3, width, bn=True, init="he", seed=seed))
    relus = [i for i, m in enumerate(base) if isinstance(m, nn.ReLU)]
    after = {"none": [], "before-bn": relus[:2], "after-last-bn": relus[2:]}[arm]
    modules: list[nn.Module] = []
    for i, m in enumerate(base):
        modules.append(m)
        if i in after:
            modules.append(nn.Dropout(1.0 - keep))
    return nn.Sequential(*modules)


@contextlib.contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Within the block every ``torch.nn.Dropout`` of ``model`` has ``p = 0``: the identity even in training mode
    (so that :func:`bnref.layers.precise_bn.precise_bn`, which runs the model in training mode, sees the inputs of
    inference). Their ``p`` is put back afterwards."""
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    saved = [m.p for m in drops]
    try:
        for m in drops:
            m.p = 0.0
        yield
    finally:
        for m, p in zip(drops, saved, strict=True):
            m.p = p


def dropout_variance(x: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """The variance of each column of ``x`` under inverted dropout in training and at inference.

    In training ``x`` becomes ``x m / p`` with ``m ~ Bernoulli(p)`` independent of ``x``: its mean stays ``E[x]``,
    its second moment becomes ``E[x^2] / p``, so its variance is ``E[x^2] / p - E[x]^2``; at inference it is
    ``Var[x] = E[x^2] - E[x]^2``. The two differ by ``(1 - p) / p * E[x^2]``.

    Returns
    -------
    (train, inference) : ndarray, each (columns,), float64
    """
    p = _check_keep(keep)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    m1, m2 = x.mean(axis=0), (x**2).mean(axis=0)
    return m2 / p - m1**2, m2 - m1**2


def predicted_train_variance(weight: np.ndarray, x: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """The variance of ``z = W (x * m / p)``, the input of a BN layer behind a dropout and a Linear layer.

    Write ``x m / p = x + e``: the noise ``e_i = x_i (m_i / p - 1)`` has mean 0 given ``x``, variance
    ``x_i^2 (1 - p) / p``, and is uncorrelated across units and with ``x``. So
    ``Var[z_j] = Var[(W x)_j] + (1 - p) / p * sum_i W_ji^2 E[x_i^2]``, exactly, whatever the correlations
    between the units of ``x``; with ``W`` the identity it is :func:`dropout_variance`.

    Parameters
    ----------
    weight : ndarray, shape (out, in)
        The Linear layer's weight (PyTorch layout).
    x : ndarray, shape (n, in)
        What enters the dropout, over the population.
    keep : float

    Returns
    -------
    (train, inference) : ndarray, each (out,), float64
    """
    p = _check_keep(keep)
    w = np.asarray(weight, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if w.ndim != 2 or x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"weight (out, in) and x (n, in) must agree; got {w.shape} and {x.shape}")
    inference = (x @ w.T).var(axis=0)
    return inference + (1.0 - p) / p * (w**2) @ (x**2).mean(axis=0), inference


def _check_keep(keep: float) -> float:
    if not (isinstance(keep, (int, float, np.floating)) and 0 < keep <= 1):
        raise ValueError(f"keep must be a probability in (0, 1]; got {keep!r}")
    return float(keep)


# --------------------------------------------------------------------------------------------
# runners: one seed each
# --------------------------------------------------------------------------------------------


def _subsets(cfg: dict[str, Any], data: Data, seed: int) -> tuple[np.ndarray, ...]:
    """The seed's training subset, the first ``test_size`` test images and the last ``probe_size`` ones (held out,
    the same for every seed)."""
    x, y = ex.take_subset(data[0], data[1], cfg["train_size"], seed=seed)
    probe = data[2][-cfg["probe_size"] :] if "probe_size" in cfg else None
    return x, y, data[2][: cfg["test_size"]], data[3][: cfg["test_size"]], probe


def _run_placement(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Both networks in each placement: loss curve, test accuracy per epoch, next-layer statistics at the start and
    the end."""
    out: dict[str, Any] = {}
    for net in cfg["nets"]:
        c = {**cfg, **cfg[net]}
        x, y, xt, yt, probe = _subsets(c, data, seed)
        per_epoch = len(y) // c["batch_size"]
        build = build_article if net == "article" else build_placed_lenet
        for place in cfg["placements"]:
            model = build(place, seed).to(device)
            start = next_layer_inputs(model, probe)
            curves: dict[str, list[float]] = {"loss": [], "test_acc": [], "test_loss": []}
            t0 = time.perf_counter()
            for epoch in range(c["epochs"]):
                loss = train_steps(
                    model, x, y, steps=per_epoch, batch_size=c["batch_size"], lr=c["lr"], momentum=c["momentum"],
                    seed=seed * 1000 + epoch,
                )  # fmt: skip
                every = c["curve_every"]
                curves["loss"] += loss[: len(loss) // every * every].reshape(-1, every).mean(axis=1).tolist()
                test_loss, test_acc = evaluate(model, xt, yt)
                curves["test_loss"].append(test_loss)
                curves["test_acc"].append(test_acc)
            curves["seconds"] = time.perf_counter() - t0
            end = next_layer_inputs(model, probe)
            curves["inputs_start"] = start
            curves["inputs_end"] = end
            out[f"{net}-{place}"] = curves
    return out


@contextlib.contextmanager
def _dropout_inputs(model: nn.Sequential) -> Iterator[dict[int, list[np.ndarray]]]:
    """Within the block, collect what enters each Dropout module of ``model`` (float64), by the module's index in
    the Sequential."""
    got: dict[int, list[np.ndarray]] = {i: [] for i, m in enumerate(model) if isinstance(m, nn.Dropout)}
    handles = [
        model[i].register_forward_pre_hook(lambda _m, inp, i=i: got[i].append(inp[0].detach().double().numpy()))
        for i in got
    ]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def _run_dropout(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """The three dropout arms at each keep probability: test accuracy and loss, and for ``before-bn`` the BN layers'
    running variances against the variance at inference and the prediction, and the two recomputations."""
    x, y, xt, yt, _ = _subsets(cfg, data, seed)
    steps = cfg["epochs"] * (len(y) // cfg["batch_size"])
    out: dict[str, Any] = {}
    for keep in cfg["keeps"]:
        row: dict[str, Any] = {}
        for arm in cfg["arms"]:
            if arm == "none" and keep != cfg["keeps"][0]:
                continue  # no dropout: the same network at every keep probability
            torch.manual_seed(seed)  # the dropout masks
            model = build_dropout_mlp(arm, keep=keep, width=cfg["width"], seed=seed).to(device)
            train_steps(model, x, y, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"],
                        momentum=cfg["momentum"], seed=seed)  # fmt: skip
            test_loss, test_acc = evaluate(model, xt, yt)
            row[arm] = {"test_loss": test_loss, "test_acc": test_acc}
            if arm != "before-bn":
                continue
            model = model.cpu()
            # each BN layer behind a dropout and a Linear layer, by the indices of the dropout and of the BN
            pairs = [(i, i + 2) for i, m in enumerate(model) if isinstance(m, nn.Dropout)]
            on, off = copy.deepcopy(model), copy.deepcopy(model)
            torch.manual_seed(seed + 10_000)  # the masks of the recomputation with dropout on
            with _dropout_inputs(on) as inputs:
                precise_on = precise_bn(on, x, batch_size=cfg["batch_size"])
            with dropout_off(off):
                precise_off = precise_bn(off, x, batch_size=cfg["batch_size"])
            layers = {}
            for drop, bn in pairs:
                weight = model[drop + 1].weight.detach().numpy()
                layers[str(bn)] = {
                    "ema_var": model[bn].running_var.double().numpy().copy(),  # as trained
                    "train_var": precise_on[str(bn)]["var"],  # recomputed with dropout on
                    "inference_var": precise_off[str(bn)]["var"],  # recomputed with dropout off
                    "predicted_var": predicted_train_variance(weight, np.concatenate(inputs[drop]), keep)[0],
                }
            row[arm]["layers"] = layers
            for key, m in (("precise-on", on), ("precise-off", off)):
                tl, ta = evaluate(m.to(device), xt, yt)
                row[key] = {"test_loss": tl, "test_acc": ta}
        out[str(keep)] = row
    return out


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "placement",
            "placement (a)",
            "BN before the ReLU, after it, and no BN, on the article's MLP (SGD on 10,000 MNIST images) and on LeNet "
            "(4,000 images), same seeds and budget: loss curves, test accuracy per epoch, and the per-channel mean "
            "and standard deviation of every later layer's input",
            {
                "nets": ["article", "lenet"],
                "placements": list(PLACES),
                "article": {"train_size": 10000, "batch_size": 64, "epochs": 3, "lr": 0.02},
                "lenet": {"train_size": 4000, "batch_size": 64, "epochs": 2, "lr": 0.02},
                "momentum": 0.9,
                "test_size": 5000,
                "probe_size": 1000,
                "curve_every": 10,
            },
            (0, 1, 2, 3, 4),
            _run_placement,
        ),
        Experiment(
            "dropout",
            "placement (b)",
            "a 3-hidden-layer BN MLP with dropout in front of two BN layers, after the last BN only, or none, at keep "
            "probabilities 0.8 and 0.5 (SGD on 6,000 MNIST images): running variances against inference and the "
            "derivation, and test accuracy with the statistics as trained and recomputed with dropout on and off",
            {
                "arms": list(DROPOUT_ARMS),
                "keeps": [0.8, 0.5],
                "width": 128,
                "train_size": 6000,
                "test_size": 5000,
                "batch_size": 64,
                "epochs": 3,
                "lr": 0.02,
                "momentum": 0.9,
            },
            (0, 1, 2, 3, 4),
            _run_dropout,
        ),
    ]


#: The experiments of the chapter ``placement``, the group ``bn-placement``.
REGISTRY = Registry({"bn-placement": _experiments()}, module="bnref.experiments.placement")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check

if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
