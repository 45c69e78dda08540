"""The book's MNIST experiment: the article's model in PyTorch and Keras, with and without BN, several seeds.

:data:`MNIST` (a :class:`MnistExperiment`) defines the experiment once; :func:`run_mnist_experiment` trains every
run of it with every seed and returns one :class:`bnref.records.ExperimentRecord`; :func:`experiment_runs` gives
back the run records inside it. The trainers are :func:`bnref.mnist.torch_training.train_torch` (bnref's fast
PyTorch loop) and :func:`bnref.mnist.keras_training.train_keras` (``model.fit``, as the article trains); what they
share is in :mod:`bnref.mnist.common`, and the rule behind the chapter's verdicts in :mod:`bnref.mnist.verdicts`.

This module imports neither framework: the trainers are imported when the experiment runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnref.mnist.common import check_training_args, train_eval_subset
from bnref.mnist.models import check_choice
from bnref.mnist.verdicts import MIN_SEEDS
from bnref.records import SCHEMA, ExperimentRecord, RunRecord, with_current_module_names

__all__ = ["MNIST", "MNIST_SEEDS", "MnistExperiment", "run_mnist_experiment", "experiment_runs"]


# --------------------------------------------------------------------------------------------
# the book's MNIST experiment: both frameworks, with and without BN, several seeds
# --------------------------------------------------------------------------------------------

#: The seeds of the committed MNIST records (a verdict needs at least :data:`bnref.mnist.verdicts.MIN_SEEDS`).
MNIST_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class MnistExperiment:
    """The MNIST experiment of the book's chapter ``mnist``, defined once.

    Every combination of ``frameworks`` and ``bn`` is trained with every seed, on the full MNIST
    training set, the test set evaluated after every epoch, and with it the first ``train_eval`` training
    images, both in inference mode. Adam with learning rate ``lr``.

    Attributes
    ----------
    frameworks : tuple of str
        ``"torch"`` (:func:`bnref.mnist.torch_training.train_torch`) and ``"keras"``
        (:func:`bnref.mnist.keras_training.train_keras`, on the backend named by ``KERAS_BACKEND``).
    bn : tuple of str
        :data:`bnref.mnist.models.BN_CHOICES` entries; ``"native"`` is each framework's own BN layer.
    placement, epochs, batch_size, lr, train_eval
        As in :func:`bnref.mnist.torch_training.train_torch`. ``train_eval`` = 10000: the first 10,000 of the
        60,000 training images (the same for every seed and framework) are evaluated in inference mode after
        every epoch, so that the train-test gap compares like with like.
    """

    frameworks: tuple[str, ...] = ("torch", "keras")
    bn: tuple[str, ...] = ("native", "none")
    placement: str = "after"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    train_eval: int = 10000
    name: str = "mnist"

    def __post_init__(self) -> None:
        if not self.frameworks or any(f not in ("torch", "keras") for f in self.frameworks):
            raise ValueError(f"frameworks must name torch and/or keras; got {self.frameworks!r}")
        if not self.bn:
            raise ValueError("bn must name at least one BN choice")
        for bn in self.bn:
            check_choice(bn, self.placement)
        check_training_args(self.epochs, self.batch_size, self.lr)
        train_eval_subset(self.train_eval, 60000)

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
            "train_eval": train_eval_subset(self.train_eval, 60000),
        }

    def runs(self) -> list[str]:
        """The keys of one seed's results: ``"<framework>/<bn>"``."""
        return [f"{fw}/{bn}" for fw in self.frameworks for bn in self.bn]

    def check_record(self, record: ExperimentRecord, *, full_data: bool = True) -> None:
        """Raise ValueError unless ``record`` holds this experiment: the same ``config``, at least
        :data:`MIN_SEEDS` seeds, every run of every seed, each run configured as defined (and, with
        ``full_data``, trained on all 60000 MNIST images and tested on all 10000), every epoch with its
        inference-mode training evaluation when the definition asks for one."""
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
            if self.train_eval and any(e.train_eval_acc is None or e.train_eval_loss is None for e in run.epochs):
                raise ValueError(f"{where}: run {key!r} seed {seed} lacks the inference-mode training evaluation")


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
        The PyTorch device (:func:`bnref.mnist.torch_training.select_device`). Keras trains on the device its
        backend picks; it must be of the same kind (CPU or GPU), else ValueError: on a GPU machine without
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
        train_eval=experiment.train_eval,
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
