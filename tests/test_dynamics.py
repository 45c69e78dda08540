"""Tests of bnref.experiments.dynamics on small synthetic data,
and of its committed records against their definitions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_mnist

from bnref.experiments import dynamics as dyn
from bnref.experiments import probes as ex
from bnref.records import load_experiments

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def synthetic(n: int = 96, n_test: int = 40, seed: int = 0):
    """Ten Gaussian blobs in 784 dimensions as MNIST-shaped features (``conftest.synthetic_mnist``)."""
    return synthetic_mnist(n, n_test, seed)


# ---------------------------------------------------------------- records


def test_every_experiment_has_a_cpu_record_matching_its_definition():
    records = {r.name: r for r in load_experiments(RESULTS) if r.name in dyn.EXPERIMENTS and r.device["type"] == "cpu"}
    assert sorted(records) == sorted(dyn.EXPERIMENTS)
    for record in records.values():
        dyn.check_record(record)  # raises on a config or seed mismatch
        assert dyn.load_record(record.name, RESULTS).seeds == record.seeds


def test_check_record_rejects_a_changed_config_and_too_few_seeds():
    record = dyn.load_record("dynamics-resnet", RESULTS)
    changed = copy.deepcopy(record)
    changed.config["width"] = 7
    with pytest.raises(ValueError, match="width"):
        dyn.check_record(changed)
    fewer = copy.deepcopy(record)
    fewer.seeds = fewer.seeds[:2]
    with pytest.raises(ValueError, match="seeds"):
        dyn.check_record(fewer)


# ---------------------------------------------------------------- networks


def test_lenet_shapes_and_channel_statistics_over_n_h_w():
    model = dyn.build_lenet(bn=True, seed=0)
    x = torch.rand(8, 784)
    assert model(x).shape == (8, 10)
    first_bn = model[2]
    assert isinstance(first_bn, torch.nn.BatchNorm2d)
    out = model[:3](x)  # unflatten -> conv -> BN2d, in training mode
    mean = out.mean(dim=(0, 2, 3))
    var = out.var(dim=(0, 2, 3), unbiased=False)
    # per channel over N*H*W = 8*28*28 values: zero mean, variance v/(v + eps) with eps = 1e-5
    assert torch.allclose(mean, torch.zeros(6), atol=1e-5)
    assert torch.allclose(var, torch.ones(6), atol=1e-3)
    plain = dyn.build_lenet(bn=False, seed=0)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    with pytest.raises(ValueError, match="activation"):
        dyn.build_lenet(bn=True, activation="gelu")


def test_lenet_he_initialisation_keeps_the_signal_where_the_default_shrinks_it():
    # PyTorch's default weight variance is 1 / (3 fan_in), He's 2 / fan_in: 6 times larger, zero biases
    default, he = dyn.build_lenet(bn=False, seed=0), dyn.build_lenet(bn=False, seed=0, init="he")
    layers = [m for m in he.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for m in layers:
        fan_in = m.weight[0].numel()
        var = float(m.weight.double().var())
        n = m.weight.numel()
        # sample variance of n normal draws: relative standard error sqrt(2 / n); 5 of them
        assert abs(var / (2 / fan_in) - 1) < 5 * np.sqrt(2 / n), (m, var * fan_in)
        assert torch.all(m.bias == 0)
    x = torch.rand(256, 784)
    with torch.no_grad():
        s_default, s_he = float(default[:-1](x).std()), float(he[:-1](x).std())
    assert s_he > 5 * s_default  # the default's five layers shrink the signal, He's keep it near the input's
    with pytest.raises(ValueError, match="init"):
        dyn.build_lenet(bn=False, init="xavier")


def test_resnet_zero_gamma_blocks_branch_gradients_and_matches_plain_weights():
    x, y, _, _ = synthetic(32)
    zero = dyn.build_resnet(3, 16, last_gamma=0.0, seed=1)
    norms = ex.weight_gradient_norms(zero, x, y)
    assert len(norms) == 2 * 3 + 2
    assert np.all(norms[1:-1] == 0) and norms[0] > 0 and norms[-1] > 0
    one = dyn.build_resnet(3, 16, last_gamma=1.0, seed=1)
    assert np.all(ex.weight_gradient_norms(one, x, y) > 0)
    plain = ex.build_mlp(7, 16, bn=True, init="he", seed=1)
    for a, b in zip(ex.linear_layers(plain), ex.linear_layers(one), strict=True):
        assert torch.equal(a.weight, b.weight)


def test_gaussian_weights_scale_and_errors():
    w = dyn.gaussian_weights(0, (784, 100, 10), 0.01)
    assert [a.shape for a, _ in w] == [(784, 100), (100, 10)]
    assert abs(w[0][0].std() - 0.01) < 0.01 * 5 / np.sqrt(784 * 100)  # five standard errors of the std
    assert all(np.all(b == 0) for _, b in w)
    with pytest.raises(ValueError, match="scale"):
        dyn.gaussian_weights(0, (4, 3), 0.0)


# ---------------------------------------------------------------- training and probes


def test_train_steps_lowers_the_loss_and_checks_arguments():
    x, y, _, _ = synthetic()
    model = ex.build_mlp(2, 16, bn=True, seed=0)
    seen = []
    loss = dyn.train_steps(
        model, x, y, steps=30, batch_size=16, lr=0.1, seed=0, after_backward=lambda s, m: seen.append(s)
    )
    assert loss.shape == (30,) and seen == list(range(30))
    assert loss[-5:].mean() < loss[:5].mean()
    with pytest.raises(ValueError, match="optimizer"):
        dyn.train_steps(model, x, y, steps=1, batch_size=16, lr=0.1, seed=0, optimizer="rmsprop")
    with pytest.raises(ValueError, match="batch_size"):
        dyn.train_steps(model, x, y, steps=1, batch_size=1, lr=0.1, seed=0)


def test_nonlinearity_inputs_one_per_nonlinearity_and_buffers_kept():
    x, _, _, _ = synthetic(20)
    model = ex.build_mlp(3, 8, bn=True, seed=0)
    before = [b.clone() for b in model.buffers()]
    z = dyn.nonlinearity_inputs(model, x)
    assert [v.shape for v in z] == [(20, 8)] * 3
    # after BN in training mode each unit has mean 0 over the batch (gamma 1, beta 0 at initialisation)
    assert np.allclose(z[1].mean(axis=0), 0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    with pytest.raises(ValueError, match="nonlinearity|ReLU"):
        dyn.nonlinearity_inputs(torch.nn.Sequential(torch.nn.Linear(784, 3)), x)


def test_scale_invariance_orthogonal_gradient_and_norm_step():
    """BN after a Linear layer: scaling its weights leaves the loss unchanged, so the gradient is orthogonal to them,
    shrinks as 1/c, and an SGD step changes ||W||^2 by exactly lr^2 ||g||^2 (eq-dyn-norm)."""
    x, y, _, _ = synthetic(64)
    model = ex.build_mlp(2, 16, bn=True, seed=3).double()
    xs, ys = torch.from_numpy(x).double(), torch.from_numpy(y)
    layer = dyn.scale_invariant_layers(model)[1]

    def loss_and_grad():
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs), ys)
        loss.backward()
        return loss.item(), layer.weight.grad.clone()

    loss1, g1 = loss_and_grad()
    w = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.mul_(3.0)
    loss3, g3 = loss_and_grad()
    # BN's eps breaks exact invariance: relative effect ~ eps / var of the layer's output (here < 1e-4)
    assert abs(loss3 - loss1) < 1e-4 * loss1
    assert float((3.0 * g3 - g1).norm() / g1.norm()) < 1e-3
    cos = float((w * g1).sum() / (w.norm() * g1.norm()))
    assert abs(cos) < 1e-4
    lr, wd = 0.5, 0.01
    predicted = dyn.weight_norm_step(float(w.norm()), float(g1.norm()), lr, wd)
    stepped = (1 - lr * wd) * w - lr * g1
    assert abs(float(stepped.norm()) ** 2 - predicted) < 1e-3 * predicted
    # without BN no layer is scale invariant
    plain = ex.build_mlp(2, 16, bn=False, seed=3).double()
    assert dyn.scale_invariant_layers(plain) == []


def test_stopgrad_bias_grows_linearly_while_the_full_gradient_keeps_it():
    rng = np.random.default_rng(0)
    u, t = rng.standard_normal(16), rng.standard_normal(16) + 1.0
    stop = dyn.stopgrad_bias_demo(u, t, steps=50, lr=0.5, stop_gradient=True)
    full = dyn.stopgrad_bias_demo(u, t, steps=50, lr=0.5, stop_gradient=False)
    drift = np.diff(stop["b"])
    assert np.allclose(drift, drift[0]) and abs(drift[0]) > 0.1  # the same step for ever
    assert np.allclose(stop["loss"], stop["loss"][0])  # and the loss never changes
    assert np.allclose(full["b"], 0, atol=1e-12) and np.allclose(full["loss"], full["loss"][0])
    with pytest.raises(ValueError, match="same length"):
        dyn.stopgrad_bias_demo(u, t[:3], steps=1, lr=0.1, stop_gradient=True)


# ---------------------------------------------------------------- running


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("dynamics-lenet", {"train_size": 64, "test_size": 40, "batch_size": 16, "epochs": 2}),
        ("dynamics-scale", {"train_size": 64, "test_size": 40, "batch_size": 16, "steps": 8, "record_every": 4}),
        (
            "dynamics-init-scale",
            {
                "train_size": 64,
                "test_size": 40,
                "batch_size": 16,
                "steps": 6,
                "final_window": 2,
                "scales": [1e-3, 1.0],
                "net": [2, 8],
            },
        ),
        ("dynamics-resnet", {"blocks": 3, "width": 8, "batch_size": 32}),
        (
            "why-activations",
            {
                "train_size": 64,
                "test_size": 40,
                "probe_size": 20,
                "batch_size": 16,
                "steps": 8,
                "probe_every": 4,
                "deep": [3, 8, "tanh"],
            },
        ),
    ],
)
def test_run_experiment_on_synthetic_data(name, overrides, tmp_path):
    record = dyn.run_experiment(name, seeds=[0, 1], overrides=overrides, out=tmp_path, data=synthetic())
    assert record.seeds == [0, 1] and record.config == {**dyn.EXPERIMENTS[name].config, **overrides}
    assert (tmp_path / f"{name}.cpu.json").is_file()
    with pytest.raises(ValueError, match="differs"):
        dyn.check_record(record)


def test_run_experiment_rejects_unknown_names_and_overrides():
    with pytest.raises(ValueError, match="unknown experiment"):
        dyn.run_experiment("dynamics-nothing")
    with pytest.raises(ValueError, match="override"):
        dyn.run_experiment("dynamics-resnet", overrides={"depth": 3})


def test_command_lists_and_rejects(capsys):
    assert dyn.REGISTRY.main(["list"]) == 0
    assert "dynamics-lenet" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        dyn.REGISTRY.main(["run", "nothing", "--out", "/tmp/x"])
    with pytest.raises(SystemExit):
        dyn.REGISTRY.main(["run", "dynamics-resnet"])  # no --out
