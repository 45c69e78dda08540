"""When the data shift: BN's running statistics against re-estimated ones, the experiment of the chapter
``recalibration``.

A BN network evaluated in inference mode normalises every input with the running statistics it collected on the
training distribution. On a shifted test set those statistics are wrong. The experiment compares three ways to
evaluate a network trained once per seed on clean MNIST:

* **as is**: inference mode, the running statistics of training;
* **AdaBN** (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"): every BN layer's
  statistics re-estimated on unlabelled images of the shifted distribution (a held-out part of the shifted test
  set, never the images evaluated), with :func:`bnref.layers.precise_bn.precise_bn`, then inference mode;
* **test-time batch statistics**: BN in training mode at test time, each test batch normalised with its own mean
  and variance, for several test batch sizes.

Declared in the group ``domain-shift`` of :data:`REGISTRY` and run by::

    python -m bnref.experiments.recalibration run recalibration --out book/results/

What is here
------------
* :func:`shift_images`: the shifts, an affine change of intensity ``x -> a x + b`` and additive Gaussian noise;
* :func:`adabn`: a copy of a model whose BN statistics are re-estimated on unlabelled data;
* :func:`batch_stat_accuracy`: accuracy with BN in training mode on consecutive test batches;
* :func:`first_bn_input`: what the first BN layer normalises, for the exactness check of the affine shift;
* :func:`train_model`: the article's network (BN before the ReLU) trained on a subset of clean MNIST.

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from bnref.experiments import probes as ex
from bnref.experiments.dynamics import train_steps
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.layers.precise_bn import bn_layers, precise_bn
from bnref.mnist.models import build_torch_model, check_int
from bnref.mnist.torch_training import evaluate, kept_buffers

__all__ = [
    "REGISTRY",
    "EXPERIMENTS",
    "SHIFT_KINDS",
    "shift_images",
    "adabn",
    "batch_stat_accuracy",
    "first_bn_input",
    "train_model",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
]

#: The shifts :func:`shift_images` knows, with the parameters each needs.
SHIFT_KINDS = {"none": (), "affine": ("scale", "offset"), "noise": ("std",)}


def shift_images(x: np.ndarray, shift: dict[str, Any], *, seed: int | tuple[int, ...] = 0) -> np.ndarray:
    """A shifted copy of the images ``x`` (float32 ``(n, d)``, values in [0, 1]), not clipped to [0, 1].

    ``{"kind": "none"}``: the images unchanged. ``{"kind": "affine", "scale": a, "offset": b}``: every pixel
    ``x -> a x + b`` (a change of contrast ``a`` and brightness ``b``). ``{"kind": "noise", "std": s}``: every pixel
    plus independent Gaussian noise ``N(0, s^2)`` drawn by ``numpy.random.default_rng(seed)``.

    Raises ValueError for an unknown kind, a missing or extra parameter, or a non-finite one.
    """
    if not isinstance(shift, dict) or shift.get("kind") not in SHIFT_KINDS:
        raise ValueError(f"shift must be a dict whose 'kind' is one of {tuple(SHIFT_KINDS)}; got {shift!r}")
    kind = shift["kind"]
    params = {k: v for k, v in shift.items() if k != "kind"}
    if sorted(params) != sorted(SHIFT_KINDS[kind]):
        raise ValueError(f"a shift of kind {kind!r} takes the parameters {SHIFT_KINDS[kind]}; got {sorted(params)}")
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in params.values()):
        raise ValueError(f"shift parameters must be finite numbers; got {params}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be (n, d) features; got shape {x.shape}")
    if kind == "none":
        return x.copy()
    if kind == "affine":
        return (np.float32(params["scale"]) * x + np.float32(params["offset"])).astype(np.float32)
    if params["std"] < 0:
        raise ValueError(f"the noise's std must be >= 0; got {params['std']}")
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    return (x + np.float32(params["std"]) * noise.astype(np.float32)).astype(np.float32)


def adabn(model: nn.Module, x_unlabelled: np.ndarray | torch.Tensor, *, batch_size: int) -> nn.Module:
    """AdaBN: a deep copy of ``model`` whose every BN layer holds statistics re-estimated on ``x_unlabelled``.

    The copy runs over ``x_unlabelled`` cut into consecutive batches of ``batch_size`` (the last incomplete one
    dropped), in training mode, and each BN layer's running mean and variance become the population mean and
    unbiased variance of everything it saw (:func:`bnref.layers.precise_bn.precise_bn`). Labels are not needed;
    ``model`` itself is left unchanged. An array is cast to float32; a tensor is used as it is (a float64 model
    takes float64 tensors).
    """
    adapted = copy.deepcopy(model)
    data = x_unlabelled if isinstance(x_unlabelled, torch.Tensor) else np.asarray(x_unlabelled, dtype=np.float32)
    precise_bn(adapted, data, batch_size=batch_size)
    return adapted


def batch_stat_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> float:
    """Accuracy of ``model`` with test-time batch statistics: each BN layer in training mode, normalising each
    consecutive batch of ``batch_size`` test examples with that batch's own mean and biased variance.

    The running statistics are put back afterwards (nothing is learned) and the modules' flags are restored.
    ``len(x)`` must be a multiple of ``batch_size``, so every prediction comes from a batch of that size. A batch of
    one is refused: its mean is the example itself, so BN's output would be ``beta`` whatever the input.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    n = len(x)
    check_int("batch_size", batch_size, low=1)
    if batch_size < 2:
        raise ValueError(
            "batch_size must be >= 2: with one example per batch, x - mean(x) = 0 and every BN output is beta"
        )
    if n == 0 or n % batch_size or len(y) != n:
        raise ValueError(f"need len(x) == len(y), a positive multiple of batch_size={batch_size}; got {n}, {len(y)}")
    layers = [m for _, m in bn_layers(model)]
    flags = {m: m.training for m in model.modules()}
    dev = next(model.parameters()).device
    xs = torch.from_numpy(x).to(dev)
    ys = torch.as_tensor(y, dtype=torch.int64, device=dev)
    correct = 0
    try:
        model.eval()
        for m in layers:
            m.train()  # batch statistics in BN only; any other layer stays in inference mode
        with kept_buffers(model), torch.no_grad():
            for start in range(0, n, batch_size):
                logits = model(xs[start : start + batch_size])
                correct += int((logits.argmax(dim=1) == ys[start : start + batch_size]).sum())
    finally:
        for m, was in flags.items():
            m.training = was
    return correct / n


def first_bn_input(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The input of the model's first BN layer on ``x`` (inference mode; float64 ``(n, channels, ...)``)."""
    first = bn_layers(model)[0][1]
    seen: list[torch.Tensor] = []
    handle = first.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(np.asarray(x, dtype=np.float32)).to(next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was)
    return seen[0].double().cpu().numpy()


def train_model(cfg: dict[str, Any], seed: int, data: Data, device: torch.device | str = "cpu") -> nn.Module:
    """The article's network with BN before each ReLU (``build_torch_model("native", "before", seed)``), trained by
    SGD with momentum on the seed's subset of ``cfg["train_size"]`` clean training images for ``cfg["epochs"]``."""
    x, y = ex.take_subset(data[0], data[1], cfg["train_size"], seed=seed)
    model = build_torch_model("native", "before", seed).to(device)
    steps = cfg["epochs"] * (len(y) // cfg["batch_size"])
    train_steps(
        model, x, y, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"], momentum=cfg["momentum"], seed=seed
    )
    return model.eval()


def _run(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """One seed: train on clean images, then per shift the accuracy as is, after AdaBN on each number of
    unlabelled shifted images, and with test-time batch statistics at each test batch size."""
    model = train_model(cfg, seed, data, device)
    n_eval = cfg["eval_size"]
    x_eval, y_eval = data[2][:n_eval], data[3][:n_eval]
    x_pool = data[2][n_eval:]  # the unlabelled part of the test set, never evaluated
    out: dict[str, Any] = {}
    clean_adapted: dict[int, nn.Module] = {}
    for k, (name, shift) in enumerate(cfg["shifts"].items()):
        xe = shift_images(x_eval, shift, seed=(seed, k, 0))
        xp = shift_images(x_pool, shift, seed=(seed, k, 1))
        row: dict[str, Any] = {"as_is": evaluate(model, xe, y_eval)[1], "adabn": {}, "batch_stats": {}}
        for n in cfg["adapt_sizes"]:
            adapted = adabn(model, xp[:n], batch_size=min(n, cfg["adapt_batch"]))
            row["adabn"][str(n)] = evaluate(adapted, xe, y_eval)[1]
            if shift["kind"] == "none":
                clean_adapted[n] = adapted
            elif shift["kind"] == "affine" and n == max(cfg["adapt_sizes"]):
                # the derivation's claim: after AdaBN the first BN layer's output on a x + b equals the output on
                # x after precise BN on the same (clean) unlabelled images
                clean = clean_adapted[n]
                z_s, z_c = first_bn_input(adapted, xe), first_bn_input(clean, x_eval)
                bn_s, bn_c = bn_layers(adapted)[0][1], bn_layers(clean)[0][1]
                with torch.no_grad():
                    out_s = bn_s(torch.from_numpy(z_s).to(bn_s.weight.dtype)).double().numpy()
                    out_c = bn_c(torch.from_numpy(z_c).to(bn_c.weight.dtype)).double().numpy()
                    pred_s = adapted(torch.from_numpy(xe)).argmax(dim=1).numpy()
                    pred_c = clean(torch.from_numpy(x_eval)).argmax(dim=1).numpy()
                row["first_bn_max_diff"] = float(np.max(np.abs(out_s - out_c)))
                # what eps alone leaves: (z - mu) / sqrt(v + eps) against (z - mu) / sqrt(v + eps / a^2), per unit
                var = bn_c.running_var.double().numpy().reshape(1, -1, *([1] * (z_c.ndim - 2)))
                gain = bn_c.weight.detach().double().numpy().reshape(var.shape)
                a2 = float(shift["scale"]) ** 2
                x_hat = (z_c - bn_c.running_mean.double().numpy().reshape(var.shape)) / np.sqrt(var + bn_c.eps)
                eps_part = np.abs(gain * x_hat * (1 - np.sqrt((var + bn_c.eps) / (var + bn_c.eps / a2))))
                row["first_bn_eps_effect"] = float(np.max(eps_part))
                row["first_bn_max_abs"] = float(np.max(np.abs(out_c)))
                row["predictions_changed"] = int(np.sum(pred_s != pred_c))
        for b in cfg["test_batch_sizes"]:
            row["batch_stats"][str(b)] = batch_stat_accuracy(model, xe, y_eval, batch_size=b)
        out[name] = row
    return out


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "recalibration",
            "recalibration",
            "the article's network (BN before ReLU) trained on 10,000 clean MNIST images, evaluated on 5,120 test "
            "images clean, with contrast and brightness changed (0.5 x + 0.4) and with Gaussian noise (std 0.5): "
            "as is, after AdaBN on unlabelled shifted test images, and with test-time batch statistics",
            {
                "train_size": 10000,
                "batch_size": 64,
                "lr": 0.05,
                "momentum": 0.9,
                "epochs": 3,
                "eval_size": 5120,
                "shifts": {
                    "clean": {"kind": "none"},
                    "contrast": {"kind": "affine", "scale": 0.5, "offset": 0.4},
                    "noise": {"kind": "noise", "std": 0.5},
                },
                "adapt_sizes": [32, 256, 4864],
                "adapt_batch": 256,
                "test_batch_sizes": [2, 8, 32, 256],
            },
            (0, 1, 2, 3, 4),
            _run,
        )
    ]


#: The experiment of the chapter ``recalibration``, the group ``domain-shift``.
REGISTRY = Registry({"domain-shift": _experiments()}, module="bnref.experiments.recalibration")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check

if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
