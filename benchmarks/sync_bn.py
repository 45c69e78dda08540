"""Cost of synchronised BN: time per training step of local vs synchronised BN, and the bytes it moves.

CPU (default): gloo processes on localhost, world sizes 2 and 4 (``--worlds``). In every process the same
BN layers run a training step (forward and backward) on the rank's shard:

* ``local``: ``bnref.layers.torch_bn.BatchNorm`` per rank, the same arithmetic as the synchronised layer without
  communication (unsynchronised BN);
* ``native``: ``torch.nn.BatchNorm1d/2d`` per rank (PyTorch's own kernel, no communication);
* ``sync``: ``bnref.layers.sync_bn.SyncBatchNorm``.

Layers: the article's (BN over 64 and 32 features, global batch 128: ``dense``) and one NCHW layer (16
channels, 14 x 14, global batch 32: ``nchw``). The variants are interleaved in one run (rounds of ``--steps``
steps each, the median round kept), so the ratio ``sync / local`` is measured under the same conditions; the
bytes per step are counted by ``bnref.experiments.launcher.count_collectives`` on rank 0.

GPU (``--device cuda``): NCCL, one process per GPU, world sizes 1 and the number of GPUs (``--worlds`` to
choose; in a world of one both layers are plain BN, as ``nn.SyncBatchNorm`` falls back to BN there), comparing
``torch.nn.SyncBatchNorm`` with ``bnref.layers.sync_bn.SyncBatchNorm``: time per step, bytes per step and the
largest output difference from float64 BN over the whole batch. With ``--out`` it writes an experiment
record (schema ``bnref.experiment/1``, name ``distributed-sync-bn-benchmark``) named after the GPU, e.g.
``book/results/distributed-sync-bn-h200.json``.

Usage::

    python benchmarks/sync_bn.py                      # CPU, worlds 2 and 4
    python benchmarks/sync_bn.py --device cuda --out book/results
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from bnref.experiments.launcher import count_collectives, launch
from bnref.layers import torch_bn
from bnref.layers.sync_bn import SyncBatchNorm

LAYERS = {
    # name: (global batch, per-example shapes of the BN layers' inputs)
    "dense": (128, [(64,), (32,)]),
    "nchw": (32, [(16, 14, 14)]),
}


def _layers(kind: str, shapes, device) -> nn.ModuleList:
    mods = []
    for shape in shapes:
        c = shape[0]
        if kind == "local":
            mods.append(torch_bn.BatchNorm(c))
        elif kind == "native":
            mods.append(nn.BatchNorm1d(c) if len(shape) == 1 else nn.BatchNorm2d(c))
        elif kind == "sync":
            mods.append(SyncBatchNorm(c))
        elif kind == "native-sync":
            mods.append(nn.SyncBatchNorm(c))
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return nn.ModuleList(mods).to(device)


def _step(layers, xs, dys) -> None:
    for layer, x, dy in zip(layers, xs, dys, strict=True):
        x.grad = None
        layer(x).backward(dy)


def _shard(global_batch: int, rank: int, world: int) -> int:
    return global_batch // world + (1 if rank < global_batch % world else 0)


def _time_worker(rank: int, world: int, kinds, steps: int, rounds: int, device: str) -> dict:
    """On one rank: interleaved rounds of every kind; per-step medians and rank 0's byte counts."""
    dev = torch.device(device if device == "cpu" else f"cuda:{rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    out: dict = {}
    for layer_name, (batch, shapes) in LAYERS.items():
        n = _shard(batch, rank, world)
        g = torch.Generator().manual_seed(rank)
        xs = [(torch.randn((n, *s), generator=g) * 2 + 1).to(dev).requires_grad_(True) for s in shapes]
        dys = [torch.randn((n, *s), generator=g).to(dev) for s in shapes]
        mods = {k: _layers(k, shapes, dev) for k in kinds}
        for k in kinds:  # warm-up, and the bytes of one step
            with count_collectives() as log:
                _step(mods[k], xs, dys)
            out.setdefault(layer_name, {})[k] = {
                "collectives": len(log),
                "bytes_sent": sum(e.sent_bytes for e in log),
                "bytes_received": sum(e.received_bytes for e in log),
                "rounds_s": [],
            }
        for _ in range(rounds):
            for k in kinds:
                if dist.is_initialized():
                    dist.barrier()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                for _ in range(steps):
                    _step(mods[k], xs, dys)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                out[layer_name][k]["rounds_s"].append((time.perf_counter() - t0) / steps)
        for k in kinds:
            out[layer_name][k]["median_step_s"] = statistics.median(out[layer_name][k]["rounds_s"])
    return out


def _gpu_accuracy_worker(rank: int, world: int) -> dict:
    """Max |y - y_float64_full_batch| of native and bnref SyncBatchNorm on this rank's shard (dense layer)."""
    dev = torch.device(f"cuda:{rank}")
    torch.cuda.set_device(dev)
    g = torch.Generator().manual_seed(0)
    batch = 128
    x = torch.randn(batch, 64, generator=g) * 3 + 10
    ref = nn.BatchNorm1d(64).double()(x.double()).detach()
    start = sum(_shard(batch, r, world) for r in range(rank))
    stop = start + _shard(batch, rank, world)
    errs = {}
    for kind in ("native-sync", "sync"):
        layer = _layers(kind, [(64,)], dev)[0]
        y = layer(x[start:stop].to(dev)).detach().cpu().double()
        errs[kind] = float((y - ref[start:stop]).abs().max())
    return errs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--worlds", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per kind (median kept)")
    p.add_argument("--out", default=None, help="folder for an experiment record (GPU mode) or a JSON file (CPU)")
    a = p.parse_args(argv)
    if a.steps < 1 or a.rounds < 1:
        raise ValueError("--steps and --rounds must be >= 1")

    if a.device == "cpu":
        worlds = a.worlds or [2, 4]
        kinds = ("local", "native", "sync")
        results = {}
        for w in worlds:
            results[w] = launch(_time_worker, w, kinds, a.steps, a.rounds, "cpu")[0]
        print("time per training step (forward + backward of the BN layers), median of interleaved rounds")
        print(
            f"{'layers':8s} {'W':>2s} {'local':>9s} {'native':>9s} {'sync':>9s} {'sync/local':>10s} "
            f"{'collectives':>11s} {'bytes sent':>10s} {'bytes recv':>10s}"
        )
        for w in worlds:
            for name, r in results[w].items():
                loc, nat, syn = (r[k]["median_step_s"] for k in kinds)
                print(
                    f"{name:8s} {w:2d} {loc * 1e6:7.0f}us {nat * 1e6:7.0f}us {syn * 1e6:7.0f}us "
                    f"{syn / loc:10.2f} {r['sync']['collectives']:11d} {r['sync']['bytes_sent']:10d} "
                    f"{r['sync']['bytes_received']:10d}"
                )
        if a.out:
            import json

            from bnref.records import json_ready, machine_info, now_utc

            payload = {
                "machine": machine_info(),
                "created_utc": now_utc(),
                "torch": torch.__version__,
                "results": results,
            }
            with open(a.out, "w", encoding="utf-8") as f:
                json.dump(json_ready(payload), f, indent=1)
        return 0

    if not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU visible; nothing measured", file=sys.stderr)
        return 2
    from bnref.records import ExperimentRecord, device_slug

    n_gpus = torch.cuda.device_count()
    worlds = a.worlds or sorted({1, n_gpus})
    worlds = [w for w in worlds if 1 <= w <= n_gpus]
    kinds = ("native-sync", "sync")
    per_world = {}
    for w in worlds:
        timing = launch(_time_worker, w, kinds, a.steps, a.rounds, "cuda", threads=None, backend="nccl")[0]
        accuracy = launch(_gpu_accuracy_worker, w, threads=None, backend="nccl")
        per_world[str(w)] = {"timing": timing, "max_abs_err_vs_float64": accuracy}
        for name, r in timing.items():
            nat, syn = r["native-sync"]["median_step_s"], r["sync"]["median_step_s"]
            print(
                f"W={w} {name:6s} nn.SyncBatchNorm {nat * 1e6:8.1f}us  bnref {syn * 1e6:8.1f}us  "
                f"ratio {syn / nat:5.2f}  "
                f"bytes sent native {r['native-sync']['bytes_sent']} bnref {r['sync']['bytes_sent']}"
            )
        print(f"W={w} max |y - float64 full batch| per rank: {accuracy}")
    name = torch.cuda.get_device_name(0)
    device = {"type": "cuda", "name": name}
    config = {
        "layers": {k: [v[0], v[1]] for k, v in LAYERS.items()},
        "worlds": worlds,
        "steps": a.steps,
        "rounds": a.rounds,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        "gpus": n_gpus,
    }
    record = ExperimentRecord.create("distributed-sync-bn-benchmark", config, [0], {0: per_world}, device=device)
    if a.out:
        path = record.save(os.path.join(a.out, f"distributed-sync-bn-{device_slug(device)}.json"))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
