"""Tests of bnref.experiments.diagnostics: saturation, dead units, update-to-data ratios, histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnref.experiments import diagnostics as dg
from bnref.experiments.dynamics import train_steps


def tanh_net(scale: float = 1.0, bn: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(20, 30), *([nn.BatchNorm1d(30)] if bn else []), nn.Tanh(), nn.Linear(30, 5)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net[0].weight.mul_(scale)
    return net


def batch(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 20)).astype(np.float32), rng.integers(0, 5, n)


def test_saturated_fraction_counts_outputs_beyond_the_threshold():
    x, _ = batch()
    net = tanh_net()
    t = torch.tanh(net[0](torch.from_numpy(x))).detach().numpy()
    assert dg.saturated_fraction(net, x) == {"1": pytest.approx(np.mean(np.abs(t) > 0.97))}
    assert dg.saturated_fraction(tanh_net(scale=100.0), x)["1"] > 0.9  # huge pre-activations saturate
    assert dg.saturated_fraction(tanh_net(scale=100.0, bn=True), x)["2"] < 0.05  # BN brings them back


def test_dead_fraction_finds_units_zero_on_every_example():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight.fill_(0.1)
        net[0].bias.copy_(torch.tensor([-100.0, -100.0, 0.0, 0.0, 0.0, 1.0]))  # two units can never fire
    x = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    assert dg.dead_fraction(net, x) == {"1": pytest.approx(2 / 6)}


def test_functions_leave_the_model_as_it_was():
    x, y = batch()
    net = tanh_net(bn=True)
    net.eval()
    before = [t.clone() for t in (*net.parameters(), *net.buffers())]
    dg.activation_histograms(net, x)
    dg.gradient_histograms(net, x, y)
    dg.saturated_fraction(net, x)
    assert not net.training
    assert all(p.grad is None for p in net.parameters())
    for a, b in zip(before, (*net.parameters(), *net.buffers()), strict=True):
        assert torch.equal(a, b)


def test_histograms_match_numpy_and_the_autograd_gradient():
    x, y = batch()
    net = tanh_net()
    h = dg.activation_histograms(net, x, bins=10, value_range=(-1, 1))
    t = torch.tanh(net[0](torch.from_numpy(x))).detach().double().numpy()
    np.testing.assert_allclose(h.fractions[0], np.histogram(t, np.linspace(-1, 1, 11))[0] / t.size)
    assert h.names == ["1"] and h.fractions.shape == (1, 10) and h.std[0] == pytest.approx(t.std())
    g = dg.gradient_histograms(net, x, y, bins=7)
    tt = torch.tanh(net[0](torch.from_numpy(x))).detach().requires_grad_(True)
    nn.functional.cross_entropy(net[2](tt), torch.from_numpy(y)).backward()
    assert g.mean[0] == pytest.approx(float(tt.grad.double().mean()), abs=1e-9)
    assert g.std[0] == pytest.approx(float(tt.grad.double().std(unbiased=False)), rel=1e-6)
    np.testing.assert_allclose(g.fractions.sum(axis=1), 1.0)


def test_update_to_data_ratio_is_log10_of_the_step_over_the_weight():
    x, y = batch()
    net = tanh_net()
    nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    ratios = dg.update_to_data_ratios(net, lr=0.1)
    assert list(ratios) == ["0.weight", "2.weight"]  # biases left out
    w = net[0].weight.detach().double()
    expected = np.log10(0.1 * float(net[0].weight.grad.double().norm()) / float(w.norm()))
    assert ratios["0.weight"] == pytest.approx(expected, abs=1e-12)


def test_recorder_as_a_training_hook():
    x, y = batch(200)
    net = tanh_net()
    recorder = dg.UpdateRatioRecorder(net, lr=0.05, every=5)
    train_steps(net, x, y, steps=20, batch_size=50, lr=0.05, seed=0, after_backward=recorder)
    assert recorder.steps.tolist() == [0, 5, 10, 15]
    assert recorder.ratios.shape == (4, 2) and np.isfinite(recorder.ratios).all()
    # a ten times larger learning rate is one decade higher
    big = dg.UpdateRatioRecorder(net, lr=0.5)
    big()
    small = dg.UpdateRatioRecorder(net, lr=0.05)
    small()
    np.testing.assert_allclose(big.ratios - small.ratios, 1.0)


def test_bad_input_raises_value_error_naming_the_problem():
    x, y = batch()
    relu_only = nn.Sequential(nn.Linear(20, 5), nn.ReLU())
    with pytest.raises(ValueError, match="no Tanh"):
        dg.saturated_fraction(relu_only, x)
    with pytest.raises(ValueError, match="no ReLU"):
        dg.dead_fraction(tanh_net(), x)
    with pytest.raises(ValueError, match="no weight matrix"):
        dg.update_to_data_ratios(nn.Sequential(nn.BatchNorm1d(3)), lr=0.1)
    with pytest.raises(ValueError, match="threshold"):
        dg.saturated_fraction(tanh_net(), x, threshold=1.5)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        dg.activation_histograms(tanh_net(), bad)
    net = tanh_net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")  # a diverged weight
    with pytest.raises(ValueError, match="non-finite"):
        dg.layer_outputs(net, x)
    with pytest.raises(ValueError, match="no gradient"):
        dg.update_to_data_ratios(tanh_net(), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        dg.update_to_data_ratios(tanh_net(), lr=-1.0)
    with pytest.raises(ValueError, match="bins"):
        dg.activation_histograms(tanh_net(), x, bins=0)
    with pytest.raises(ValueError, match="every"):
        dg.UpdateRatioRecorder(tanh_net(), lr=0.1, every=0)
