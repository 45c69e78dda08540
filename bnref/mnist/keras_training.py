"""Train the article's model with Keras 3 ``model.fit``, as the article does, and record it.

:class:`EpochRecorder` is the ``keras.callbacks.Callback`` that times each epoch and keeps fit's
metrics; :func:`train_keras` compiles, fits and returns a :class:`bnref.records.RunRecord`.
Runs on whichever backend Keras was started with (``KERAS_BACKEND``) and on the device that
backend picks.

This module imports Keras (and so its backend) at the top; ``import bnref`` never imports it. To
import it without TensorFlow's C++ start-up lines on stderr, call
:func:`bnref.mnist.common.import_keras_quietly` first.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from bnref.mnist.common import checked_config, prepare_data, progress_bar, run_record, train_eval_subset
from bnref.mnist.data import one_hot
from bnref.mnist.models import NUM_CLASSES, build_keras_model
from bnref.records import EpochRecord, RunRecord, cpu_device

__all__ = ["LOSS", "EpochRecorder", "keras_device", "backend_version", "train_keras"]

#: The loss :func:`train_keras` minimises, as its records name it.
LOSS = "categorical cross-entropy on softmax outputs, one-hot labels"


class EpochRecorder(keras.callbacks.Callback):
    """Records each epoch of ``fit`` as an :class:`~bnref.records.EpochRecord`, with its wall time.

    ``fit`` must run with ``validation_data`` and the ``accuracy`` metric: the test loss and
    accuracy are fit's ``val_loss`` and ``val_accuracy``. The epoch's training time runs from
    ``on_epoch_begin`` to the start of the validation pass, the evaluation time from there to
    ``on_epoch_end``, including the evaluation of ``train_eval``.

    Parameters
    ----------
    epochs : int
        For the progress bar.
    progress : bool
        Show a tqdm bar, one tick per epoch.
    desc : str
        The bar's label.
    train_eval : (x, y_one_hot), optional
        Training examples to evaluate in inference mode (``model.evaluate``) at the end of every epoch; their
        loss and accuracy go to ``EpochRecord.train_eval_loss`` and ``train_eval_acc``.
    batch_size : int
        The batch size of that evaluation (fit's validation pass uses fit's own).
    """

    def __init__(
        self,
        epochs: int,
        progress: bool = False,
        desc: str = "keras",
        *,
        train_eval: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = 128,
    ) -> None:
        super().__init__()
        self.train_eval = train_eval
        self.batch_size = batch_size
        self.history: list[EpochRecord] = []
        self.bar = progress_bar(progress, epochs, desc)
        self.t_begin = 0.0
        self.t_test: float | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.t_begin = time.perf_counter()
        self.t_test = None

    def on_test_begin(self, logs: dict | None = None) -> None:  # fit's validation pass
        self.t_test = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seen: dict[str, float] = {}
        if self.train_eval is not None:
            x, y = self.train_eval
            seen = self.model.evaluate(x, y, batch_size=self.batch_size, verbose=0, return_dict=True)
        t_end = time.perf_counter()
        logs = logs or {}
        t_test = self.t_test if self.t_test is not None else t_end
        self.history.append(
            EpochRecord(
                epoch=epoch + 1,
                train_loss=float(logs["loss"]),
                train_acc=float(logs["accuracy"]),
                test_loss=float(logs["val_loss"]),
                test_acc=float(logs["val_accuracy"]),
                train_s=t_test - self.t_begin,
                eval_s=t_end - t_test,
                wall_s=t_end - self.t_begin,
                train_eval_loss=float(seen["loss"]) if seen else None,
                train_eval_acc=float(seen["accuracy"]) if seen else None,
            )
        )
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", test_acc=f"{logs['val_accuracy']:.4f}")
        self.bar.update(1)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.bar.close()


def keras_device() -> dict[str, str]:
    """The device Keras trains on, for each backend: the first GPU if there is one, else the CPU."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return {"type": "gpu", "name": details.get("device_name", gpus[0].name)}
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return {"type": "cuda", "name": torch.cuda.get_device_name(0)}
        elif backend == "jax":
            import jax

            d = jax.devices()[0]
            if d.platform != "cpu":
                return {"type": d.platform, "name": getattr(d, "device_kind", str(d))}
    except Exception:  # noqa: BLE001, S110  (a failed device query must not lose the run: the CPU it is)
        pass
    return cpu_device()


def backend_version(backend: str) -> str | None:
    """The version of the framework behind a Keras backend, or None if it cannot be imported."""
    modules = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}
    if backend not in modules:
        return None
    try:
        module = __import__(modules[backend])
    except ImportError:
        return None
    return str(module.__version__)


def train_keras(
    data: Sequence[np.ndarray],
    *,
    bn: str = "native",
    placement: str = "after",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    train_eval: int = 0,
) -> RunRecord:
    """Train the article's model with ``model.fit``, as the article does, and record it.

    The model is compiled with Adam (``learning_rate=lr``, Keras' defaults otherwise: betas 0.9,
    0.999, epsilon 1e-7), categorical cross-entropy on one-hot labels and accuracy; ``fit`` runs
    with ``validation_data=(x_test, y_test)``, ``shuffle=True`` and ``verbose=0``. Runs on whatever
    backend Keras was started with (``KERAS_BACKEND``) and on the device that backend picks.
    Arguments as in :func:`bnref.mnist.torch_training.train_torch`; ``keras.utils.set_random_seed(seed)``
    fixes the shuffling. ``train_eval`` > 0 also evaluates the first ``train_eval`` training examples in inference
    mode (``model.evaluate``) at the end of every epoch (:class:`EpochRecorder`).
    """
    config = checked_config(bn, placement, epochs, batch_size, lr, loss=LOSS, trainer="keras-fit")
    x_train, y_train, x_test, y_test = prepare_data(data)
    subset = train_eval_subset(train_eval, len(y_train))
    keras.utils.set_random_seed(seed)
    model = build_keras_model(bn, placement, seed, input_dim=x_train.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    backend = keras.backend.backend()
    seen = (x_train[:train_eval], one_hot(y_train[:train_eval], NUM_CLASSES)) if train_eval else None
    recorder = EpochRecorder(epochs, progress, f"keras/{backend} bn={bn}", train_eval=seen, batch_size=batch_size)
    model.fit(
        x_train,
        one_hot(y_train, NUM_CLASSES),
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x_test, one_hot(y_test, NUM_CLASSES)),
        shuffle=True,
        verbose=0,
        callbacks=[recorder],
    )
    details: dict[str, Any] = {
        "trainer": "keras Model.fit(validation_data=test set, shuffle=True, verbose=0)",
        "adam": "keras.optimizers.Adam, beta_1 0.9, beta_2 0.999, epsilon 1e-7",
        "jit_compile": str(getattr(model, "jit_compile", None)),
    }
    if train_eval:
        details["train_eval"] = subset
    config = dataclasses.replace(config, train_size=len(y_train), test_size=len(y_test), details=details)
    framework = ("keras", keras.__version__, backend, backend_version(backend))
    return run_record(config, framework, keras_device(), seed=seed, history=recorder.history, setup_s=0.0, out=out)
