"""bnref's fast PyTorch training loop, and the PyTorch helpers the experiments share.

The loop (:func:`train_torch`, :class:`FastTorchLoop`): the data go to the device once, as tensors;
each epoch draws one shuffled index (on the CPU, from a seeded generator, so the order of batches
is the same on every device) and gathers each batch with ``index_select``; no ``DataLoader``. The
parameters live in one flat tensor (each layer's weight is a view into it,
:func:`flatten_parameters`) so that zeroing the gradients is one call and the fused Adam update is
one kernel. On CUDA the whole training step (gather, forward, backward, Adam) is captured once as a
CUDA graph and replayed, which removes the per-kernel launch cost that dominates a network this
small. (``torch.compile`` was tried on the 2-core CPU of the project: compiling took longer than ten
epochs of training and did not make steps faster, so the CPU path stays eager.)

Shared helpers, one implementation each: :func:`select_device`, :func:`device_name`,
:func:`as_tensors` (features and labels to tensors), :func:`evaluate` (loss and accuracy in
inference mode), :func:`snapshot` / :func:`restore` and :func:`kept_buffers` (put parameters or BN
running statistics back after a probe).

This module imports PyTorch at the top; ``import bnref`` never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from bnref.mnist.common import checked_config, prepare_data, progress_bar, run_record, train_eval_subset
from bnref.mnist.data import as_labeled
from bnref.mnist.models import build_torch_model
from bnref.records import EpochRecord, RunConfig, RunRecord, cpu_name

#: The loss :func:`train_torch` minimises, as its records name it.
LOSS = "cross-entropy on logits (torch.nn.functional.cross_entropy)"

__all__ = [
    "LOSS",
    "select_device",
    "device_name",
    "synchronize",
    "as_tensors",
    "evaluate",
    "snapshot",
    "restore",
    "kept_buffers",
    "flatten_parameters",
    "FastTorchLoop",
    "train_torch",
]


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def select_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple MPS, then CPU. Otherwise the named device, checked.

    Raises
    ------
    ValueError
        The named device does not exist here (e.g. ``"cuda"`` on a machine without a GPU).
    """
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


def device_name(dev: torch.device) -> str:
    """A human-readable device name: the GPU's name for CUDA, the CPU model for CPU."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    return cpu_name()


def synchronize(dev: torch.device) -> None:
    """Wait for queued device work, so that wall-clock times are honest."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------------
# data, evaluation, state
# --------------------------------------------------------------------------------------------


def as_tensors(
    x: np.ndarray, y: np.ndarray, *, device: torch.device | str = "cpu", num_classes: int | None = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``float32 (n, d)`` and labels ``int64 (n,)`` as tensors on ``device``.

    ``x`` may be images ``(n, 28, 28)`` or features ``(n, d)``; both are checked and coerced by
    :func:`bnref.mnist.data.as_labeled` (ValueError on a mismatch).
    """
    xf, yl = as_labeled(x, y, num_classes=num_classes)
    return torch.from_numpy(xf).to(device), torch.from_numpy(yl).to(device)


def evaluate(model: torch.nn.Module, x: Any, y: Any, *, chunk: int = 10000) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of a logits model on ``(x, y)``, in inference mode.

    BN layers use their running statistics; the model's training flag is put back afterwards.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(n, d)`` to logits ``(n, classes)``.
    x, y : tensors on the model's device, or arrays (:func:`as_tensors` moves them to the device of
        the model's first parameter)
    chunk : int
        Examples per forward pass (bounds the memory used); the loss is summed over chunks and
        divided by n, the accuracy is an exact count over n.
    """
    if not isinstance(x, torch.Tensor):
        dev = next(model.parameters()).device
        x, y = as_tensors(x, y, device=dev, num_classes=None)
    n = len(y)
    if n == 0:
        raise ValueError("evaluate needs at least one example")
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, n, chunk):
                xb, yb = x[start : start + chunk], y[start : start + chunk]
                logits = model(xb)
                loss += torch.nn.functional.cross_entropy(logits, yb, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == yb).sum().item())
    finally:
        model.train(was_training)
    return loss / n, correct / n


def snapshot(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``tensors`` (parameters, buffers, accumulators), for :func:`restore`."""
    return [t.detach().clone() for t in tensors]


def restore(tensors: Iterable[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """Copy ``saved`` back into ``tensors`` in place (their storage, and so any view or captured
    CUDA graph that points at it, stays valid)."""
    tensors = list(tensors)
    if len(tensors) != len(saved):
        raise ValueError(f"restore: {len(saved)} saved tensors for {len(tensors)} tensors")
    with torch.no_grad():
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s)


@contextlib.contextmanager
def kept_buffers(model: torch.nn.Module) -> Iterator[None]:
    """Run the block, then put every buffer of ``model`` (BN running statistics, counters) back.

    For probes that run the model in training mode without meaning to train it.
    """
    saved = snapshot(model.buffers())
    try:
        yield
    finally:
        restore(model.buffers(), saved)


# --------------------------------------------------------------------------------------------
# the fast loop
# --------------------------------------------------------------------------------------------


def flatten_parameters(model: torch.nn.Module) -> tuple[torch.nn.Parameter, torch.Tensor]:
    """Make every parameter of ``model`` a view into one flat parameter, and every gradient a view into one flat buffer.

    Returns
    -------
    flat : torch.nn.Parameter, shape (P,)
        All parameters, concatenated; updating it in place updates the model.
    flat_grad : torch.Tensor, shape (P,)
        Its gradient; ``flat.grad is flat_grad``. Autograd accumulates into the existing ``.grad``
        views in place, so zero ``flat_grad`` (not ``set_to_none``) before each backward pass.
    """
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


class FastTorchLoop:
    """One model, its data on the device, a flat-parameter fused Adam, and (on CUDA) a captured step.

    Parameters
    ----------
    model : torch.nn.Module
        Logits model, already on the device of the data.
    X, Y, Xt, Yt : torch.Tensor
        Training and test features ``(n, d)`` float32 and labels ``(n,)`` int64, on one device.
    batch_size, lr, seed : int, float, int
        Adam with learning rate ``lr``; ``seed`` seeds the CPU generator of the shuffle.
    cuda_graphs : bool
        Capture a full-batch step as a CUDA graph (CUDA only).
    """

    def __init__(self, model, X, Y, Xt, Yt, *, batch_size: int, lr: float, seed: int, cuda_graphs: bool):
        self.model, self.X, self.Y, self.Xt, self.Yt = model, X, Y, Xt, Yt
        self.dev = X.device
        self.batch_size = batch_size
        self.flat, self.flat_grad = flatten_parameters(model)
        fused = self.dev.type in ("cuda", "cpu")
        self.opt = torch.optim.Adam([self.flat], lr=lr, fused=fused or None, capturable=self.dev.type == "cuda")
        self.adam_impl = "fused" if fused else "default"
        self.loss_sum = torch.zeros((), device=self.dev)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.dev)
        # The shuffle is drawn on the CPU so that a seed gives the same batches on every device.
        self.gen = torch.Generator().manual_seed(seed)
        self.graph = None
        self.graph_error: str | None = None
        if cuda_graphs and len(Y) >= batch_size:  # a graph replays full batches only
            self._capture()

    def _step(self, idx: torch.Tensor) -> None:
        """Gather a batch, forward, backward, Adam; accumulate the loss and the number correct."""
        xb = self.X.index_select(0, idx)
        yb = self.Y.index_select(0, idx)
        logits = self.model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        self.flat_grad.zero_()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach() * yb.shape[0])
            self.correct.add_((logits.argmax(dim=1) == yb).sum())

    def _state(self) -> list[torch.Tensor]:
        """Every tensor a training step changes (parameters and buffers such as BN running stats)."""
        return [self.flat.data, *self.model.buffers(), self.loss_sum, self.correct]

    def _capture(self) -> None:
        """Record one full-batch step as a CUDA graph; fall back to eager steps if that fails.

        Follows PyTorch's whole-network capture recipe: a few warm-up steps on a side stream, then
        capture. The warm-up steps really train, so the parameters, buffers and Adam's state are put
        back afterwards, and the run starts from the initial weights as the eager path does.
        """
        saved = snapshot(self._state())
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
        except Exception as e:  # any capture problem: train eagerly instead, and say so  # noqa: BLE001
            self.graph = None
            self.graph_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"CUDA graph capture failed, training eagerly instead ({self.graph_error})", stacklevel=2)
        torch.cuda.synchronize(self.dev)
        self._restore_start(saved)
        torch.cuda.synchronize(self.dev)

    def _restore_start(self, saved: list[torch.Tensor]) -> None:
        """Undo training steps in place (the addresses a graph recorded stay valid): parameters,
        buffers and accumulators back to ``saved``, Adam back to a fresh start (step 0, moments 0)."""
        restore(self._state(), saved)
        with torch.no_grad():
            for state in self.opt.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        v.zero_()

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the shuffled training set; returns (mean loss, accuracy)."""
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
        """Mean cross-entropy and accuracy on the test set, BN in inference mode (:func:`evaluate`)."""
        return evaluate(self.model, self.Xt, self.Yt, chunk=chunk)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


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
    train_eval: int = 0,
) -> RunRecord:
    """Train the article's model with bnref's fast PyTorch loop.

    Parameters
    ----------
    data : (x_train, y_train, x_test, y_test)
        MNIST as :func:`bnref.mnist.data.load_mnist` returns it (uint8 images ``(n, 28, 28)``), or float
        features ``(n, d)`` with integer labels ``(n,)`` in 0..9.
    bn, placement : str
        See :func:`bnref.mnist.models.build_torch_model`.
    epochs, batch_size, lr : int, int, float
        Adam with this learning rate (betas 0.9, 0.999 and eps 1e-8, PyTorch's defaults); the last
        batch of an epoch is smaller when ``batch_size`` does not divide n, as in Keras.
    seed : int
        Seeds the initial weights (:func:`bnref.mnist.models.initial_weights`), ``torch.manual_seed`` and
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
        operation wait for each other.
    progress : bool
        Show a tqdm bar (one tick per epoch).
    out : path, optional
        Where to write the JSON record.
    train_eval : int, default 0
        After every epoch, also evaluate the first ``train_eval`` training examples in inference mode
        (:func:`evaluate`) and record their loss and accuracy (``EpochRecord.train_eval_loss`` and
        ``train_eval_acc``; :func:`bnref.mnist.common.train_eval_subset` checks the number). 0 (the default)
        evaluates only the test set.

    Returns
    -------
    RunRecord
    """
    config = checked_config(bn, placement, epochs, batch_size, lr, loss=LOSS, trainer="torch-fast")
    dev = select_device(device)
    if cuda_graphs is None:
        cuda_graphs = dev.type == "cuda"
    if cuda_graphs and dev.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device; the device is {dev}")
    if cpu_threads is not None and not (isinstance(cpu_threads, int) and cpu_threads >= 1):
        raise ValueError(f"cpu_threads must be a positive integer or None; got {cpu_threads!r}")
    x_train, y_train, x_test, y_test = prepare_data(data)
    train_eval_subset(train_eval, len(y_train))
    threads_before = torch.get_num_threads()
    if dev.type == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        data = (x_train, y_train, x_test, y_test)
        return _train(
            data, dev, config, seed=seed, cuda_graphs=cuda_graphs, progress=progress, out=out, train_eval=train_eval
        )
    finally:
        torch.set_num_threads(threads_before)


def _train(data, dev, config: RunConfig, *, seed, cuda_graphs, progress, out, train_eval) -> RunRecord:
    x_train, y_train, _, y_test = data
    epochs = config.epochs
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tensors = [torch.from_numpy(a).to(dev) for a in data]
    model = build_torch_model(config.bn, config.placement, seed, input_dim=x_train.shape[1]).to(dev)
    batching = {"batch_size": config.batch_size, "lr": config.lr, "seed": seed}
    loop = FastTorchLoop(model, *tensors, **batching, cuda_graphs=cuda_graphs)
    synchronize(dev)
    setup_s = time.perf_counter() - t0

    history: list[EpochRecord] = []
    bar = progress_bar(progress, epochs, f"torch bn={config.bn}")
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = loop.train_epoch()  # .item() at the end synchronises
        t1 = time.perf_counter()
        test_loss, test_acc = loop.evaluate()
        seen = (None, None)
        if train_eval:
            seen = evaluate(model, loop.X[:train_eval], loop.Y[:train_eval])
        t2 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t2 - t0)
        history.append(EpochRecord(epoch, train_loss, train_acc, test_loss, test_acc, *times, *seen))
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
    if train_eval:
        details["train_eval"] = train_eval_subset(train_eval, len(y_train))
    config = dataclasses.replace(config, train_size=len(y_train), test_size=len(y_test), details=details)
    framework, device = ("torch", torch.__version__, None, None), {"type": dev.type, "name": device_name(dev)}
    return run_record(config, framework, device, seed=seed, history=history, setup_s=setup_s, out=out)
