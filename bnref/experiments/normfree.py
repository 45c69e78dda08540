"""Training deep residual networks without normalisation: the experiment behind the chapter ``normfree``.

The residual MLP of the chapter ``dynamics`` (:func:`bnref.experiments.dynamics.build_resnet`) in three versions,
``norm`` one of :data:`NORMS`:

* ``"bn"``: the network of ``dynamics`` itself, each block ``h -> relu(h + BN(W2 relu(BN(W1 h))))``;
* ``"none"``: the same without its BN layers (the Linear layers get biases, zero at the start);
* ``"skipinit"``: as ``"none"``, with a learned scalar ``alpha`` multiplying each residual branch, initialised to 0
  (SkipInit, De and Smith 2020): every block starts as the identity.

All three start from the same He-uniform weights for a seed. The experiment ``normaliser-free`` trains each of them
at two depths and several learning rates on an MNIST subset and records, per seed: the signal's size after each
block and every layer's gradient norm at initialisation, and per learning rate the loss curve, whether and when
training diverged, the test accuracy, the update-to-data ratio of every weight over training
(:class:`bnref.experiments.diagnostics.UpdateRatioRecorder`), the fraction of dead ReLU units at the end
(:func:`bnref.experiments.diagnostics.dead_fraction`) and how much the weight norms grew::

    python -m bnref.experiments.normfree run normaliser-free --out book/results/

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bnref.experiments import diagnostics as dg
from bnref.experiments import probes as ex
from bnref.experiments.dynamics import train_steps
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.mnist.models import check_int, initial_weights, linear_layers, load_linear_weights
from bnref.mnist.torch_training import evaluate, kept_buffers

__all__ = [
    "NORMS",
    "REGISTRY",
    "EXPERIMENTS",
    "NormFreeBlock",
    "build_residual",
    "block_rms",
    "first_divergence",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
]

#: The three versions of the residual network.
NORMS = ("none", "bn", "skipinit")


class NormFreeBlock(nn.Module):
    """One residual block ``h -> relu(h + alpha * F(h))`` with ``F(h) = N2(W2 relu(N1(W1 h)))``.

    ``norm="bn"``: ``N1, N2`` are ``BatchNorm1d``, the Linear layers have no bias and there is no ``alpha``: the
    block of :class:`bnref.experiments.dynamics.ResidualBlock` (same parameter names, same function), with its
    ReLUs as modules so that :mod:`bnref.experiments.diagnostics` finds them. ``norm="none"``: ``N1, N2`` are the
    identity and the Linear layers have biases. ``norm="skipinit"``: as ``"none"``, with a learned scalar
    ``alpha`` initialised to 0 (De and Smith 2020).
    """

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
        bn = norm == "bn"
        self.linear1 = nn.Linear(width, width, bias=not bn)
        self.bn1 = nn.BatchNorm1d(width) if bn else nn.Identity()
        self.act1 = nn.ReLU()
        self.linear2 = nn.Linear(width, width, bias=not bn)
        self.bn2 = nn.BatchNorm1d(width) if bn else nn.Identity()
        self.alpha = nn.Parameter(torch.zeros(())) if norm == "skipinit" else None
        self.act2 = nn.ReLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.linear2(self.act1(self.bn1(self.linear1(h)))))
        if self.alpha is not None:
            branch = self.alpha * branch
        return self.act2(h + branch)


def build_residual(
    blocks: int, width: int, norm: str, *, seed: int = 0, input_dim: int = 784, num_classes: int = 10
) -> nn.Sequential:
    """The residual MLP of ``dynamics`` with normalisation ``norm`` (:data:`NORMS`).

    ``Linear -> [BN] -> ReLU``, then ``blocks`` :class:`NormFreeBlock` s, then a Linear output: ``2 * blocks + 2``
    Linear layers with He-uniform weights drawn from ``seed`` (:func:`bnref.mnist.models.initial_weights`), the
    same for every ``norm``, and zero biases. With ``norm="bn"`` it computes what
    ``bnref.experiments.dynamics.build_resnet(blocks, width, last_gamma=1.0, seed=seed)`` computes.
    """
    check_int("blocks", blocks)
    check_int("width", width, low=2)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    bn = norm == "bn"
    model = nn.Sequential(
        nn.Linear(input_dim, width, bias=not bn),
        nn.BatchNorm1d(width) if bn else nn.Identity(),
        nn.ReLU(),
        *[NormFreeBlock(width, norm) for _ in range(blocks)],
        nn.Linear(width, num_classes),
    )
    hidden = (width,) * (2 * blocks + 1)
    weights = initial_weights(seed, input_dim=input_dim, hidden=hidden, num_classes=num_classes, init="he")
    load_linear_weights(linear_layers(model), weights)
    return model


def block_rms(model: nn.Sequential, x: np.ndarray) -> np.ndarray:
    """Root mean square of the signal after the stem and after each residual block, on the batch ``x``.

    Training mode (BN normalises with the batch's statistics); the running statistics are put back. Returns
    ``(blocks + 1,)`` float64, input side first.
    """
    h = torch.as_tensor(np.asarray(x, dtype=np.float32), device=next(model.parameters()).device)
    out = []
    with kept_buffers(model), torch.no_grad():
        model.train()
        h = model[2](model[1](model[0](h)))
        out.append(float(h.double().pow(2).mean().sqrt()))
        for block in model[3:-1]:
            h = block(h)
            out.append(float(h.double().pow(2).mean().sqrt()))
    return np.array(out)


def first_divergence(losses: np.ndarray) -> int | None:
    """The first step whose loss is not finite, or None if every loss is finite."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses, dtype=np.float64)))
    return int(bad[0]) if len(bad) else None


def _weight_norms(model: nn.Module) -> np.ndarray:
    return np.array([float(lin.weight.detach().double().norm()) for lin in linear_layers(model)])


class _Recorder(dg.UpdateRatioRecorder):
    """:class:`~bnref.experiments.diagnostics.UpdateRatioRecorder` that stops recording once a gradient is not
    finite (the run has diverged; the runner notes where from the losses)."""

    failed = False

    def __call__(self, step: int | None = None, model: nn.Module | None = None) -> None:
        if self.failed:
            return
        try:
            super().__call__(step, model)
        except ValueError:
            self.failed = True


def _one_run(cfg: dict[str, Any], blocks: int, norm: str, lr: float, seed: int, device, sets) -> dict[str, Any]:
    x, y, xt, yt, probe_x = sets
    model = build_residual(blocks, cfg["width"], norm, seed=seed).to(device)
    w0 = _weight_norms(model)
    recorder = _Recorder(model, lr, every=cfg["ratio_every"])
    loss = train_steps(
        model, x, y, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=lr, seed=seed, after_backward=recorder
    )
    diverged = first_divergence(loss)
    every = cfg["probe_every"]
    curve = loss.reshape(-1, every).mean(axis=1)
    out: dict[str, Any] = {
        "diverged_at": diverged,
        "loss": [round(float(v), 5) if np.isfinite(v) else None for v in curve],
        "test_acc": None,
        "test_loss": None,
        "update_ratio": None,
        "dead": None,
        "w_growth": None,
    }
    if diverged is None and not recorder.failed:
        test_loss, test_acc = evaluate(model, xt, yt)
        out.update(
            test_acc=test_acc,
            test_loss=test_loss,
            update_ratio=np.round(recorder.ratios, 2),
            dead=np.round(list(dg.dead_fraction(model, probe_x).values()), 4),
            w_growth=np.round(_weight_norms(model) / w0, 4),
        )
    return out


def _run_normfree(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Each network at each depth: signal and gradients at initialisation, then a run per learning rate."""
    x, y = ex.take_subset(data[0], data[1], cfg["train_size"], seed=seed)
    xt, yt = data[2][: cfg["test_size"]], data[3][: cfg["test_size"]]
    # held-out images, never trained on nor tested on, the same for every seed
    probe_x, probe_y = data[2][-cfg["probe_size"] :], data[3][-cfg["probe_size"] :]
    sets = (x, y, xt, yt, probe_x)
    out: dict[str, Any] = {}
    for depth, blocks in cfg["depths"].items():
        for norm in cfg["norms"]:
            model = build_residual(blocks, cfg["width"], norm, seed=seed).to(device)
            with kept_buffers(model):
                grads = ex.weight_gradient_norms(model, probe_x, probe_y)
            out[f"{depth}-{norm}"] = {
                "init_rms": block_rms(model, probe_x),
                "init_grad_norms": grads,
                "runs": {f"{lr:g}": _one_run(cfg, blocks, norm, lr, seed, device, sets) for lr in cfg["lrs"]},
            }
    return out


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "normaliser-free",
            "normfree",
            "residual MLPs of 2 and 15 blocks (width 64) without normalisation, with BN and with SkipInit, "
            "plain SGD at 5 learning rates on 4,000 MNIST images: signal and gradients at initialisation, loss, "
            "divergence, test accuracy, update-to-data ratios, dead units, weight-norm growth",
            {
                "norms": list(NORMS),
                "depths": {"shallow": 2, "deep": 15},
                "width": 64,
                "lrs": [0.0003, 0.003, 0.03, 0.3, 3.0],
                "train_size": 4000,
                "test_size": 2000,
                "probe_size": 500,
                "batch_size": 64,
                "steps": 300,
                "probe_every": 25,
                "ratio_every": 50,
            },
            (0, 1, 2, 3, 4),
            _run_normfree,
        ),
    ]


#: The experiment of the chapter ``normfree``, the group ``normfree``.
REGISTRY = Registry({"normfree": _experiments()}, module="bnref.experiments.normfree")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check

if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
