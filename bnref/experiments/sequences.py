"""Why sequence models use Layer Normalization: the experiment behind the chapter ``sequences``.

MNIST read row by row is a sequence of 28 steps of 28 pixels. Each image here is cut to its first ``L`` rows, ``L``
drawn at random, and zero-padded back to 28 steps with a mask that marks the real ones, so a batch mixes sequences
of different lengths, as batches of sentences do. A one-block pre-norm Transformer classifies them, with one of
five token normalisations in its three normalisation slots (:data:`NORMS`): none, BN over the batch and time axes as
``torch.nn.BatchNorm1d`` computes it (padding included), BN over the real tokens only, Layer Normalization and
RMSNorm. The experiment ``sequences``, declared in the group ``sequence-models`` of :data:`REGISTRY`, trains each on the
same data from the same seed and measures the test accuracy, the accuracy when each test sequence is fed alone
with the normalisation in training mode, and how far one sequence's output moves when the other members of its
batch change::

    python -m bnref.experiments.sequences run sequences --out book/results/

What is here
------------
* :func:`draw_lengths`, :func:`row_sequences`: the variable-length task.
* :class:`TokenNorm`: the five normalisations behind one interface ``norm(h, mask)``; :class:`MaskedBatchNorm`,
  BN whose statistics (and running statistics) come from the real tokens only.
* :class:`SequenceClassifier`: the one-block Transformer.
* :func:`train_sequences`, :func:`evaluate_sequences`, :func:`batch_dependence`: training, evaluation, and the
  measure of a sequence's dependence on its batch.

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bnref.experiments import probes as ex
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.mnist.models import check_int, check_positive

__all__ = [
    "REGISTRY",
    "EXPERIMENTS",
    "NORMS",
    "draw_lengths",
    "row_sequences",
    "MaskedBatchNorm",
    "TokenNorm",
    "SequenceClassifier",
    "train_sequences",
    "evaluate_sequences",
    "batch_dependence",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
]

#: The token normalisations: ``"none"``, ``"bn"`` (``BatchNorm1d`` over batch and time, padding included),
#: ``"bn-masked"`` (BN over the real tokens only), ``"ln"`` (``LayerNorm``) and ``"rms"`` (``RMSNorm``).
NORMS = ("none", "bn", "bn-masked", "ln", "rms")

#: Rows per image and pixels per row: the longest sequence and the size of one step.
STEPS = ROW = 28


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------


def draw_lengths(n: int, min_len: int, seed: int, max_len: int = STEPS) -> np.ndarray:
    """``n`` sequence lengths drawn uniformly from ``min_len, ..., max_len`` by ``numpy.random.default_rng(seed)``."""
    check_int("n", n)
    check_int("min_len", min_len)
    if not min_len <= max_len <= STEPS:
        raise ValueError(f"lengths must satisfy 1 <= min_len <= max_len <= {STEPS}; got {min_len}, {max_len}")
    return np.random.default_rng(seed).integers(min_len, max_len + 1, size=n)


def row_sequences(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images as sequences of rows: the first ``lengths[i]`` rows of image ``i``, zero-padded to 28 steps.

    Parameters
    ----------
    x : ndarray, shape (n, 784)
        Flattened 28 x 28 images.
    lengths : ndarray of int, shape (n,)
        Between 1 and 28.

    Returns
    -------
    seqs : ndarray, shape (n, 28, 28) float32
        Step ``t`` of sequence ``i`` is row ``t`` of image ``i`` where ``t < lengths[i]``, zeros after.
    mask : ndarray, shape (n, 28) bool
        True at the real steps.
    """
    x = np.asarray(x, dtype=np.float32)
    lengths = np.asarray(lengths)
    if x.ndim != 2 or x.shape[1] != STEPS * ROW:
        raise ValueError(f"x must have shape (n, {STEPS * ROW}); got {x.shape}")
    if lengths.shape != (len(x),) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > STEPS:
        raise ValueError(f"lengths must be {len(x)} integers between 1 and {STEPS}; got shape {lengths.shape}")
    mask = np.arange(STEPS)[None, :] < lengths[:, None]
    seqs = x.reshape(-1, STEPS, ROW) * mask[:, :, None]
    return seqs.astype(np.float32), mask


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class MaskedBatchNorm(nn.Module):
    """BN over the batch and time axes whose statistics come from the real tokens only (``mask`` True).

    Training mode: per feature, the mean and biased variance over the real tokens of the batch normalise every
    token; the running mean and the running *unbiased* variance are updated with ``momentum`` as
    ``torch.nn.BatchNorm1d`` updates its own. Evaluation mode: the running statistics. Padded tokens are
    normalised too (their outputs are never used).
    """

    def __init__(self, width: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            real = h[mask]  # (tokens, width)
            if len(real) < 2:
                raise ValueError(f"masked BN needs at least 2 real tokens in a training batch; got {len(real)}")
            mean, var = real.mean(dim=0), real.var(dim=0, unbiased=False)
            with torch.no_grad():
                m, k = self.momentum, len(real)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * k / (k - 1))
        else:
            mean, var = self.running_mean, self.running_var
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class TokenNorm(nn.Module):
    """One of :data:`NORMS` applied to tokens ``h`` of shape ``(batch, steps, width)``: ``norm(h, mask)``.

    ``"bn"`` is ``torch.nn.BatchNorm1d(width)`` on ``h`` transposed to ``(batch, width, steps)``: one mean and one
    variance per feature over every batch member and every step, padding included. ``"ln"`` and ``"rms"`` are
    ``torch.nn.LayerNorm(width)`` and ``torch.nn.RMSNorm(width)``: statistics over each token's own ``width``
    features. Every ``eps`` is ``1e-5``.
    """

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got {kind!r}")
        self.kind = kind
        layers = {
            "none": nn.Identity,
            "bn": lambda: nn.BatchNorm1d(width),
            "bn-masked": lambda: MaskedBatchNorm(width),
            "ln": lambda: nn.LayerNorm(width),
            "rms": lambda: nn.RMSNorm(width, eps=1e-5),
        }
        self.layer = layers[kind]()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "bn":
            return self.layer(h.transpose(1, 2)).transpose(1, 2)
        if self.kind == "bn-masked":
            return self.layer(h, mask)
        return self.layer(h)


class SequenceClassifier(nn.Module):
    """A one-block pre-norm Transformer for sequences of 28-pixel rows, logits ``(batch, 10)``.

    ``h = embed(rows) + position``; ``h = h + attention(norm1(h))`` (one head, padded keys masked out);
    ``h = h + mlp(norm2(h))`` (``width -> hidden -> width``, ReLU); ``h = norm3(h)``; the mean of ``h`` over the
    real steps of each sequence; a Linear layer to 10 classes. Every ``norm`` is a :class:`TokenNorm` of ``kind``.
    Everything a real step computes depends on the padded steps only through the normalisation: attention ignores
    padded keys and the pooling padded steps.
    """

    def __init__(self, norm: str, *, width: int = 32, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        check_int("width", width, low=2)
        check_int("hidden", hidden)
        torch.manual_seed(seed)
        self.embed = nn.Linear(ROW, width)
        self.position = nn.Parameter(0.1 * torch.randn(STEPS, width))
        self.norm1, self.norm2, self.norm3 = (TokenNorm(norm, width) for _ in range(3))
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.head = nn.Linear(width, 10)

    def forward(self, seqs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = seqs.shape[1]
        h = self.embed(seqs) + self.position[:steps]
        q, k, v = self.qkv(self.norm1(h, mask)).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        h = h + self.proj(torch.softmax(scores, dim=-1) @ v)
        h = h + self.mlp(self.norm2(h, mask))
        h = self.norm3(h, mask)
        m = mask.to(h.dtype)[:, :, None]
        pooled = (h * m).sum(dim=1) / m.sum(dim=1)
        return self.head(pooled)


# --------------------------------------------------------------------------------------------
# training and measuring
# --------------------------------------------------------------------------------------------


def _tensors(seqs: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(seqs, device=device), torch.as_tensor(mask, device=device)


def train_sequences(
    model: nn.Module,
    seqs: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    after_epoch: Callable[[nn.Module], None] | None = None,
) -> np.ndarray:
    """Adam on mean cross-entropy, ``epochs`` passes in orders drawn by ``numpy.random.default_rng(seed)``, the last
    incomplete batch of each epoch dropped; every batch keeps the full 28 steps. ``after_epoch(model)``, if given,
    is called after each epoch (to evaluate). Returns each epoch's mean loss."""
    check_int("epochs", epochs)
    check_int("batch_size", batch_size, low=2, high=len(y))
    check_positive("lr", lr)
    dev = next(model.parameters()).device
    xs, ms = _tensors(seqs, mask, dev)
    ys = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.as_tensor(rng.permutation(len(ys)), device=dev)
        total, count = 0.0, 0
        for first in range(0, len(ys) - batch_size + 1, batch_size):
            b = order[first : first + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xs[b], ms[b]), ys[b])
            loss.backward()
            opt.step()
            total, count = total + loss.item(), count + 1
        losses.append(total / count)
        if after_epoch is not None:
            after_epoch(model)
    return np.array(losses)


@torch.no_grad()
def evaluate_sequences(
    model: nn.Module, seqs: np.ndarray, mask: np.ndarray, y: np.ndarray, *, batch_size: int, train_mode: bool = False
) -> float:
    """Accuracy on ``(seqs, mask, y)`` in batches of ``batch_size`` (the last one smaller).

    ``train_mode``: the normalisations run as in training (BN with each batch's own statistics), the running
    statistics left as they were. With ``batch_size=1`` each sequence is cut to its own length first (a single
    sequence needs no padding), as at inference one request at a time.
    """
    check_int("batch_size", batch_size)
    dev = next(model.parameters()).device
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(train_mode)
    try:
        right = 0
        for first in range(0, len(y), batch_size):
            s, m = seqs[first : first + batch_size], mask[first : first + batch_size]
            if batch_size == 1:
                n = int(m[0].sum())
                s, m = s[:, :n], m[:, :n]
            pred = model(*_tensors(s, m, dev)).argmax(dim=1).cpu().numpy()
            right += int((pred == y[first : first + batch_size]).sum())
    finally:
        model.load_state_dict(kept)
        model.eval()
    return right / len(y)


@torch.no_grad()
def batch_dependence(
    model: nn.Module,
    probes: tuple[np.ndarray, np.ndarray],
    companions: list[tuple[np.ndarray, np.ndarray]],
    *,
    train_mode: bool,
) -> tuple[float, float]:
    """How far the outputs of the ``probes`` move when the other members of their batch change.

    Each batch is the probe sequences followed by one set of companions (every set the same size, every sequence
    padded to 28 steps, so every batch has the same shape). Returns the largest absolute change of a probe's logits
    and the fraction of probes whose predicted class changes, between the first set of companions and any other.
    Running statistics are left as they were.
    """
    if len(companions) < 2 or len({len(c[0]) for c in companions}) != 1:
        raise ValueError("batch_dependence needs at least two sets of companions, all of one size")
    dev = next(model.parameters()).device
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(train_mode)
    n = len(probes[0])
    try:
        logits = [
            model(*_tensors(np.concatenate([probes[0], s]), np.concatenate([probes[1], m]), dev))[:n].double().cpu()
            for s, m in companions
        ]
    finally:
        model.load_state_dict(kept)
        model.eval()
    change = max(float((other - logits[0]).abs().max()) for other in logits[1:])
    flips = max(float((other.argmax(1) != logits[0].argmax(1)).double().mean()) for other in logits[1:])
    return change, flips


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------


def _task(cfg: dict[str, Any], data: Data, seed: int) -> dict[str, Any]:
    """The seed's training sequences and the test sequences (test lengths the same for every seed)."""
    x, y = ex.take_subset(data[0], data[1], cfg["train_size"], seed=seed)
    xt, yt = data[2][: cfg["test_size"]], data[3][: cfg["test_size"]]
    train = row_sequences(x, draw_lengths(len(y), cfg["min_len"], seed))
    test = row_sequences(xt, draw_lengths(len(yt), cfg["min_len"], cfg["test_length_seed"]))
    return {"train": (*train, y), "test": (*test, np.asarray(yt, dtype=np.int64))}


def _companion_sets(test: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: dict[str, Any], seed: int) -> dict:
    """Probe sequences and the sets of batch companions: random draws, and the shortest and the longest sequences."""
    seqs, mask, _ = test
    n_probe, n_comp = cfg["probes"], cfg["companions"]
    lengths = mask.sum(axis=1)
    rng = np.random.default_rng(seed)
    rest = np.arange(n_probe, len(lengths))
    by_length = rest[np.argsort(lengths[rest], kind="stable")]

    def pick(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return seqs[idx], mask[idx]

    return {
        "probes": pick(np.arange(n_probe)),
        "random": [pick(rng.choice(rest, n_comp, replace=False)) for _ in range(cfg["random_draws"])],
        "length": [pick(by_length[:n_comp]), pick(by_length[-n_comp:])],
    }


def _run_sequences(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Each normalisation on the same task from the same seed: accuracy and dependence on the batch."""
    task = _task(cfg, data, seed)
    sets = _companion_sets(task["test"], cfg, seed)
    n_b1 = cfg["batch1_size"]
    seqs, mask, yt = task["test"]

    def test_acc(model: nn.Module) -> float:
        return evaluate_sequences(model, seqs, mask, yt, batch_size=cfg["eval_batch"])

    out: dict[str, Any] = {}
    for norm in cfg["norms"]:
        model = SequenceClassifier(norm, width=cfg["width"], hidden=cfg["hidden"], seed=seed).to(device)
        accs: list[float] = []
        losses = train_sequences(
            model, *task["train"], epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
            after_epoch=lambda m, accs=accs: accs.append(test_acc(m)),
        )  # fmt: skip
        res: dict[str, Any] = {
            "train_loss": losses,
            "test_acc_curve": accs,
            "test_acc": accs[-1],
            "test_acc_batch1_train_mode": evaluate_sequences(
                model, seqs[:n_b1], mask[:n_b1], yt[:n_b1], batch_size=1, train_mode=True
            ),
            "test_acc_batch1_eval_subset": evaluate_sequences(model, seqs[:n_b1], mask[:n_b1], yt[:n_b1], batch_size=1),
        }
        for mode, train_mode in (("train", True), ("eval", False)):
            for what in ("random", "length"):
                change, flips = batch_dependence(model, sets["probes"], sets[what], train_mode=train_mode)
                res[f"dep_{what}_{mode}"] = change
                res[f"flips_{what}_{mode}"] = flips
        out[norm] = res
    return out


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "sequences",
            "sequences",
            "a one-block Transformer on MNIST read row by row, each image cut to its first 14 to 28 rows and padded, "
            "with no normalisation, BN over batch and time (padding included, or real tokens only), LayerNorm or "
            "RMSNorm: test accuracy, accuracy one sequence at a time in training mode, and how far a sequence's "
            "output moves when the rest of its batch changes",
            {
                "norms": list(NORMS),
                "train_size": 6000,
                "test_size": 4000,
                "min_len": 14,
                "test_length_seed": 10_000,
                "width": 32,
                "hidden": 64,
                "batch_size": 64,
                "lr": 3e-3,
                "epochs": 5,
                "eval_batch": 256,
                "batch1_size": 500,
                "probes": 8,
                "companions": 56,
                "random_draws": 4,
            },
            (0, 1, 2, 3, 4),
            _run_sequences,
            versions=("torch",),
        ),
    ]


#: The experiment of the chapter ``sequences``, in the group ``sequence-models`` (a group may not share its name
#: with an experiment).
REGISTRY = Registry({"sequence-models": _experiments()}, module="bnref.experiments.sequences")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check

if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
