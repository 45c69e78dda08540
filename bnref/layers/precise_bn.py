"""Precise BN: a PyTorch model's running statistics recomputed as population statistics after training.

During training a BN layer keeps an exponential moving average (EMA) of its batch statistics,
``r <- (1 - m) r + m b`` (PyTorch, ``m = 0.1``). That estimate weighs the last few dozen batches most,
and those batches were computed with weights that changed from step to step, so it is not the
statistics of the final network. Wu & Johnson (2021, "Rethinking 'Batch' in BatchNorm", section 3)
replace it after training by *precise* statistics: run the final network over many training batches
in training mode and average the batch statistics with equal weights.

The estimator (per channel ``c`` of each BN layer; ``K`` batches of ``B`` examples each; ``x`` the
``m = B * (spatial size)`` values the layer sees in batch ``k``)::

    mu_k     = (1/m) sum x                         batch mean
    v_k      = (1/m) sum (x - mu_k)^2              biased batch variance (two-pass)
    mu       = (1/K) sum_k mu_k                    equal weights: the mean of all K*m values
    var_pop  = (1/K) sum_k (v_k + mu_k^2) - mu^2   pooled second moment: the biased variance of all K*m values
    running_mean <- mu
    running_var  <- var_pop * M / (M - 1),  M = K * m

Every batch has the same size, so the equal-weight average of the batch means is exactly the mean of
all values the layer saw, and ``var_pop`` is exactly their (biased) variance; ``running_var`` gets the
unbiased version, PyTorch's convention for ``running_var`` (chapter "frameworks"). The per-batch
sums are computed in float64 from the layer's float32 input, and the batch variance is two-pass, so
``mu_k^2`` does not cancel against ``v_k`` in float32. Note that averaging the batch variances alone,
``(1/K) sum_k v_k`` (what ``momentum=None`` in PyTorch accumulates), misses the spread of the batch
means, ``(1/K) sum_k (mu_k - mu)^2``: it is not the population variance.

The network runs in training mode (as during training, each BN layer normalises with its batch's
statistics; the inputs of later layers are what they were in training), under ``torch.no_grad``; the
training flags of all modules and every parameter are left as they were, and only the BN layers'
``running_mean`` and ``running_var`` change.

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["PreciseStats", "bn_layers", "batch_moments", "pooled_statistics", "precise_bn"]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BN layers of ``model`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and their subclasses), by name.

    Raises ValueError if there is none, or if one keeps no running statistics (``track_running_stats=False``).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not found:
        raise ValueError("the model has no BatchNorm layer whose statistics could be recomputed")
    untracked = [name for name, m in found if m.running_mean is None or m.running_var is None]
    if untracked:
        raise ValueError(f"BN layers without running statistics (track_running_stats=False): {untracked}")
    return found


def batch_moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel mean ``mu_k`` and biased two-pass variance ``v_k`` of one batch, in float64, and ``m``.

    ``x`` has the channels on axis 1 (``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ...); ``m`` is the
    number of values per channel, ``N`` times the spatial size.
    """
    if x.ndim < 2:
        raise ValueError(f"a BN input has the channels on axis 1; got shape {tuple(x.shape)}")
    v = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1).cpu().numpy()
    mu = v.mean(axis=1)
    var = ((v - mu[:, None]) ** 2).mean(axis=1)
    return mu, var, v.shape[1]


def pooled_statistics(means: np.ndarray, variances: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Population mean and unbiased variance from ``K`` equal-sized batches' means and biased variances.

    ``mu = mean_k mu_k``; ``var_pop = mean_k (v_k + mu_k^2) - mu^2`` (biased, over all ``M = K m``
    values); returns ``(mu, var_pop * M / (M - 1))``.

    Parameters
    ----------
    means, variances : ndarray, shape (K, C)
    m : int
        Values per channel in each batch.
    """
    means, variances = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    if means.ndim != 2 or means.shape != variances.shape or len(means) == 0:
        raise ValueError(f"means and variances must be (K, C) arrays with K >= 1; got {means.shape}, {variances.shape}")
    total = len(means) * int(m)
    if total < 2:
        raise ValueError(f"the population has {total} value(s) per channel; an unbiased variance needs 2")
    mu = means.mean(axis=0)
    var_pop = (variances + means**2).mean(axis=0) - mu**2
    return mu, var_pop * total / (total - 1)


class PreciseStats(dict):
    """What :func:`precise_bn` computed: ``name -> {"mean", "var", "ema_mean", "ema_var"}`` (float64 arrays),
    plus the attributes ``batches`` (K) and ``batch_size`` (B)."""

    batches: int
    batch_size: int


def _batches(data: Any, batch_size: int | None, num_batches: int | None) -> list[torch.Tensor]:
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(np.asarray(data, dtype=np.float32) if isinstance(data, np.ndarray) else data)
        if batch_size is None or isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer when data is an array; got {batch_size!r}")
        k = len(x) // int(batch_size)  # the last incomplete batch is dropped
        if k == 0:
            raise ValueError(f"data has {len(x)} examples, fewer than one batch of {batch_size}")
        out = [x[i * batch_size : (i + 1) * batch_size] for i in range(k)]
    elif isinstance(data, Iterable):
        out = [torch.as_tensor(b) for b in data]
        if not out:
            raise ValueError("data holds no batch")
        sizes = sorted({len(b) for b in out})
        if len(sizes) > 1:
            raise ValueError(f"every batch must have the same number of examples (equal weights); got sizes {sizes}")
    else:
        raise ValueError(f"data must be a tensor, an array or an iterable of batches; got {type(data).__name__}")
    if num_batches is not None:
        if isinstance(num_batches, bool) or int(num_batches) != num_batches or num_batches < 1:
            raise ValueError(f"num_batches must be a positive integer; got {num_batches!r}")
        if num_batches > len(out):
            raise ValueError(f"num_batches={num_batches} but data holds only {len(out)} batch(es)")
        out = out[:num_batches]
    return out


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def precise_bn(
    model: nn.Module, data: Any, *, batch_size: int | None = None, num_batches: int | None = None
) -> PreciseStats:
    """Replace every BN layer's running statistics by precise population statistics (Wu & Johnson 2021).

    See the module docstring for the estimator. The batches are ``data`` cut into consecutive slices
    of ``batch_size`` examples (the last incomplete one dropped) when ``data`` is a tensor or array,
    or the batches of an iterable (all of the same size); ``num_batches`` keeps only the first ``K``.
    Each is moved to the device of the model's first parameter or buffer.

    Parameters
    ----------
    model : torch.nn.Module
        Holds at least one BN layer with running statistics.
    data : tensor, ndarray or iterable of tensors
        Model inputs (a subset of the training set).
    batch_size : int
        Needed when ``data`` is a tensor or array. For a BN layer of ``BatchNorm1d`` after a linear
        layer, a batch of one example has no batch statistics; ``batch_size >= 2``.
    num_batches : int, optional

    Returns
    -------
    PreciseStats
        Per BN layer (by module name) the new ``mean`` and ``var`` and the replaced EMA values
        ``ema_mean`` and ``ema_var``, as float64 arrays.
    """
    layers = bn_layers(model)
    batches = _batches(data, batch_size, num_batches)
    if len(batches[0]) < 2:
        raise ValueError("batches of one example give no batch statistics; use batch_size >= 2")
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    moments: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = {name: [] for name, _ in layers}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            moments[name].append(batch_moments(inputs[0]))

        return record

    flags = {m: m.training for m in model.modules()}
    saved = {name: (m.running_mean.clone(), m.running_var.clone(), _clone(m.num_batches_tracked)) for name, m in layers}
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers]
    try:
        model.train()
        with torch.no_grad():
            for xb in batches:
                model(xb.to(device))
    finally:
        for h in handles:
            h.remove()
        for m, was_training in flags.items():
            m.training = was_training
    stats = PreciseStats()
    stats.batches, stats.batch_size = len(batches), len(batches[0])
    with torch.no_grad():
        for name, layer in layers:
            ema_mean, ema_var, tracked = saved[name]
            means = np.stack([mu for mu, _, _ in moments[name]])
            variances = np.stack([v for _, v, _ in moments[name]])
            mu, var = pooled_statistics(means, variances, moments[name][0][2])
            layer.running_mean.copy_(torch.as_tensor(mu))
            layer.running_var.copy_(torch.as_tensor(var))
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)
            stats[name] = {
                "mean": mu,
                "var": var,
                "ema_mean": ema_mean.double().cpu().numpy(),
                "ema_var": ema_var.double().cpu().numpy(),
            }
    return stats
