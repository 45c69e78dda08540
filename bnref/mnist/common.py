"""What both MNIST trainers share: data preparation, argument checks, the progress bar, the run record,
and importing Keras without TensorFlow's start-up noise.

:mod:`bnref.mnist.torch_training` and :mod:`bnref.mnist.keras_training` build on this module;
:mod:`bnref.mnist.training` (the book's MNIST experiment) builds on both. It imports neither framework.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bnref.mnist.data import as_labeled
from bnref.mnist.models import NUM_CLASSES, check_choice, check_int, check_positive
from bnref.records import EpochRecord, RunConfig, RunRecord, machine_info, now_utc

__all__ = [
    "prepare_data",
    "check_training_args",
    "checked_config",
    "train_eval_subset",
    "progress_bar",
    "run_record",
    "import_keras_quietly",
]


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


def train_eval_subset(n: int, n_train: int) -> str:
    """What the trainers' ``train_eval`` option evaluates, in words for a run's config: the first ``n`` of the
    ``n_train`` training examples, in inference mode, after every epoch. ValueError unless ``0 <= n <= n_train``
    (0: the option is off; the words are then "none")."""
    check_int("train_eval", n, low=0)
    if n > n_train:
        raise ValueError(f"train_eval={n} asks for more examples than the {n_train} of the training set")
    return f"the first {n} training examples, inference mode, after every epoch" if n else "none"


def progress_bar(enabled: bool, epochs: int, desc: str) -> Any:
    """A tqdm bar with one tick per epoch (disabled when ``enabled`` is False)."""
    from tqdm import tqdm

    return tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled, leave=False)


def checked_config(
    bn: str, placement: str, epochs: int, batch_size: int, lr: float, *, loss: str, trainer: str
) -> RunConfig:
    """The :class:`~bnref.records.RunConfig` of a run about to start, its arguments checked first (ValueError):
    the BN choice and its placement (:func:`bnref.mnist.models.check_choice`) and :func:`check_training_args`."""
    check_choice(bn, placement)
    check_training_args(epochs, batch_size, lr)
    return RunConfig(
        bn=bn, placement=placement, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, trainer=trainer
    )


def run_record(
    config: RunConfig,
    framework: tuple[str, str, str | None, str | None],
    device: dict[str, str],
    *,
    seed: int,
    history: list[EpochRecord],
    setup_s: float,
    out: str | os.PathLike | None,
) -> RunRecord:
    """The :class:`~bnref.records.RunRecord` of one finished training run, stamped with this machine and the time
    now, and written to ``out`` when given.

    ``framework`` is ``(framework, its version, Keras backend, the backend's version)``, the backend entries None
    for PyTorch; ``device`` the record's ``{"type": ..., "name": ...}``.
    """
    name, version, backend, backend_version = framework
    record = RunRecord(
        framework=name,
        framework_version=version,
        backend=backend,
        backend_version=backend_version,
        device=device,
        machine=machine_info(),
        seed=seed,
        config=config,
        epochs=history,
        setup_s=setup_s,
        created_utc=now_utc(),
    )
    if out is not None:
        record.save(out)
    return record


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
