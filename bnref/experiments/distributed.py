"""The chapter "Batch Normalization across devices": the DDP experiment and the chapter's live demonstrations.

Synchronised BN itself is :class:`bnref.layers.sync_bn.SyncBatchNorm` (with
:func:`~bnref.layers.sync_bn.convert_sync_batchnorm` and the statistics it merges); running a function on several
gloo processes and counting what they send is :mod:`bnref.experiments.launcher`; Flax's synchronised BN is measured
by :mod:`bnref.experiments.flax_sync`.

What is here
------------
* :data:`DDP_EXPERIMENT`: the article's model trained on MNIST in four ways (:data:`DDP_VARIANTS`: one process
  with the whole batch, the same with the rows reversed, DDP over two gloo processes with synchronised BN, and with
  plain BN per rank), declared once in the group ``distributed`` of :data:`REGISTRY` and run by::

      python -m bnref.experiments run distributed-ddp-mnist --out book/results/

  which writes ``distributed-ddp-mnist-cpu.json``. :func:`train_variant` trains one variant (on every rank for the
  DDP ones), :func:`run_ddp_experiment` all of them over seeds.
* :func:`chapter_demo`: everything the chapter shows live, on one rank of a two-process launch: synchronised BN on
  the cases of :data:`DEMO_CASES` (:func:`demo_batch`), the collectives it calls, DDP's buffer broadcast, and a
  reduced DDP run.

This module imports PyTorch (and ``torch.distributed``) when it is imported; ``import bnref`` and
``import bnref.experiments`` do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from bnref.experiments.launcher import count_collectives, launch, shard_bounds
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.layers.sync_bn import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "REGISTRY",
    "DDP_EXPERIMENT",
    "DDP_VARIANTS",
    "mnist_tensors",
    "train_variant",
    "run_ddp_experiment",
    "check_record",
    "DEMO_CASES",
    "demo_batch",
    "chapter_demo",
]


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
        "sync": "DDP over world_size processes, convert_sync_batchnorm (bnref.layers.sync_bn.SyncBatchNorm)",
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


def _ddp_worker(
    rank: int, world_size: int, seeds: Sequence[int], config: dict, max_steps: int | None, data: tuple | None = None
) -> dict:
    data = mnist_tensors() if data is None else data
    out = {}
    for seed in seeds:
        out[seed] = {
            v: train_variant(v, seed, config, rank=rank, world_size=world_size, max_steps=max_steps, data=data)
            for v in ("sync", "local")
        }
    return out


def _summarise(runs: dict[str, dict]) -> dict[str, Any]:
    """Per-seed results: every variant's losses and test metrics, and its gaps to the single-process run."""
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
    seeds: Sequence[int],
    config: dict[str, Any] = DDP_EXPERIMENT,
    *,
    max_steps: int | None = None,
    data: tuple[torch.Tensor, ...] | None = None,
) -> dict[int, dict[str, Any]]:
    """Run every variant of :data:`DDP_EXPERIMENT` for each seed: the DDP ones on ``world_size`` new gloo
    processes (one launch for all seeds), the single-process ones here, all on ``data`` (default
    :func:`mnist_tensors`). Returns ``{seed: summary}``: per variant ``step_loss``, ``epochs``, ``max_loss_gap``
    and ``param_gap`` to the ``single`` run, and for DDP variants ``rank_buffer_gap``, the largest difference of
    the first BN layer's running mean between ranks at the end."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    torch.set_num_threads(config["threads_per_process"])
    threads = config["threads_per_process"]
    by_rank = launch(_ddp_worker, config["world_size"], seeds, config, max_steps, data, threads=threads)
    data = mnist_tensors() if data is None else data
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


def _run_ddp(config: dict[str, Any], seeds: list[int], device: torch.device, data: Data) -> dict[int, dict[str, Any]]:
    """The registry's runner: :func:`run_ddp_experiment` on ``data`` (float32 features, integer labels)."""
    if device.type != "cpu":
        raise ValueError(f"the DDP experiment runs on gloo processes on the CPU; got device {device}")
    x_train, y_train, x_test, y_test = data
    tensors = tuple(
        torch.from_numpy(np.ascontiguousarray(a, dtype=t))
        for a, t in ((x_train, np.float32), (y_train, np.int64), (x_test, np.float32), (y_test, np.int64))
    )
    return run_ddp_experiment(seeds, config, data=tensors)


#: The chapter's experiment, the group ``distributed``.
REGISTRY = Registry(
    {
        "distributed": [
            Experiment(
                DDP_EXPERIMENT["name"],
                "distributed",
                "the article's network trained with Adam for 3 epochs on all 60,000 images in one process and with "
                "DDP on 2 gloo processes, with synchronised and with per-rank BN: loss at every step, test accuracy",
                DDP_EXPERIMENT,
                (0, 1, 2),
                _run_ddp,
                record_file="{name}-{device}.json",
                all_seeds=True,
                versions=("torch",),
            )
        ]
    },
    module="bnref.experiments.distributed",
)
check_record = REGISTRY.check


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


if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
