"""Train the article's model in PyTorch or Keras and write a results record (JSON).

Two trainers, one record format:

* :func:`train_torch`: bnref's fast PyTorch loop. The data go to the device once, as tensors; each
  epoch draws one shuffled index (on the CPU, from a seeded generator, so the order of batches is the
  same on every device) and gathers each batch with ``index_select``; no ``DataLoader``. The
  parameters live in one flat tensor (each layer's weight is a view into it) so that zeroing the
  gradients is one call and the fused Adam update is one kernel. On CUDA the whole training step
  (gather, forward, backward, Adam) is captured once as a CUDA graph and replayed, which removes
  the per-kernel launch cost that dominates a network this small. (``torch.compile`` was measured
  on the 2-core CPU of the project: compiling took longer than ten epochs of training and did not
  make steps faster, so the CPU path stays eager.)
* :func:`train_keras`: ``model.fit`` as the article uses it, with a callback that records the same
  numbers per epoch.

Both return and optionally save a :class:`RunRecord`: configuration, framework and version (and the
Keras backend), device name, machine (no hostname), seed, and per epoch the training loss and
accuracy (the running mean over the epoch's batches in training mode, as Keras reports them), the
test loss and accuracy (after the epoch, inference mode), and the wall time (training, evaluation,
and both). The record format and :func:`load_record`, :func:`load_records` live in :mod:`bnref.records`
(re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnref.data import one_hot, to_features
from bnref.models import NUM_CLASSES, build_keras_model, build_torch_model, check_choice
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
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "SCHEMA",
    "EpochRecord",
    "RunConfig",
    "RunRecord",
    "load_record",
    "load_records",
    "select_device",
    "device_name",
    "cpu_name",
    "machine_info",
    "train_torch",
    "train_keras",
    "flatten_parameters",
    "MNIST",
    "MNIST_SEEDS",
    "MIN_SEEDS",
    "MnistExperiment",
    "run_mnist_experiment",
    "experiment_runs",
]

# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def select_device(device: str = "auto") -> "torch.device":
    """``"auto"``: CUDA if available, then Apple MPS, then CPU. Otherwise the named device, checked.

    Raises
    ------
    ValueError
        The named device does not exist here (e.g. ``"cuda"`` on a machine without a GPU).
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} ({e}); use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False here")
    if dev.type == "mps" and not mps_ok:
        raise ValueError(f"device {device!r} requested but MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: only cpu, cuda and mps are supported")
    return dev


def device_name(dev: "torch.device") -> str:
    """A human-readable device name: the GPU's name for CUDA, the CPU model for CPU."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    return cpu_name()


def _sync(dev: "torch.device") -> None:
    """Wait for queued device work, so that wall-clock times are honest."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _as_arrays(data: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` -> float32 features ``(n, d)`` and int64 labels ``(n,)``.

    Images ``uint8 (n, 28, 28)`` are flattened and scaled to [0, 1] (:func:`bnref.data.to_features`);
    2-D float inputs are used as they are (tests feed small synthetic problems this way).
    """
    if len(data) != 4:
        raise ValueError(f"data must be (x_train, y_train, x_test, y_test); got {len(data)} items")
    out = []
    for name, x, y in (("train", data[0], data[1]), ("test", data[2], data[3])):
        x = np.asarray(x)
        x = to_features(x) if x.ndim == 3 else np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim != 2:
            raise ValueError(f"x_{name} must be images (n, 28, 28) or features (n, d); got {x.shape}")
        if y.shape != (len(x),):
            raise ValueError(f"y_{name} must have shape ({len(x)},); got {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise ValueError(f"y_{name} must hold labels in 0..{NUM_CLASSES - 1}")
        out += [x, y.astype(np.int64)]
    if out[0].shape[1] != out[2].shape[1]:
        raise ValueError(f"train and test features differ in width: {out[0].shape[1]} vs {out[2].shape[1]}")
    return out[0], out[1], out[2], out[3]


def _check_sizes(epochs: int, batch_size: int, lr: float) -> None:
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    if not (isinstance(batch_size, int) and batch_size >= 2):
        raise ValueError(f"batch_size must be an integer >= 2 (BN needs two samples); got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr!r}")


def _progress_bar(enabled: bool, epochs: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------
# PyTorch: the fast loop
# --------------------------------------------------------------------------------------------


def flatten_parameters(model: "torch.nn.Module") -> tuple["torch.nn.Parameter", "torch.Tensor"]:
    """Make every parameter of ``model`` a view into one flat parameter, and every gradient a view into one flat buffer.

    Returns
    -------
    flat : torch.nn.Parameter, shape (P,)
        All parameters, concatenated; updating it in place updates the model.
    flat_grad : torch.Tensor, shape (P,)
        Its gradient; ``flat.grad is flat_grad``. Autograd accumulates into the existing ``.grad``
        views in place, so zero ``flat_grad`` (not ``set_to_none``) before each backward pass.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if len({(p.dtype, p.device) for p in params}) != 1:
        raise ValueError("flatten_parameters needs every parameter on one device with one dtype")
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    flat.grad = flat_grad
    return flat, flat_grad


class _FastTorchLoop:
    """One model, its data on the device, a flat-parameter fused Adam, and (on CUDA) a captured step."""

    def __init__(self, model, X, Y, Xt, Yt, *, batch_size: int, lr: float, seed: int, cuda_graphs: bool):
        import torch

        self.torch = torch
        self.model, self.X, self.Y, self.Xt, self.Yt = model, X, Y, Xt, Yt
        self.dev = X.device
        self.batch_size = batch_size
        self.flat, self.flat_grad = flatten_parameters(model)
        fused = self.dev.type in ("cuda", "cpu")
        self.opt = torch.optim.Adam(
            [self.flat], lr=lr, fused=fused or None, capturable=self.dev.type == "cuda"
        )
        self.adam_impl = "fused" if fused else "default"
        self.loss_sum = torch.zeros((), device=self.dev)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.dev)
        # The shuffle is drawn on the CPU so that a seed gives the same batches on every device.
        self.gen = torch.Generator().manual_seed(seed)
        self.graph = None
        self.graph_error: str | None = None
        if cuda_graphs and len(Y) >= batch_size:  # a graph replays full batches only
            self._capture()

    def _step(self, idx) -> None:
        """Gather a batch, forward, backward, Adam; accumulate the loss and the number correct."""
        F = self.torch.nn.functional
        xb = self.X.index_select(0, idx)
        yb = self.Y.index_select(0, idx)
        logits = self.model(xb)
        loss = F.cross_entropy(logits, yb)
        self.flat_grad.zero_()
        loss.backward()
        self.opt.step()
        with self.torch.no_grad():
            self.loss_sum.add_(loss.detach() * yb.shape[0])
            self.correct.add_((logits.argmax(dim=1) == yb).sum())

    def _state(self) -> list:
        """Every tensor a training step changes (parameters and buffers such as BN running stats)."""
        return [self.flat.data, *self.model.buffers(), self.loss_sum, self.correct]

    def _capture(self) -> None:
        """Record one full-batch step as a CUDA graph; fall back to eager steps if that fails.

        Follows PyTorch's whole-network capture recipe: a few warm-up steps on a side stream, then
        capture. The warm-up steps really train, so the parameters, buffers and Adam's state are put
        back afterwards, and the run starts from the initial weights as the eager path does.
        """
        torch = self.torch
        saved = self._snapshot()
        self.static_idx = torch.arange(self.batch_size, device=self.dev)
        try:
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step(self.static_idx)
            torch.cuda.current_stream(self.dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(self.static_idx)
            self.graph = graph
        except Exception as e:  # any capture problem: train eagerly instead, and say so
            self.graph = None
            self.graph_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"CUDA graph capture failed, training eagerly instead ({self.graph_error})")
        torch.cuda.synchronize(self.dev)
        self._restore(saved)
        torch.cuda.synchronize(self.dev)

    def _snapshot(self) -> list:
        """Copies of every tensor a step changes, for :meth:`_restore`."""
        return [t.detach().clone() for t in self._state()]

    def _restore(self, saved: list) -> None:
        """Undo training steps in place (the addresses a graph recorded stay valid): parameters,
        buffers and accumulators back to ``saved``, Adam back to a fresh start (step 0, moments 0)."""
        with self.torch.no_grad():
            for t, s in zip(self._state(), saved):
                t.copy_(s)
            for state in self.opt.state.values():
                for v in state.values():
                    if isinstance(v, self.torch.Tensor):
                        v.zero_()

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the shuffled training set; returns (mean loss, accuracy)."""
        torch = self.torch
        n, bs = len(self.Y), self.batch_size
        perm = torch.randperm(n, generator=self.gen).to(self.dev)
        self.loss_sum.zero_()
        self.correct.zero_()
        self.model.train()
        n_full = n // bs if self.graph is not None else 0
        for k in range(n_full):
            self.static_idx.copy_(perm[k * bs : (k + 1) * bs])
            self.graph.replay()
        for start in range(n_full * bs, n, bs):
            self._step(perm[start : start + bs])
        return self.loss_sum.item() / n, self.correct.item() / n

    def evaluate(self, chunk: int = 10000) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the test set, BN in inference mode."""
        torch = self.torch
        self.model.eval()
        loss, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.Yt), chunk):
                xb, yb = self.Xt[start : start + chunk], self.Yt[start : start + chunk]
                logits = self.model(xb)
                loss += torch.nn.functional.cross_entropy(logits, yb, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == yb).sum().item())
        self.model.train()
        return loss / len(self.Yt), correct / len(self.Yt)


def train_torch(
    data: Sequence[np.ndarray],
    *,
    bn: str = "native",
    placement: str = "after",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    cuda_graphs: bool | None = None,
    cpu_threads: int | None = 1,
    progress: bool = True,
    out: str | os.PathLike | None = None,
) -> RunRecord:
    """Train the article's model with bnref's fast PyTorch loop.

    Parameters
    ----------
    data : (x_train, y_train, x_test, y_test)
        MNIST as :func:`bnref.data.load_mnist` returns it (uint8 images ``(n, 28, 28)``), or float
        features ``(n, d)`` with integer labels ``(n,)`` in 0..9.
    bn, placement : str
        See :func:`bnref.models.build_torch_model`.
    epochs, batch_size, lr : int, int, float
        Adam with this learning rate (betas 0.9, 0.999 and eps 1e-8, PyTorch's defaults); the last
        batch of an epoch is smaller when ``batch_size`` does not divide n, as in Keras.
    seed : int
        Seeds the initial weights (:func:`bnref.models.initial_weights`), ``torch.manual_seed`` and
        the shuffling. Two CPU runs with the same seed give identical records (timings aside).
    device : str
        ``"auto"`` (cuda, then mps, then cpu) or a device name.
    cuda_graphs : bool, optional
        Capture the training step as a CUDA graph. Default: on for CUDA; not allowed elsewhere.
    cpu_threads : int or None, default 1
        On the CPU, the number of threads PyTorch splits each operation over during this run
        (``torch.set_num_threads``; the previous value is restored afterwards). None leaves it alone.
        One thread is the default because this network's operations are too small to gain from
        more, and on a machine whose cores are busy with other work the threads of a split
        operation wait for each other: on the project's 2-core machine under load, two threads made
        epochs 2 to 30 times slower than one, which kept its speed.
    progress : bool
        Show a tqdm bar (one tick per epoch).
    out : path, optional
        Where to write the JSON record.

    Returns
    -------
    RunRecord
    """
    check_choice(bn, placement)
    _check_sizes(epochs, batch_size, lr)
    import torch

    dev = select_device(device)
    if cuda_graphs is None:
        cuda_graphs = dev.type == "cuda"
    if cuda_graphs and dev.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device; the device is {dev}")
    if cpu_threads is not None and not (isinstance(cpu_threads, int) and cpu_threads >= 1):
        raise ValueError(f"cpu_threads must be a positive integer or None; got {cpu_threads!r}")
    x_train, y_train, x_test, y_test = _as_arrays(data)
    threads_before = torch.get_num_threads()
    if dev.type == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        return _train_torch(x_train, y_train, x_test, y_test, dev, bn=bn, placement=placement, epochs=epochs,
                            batch_size=batch_size, lr=lr, seed=seed, cuda_graphs=cuda_graphs, progress=progress,
                            out=out)
    finally:
        torch.set_num_threads(threads_before)


def _train_torch(x_train, y_train, x_test, y_test, dev, *, bn, placement, epochs, batch_size, lr, seed,
                 cuda_graphs, progress, out) -> RunRecord:
    import torch

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tensors = [torch.from_numpy(a).to(dev) for a in (x_train, y_train, x_test, y_test)]
    model = build_torch_model(bn, placement, seed, input_dim=x_train.shape[1]).to(dev)
    loop = _FastTorchLoop(model, *tensors, batch_size=batch_size, lr=lr, seed=seed, cuda_graphs=cuda_graphs)
    _sync(dev)
    setup_s = time.perf_counter() - t0

    history: list[EpochRecord] = []
    bar = _progress_bar(progress, epochs, f"torch bn={bn}")
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = loop.train_epoch()  # .item() at the end synchronises
        t1 = time.perf_counter()
        test_loss, test_acc = loop.evaluate()
        t2 = time.perf_counter()
        history.append(EpochRecord(epoch, train_loss, train_acc, test_loss, test_acc, t1 - t0, t2 - t1, t2 - t0))
        bar.set_postfix(loss=f"{train_loss:.4f}", test_acc=f"{test_acc:.4f}")
        bar.update(1)
    bar.close()

    details: dict[str, Any] = {
        "trainer": "bnref fast loop: data on device, index_select batches, flat parameters",
        "adam": f"torch.optim.Adam {loop.adam_impl}, betas (0.9, 0.999), eps 1e-8",
        "cuda_graphs": loop.graph is not None,
        "torch_threads": torch.get_num_threads(),
    }
    if loop.graph_error:
        details["cuda_graph_error"] = loop.graph_error
    record = RunRecord(
        framework="torch",
        framework_version=torch.__version__,
        backend=None,
        backend_version=None,
        device={"type": dev.type, "name": device_name(dev)},
        machine=machine_info(),
        seed=seed,
        config=RunConfig(
            bn=bn, placement=placement, epochs=epochs, batch_size=batch_size, lr=lr,
            loss="cross-entropy on logits (torch.nn.functional.cross_entropy)",
            train_size=len(y_train), test_size=len(y_test), trainer="torch-fast", details=details,
        ),
        epochs=history,
        setup_s=setup_s,
        created_utc=now_utc(),
    )
    if out is not None:
        record.save(out)
    return record


# --------------------------------------------------------------------------------------------
# Keras: model.fit with a recording callback
# --------------------------------------------------------------------------------------------


def _keras_device() -> dict[str, str]:
    """The device Keras trains on, for each backend: the first GPU if there is one, else the CPU."""
    import keras

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
    except Exception:  # a device query failing must not lose the run; fall back to the CPU name
        pass
    return {"type": "cpu", "name": cpu_name()}


def _keras_backend_version(backend: str) -> str | None:
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.__version__
        if backend == "torch":
            import torch

            return torch.__version__
        if backend == "jax":
            import jax

            return jax.__version__
    except ImportError:
        pass
    return None


def _keras_recorder(epochs: int, progress: bool, desc: str) -> Any:
    """A ``keras.callbacks.Callback`` that times each epoch and keeps fit's metrics."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: list[EpochRecord] = []
            self.bar = _progress_bar(progress, epochs, desc)

        def on_epoch_begin(self, epoch, logs=None):
            self.t_begin = time.perf_counter()
            self.t_test = None

        def on_test_begin(self, logs=None):  # fit's validation pass
            self.t_test = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
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
                )
            )
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", test_acc=f"{logs['val_accuracy']:.4f}")
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochRecorder()


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
) -> RunRecord:
    """Train the article's model with ``model.fit``, as the article does, and record it.

    The model is compiled with Adam (``learning_rate=lr``, Keras' defaults otherwise: betas 0.9,
    0.999, epsilon 1e-7), categorical cross-entropy on one-hot labels and accuracy; ``fit`` runs
    with ``validation_data=(x_test, y_test)``, ``shuffle=True`` and ``verbose=0``. Runs on whatever
    backend Keras was started with (``KERAS_BACKEND``) and on the device that backend picks.
    Arguments as in :func:`train_torch`; ``keras.utils.set_random_seed(seed)`` fixes the shuffling.
    """
    check_choice(bn, placement)
    _check_sizes(epochs, batch_size, lr)
    import keras

    x_train, y_train, x_test, y_test = _as_arrays(data)
    keras.utils.set_random_seed(seed)
    model = build_keras_model(bn, placement, seed, input_dim=x_train.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    backend = keras.backend.backend()
    recorder = _keras_recorder(epochs, progress, f"keras/{backend} bn={bn}")
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
    record = RunRecord(
        framework="keras",
        framework_version=keras.__version__,
        backend=backend,
        backend_version=_keras_backend_version(backend),
        device=_keras_device(),
        machine=machine_info(),
        seed=seed,
        config=RunConfig(
            bn=bn, placement=placement, epochs=epochs, batch_size=batch_size, lr=lr,
            loss="categorical cross-entropy on softmax outputs, one-hot labels",
            train_size=len(y_train), test_size=len(y_test), trainer="keras-fit",
            details={
                "trainer": "keras Model.fit(validation_data=test set, shuffle=True, verbose=0)",
                "adam": "keras.optimizers.Adam, beta_1 0.9, beta_2 0.999, epsilon 1e-7",
                "jit_compile": str(getattr(model, "jit_compile", None)),
            },
        ),
        epochs=recorder.history,
        setup_s=0.0,
        created_utc=now_utc(),
    )
    if out is not None:
        record.save(out)
    return record


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
        :data:`bnref.models.BN_CHOICES` entries; ``"native"`` is each framework's own BN layer.
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
        _check_sizes(self.epochs, self.batch_size, self.lr)

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
            "data": "MNIST, all 60000 training and 10000 test images (bnref.data.load_mnist)",
            "init": "glorot-uniform weights, zero biases (bnref.models.initial_weights)",
        }

    def runs(self) -> list[str]:
        """The keys of one seed's results: ``"<framework>/<bn>"``."""
        return [f"{fw}/{bn}" for fw in self.frameworks for bn in self.bn]


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
        MNIST as :func:`bnref.data.load_mnist` returns it.
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
    dev = select_device(device)
    dev_info = {"type": dev.type, "name": device_name(dev)}
    common = dict(placement=experiment.placement, epochs=experiment.epochs, batch_size=experiment.batch_size,
                  lr=experiment.lr, progress=progress)
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
                    log(f"seed {seed} {rec.label:30s} test acc {rec.final.test_acc:.4f} "
                        f"({rec.total_s:.1f} s) on {rec.device['name']}")
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
