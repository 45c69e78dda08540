"""How fast does the article's model train? Three ways, one process, same data and model.

    python benchmarks/train_throughput.py                 # MNIST from $BNREF_MNIST or the Keras cache
    python benchmarks/train_throughput.py --json out.json # also write the measurements

The model is the article's with BN (Dense 64 ReLU BN, Dense 32 ReLU BN, Dense 10), Adam lr 1e-3,
batch 128, 10 epochs, the test set evaluated after every epoch, trained

  (a) with Keras ``model.fit(..., validation_data=...)`` as the article does (``verbose=0``, so
      that printing a progress bar costs Keras nothing), on the backend named by KERAS_BACKEND;
  (b) with the plain PyTorch loop of the tutorials: a ``DataLoader`` over a ``TensorDataset``,
      batches moved to the device one by one, ``loss.item()`` every step;
  (c) with bnref's fast loop (``bnref.mnist.torch_training.train_torch``: data on the device once, shuffled
      index per epoch, flat parameters with fused Adam, and a CUDA graph on a GPU).

Timing: one-time costs of the process (imports, creating the CUDA context, PyTorch's lazy import
on constructing its first optimizer) are paid before any clock starts. Each trainer's own setup
(Keras tracing its train step, moving data, capturing a CUDA graph) is inside its time. "call" is
the wall time of the whole training call (10 epochs including per-epoch test evaluation); the
speed-up to (a) is given both ways: on the median epoch (the steady state; robust to a burst of work
from another process on a shared machine, and it leaves out Keras' tracing, which favours (a)) and on
the whole call. The 2x and 10x targets are checked on the median epoch. "train" sums the epochs'
training time only (no evaluation, no setup).

Targets (the issue's): every run reaches >= 97.0% test accuracy; on a CPU, (c) is at least 2x faster
than (a); on a CUDA GPU, (c) trains 10 epochs in under 1.0 s with >= 97.5% test accuracy and is at
least 10x faster than (a). The script prints PASS or FAIL for each and exits with 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def warm_up_libraries(device) -> None:
    """Pay the process's one-time costs before timing anything."""
    import keras  # noqa: F401  (imports the backend too)
    import torch

    p = torch.zeros(1, requires_grad=True, device=device)
    torch.optim.Adam([p], fused=device.type in ("cpu", "cuda") or None)  # first construction imports torch._dynamo
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.synchronize(device)


def plain_dataloader_run(data, *, epochs: int, batch_size: int, seed: int, device) -> dict:
    """(b): the textbook PyTorch loop, timed per epoch like the others."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bnref.mnist.data import to_features
    from bnref.mnist.models import build_torch_model

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = data
    train_ds = TensorDataset(torch.from_numpy(to_features(x_train)), torch.from_numpy(y_train.astype(np.int64)))
    test_ds = TensorDataset(torch.from_numpy(to_features(x_test)), torch.from_numpy(y_test.astype(np.int64)))
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True)
    test_dl = DataLoader(test_ds, batch_size=1000)
    model = build_torch_model("native", "after", seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    epochs_out = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for xb, yb in train_dl:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(yb)
        t1 = time.perf_counter()
        model.eval()
        test_correct = 0
        with torch.no_grad():
            for xb, yb in test_dl:
                xb, yb = xb.to(device), yb.to(device)
                test_correct += (model(xb).argmax(1) == yb).sum().item()
        t2 = time.perf_counter()
        epochs_out.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "test_acc": test_correct / len(test_ds),
                "train_s": t1 - t0,
                "wall_s": t2 - t0,
            }
        )
    return {"epochs": epochs_out}


def row_from_record(name: str, rec, call_s: float) -> dict:
    return {
        "name": name,
        "call_s": call_s,
        "train_s": rec.train_time_s,
        "epoch_s": [e.wall_s for e in rec.epochs],
        "setup_s": rec.setup_s,
        "test_acc": rec.final.test_acc,
        "device": rec.device["name"],
        "details": rec.config.details,
    }


def main(argv=None) -> int:
    from bnref.records import add_allow_dirty_argument, refuse_dirty_tree

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="PyTorch device for (b) and (c) (default: auto)")
    ap.add_argument("--data", help="mnist.npz (default: $BNREF_MNIST, then the Keras cache)")
    ap.add_argument("--json", metavar="OUT", help="write the measurements to this JSON file")
    add_allow_dirty_argument(ap)
    args = ap.parse_args(argv)
    if args.json and refuse_dirty_tree(args.allow_dirty):
        return 2

    from bnref.mnist.data import load_mnist
    from bnref.mnist.keras_training import train_keras
    from bnref.mnist.torch_training import device_name, select_device, train_torch
    from bnref.records import code_version, machine_info, now_utc

    data = load_mnist(args.data)
    device = select_device(args.device)
    warm_up_libraries(device)
    import keras
    import torch

    load_before = os.getloadavg()[0]
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=False)
    rows = []

    t0 = time.perf_counter()
    rec_a = train_keras(data, bn="native", placement="after", **kw)
    rows.append(row_from_record("(a) keras model.fit", rec_a, time.perf_counter() - t0))

    # (b) runs with the same number of CPU threads as (c) uses (train_torch's default, one), so that
    # the comparison measures the loops, not the thread setting.
    threads_default = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    plain = plain_dataloader_run(data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=device)
    call_b = time.perf_counter() - t0
    torch.set_num_threads(threads_default)
    rows.append(
        {
            "name": "(b) torch DataLoader loop",
            "call_s": call_b,
            "train_s": sum(e["train_s"] for e in plain["epochs"]),
            "epoch_s": [e["wall_s"] for e in plain["epochs"]],
            "setup_s": 0.0,
            "test_acc": plain["epochs"][-1]["test_acc"],
            "device": device_name(device),
            "details": {},
        }
    )

    t0 = time.perf_counter()
    rec_c = train_torch(data, bn="native", placement="after", device=str(device), **kw)
    rows.append(row_from_record("(c) bnref fast loop", rec_c, time.perf_counter() - t0))

    a = rows[0]
    for r in rows:
        r["median_epoch_s"] = float(np.median(r["epoch_s"]))
        r["speedup_median_epoch"] = a["median_epoch_s"] / r["median_epoch_s"] if r is not a else 1.0
        r["speedup_call"] = a["call_s"] / r["call_s"]

    keras_dev = rec_a.device["name"]
    torch_dev = rec_c.device["name"]
    print(f"PyTorch {torch.__version__} on {torch_dev}")
    print(f"Keras {keras.__version__} ({keras.backend.backend()} {rec_a.backend_version}) on {keras_dev}")
    print(f"{args.epochs} epochs, batch {args.batch_size}, model with BN after ReLU, test set evaluated every epoch")
    if device.type == "cpu":
        print(
            f"PyTorch CPU threads: (b) 1, (c) {rec_c.config.details['torch_threads']}; "
            f"load average before the runs {load_before:.2f}, after {os.getloadavg()[0]:.2f}"
        )
    print()
    print(f"{'':27}{'s/epoch':>8}{'median':>8}{'call':>7}{'train':>7}   speed-up vs (a){'test acc':>10}")
    print(f"{'':27}{'mean':>8}{'epoch s':>8}{'s':>7}{'s':>7}   median ep.  call")
    for r in rows:
        print(
            f"{r['name']:27}{np.mean(r['epoch_s']):8.3f}{r['median_epoch_s']:8.3f}{r['call_s']:7.2f}"
            f"{r['train_s']:7.2f}{r['speedup_median_epoch']:11.2f}x{r['speedup_call']:6.2f}x{100 * r['test_acc']:9.2f}%"
        )
    if rec_c.config.details.get("cuda_graph_error"):
        print(f"note: (c) ran without a CUDA graph: {rec_c.config.details['cuda_graph_error']}")
    print()

    checks = [(f"{r['name']} test accuracy >= 97.0%", r["test_acc"] >= 0.970) for r in rows]
    c = rows[2]
    if device.type == "cuda":
        checks += [
            ("(c) 10 epochs of training in < 1.0 s", c["train_s"] < 1.0 and args.epochs == 10),
            ("(c) test accuracy >= 97.5%", c["test_acc"] >= 0.975),
            ("(c) >= 10x faster than (a) (median epoch)", c["speedup_median_epoch"] >= 10.0),
        ]
    else:
        checks.append(
            (
                f"(c) >= 2x faster than (a) on this {device.type.upper()} (median epoch)",
                c["speedup_median_epoch"] >= 2.0,
            )
        )
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")

    if args.json:
        out = {
            "schema": "bnref.benchmark/1",
            "benchmark": "train_throughput",
            "device": {"type": device.type, "name": torch_dev, "keras_device": keras_dev},
            "versions": {
                "torch": torch.__version__,
                "keras": keras.__version__,
                "keras_backend": keras.backend.backend(),
                "keras_backend_version": rec_a.backend_version,
                "python": platform.python_version(),
            },
            "machine": machine_info(),
            "code_version": code_version(),
            "load_average": {"before": load_before, "after": os.getloadavg()[0]},
            "config": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "model": "article's model, BN native after ReLU",
                "optimizer": "adam",
                "lr": 1e-3,
            },
            "rows": rows,
            "checks": [{"check": t, "pass": bool(ok)} for t, ok in checks],
            "created_utc": now_utc(),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"measurements written to {args.json}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
