"""Tests of bnref.layers.precise_bn: precise BN statistics against the population statistics of each BN layer's inputs.

The reference is independent of the helper: forward pre-hooks collect every value each BN layer sees over the
same batches (training mode), and NumPy computes their mean and unbiased variance in float64 over all of them at
once. The helper computes per-batch moments and pools them; the two agree up to float64 rounding plus the
float32 rounding of storing the result in the layer's buffers (bounds below, appendix ch-bounds).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bnref.experiments import dynamics as dyn
from bnref.layers.precise_bn import bn_layers, pooled_statistics, precise_bn
from bnref.testing import reduction_error, unit_roundoff


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one PyTorch thread is faster than two on a loaded 2-core machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained_lenet(seed: int = 0) -> tuple[nn.Module, np.ndarray]:
    """A BN LeNet after a few SGD steps on random images (its EMA statistics are then not the population's)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(96, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=96)
    model = dyn.build_lenet(bn=True, seed=seed)
    dyn.train_steps(model, x, y, steps=6, batch_size=16, lr=0.1, seed=seed)
    return model, x


def _layer_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Every value each BN layer receives over ``batches`` in training mode, as (values, C) float64."""
    seen: dict[str, list[np.ndarray]] = {name: [] for name, _ in bn_layers(model)}
    handles = [
        m.register_forward_pre_hook(
            lambda _m, inp, name=name: seen[name].append(
                inp[0].detach().double().transpose(0, 1).reshape(inp[0].shape[1], -1).T.numpy()
            )
        )
        for name, m in bn_layers(model)
    ]
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    return {name: np.concatenate(v) for name, v in seen.items()}


def _bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel absolute bounds on the stored mean and variance.

    Storing a float64 result in a float32 buffer rounds it by at most u32 relative (unit roundoff). The float64
    sums over M values add at most reduction_error(float64, M) times their condition scale: sum |x| / M for the
    mean; for the pooled variance, E[v_k + mu_k^2] - mu^2 cancels, so the scale is E[x^2] + mu^2 (eq-bound-unit).
    """
    M = len(values)
    mean = values.mean(axis=0)
    var = values.var(axis=0, ddof=1)
    e64 = reduction_error("float64", M)
    mean_bound = unit_roundoff("float32") * np.abs(mean) + e64 * np.abs(values).mean(axis=0)
    var_bound = unit_roundoff("float32") * var + e64 * ((values**2).mean(axis=0) + mean**2)
    return mean_bound, var_bound


def test_precise_statistics_are_the_population_statistics_of_each_layers_inputs():
    model, x = _trained_lenet()
    # collected first: a training-mode pass moves the running statistics (the outputs do not depend on them)
    inputs = _layer_inputs(model, [torch.from_numpy(x[i : i + 16]) for i in range(0, 96, 16)])
    stats = precise_bn(model, x, batch_size=16)
    assert stats.batches == 6 and stats.batch_size == 16
    assert len(inputs) == 4
    for name, layer in bn_layers(model):
        values = inputs[name]
        mean_bound, var_bound = _bounds(values)
        exact_mean, exact_var = values.mean(axis=0), values.var(axis=0, ddof=1)
        assert np.all(np.abs(layer.running_mean.double().numpy() - exact_mean) <= mean_bound), name
        assert np.all(np.abs(layer.running_var.double().numpy() - exact_var) <= var_bound), name
        assert np.all(np.abs(stats[name]["var"] - exact_var) <= var_bound), name  # before float32 storage
        # the EMA estimate after 6 steps is far from the population: the test can tell them apart
        assert np.any(np.abs(stats[name]["ema_var"] - exact_var) > 100 * var_bound), name


def test_planted_fault_averaging_the_batch_variances_misses_the_spread_of_the_batch_means():
    """The estimator PyTorch's momentum=None accumulates (mean of unbiased batch variances) fails the bound."""
    model, x = _trained_lenet(1)
    batches = [torch.from_numpy(x[i : i + 16]) for i in range(0, 96, 16)]
    inputs = _layer_inputs(model, batches)
    caught = 0
    for name, _ in bn_layers(model):
        values = inputs[name]
        per_batch = values.reshape(len(batches), -1, values.shape[1])  # (K, m, C), batches in order
        wrong_var = per_batch.var(axis=1, ddof=1).mean(axis=0)
        _, var_bound = _bounds(values)
        caught += bool(np.any(np.abs(wrong_var - values.var(axis=0, ddof=1)) > var_bound))
    assert caught == 4


def test_pooled_statistics_of_unequal_batch_means_equal_numpy_over_all_values():
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=k, scale=1 + k, size=(10, 3)) for k in range(5)]  # (m, C) each, means differ
    means = np.stack([b.mean(axis=0) for b in batches])
    variances = np.stack([b.var(axis=0) for b in batches])
    mu, var = pooled_statistics(means, variances, 10)
    everything = np.concatenate(batches)
    # float64 rounding only: 50 values whose squares are at most ~50 (eq-bound-unit)
    tol = reduction_error("float64", 50) * (everything**2).mean(axis=0).max()
    np.testing.assert_allclose(mu, everything.mean(axis=0), rtol=0, atol=tol)
    np.testing.assert_allclose(var, everything.var(axis=0, ddof=1), rtol=0, atol=tol)


def test_modes_parameters_and_counters_are_left_as_they_were():
    model, x = _trained_lenet()
    model.eval()
    model[2].train()  # a mixed state must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    params = {k: v.clone() for k, v in model.named_parameters()}
    tracked = {name: int(m.num_batches_tracked) for name, m in bn_layers(model)}
    before = copy.deepcopy(model.state_dict())
    stats = precise_bn(model, x, batch_size=32, num_batches=2)
    assert stats.batches == 2
    assert {name: m.training for name, m in model.named_modules()} == flags
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    assert {name: int(m.num_batches_tracked) for name, m in bn_layers(model)} == tracked
    for name, m in bn_layers(model):
        np.testing.assert_array_equal(stats[name]["ema_mean"], before[f"{name}.running_mean"].double().numpy())
        assert not torch.equal(m.running_mean, before[f"{name}.running_mean"])


def test_an_iterable_of_batches_gives_the_same_statistics_as_the_array():
    model, x = _trained_lenet()
    twin = copy.deepcopy(model)
    a = precise_bn(model, x, batch_size=24)
    b = precise_bn(twin, (torch.from_numpy(x[i : i + 24]) for i in range(0, 96, 24)))
    for name in a:
        np.testing.assert_array_equal(a[name]["mean"], b[name]["mean"])
        np.testing.assert_array_equal(a[name]["var"], b[name]["var"])


def test_bad_input_raises_named_value_errors():
    model, x = _trained_lenet()
    with pytest.raises(ValueError, match="no BatchNorm"):
        precise_bn(dyn.build_lenet(bn=False), x, batch_size=16)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        precise_bn("model", x, batch_size=16)
    with pytest.raises(ValueError, match="fewer than one batch"):
        precise_bn(model, x[:0], batch_size=16)
    with pytest.raises(ValueError, match="no batch"):
        precise_bn(model, [])
    with pytest.raises(ValueError, match="batch_size"):
        precise_bn(model, x)
    with pytest.raises(ValueError, match="same number of examples"):
        precise_bn(model, [torch.from_numpy(x[:16]), torch.from_numpy(x[16:24])])
    with pytest.raises(ValueError, match="num_batches"):
        precise_bn(model, x, batch_size=16, num_batches=7)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        precise_bn(model, x, batch_size=1)
    untracked = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats"):
        precise_bn(untracked, np.ones((8, 4)), batch_size=4)
    with pytest.raises(ValueError, match="K >= 1"):
        pooled_statistics(np.zeros((0, 3)), np.zeros((0, 3)), 4)
