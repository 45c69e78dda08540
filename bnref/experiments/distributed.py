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
initialised process group, or with a world of one, the layer is plain BN (``bnref.layers.torch_bn.batch_norm``).

Public API: :class:`SyncBatchNorm`, :func:`convert_sync_batchnorm`, :func:`merge_statistics`,
:class:`SyncBatchNormFunction`, :func:`count_collectives` (a shim that records every collective and its
bytes), :func:`launch` (run a function on ``W`` gloo processes on localhost), and the chapter's experiments
(:func:`full_batch_comparison`, :func:`run_ddp_experiment`; command line ``python -m bnref.experiments.distributed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from bnref.conventions import PYTORCH
from bnref.layers.torch_bn import ShapeMismatchError, batch_norm, compute_dtype, input_gradient, scale_and_shift

__all__ = [
    "SyncBatchNorm",
    "SyncBatchNormFunction",
    "convert_sync_batchnorm",
    "merge_statistics",
    "local_statistics",
    "Collective",
    "count_collectives",
    "launch",
    "free_port",
    "shard_bounds",
    "DDP_EXPERIMENT",
    "DDP_VARIANTS",
    "mnist_tensors",
    "train_variant",
    "run_ddp_experiment",
    "ddp_record",
    "DEMO_CASES",
    "demo_batch",
    "chapter_demo",
    "FLAX_SCRIPT",
    "flax_sync_bn_measurements",
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


class SyncBatchNorm(_BatchNorm):
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
    Outside an initialised process group, or in a group of one rank, it is plain BN.

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
    ``torch.nn.modules.batchnorm._BatchNorm``. The weight and bias gradients are this rank's share; DDP's
    gradient all-reduce sums (and averages) them. Derivations: the book's chapter ``ch-distributed``.
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

    def _new_value_weight(self) -> float:
        """``w`` of the running update for this step, counting the step (``num_batches_tracked += 1``)."""
        if not (self.training and self.track_running_stats and self.num_batches_tracked is not None):
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked.item())
        return float(self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise this rank's shard ``x`` of shape (N_r, C, ...); see the class docstring."""
        self._check_input_dim(x)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        sync = self.training and _distributed_world(self.process_group) > 1
        w = self._new_value_weight()
        if not sync:  # plain BN: evaluation, or training outside a group of several ranks
            track = not self.training or self.track_running_stats
            return batch_norm(
                x,
                self.running_mean if track else None,
                self.running_var if track else None,
                self.weight,
                self.bias,
                use_batch_stats,
                w,
                self.eps,
            )
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


# ----------------------------------------------------------------------------------------------------
# Counting the communication
# ----------------------------------------------------------------------------------------------------

#: The torch.distributed functions the shim wraps (every collective a layer could call).
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "_all_gather_base",
    "all_gather_object",
    "broadcast",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "barrier",
)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One call of a ``torch.distributed`` collective seen by :func:`count_collectives`.

    Attributes
    ----------
    op : str
        The function's name (``"all_gather"``, ``"all_reduce"``, ...).
    sent_bytes : int
        Bytes of the tensor this rank contributes (the input of an all_gather, the buffer of an all_reduce).
    received_bytes : int
        Bytes this rank gets back (``world x sent`` for an all_gather, ``sent`` for an all_reduce).
    shape : tuple
        Shape of the contributed tensor.
    dtype : str
    """

    op: str
    sent_bytes: int
    received_bytes: int
    shape: tuple[int, ...]
    dtype: str


#: Collectives called as ``fn(output, input, ...)``.
_OUTPUT_FIRST = ("all_gather_into_tensor", "all_gather_single", "_all_gather_base", "reduce_scatter_tensor")


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _record(op: str, args: tuple, kwargs: dict) -> Collective:
    if op == "all_gather":
        outputs, tensor = (list(args) + [kwargs.get("tensor_list"), kwargs.get("tensor")])[:2]
        sent = tensor if isinstance(tensor, torch.Tensor) else kwargs.get("tensor")
        return Collective(op, _nbytes(sent), sum(_nbytes(o) for o in outputs), tuple(sent.shape), str(sent.dtype))
    if op in _OUTPUT_FIRST and len(args) >= 2:
        out, inp = args[0], args[1]
        return Collective(op, _nbytes(inp), _nbytes(out), tuple(inp.shape), str(inp.dtype))
    tensor = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    if isinstance(tensor, torch.Tensor):
        return Collective(op, _nbytes(tensor), _nbytes(tensor), tuple(tensor.shape), str(tensor.dtype))
    return Collective(op, 0, 0, (), "")


@contextlib.contextmanager
def count_collectives() -> Iterator[list[Collective]]:
    """Record every ``torch.distributed`` collective called inside the ``with`` block, on this rank.

    A shim: the module-level functions of ``torch.distributed`` (``all_reduce``, ``all_gather``,
    ``broadcast``, ... see ``_COLLECTIVES``) are wrapped for the duration of the block and restored after,
    so any code that calls them as ``dist.<name>(...)`` is counted, bnref's or not.

    Yields
    ------
    list of Collective
        Filled in as the block runs.
    """
    log: list[Collective] = []
    saved = {name: getattr(dist, name) for name in _COLLECTIVES if hasattr(dist, name)}

    def wrap(name: str, fn: Callable) -> Callable:
        def counted(*args: Any, **kwargs: Any) -> Any:
            log.append(_record(name, args, kwargs))
            return fn(*args, **kwargs)

        return counted

    try:
        for name, fn in saved.items():
            setattr(dist, name, wrap(name, fn))
        yield log
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


# ----------------------------------------------------------------------------------------------------
# Running a function on W gloo processes
# ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str, threads: int) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def launch(fn: Callable[..., Any], world_size: int, *args: Any, threads: int = 1) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new processes joined in a gloo process group.

    The processes are started with ``torch.multiprocessing.spawn`` and meet on a free TCP port of
    localhost; each runs with ``threads`` torch threads. ``fn`` must be importable (a module-level
    function, not one defined in a notebook), and its return value picklable by ``torch.save``.

    Returns
    -------
    list
        ``fn``'s return value on each rank, in rank order.

    Raises
    ------
    ValueError
        If ``world_size < 1``.
    torch.multiprocessing.ProcessRaisedException
        If a rank raised (its traceback is in the message).
    """
    import torch.multiprocessing as mp

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    with tempfile.TemporaryDirectory(prefix="bnref-dist-") as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), fn, args, out_dir, threads), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def shard_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of consecutive shards of the given sizes (rank r gets ``start_r:stop_r``)."""
    bounds, start = [], 0
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"shard sizes must be ints >= 0, got {list(sizes)}")
        bounds.append((start, start + n))
        start += n
    return bounds


# ----------------------------------------------------------------------------------------------------
# The chapter's experiment: the article's model trained with DDP on MNIST
# ----------------------------------------------------------------------------------------------------

#: The DDP experiment, defined once; committed records carry this as their config (a test compares them).
DDP_EXPERIMENT: dict[str, Any] = {
    "name": "distributed-ddp-mnist",
    "model": "bnref.mnist.models.build_torch_model(bn='native', placement='after'): "
    "Dense 64 ReLU BN, Dense 32 ReLU BN, Dense 10",
    "world_size": 2,
    "backend": "gloo",
    "global_batch": 128,
    "epochs": 3,
    "optimizer": "Adam",
    "lr": 1e-3,
    "dtype": "float32",
    "threads_per_process": 1,
    "order": "one permutation of the 60000 training images per epoch, numpy default_rng(seed * 1000 + epoch)",
    "variants": {
        "single": "one process, the whole global batch, nn.BatchNorm1d",
        "single-reordered": "one process, each global batch in reverse row order (equal in exact arithmetic)",
        "sync": "DDP over world_size processes, convert_sync_batchnorm (bnref.experiments.distributed.SyncBatchNorm)",
        "local": "DDP over world_size processes, nn.BatchNorm1d per rank (unsynchronised = Ghost BN, one ghost "
        "batch per rank), broadcast_buffers=True (DDP's default)",
    },
}

DDP_VARIANTS = ("single", "single-reordered", "sync", "local")


def mnist_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST as torch tensors: train features (60000, 784) float32 in [0, 1], int64 labels, test likewise.

    Read from ``$BNREF_MNIST`` or the other local places of ``bnref.mnist.data.load_mnist`` (never downloaded).
    """
    from bnref.mnist.data import as_features, load_mnist

    d = load_mnist(download=False)
    xt, yt = torch.from_numpy(as_features(d.x_train)), torch.from_numpy(d.y_train.astype("int64"))
    xv, yv = torch.from_numpy(as_features(d.x_test)), torch.from_numpy(d.y_test.astype("int64"))
    return xt, yt, xv, yv


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    import numpy as np

    perm = torch.from_numpy(np.random.default_rng(seed * 1000 + epoch).permutation(n))
    return [perm[i : i + batch] for i in range(0, n, batch)]


def train_variant(
    variant: str,
    seed: int,
    config: dict[str, Any] = DDP_EXPERIMENT,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_steps: int | None = None,
    data: tuple | None = None,
) -> dict[str, Any]:
    """Train the article's model as one variant of :data:`DDP_EXPERIMENT`; call it on every rank for DDP ones.

    ``single`` and ``single-reordered`` run in one process (``world_size`` 1, no process group needed);
    ``sync`` and ``local`` need an initialised gloo group of ``config["world_size"]`` ranks, each rank
    taking its contiguous share of every global batch. ``max_steps`` stops after that many steps (the
    chapter's reduced live run; no evaluation then).

    Returns
    -------
    dict
        ``step_loss`` (the global batch's mean loss at every step, before the update), ``epochs``
        (per epoch: ``test_loss``, ``test_acc`` of this rank's model in eval mode), ``params`` (the final
        parameters, flattened, float32 list) and ``running_mean`` (the first BN layer's, this rank's).
    """
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from bnref.mnist.models import build_torch_model
    from bnref.mnist.torch_training import evaluate

    if variant not in DDP_VARIANTS:
        raise ValueError(f"variant must be one of {DDP_VARIANTS}, got {variant!r}")
    distributed = variant in ("sync", "local")
    if distributed and world_size != config["world_size"]:
        raise ValueError(f"variant {variant!r} runs on {config['world_size']} ranks, got world_size {world_size}")
    xt, yt, xv, yv = data if data is not None else mnist_tensors()
    torch.manual_seed(seed)
    model = build_torch_model("native", "after", seed)
    if variant == "sync":
        model = convert_sync_batchnorm(model)
    net = DistributedDataParallel(model) if distributed else model
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    step_loss: list[float] = []
    epochs: list[dict[str, float]] = []
    steps = 0
    for epoch in range(config["epochs"]):
        net.train()
        for idx in _batches(len(yt), config["global_batch"], seed, epoch):
            if variant == "single-reordered":
                idx = idx.flip(0)
            n_global = len(idx)
            if distributed:
                idx = idx.tensor_split(world_size)[rank]
            xb, yb = xt[idx], yt[idx]
            loss = nn.functional.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total = loss.detach() * len(idx)
            if distributed:
                dist.all_reduce(total)
            step_loss.append(float(total) / n_global)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        if max_steps is not None and steps >= max_steps:
            break
        test_loss, test_acc = evaluate(model, xv, yv)
        epochs.append({"test_loss": test_loss, "test_acc": test_acc})
    bn1 = next(m for m in model.modules() if isinstance(m, _BatchNorm))
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {
        "step_loss": step_loss,
        "epochs": epochs,
        "params": params.tolist(),
        "running_mean": bn1.running_mean.tolist(),
    }


def _ddp_worker(rank: int, world_size: int, seeds: Sequence[int], config: dict, max_steps: int | None) -> dict:
    data = mnist_tensors()
    out = {}
    for seed in seeds:
        out[seed] = {
            v: train_variant(v, seed, config, rank=rank, world_size=world_size, max_steps=max_steps, data=data)
            for v in ("sync", "local")
        }
    return out


def _summarise(runs: dict[str, dict]) -> dict[str, Any]:
    """Per-seed results: every variant's losses and test metrics, and its gaps to the single-process run."""
    import numpy as np

    single = np.asarray(runs["single"]["step_loss"])
    p_single = np.asarray(runs["single"]["params"])
    result: dict[str, Any] = {}
    for v in DDP_VARIANTS:
        r = runs[v]
        loss = np.asarray(r["step_loss"])
        result[v] = {
            "step_loss": [float(f"{x:.7g}") for x in loss],
            "epochs": r["epochs"],
            "max_loss_gap": float(np.abs(loss - single).max()),
            "param_gap": float(np.abs(np.asarray(r["params"]) - p_single).max() / np.abs(p_single).max()),
        }
    for v in ("sync", "local"):
        rm = np.asarray(runs[v]["running_mean_by_rank"])
        result[v]["rank_buffer_gap"] = float(np.abs(rm - rm[0]).max())
    return result


def run_ddp_experiment(
    seeds: Sequence[int], config: dict[str, Any] = DDP_EXPERIMENT, *, max_steps: int | None = None
) -> dict[int, dict[str, Any]]:
    """Run every variant of :data:`DDP_EXPERIMENT` for each seed: the DDP ones on ``world_size`` new gloo
    processes (one launch for all seeds), the single-process ones here. Returns ``{seed: summary}`` (see
    :func:`_summarise`: per variant ``step_loss``, ``epochs``, ``max_loss_gap`` and ``param_gap`` to the
    ``single`` run, and for DDP variants ``rank_buffer_gap``, the largest difference of the first BN
    layer's running mean between ranks at the end)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    torch.set_num_threads(config["threads_per_process"])
    by_rank = launch(_ddp_worker, config["world_size"], seeds, config, max_steps, threads=config["threads_per_process"])
    data = mnist_tensors()
    results = {}
    for seed in seeds:
        runs = {
            v: train_variant(v, seed, config, max_steps=max_steps, data=data) for v in ("single", "single-reordered")
        }
        for v in ("sync", "local"):
            runs[v] = dict(by_rank[0][seed][v])
            runs[v]["running_mean_by_rank"] = [r[seed][v]["running_mean"] for r in by_rank]
        results[seed] = _summarise(runs)
    return results


def ddp_record(seeds: Sequence[int], config: dict[str, Any] = DDP_EXPERIMENT):
    """Run the full experiment and return its :class:`bnref.records.ExperimentRecord` (name ``config["name"]``)."""
    from bnref.records import ExperimentRecord

    results = run_ddp_experiment(seeds, config)
    return ExperimentRecord.create(config["name"], dict(config, torch=torch.__version__), seeds, results)


# ----------------------------------------------------------------------------------------------------
# The chapter's live demonstrations, in one launch of two processes
# ----------------------------------------------------------------------------------------------------

#: The full-batch comparisons the chapter runs live: name -> (per-example shape, shard sizes).
DEMO_CASES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "dense, shards 5 + 11": ((4,), (5, 11)),
    "dense, shards 1 + 9": ((4,), (1, 9)),
    "dense, shards 0 + 12": ((4,), (0, 12)),
    "NCHW, shards 3 + 2": ((3, 4, 4), (3, 2)),
}


def demo_batch(shape: tuple[int, ...], sizes: Sequence[int], offset: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch (x, dy) of a demo case, float32, the same on every rank (seeded)."""
    g = torch.Generator().manual_seed(len(shape) * 100 + sum(sizes))
    x = offset + 2.0 * torch.randn((sum(sizes), *shape), generator=g)
    return x, torch.randn((sum(sizes), *shape), generator=g)


def _buffer_demo(rank: int, world_size: int, broadcast: bool, steps: int = 3) -> list[dict[str, list[float]]]:
    """DDP with plain (unsynchronised) BN: each rank's running mean and batch mean after every step."""
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 1))
    net = DistributedDataParallel(model, forward_sync_buffers=broadcast)
    history = []
    for step in range(steps):
        g = torch.Generator().manual_seed(100 * step + rank)
        x = torch.randn(8, 2, generator=g) + 3.0 * rank  # rank 1's shard sits elsewhere
        before = model[0].running_mean.tolist()
        net(x).sum().backward()
        history.append({"before": before, "batch_mean": x.mean(0).tolist(), "after": model[0].running_mean.tolist()})
    return history


def chapter_demo(rank: int, world_size: int, max_steps: int) -> dict[str, Any]:
    """Everything the chapter shows live, on one rank: demo cases, collectives, buffers, a reduced DDP run."""
    out: dict[str, Any] = {"cases": {}}
    for name, (shape, sizes) in DEMO_CASES.items():
        start, stop = shard_bounds(sizes)[rank]
        x, dy = demo_batch(shape, sizes)
        layer = SyncBatchNorm(shape[0])
        xs = x[start:stop].clone().requires_grad_(True)
        with count_collectives() as log:
            y = layer(xs)
            y.backward(dy[start:stop])
        grads = torch.stack([layer.weight.grad, layer.bias.grad])
        dist.all_reduce(grads)
        out["cases"][name] = {
            "y": y.detach(),
            "dx": xs.grad,
            "dgamma": grads[0],
            "dbeta": grads[1],
            "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone(),
            "log": list(log),
        }
    out["buffers"] = {b: _buffer_demo(rank, world_size, b) for b in (True, False)}
    out["ddp"] = _ddp_worker(rank, world_size, [0], DDP_EXPERIMENT, max_steps)
    return out


# ----------------------------------------------------------------------------------------------------
# A second engine: Flax's BatchNorm with axis_name, measured in a subprocess
# ----------------------------------------------------------------------------------------------------

#: The script run by :func:`flax_sync_bn_measurements` (in a new interpreter, so that XLA_FLAGS is set before
#: JAX is imported and ``import bnref`` never imports JAX). It prints one JSON object.
FLAX_SCRIPT = r"""
import json
import numpy as np
import jax, jax.numpy as jnp, flax
import flax.linen as nn

n_dev = jax.local_device_count()
C = 3


def bn64(x, eps=1e-5):
    x = np.asarray(x, np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def run(shards, masks, fast):
    model = nn.BatchNorm(use_running_average=False, axis_name="batch", use_fast_variance=fast, momentum=0.9)
    variables = model.init(jax.random.PRNGKey(0), shards[0])

    def step(x, m):
        y, _ = model.apply(variables, x, mask=m, mutable=["batch_stats"])
        return y

    return np.asarray(jax.pmap(step, axis_name="batch")(shards, masks))


out = {"jax": jax.__version__, "flax": flax.__version__, "devices": n_dev}
rng = np.random.default_rng(0)
# 1. equal shards: 8 rows per device
x = (5.0 + 2.0 * rng.standard_normal((n_dev * 8, C))).astype(np.float32)
shards = x.reshape(n_dev, 8, C)
mask_all = np.ones_like(shards, dtype=bool)
ref = bn64(x)
out["equal_cond"] = {"r": float((np.abs(x.astype(np.float64).mean(0)) / x.astype(np.float64).std(0)).max()),
                     "X": float(np.abs(ref).max()), "m": int(x.shape[0])}
out["equal"] = {f: float(np.abs(run(shards, mask_all, f).reshape(-1, C) - ref).max() / np.abs(ref).max())
                for f in (True, False)}
# 2. unequal shards: valid rows per device, padded to 8 and masked
counts = [2, 8, 5, 1][:n_dev]
masks = np.zeros_like(shards, dtype=bool)
for d, k in enumerate(counts):
    masks[d, :k] = True
valid = shards[masks[:, :, 0]]
ref_u = bn64(valid)
y = run(shards, masks, False)
y_valid = y[masks[:, :, 0]]
out["unequal"] = {"counts": counts,
                  "rel_err": float(np.abs(y_valid - ref_u).max() / np.abs(ref_u).max())}
# 3. fast variance at large |mean|/std, equal shards, float32
out["offset"] = {}
for r in (1.0, 1e2, 1e3, 1e4):
    errs = {}
    for f in (True, False):
        worst = 0.0
        for seed in range(3):
            g = np.random.default_rng(seed)
            xo = (r + g.standard_normal((n_dev * 8, C))).astype(np.float32)
            refo = bn64(xo)
            yo = run(xo.reshape(n_dev, 8, C), mask_all, f).reshape(-1, C)
            worst = max(worst, float(np.abs(yo - refo).max() / np.abs(refo).max()))
        errs["fast" if f else "two-pass"] = worst
    out["offset"][str(r)] = errs
out["offset_m"] = n_dev * 8
print(json.dumps(out))
"""


def flax_sync_bn_measurements(devices: int = 4, timeout: float = 600) -> dict[str, Any]:
    """Run ``flax.linen.BatchNorm(axis_name="batch")`` under ``jax.pmap`` on ``devices`` host CPU devices.

    ``XLA_FLAGS=--xla_force_host_platform_device_count=<devices>`` is set for a new Python process, which runs
    :data:`FLAX_SCRIPT` and returns its measurements: the largest relative error of the output against BN over
    the whole batch in float64 for equal shards (``equal``, both ``use_fast_variance`` settings), for unequal
    shards expressed with ``mask`` (``unequal``), and at growing ``|mean|/std`` (``offset``: Flax's default
    ``use_fast_variance=True``, i.e. ``E[x^2] - E[x]^2``, against ``False``, two passes), with the JAX and
    Flax versions. Raises ValueError if JAX or Flax is missing or the script fails.
    """
    import json
    import subprocess
    import sys

    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= 4:
        raise ValueError(f"devices must be an int from 1 to 4 (the script's shards), got {devices!r}")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", FLAX_SCRIPT], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise ValueError(f"the Flax measurement failed (is jax[cpu] and flax installed?):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m bnref.experiments.distributed", description="The distributed chapter's experiment."
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the DDP experiment over seeds and write its record")
    run.add_argument("experiment", choices=["ddp"])
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--out", required=True, help="the JSON file to write")
    a = p.parse_args(argv)
    record = ddp_record(a.seeds)
    print(f"wrote {record.save(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
