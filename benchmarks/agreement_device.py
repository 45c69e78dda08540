"""The torch part of the agreement matrix on one device (cuDNN's BN on a GPU is a different kernel).

Runs ``bnref.check.agreement`` cases through the NumPy reference, ``bnref.layers.torch_bn.BatchNorm`` and
``torch.nn.BatchNorm*`` on ``--device`` (default: cuda if available, else cpu), prints one table per case
and a summary, and writes a JSON record naming the device, the GPU (``torch.cuda.get_device_name``),
the torch and cuDNN versions and every cell (error, derived bound, verdict). TensorFlow is not needed.

    python benchmarks/agreement_device.py --device cuda --out book/results/agreement-cuda.json
    python benchmarks/agreement_device.py --device cpu --out /tmp/agreement-cpu.json --quick

Exit status 0 when every cell is within its derived bound, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

from bnref.check.agreement import Case, run_case, summary_table


def matrix(quick: bool = False) -> list[Case]:
    """The cases: dtypes x layouts x batch sizes x steps, plus |mean|/std = 1e3 and half precision."""
    layouts = [((3,), 1), ((3, 5), 1), ((3, 4, 4), 1), ((4, 4, 3), -1)]  # (N,C), (N,C,L), NCHW, NHWC
    batches = (3, 128) if quick else (2, 3, 128)
    steps = (5,) if quick else (1, 5)
    dtypes = ("float32",) if quick else ("float64", "float32")
    cases = [
        Case((n, *rest), axis=axis, dtype=dtype, steps=k, seed=n + k)
        for dtype in dtypes
        for rest, axis in layouts
        for n in batches
        for k in steps
    ]
    cases += [
        Case((n, *rest), axis=axis, dtype="float32", steps=5, loc=1e3, seed=7)
        for rest, axis in layouts
        for n in (3, 128)
    ]
    cases += [
        Case((n, *rest), axis=axis, dtype=dtype, steps=3, seed=11)
        for dtype in ("float16", "bfloat16")
        for rest, axis in layouts[::2]
        for n in (3, 128)
    ]
    return cases


def device_info(device: str) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_enabled": bool(torch.backends.cudnn.enabled),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    parser.add_argument("--quick", action="store_true", help="a smaller matrix (float32, N in {3, 128}, k=5)")
    parser.add_argument("--metric", default="rel", choices=["rel", "abs", "ratio", "verdict"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")

    info = device_info(args.device)
    print(json.dumps(info, indent=1))
    start = time.perf_counter()
    tables = [run_case(c, device=args.device, frameworks=("numpy", "torch")) for c in matrix(args.quick)]
    wall = time.perf_counter() - start
    for t in tables:
        print()
        print(t.format_table(args.metric))
    print()
    print(summary_table(tables, "ratio"))
    passed = all(t.passed for t in tables)
    print(f"\n{len(tables)} cases on {info.get('gpu', args.device)}: every cell within its derived bound: {passed}")

    if args.out is not None:
        record = {
            "what": (
                "bnref agreement matrix, torch part "
                "(NumPy reference, bnref.layers.torch_bn.BatchNorm, torch.nn.BatchNorm*)"
            ),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **info,
            "wall_time_s": round(wall, 2),
            "all_passed": passed,
            "cases": [{"case": t.case.label, "passed": t.passed, "rows": t.to_records()} for t in tables],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
