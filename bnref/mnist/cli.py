"""Command line: train the article's MNIST model once and write a results record, or run the book's
MNIST experiment (every framework, with and without BN, several seeds) and write its experiment record.

    python -m bnref.train --framework torch --bn native --out results/torch-native.json
    python -m bnref.train experiment mnist --seeds 5 --device cpu --out book/results/mnist-cpu.json
    bnref-train --help
    bnref-train experiment --help
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bnref.mnist.models import BN_CHOICES, PLACEMENTS
from bnref.records import add_allow_dirty_argument, refuse_dirty_tree

DESCRIPTION = """\
Train the model of the Batch Normalization article on MNIST, once, and save what happened.

The model is the article's, corrected so that it runs: 784 pixels -> Dense 64 + ReLU -> BN ->
Dense 32 + ReLU -> BN -> Dense 10 + softmax, trained with Adam on cross-entropy. The BN layers can
be the framework's own (native), bnref's from-scratch ones (scratch) or left out (none), and can
sit after the ReLU (as in the article) or before it (as in the paper).

The run writes a results record: a JSON file with the configuration, the framework and its version,
the device, the seed, and for every epoch the training and test loss and accuracy and the seconds it
took. The book's plots and tables are drawn from such records.

MNIST is read from the file named by the environment variable BNREF_MNIST, or from the Keras cache
(~/.keras/datasets/mnist.npz), or downloaded by Keras as a last resort; --data overrides all of them.
"""

EPILOG = """\
examples:
  # PyTorch, the framework's own BN, on the best device found (GPU if there is one):
  python -m bnref.train --framework torch --bn native --out results/torch-native.json

  # the same network without BN, for comparison:
  python -m bnref.train --framework torch --bn none --out results/torch-none.json

  # Keras (model.fit, as in the article); choose the backend with KERAS_BACKEND:
  KERAS_BACKEND=tensorflow python -m bnref.train --framework keras --out results/keras-native.json
  KERAS_BACKEND=jax python -m bnref.train --framework keras --out results/keras-jax-native.json

  # the paper's placement (Dense without bias -> BN -> ReLU), on the CPU, 3 epochs:
  python -m bnref.train --framework torch --placement before --device cpu --epochs 3

  # MNIST from a file of your own:
  BNREF_MNIST=/path/to/mnist.npz python -m bnref.train --framework torch

  # the book's MNIST experiment (both frameworks, BN native and none, 10 epochs, 5 seeds):
  python -m bnref.train experiment mnist --seeds 5 --device cpu --out book/results/mnist-cpu.json

The last lines printed are a summary: final test accuracy and mean seconds per epoch.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m bnref.train`` (also used by the tests)."""
    called_as_script = os.path.basename(sys.argv[0]).startswith("bnref-train")
    p = argparse.ArgumentParser(
        prog="bnref-train" if called_as_script else "python -m bnref.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--framework",
        choices=("torch", "keras"),
        default="torch",
        help="torch: bnref's fast PyTorch loop; keras: Keras 3 model.fit (default: %(default)s)",
    )
    p.add_argument(
        "--bn",
        choices=BN_CHOICES,
        default="native",
        help="which Batch Normalization layers: the framework's own (native), bnref's "
        "from-scratch ones (scratch; Keras: TensorFlow backend only) or none (default: %(default)s)",
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="after",
        help="BN after the ReLU, as in the article, or before it with a bias-free Dense layer, "
        "as in the paper; ignored with --bn none (default: %(default)s)",
    )
    p.add_argument(
        "--epochs", type=int, default=10, help="passes over the 60000 training images (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--device",
        default="auto",
        help="PyTorch only: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps. "
        "Keras uses the device its backend picks. (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the initial weights and the shuffling (default: %(default)s)"
    )
    p.add_argument("--out", metavar="RESULTS.json", help="where to write the results record (default: print only)")
    p.add_argument(
        "--data", metavar="MNIST.npz", help="MNIST file to use (default: $BNREF_MNIST, then the Keras cache)"
    )
    p.add_argument(
        "--train-eval",
        type=int,
        default=0,
        metavar="N",
        help="after every epoch also evaluate the first N training images in inference mode (default: %(default)s, "
        "off)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the MNIST arrays (saves ~0.1 s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_allow_dirty_argument(p)
    return p


EXPERIMENT_DESCRIPTION = """\
Run the book's MNIST experiment, defined once in bnref.mnist.training.MNIST: the article's model trained in
PyTorch (bnref's fast loop) and in Keras (model.fit, on the backend named by KERAS_BACKEND), with the
framework's own BN and without BN, 10 epochs, batch 128, Adam 1e-3, once per seed; after every epoch the
test set and the first 10,000 training images are evaluated in inference mode. Writes one experiment
record (JSON, schema bnref.experiment/1) holding the definition, the code version, the machine, the
device and every run's per-epoch results. The book's chapter reads the committed records in
book/results/. --epochs makes a reduced run (its record no longer matches the definition, so the
book's test of committed records rejects it). A record names the commit that made it, so the command
refuses a working tree with uncommitted changes (exit 2) unless --allow-dirty (a trial run).
"""

EXPERIMENT_EPILOG = """\
examples:
  python -m bnref.train experiment mnist --seeds 5 --device cpu --out book/results/mnist-cpu.json
  KERAS_BACKEND=torch python -m bnref.train experiment mnist --seeds 5 --device cuda
      (writes book/results/mnist-<gpu>.json, e.g. mnist-h200.json, named after torch.cuda.get_device_name)
"""


def build_experiment_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m bnref.train experiment``."""
    called_as_script = os.path.basename(sys.argv[0]).startswith("bnref-train")
    p = argparse.ArgumentParser(
        prog=("bnref-train" if called_as_script else "python -m bnref.train") + " experiment",
        description=EXPERIMENT_DESCRIPTION,
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=("mnist",), help="the experiment to run")
    p.add_argument(
        "--seeds", type=int, default=5, help="run seeds 0..N-1 (default: %(default)s; at least 3 for the book)"
    )
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu, cuda, cuda:1, auto (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override the number of epochs (a reduced run)")
    p.add_argument(
        "--out",
        metavar="RECORD.json",
        help="where to write the record (default: book/results/mnist-<device>.json, <device> being cpu "
        "or the GPU's short name)",
    )
    p.add_argument(
        "--data", metavar="MNIST.npz", help="MNIST file to use (default: $BNREF_MNIST, then the Keras cache)"
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar per run")
    add_allow_dirty_argument(p)
    return p


def run_experiment_command(argv: Sequence[str]) -> int:
    """``python -m bnref.train experiment ...``."""
    args = build_experiment_parser().parse_args(argv)
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    if refuse_dirty_tree(args.allow_dirty):  # this command always writes a record
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import dataclasses

    from bnref.mnist import training
    from bnref.mnist.data import MnistError, load_mnist
    from bnref.records import device_slug

    try:
        data = load_mnist(args.data)
        experiment = training.MNIST
        if args.epochs is not None:
            experiment = dataclasses.replace(experiment, epochs=args.epochs)
        record = training.run_mnist_experiment(
            data,
            experiment,
            range(args.seeds),
            device=args.device,
            progress=args.progress,
            log=lambda line: print(line, flush=True),
        )
    except (MnistError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or f"book/results/mnist-{device_slug(record.device)}.json"
    record.save(out)
    print(f"experiment record written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bnref.train`` and of the ``bnref-train`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["experiment"]:
        return run_experiment_command(argv[1:])
    args = build_parser().parse_args(argv)
    if args.framework == "keras" and args.device != "auto":
        print(
            "note: --device applies to PyTorch only; Keras trains on the device its backend "
            f"({os.environ.get('KERAS_BACKEND', 'tensorflow')}) picks",
            file=sys.stderr,
        )
    if args.framework == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.out and refuse_dirty_tree(args.allow_dirty):
        return 2

    from bnref.mnist.data import MnistError, load_mnist

    try:
        data = load_mnist(args.data, verify=not args.no_verify)
    except MnistError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    common = dict(
        bn=args.bn,
        placement=args.placement,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        out=args.out,
        train_eval=args.train_eval,
    )
    try:
        if args.framework == "torch":
            from bnref.mnist.torch_training import train_torch

            record = train_torch(data, device=args.device, **common)
        else:
            from bnref.mnist.keras_training import train_keras

            record = train_keras(data, **common)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"{record.label} on {record.device['name']}")
    seen = args.train_eval > 0
    print(
        f"{'epoch':>5} {'train loss':>10} {'train acc':>9} "
        + (f"{'eval-mode train acc':>19} " if seen else "")
        + f"{'test loss':>9} {'test acc':>8} {'seconds':>7}"
    )
    for e in record.epochs:
        print(
            f"{e.epoch:>5} {e.train_loss:>10.4f} {e.train_acc:>9.4f} "
            + (f"{e.train_eval_acc:>19.4f} " if seen else "")
            + f"{e.test_loss:>9.4f} {e.test_acc:>8.4f} {e.wall_s:>7.2f}"
        )
    print(
        f"final test accuracy {record.final.test_acc:.4f}; {record.mean_epoch_s:.3f} s per epoch "
        f"(setup {record.setup_s:.2f} s)"
    )
    if args.out:
        print(f"results record written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
