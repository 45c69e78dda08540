"""bnref.experiments.probes, bnref.experiments.claims, the experiment registry (bnref.experiments.registry, the
command line of bnref.experiments.cli) and the verdict rule (bnref.mnist.verdicts) on tiny synthetic data (no MNIST),
and the committed claims records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bnref.experiments import claims, cli
from bnref.experiments import probes as ex
from bnref.experiments.registry import Experiment, Registry
from bnref.mnist.models import glorot_uniform, he_uniform, linear_layers
from bnref.mnist.torch_training import evaluate
from bnref.records import load_experiment, load_experiments

RESULTS = Path(__file__).resolve().parent.parent / "book" / "results"

U32 = 2.0**-24  # unit roundoff of float32


def clusters(n: int = 256, d: int = 16, seed: int = 0):
    """Ten Gaussian clusters in d dimensions, centres ~3 sigma apart per coordinate: an easy problem."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(10, d))
    y = rng.integers(0, 10, size=n)
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    return x, y


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module's tiny networks on one thread, then restore the setting.

    The tensors here are so small that a second thread only adds synchronisation, and on a busy machine
    (the project's CPU is shared) that synchronisation made the module 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "module",
    ["bnref.experiments.probes", "bnref.experiments.claims", "bnref.experiments.registry", "bnref.mnist.verdicts"],
)
def test_import_does_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------------------------


def test_take_subset_images_and_features():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50).astype(np.uint8)
    x, y = ex.take_subset(images, labels, 20, seed=3)
    assert x.shape == (20, 784) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    # every row is one of the images, each at most once, with its own label
    flat = images.reshape(50, -1).astype(np.float32) / 255
    rows = [int(np.flatnonzero((flat == r).all(axis=1))[0]) for r in x]
    assert len(set(rows)) == 20 and np.array_equal(labels[rows], y)
    x2, y2 = ex.take_subset(images, labels, 20, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, ex.take_subset(images, labels, 20, seed=4)[0])
    feats, _ = ex.take_subset(rng.normal(size=(50, 7)), labels, 5, seed=0)
    assert feats.shape == (5, 7) and feats.dtype == np.float32


@pytest.mark.parametrize("n", [0, 51, 2.5])
def test_take_subset_rejects_bad_size(n):
    with pytest.raises(ValueError, match="n must be"):
        ex.take_subset(np.zeros((50, 3)), np.zeros(50, dtype=int), n, seed=0)


def test_take_subset_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="y must have shape"):
        ex.take_subset(np.zeros((50, 3)), np.zeros(49, dtype=int), 5, seed=0)


def test_he_uniform_bound_and_spread():
    w = he_uniform(400, 300, np.random.default_rng(0))
    a = np.sqrt(6 / 400)
    assert w.shape == (400, 300) and w.dtype == np.float32 and np.abs(w).max() <= a
    # U(-a, a) has variance a^2/3 = 2/fan_in; with 120,000 draws the sample variance is within 2%
    assert abs(w.var() / (2 / 400) - 1) < 0.02


def test_build_mlp_with_bn_is_linear_bn_activation():
    model = ex.build_mlp(3, 8, bn=True, activation="tanh", input_dim=5, num_classes=4)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh"] * 3 + ["Linear"]
    lins = linear_layers(model)
    assert [lin.bias is None for lin in lins] == [True, True, True, False]
    assert [(lin.in_features, lin.out_features) for lin in lins] == [(5, 8), (8, 8), (8, 8), (8, 4)]


def test_build_mlp_without_bn_and_its_weights():
    model = ex.build_mlp(2, 6, bn=False, init="glorot", seed=7, input_dim=4, num_classes=3)
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    rng = np.random.default_rng(7)  # the same draws, in the same order, as build_mlp makes
    for lin, (n_in, n_out) in zip(linear_layers(model), [(4, 6), (6, 6), (6, 3)], strict=True):
        assert np.array_equal(lin.weight.detach().numpy(), glorot_uniform(n_in, n_out, rng).T)
        assert not lin.bias.detach().numpy().any()
    he = ex.build_mlp(2, 6, bn=False, init="he", seed=7, input_dim=4, num_classes=3)
    assert not torch.equal(he[0].weight, model[0].weight)


def test_build_mlp_places_shift_noise_after_bn():
    model = ex.build_mlp(2, 8, bn=True, shift_noise=(0.5, 0.4), input_dim=5)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "BatchNorm1d", "ShiftNoise", "ReLU"] * 2 + ["Linear"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=0, width=8, bn=True), "depth"),
        (dict(depth=2, width=1, bn=True), "width"),
        (dict(depth=2, width=8, bn=True, activation="gelu"), "activation"),
        (dict(depth=2, width=8, bn=True, init="lecun"), "init"),
        (dict(depth=2, width=8, bn=False, shift_noise=(0.5, 0.4)), "shift_noise"),
    ],
)
def test_build_mlp_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ex.build_mlp(**kwargs)


def test_shift_noise_draws_within_bounds_and_is_identity_at_inference():
    layer = ex.make_shift_noise(6, max_shift=0.5, max_log_scale=np.log(2.0))
    zeros, ones = torch.zeros(4, 6), torch.ones(4, 6)
    torch.manual_seed(0)
    shift = layer(zeros)  # = m, the same for every example
    torch.manual_seed(0)
    scale = layer(ones) - shift  # the same draws again: s * 1 + m - m
    assert torch.equal(shift, shift[:1].expand(4, 6)) and torch.all(shift.abs() <= 0.5)
    # s = exp(u), |u| <= ln 2; float32 rounding of exp and of the subtraction stays below 1e-6 here
    assert torch.all(scale >= 0.5 - 1e-6) and torch.all(scale <= 2.0 + 1e-6)
    assert not torch.equal(layer(zeros), layer(zeros))  # a new draw at every call
    layer.eval()
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="max_shift"):
        ex.make_shift_noise(6, max_shift=-1.0, max_log_scale=0.1)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def test_weight_gradient_norms_match_autograd_and_leave_weights_alone():
    x, y = clusters(64, d=10)
    model = ex.build_mlp(3, 12, bn=True, input_dim=10)
    before = [p.detach().clone() for p in model.parameters()]
    norms = ex.weight_gradient_norms(model, x, y)
    assert norms.shape == (4,) and np.all(norms > 0)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    grads = torch.autograd.grad(loss, [lin.weight for lin in linear_layers(model)])
    # the same computation twice (the BN running statistics it changed do not enter training mode)
    assert np.array_equal(norms, [float(g.norm()) for g in grads])


def test_gradients_grow_toward_the_input_with_bn_only():
    # Equation eq-cl-rate predicts growth by sqrt(pi/(pi-1)) = 1.21 per layer with BN and ReLU, i.e. about
    # 1.21^10 = 6.8 from layer 12 down to layer 2; without BN and with He initialisation, about 1. At width 64
    # and batch 256 the ratio varied between 4.5 and 7.1 over 20 seeds with BN and between 0.3 and 1.1
    # without, so the thresholds 3 and 2 separate the two with a wide margin.
    rng = np.random.default_rng(0)
    for seed in range(3):
        x = rng.normal(size=(256, 32)).astype(np.float32)
        y = rng.integers(0, 10, size=256)
        g_bn = ex.weight_gradient_norms(ex.build_mlp(12, 64, bn=True, seed=seed, input_dim=32), x, y)
        g_he = ex.weight_gradient_norms(ex.build_mlp(12, 64, bn=False, init="he", seed=seed, input_dim=32), x, y)
        assert g_bn[1] / g_bn[11] > 3
        assert g_he[1] / g_he[11] < 2


# Composite trapezoidal rule on [-12, 12] with spacing h = 5e-5: error <= (24 / 12) h^2 max|f''| per
# expectation, and the integrands (phi^2, phi'^2 and phi times the normal density) have |f''| < 1 away from
# z = 0, where the jump of phi' falls mid-interval; so about 5e-9, and 1e-8 bounds the error of lambda.
QUADRATURE = 1e-8


def test_bn_gradient_growth_closed_forms():
    assert abs(ex.bn_gradient_growth("relu") - np.sqrt(np.pi / (np.pi - 1))) < QUADRATURE
    assert abs(ex.bn_gradient_growth("linear") - 1.0) < QUADRATURE
    # tanh has no closed form; Gauss-Hermite quadrature with 200 nodes is exact for smooth integrands to ~1e-15
    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    t = np.tanh(z)
    expected = np.sqrt(np.sum(w * (1 - t**2) ** 2) / (np.sum(w * t**2) - np.sum(w * t) ** 2))
    assert abs(ex.bn_gradient_growth("tanh") - expected) < QUADRATURE
    # a leaky ReLU given as functions: lambda^2 = pi (1 + a^2) / (pi (1 + a^2) - (1 - a)^2)
    a = 0.2
    leaky = (lambda z: np.maximum(z, a * z), lambda z: np.where(z > 0, 1.0, a))
    closed = np.sqrt(np.pi * (1 + a**2) / (np.pi * (1 + a**2) - (1 - a) ** 2))
    assert abs(ex.bn_gradient_growth(leaky) - closed) < QUADRATURE


def test_bn_gradient_growth_rejects_bad_input():
    with pytest.raises(ValueError, match="activation"):
        ex.bn_gradient_growth("gelu")
    with pytest.raises(ValueError, match="even"):
        ex.bn_gradient_growth("relu", points=1001)
    with pytest.raises(ValueError, match="variance"):
        ex.bn_gradient_growth((np.ones_like, np.zeros_like))


def test_fitted_growth_factor_recovers_a_geometric_sequence():
    layers = np.arange(12)
    norms = 3.0 * 1.3 ** (11 - layers)
    norms[0] = 1e3  # the input layer is left out by default
    # a least-squares line through exact logarithms: a few float64 roundings of numbers of size ~10
    assert abs(ex.fitted_growth_factor(norms) - 1.3) < 1e-12
    assert abs(ex.fitted_growth_factor(1 / norms[1:], first=0, last=11) - 1 / 1.3) < 1e-12
    with pytest.raises(ValueError, match="positive"):
        ex.fitted_growth_factor(np.array([1.0, -1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="at least two layers"):
        ex.fitted_growth_factor(np.array([1.0, 2.0]))


def test_evaluate_of_constant_logits():
    x, y = clusters(100, d=5)
    p = np.linspace(1, 10, 10) / 55.0  # a fixed predictive distribution; class 9 most likely
    model = torch.nn.Linear(5, 10)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.from_numpy(np.log(p).astype(np.float32)))
    model.train()
    loss, acc = evaluate(model, x, y)
    assert acc == np.mean(y == 9)
    # Each example's -log softmax (a log-sum-exp of 10 float32 logits of size <= 4) is off by at most about
    # 10 U32 * 4; the mean of 100 such values (about 2.7 each), summed pairwise, adds about log2(100) U32 * 2.7.
    # Together below 60 U32, so 200 U32 (1.2e-5) leaves room without hiding a wrong formula.
    assert abs(loss - float(-np.log(p)[y].mean())) < 200 * U32
    assert model.training  # the mode is restored


def test_train_sgd_learns_and_is_reproducible():
    x, y = clusters(256)
    for bn in (False, True):
        runs = [
            ex.train_sgd(ex.build_mlp(2, 32, bn=bn, input_dim=16), x, y, steps=60, lr=0.1, batch_size=32, seed=5)
            for _ in range(2)
        ]
        loss = runs[0]["loss"]
        assert runs[0]["steps_done"] == 60 and not runs[0]["diverged"]
        assert loss[-10:].mean() < 0.5 * loss[:5].mean()
        assert np.array_equal(loss, runs[1]["loss"])  # same seed, same batches, same numbers


def test_train_sgd_detects_divergence():
    x, y = clusters(128)
    x = 50 * x  # large inputs and a large step: the plain network blows up
    run = ex.train_sgd(ex.build_mlp(2, 32, bn=False, input_dim=16), x, y, steps=50, lr=10.0, batch_size=32)
    assert run["diverged"] and run["steps_done"] < 50
    assert not np.isfinite(run["loss"][-1]) or run["loss"][-1] > 1e3


def test_train_sgd_probe_of_the_first_layer_sees_the_probe_itself():
    x, y = clusters(128)
    probe = x[:40]
    run = ex.train_sgd(
        ex.build_mlp(2, 16, bn=True, input_dim=16),
        x,
        y,
        steps=20,
        lr=0.1,
        batch_size=32,
        probe=probe,
        probe_layer=0,
        record_every=5,
    )
    assert run["probe_steps"].tolist() == [0, 5, 10, 15]
    stats = run["probe_stats"]
    assert stats.shape == (4, 2, 16)
    # the input of the first layer is the probe, whatever the weights: its moments, exactly, every time
    expected = np.stack([probe.mean(axis=0), probe.std(axis=0)])
    assert np.allclose(stats, expected[None], rtol=1e-5, atol=1e-6)  # float32 means of 40 values of size ~10
    assert np.all(ex.input_shift(stats) < 1e-6)


@pytest.mark.parametrize("shift_noise", [None, (1.0, 0.5)])
def test_gradient_ics_is_zero_when_no_layer_lies_below(shift_noise):
    x, y = clusters(128)
    model = ex.build_mlp(3, 16, bn=True, input_dim=16, shift_noise=shift_noise)
    run = ex.train_sgd(model, x, y, steps=5, lr=0.1, batch_size=32, ics_layer=0)
    # G' is recomputed at the same parameters, on the same batch, with the same noise draws (the generator
    # state is replayed): the identical computation, so the two gradients agree exactly
    assert np.all(run["ics_rel"] == 0) and np.allclose(run["ics_cos"], 1, atol=1e-6)


@pytest.mark.parametrize("bn", [False, True])
def test_gradient_ics_is_first_order_in_the_step(bn):
    # G' - G = (d G / d theta_below) * lr * g + O(lr^2): tenfold smaller steps, tenfold smaller change.
    # A smooth activation (tanh) keeps the Taylor expansion valid; with ReLU a unit whose pre-activation
    # crosses 0 makes the change jump. At lr = 1e-2 the second-order term is a few percent of the first.
    x, y = clusters(64)
    rel = []
    for lr in (1e-3, 1e-2):
        model = ex.build_mlp(3, 16, bn=bn, activation="tanh", seed=0, input_dim=16)
        rel.append(ex.train_sgd(model, x, y, steps=1, lr=lr, batch_size=32, ics_layer=2)["ics_rel"][0])
    assert 0.09 < rel[0] / rel[1] < 0.11


def test_train_sgd_rejects_bad_arguments():
    x, y = clusters(64)
    model = ex.build_mlp(2, 8, bn=True, input_dim=16)
    for kwargs, match in [
        (dict(steps=0, lr=0.1, batch_size=8), "steps"),
        (dict(steps=5, lr=0.0, batch_size=8), "lr"),
        (dict(steps=5, lr=0.1, batch_size=1), "batch_size"),
        (dict(steps=5, lr=0.1, batch_size=65), "batch_size"),
        (dict(steps=5, lr=0.1, batch_size=8, ics_layer=3), "ics_layer"),
        (dict(steps=5, lr=0.1, batch_size=8, probe=x[:4]), "probe and probe_layer"),
        (dict(steps=5, lr=0.1, batch_size=8, record_every=0), "record_every"),
    ]:
        with pytest.raises(ValueError, match=match):
            ex.train_sgd(model, x, y, **kwargs)
    with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
        ex.train_sgd(model, x[:, :, None], y, steps=5, lr=0.1, batch_size=8)


def test_input_shift_of_known_moves():
    units = 5
    stats = np.zeros((3, 2, units))
    stats[:, 1] = 2.0  # std 2 throughout
    stats[1, 0] = 2.0  # the means move by one std ...
    stats[2, 0] = 2.0
    stats[2, 1] = 4.0  # ... then the std doubles
    shift = ex.input_shift(stats)
    # W2 of N(0, 4) -> N(2, 4) is 2, relative to std 2: 1; N(2, 4) -> N(2, 16) is 2, relative to std 4: 0.5
    assert np.allclose(shift, [1.0, 0.5], rtol=1e-15)
    assert np.allclose(ex.input_shift(10 * stats), shift, rtol=1e-15)  # scale-free
    for bad in (stats[:1], stats[:, :1], np.concatenate([stats[:, :1], -stats[:, 1:]], axis=1)):
        with pytest.raises(ValueError, match="stats must"):
            ex.input_shift(bad)


def test_lr_sweep_marks_divergence():
    x, y = clusters(128)
    sweep = ex.lr_sweep(
        lambda: ex.build_mlp(2, 16, bn=False, input_dim=16), [0.05, 1e4], x, y, x, y, steps=30, batch_size=32, tail=5
    )
    assert sweep["lr"].tolist() == [0.05, 1e4]
    assert sweep["diverged"].tolist() == [False, True]
    assert np.isfinite(sweep["final_loss"][0]) and sweep["final_loss"][1] == np.inf
    assert np.isnan(sweep["test_acc"][1])
    # the accuracy reported is that of the model trained at that rate: train it again, measure it
    model = ex.build_mlp(2, 16, bn=False, input_dim=16)
    run = ex.train_sgd(model, x, y, steps=30, lr=0.05, batch_size=32)
    assert sweep["test_acc"][0] == evaluate(model, x, y)[1]
    assert sweep["final_loss"][0] == run["loss"][-5:].mean()
    with pytest.raises(ValueError, match="lrs"):
        ex.lr_sweep(lambda: ex.build_mlp(2, 16, bn=False, input_dim=16), [], x, y, x, y, steps=5, batch_size=8)
    with pytest.raises(ValueError, match="tail"):
        ex.lr_sweep(
            lambda: ex.build_mlp(2, 16, bn=False, input_dim=16), [0.1], x, y, x, y, steps=5, batch_size=8, tail=6
        )


def test_step_seconds_times_every_model():
    x, y = clusters(128)
    models = {"bn": ex.build_mlp(2, 16, bn=True, input_dim=16), "plain": ex.build_mlp(2, 16, bn=False, input_dim=16)}
    times = ex.step_seconds(models, x, y, batch_size=32, rounds=3, steps_per_round=2)
    assert set(times) == {"bn", "plain"}
    assert all(t.shape == (3,) and np.all(t > 0) for t in times.values())
    with pytest.raises(ValueError, match="at least one"):
        ex.step_seconds({}, x, y, batch_size=32)


# ---------------------------------------------------------------------------------------------
# bnref.experiments.claims: the rule behind the verdicts, the experiment definitions and their records
# ---------------------------------------------------------------------------------------------


def test_experiment_names_and_definitions():
    assert claims.REGISTRY.names("claims") == list(claims.EXPERIMENTS)
    assert claims.REGISTRY.names("all") == list(claims.EXPERIMENTS)
    assert claims.REGISTRY.names("claims-cost") == ["claims-cost"]
    with pytest.raises(ValueError, match="unknown experiment"):
        claims.REGISTRY.names("claims-nothing")
    for name, exp in claims.EXPERIMENTS.items():
        assert exp.name == name and len(exp.seeds) >= 3 and len(set(exp.seeds)) == len(exp.seeds)
        json.dumps(exp.config)  # JSON-ready as it stands
    # the learning-rate grid: at least 4 rates per decade over at least 3 decades, evenly spaced in log
    grid = np.log10(claims.EXPERIMENTS["claims-lr-sweep"].config["lrs"])
    assert np.allclose(np.diff(grid), 0.25) and grid[-1] - grid[0] >= 3
    # the fresh seed set of the ICS experiment shares its configuration, not its seeds
    ics, fresh = claims.EXPERIMENTS["claims-ics"], claims.EXPERIMENTS["claims-ics-fresh"]
    assert ics.config == fresh.config and not set(ics.seeds) & set(fresh.seeds)


def test_record_filename():
    cost = claims.EXPERIMENTS["claims-cost"]
    assert cost.record_filename({"type": "cpu", "name": "AMD EPYC"}) == "claims-cost.cpu.json"
    gpu = {"type": "cuda", "name": "NVIDIA H200"}
    assert cost.record_filename(gpu) == "claims-cost.h200.json"


def synthetic_data(n_train: int = 300, n_test: int = 100):
    """Clusters in the article's input width (784), so that its network and the deep MLPs accept them."""
    x, y = clusters(n_train + n_test, d=784, seed=3)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_run_experiment_writes_a_record_that_loads_back(tmp_path):
    overrides = {"train_size": 64, "rounds": 2, "steps_per_round": 2, "batch_size": 16}
    record = claims.run_experiment(
        "claims-cost", seeds=[0, 1], overrides=overrides, out=tmp_path, data=synthetic_data()
    )
    path = tmp_path / "claims-cost.cpu.json"
    loaded = load_experiment(path)
    assert loaded.to_dict() == record.to_dict()
    assert loaded.seeds == [0, 1] and loaded.device["type"] == "cpu"
    assert loaded.config == {**claims.EXPERIMENTS["claims-cost"].config, **overrides}
    for seed in (0, 1):
        times = loaded.result(seed)
        assert set(times) == {"native", "none"} and all(len(t) == 2 and min(t) > 0 for t in times.values())
    # a reduced record is not the experiment the definition describes
    with pytest.raises(ValueError, match=r"config differs .*\['batch_size', 'rounds'"):
        claims.check_record(loaded)


def test_run_experiment_is_reproducible_on_the_cpu():
    # the ICS experiment exercises shift noise, probes and the gradient-based measure; two runs of one
    # seed on the CPU must give the same numbers bit for bit
    overrides = {
        "steps": 6,
        "record_every": 3,
        "train_size": 128,
        "probe_size": 32,
        "depth": 3,
        "width": 16,
        "layer": 1,
        "batch_size": 32,
        "lr": 0.01,
    }
    runs = [
        claims.run_experiment("claims-ics", seeds=[0], overrides=overrides, data=synthetic_data()).result(0)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert set(runs[0]) == set(claims.EXPERIMENTS["claims-ics"].config["nets"])
    assert all(len(r["drift"]) == 1 and len(r["grad_change"]) == 2 for r in runs[0].values())


def test_run_experiment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no configuration entry 'nonsense'"):
        claims.run_experiment("claims-cost", seeds=[0], overrides={"nonsense": 1}, data=synthetic_data())
    with pytest.raises(ValueError, match="seeds"):
        claims.run_experiment("claims-cost", seeds=[], data=synthetic_data())
    with pytest.raises(ValueError, match="unknown experiment"):
        claims.run_experiment("claims-nothing")


def test_command_line(tmp_path):
    listed = subprocess.run(
        [sys.executable, "-m", "bnref.experiments", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in listed for name in cli.REGISTRY.experiments)
    assert all(f"group {g}:" in listed for g in ("claims", "dynamics", "beyond", "distributed"))
    bad = subprocess.run(
        [sys.executable, "-m", "bnref.experiments", "run", "claims-nothing", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "bnref.experiments", "run", "claims", "--seeds", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--seeds" in bad.stderr
    assert not list(tmp_path.iterdir())


def test_command_line_show_and_check(tmp_path, capsys):
    assert cli.main(["show", "claims-cost"]) == 0
    shown = capsys.readouterr().out
    assert "claims-cost.<cpu|gpu>.json" in shown and '"rounds": 30' in shown and "group claims" in shown
    with pytest.raises(SystemExit):
        cli.main(["show", "claims-nothing"])
    # a changed record fails the check, a folder without records has none to check
    changed = load_experiment(RESULTS / "claims-cost.cpu.json")
    changed.config["rounds"] = 3
    changed.save(tmp_path / "claims-cost.cpu.json")
    assert cli.main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL claims-cost" in out and "none claims-speed" in out
    assert cli.main(["check", str(tmp_path / "empty")]) == 0


def test_registry_serves_every_group_by_name():
    registry = cli.REGISTRY
    # every chapter's group, in the book's order
    assert list(registry.groups) == ["claims", "dynamics", "bn-placement", "normfree", "domain-shift", "beyond",
                                     "sequence-models", "distributed"]  # fmt: skip
    assert registry.names("dynamics") == ["why-activations", "dynamics-lenet", "dynamics-scale",
                                          "dynamics-init-scale", "dynamics-resnet"]  # fmt: skip
    assert registry.group_of("distributed-ddp-mnist") == "distributed"
    assert registry.get("claims-cost") is claims.EXPERIMENTS["claims-cost"]
    ddp = registry.get("distributed-ddp-mnist")
    assert ddp.record_filename({"type": "cpu", "name": "x"}) == "distributed-ddp-mnist-cpu.json"
    with pytest.raises(ValueError, match="used twice"):
        Registry.joined(claims.REGISTRY, claims.REGISTRY)


def test_a_declared_experiment_runs_loads_and_checks(tmp_path):
    """The registry's machinery on a toy experiment: the runner's results per seed, the versions it records."""

    def runner(config, seed, device, data):
        return {"mean": float(np.mean(data[0][: config["n"]])) + seed, "device": device.type}

    toy = Experiment("toy", "none", "a toy", {"n": 3}, (0, 1, 2), runner, versions=("numpy",))
    registry = Registry({"toys": [toy]})
    data = (np.ones((5, 2), np.float32), np.zeros(5, np.int64), np.ones((2, 2), np.float32), np.zeros(2, np.int64))
    record = registry.run("toy", out=tmp_path, data=data)
    assert record.result(2) == {"mean": 3.0, "device": "cpu"} and record.config["numpy"] == np.__version__
    loaded = registry.load("toy", tmp_path)
    registry.check(loaded)
    loaded.config["numpy"] = "0.0"  # the version describes the run, not the definition
    registry.check(loaded)
    del loaded.config["numpy"]
    with pytest.raises(ValueError, match="versions"):
        registry.check(loaded)
    short = registry.run("toy", seeds=[0, 1], data=data)
    with pytest.raises(ValueError, match="first k >= 3"):
        registry.check(short)
    with pytest.raises(ValueError, match="expected one gpu record"):
        registry.load("toy", tmp_path, device_type="gpu")


def test_committed_records_match_their_definitions():
    records = [r for r in load_experiments(RESULTS) if r.name in claims.EXPERIMENTS]
    cpu = {r.name for r in records if r.device["type"] == "cpu"}
    assert cpu == set(claims.EXPERIMENTS), (
        f"experiments without a committed CPU record: {set(claims.EXPERIMENTS) - cpu}"
    )
    for record in records:
        claims.check_record(record)


def test_check_record_catches_a_changed_definition():
    record = claims.load_record("claims-lr-sweep", RESULTS)
    changed = load_experiment(RESULTS / "claims-lr-sweep.cpu.json")
    changed.config["steps"] = 200
    with pytest.raises(ValueError, match=r"config differs .*\['steps'\]"):
        claims.check_record(changed)
    changed = load_experiment(RESULTS / "claims-lr-sweep.cpu.json")
    changed.seeds = [1, 2, 3]
    changed.results = {str(s): record.results["0"] for s in changed.seeds}
    with pytest.raises(ValueError, match="seeds"):
        claims.check_record(changed)


def test_best_rates_were_chosen_by_the_stated_rule_on_the_committed_sweep():
    # claims-best-lr-fresh runs each network at the rate with the lowest mean final training loss over the
    # seeds of claims-lr-sweep; if the sweep is run again and its record changes, the choice must be redone
    sweep = claims.load_record("claims-lr-sweep", RESULTS)
    lrs = sweep.config["lrs"]
    for bn in sweep.config["bn"]:
        mean_loss = np.mean([r[bn]["final_loss"] for _, r in sweep.per_seed()], axis=0)
        assert claims.BEST_LR[bn] == lrs[int(np.argmin(mean_loss))]
    fresh = claims.EXPERIMENTS["claims-best-lr-fresh"]
    assert fresh.config["lr"] == claims.BEST_LR and not set(fresh.seeds) & set(sweep.seeds)
    with pytest.raises(ValueError, match="the record is of 'claims-lr-sweep'"):
        claims.EXPERIMENTS["claims-cost"].check(sweep)
