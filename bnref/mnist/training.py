"""Train the article's model in PyTorch or Keras, record each run, and run the book's MNIST experiment.

Two trainers, one record format:

* :func:`train_torch` (in :mod:`bnref.mnist.torch_training`): bnref's fast PyTorch loop, data on the
  device, flat parameters with fused Adam, a CUDA graph on a GPU.
* :func:`train_keras` (in :mod:`bnref.mnist.keras_training`): ``model.fit`` as the article uses it, with a
  callback that records the same numbers per epoch.

Both return and optionally save a :class:`~bnref.records.RunRecord`: configuration, framework and
version (and the Keras backend), device name, machine (no hostname), seed, and per epoch the
training loss and accuracy (the running mean over the epoch's batches in training mode, as Keras
reports them), the test loss and accuracy (after the epoch, inference mode), and the wall time.
The record format lives in :mod:`bnref.records`; its names are re-exported here.

This module itself imports neither framework: ``train_torch``, ``train_keras``, ``select_device``,
``device_name`` and ``flatten_parameters`` are loaded from the framework modules on first use
(``bnref.mnist.training.train_torch(...)`` works as before). It holds what the trainers share
(:func:`prepare_data`, :func:`check_training_args`, :func:`progress_bar`,
:func:`import_keras_quietly`) and the book's MNIST experiment (:data:`MNIST`,
:func:`run_mnist_experiment`, :func:`experiment_runs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnref.mnist.data import as_labeled
from bnref.mnist.models import NUM_CLASSES, check_choice, check_int, check_positive
from bnref.records import (  # the results-record schema lives in bnref.records; re-exported here
    SCHEMA,
    EpochRecord,
    ExperimentRecord,
    RunConfig,
    RunRecord,
    cpu_name,
    load_record,
    load_records,
    machine_info,
    now_utc,
    with_current_module_names,
)

if TYPE_CHECKING:  # served lazily by __getattr__ below
    from bnref.mnist.keras_training import train_keras
    from bnref.mnist.torch_training import device_name, flatten_parameters, select_device, train_torch

__all__ = [
    "SCHEMA",
    "EpochRecord",
    "RunConfig",
    "RunRecord",
    "load_record",
    "load_records",
    "cpu_name",
    "machine_info",
    "now_utc",
    "select_device",
    "device_name",
    "flatten_parameters",
    "train_torch",
    "train_keras",
    "prepare_data",
    "check_training_args",
    "progress_bar",
    "import_keras_quietly",
    "MNIST",
    "MNIST_SEEDS",
    "MIN_SEEDS",
    "MnistExperiment",
    "run_mnist_experiment",
    "experiment_runs",
    "paired_verdict",
]

#: Names served by the framework modules, loaded when first asked for.
_LAZY = {
    "train_torch": "bnref.mnist.torch_training",
    "select_device": "bnref.mnist.torch_training",
    "device_name": "bnref.mnist.torch_training",
    "flatten_parameters": "bnref.mnist.torch_training",
    "train_keras": "bnref.mnist.keras_training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# what both trainers share
# --------------------------------------------------------------------------------------------


def prepare_data(data: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` -> float32 features ``(n, d)`` and int64 labels ``(n,)``.

    Images ``uint8 (n, 28, 28)`` are flattened and scaled to [0, 1]; 2-D float inputs are used as
    they are (tests feed small synthetic problems this way). See :func:`bnref.mnist.data.as_labeled`.
    """
    if len(data) != 4:
        raise ValueError(f"data must be (x_train, y_train, x_test, y_test); got {len(data)} items")
    x_train, y_train = as_labeled(data[0], data[1], name="train", num_classes=NUM_CLASSES)
    x_test, y_test = as_labeled(data[2], data[3], name="test", num_classes=NUM_CLASSES)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train and test features differ in width: {x_train.shape[1]} vs {x_test.shape[1]}")
    return x_train, y_train, x_test, y_test


def check_training_args(epochs: int, batch_size: int, lr: float) -> None:
    """Raise ValueError unless ``epochs >= 1``, ``batch_size >= 2`` (BN needs two samples) and ``lr > 0``."""
    check_int("epochs", epochs, low=1)
    check_int("batch_size (BN needs two samples)", batch_size, low=2)
    check_positive("lr", lr)


def progress_bar(enabled: bool, epochs: int, desc: str) -> Any:
    """A tqdm bar with one tick per epoch (disabled when ``enabled`` is False)."""
    from tqdm import tqdm

    return tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled, leave=False)


@contextlib.contextmanager
def _c_level_stderr_discarded() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while the block runs; Python exceptions are unaffected."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras_quietly() -> Any:
    """Import and return ``keras`` (with its backend) without TensorFlow's start-up log lines.

    TensorFlow's C++ runtime writes lines such as "Could not find cuda drivers" straight to the
    process's stderr while it loads, below Python's reach; they are discarded for the import only
    (``TF_CPP_MIN_LOG_LEVEL`` is set to 3 unless already set). An import error still raises.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _c_level_stderr_discarded():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow  # noqa: F401  (loads the runtime now, while stderr is quiet)
    return keras


# --------------------------------------------------------------------------------------------
# the book's MNIST experiment: both frameworks, with and without BN, several seeds
# --------------------------------------------------------------------------------------------

#: The seeds of the committed MNIST records, and the fewest seeds a verdict may rest on.
MNIST_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
MIN_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class MnistExperiment:
    """The MNIST experiment of the book's chapter ``mnist``, defined once.

    Every combination of ``frameworks`` and ``bn`` is trained with every seed, on the full MNIST
    training set, the test set evaluated after every epoch. Adam with learning rate ``lr``.

    Attributes
    ----------
    frameworks : tuple of str
        ``"torch"`` (:func:`train_torch`) and ``"keras"`` (:func:`train_keras`, on the backend named by
        ``KERAS_BACKEND``).
    bn : tuple of str
        :data:`bnref.mnist.models.BN_CHOICES` entries; ``"native"`` is each framework's own BN layer.
    placement, epochs, batch_size, lr
        As in :func:`train_torch`.
    """

    frameworks: tuple[str, ...] = ("torch", "keras")
    bn: tuple[str, ...] = ("native", "none")
    placement: str = "after"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    name: str = "mnist"

    def __post_init__(self) -> None:
        if not self.frameworks or any(f not in ("torch", "keras") for f in self.frameworks):
            raise ValueError(f"frameworks must name torch and/or keras; got {self.frameworks!r}")
        if not self.bn:
            raise ValueError("bn must name at least one BN choice")
        for bn in self.bn:
            check_choice(bn, self.placement)
        check_training_args(self.epochs, self.batch_size, self.lr)

    def config(self) -> dict[str, Any]:
        """The definition as a JSON-ready dict: the ``config`` of the experiment's records."""
        return {
            "experiment": self.name,
            "frameworks": list(self.frameworks),
            "bn": list(self.bn),
            "placement": self.placement,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": "adam",
            "data": "MNIST, all 60000 training and 10000 test images (bnref.mnist.data.load_mnist)",
            "init": "glorot-uniform weights, zero biases (bnref.mnist.models.initial_weights)",
        }

    def runs(self) -> list[str]:
        """The keys of one seed's results: ``"<framework>/<bn>"``."""
        return [f"{fw}/{bn}" for fw in self.frameworks for bn in self.bn]

    def check_record(self, record: ExperimentRecord, *, full_data: bool = True) -> None:
        """Raise ValueError unless ``record`` holds this experiment: the same ``config``, at least
        :data:`MIN_SEEDS` seeds, every run of every seed, each run configured as defined (and, with
        ``full_data``, trained on all 60000 MNIST images and tested on all 10000)."""
        where = f"experiment record {record.name!r} ({record.device.get('name')}, {record.created_utc})"
        if record.name != self.name:
            raise ValueError(f"{where}: name {record.name!r}, expected {self.name!r}")
        config = with_current_module_names(record.config)
        if config != self.config():
            changed = sorted(k for k in set(config) | set(self.config()) if config.get(k) != self.config().get(k))
            raise ValueError(f"{where}: config differs from the definition in {changed}; run the experiment again")
        if len(record.seeds) < MIN_SEEDS:
            raise ValueError(f"{where}: {len(record.seeds)} seeds, a verdict needs at least {MIN_SEEDS}")
        runs = experiment_runs(record)
        expected = sorted((k, s) for k in self.runs() for s in record.seeds)
        if sorted(runs) != expected:
            raise ValueError(f"{where}: runs {sorted(runs)}, expected {expected}")
        for (key, seed), run in runs.items():
            c = run.config
            got = (f"{run.framework}/{c.bn}", c.placement, c.epochs, c.batch_size, c.lr, len(run.epochs), run.seed)
            want = (key, self.placement, self.epochs, self.batch_size, self.lr, self.epochs, seed)
            if got != want:
                raise ValueError(f"{where}: run {key!r} seed {seed} is {got}, expected {want}")
            if full_data and (c.train_size, c.test_size) != (60000, 10000):
                raise ValueError(f"{where}: run {key!r} seed {seed} used {c.train_size}/{c.test_size} images")


#: The experiment whose records the chapter ``mnist`` shows.
MNIST = MnistExperiment()


def run_mnist_experiment(
    data: Sequence[np.ndarray],
    experiment: MnistExperiment = MNIST,
    seeds: Sequence[int] = MNIST_SEEDS,
    *,
    device: str = "cpu",
    progress: bool = False,
    log: Any = None,
) -> ExperimentRecord:
    """Train every run of ``experiment`` with every seed and return the experiment record.

    Parameters
    ----------
    data : (x_train, y_train, x_test, y_test)
        MNIST as :func:`bnref.mnist.data.load_mnist` returns it.
    experiment : MnistExperiment
    seeds : sequence of int
        Distinct seeds; each seeds the initial weights and the shuffling of every run.
    device : str
        The PyTorch device (:func:`select_device`). Keras trains on the device its backend picks;
        it must be of the same kind (CPU or GPU), else ValueError: on a GPU machine without
        TensorFlow, run with ``KERAS_BACKEND=torch``.
    progress : bool
        tqdm bars per run.
    log : callable, optional
        Called with one line of text after each run (e.g. ``print``).

    Returns
    -------
    ExperimentRecord
        ``results[str(seed)][key]`` for key in :meth:`MnistExperiment.runs` is that run's
        :class:`RunRecord` as a dict without ``machine`` and ``schema`` (the experiment holds the
        machine); :func:`experiment_runs` rebuilds the run records.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one; got {seeds!r}")
    from bnref.mnist.torch_training import device_name, select_device, train_torch

    if "keras" in experiment.frameworks:
        from bnref.mnist.keras_training import train_keras
    dev = select_device(device)
    dev_info = {"type": dev.type, "name": device_name(dev)}
    common = dict(
        placement=experiment.placement,
        epochs=experiment.epochs,
        batch_size=experiment.batch_size,
        lr=experiment.lr,
        progress=progress,
    )
    results: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        per_run: dict[str, Any] = {}
        for fw in experiment.frameworks:
            for bn in experiment.bn:
                if fw == "torch":
                    rec = train_torch(data, bn=bn, seed=seed, device=str(dev), **common)
                else:
                    rec = train_keras(data, bn=bn, seed=seed, **common)
                    if (rec.device["type"] == "cpu") != (dev.type == "cpu"):
                        raise ValueError(
                            f"Keras trained on {rec.device['name']} ({rec.device['type']}) but the experiment's "
                            f"device is {dev_info['name']} ({dev.type}); on a GPU machine run with "
                            "KERAS_BACKEND=torch (or a GPU build of TensorFlow)"
                        )
                run = rec.to_dict()
                del run["machine"], run["schema"]
                per_run[f"{fw}/{bn}"] = run
                if log is not None:
                    log(
                        f"seed {seed} {rec.label:30s} test acc {rec.final.test_acc:.4f} "
                        f"({rec.total_s:.1f} s) on {rec.device['name']}"
                    )
        results[str(seed)] = per_run
    return ExperimentRecord.create(experiment.name, experiment.config(), seeds, results, device=dev_info)


def paired_verdict(differences: Sequence[float], *, min_seeds: int = MIN_SEEDS) -> int:
    """The rule that turns per-seed paired differences (with BN minus without, same seed) into a verdict.

    A difference counts only when it has the same sign for every seed *and* its mean lies more than
    two standard errors from zero (standard error = sample standard deviation / sqrt(n)). The first
    condition alone would accept a mean carried by one large seed among near-zeros; the second
    alone, with few seeds, a mean dragged by one outlier of either sign.

    Returns
    -------
    int
        +1 (consistently positive), -1 (consistently negative) or 0 (no consistent difference).

    Raises
    ------
    ValueError
        Fewer than ``min_seeds`` differences, or a non-finite one.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) < min_seeds:
        raise ValueError(f"a verdict needs at least {min_seeds} paired differences; got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("paired differences must be finite")
    se = d.std(ddof=1) / np.sqrt(len(d))
    if np.all(d > 0) and d.mean() > 2 * se:
        return 1
    if np.all(d < 0) and d.mean() < -2 * se:
        return -1
    return 0


def experiment_runs(record: ExperimentRecord) -> dict[tuple[str, int], RunRecord]:
    """The run records inside an MNIST experiment record, keyed by ``("<framework>/<bn>", seed)``."""
    out = {}
    for seed, per_run in record.per_seed():
        if not isinstance(per_run, dict):
            raise ValueError(f"experiment {record.name!r}, seed {seed}: results must map run names to runs")
        for key, run in per_run.items():
            d = {**run, "machine": record.machine, "schema": SCHEMA}
            out[(key, seed)] = RunRecord.from_dict(d, source=f"experiment {record.name!r}, seed {seed}, run {key!r}")
    return out
