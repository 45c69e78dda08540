"""Tests of bnref.experiments.recalibration (AdaBN and test-time batch statistics under a shift) on small
synthetic data, and of its committed record against its definition."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_mnist

from bnref.experiments import recalibration as rc
from bnref.layers.precise_bn import bn_layers
from bnref.mnist.models import build_torch_model
from bnref.records import load_experiments

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def synthetic(n: int = 96, n_test: int = 64, seed: int = 0):
    """Ten Gaussian blobs in 784 dimensions as MNIST-shaped features (``conftest.synthetic_mnist``)."""
    return synthetic_mnist(n, n_test, seed)


TINY = {
    "train_size": 96,
    "batch_size": 16,
    "epochs": 1,
    "eval_size": 32,
    "adapt_sizes": [8, 32],
    "adapt_batch": 16,
    "test_batch_sizes": [2, 8],
}


# ---------------------------------------------------------------- definition and record


def test_definition_is_well_formed():
    exp = rc.get_experiment("recalibration")
    assert rc.REGISTRY.groups == {"domain-shift": ["recalibration"]}
    assert len(exp.seeds) >= 5  # some of its verdicts (AdaBN on clean data) are close
    cfg = exp.config
    for shift in cfg["shifts"].values():
        rc.shift_images(np.zeros((1, 784), np.float32), shift)  # every declared shift is one the code knows
    assert cfg["eval_size"] % max(cfg["test_batch_sizes"]) == 0  # every test batch has its full size
    assert max(cfg["adapt_sizes"]) <= 10000 - cfg["eval_size"]  # the unlabelled images are not evaluated
    assert min(cfg["test_batch_sizes"]) >= 2


def test_committed_record_matches_its_definition():
    records = [r for r in load_experiments(RESULTS, "recalibration") if r.device["type"] == "cpu"]
    assert len(records) == 1
    rc.check_record(records[0])
    changed = copy.deepcopy(records[0])
    changed.config["eval_size"] = 7
    with pytest.raises(ValueError, match="eval_size"):
        rc.check_record(changed)


def test_tiny_run_on_synthetic_data():
    rec = rc.run_experiment("recalibration", seeds=[0, 1], overrides=TINY, data=synthetic())
    for seed in (0, 1):
        res = rec.result(seed)
        assert sorted(res) == ["clean", "contrast", "noise"]
        for row in res.values():
            assert sorted(row["adabn"]) == ["32", "8"] and sorted(row["batch_stats"]) == ["2", "8"]
            accs = [row["as_is"], *row["adabn"].values(), *row["batch_stats"].values()]
            assert all(0.0 <= a <= 1.0 for a in accs)
        # AdaBN on the affine shift gives the predictions of precise BN on the clean images
        assert res["contrast"]["predictions_changed"] == 0
        # each test batch is normalised by itself, so a x + b (a > 0) leaves batch statistics' outputs unchanged up to
        # eps: the accuracies on clean and shifted images agree at every batch size but the smallest
        assert res["contrast"]["batch_stats"]["8"] == res["clean"]["batch_stats"]["8"]
    with pytest.raises(ValueError, match="no configuration entry"):
        rc.run_experiment("recalibration", seeds=[0], overrides={"shift": {}}, data=synthetic())


# ---------------------------------------------------------------- the derivation, in float64


def _float64_model(seed: int = 0) -> torch.nn.Module:
    model = build_torch_model("native", "before", seed).double()
    for _, bn in bn_layers(model):
        # the derivation's exact case is eps = 0, which torch 2.13 refuses in training mode ("eps must be positive");
        # 1e-30 next to variances of order 1 changes nothing in float64. eps's own effect is measured in the chapter.
        bn.eps = 1e-30
    return model.eval()


def _first_bn_output(model: torch.nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """The first BN layer's output on ``xs`` in inference mode (with the statistics it holds)."""
    seen = []
    handle = bn_layers(model)[0][1].register_forward_hook(lambda _m, _inputs, out: seen.append(out.detach()))
    with torch.no_grad():
        model.eval()(xs)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("scale, offset, sign", [(0.5, 0.4, 1.0), (3.0, -1.0, 1.0), (-1.0, 1.0, -1.0)])
def test_adabn_undoes_an_affine_shift_exactly_at_the_first_bn_layer(scale, offset, sign):
    x, _, _, _ = synthetic(n=128)
    xs = torch.from_numpy(x).double()
    model = _float64_model()
    out_c = _first_bn_output(rc.adabn(model, xs, batch_size=32), xs)
    out_s = _first_bn_output(rc.adabn(model, scale * xs + offset, batch_size=32), scale * xs + offset)
    # a > 0: the same output; a < 0: the normalised value changes sign (beta = 0 at initialisation). Float64 values
    # of size ~3 after a 784-term sum: rounding is ~1e-13, far below the tolerance; a missed shift would be O(1).
    assert float(out_c.abs().max()) > 1.0
    assert torch.allclose(out_s, sign * out_c, rtol=0, atol=1e-9)


def test_adabn_leaves_the_model_alone_and_estimates_the_shifted_mean():
    x, _, _, _ = synthetic(n=128)
    model = build_torch_model("native", "before", 0).eval()
    before = [b.clone() for b in model.buffers()]
    adapted = rc.adabn(model, 0.5 * x + 0.4, batch_size=32)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    z = rc.first_bn_input(model, 0.5 * x + 0.4)  # the first BN layer's input: no BN before it
    mean = bn_layers(adapted)[0][1].running_mean.double().numpy()
    np.testing.assert_allclose(mean, z.mean(axis=0), rtol=0, atol=1e-5 * np.abs(z).max())


# ---------------------------------------------------------------- test-time batch statistics


def test_batch_stat_accuracy_is_a_train_mode_forward_and_learns_nothing():
    _, _, xt, yt = synthetic()
    model = build_torch_model("native", "before", 0).eval()
    buffers = [b.clone() for b in model.buffers()]
    acc = rc.batch_stat_accuracy(model, xt, yt, batch_size=len(xt))
    with torch.no_grad():
        expected = float((model.train()(torch.from_numpy(xt)).argmax(dim=1).numpy() == yt).mean())
    model.eval()
    for b, saved in zip(model.buffers(), buffers, strict=True):
        b.copy_(saved)
    assert acc == expected
    rc.batch_stat_accuracy(model, xt, yt, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert not model.training


def test_bad_input_raises_value_error_naming_the_problem():
    _, _, xt, yt = synthetic()
    model = build_torch_model("native", "before", 0)
    with pytest.raises(ValueError, match="beta"):
        rc.batch_stat_accuracy(model, xt, yt, batch_size=1)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        rc.batch_stat_accuracy(model, xt[:10], yt[:10], batch_size=8)
    with pytest.raises(ValueError, match="kind"):
        rc.shift_images(xt, {"kind": "rotate"})
    with pytest.raises(ValueError, match="parameters"):
        rc.shift_images(xt, {"kind": "affine", "scale": 2.0})
    with pytest.raises(ValueError, match="std"):
        rc.shift_images(xt, {"kind": "noise", "std": -1.0})
    with pytest.raises(ValueError, match="no BatchNorm"):
        rc.adabn(torch.nn.Linear(784, 10), xt, batch_size=8)


def test_shift_images():
    _, _, xt, _ = synthetic()
    np.testing.assert_array_equal(rc.shift_images(xt, {"kind": "none"}), xt)
    np.testing.assert_allclose(rc.shift_images(xt, {"kind": "affine", "scale": 0.5, "offset": 0.4}), 0.5 * xt + 0.4)
    noisy = rc.shift_images(xt, {"kind": "noise", "std": 0.5}, seed=3)
    np.testing.assert_array_equal(noisy, rc.shift_images(xt, {"kind": "noise", "std": 0.5}, seed=3))
    # 64 * 784 = 50,176 draws: the sample std of the noise is within 2 % of 0.5 (its standard error is 0.3 %)
    assert abs(float((noisy - xt).std()) - 0.5) < 0.01
