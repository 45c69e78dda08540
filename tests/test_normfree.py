"""Tests of bnref.experiments.normfree on small synthetic data, and of its committed record against its definition."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_mnist

from bnref.experiments import dynamics as dyn
from bnref.experiments import normfree as nf

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def synthetic(n: int = 96, n_test: int = 40, seed: int = 0):
    """Ten Gaussian blobs in 784 dimensions as MNIST-shaped features (``conftest.synthetic_mnist``)."""
    return synthetic_mnist(n, n_test, seed)


# ---------------------------------------------------------------- the record


def test_the_committed_record_matches_its_definition():
    record = nf.load_record("normaliser-free", RESULTS)
    nf.check_record(record)
    assert len(record.seeds) >= 5
    cfg = record.config
    for _, result in record.per_seed():
        for depth, blocks in cfg["depths"].items():
            for norm in cfg["norms"]:
                entry = result[f"{depth}-{norm}"]
                assert len(entry["init_rms"]) == blocks + 1
                assert len(entry["init_grad_norms"]) == 2 * blocks + 2
                assert sorted(entry["runs"]) == sorted(f"{lr:g}" for lr in cfg["lrs"])


def test_check_record_rejects_a_changed_definition():
    record = nf.load_record("normaliser-free", RESULTS)
    changed = copy.deepcopy(record)
    changed.config["lrs"] = [0.1]
    with pytest.raises(ValueError, match="lrs"):
        nf.check_record(changed)


def test_definition_is_well_formed():
    exp = nf.get_experiment("normaliser-free")
    assert len(exp.seeds) >= 5
    assert set(exp.config["norms"]) == set(nf.NORMS)
    assert exp.config["steps"] % exp.config["probe_every"] == 0
    assert exp.config["steps"] % exp.config["ratio_every"] == 0
    assert list(nf.REGISTRY.groups) == ["normfree"]


# ---------------------------------------------------------------- networks


def test_bn_version_computes_what_the_dynamics_resnet_computes():
    ours = nf.build_residual(3, 16, "bn", seed=4)
    theirs = dyn.build_resnet(3, 16, last_gamma=1.0, seed=4)
    ours.load_state_dict(theirs.state_dict())  # same parameter and buffer names
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.rand(32, 784, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_all_versions_share_their_weights_and_skipinit_starts_as_the_identity():
    nets = {norm: nf.build_residual(4, 16, norm, seed=1) for norm in nf.NORMS}
    weights = {norm: [lin.weight for lin in dyn.linear_layers(m)] for norm, m in nets.items()}
    for w_none, w_bn, w_skip in zip(weights["none"], weights["bn"], weights["skipinit"], strict=True):
        assert torch.equal(w_none, w_bn) and torch.equal(w_none, w_skip)
    x = np.random.default_rng(0).random((64, 784)).astype(np.float32)
    rms = nf.block_rms(nets["skipinit"], x)
    assert rms.shape == (5,)
    np.testing.assert_allclose(rms, rms[0], rtol=1e-12)  # every block is the identity at alpha = 0
    grown = nf.block_rms(nets["none"], x)
    assert np.all(np.diff(grown) > 0)  # without normalisation the signal grows block after block
    alphas = [b.alpha for b in nets["skipinit"][3:-1]]
    assert all(float(a.detach()) == 0.0 and a.requires_grad for a in alphas)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="norm"):
        nf.build_residual(2, 8, "layer")
    with pytest.raises(ValueError, match="blocks"):
        nf.build_residual(0, 8, "bn")
    with pytest.raises(ValueError, match="norm"):
        nf.NormFreeBlock(8, "batch")
    with pytest.raises(ValueError, match="override|entry"):
        nf.run_experiment("normaliser-free", seeds=[0], overrides={"depth": 3}, data=synthetic())


def test_first_divergence():
    assert nf.first_divergence(np.array([2.3, 1.0, 0.5])) is None
    assert nf.first_divergence(np.array([2.3, np.inf, np.nan])) == 1


# ---------------------------------------------------------------- a tiny run


def test_a_tiny_run_records_every_field_and_marks_divergence():
    overrides = {
        "depths": {"shallow": 1, "deep": 3},
        "width": 8,
        "lrs": [0.01, 1e6],  # the second diverges whatever the network
        "train_size": 64,
        "test_size": 40,
        "probe_size": 20,
        "batch_size": 16,
        "steps": 8,
        "probe_every": 4,
        "ratio_every": 2,
    }
    result = nf.run_experiment("normaliser-free", seeds=[0], overrides=overrides, data=synthetic()).result(0)
    assert sorted(result) == sorted(f"{d}-{n}" for d in ("shallow", "deep") for n in nf.NORMS)
    ok = result["deep-none"]["runs"]["0.01"]
    assert ok["diverged_at"] is None and 0 <= ok["test_acc"] <= 1
    assert np.shape(ok["update_ratio"]) == (4, 8)  # 8 weight matrices, steps 0, 2, 4, 6
    assert len(ok["loss"]) == 2 and len(ok["dead"]) == 7 and len(ok["w_growth"]) == 8
    # SkipInit's alpha = 0 blocks every gradient into the branches at the first step: ratio -inf there
    first = np.asarray(result["deep-skipinit"]["runs"]["0.01"]["update_ratio"], dtype=float)[0]
    assert np.isneginf(first[1:-1]).all() and np.isfinite(first[[0, -1]]).all()
    for key in ("deep-none", "deep-skipinit"):
        bad = result[key]["runs"]["1e+06"]
        assert bad["diverged_at"] is not None
        assert bad["test_acc"] is None and bad["update_ratio"] is None
