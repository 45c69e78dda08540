"""bnref.mnist.models, the trainers (bnref.mnist.common, torch_training, keras_training), the MNIST experiment
(bnref.mnist.training), its verdict rule (bnref.mnist.verdicts) and the bnref.mnist.cli command line, on tiny
synthetic data (no MNIST)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import torch

from bnref.layers import keras_bn, torch_bn
from bnref.mnist import common, keras_training, models, torch_training, training, verdicts
from bnref.mnist.models import build_keras_model, build_torch_model, initial_weights
from bnref.records import load_experiment, load_record, load_records

U32 = 2.0**-24  # unit roundoff of float32 (half of eps = 1.19e-7)


def easy_problem(n_train: int = 512, n_test: int = 256, d: int = 16, seed: int = 0):
    """Ten well-separated Gaussian clusters in d dimensions (centre distance ~17 sigma): an easy problem."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(10, d))
    y_train = rng.integers(0, 10, size=n_train)
    y_test = rng.integers(0, 10, size=n_test)
    x_train = (centres[y_train] + rng.normal(size=(n_train, d))).astype(np.float32)
    x_test = (centres[y_test] + rng.normal(size=(n_test, d))).astype(np.float32)
    return x_train, y_train, x_test, y_test


def bn_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if "batchnorm" in type(m).__name__.lower()]


# ---------------------------------------------------------------------------------------------
# models: structure and initialisation
# ---------------------------------------------------------------------------------------------


def test_torch_after_is_the_articles_order():
    model = build_torch_model("native", "after", seed=0)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert all(m.bias is not None for m in model if isinstance(m, torch.nn.Linear))
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [64, 32, 10]


def test_torch_before_drops_the_bias_that_bn_cancels():
    model = build_torch_model("native", "before", seed=0)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    layers = list(model)
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, torch.nn.Linear):
            assert layer.bias is None and isinstance(layers[i + 1], torch.nn.BatchNorm1d)
    assert layers[-1].bias is not None  # the output layer keeps its bias


@pytest.mark.parametrize("placement", models.PLACEMENTS)
def test_torch_without_bn(placement):
    model = build_torch_model("none", placement, seed=0)
    assert bn_modules(model) == []
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in model if isinstance(m, torch.nn.Linear))


def test_initial_weights_are_glorot_uniform_with_zero_bias():
    ws = initial_weights(seed=3)
    assert [w.shape for w, _ in ws] == [(784, 64), (64, 32), (32, 10)]
    for w, b in ws:
        limit = np.sqrt(6.0 / sum(w.shape))
        assert w.dtype == np.float32 and np.abs(w).max() <= limit
        # U(-a, a) has standard deviation a/sqrt(3); with >= 320 draws the sample std is within 15%.
        assert abs(w.std() / (limit / np.sqrt(3)) - 1) < 0.15
        assert not b.any()
    assert not np.array_equal(ws[0][0], initial_weights(seed=4)[0][0])


@pytest.mark.parametrize("placement", models.PLACEMENTS)
def test_torch_starts_from_initial_weights(placement):
    model = build_torch_model("native", placement, seed=5)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for linear, (w, b) in zip(linears, initial_weights(seed=5), strict=True):
        assert torch.equal(linear.weight, torch.from_numpy(w.T.copy()))
        if linear.bias is not None:
            assert torch.equal(linear.bias, torch.from_numpy(b))
    for bn in bn_modules(model):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


def test_bad_choices_are_value_errors():
    with pytest.raises(ValueError, match="bn must be one of"):
        build_torch_model("batchnorm")
    with pytest.raises(ValueError, match="placement must be one of"):
        build_torch_model("native", "middle")


def float64_forward_with_bound(x: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the BN-free network in float64, and a rigorous bound on a float32 evaluation's error.

    Inputs and weights are float32 numbers, so both frameworks start from exactly these values. A
    float32 dot product of length n, summed in any order, with or without FMA, errs by at most
    gamma_n * sum|x_i w_i|, gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability, 3.1); adding
    the bias (zero) and ReLU (1-Lipschitz, exact) add nothing. An error e already in a layer's input
    grows to at most |e| @ |W| through the next layer. Hence, layer by layer,
        err_out <= gamma_n (|h| @ |W|) + err_in @ |W|.
    (|h| is the float64 activation; the float32 one differs by err_in, a second-order term that the
    factor 2 allowed in the test covers.)
    """
    h = x.astype(np.float64)
    err = np.zeros_like(h)
    for i, (w, b) in enumerate(weights):
        n = w.shape[0]
        gamma = n * U32 / (1 - n * U32)
        z = h @ w.astype(np.float64) + b
        err = gamma * (np.abs(h) @ np.abs(w.astype(np.float64))) + err @ np.abs(w.astype(np.float64))
        h = np.maximum(z, 0.0) if i < len(weights) - 1 else z
    return h, err


def test_torch_forward_without_bn_matches_float64():
    x = np.random.default_rng(7).random((32, 784), dtype=np.float32)
    z64, bound = float64_forward_with_bound(x, initial_weights(seed=7))
    model = build_torch_model("none", seed=7)
    with torch.no_grad():
        z32 = model(torch.from_numpy(x)).double().numpy()
    assert np.all(np.abs(z32 - z64) <= 2 * bound)


# ---------------------------------------------------------------------------------------------
# Keras models (native layers work on every backend; the test runs on the installed one)
# ---------------------------------------------------------------------------------------------


def test_keras_structure_and_weights():
    after = build_keras_model("native", "after", seed=5)
    assert [type(layer).__name__ for layer in after.layers] == [
        "Dense",
        "BatchNormalization",
        "Dense",
        "BatchNormalization",
        "Dense",
    ]
    assert [layer.activation.__name__ for layer in after.layers if isinstance(layer, keras.layers.Dense)] == [
        "relu",
        "relu",
        "softmax",
    ]
    before = build_keras_model("native", "before", seed=5)
    assert [type(layer).__name__ for layer in before.layers] == [
        "Dense",
        "BatchNormalization",
        "Activation",
        "Dense",
        "BatchNormalization",
        "Activation",
        "Dense",
    ]
    assert [layer.use_bias for layer in before.layers if isinstance(layer, keras.layers.Dense)] == [False, False, True]
    none = build_keras_model("none", "before", seed=5)
    assert [type(layer).__name__ for layer in none.layers] == ["Dense", "Dense", "Dense"]
    for model in (after, before, none):
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        for layer, (w, b) in zip(dense, initial_weights(seed=5), strict=True):
            np.testing.assert_array_equal(np.asarray(layer.kernel), w)  # same numbers as PyTorch's W.T
            if layer.use_bias:
                np.testing.assert_array_equal(np.asarray(layer.bias), b)


def test_keras_forward_without_bn_matches_float64():
    x = np.random.default_rng(8).random((32, 784), dtype=np.float32)
    z64, bound = float64_forward_with_bound(x, initial_weights(seed=8))
    p32 = np.asarray(build_keras_model("none", seed=8)(x), dtype=np.float64)
    p64 = np.exp(z64 - z64.max(axis=1, keepdims=True))
    p64 /= p64.sum(axis=1, keepdims=True)
    # softmax's Jacobian diag(p) - p p^T has infinity-norm max_i 2 p_i (1 - p_i) <= 1/2, so a logit
    # error e moves each probability by <= max|e| / 2; the float32 softmax itself (max, 10 exps, a
    # sum of 10, a division) adds at most ~16 u to a probability <= 1.
    allowed = 0.5 * 2 * bound.max(axis=1, keepdims=True) + 16 * U32
    assert np.all(np.abs(p32 - p64) <= allowed)


# ---------------------------------------------------------------------------------------------
# from-scratch BN layers (written in another issue: these tests run once the modules exist)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", models.PLACEMENTS)
def test_torch_scratch_bn(placement):
    model = build_torch_model("scratch", placement, seed=0)
    assert len([m for m in model if isinstance(m, torch_bn.BatchNorm)]) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model)
    rec = torch_training.train_torch(
        easy_problem(), bn="scratch", placement=placement, epochs=2, batch_size=32, lr=1e-2, progress=False
    )
    assert rec.final.test_acc > 0.9


def test_keras_scratch_bn():
    if keras.backend.backend() != "tensorflow":
        with pytest.raises(ValueError, match="TensorFlow"):
            build_keras_model("scratch")
        return
    model = build_keras_model("scratch", "before", seed=0)
    assert len([layer for layer in model.layers if isinstance(layer, keras_bn.BatchNormalization)]) == 2


# ---------------------------------------------------------------------------------------------
# training: records, learning, reproducibility, and the fast loop against the textbook loop
# ---------------------------------------------------------------------------------------------


def test_torch_run_learns_and_writes_a_record(tmp_path):
    out = tmp_path / "sub" / "run.json"
    rec = torch_training.train_torch(easy_problem(), epochs=3, batch_size=32, lr=1e-2, progress=False, out=out)
    # Chance is 0.1; the clusters are ~17 sigma apart, so a working trainer gets nearly all right.
    assert rec.final.test_acc > 0.9
    assert rec.epochs[-1].train_loss < rec.epochs[0].train_loss
    assert [e.epoch for e in rec.epochs] == [1, 2, 3]
    assert all(e.wall_s > 0 and abs(e.train_s + e.eval_s - e.wall_s) < 1e-9 for e in rec.epochs)
    assert rec.device["type"] == "cpu" and rec.framework == "torch" and rec.framework_version == torch.__version__
    assert (rec.config.train_size, rec.config.test_size, rec.config.batch_size) == (512, 256, 32)
    assert "hostname" not in json.dumps(rec.to_dict()) and os.uname().nodename not in out.read_text()
    again = load_record(out)
    assert again == rec and again.to_dict() == rec.to_dict()


def test_torch_runs_are_reproducible():
    kw = dict(epochs=2, batch_size=64, lr=1e-2, progress=False)
    metrics = lambda r: [(e.train_loss, e.train_acc, e.test_loss, e.test_acc) for e in r.epochs]  # noqa: E731
    a = torch_training.train_torch(easy_problem(), seed=1, **kw)
    b = torch_training.train_torch(easy_problem(), seed=1, **kw)
    c = torch_training.train_torch(easy_problem(), seed=2, **kw)
    assert metrics(a) == metrics(b)
    assert metrics(a) != metrics(c)


@pytest.mark.parametrize("bn, placement", [("native", "after"), ("native", "before"), ("none", "after")])
def test_fast_loop_equals_textbook_loop(bn, placement):
    """Flat parameters and index_select batches change how, not what: same numbers as a plain loop."""
    x_train, y_train, x_test, y_test = easy_problem(n_train=300)  # 300 = 4 * 64 + 44: a short last batch
    seed, bs, lr, epochs = 3, 64, 1e-2, 2
    rec = torch_training.train_torch(
        (x_train, y_train, x_test, y_test),
        bn=bn,
        placement=placement,
        epochs=epochs,
        batch_size=bs,
        lr=lr,
        seed=seed,
        progress=False,
    )

    # The fast loop runs on one CPU thread (cpu_threads=1); a matrix product split over more threads
    # sums in another order, so the textbook loop must use one thread too for bitwise equality.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        textbook_losses = textbook_loop(x_train, y_train, bn, placement, seed, bs, lr, epochs)
    finally:
        torch.set_num_threads(threads)
    # Same operations on the same numbers in the same order: equal to the last bit.
    assert textbook_losses == [e.train_loss for e in rec.epochs]


def textbook_loop(x_train, y_train, bn, placement, seed, bs, lr, epochs) -> list[float]:
    torch.manual_seed(seed)
    model = build_torch_model(bn, placement, seed, input_dim=x_train.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    gen = torch.Generator().manual_seed(seed)
    X, Y = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(Y), generator=gen)
        loss_sum = torch.zeros(())
        for start in range(0, len(Y), bs):
            idx = perm[start : start + bs]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum.add_(loss.detach() * len(idx))
        losses.append(loss_sum.item() / len(Y))
    return losses


def test_cpu_threads_are_restored():
    before = torch.get_num_threads()
    rec = torch_training.train_torch(
        easy_problem(n_train=64), epochs=1, batch_size=32, cpu_threads=1, device="cpu", progress=False
    )
    assert rec.config.details["torch_threads"] == 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="cpu_threads"):
        torch_training.train_torch(easy_problem(), cpu_threads=0, progress=False)


def make_loop(seed=3, n_train=300, bs=64, cuda_graphs=False):
    x_train, y_train, x_test, y_test = easy_problem(n_train=n_train)
    tensors = [torch.from_numpy(a) for a in (x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))]
    model = build_torch_model("native", "after", seed, input_dim=x_train.shape[1])
    return torch_training.FastTorchLoop(model, *tensors, batch_size=bs, lr=1e-2, seed=seed, cuda_graphs=cuda_graphs)


def test_graph_replay_path_computes_what_the_eager_path_does(monkeypatch):
    """The CUDA path's bookkeeping (full batches through a static index buffer, the short last batch
    eagerly) checked on the CPU, with a stand-in graph whose replay runs the step on that buffer."""

    class ReplayOnCpu:
        def __init__(self, loop):
            self.loop = loop

        def replay(self):
            self.loop._step(self.loop.static_idx)

    def capture_on_cpu(self):
        self.static_idx = torch.zeros(self.batch_size, dtype=torch.int64)
        self.graph = ReplayOnCpu(self)

    monkeypatch.setattr(torch_training.FastTorchLoop, "_capture", capture_on_cpu)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eager, replayed = make_loop(cuda_graphs=False), make_loop(cuda_graphs=True)
        assert replayed.graph is not None and eager.graph is None
        for _ in range(2):
            assert replayed.train_epoch() == eager.train_epoch()
        assert replayed.evaluate() == eager.evaluate()
    finally:
        torch.set_num_threads(threads)


def test_restore_after_warm_up_steps_equals_a_fresh_start():
    """What the CUDA capture does around its warm-up steps, checked on the CPU: snapshot, train a few
    steps, restore; the run then continues exactly as a fresh one (parameters, BN buffers, Adam)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fresh, warmed = make_loop(), make_loop()
        saved = torch_training.snapshot(warmed._state())
        for _ in range(3):
            warmed._step(torch.arange(64))
        assert not torch.equal(warmed.flat, fresh.flat)
        warmed._restore_start(saved)
        assert torch.equal(warmed.flat, fresh.flat)
        assert warmed.train_epoch() == fresh.train_epoch()
        assert torch.equal(warmed.flat, fresh.flat)
        assert all(torch.equal(a, b) for a, b in zip(warmed.model.buffers(), fresh.model.buffers(), strict=True))
    finally:
        torch.set_num_threads(threads)


def test_flat_parameters_keep_gradients_as_views():
    model = build_torch_model("native", seed=0, input_dim=16)
    flat, flat_grad = torch_training.flatten_parameters(model)
    params = list(model.parameters())
    assert flat.numel() == sum(p.numel() for p in params) == flat_grad.numel()
    x = torch.from_numpy(easy_problem()[0][:32])
    model(x).square().mean().backward()
    offset = 0
    for p in params:
        # the model's parameters and gradients are the flat tensors' memory, not copies
        assert p.data_ptr() == flat.data_ptr() + offset * flat.element_size()
        assert p.grad.data_ptr() == flat_grad.data_ptr() + offset * flat_grad.element_size()
        offset += p.numel()
    assert flat_grad.abs().sum() > 0


def test_keras_run_learns_and_writes_a_record(tmp_path):
    out = tmp_path / "keras.json"
    rec = keras_training.train_keras(easy_problem(), epochs=3, batch_size=32, lr=1e-2, progress=False, out=out)
    assert rec.final.test_acc > 0.9
    assert rec.framework == "keras" and rec.backend == keras.backend.backend()
    assert rec.framework_version == keras.__version__ and rec.backend_version
    assert len(rec.epochs) == 3 and all(e.eval_s > 0 and e.train_s > 0 for e in rec.epochs)
    assert load_record(out) == rec


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_train_eval_measures_the_training_subset_in_inference_mode_and_changes_nothing_else(
    framework, tmp_path, monkeypatch
):
    """train_eval=n adds, after every epoch, the loss and accuracy of the first n training examples in inference
    mode: at the last epoch, the numbers of the final weights evaluated there; the training itself is unchanged."""
    data = easy_problem(n_train=256, n_test=128)
    n = 100
    metrics = lambda r: [(e.train_loss, e.train_acc, e.test_loss, e.test_acc) for e in r.epochs]  # noqa: E731
    kw = dict(bn="native", epochs=2, batch_size=32, lr=1e-2, seed=5, progress=False)
    module = torch_training if framework == "torch" else keras_training
    builder = "build_torch_model" if framework == "torch" else "build_keras_model"
    made = []
    original = getattr(module, builder)

    def keep(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, builder, keep)
    train = torch_training.train_torch if framework == "torch" else keras_training.train_keras
    on = train(data, train_eval=n, out=tmp_path / "on.json", **kw)
    off = train(data, out=tmp_path / "off.json", **kw)
    if framework == "torch":
        loss, acc = torch_training.evaluate(made[0], *torch_training.as_tensors(data[0][:n], data[1][:n]))
    else:
        y = np.eye(10, dtype=np.float32)[data[1][:n]]
        got = made[0].evaluate(data[0][:n], y, batch_size=32, verbose=0, return_dict=True)
        loss, acc = got["loss"], got["accuracy"]
    assert on.final.train_eval_loss == pytest.approx(loss, rel=1e-6) and on.final.train_eval_acc == acc
    assert metrics(on) == metrics(off)
    assert all(e.train_eval_acc is None and e.train_eval_loss is None for e in off.epochs)
    assert on.epochs[0].train_eval_loss != on.epochs[1].train_eval_loss  # measured after each epoch
    assert on.config.details["train_eval"] == f"the first {n} training examples, inference mode, after every epoch"
    assert "train_eval" not in off.config.details
    # the JSON carries the fields only when they were measured, so records written before them read the same
    assert all("train_eval_acc" in e for e in json.loads((tmp_path / "on.json").read_text())["epochs"])
    assert not any("train_eval_acc" in e for e in json.loads((tmp_path / "off.json").read_text())["epochs"])
    assert load_record(tmp_path / "on.json") == on and load_record(tmp_path / "off.json") == off
    for bad in (257, -1):
        with pytest.raises(ValueError, match="train_eval"):
            train(data, train_eval=bad, **kw)


def test_bad_arguments():
    data = easy_problem()
    with pytest.raises(ValueError, match="epochs"):
        torch_training.train_torch(data, epochs=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        torch_training.train_torch(data, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="labels in 0..9"):
        torch_training.train_torch((data[0], data[1] + 10, data[2], data[3]), progress=False)
    with pytest.raises(ValueError, match="cuda_graphs"):
        torch_training.train_torch(data, device="cpu", cuda_graphs=True, progress=False)


def test_device_selection():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert torch_training.select_device("auto").type == expected
    assert torch_training.select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        torch_training.select_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            torch_training.select_device("cuda")


# ---------------------------------------------------------------------------------------------
# loading records
# ---------------------------------------------------------------------------------------------


def test_load_records_reads_runs_and_skips_other_json(tmp_path):
    rec = torch_training.train_torch(
        easy_problem(), epochs=1, batch_size=64, progress=False, out=tmp_path / "b-run.json"
    )
    (tmp_path / "a-bench.json").write_text(json.dumps({"schema": "bnref.benchmark/1", "rows": []}))
    assert load_records(tmp_path) == [rec]
    assert load_records(tmp_path / "missing") == []
    broken = rec.to_dict()
    del broken["device"]
    (tmp_path / "c-broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"c-broken.json: missing fields \['device'\]"):
        load_records(tmp_path)
    (tmp_path / "c-broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records(tmp_path)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_cli_help_explains_itself(capsys):
    from bnref.mnist import cli as train

    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for words in (
        "results record",
        "BNREF_MNIST",
        "examples:",
        "--framework {torch,keras}",
        "--bn {native,scratch,none}",
    ):
        assert words in text


def test_cli_trains_and_writes(tmp_path, capsys, monkeypatch):
    from bnref import records
    from bnref.mnist import cli as train

    monkeypatch.setattr(records, "code_version", lambda: "0" * 40)  # a clean tree, wherever the test runs

    rng = np.random.default_rng(0)
    mnist = tmp_path / "mini.npz"
    np.savez(
        mnist,
        x_train=rng.integers(0, 256, (96, 28, 28), dtype=np.uint8),
        y_train=(np.arange(96) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        y_test=(np.arange(32) % 10).astype(np.uint8),
    )
    out = tmp_path / "r.json"
    rc = train.main(
        [
            "--framework",
            "torch",
            "--bn",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--data",
            str(mnist),
            "--no-verify",
            "--no-progress",
            "--train-eval",
            "40",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rec = load_record(out)
    assert (rec.config.bn, rec.config.epochs, rec.config.train_size) == ("none", 1, 96)
    assert rec.config.details["train_eval"].startswith("the first 40 training examples")
    printed = capsys.readouterr().out
    assert "final test accuracy" in printed and f"{rec.final.train_eval_acc:.4f}" in printed


def mini_mnist(path):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (96, 28, 28), dtype=np.uint8),
        y_train=(np.arange(96) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        y_test=(np.arange(32) % 10).astype(np.uint8),
    )
    return path


def test_cli_commands_that_write_records_refuse_a_dirty_tree(tmp_path, capsys, monkeypatch):
    """Both record-writing commands stop with exit 2 before training when the tree is dirty, and say how to
    go on; --allow-dirty lets a trial run go on; without --out nothing is written and nothing is refused."""
    from bnref import records
    from bnref.mnist import cli as train

    monkeypatch.setattr(records, "code_version", lambda: "1" * 40 + "+dirty")
    mnist = mini_mnist(tmp_path / "mini.npz")
    out = tmp_path / "r.json"
    single = ["--bn", "none", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--data", str(mnist)]
    single += ["--no-verify", "--no-progress"]
    assert train.main([*single, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err and not out.exists()
    assert train.main(["experiment", "mnist", "--data", str(mnist), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err and not out.exists()
    # the refusal comes first: the experiment's own error (this file is not full MNIST) shows only with the flag
    assert train.main(["experiment", "mnist", "--data", str(mnist), "--out", str(out), "--allow-dirty"]) == 2
    assert "full MNIST has (60000, 28, 28)" in capsys.readouterr().err
    assert train.main([*single, "--out", str(out), "--allow-dirty"]) == 0 and load_record(out).config.epochs == 1
    assert train.main(single) == 0


def test_cli_reports_missing_data(tmp_path, capsys):
    from bnref.mnist import cli as train

    rc = train.main(["--data", str(tmp_path / "absent.npz"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "absent.npz" in err and "BNREF_MNIST=" in err


# ---------------------------------------------------------------------------------------------
# the shared helpers: initialisers, weight loading, argument checks, evaluation, state
# ---------------------------------------------------------------------------------------------


def test_he_uniform_has_variance_two_over_fan_in():
    rng = np.random.default_rng(0)
    w = models.he_uniform(400, 300, rng)
    a = np.sqrt(6.0 / 400)
    assert w.dtype == np.float32 and w.shape == (400, 300) and np.abs(w).max() <= a
    # 120000 draws of U(-a, a): the sample variance is within 2% of a^2/3 = 2/fan_in (its relative
    # standard error is sqrt(0.8 / n) ~ 0.26%).
    assert abs(w.var() / (2.0 / 400) - 1) < 0.02
    he = initial_weights(seed=1, init="he", input_dim=20, hidden=(30,), num_classes=5)
    again = models.he_uniform(20, 30, np.random.default_rng(1))
    assert np.array_equal(he[0][0], again)
    with pytest.raises(ValueError, match="init must be one of"):
        initial_weights(seed=1, init="orthogonal")


def test_load_linear_weights_copies_the_transpose_and_checks_shapes():
    model = build_torch_model("none", seed=0, input_dim=16)
    linears = models.linear_layers(model)
    weights = initial_weights(seed=9, input_dim=16)
    models.load_linear_weights(linears, weights)
    for linear, (w, b) in zip(linears, weights, strict=True):
        assert np.array_equal(linear.weight.detach().numpy(), w.T) and np.array_equal(linear.bias.detach().numpy(), b)
    with pytest.raises(ValueError, match="2 weight pairs for 3 Linear layers"):
        models.load_linear_weights(linears, weights[:2])
    with pytest.raises(ValueError, match="layer 0"):
        models.load_linear_weights(linears, initial_weights(seed=9, input_dim=17))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.check_int("depth", 0), "depth must be an integer >= 1; got 0"),
        (lambda: models.check_int("depth", 2.0), "depth must be an integer"),
        (lambda: models.check_int("depth", True), "depth must be an integer"),
        (lambda: models.check_int("n", 11, low=2, high=10), r"n must be an integer in 2..10; got 11"),
        (lambda: models.check_positive("lr", 0.0), "lr must be a positive number"),
        (lambda: models.check_positive("lr", float("nan")), "lr must be a positive number"),
        (lambda: models.check_positive("lr", "fast"), "lr must be a positive number"),
        (lambda: common.check_training_args(1, 1, 1e-3), "batch_size"),
    ],
)
def test_argument_checks_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_argument_checks_pass_good_values():
    assert models.check_int("n", np.int64(5), low=2, high=10) == 5
    assert models.check_positive("lr", np.float32(0.5)) == 0.5


def test_evaluate_is_mean_cross_entropy_and_accuracy_in_inference_mode():
    x_train, y_train, x_test, y_test = easy_problem()
    model = build_torch_model("native", seed=1, input_dim=16)
    model.train()
    model(torch.from_numpy(x_train))  # one training-mode pass moves the running statistics
    loss, acc = torch_training.evaluate(model, x_test, y_test, chunk=100)  # three chunks
    assert model.training  # the flag is put back
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test)).double()
    logp = torch.log_softmax(logits, dim=1)[torch.arange(len(y_test)), torch.from_numpy(y_test)]
    assert acc == float((logits.argmax(1).numpy() == y_test).mean())
    # float32 log-softmax of 10 logits and a sum of 256 terms: a relative error far below 1e-5.
    assert loss == pytest.approx(float(-logp.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="y must have shape"):
        torch_training.evaluate(model, x_test, y_test[:-1])


def test_kept_buffers_and_snapshot_restore_put_state_back():
    model = build_torch_model("native", seed=1, input_dim=16)
    before = [b.clone() for b in model.buffers()]
    with torch_training.kept_buffers(model):
        model.train()
        model(torch.from_numpy(easy_problem()[0]))
        assert not all(torch.equal(a, b) for a, b in zip(model.buffers(), before, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before, strict=True))
    params = list(model.parameters())
    saved = torch_training.snapshot(params)
    with torch.no_grad():
        params[0].add_(1.0)
    torch_training.restore(params, saved)
    assert torch.equal(params[0], saved[0])
    with pytest.raises(ValueError, match="1 saved tensors for"):
        torch_training.restore(params, saved[:1])


def test_as_tensors_coerces_images_and_features():
    x, y = torch_training.as_tensors(np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3]))
    assert x.shape == (3, 784) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_import_bnref_and_training_stay_framework_free():
    import subprocess
    import sys

    code = (
        "import sys, bnref, bnref.mnist.training, bnref.mnist.common, bnref.mnist.verdicts, bnref.records, "
        "bnref.mnist.models, bnref.mnist.data\n"
        "print(sorted(m for m in ('torch', 'keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keras_recorder_is_a_module_level_callback():
    assert issubclass(keras_training.EpochRecorder, keras.callbacks.Callback)


def test_import_keras_quietly_returns_keras():
    assert common.import_keras_quietly() is keras


def test_import_keras_quietly_silences_the_import_only():
    """In a fresh process: nothing reaches stderr while Keras and TensorFlow load, and stderr works again after."""
    import subprocess
    import sys

    code = (
        "import os, bnref.mnist.common as t\n"
        "k = t.import_keras_quietly()\n"
        "os.write(2, b'after\\n')\n"
        "print(k.__name__, 'tensorflow' in __import__('sys').modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stderr == "after\n"
    assert out.stdout.split() == ["keras", "True"]


# ---------------------------------------------------------------------------------------------
# the MNIST experiment
# ---------------------------------------------------------------------------------------------


def test_mnist_experiment_definition():
    assert training.MNIST.runs() == ["torch/native", "torch/none", "keras/native", "keras/none"]
    cfg = training.MNIST.config()
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["placement"]) == (10, 128, 1e-3, "after")
    assert len(training.MNIST_SEEDS) >= verdicts.MIN_SEEDS >= 3
    with pytest.raises(ValueError, match="frameworks"):
        training.MnistExperiment(frameworks=("jax",))
    with pytest.raises(ValueError, match="epochs"):
        training.MnistExperiment(epochs=0)
    assert training.MNIST.train_eval == 10000
    assert cfg["train_eval"] == "the first 10000 training examples, inference mode, after every epoch"
    with pytest.raises(ValueError, match="train_eval"):
        training.MnistExperiment(train_eval=60001)


def test_run_mnist_experiment_records_every_seed_and_run(tmp_path):
    small = training.MnistExperiment(epochs=2, batch_size=64, lr=1e-2, train_eval=100)
    rec = training.run_mnist_experiment(easy_problem(n_train=256, n_test=128), small, seeds=[3, 4], device="cpu")
    assert rec.name == "mnist" and rec.seeds == [3, 4] and rec.config == small.config()
    assert rec.device["type"] == "cpu"
    path = rec.save(tmp_path / "mnist-cpu.json")
    runs = training.experiment_runs(load_experiment(path))
    assert sorted(runs) == sorted((k, s) for k in small.runs() for s in (3, 4))
    for (key, seed), run in runs.items():
        assert f"{run.framework}/{run.config.bn}" == key and run.seed == seed and len(run.epochs) == 2
        assert run.machine == rec.machine and run.final.test_acc > 0.5
        assert all(0.5 < e.train_eval_acc <= 1 and e.train_eval_loss > 0 for e in run.epochs)
    # the same seed gives the same torch run, bit for bit, on one CPU
    again = torch_training.train_torch(
        easy_problem(n_train=256, n_test=128),
        bn="native",
        epochs=2,
        batch_size=64,
        lr=1e-2,
        seed=3,
        device="cpu",
        progress=False,
    )
    assert [e.test_loss for e in again.epochs] == [e.test_loss for e in runs[("torch/native", 3)].epochs]
    with pytest.raises(ValueError, match="distinct"):
        training.run_mnist_experiment(easy_problem(), small, seeds=[1, 1])


def test_keras_on_another_device_than_the_experiment_is_refused(monkeypatch):
    monkeypatch.setattr(keras_training, "keras_device", lambda: {"type": "gpu", "name": "a GPU"})
    small = training.MnistExperiment(frameworks=("keras",), bn=("none",), epochs=1, batch_size=64, train_eval=64)
    with pytest.raises(ValueError, match="KERAS_BACKEND=torch"):
        training.run_mnist_experiment(easy_problem(n_train=128, n_test=64), small, seeds=[0], device="cpu")


def test_cli_experiment_writes_a_record(tmp_path, capsys, monkeypatch):
    from bnref import records
    from bnref.mnist import cli as train

    monkeypatch.setattr(records, "code_version", lambda: "0" * 40)  # a clean tree, wherever the test runs

    rng = np.random.default_rng(0)
    mnist = tmp_path / "mini.npz"
    np.savez(
        mnist,
        x_train=rng.integers(0, 256, (96, 28, 28), dtype=np.uint8),
        y_train=(np.arange(96) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        y_test=(np.arange(32) % 10).astype(np.uint8),
    )
    out = tmp_path / "e.json"
    # a file that is not MNIST is refused by the content check, which the experiment does not skip
    assert train.main(["experiment", "mnist", "--data", str(mnist), "--out", str(out)]) == 2
    assert "full MNIST has (60000, 28, 28)" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        train.main(["experiment", "cifar"])
    with pytest.raises(SystemExit) as info:
        train.main(["experiment", "--help"])
    assert info.value.code == 0
    assert "bnref.experiment/1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the GPU command (its CPU-side logic; the jobs themselves need a CUDA GPU)
# ---------------------------------------------------------------------------------------------


def gpu_records_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_records.py"
    spec = importlib.util.spec_from_file_location("gpu_records", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_records"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_jobs_are_named_after_the_gpu(tmp_path):
    g = gpu_records_module()
    todo = g.jobs("h200", tmp_path, mnist_seeds=5)
    assert [j.name for j in todo] == ["agreement", "throughput", "mnist", "sync_bn", "claims", "beyond"]
    by_name = {j.name: j for j in todo}
    assert str(tmp_path / "mnist-h200.json") in by_name["mnist"].argv and "--seeds" in by_name["mnist"].argv
    assert str(tmp_path / "benchmark-h200.json") in by_name["throughput"].argv
    assert str(tmp_path / "agreement-h200.json") in by_name["agreement"].argv
    assert str(tmp_path) in by_name["sync_bn"].argv and by_name["sync_bn"].writes == "distributed-sync-bn-h200.json"
    assert all("cuda" in j.argv for j in todo)
    assert all(j.env.get("KERAS_BACKEND") == "torch" for j in todo if j.name in ("throughput", "mnist", "claims"))
    with pytest.raises(ValueError, match="at least 3"):
        g.jobs("h200", tmp_path, mnist_seeds=2)


def test_gpu_jobs_keep_to_the_budget():
    import sys

    g = gpu_records_module()
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    todo = [
        g.Job("ok", [sys.executable, "-c", "pass"], cap_s=30),
        g.Job("slow", sleep, cap_s=30),
        g.Job("late", [sys.executable, "-c", "pass"], cap_s=30),
        g.Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], cap_s=30),
    ]
    t0 = __import__("time").perf_counter()
    summary = g.run_jobs(todo, budget_s=7, log=lambda line: None)  # a job needs 5 s of budget to start
    assert __import__("time").perf_counter() - t0 < 15
    status = {s["job"]: s["status"] for s in summary}
    assert status["ok"] == "ok" and status["slow"].startswith("stopped after")
    assert status["late"].startswith("not run") and status["bad"].startswith("not run")
    assert g.run_jobs(todo[3:], budget_s=30, log=lambda line: None)[0]["status"] == "failed (exit status 3)"


def test_gpu_command_dry_run_and_refusal_without_gpu(capsys, monkeypatch):
    from bnref import records

    monkeypatch.setattr(records, "code_version", lambda: "0" * 40)  # a clean tree: the GPU check is what is tested
    g = gpu_records_module()
    assert g.main(["--dry-run", "--gpu-name", "NVIDIA H200"]) == 0
    out = capsys.readouterr().out
    assert "mnist-h200.json" in out and "KERAS_BACKEND=torch" in out and "benchmark-h200.json" in out
    if not torch.cuda.is_available():
        assert g.main([]) == 2
        assert "no CUDA GPU here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "diffs, verdict",
    [
        ([0.01, 0.02, 0.015], 1),
        ([-0.01, -0.02, -0.015, -0.01, -0.012], -1),
        ([0.01, 0.02, -0.001], 0),  # one seed disagrees
        ([1e-4, 1e-4, 1.0], 0),  # same sign, but the mean rests on one seed: 2 standard errors not cleared
        ([0.0, 0.01, 0.02], 0),  # a tie is not a difference
    ],
)
def test_paired_verdict_rule(diffs, verdict):
    assert verdicts.paired_verdict(diffs) == verdict


def test_paired_verdict_needs_three_seeds():
    with pytest.raises(ValueError, match="at least 3 paired differences"):
        verdicts.paired_verdict([0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        verdicts.paired_verdict([0.1, 0.2, float("nan")])


def committed_mnist_records():
    from pathlib import Path

    from bnref.records import load_experiments

    return load_experiments(Path(__file__).resolve().parent.parent / "book" / "results", name="mnist")


def test_committed_mnist_records_match_the_definition():
    records = committed_mnist_records()
    assert any(r.device["type"] == "cpu" for r in records), "the MNIST chapter needs book/results/mnist-cpu.json"
    for rec in records:
        training.MNIST.check_record(rec)


def test_a_record_of_another_experiment_is_rejected():
    import copy

    rec = next(r for r in committed_mnist_records() if r.device["type"] == "cpu")
    changed = copy.deepcopy(rec)
    changed.config["lr"] = 1e-2
    with pytest.raises(ValueError, match=r"config differs from the definition in \['lr'\]"):
        training.MNIST.check_record(changed)
    with pytest.raises(ValueError, match=r"config differs from the definition in \['epochs'\]"):
        training.MnistExperiment(epochs=9).check_record(rec)
    fewer = copy.deepcopy(rec)
    fewer.seeds, fewer.results = fewer.seeds[:2], {str(s): fewer.results[str(s)] for s in fewer.seeds[:2]}
    with pytest.raises(ValueError, match="a verdict needs at least 3"):
        training.MNIST.check_record(fewer)
    short = copy.deepcopy(rec)
    short.results[str(rec.seeds[0])]["torch/none"]["epochs"].pop()
    with pytest.raises(ValueError, match="run 'torch/none' seed"):
        training.MNIST.check_record(short)
    unevaluated = copy.deepcopy(rec)
    del unevaluated.results[str(rec.seeds[-1])]["keras/native"]["epochs"][4]["train_eval_acc"]
    with pytest.raises(ValueError, match="'keras/native' seed .* lacks the inference-mode training evaluation"):
        training.MNIST.check_record(unevaluated)
