"""The article's claims about BN as experiments: each declared once, run over seeds, written as records.

The book's chapter ``claims`` tests eight claims the article makes about what BN does. Each experiment behind
them is declared here once, as a :class:`bnref.experiments.registry.Experiment` (name, the claims it tests,
summary, full configuration, seeds, runner), in the group ``claims`` of :data:`REGISTRY`. One command runs
them in full and writes one :class:`bnref.records.ExperimentRecord` per experiment::

    python -m bnref.experiments run claims --device cpu --out book/results/
    python -m bnref.experiments run claims-lr-sweep --seeds 3 --device cuda --out /tmp/records

The chapter shows the committed records and runs a reduced configuration of each experiment live
(:func:`run_experiment` with ``overrides``), checking with :func:`bnref.mnist.verdicts.within_spread` that the
live numbers fall inside the spread of the recorded seeds; its verdicts follow
:func:`bnref.mnist.verdicts.compare_paired`. A test checks every committed record against its definition here
(:func:`check_record`), so a record cannot silently describe another experiment than the code runs.

PyTorch is imported inside the runners; declaring, loading and checking need NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnref.experiments import measures
from bnref.experiments import probes as ex
from bnref.experiments.registry import Data, Experiment, Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "REGISTRY",
    "EXPERIMENTS",
    "LR_GRID",
    "BEST_LR",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
]

# four learning rates per decade, 0.01 to 10: 13 rates over three decades, neighbours a factor 10^(1/4) = 1.78 apart
LR_GRID: list[float] = [10.0 ** (k / 4) for k in range(-8, 5)]
# each network's best rate in claims-lr-sweep (lowest final training loss, mean over its seeds), chosen from the
# committed record and run again on fresh seeds as claims-best-lr-fresh; a test checks it against the record
BEST_LR: dict[str, float] = {"native": LR_GRID[7], "none": LR_GRID[7]}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _train_subset(data: Data, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return ex.take_subset(data[0], data[1], n, seed=seed)


# --------------------------------------------------------------------------------------------
# runners: one seed each
# --------------------------------------------------------------------------------------------

EPOCH_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "train_s")


def _epochs(record: Any) -> dict[str, list[float]]:
    """Per-epoch curves of a :class:`bnref.records.RunRecord`, one list per field."""
    return {f: [getattr(e, f) for e in record.epochs] for f in EPOCH_FIELDS}


def _adam_runs(cfg: dict[str, Any], data: Sequence[np.ndarray], seed: int, device: torch.device, **kw: Any) -> dict:
    """The article's network, trained with the article's recipe, once per BN choice in ``cfg["bn"]``."""
    from bnref.mnist.torch_training import train_torch

    return {
        bn: train_torch(
            data, bn=bn, placement=cfg["placement"], lr=cfg["lr"], seed=seed, device=str(device), progress=False, **kw
        )
        for bn in cfg["bn"]
    }


def _run_speed(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    runs = _adam_runs(cfg, data, seed, device, epochs=cfg["epochs"], batch_size=cfg["batch_size"])
    return {bn: _epochs(r) for bn, r in runs.items()}


def _sgd_runs(cfg: dict[str, Any], lrs: dict[str, list[float]], seed: int, device: torch.device, data: Data) -> dict:
    """The article's network trained by SGD at each of ``lrs[bn]``: final training loss, test accuracy, divergence."""
    from bnref.mnist.models import build_torch_model

    x, y = _train_subset(data, cfg["train_size"], seed)
    out = {}
    for bn in cfg["bn"]:
        sweep = ex.lr_sweep(
            lambda bn=bn: build_torch_model(bn, cfg["placement"], seed=seed).to(device),
            lrs[bn],
            x,
            y,
            data[2],
            data[3],
            steps=cfg["steps"],
            batch_size=cfg["batch_size"],
            seed=seed,
            tail=cfg["tail"],
            blowup=cfg["blowup"],
        )
        out[bn] = {k: sweep[k] for k in ("final_loss", "test_acc", "diverged")}
    return out


def _run_lr_sweep(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    return _sgd_runs(cfg, {bn: cfg["lrs"] for bn in cfg["bn"]}, seed, device, data)


def _run_best_lr(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    return _sgd_runs(cfg, {bn: [cfg["lr"][bn]] for bn in cfg["bn"]}, seed, device, data)


def _run_overfit(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    out = {}
    for n, epochs in cfg["sizes"]:
        split = measures.validation_split(data[0], data[1], n, cfg["val_size"], seed)
        out[str(n)] = {
            bn: measures.train_with_validation(
                (*split, data[2], data[3]),
                bn=bn,
                placement=cfg["placement"],
                epochs=epochs,
                batch_size=cfg["batch_size"],
                lr=cfg["lr"],
                seed=seed,
                device=device,
                bins=cfg["ece_bins"],
            )
            for bn in cfg["bn"]
        }
    return out


def _run_small_batch(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    x_test, y_test = data[2], data[3]
    x, y = _train_subset(data, cfg["train_size"], seed)
    out: dict[str, dict[str, float]] = {bn: {} for bn in cfg["bn"]}
    for bs in cfg["batch_sizes"]:
        runs = _adam_runs(cfg, (x, y, x_test, y_test), seed, device, epochs=cfg["epochs"], batch_size=bs)
        for bn, r in runs.items():
            out[bn][str(bs)] = r.final.test_acc
    return out


def _deep_net(cfg: dict[str, Any], net: str, seed: int, device: torch.device, activation: str = "relu"):
    kw = cfg["nets"][net]
    return ex.build_mlp(cfg["depth"], cfg["width"], activation=activation, seed=seed, **kw).to(device)


def _norms(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Each Linear layer's gradient norm on one batch and its weight norm (input layer first)."""
    return {"grad": ex.weight_gradient_norms(model, x, y), "weight": measures.weight_norms(model)}


def _run_gradients(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    from bnref.mnist.torch_training import evaluate

    x_b, y_b = _train_subset(data, cfg["batch"], 100 + seed)
    init: dict[str, dict[str, Any]] = {}
    for act in cfg["activations"]:
        nets = cfg["nets"] if act == "relu" else [n for n in cfg["nets"] if cfg["nets"][n]["bn"]]
        init[act] = {n: _norms(_deep_net(cfg, n, seed, device, act), x_b, y_b) for n in nets}
    tr = cfg["training"]
    x, y = _train_subset(data, tr["train_size"], seed)
    x_test, y_test = data[2], data[3]
    x_fixed, y_fixed = ex.take_subset(x_test, y_test, cfg["batch"], seed=7)
    training: dict[str, dict[str, Any]] = {}
    for net in tr["nets"]:
        model, done, norms = _deep_net(cfg, net, seed, device), 0, {}
        for step in tr["checkpoints"]:
            if step > done:
                ex.train_sgd(
                    model, x, y, steps=step - done, lr=tr["lr"], batch_size=tr["batch_size"], seed=1000 * seed + step
                )
                done = step
            norms[str(step)] = _norms(model, x_fixed, y_fixed)
        training[net] = {"norms": norms, "test_acc": evaluate(model, x_test, y_test)[1]}
    return {"init": init, "training": training}


def _run_cost(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    from bnref.mnist.models import build_torch_model

    x, y = _train_subset(data, cfg["train_size"], seed)
    models = {bn: build_torch_model(bn, cfg["placement"], seed=seed).to(device) for bn in cfg["bn"]}
    times = ex.step_seconds(
        models,
        x,
        y,
        batch_size=cfg["batch_size"],
        rounds=cfg["rounds"],
        steps_per_round=cfg["steps_per_round"],
        lr=cfg["lr"],
        seed=seed,
    )
    return {bn: t for bn, t in times.items()}


def _run_ics(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    from bnref.mnist.torch_training import evaluate

    x, y = _train_subset(data, cfg["train_size"], seed)
    x_test, y_test = data[2], data[3]
    probe, _ = ex.take_subset(x_test, y_test, cfg["probe_size"], seed=1)
    out = {}
    for name, kw in cfg["nets"].items():
        kw = dict(kw)
        s = kw.pop("shift", None)
        shift = None if s is None else (s, float(np.log1p(s)))
        model = ex.build_mlp(cfg["depth"], cfg["width"], init=cfg["init"], seed=seed, shift_noise=shift, **kw)
        model = model.to(device)
        run = ex.train_sgd(
            model,
            x,
            y,
            steps=cfg["steps"],
            lr=cfg["lr"],
            batch_size=cfg["batch_size"],
            seed=seed,
            probe=probe,
            probe_layer=cfg["layer"],
            ics_layer=cfg["layer"],
            record_every=cfg["record_every"],
            probe_eval=True,
        )
        out[name] = {
            "drift": ex.input_shift(run["probe_stats"]),
            "drift_eval": ex.input_shift(run["probe_stats_eval"]),
            "grad_change": run["ics_rel"],
            "test_acc": evaluate(model, x_test, y_test)[1],
        }
    return out


def _run_aa(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    from bnref.mnist.models import build_torch_model

    x, y = _train_subset(data, cfg["train_size"], seed)
    run = {"steps": cfg["steps"], "lr": cfg["lr"], "batch_size": cfg["batch_size"], "tail": cfg["tail"]}
    return {
        bn: measures.aa_run(
            build_torch_model(bn, cfg["placement"], seed=seed).to(device), x, y, data[2], data[3], seed=seed, **run
        )
        for bn in cfg["bn"]
    }


# --------------------------------------------------------------------------------------------
# the definitions
# --------------------------------------------------------------------------------------------

_ARTICLE = {"model": "article 784-64-32-10, Glorot-uniform weights", "bn": ["native", "none"], "placement": "after"}
_ADAM = {**_ARTICLE, "optimizer": "adam", "lr": 1e-3}
_ICS = {
    "model": "deep MLP, ReLU",
    "depth": 10,
    "width": 100,
    "init": "he",
    "nets": {
        "no BN": {"bn": False},
        "BN": {"bn": True},
        "BN + shift, s=0.25": {"bn": True, "shift": 0.25},
        "BN + shift, s=0.5": {"bn": True, "shift": 0.5},
        "BN + shift, s=1": {"bn": True, "shift": 1.0},
    },
    "optimizer": "sgd",
    "lr": 0.3,
    "lr_chosen": "after trying others, on seeds 0 and 1, while designing the chapter",
    "steps": 300,
    "batch_size": 128,
    "train_size": 10_000,
    "probe_size": 512,
    "layer": 5,
    "record_every": 10,
}


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "claims-speed",
            "1, 6",
            "the article's recipe (Adam, lr 1e-3, batches of 128) on all 60,000 images for 3 epochs, with and "
            "without BN: test accuracy and training seconds after each epoch",
            {**_ADAM, "batch_size": 128, "epochs": 3, "train_size": 60_000},
            tuple(range(5)),
            _run_speed,
        ),
        Experiment(
            "claims-lr-sweep",
            "1",
            "plain SGD at 13 learning rates from 0.01 to 10 (four per decade), 300 steps on a 10,000-image "
            "subset, with and without BN: final training loss and test accuracy",
            {
                **_ARTICLE,
                "optimizer": "sgd",
                "lrs": LR_GRID,
                "steps": 300,
                "batch_size": 128,
                "train_size": 10_000,
                "tail": 20,
                "blowup": 1e3,
            },
            tuple(range(5)),
            _run_lr_sweep,
        ),
        Experiment(
            "claims-best-lr-fresh",
            "1",
            "the article's network trained by SGD as in claims-lr-sweep, each network at its own best rate "
            "(lowest mean final training loss over claims-lr-sweep's seeds), on seeds the sweep did not use",
            {
                **_ARTICLE,
                "optimizer": "sgd",
                "lr": BEST_LR,
                "lr_chosen": "on claims-lr-sweep's seeds: the rate with the lowest mean final training loss",
                "steps": 300,
                "batch_size": 128,
                "train_size": 10_000,
                "tail": 20,
                "blowup": 1e3,
            },
            tuple(range(5, 10)),
            _run_best_lr,
        ),
        Experiment(
            "claims-overfit",
            "2, 3",
            "the article's recipe on 1,000 images for 60 epochs and on 5,000 images for 16 epochs, with and "
            "without BN: after each epoch, loss and accuracy on the training images, on 1,000 held-out validation "
            "images and on the test set (inference mode), and the test set's expected calibration error",
            {
                **_ADAM,
                "batch_size": 128,
                "sizes": [[1000, 60], [5000, 16]],
                "val_size": 1000,
                "val_from": "the training set, disjoint from each seed's training subset",
                "ece_bins": 15,
            },
            tuple(range(5)),
            _run_overfit,
        ),
        Experiment(
            "claims-small-batch",
            "4",
            "Adam on a 2,000-image subset for 3 epochs at batch sizes 2, 4, 16 and 128, with and without BN: "
            "final test accuracy (inference mode)",
            {**_ADAM, "train_size": 2000, "epochs": 3, "batch_sizes": [2, 4, 16, 128]},
            tuple(range(5)),
            _run_small_batch,
        ),
        Experiment(
            "claims-gradients",
            "5",
            "30 hidden layers of width 128: per-layer weight-gradient and weight norms at initialisation (ReLU, "
            "tanh, linear) and during 100 SGD steps, BN against the He-initialised network without BN",
            {
                "model": "deep MLP",
                "depth": 30,
                "width": 128,
                "batch": 256,
                "nets": {
                    "BN, He": {"bn": True, "init": "he"},
                    "no BN, He": {"bn": False, "init": "he"},
                    "no BN, Glorot": {"bn": False, "init": "glorot"},
                },
                "activations": ["relu", "tanh", "linear"],
                "training": {
                    "nets": ["BN, He", "no BN, He"],
                    "optimizer": "sgd",
                    "lr": 0.1,
                    "batch_size": 128,
                    "train_size": 10_000,
                    "checkpoints": [0, 1, 10, 100],
                },
            },
            tuple(range(5)),
            _run_gradients,
        ),
        Experiment(
            "claims-cost",
            "6",
            "seconds per SGD step of the article's network with and without BN, the two taking turns "
            "(30 rounds of 10 steps each)",
            {
                **_ARTICLE,
                "optimizer": "sgd",
                "lr": 1e-3,
                "batch_size": 128,
                "train_size": 4096,
                "rounds": 30,
                "steps_per_round": 10,
            },
            tuple(range(5)),
            _run_cost,
        ),
        Experiment(
            "claims-ics",
            "8",
            "10 hidden ReLU layers of 100 units trained by SGD (lr 0.3, 300 steps) without BN, with BN and with "
            "random shifts injected after BN: drift of layer 6's inputs on fixed test images in training and in "
            "inference mode, Santurkar et al.'s gradient change, test accuracy",
            _ICS,
            tuple(range(5)),
            _run_ics,
        ),
        Experiment(
            "claims-ics-fresh",
            "8",
            "claims-ics again on seeds never looked at before its verdict rule was fixed (its learning rate "
            "was chosen after trying others)",
            _ICS,
            tuple(range(100, 105)),
            _run_ics,
        ),
        Experiment(
            "claims-aa",
            "the verdict rule",
            "an A/A experiment: the article's network, with BN and without, trained by SGD as in claims-lr-sweep at "
            "one rate under 24 seeds; each network compared with itself measures the rule's false-positive rate",
            {
                **_ARTICLE,
                "optimizer": "sgd",
                "lr": LR_GRID[4],
                "steps": 300,
                "batch_size": 128,
                "train_size": 10_000,
                "tail": 20,
            },
            tuple(range(24)),
            _run_aa,
        ),
    ]


#: The claims chapter's experiments, the group ``claims``.
REGISTRY = Registry({"claims": _experiments()}, module="bnref.experiments.claims")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check
