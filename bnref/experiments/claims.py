"""The article's claims about BN as experiments: each defined once, run over seeds, written as records.

The book's chapter ``claims`` tests eight claims the article makes about what BN does. Each
experiment behind them is defined here once, as an :class:`Experiment`: a name, the claims it tests,
its full configuration (a JSON-ready dict), its seeds and the function that runs one seed. A command
runs them in full and writes one :class:`bnref.records.ExperimentRecord` per experiment::

    python -m bnref.experiments run claims --device cpu --out book/results/
    python -m bnref.experiments run claims-lr-sweep --seeds 3 --device cuda --out /tmp/records

The chapter shows the committed records and runs a reduced configuration of each experiment live
(:func:`run_experiment` with ``overrides``), checking with :func:`within_spread` that the live numbers
fall inside the spread of the recorded seeds. A test compares every committed record's ``config``
with the definition here, so a record cannot silently describe another experiment than the code runs.

The statistics behind every verdict are here too: :func:`compare_paired` is the rule that turns
paired per-seed values into "higher", "lower" or "no measurable difference", and :func:`spread`
summarises values over seeds.

PyTorch is imported inside the functions that run experiments; reading records and the statistics
need NumPy only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bnref.experiments import probes as ex
from bnref.records import ExperimentRecord, device_slug, json_ready, load_experiments, with_current_module_names

if TYPE_CHECKING:
    import torch

__all__ = [
    "Experiment",
    "EXPERIMENTS",
    "GROUPS",
    "LR_GRID",
    "BEST_LR",
    "experiment_names",
    "get_experiment",
    "run_experiment",
    "run_definition",
    "mnist_features",
    "record_filename",
    "load_claims_record",
    "check_record",
    "check_definition",
    "compare_paired",
    "spread",
    "within_spread",
    "experiments_cli",
]

# four learning rates per decade, 0.01 to 10: 13 rates over three decades, neighbours a factor 10^(1/4) = 1.78 apart
LR_GRID: list[float] = [10.0 ** (k / 4) for k in range(-8, 5)]
# each network's best rate in claims-lr-sweep (lowest final training loss, mean over its seeds), chosen from the
# committed record and run again on fresh seeds as claims-best-lr-fresh; a test checks it against the record
BEST_LR: dict[str, float] = {"native": LR_GRID[7], "none": LR_GRID[7]}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of the claims chapter.

    Attributes
    ----------
    name : str
        The record's name, e.g. ``"claims-lr-sweep"``.
    claims : str
        Which of the article's claims it tests (the chapter's numbering).
    summary : str
        One sentence: what is run and what is measured.
    config : dict
        The full configuration, JSON-ready; written into the record unchanged.
    seeds : tuple of int
        The seeds of the full run. Each seed draws its own training subset (where there is one),
        initial weights and batch order; the models compared under one seed share all three.
    runner : callable
        ``runner(config, seed, device, data) -> dict``: the results of one seed (JSON-ready after
        :func:`bnref.records.json_ready`).
    """

    name: str
    claims: str
    summary: str
    config: dict[str, Any]
    seeds: tuple[int, ...]
    runner: Callable[..., dict[str, Any]]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def mnist_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as ``(x_train, y_train, x_test, y_test)``: float32 features ``(n, 784)`` in [0, 1] and int64
    labels, read once per process (:func:`bnref.mnist.data.load_mnist`)."""
    from bnref.mnist.data import load_mnist, to_features

    x_train, y_train, x_test, y_test = load_mnist()
    return to_features(x_train), y_train.astype(np.int64), to_features(x_test), y_test.astype(np.int64)


Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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
    x_test, y_test = data[2], data[3]
    out = {}
    for n, epochs in cfg["sizes"]:
        x, y = _train_subset(data, n, seed)
        runs = _adam_runs(cfg, (x, y, x_test, y_test), seed, device, epochs=epochs, batch_size=cfg["batch_size"])
        out[str(n)] = {bn: _epochs(r) for bn, r in runs.items()}
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


def _run_gradients(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    from bnref.mnist.torch_training import evaluate

    x_b, y_b = _train_subset(data, cfg["batch"], 100 + seed)
    init: dict[str, dict[str, Any]] = {}
    for act in cfg["activations"]:
        nets = cfg["nets"] if act == "relu" else [n for n in cfg["nets"] if cfg["nets"][n]["bn"]]
        init[act] = {n: ex.weight_gradient_norms(_deep_net(cfg, n, seed, device, act), x_b, y_b) for n in nets}
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
            norms[str(step)] = ex.weight_gradient_norms(model, x_fixed, y_fixed)
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
        )
        out[name] = {
            "drift": ex.input_shift(run["probe_stats"]),
            "grad_change": run["ics_rel"],
            "test_acc": evaluate(model, x_test, y_test)[1],
        }
    return out


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


def _experiments() -> dict[str, Experiment]:
    defs = [
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
            "without BN: training and test loss and accuracy after each epoch",
            {**_ADAM, "batch_size": 128, "sizes": [[1000, 60], [5000, 16]]},
            tuple(range(5)),
            _run_overfit,
        ),
        Experiment(
            "claims-small-batch",
            "4",
            "Adam on a 2,000-image subset for 3 epochs at batch sizes 2, 4, 16 and 128, with and without BN: "
            "final test accuracy (inference mode)",
            {**_ADAM, "train_size": 2000, "epochs": 3, "batch_sizes": [2, 4, 16, 128]},
            tuple(range(3)),
            _run_small_batch,
        ),
        Experiment(
            "claims-gradients",
            "5",
            "30 hidden layers of width 128: per-layer weight-gradient norms at initialisation (ReLU, tanh, "
            "linear) and during 100 SGD steps, BN against the He-initialised network without BN",
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
            "random shifts injected after BN: drift of layer 6's inputs, Santurkar et al.'s gradient change, "
            "test accuracy",
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
            tuple(range(100, 103)),
            _run_ics,
        ),
    ]
    return {e.name: e for e in defs}


EXPERIMENTS: dict[str, Experiment] = _experiments()
GROUPS: dict[str, list[str]] = {"claims": list(EXPERIMENTS)}


def experiment_names(name: str) -> list[str]:
    """The experiments a name stands for: a group (``"claims"``) or one experiment."""
    if name in GROUPS:
        return list(GROUPS[name])
    if name in EXPERIMENTS:
        return [name]
    raise ValueError(f"unknown experiment {name!r}; known: groups {sorted(GROUPS)}, experiments {sorted(EXPERIMENTS)}")


def get_experiment(name: str) -> Experiment:
    """The definition of one experiment (ValueError naming the known ones if there is none)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


# --------------------------------------------------------------------------------------------
# running and finding records
# --------------------------------------------------------------------------------------------


def record_filename(name: str, device: dict[str, str]) -> str:
    """``"<name>.cpu.json"`` for the CPU, ``"<name>.<slug>.json"`` for a GPU (:func:`bnref.records.device_slug`,
    e.g. ``claims-cost.h200.json``)."""
    return f"{name}.{device_slug(device)}.json"


def run_experiment(name: str, **options: Any) -> ExperimentRecord:
    """Run one experiment of :data:`EXPERIMENTS` by name: :func:`run_definition` of :func:`get_experiment`, with
    the same keyword options (``seeds``, ``device``, ``overrides``, ``out``, ``data``)."""
    return run_definition(get_experiment(name), **options)


def run_definition(
    exp: Experiment,
    *,
    seeds: Sequence[int] | None = None,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    data: Data | None = None,
) -> ExperimentRecord:
    """Run an experiment over its seeds and return (and optionally write) its record.

    Parameters
    ----------
    exp : Experiment
        A definition (of this module's :data:`EXPERIMENTS`, or another chapter's).
    seeds : sequence of int, optional
        Default: the experiment's own seeds.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (checked by :func:`bnref.mnist.torch_training.select_device`). On the
        CPU, PyTorch runs on one thread during the experiment (restored afterwards): these networks are
        too small to gain from more, and one thread gives the same numbers whatever the core count.
    overrides : dict, optional
        Configuration entries to replace, for a reduced run (e.g. fewer learning rates). The record
        then carries the changed configuration.
    out : path, optional
        A folder: the record is written there as :func:`record_filename`.
    data : (x_train, y_train, x_test, y_test), optional
        Float32 features ``(n, 784)`` and int64 labels. Default: MNIST (:func:`mnist_features`). Tests
        pass a small synthetic set.

    Returns
    -------
    bnref.records.ExperimentRecord
    """
    import torch

    from bnref.mnist.torch_training import device_name, select_device

    config = dict(exp.config)
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ValueError(f"{exp.name} has no configuration entry {key!r} to override; it has {sorted(config)}")
        config[key] = value
    seeds = list(exp.seeds if seeds is None else seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers; got {seeds!r}")
    dev = select_device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        data = mnist_features() if data is None else data
        results = {int(s): exp.runner(config, int(s), dev, data) for s in seeds}
    finally:
        torch.set_num_threads(threads)
    record = ExperimentRecord.create(
        exp.name, config, [int(s) for s in seeds], results, device={"type": dev.type, "name": device_name(dev)}
    )
    if out is not None:
        record.save(Path(out) / record_filename(exp.name, record.device))
    return record


def load_claims_record(name: str, folder: str | Path, device_type: str = "cpu") -> ExperimentRecord:
    """The committed record of one experiment computed on a device of this type (ValueError if not exactly one)."""
    found = [r for r in load_experiments(folder, name) if r.device["type"] == device_type]
    if len(found) != 1:
        raise ValueError(f"expected one {device_type} record of {name!r} in {folder}; found {len(found)}")
    return found[0]


def check_record(record: ExperimentRecord) -> None:
    """Raise ValueError unless a record is what its experiment's definition in :data:`EXPERIMENTS` would produce
    (:func:`check_definition`)."""
    check_definition(record, get_experiment(record.name))


def check_definition(record: ExperimentRecord, exp: Experiment) -> None:
    """Raise ValueError unless ``record`` is what the definition ``exp`` would produce.

    The names must agree; the record's ``config`` must equal the definition's (after a JSON round
    trip), and its seeds must be the first ``k >= 3`` of the definition's seeds (a GPU record may be
    made with fewer seeds than the CPU record; at least 3 stand behind any verdict). The error names
    the entries that differ.
    """
    if record.name != exp.name:
        raise ValueError(f"the record is of {record.name!r}, the definition of {exp.name!r}")
    expected = json_ready(exp.config)
    config = with_current_module_names(record.config)
    if config != expected:
        keys = sorted(k for k in set(expected) | set(config) if config.get(k) != expected.get(k))
        raise ValueError(
            f"{record.name}: the record's config differs from its definition at {keys}; "
            "run the experiment again (python -m bnref.experiments run ...) or restore the definition"
        )
    n = len(record.seeds)
    if n < 3 or record.seeds != list(exp.seeds[:n]):
        raise ValueError(
            f"{record.name}: the record's seeds {record.seeds} are not the first k >= 3 "
            f"of the definition's {list(exp.seeds)}"
        )


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def compare_paired(
    a: Sequence[float], b: Sequence[float], more: str, less: str, same: str = "no measurable difference"
) -> str:
    """The chapter's rule for a difference between paired per-seed values.

    ``a[i]`` and ``b[i]`` come from the same seed (same data, initial weights and batches). With
    ``d = a - b``: ``more`` if every ``d > 0`` and ``mean(d) > 2 * se``, ``less`` if every ``d < 0`` and
    ``-mean(d) > 2 * se``, else ``same``; ``se = std(d, ddof=1) / sqrt(n)``. Needs at least 3 seeds.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) < 3:
        raise ValueError(f"compare_paired needs two equal-length 1-D sequences of >= 3 seeds; got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("compare_paired needs finite values")
    mean, se = d.mean(), d.std(ddof=1) / np.sqrt(len(d))
    if np.all(d > 0) and mean > 2 * se:
        return more
    if np.all(d < 0) and -mean > 2 * se:
        return less
    return same


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"spread needs a 1-D sequence of >= 2 values; got shape {v.shape}")
    return float(v.mean()), float(v.std(ddof=1))


def within_spread(value: float, recorded: Sequence[float], k: float = 3.0) -> bool:
    """Whether a live value lies within ``k`` sample standard deviations of the recorded seeds' mean.

    The chapter's live runs repeat a recorded seed; on another CPU its numbers differ from the record
    by kernel rounding, which training can amplify up to a seed-to-seed difference. A recorded seed
    lies at most ``(n - 1) / sqrt(n)`` standard deviations from the mean of ``n`` seeds (1.79 for
    ``n = 5``), so ``k = 3`` leaves more than one standard deviation for that, while a change of the
    code that moves results by several seed spreads fails the check. Where the CPU's kernels move a
    result more than the seed does (in the claims chapter, BN trained on batches of two),
    the seeds' spread is no yardstick, and the chapter checks the verdict's margin instead.
    """
    mean, sd = spread(recorded)
    if not np.isfinite(value):
        return False
    return bool(abs(value - mean) <= k * sd)


def experiments_cli(
    prog: str,
    experiments: dict[str, Experiment],
    run: Callable[..., ExperimentRecord],
    argv: Sequence[str] | None = None,
    list_claims: bool = False,
) -> int:
    """The command line of an experiment module (``bnref.experiments.dynamics``, ``bnref.experiments.beyond``):
    ``python -m PROG run NAME|all [--seeds N] [--device cpu|cuda] --out DIR``, or ``list``.

    ``run(name, seeds=..., device=..., out=...)`` runs one experiment of ``experiments`` and writes its record;
    ``--seeds N`` takes the first N of its seeds. ``list_claims`` adds each experiment's claims to ``list``.
    """
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=f"Run the experiments of {prog} and write their records."
    )
    parser.add_argument("command", choices=("list", "run"))
    parser.add_argument("name", nargs="?", default="all", help="an experiment (see list) or all (default)")
    parser.add_argument("--seeds", type=int, default=None, help="the first N of each experiment's seeds")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--out", default=None, help="folder for the records (needed by run)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for e in experiments.values():
            claims = f" {e.claims:13s}" if list_claims else ""
            print(f"{e.name:22s}{claims} {len(e.seeds)} seeds: {e.summary}")
        return 0
    names = list(experiments) if args.name == "all" else [args.name]
    problems = [f"unknown experiment {n!r}" for n in names if n not in experiments]
    if args.out is None:
        problems.append("run needs --out")
    if args.seeds is not None and args.seeds < 1:
        problems.append(f"--seeds must be a positive integer; got {args.seeds}")
    if problems:
        parser.error("; ".join(problems))
    for name in names:
        t0 = time.perf_counter()
        rec = run(name, seeds=experiments[name].seeds[: args.seeds], device=args.device, out=args.out)
        print(f"{name}: seeds {rec.seeds} on {rec.device['name']} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0
