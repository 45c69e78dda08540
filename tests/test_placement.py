"""Tests of bnref.experiments.placement on small synthetic data, and of its committed records against their
definitions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_mnist

from bnref.experiments import placement as pl
from bnref.layers.precise_bn import precise_bn
from bnref.records import load_experiments

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def synthetic(n: int = 192, n_test: int = 40, seed: int = 0):
    """Ten Gaussian blobs in 784 dimensions as MNIST-shaped features (``conftest.synthetic_mnist``)."""
    return synthetic_mnist(n, n_test, seed)


def bn_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------- records


def test_every_experiment_has_a_cpu_record_matching_its_definition():
    records = {r.name: r for r in load_experiments(RESULTS) if r.name in pl.EXPERIMENTS and r.device["type"] == "cpu"}
    assert sorted(records) == sorted(pl.EXPERIMENTS)
    for record in records.values():
        pl.check_record(record)  # raises on a config or seed mismatch
        assert len(record.seeds) >= 5  # the verdicts here may be close: the rule needs 5 seeds for those


def test_check_record_rejects_a_changed_config():
    record = copy.deepcopy(pl.load_record("dropout", RESULTS))
    record.config["keeps"] = [0.9]
    with pytest.raises(ValueError, match="keeps"):
        pl.check_record(record)


# ---------------------------------------------------------------- networks


def test_placements_put_bn_before_or_after_the_relu():
    for build in (pl.build_article, pl.build_placed_lenet):
        for place in ("before", "after"):
            mods = [m for m in build(place, seed=0).modules() if not isinstance(m, torch.nn.Sequential)]
            pairs = list(zip(mods[:-1], mods[1:], strict=True))
            bn_then_relu = sum(isinstance(a, torch.nn.modules.batchnorm._BatchNorm) and isinstance(b, torch.nn.ReLU)
                               for a, b in pairs)  # fmt: skip
            relu_then_bn = sum(isinstance(a, torch.nn.ReLU) and isinstance(b, torch.nn.modules.batchnorm._BatchNorm)
                               for a, b in pairs)  # fmt: skip
            n_bn = len(bn_modules(build(place, seed=0)))
            assert n_bn > 0 and (bn_then_relu, relu_then_bn) == ((n_bn, 0) if place == "before" else (0, n_bn))
        assert not bn_modules(build("none", seed=0))
        with pytest.raises(ValueError, match="placement"):
            build("between", seed=0)


def test_next_layer_inputs_zero_mean_after_relu_bn_and_non_negative_before():
    x, _, _, _ = synthetic(256)
    after = pl.next_layer_inputs(pl.build_article("after", seed=0), x)
    before = pl.next_layer_inputs(pl.build_article("before", seed=0), x)
    assert [len(s["mean"]) for s in after] == [64, 32]
    for s in after:  # BN's output over the batch: mean 0, std sqrt(var / (var + eps)), below 1 by at most eps / var
        assert np.abs(s["mean"]).max() < 1e-5 and np.all(s["std"] <= 1 + 1e-6)
        assert s["negative"] > 0
    for s in before:  # ReLU of BN's output: non-negative; at gamma 1, beta 0 a standard normal's half-rectified mean
        assert s["negative"] == 0 and np.all(s["mean"] > 0)
    bn = pl.build_article("after", seed=0)
    saved = [b.running_var.clone() for b in bn_modules(bn)]
    pl.next_layer_inputs(bn, x)
    assert all(torch.equal(a, b.running_var) for a, b in zip(saved, bn_modules(bn), strict=True))
    with pytest.raises(ValueError, match="fewer than two"):
        pl.next_layer_inputs(torch.nn.Sequential(torch.nn.Linear(784, 3)), x)


def test_dropout_arms_and_dropout_off():
    counts = {arm: sum(isinstance(m, torch.nn.Dropout) for m in pl.build_dropout_mlp(arm, keep=0.5)) for arm in
              pl.DROPOUT_ARMS}  # fmt: skip
    assert counts == {"none": 0, "before-bn": 2, "after-last-bn": 1}
    model = pl.build_dropout_mlp("before-bn", keep=0.5, width=16).train()
    x = torch.rand(32, 784)
    with pl.dropout_off(model):
        assert torch.equal(model(x), model(x))  # training mode, yet deterministic
    assert [m.p for m in model if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    with pytest.raises(ValueError, match="keep"):
        pl.build_dropout_mlp("before-bn", keep=0.0)
    with pytest.raises(ValueError, match="arm"):
        pl.build_dropout_mlp("everywhere", keep=0.5)


def test_dropout_variance_formula_against_sampled_masks():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=(200_000, 3)) + np.array([0.0, 1.0, 3.0])
    p = 0.6
    train, inference = pl.dropout_variance(x, p)
    dropped = x * (rng.random(x.shape) < p) / p
    # sample variances of 2e5 draws: relative standard error about sqrt(2 / n) ~ 0.003 times a kurtosis factor
    assert np.allclose(dropped.var(axis=0), train, rtol=0.03)
    assert np.allclose(inference, x.var(axis=0))
    assert np.allclose(train - inference, (1 - p) / p * (x**2).mean(axis=0))
    with pytest.raises(ValueError, match="keep"):
        pl.dropout_variance(x, 1.5)


def test_predicted_train_variance_through_a_linear_layer():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal((100_000, 5)) @ rng.standard_normal((5, 5)))  # correlated, non-negative
    w = rng.standard_normal((4, 5))
    p = 0.5
    train, inference = pl.predicted_train_variance(w, x, p)
    z = (x * (rng.random(x.shape) < p) / p) @ w.T
    assert np.allclose(z.var(axis=0), train, rtol=0.03)
    assert np.allclose(inference, (x @ w.T).var(axis=0))
    assert np.allclose(pl.predicted_train_variance(np.eye(5), x, p)[0], pl.dropout_variance(x, p)[0])
    with pytest.raises(ValueError, match="agree"):
        pl.predicted_train_variance(w, x[:, :3], p)


def test_precise_bn_with_dropout_off_gives_the_inference_variance():
    x, _, _, _ = synthetic(256)
    model = pl.build_dropout_mlp("before-bn", keep=0.5, width=16, seed=0)
    on, off = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(0)
    stats_on = precise_bn(on, x, batch_size=64)
    with pl.dropout_off(off):
        stats_off = precise_bn(off, x, batch_size=64)
    # the BN layer behind the first dropout: its input variance is larger with dropout on
    assert np.all(stats_on["5"]["var"] > stats_off["5"]["var"])
    # the first BN sees no dropout: the same statistics either way
    assert np.allclose(stats_on["1"]["var"], stats_off["1"]["var"])


# ---------------------------------------------------------------- runs


@pytest.mark.parametrize(
    "name, overrides",
    [
        (
            "placement",
            {
                "article": {"train_size": 128, "batch_size": 32, "epochs": 1, "lr": 0.02},
                "lenet": {"train_size": 64, "batch_size": 32, "epochs": 1, "lr": 0.02},
                "test_size": 20,
                "probe_size": 16,
                "curve_every": 2,
            },
        ),
        ("dropout", {"train_size": 1024, "test_size": 20, "epochs": 1, "width": 16, "batch_size": 32}),
    ],
)
def test_run_experiment_on_synthetic_data(name, overrides, tmp_path):
    data = synthetic(overrides["train_size"]) if name == "dropout" else synthetic()
    record = pl.run_experiment(name, seeds=[0], overrides=overrides, out=tmp_path, data=data)
    assert (tmp_path / f"{name}.cpu.json").is_file()
    r = record.result(0)
    if name == "placement":
        assert sorted(r) == sorted(f"{n}-{p}" for n in ("article", "lenet") for p in pl.PLACES)
        assert len(r["lenet-after"]["inputs_end"]) == 4 and len(r["article-before"]["test_acc"]) == 1
    else:
        assert sorted(r["0.5"]) == ["after-last-bn", "before-bn", "precise-off", "precise-on"]
        for layer in r["0.5"]["before-bn"]["layers"].values():
            # dropout on: the running variance is the larger; the derivation predicts it. The recomputation's
            # variance is a sample variance of M = 1024 values: relative standard error about sqrt(2 / M) = 0.044
            # (more for skewed values, and the masks add their own); 0.25 is over five of them
            assert np.all(np.asarray(layer["train_var"]) > np.asarray(layer["inference_var"]))
            assert np.allclose(layer["predicted_var"], layer["train_var"], rtol=0.25)
    with pytest.raises(ValueError, match="differs"):
        pl.check_record(record)


def test_run_experiment_rejects_unknown_names_and_overrides():
    with pytest.raises(ValueError, match="unknown experiment"):
        pl.run_experiment("placement-nothing")
    with pytest.raises(ValueError, match="override"):
        pl.run_experiment("dropout", overrides={"depth": 3})
