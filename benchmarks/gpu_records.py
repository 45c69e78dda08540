"""Every GPU job the book wants, in one command, writing records named after the GPU.

    make gpu-records                                   # the same as the next line
    python benchmarks/gpu_records.py                   # on a machine with a CUDA GPU
    python benchmarks/gpu_records.py --dry-run         # list the jobs (any machine, no GPU needed)
    python benchmarks/gpu_records.py --dry-run --gpu-name "NVIDIA H200"

The jobs, in this order (each a separate process, so that one failing does not stop the others):

1. ``agreement``: the torch part of the agreement matrix on cuDNN's BN
   (``benchmarks/agreement_device.py --device cuda``) -> ``agreement-<gpu>.json``;
2. ``throughput``: the training-speed benchmark, Keras ``fit`` vs a textbook PyTorch loop vs bnref's
   fast loop (``benchmarks/train_throughput.py --device cuda``) -> ``benchmark-<gpu>.json``;
3. ``mnist``: the MNIST chapter's experiment, both frameworks with and without BN, every seed
   (``python -m bnref.train experiment mnist --device cuda``) -> ``mnist-<gpu>.json``;
4. ``sync_bn``: ``nn.SyncBatchNorm`` (NCCL) against ``bnref.layers.sync_bn.SyncBatchNorm``
   (``benchmarks/sync_bn.py --device cuda``) -> ``distributed-sync-bn-<gpu>.json``;
5. ``claims``: the claims chapter's experiments (``python -m bnref.experiments run claims --device cuda``), 3 seeds
   -> one record per experiment, named by that command;
6. ``beyond``: the small-batch experiment of the "Beyond BN" chapter (BN, Ghost BN, Batch Renorm, GN, LN at batch
   sizes 2 to 128, 3 seeds: ``python -m bnref.experiments run beyond-small-batch --device cuda``)
   -> one record, named by
   that command. Last, so that it uses only what the others leave of the budget.

``<gpu>`` is :func:`bnref.records.device_slug` of ``torch.cuda.get_device_name(0)``, e.g. ``h200``.
Keras runs with ``KERAS_BACKEND=torch`` (no TensorFlow is needed on the GPU machine); note that
Keras 3.15's torch backend computes BN's variance as E[x^2] - E[x]^2 (see the MNIST chapter).
MNIST is read from ``$BNREF_MNIST`` (or ``--data``).

Time: the whole set is meant to fit in 8 minutes (``--budget-s 480``). Each job gets at most its own
cap and never more than what is left of the budget; a job that runs out of time is stopped and
reported, and the others still run. A summary (each job's command, exit status and seconds) is
written to ``gpu-jobs-<gpu>.json`` next to the records. Exit status 0 when every job succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bnref.records import (  # noqa: E402  (NumPy only)
    add_allow_dirty_argument,
    code_version,
    device_slug,
    machine_info,
    now_utc,
    refuse_dirty_tree,
)


@dataclasses.dataclass
class Job:
    """One GPU job: a command line, its extra environment, and the most seconds it may take."""

    name: str
    argv: list[str]
    cap_s: float
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    writes: str = ""

    def shell(self) -> str:
        """The command as one would type it."""
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(self.argv)


def jobs(
    slug: str, out: Path, *, mnist_seeds: int = 5, claims_seeds: int | None = None, allow_dirty: bool = False
) -> list[Job]:
    """The book's GPU jobs for the GPU named ``slug``, writing under ``out``; with ``allow_dirty``, the jobs that
    write experiment records get ``--allow-dirty`` (each refuses a dirty tree otherwise)."""
    if not slug:
        raise ValueError("slug must name the GPU (bnref.records.device_slug)")
    if mnist_seeds < 3:
        raise ValueError(f"mnist_seeds must be at least 3 (the book's verdicts rest on >= 3 seeds); got {mnist_seeds}")
    py = sys.executable
    keras_torch = {"KERAS_BACKEND": "torch"}
    from bnref.experiments.claims import EXPERIMENTS as CLAIMS  # declarations only: NumPy, no PyTorch

    # claims-aa measures the rule's false-positive rate from many seeds (24 on the CPU); a GPU run of a few seeds
    # cannot, and the chapter keeps the CPU record for it.
    claim_names = [name for name in CLAIMS if name != "claims-aa"]
    claims = [py, "-m", "bnref.experiments", "run", *claim_names, "--device", "cuda", "--out", str(out)]
    if claims_seeds is not None:
        claims += ["--seeds", str(claims_seeds)]
    todo = [
        Job(
            "agreement",
            [py, "benchmarks/agreement_device.py", "--device", "cuda", "--out", str(out / f"agreement-{slug}.json")],
            cap_s=60,
            writes=f"agreement-{slug}.json",
        ),
        Job(
            "throughput",
            [py, "benchmarks/train_throughput.py", "--device", "cuda", "--json", str(out / f"benchmark-{slug}.json")],
            cap_s=90,
            env=keras_torch,
            writes=f"benchmark-{slug}.json",
        ),
        Job(
            "mnist",
            [
                py,
                "-m",
                "bnref.mnist.cli",
                "experiment",
                "mnist",
                "--seeds",
                str(mnist_seeds),
                "--device",
                "cuda",
                "--out",
                str(out / f"mnist-{slug}.json"),
            ],
            cap_s=240,
            env=keras_torch,
            writes=f"mnist-{slug}.json",
        ),
        Job(
            "sync_bn",
            [py, "benchmarks/sync_bn.py", "--device", "cuda", "--out", str(out)],
            cap_s=45,
            writes=f"distributed-sync-bn-{slug}.json",
        ),
        Job("claims", claims, cap_s=180, env=keras_torch, writes="claims-*.json (names chosen by bnref.experiments)"),
        Job(
            "beyond",
            [
                py,
                "-m",
                "bnref.experiments",
                "run",
                "beyond-small-batch",
                "--seeds",
                "3",
                "--device",
                "cuda",
                "--out",
                str(out),
            ],
            cap_s=180,
            writes="beyond-small-batch.*.json (name chosen by bnref.experiments)",
        ),
    ]
    if allow_dirty:
        for job in todo:
            if job.name in ("throughput", "mnist", "claims", "beyond"):
                job.argv.append("--allow-dirty")
    return todo


def gpu_name() -> str | None:
    """``torch.cuda.get_device_name(0)``, or None without torch or without a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_jobs(todo: list[Job], budget_s: float, log=print) -> list[dict]:
    """Run the jobs one after another within ``budget_s`` seconds in all; return one summary per job."""
    start = time.perf_counter()
    summary = []
    for job in todo:
        left = budget_s - (time.perf_counter() - start)
        limit = min(job.cap_s, left)
        entry = {"job": job.name, "command": job.shell(), "limit_s": round(max(limit, 0.0), 1)}
        if limit < 5:
            entry.update(status="not run: the time budget is spent", seconds=0.0)
            log(f"[{job.name}] not run: the time budget is spent")
            summary.append(entry)
            continue
        log(f"[{job.name}] {job.shell()}  (at most {limit:.0f} s)")
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(
                job.argv, cwd=ROOT, env={**os.environ, **job.env}, timeout=limit, check=False
            ).returncode
            status = "ok" if rc == 0 else f"failed (exit status {rc})"
        except subprocess.TimeoutExpired:
            status = f"stopped after {limit:.0f} s"
        entry.update(status=status, seconds=round(time.perf_counter() - t0, 1))
        log(f"[{job.name}] {status} in {entry['seconds']:.0f} s")
        summary.append(entry)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs and exit; needs no GPU")
    ap.add_argument("--gpu-name", help="the GPU's name for file names (default: torch.cuda.get_device_name(0))")
    ap.add_argument(
        "--out", type=Path, default=Path("book/results"), help="folder of the records (default: %(default)s)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=480.0, help="seconds for all jobs together (default: %(default)s)"
    )
    ap.add_argument(
        "--mnist-seeds", type=int, default=5, help="seeds of the MNIST experiment, >= 3 (default: %(default)s)"
    )
    ap.add_argument(
        "--claims-seeds",
        type=int,
        default=3,
        help="seeds per claims experiment (default 3, the fewest a verdict may rest on; all nine must fit the cap)",
    )
    ap.add_argument(
        "--only", nargs="+", choices=("agreement", "throughput", "mnist", "claims"), help="run only these jobs"
    )
    ap.add_argument("--data", help="mnist.npz (default: $BNREF_MNIST)")
    add_allow_dirty_argument(ap)  # passed on to every job that writes a record
    args = ap.parse_args(argv)
    if not args.dry_run and refuse_dirty_tree(args.allow_dirty):
        return 2

    name = args.gpu_name or gpu_name()
    if name is None and not args.dry_run:
        print(
            "error: no CUDA GPU here (torch.cuda.is_available() is False); use --dry-run to list the jobs",
            file=sys.stderr,
        )
        return 2
    slug = device_slug(name) if name else "<gpu>"
    try:
        todo = jobs(
            slug, args.out, mnist_seeds=args.mnist_seeds, claims_seeds=args.claims_seeds, allow_dirty=args.allow_dirty
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.only:
        todo = [j for j in todo if j.name in args.only]
    print(
        f"GPU: {name or 'none here (dry run)'}; records under {args.out}/ named after '{slug}'; "
        f"budget {args.budget_s:.0f} s"
    )
    for job in todo:
        print(f"  {job.name:10s} at most {job.cap_s:4.0f} s  {job.shell()}")
        print(f"  {'':10s} writes {job.writes}")
    if args.dry_run:
        return 0

    if args.data:
        os.environ["BNREF_MNIST"] = args.data
    if not Path(os.environ.get("BNREF_MNIST", "")).is_file() and any(j.name in ("throughput", "mnist") for j in todo):
        print(
            "error: set BNREF_MNIST (or --data) to a local mnist.npz; the GPU machine may have no network",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run_jobs(todo, args.budget_s)
    record = {
        "schema": "bnref.gpu-jobs/1",
        "gpu": name,
        "code_version": code_version(),
        "machine": machine_info(),
        "budget_s": args.budget_s,
        "jobs": summary,
        "created_utc": now_utc(),
    }
    path = args.out / f"gpu-jobs-{slug}.json"
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"summary written to {path}")
    return 0 if all(s["status"] == "ok" for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
