"""Measures of the claims chapter that the probes in :mod:`bnref.experiments.probes` do not take.

* :func:`calibration_error`: the expected calibration error of Guo et al. (2017): predictions grouped by their
  confidence into equal-width bins, the bins' gaps between accuracy and mean confidence averaged by bin size.
* :func:`scores`: loss, accuracy, calibration error and mean confidence of a model on a data set, in inference mode.
* :func:`train_with_validation`: the article's recipe (Adam, as :func:`bnref.mnist.torch_training.train_torch`
  runs it, through the same loop) on a training subset, with the training subset itself, a held-out validation
  split and the test set scored in inference mode after every epoch, so that an early-stopping point can be chosen
  on the validation split and the gap between training and test measured at it or at matched training loss.
* :func:`weight_norms`: the norm of each Linear layer's weight matrix, to turn gradient norms into relative ones
  (a layer followed by BN has ``||dL/dW||`` proportional to ``1 / ||W||``).
* :func:`aa_run`: one run of the A/A experiment, the measure of the verdict rule's false-positive rate.

Like the probes, these are plain functions: NumPy in and out, PyTorch imported inside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnref.mnist.data import as_labeled
from bnref.mnist.models import check_int, linear_layers

if TYPE_CHECKING:
    import torch

__all__ = ["calibration_error", "scores", "validation_split", "train_with_validation", "weight_norms", "aa_run"]

#: The per-epoch fields of :func:`train_with_validation`, one list per field.
EPOCH_FIELDS = (
    "train_loss",
    "train_eval_loss",
    "train_eval_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "test_ece",
    "test_conf",
)


def calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (ECE) of class probabilities, as defined by Guo et al. (2017).

    Each prediction's confidence is its largest probability; the predictions are grouped into ``bins``
    equal-width bins of confidence, ``((k - 1) / bins, k / bins]``, and the ECE is
    ``sum_k |B_k| / n * |accuracy(B_k) - mean confidence(B_k)|``: 0 for a model whose confidence matches its
    accuracy, up to 1.

    Parameters
    ----------
    probs : ndarray, shape (n, classes)
        Rows of probabilities (softmax outputs).
    labels : ndarray, shape (n,)
        The true classes.
    bins : int
        Number of equal-width confidence bins (Guo et al. use 15).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"probs must be (n >= 1, classes) and labels (n,); got {p.shape} and {y.shape}")
    check_int("bins", bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin k (0-based) holds (k / bins, (k + 1) / bins]; a confidence of exactly 0 cannot occur for probabilities
    k = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(k, minlength=bins)
    gap = np.abs(np.bincount(k, weights=correct, minlength=bins) - np.bincount(k, weights=conf, minlength=bins))
    return float(gap.sum() / len(p)) if count.sum() else 0.0


def scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """Mean cross-entropy, accuracy, ECE (:func:`calibration_error`) and mean confidence of a logits model on
    ``(x, y)`` in inference mode (BN with its running statistics); the model's mode is put back."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
            loss = float(torch.nn.functional.cross_entropy(logits, y, reduction="sum")) / len(y)
            probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    labels = y.cpu().numpy()
    return {
        "loss": loss,
        "acc": float(np.mean(probs.argmax(axis=1) == labels)),
        "ece": calibration_error(probs, labels, bins),
        "conf": float(probs.max(axis=1).mean()),
    }


def validation_split(
    x: np.ndarray, y: np.ndarray, n: int, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two disjoint random subsets of ``(x, y)``: ``n`` training and ``n_val`` validation examples, drawn by
    ``seed`` (float32 features, int64 labels; images are flattened and scaled as
    :func:`bnref.mnist.data.as_labeled` does)."""
    x, y = as_labeled(x, y, num_classes=None)
    check_int("n", n)
    check_int("n_val", n_val, high=len(y) - n)
    idx = np.random.default_rng(seed).choice(len(y), size=n + n_val, replace=False)
    tr, va = idx[:n], idx[n:]
    return x[tr], y[tr], x[va], y[va]


def train_with_validation(
    data: Sequence[np.ndarray],
    *,
    bn: str,
    placement: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
    bins: int = 15,
) -> dict[str, list[float]]:
    """The article's network trained with Adam by the loop of :func:`bnref.mnist.torch_training.train_torch`,
    scored after every epoch on its training set, a validation set and the test set, in inference mode.

    Parameters
    ----------
    data : (x_train, y_train, x_val, y_val, x_test, y_test)
        Float32 features ``(n, d)`` and int64 labels.
    bn, placement : str
        See :func:`bnref.mnist.models.build_torch_model`.
    epochs, batch_size, lr, seed : int, int, float, int
        As in :func:`bnref.mnist.torch_training.train_torch` (same initial weights, shuffle and Adam for a seed).
    bins : int
        Confidence bins of the test set's ECE.

    Returns
    -------
    dict
        One list per field of :data:`EPOCH_FIELDS`, one entry per epoch: ``train_loss`` is the mean loss of the
        epoch's training steps (training mode); ``train_eval_*`` the training set scored in inference mode after
        the epoch; ``val_*`` and ``test_*`` the validation and test sets; ``test_ece`` and ``test_conf`` the test
        set's calibration error and mean confidence.
    """
    import torch

    from bnref.mnist.models import build_torch_model
    from bnref.mnist.torch_training import FastTorchLoop

    check_int("epochs", epochs)
    dev = torch.device(device)
    torch.manual_seed(seed)
    x, y, xv, yv, xt, yt = (torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in data)
    model = build_torch_model(bn, placement, seed, input_dim=x.shape[1]).to(dev)
    loop = FastTorchLoop(model, x, y, xt, yt, batch_size=batch_size, lr=lr, seed=seed, cuda_graphs=False)
    out: dict[str, list[float]] = {f: [] for f in EPOCH_FIELDS}
    for _ in range(epochs):
        out["train_loss"].append(loop.train_epoch()[0])
        for name, (xs, ys) in (("train_eval", (x, y)), ("val", (xv, yv)), ("test", (xt, yt))):
            s = scores(model, xs, ys, bins)
            out[f"{name}_loss"].append(s["loss"])
            out[f"{name}_acc"].append(s["acc"])
        out["test_ece"].append(s["ece"])
        out["test_conf"].append(s["conf"])
    return out


def weight_norms(model: torch.nn.Module) -> np.ndarray:
    """Frobenius norm of each Linear layer's weight matrix, input layer first, in the order of
    :func:`bnref.experiments.probes.weight_gradient_norms`: computed in the weights' own dtype (as the claims
    records were made), returned as a float64 array."""
    return np.array([float(lin.weight.detach().norm()) for lin in linear_layers(model)])


def aa_run(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    tail: int,
) -> dict[str, Any]:
    """One run of the A/A experiment: ``model`` trained by SGD (:func:`bnref.experiments.probes.train_sgd`),
    then its final training loss (mean of the last ``tail`` steps), test loss and test accuracy (inference mode).
    """
    from bnref.experiments.probes import train_sgd
    from bnref.mnist.torch_training import evaluate

    run = train_sgd(model, x, y, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    test_loss, test_acc = evaluate(model, x_test, y_test)
    return {
        "final_loss": float(np.mean(run["loss"][-tail:])) if not run["diverged"] else float("inf"),
        "test_loss": test_loss,
        "test_acc": test_acc,
    }
