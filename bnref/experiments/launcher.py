"""Running a function on ``W`` processes joined in a process group, and counting what they communicate.

* :func:`launch`: ``fn(rank, world_size, *args)`` on ``world_size`` new processes on localhost (gloo on the CPU,
  NCCL with one GPU per rank), each rank's return value brought back; :func:`free_port` and :func:`shard_bounds`
  help set such a run up.
* :func:`count_collectives`: a shim that records every ``torch.distributed`` collective called inside a ``with``
  block, with the bytes sent and received (:class:`Collective`).

Used by the chapter "Batch Normalization across devices" (:mod:`bnref.experiments.distributed`) and by
``benchmarks/sync_bn.py``. This module imports PyTorch at the top; ``import bnref.experiments`` does not import it.
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

__all__ = ["BACKENDS", "Collective", "count_collectives", "launch", "free_port", "shard_bounds"]


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


#: The process-group backends :func:`launch` starts: gloo (CPU) and NCCL (one CUDA GPU per rank).
BACKENDS = ("gloo", "nccl")


def _worker(
    rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str, threads: int | None, backend: str
) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def launch(
    fn: Callable[..., Any], world_size: int, *args: Any, threads: int | None = 1, backend: str = "gloo"
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new processes joined in a process group.

    The processes are started with ``torch.multiprocessing.spawn`` and meet on a free TCP port of
    localhost; each runs with ``threads`` torch threads (None: PyTorch's default). ``backend`` is ``"gloo"``
    (CPU) or ``"nccl"`` (rank ``r`` on CUDA device ``r``). ``fn`` must be importable (a module-level
    function, not one defined in a notebook), and its return value picklable by ``torch.save``.

    Returns
    -------
    list
        ``fn``'s return value on each rank, in rank order.

    Raises
    ------
    ValueError
        If ``world_size < 1`` or ``backend`` is not one of :data:`BACKENDS`.
    torch.multiprocessing.ProcessRaisedException
        If a rank raised (its traceback is in the message).
    """
    import torch.multiprocessing as mp

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    with tempfile.TemporaryDirectory(prefix="bnref-dist-") as out_dir:
        worker_args = (world_size, free_port(), fn, args, out_dir, threads, backend)
        mp.spawn(_worker, args=worker_args, nprocs=world_size, join=True)
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
