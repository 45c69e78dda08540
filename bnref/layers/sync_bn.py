"""Synchronised Batch Normalization on ``torch.distributed``, on any backend (gloo on the CPU included).

When a batch is split over ``W`` processes (ranks), each rank holds a shard of ``n_r`` examples. Plain BN on
each rank normalises with its shard's statistics; synchronised BN normalises every shard with the statistics
of the whole batch, so the result equals BN over the concatenated batch. The book's chapter "Batch
Normalization across devices" (``book/distributed.ipynb``, label ``ch-distributed``) derives what follows;
the equation labels below are that chapter's.

Forward, training mode, per channel (``m_r`` = values per channel on rank ``r``, ``N*H*W`` for NCHW):

* each rank computes its count ``m_r``, mean ``mu_r`` and sum of squared deviations
  ``M2_r = sum_i (x_i - mu_r)^2`` (two passes, no cancellation), eq. ``eq-dist-local``; the mean travels as
  its rounded value and the rounding's residual, so the merge sees it to about ``u std`` (see
  :func:`local_statistics` for why the merge needs that);
* **one** ``all_gather`` of the packed vector ``[m_r, mean (C), residual (C), M2_r (C)]`` (``3C + 1``
  numbers; ``nn.SyncBatchNorm`` gathers ``2C + 1``: mean, inverse std and count);
* every rank merges the ``W`` triples with Chan, Golub and LeVeque's parallel formula (eq. ``eq-dist-merge``)::

      m = sum_r m_r
      mu = sum_r m_r mu_r / m
      M2 = sum_r M2_r + sum_r m_r (mu_r - mu)^2

  which never forms ``E[x^2] - E[x]^2``; the biased variance is ``var = M2 / m``;
* ``x_hat = (x - mu) / sqrt(var + eps)``, ``y = gamma x_hat + beta`` on the rank's own shard;
* running estimates as ``nn.BatchNorm``: ``r = (1 - w) r + w b`` with ``w = momentum`` (``1/k`` at the
  k-th batch for ``momentum=None``), fed the global mean and the global unbiased variance ``M2 / (m - 1)``.

Backward (eq. ``eq-dist-backward``): the derived BN gradient
``dx = gamma / (m sigma) (m dy - sum(dy) - x_hat sum(dy x_hat))`` needs two per-channel sums over the
*whole* batch. Each rank sums over its shard; **one** ``all_reduce`` of the packed ``[sum dy, sum dy x_hat]``
(``2C`` numbers) gives the global sums; the formula is then element-wise. ``dgamma = sum(dy x_hat)`` and
``dbeta = sum(dy)`` are returned *local* (this rank's shard only), as ``nn.SyncBatchNorm`` does: DDP
all-reduces parameter gradients, and their sum over ranks is the full-batch gradient.

So a training step costs two collectives per layer, whatever the world size. Ranks may hold uneven shards, a
single example, or none at all: an empty rank contributes ``m_r = 0`` and still joins both collectives, so no
rank waits forever. Evaluation mode uses the running estimates and communicates nothing. Without an
initialised process group, or with a world of one, the layer is plain BN (:class:`bnref.layers.torch_bn.BatchNorm`,
which it extends).

Public API: :class:`SyncBatchNorm`, :func:`convert_sync_batchnorm`, :class:`SyncBatchNormFunction`,
:func:`local_statistics` and :func:`merge_statistics`. Running it on several processes
(:func:`bnref.experiments.launcher.launch`), counting its collectives
(:func:`bnref.experiments.launcher.count_collectives`) and the chapter's DDP experiment
(:mod:`bnref.experiments.distributed`) live in :mod:`bnref.experiments`; this module imports only PyTorch and the
layers below it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from bnref.conventions import PYTORCH
from bnref.layers.torch_bn import BatchNorm, ShapeMismatchError, compute_dtype, input_gradient, scale_and_shift

__all__ = [
    "SyncBatchNorm",
    "SyncBatchNormFunction",
    "convert_sync_batchnorm",
    "merge_statistics",
    "local_statistics",
]


# ----------------------------------------------------------------------------------------------------
# The statistics: local triples and their merge
# ----------------------------------------------------------------------------------------------------


def local_statistics(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean (with its rounding residual) and sum of squared deviations per channel of one shard.

    Eq. ``eq-dist-local``: with ``c`` the shard mean rounded to the compute dtype,

    ::

        c        = sum(x) / m_r                       (rounded: off the true mean by up to u |mean|)
        residual = sum(x - c) / m_r                   (the rounding of c, measured: about u |mean|)
        M2       = sum((x - c)^2) - m_r residual^2    (= sum((x - mu_r)^2), mu_r = c + residual)

    The residual matters in the merge: there the rank's mean enters the spread term ``m_r (mu_r - mu)^2``
    to *first* order, so a float32 mean rounded by ``u |mean|`` would cost a relative error of about
    ``2 u |mean| / std`` in the merged variance (1e-5 at ``|mean|/std = 300``), where BN over the whole batch in
    two passes loses only the square of that. ``c + residual`` carries the mean to about ``u std``.

    Parameters
    ----------
    x : Tensor, the shard in the compute dtype
    dims : the dimensions reduced over (every one but the channel's)

    Returns
    -------
    count : int
        Values per channel on this shard (0 for an empty shard).
    mean, residual, m2 : Tensor of shape (C,)
        ``c``, ``residual`` and ``M2`` above; all 0 for an empty shard.
    """
    count = 1
    for d in dims:
        count *= x.shape[d]
    channels = x.shape[1]
    if count == 0:
        zeros = torch.zeros(channels, dtype=x.dtype, device=x.device)
        return 0, zeros, zeros.clone(), zeros.clone()
    mean = x.mean(dim=dims)
    centred = x - mean.view(_bshape(x.dim()))
    residual = centred.mean(dim=dims)
    m2 = (centred * centred).sum(dim=dims) - count * residual * residual
    return count, mean, residual, m2


def merge_statistics(
    counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Merge per-rank (count, mean, M2) into the whole batch's (eq. ``eq-dist-merge``, Chan et al. 1979).

    ::

        m  = sum_r m_r
        mu = sum_r m_r mu_r / m
        M2 = sum_r M2_r + sum_r m_r (mu_r - mu)^2

    This is the pairwise update of Chan, Golub and LeVeque (``delta = mu_b - mu_a``, ``M2 = M2_a + M2_b +
    delta^2 m_a m_b / m``) applied to all ranks at once; both are exact in real arithmetic, and neither
    subtracts two large sums of squares (the one-pass ``E[x^2] - E[x]^2`` would). Computed in float64 (the
    inputs are ``W x C`` numbers, so this costs nothing) and returned in float64.

    Parameters
    ----------
    counts : Tensor of shape (W,)
        ``m_r``, values per channel on each rank (zeros allowed).
    means, m2s : Tensor of shape (W, C)
        Each rank's mean and M2 (any value where ``m_r = 0``: it is given weight 0).

    Returns
    -------
    count : float
        ``m``.
    mean, m2 : Tensor of shape (C,), float64
    """
    counts = counts.to(torch.float64)
    means, m2s = means.to(torch.float64), m2s.to(torch.float64)
    if counts.dim() != 1 or means.shape != m2s.shape or means.shape[:1] != counts.shape:
        raise ValueError(f"counts (W,), means and m2s (W, C) expected; got {counts.shape}, {means.shape}, {m2s.shape}")
    if bool((counts < 0).any()):
        raise ValueError(f"counts must be >= 0; got {counts.tolist()}")
    total = float(counts.sum())
    if total == 0:
        zeros = torch.zeros(means.shape[1], dtype=torch.float64, device=means.device)
        return 0.0, zeros, zeros.clone()
    present = counts > 0  # an empty rank's mean may be anything; it has weight 0
    weights = counts[:, None]
    means = torch.where(present[:, None], means, torch.zeros_like(means))
    mean = (weights * means).sum(dim=0) / total
    spread = weights * (means - mean) ** 2
    m2 = torch.where(present[:, None], m2s, torch.zeros_like(m2s)).sum(dim=0) + spread.sum(dim=0)
    return total, mean, m2


def _bshape(ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector (C,) against an (N, C, ...) input."""
    return tuple(-1 if d == 1 else 1 for d in range(ndim))


# ----------------------------------------------------------------------------------------------------
# The autograd Function: one all_gather forward, one all_reduce backward
# ----------------------------------------------------------------------------------------------------


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode synchronised BN: statistics over every rank's shard, gradient through the derived formula.

    Call as ``y, mean, var, count = SyncBatchNormFunction.apply(x, weight, bias, eps, process_group)``
    on every rank of ``process_group`` (None: the default group), with ``x`` of shape (N_r, C, ...),
    channels on dim 1, ``N_r >= 0``.

    Forward: eqs. ``eq-dist-local``, ``eq-dist-merge`` (one ``all_gather`` of ``3C + 1`` numbers per rank).
    Backward (eq. ``eq-dist-backward``), with ``sigma = sqrt(var + eps)`` and ``m`` the global count::

        S1 = allreduce(sum_shard dy),  S2 = allreduce(sum_shard dy * x_hat)       (one all_reduce of 2C)
        dx = gamma / (m sigma) * (m dy - S1 - x_hat S2)
        dgamma = sum_shard dy * x_hat,  dbeta = sum_shard dy                      (local, no communication)

    The backward all-reduces only when ``x`` needs a gradient (as ``nn.SyncBatchNorm``), and is not itself
    differentiable (no double backward through a collective).

    Returns
    -------
    y : Tensor, shape and dtype of x
    mean, var : Tensor of shape (C,), compute dtype: the global mean and biased variance (non-differentiable)
    count : Tensor, 0-d int64: the global number of values per channel ``m``
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, process_group):  # type: ignore[override]
        dims = tuple(d for d in range(x.dim()) if d != 1)
        b = _bshape(x.dim())
        cdtype = compute_dtype(x.dtype)
        xc = x.to(cdtype)
        channels = x.shape[1]

        count_r, mean_r, residual_r, m2_r = local_statistics(xc, dims)
        count_t = torch.tensor([float(count_r)], dtype=cdtype, device=x.device)
        packed = torch.cat([count_t, mean_r, residual_r, m2_r])  # 3C + 1 numbers
        world = dist.get_world_size(process_group)
        gathered = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(gathered, packed, group=process_group)
        table = torch.stack(gathered).to(torch.float64)  # (W, 3C + 1)
        means = table[:, 1 : 1 + channels] + table[:, 1 + channels : 1 + 2 * channels]  # c + residual
        m, mean64, m2_64 = merge_statistics(table[:, 0], means, table[:, 1 + 2 * channels :])
        if m <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {int(m)} over all ranks "
                f"(this rank's input size {tuple(x.shape)}); a variance needs at least 2 values"
            )
        mean = mean64.to(cdtype)
        var = (m2_64 / m).to(cdtype)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (xc - mean.view(b)) * inv_std.view(b)
        y = scale_and_shift(x_hat, weight, bias, b)

        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.m, ctx.process_group = m, process_group
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        count = torch.tensor(int(m), dtype=torch.int64)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dmean, _dvar, _dcount):  # type: ignore[override]
        x, weight, mean, inv_std = ctx.saved_tensors
        dims = tuple(d for d in range(x.dim()) if d != 1)
        b = _bshape(x.dim())
        xc = x.to(mean.dtype)
        x_hat = (xc - mean.view(b)) * inv_std.view(b)
        g = dy.to(mean.dtype)

        sum_dy = g.sum(dim=dims)  # this shard only
        sum_dy_xhat = (g * x_hat).sum(dim=dims)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            packed = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=ctx.process_group)
            total_dy, total_dy_xhat = packed.chunk(2)
            dx = input_gradient(g, x_hat, inv_std, weight, total_dy, total_dy_xhat, ctx.m, b).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = sum_dy_xhat.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            dbias = sum_dy.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None


# ----------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------


def _distributed_world(process_group: Any) -> int:
    """The size of the group the layer synchronises over; 1 outside an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


class SyncBatchNorm(BatchNorm):
    """Drop-in for ``torch.nn.SyncBatchNorm`` that runs on any ``torch.distributed`` backend (gloo on CPU too).

    Training mode inside a process group of more than one rank: every rank normalises its shard with the
    mean and biased variance of the *whole* batch (all ranks' shards together), merged from per-rank counts,
    means and sums of squared deviations (one ``all_gather``; Chan et al.'s formula, eq. ``eq-dist-merge``);
    the backward sums ``dy`` and ``dy x_hat`` over all ranks in one ``all_reduce`` (eq. ``eq-dist-backward``).
    The running estimates are updated on every rank with the same global statistics, so they stay equal::

        running_mean = (1 - w) running_mean + w mean
        running_var  = (1 - w) running_var  + w M2 / (m - 1)        (unbiased, m = global count)

    with ``w = momentum``, or ``1 / num_batches_tracked`` when ``momentum=None`` (cumulative average).
    Evaluation mode: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``, no communication.
    Outside an initialised process group, or in a group of one rank, it is plain BN
    (:class:`bnref.layers.torch_bn.BatchNorm`, its base class).

    Inputs of shape (N, C, ...) with channels on dim 1, any rank >= 2 (as ``nn.SyncBatchNorm``). A rank's
    shard may be empty (N = 0) or hold one example; only the global count must exceed 1.

    Parameters
    ----------
    num_features : int
        C.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default True
    track_running_stats : bool, default True
    process_group : ProcessGroup, optional
        The ranks to synchronise over; None is the default (whole world) group.
    device, dtype
        Of the parameters and buffers.
    bias : bool, keyword-only, default True
        With ``affine``, whether ``bias`` exists (as ``nn.SyncBatchNorm`` in PyTorch 2.13).

    Notes
    -----
    Parameters, buffers and ``state_dict`` keys (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``) and the state-dict version are those of ``nn.SyncBatchNorm``: both subclass
    ``torch.nn.modules.batchnorm._BatchNorm`` (this one through :class:`bnref.layers.torch_bn.BatchNorm`). The
    weight and bias gradients are this rank's share; DDP's gradient all-reduce sums (and averages) them.
    Derivations: the book's chapter ``ch-distributed``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = PYTORCH.eps,
        momentum: float | None = PYTORCH.momentum,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be None or lie in [0, 1], got {momentum!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[1] != self.num_features:
            raise ShapeMismatchError(
                f"expected {self.num_features} channels on dim 1, got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise this rank's shard ``x`` of shape (N_r, C, ...); see the class docstring."""
        if not (self.training and _distributed_world(self.process_group) > 1):
            # plain BN: evaluation, or training outside a group of several ranks
            return super().forward(x)
        self._check_input_dim(x)
        w = self.count_batch()
        if not self.eps > 0:
            raise ValueError(f"batch_norm eps must be positive during training, got {self.eps!r}")
        y, mean, var, count = SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps, self.process_group)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            m = int(count)
            with torch.no_grad():
                self.running_mean.mul_(1.0 - w).add_(mean.to(self.running_mean.dtype), alpha=w)
                unbiased = var * (m / (m - 1))
                self.running_var.mul_(1.0 - w).add_(unbiased.to(self.running_var.dtype), alpha=w)
        return y


def convert_sync_batchnorm(module: torch.nn.Module, process_group: Any | None = None) -> torch.nn.Module:
    """Replace every BN layer in ``module`` by :class:`SyncBatchNorm`, as ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    Every subclass of ``torch.nn.modules.batchnorm._BatchNorm`` is converted: ``nn.BatchNorm1d/2d/3d``,
    ``nn.SyncBatchNorm``, ``bnref.layers.torch_bn.BatchNorm*`` (and earlier bnref ``SyncBatchNorm`` layers, given
    the new ``process_group``). The new layer takes over the old one's parameter and buffer *objects* (so an
    optimiser built before the conversion still updates them), its eps, momentum, affine and tracking
    settings, and its train/eval mode. Returns ``module`` with its children replaced, or a new layer if
    ``module`` itself is a BN layer.
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    converted = module
    if isinstance(module, _BatchNorm):
        converted = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            bias=module.bias is not None if module.affine else True,
        )
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted
