"""CPU inference speed of the BN LeNet against the same network with every BN folded away, measured in one run.

The network is ``bnref.experiments.dynamics.build_lenet(bn=True, seed=0)``
(two convolutions and two hidden Linear layers,
each followed by BN) with running statistics drawn at random, in inference mode. Its folded twin is
``bnref.experiments.beyond.folded_copy`` of it:
each BN merged into the layer before it by ``bnref.folding.fold_batch_norm``
(four layers fewer). Before timing, the script checks that both compute the same function (max abs difference
of the logits against a float32 bound, ``bnref.testing.check_close``), so it never times a wrong model.

Timing: PyTorch eager mode, ``torch.no_grad``, ``--threads`` threads (default 1, so the number does not depend on
the core count). For each batch size, after ``--warmup`` untimed calls of each model, the two are called
alternately, one call of each per repeat (``time.perf_counter``), so that both see the same machine load. The
headline is the ratio of the medians over ``--repeats`` (unfolded median / folded median, above 1 when folding
helps); the minima are reported too. The 1-minute load average before and after is recorded: on a shared
machine a ratio measured under load says less.

ONNX Runtime is not timed here: with its default graph optimisations it folds Conv + BatchNormalization itself
(chapter "Beyond Batch Normalization"), so an exported model gains nothing from folding by hand there, except
for Linear (Gemm) + BN, which it leaves unfused.

Usage::

    python benchmarks/folding_speed.py [--batch-sizes 1 256] [--repeats 200] [--warmup 20] [--threads 1]
                                       [--json book/results/folding-speed-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bnref.experiments.beyond import folded_copy
from bnref.experiments.dynamics import build_lenet
from bnref.records import add_allow_dirty_argument, code_version, cpu_device, machine_info, now_utc, refuse_dirty_tree
from bnref.testing import check_close


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def models(seed: int = 0) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """The BN LeNet with random running statistics and non-trivial gamma, beta (inference mode), and its folded
    copy."""
    net = build_lenet(bn=True, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                mod.bias.copy_(0.2 * torch.randn(c, generator=gen))
                mod.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    net.eval()
    return net, folded_copy(net)


def agreement(net: torch.nn.Module, folded: torch.nn.Module, batch: int = 64) -> dict[str, object]:
    """Max abs difference of the logits on random images, checked against the float32 bound of eq-bound-check
    with m the largest fan-in (400) + 1 and cond 10 (the logits are sums of terms of mixed sign)."""
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = net(x).double().numpy(), folded(x).double().numpy()
    result = check_close(b, a, dtype="float32", m=401, cond=10.0, what="folded vs unfolded logits", show="none")
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "bound_rel": result.bound, "passed": result.passed}


def time_pair(net, folded, batch_size: int, repeats: int, warmup: int) -> dict[str, float]:
    x = torch.rand(batch_size, 784, generator=torch.Generator().manual_seed(2))
    times: dict[str, list[float]] = {"unfolded": [], "folded": []}
    with torch.no_grad():
        for _ in range(warmup):
            net(x)
            folded(x)
        for _ in range(repeats):
            for name, model in (("unfolded", net), ("folded", folded)):
                t0 = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    return {
        "batch_size": batch_size,
        "unfolded_median_s": med["unfolded"],
        "folded_median_s": med["folded"],
        "unfolded_min_s": low["unfolded"],
        "folded_min_s": low["folded"],
        "ratio_median": med["unfolded"] / med["folded"],
        "ratio_min": low["unfolded"] / low["folded"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the record here")
    add_allow_dirty_argument(parser)
    args = parser.parse_args(argv)
    if args.json and refuse_dirty_tree(args.allow_dirty):
        return 2
    if args.repeats < 3 or args.warmup < 0 or args.threads < 1 or min(args.batch_sizes) < 1:
        parser.error("need --repeats >= 3, --warmup >= 0, --threads >= 1 and batch sizes >= 1")
    torch.set_num_threads(args.threads)
    net, folded = models()
    check = agreement(net, folded)
    diff, ok = check["max_abs_diff"], check["passed"]
    print(f"agreement: max |folded - unfolded| = {diff:.2e}, within the float32 bound: {ok}")
    if not check["passed"]:
        print("the folded model does not compute the same function; nothing timed", file=sys.stderr)
        return 1
    before = load_average()
    rows = [time_pair(net, folded, bs, args.repeats, args.warmup) for bs in args.batch_sizes]
    after = load_average()
    n_layers = (len(list(net)), len(list(folded)))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}")
    print(f"layers: {n_layers[0]} unfolded, {n_layers[1]} folded; 1-minute load before/after {before}/{after}")
    for r in rows:
        print(
            f"batch {r['batch_size']:4d}: unfolded {1e3 * r['unfolded_median_s']:.3f} ms, "
            f"folded {1e3 * r['folded_median_s']:.3f} ms (medians of {args.repeats}); "
            f"speed-up {r['ratio_median']:.2f}x (minima: {r['ratio_min']:.2f}x)"
        )
    if args.json:
        record = {
            "schema": "bnref.benchmark/1",
            "benchmark": "folding_speed",
            "created_utc": now_utc(),
            "code_version": code_version(),
            "device": cpu_device(),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "machine": machine_info(),
            "load_average": {"before": before, "after": after},
            "config": {
                "model": "bnref.experiments.dynamics.build_lenet(bn=True, seed=0), "
                "random running statistics, inference mode",
                "folded": "bnref.experiments.beyond.folded_copy",
                "batch_sizes": args.batch_sizes,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "threads": args.threads,
                "layers": {"unfolded": n_layers[0], "folded": n_layers[1]},
            },
            "agreement": check,
            "rows": rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
