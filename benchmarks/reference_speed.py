"""Speed of the NumPy reference against PyTorch's CPU batch norm, measured in one run.

For each case the script times one training step of Batch Normalization, forward and backward:

* reference: ``bnref.batch_norm_forward`` + ``bnref.batch_norm_backward`` (compact form), with
  ``check_finite`` at its default (True);
* torch: ``torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True)`` with
  ``requires_grad`` on x, weight and bias, then ``y.backward(dy)`` with a fixed ``dy``.

Both see the same float32 data. Each timing is the median over ``--repeats`` runs after
``--warmup`` untimed runs (``time.perf_counter``). The ratio is reference median / torch median and
the target is a ratio of at most 2.0 for every case.

NumPy runs each of these element-wise passes and reductions on one thread; PyTorch's CPU kernel
uses ``torch.get_num_threads()`` threads, printed below. The headline ratio is always against torch at
its default thread count; ``--torch-threads`` adds a second comparison at a chosen count.

Usage::

    python benchmarks/reference_speed.py [--repeats 30] [--warmup 5] [--json OUT] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np

import bnref

TARGET_RATIO = 2.0
CASES: list[tuple[str, tuple[int, ...]]] = [
    ("dense (N, C)", (1024, 512)),
    ("NCHW (N, C, H, W)", (64, 64, 32, 32)),
]


def median_seconds(step: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``step()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_case(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 input, upstream gradient and per-channel parameters for one case (channels on axis 1)."""
    rng = np.random.default_rng(seed)
    channels = shape[1]
    return {
        "x": rng.normal(0.5, 2.0, size=shape).astype(np.float32),
        "dy": rng.normal(size=shape).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, size=channels).astype(np.float32),
        "beta": rng.normal(size=channels).astype(np.float32),
    }


def reference_step(case: dict[str, np.ndarray]) -> Callable[[], object]:
    x, dy, gamma, beta = case["x"], case["dy"], case["gamma"], case["beta"]

    def step() -> object:
        _, cache = bnref.batch_norm_forward(x, gamma, beta, eps=1e-5, axis=1)
        return bnref.batch_norm_backward(dy, cache)

    return step


def torch_step(case: dict[str, np.ndarray]) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(case["x"]).requires_grad_(True)
    weight = torch.from_numpy(case["gamma"]).requires_grad_(True)
    bias = torch.from_numpy(case["beta"]).requires_grad_(True)
    dy = torch.from_numpy(case["dy"])

    def step() -> object:
        x.grad = weight.grad = bias.grad = None
        y = F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.1, eps=1e-5)
        y.backward(dy)
        return x.grad, weight.grad, bias.grad

    return step


def check_agreement(case: dict[str, np.ndarray]) -> float:
    """Largest relative difference of (dx, dgamma, dbeta) between the two, so both compute the same thing."""
    ref = reference_step(case)()
    tor = torch_step(case)()
    return max(bnref.relative_error(a, b.numpy()) for a, b in zip(ref, tor))


def run(repeats: int, warmup: int, torch_threads: int | None) -> dict[str, object]:
    import torch

    default_threads = torch.get_num_threads()
    results: dict[str, object] = {
        "numpy": np.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads_default": default_threads,
        "numpy_threads": 1,
        "repeats": repeats,
        "warmup": warmup,
        "target_ratio": TARGET_RATIO,
        "cases": [],
    }
    for label, shape in CASES:
        case = make_case(shape)
        agreement = check_agreement(case)
        ref_s = median_seconds(reference_step(case), repeats, warmup)
        torch_s = median_seconds(torch_step(case), repeats, warmup)
        row: dict[str, object] = {
            "case": label,
            "shape": list(shape),
            "dtype": "float32",
            "max_rel_diff_vs_torch": agreement,
            "reference_ms": ref_s * 1e3,
            "torch_ms": torch_s * 1e3,
            "torch_threads": default_threads,
            "ratio": ref_s / torch_s,
            "pass": ref_s / torch_s <= TARGET_RATIO,
        }
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
            try:
                alt_s = median_seconds(torch_step(case), repeats, warmup)
            finally:
                torch.set_num_threads(default_threads)
            row["torch_ms_at_threads"] = {str(torch_threads): alt_s * 1e3}
            row["ratio_at_threads"] = {str(torch_threads): ref_s / alt_s}
        results["cases"].append(row)
    results["all_pass"] = all(r["pass"] for r in results["cases"])
    return results


def report(results: dict[str, object]) -> str:
    lines = [
        f"numpy {results['numpy']}, torch {results['torch']}, python {results['python']}",
        f"torch.get_num_threads() = {results['torch_threads_default']} (headline ratio uses this); "
        "NumPy runs each pass of the reference single-threaded",
        f"medians over {results['repeats']} repeats after {results['warmup']} warm-up runs; "
        f"target ratio reference/torch <= {results['target_ratio']}",
        "",
        f"{'case':<20} {'shape':<18} {'reference ms':>12} {'torch ms':>10} {'ratio':>7}  verdict",
    ]
    for row in results["cases"]:
        verdict = "PASS" if row["pass"] else "FAIL"
        lines.append(
            f"{row['case']:<20} {str(tuple(row['shape'])):<18} {row['reference_ms']:>12.3f} "
            f"{row['torch_ms']:>10.3f} {row['ratio']:>7.2f}  {verdict}"
        )
        for threads, ratio in row.get("ratio_at_threads", {}).items():
            lines.append(
                f"{'':<20} {'(torch at ' + threads + ' thread(s))':<18} {'':>12} "
                f"{row['torch_ms_at_threads'][threads]:>10.3f} {ratio:>7.2f}  (secondary)"
            )
        lines.append(f"{'':<20} max relative difference of (dx, dgamma, dbeta) vs torch: "
                     f"{row['max_rel_diff_vs_torch']:.1e}")
    lines.append("")
    lines.append("overall: " + ("PASS" if results["all_pass"] else "FAIL"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per implementation and case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="also time torch at this thread count (reported as secondary)")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    results = run(args.repeats, args.warmup, args.torch_threads)
    print(report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
    return 0 if results["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
