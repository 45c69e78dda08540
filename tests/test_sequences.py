"""Tests of bnref.experiments.sequences on small synthetic data, and of its committed record against its definition."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_mnist

from bnref.experiments import sequences as sq
from bnref.records import load_experiments

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def synthetic(n: int = 96, n_test: int = 80, seed: int = 0):
    """Ten Gaussian blobs in 784 dimensions as MNIST-shaped features (``conftest.synthetic_mnist``)."""
    return synthetic_mnist(n, n_test, seed)


def small_task(n: int = 24, seed: int = 0):
    x = synthetic(n, 1, seed)[0]
    return sq.row_sequences(x, sq.draw_lengths(n, 14, seed))


# ---------------------------------------------------------------- record


def test_the_cpu_record_matches_its_definition():
    records = [r for r in load_experiments(RESULTS) if r.name in sq.EXPERIMENTS and r.device["type"] == "cpu"]
    assert sorted(r.name for r in records) == sorted(sq.EXPERIMENTS)
    for record in records:
        sq.check_record(record)
        assert len(record.seeds) >= 5  # the accuracy verdicts may be close
        changed = copy.deepcopy(record)
        changed.config["min_len"] = 3
        with pytest.raises(ValueError, match="min_len"):
            sq.check_record(changed)


def test_the_record_shows_ln_and_rms_independent_of_the_batch_and_bn_not():
    record = sq.load_record("sequences", RESULTS)
    for _, result in record.per_seed():
        for norm in ("none", "ln", "rms"):
            assert all(result[norm][f"dep_{w}_{m}"] == 0.0 for w in ("random", "length") for m in ("train", "eval"))
        for norm in ("bn", "bn-masked"):
            assert result[norm]["dep_random_train"] > 0 and result[norm]["dep_length_train"] > 0
            assert result[norm]["dep_random_eval"] == 0.0 and result[norm]["dep_length_eval"] == 0.0


# ---------------------------------------------------------------- the task


def test_row_sequences_cut_pad_and_mask():
    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 784)
    seqs, mask = sq.row_sequences(x, np.array([3, 28]))
    assert seqs.shape == (2, 28, 28) and mask.shape == (2, 28) and seqs.dtype == np.float32
    assert mask[0].sum() == 3 and mask[1].all()
    np.testing.assert_array_equal(seqs[0, :3], x[0].reshape(28, 28)[:3])
    assert (seqs[0, 3:] == 0).all()
    np.testing.assert_array_equal(seqs[1], x[1].reshape(28, 28))
    lengths = sq.draw_lengths(1000, 14, seed=0)
    assert lengths.min() == 14 and lengths.max() == 28
    np.testing.assert_array_equal(lengths, sq.draw_lengths(1000, 14, seed=0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sq.row_sequences(np.zeros((2, 100)), np.array([3, 4])), "shape"),
        (lambda: sq.row_sequences(np.zeros((2, 784)), np.array([0, 4])), "lengths"),
        (lambda: sq.row_sequences(np.zeros((2, 784)), np.array([3, 29])), "lengths"),
        (lambda: sq.draw_lengths(10, 30, seed=0), "min_len"),
        (lambda: sq.TokenNorm("group", 8), "norm must be one of"),
        (lambda: sq.SequenceClassifier("ln", width=1), "width"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- the normalisations


def test_bn_statistics_include_the_padding_and_masked_bn_only_the_real_tokens():
    seqs, mask = small_task()
    h = torch.randn(24, 28, 8, generator=torch.Generator().manual_seed(0)) + 3.0
    h = h * torch.as_tensor(mask)[:, :, None]  # padded tokens are zero, the real ones have mean about 3
    m = torch.as_tensor(mask)
    bn = sq.TokenNorm("bn", 8).train()
    out = bn(h, m)
    assert torch.allclose(out.mean(dim=(0, 1)), torch.zeros(8), atol=1e-5)  # over every token, padding included
    assert (out[m].mean(dim=0) > 0.1).all()  # so the real tokens are not centred
    masked = sq.TokenNorm("bn-masked", 8).train()
    out = masked(h, m)
    assert torch.allclose(out[m].mean(dim=0), torch.zeros(8), atol=1e-5)
    real = h[m].double()
    # running statistics as BatchNorm1d keeps them: momentum 0.1 from (0, 1), the unbiased variance
    k = len(real)
    torch.testing.assert_close(masked.layer.running_mean.double(), 0.1 * real.mean(0), rtol=1e-5, atol=1e-6)
    expected_var = 0.9 + 0.1 * real.var(0, unbiased=False) * k / (k - 1)
    torch.testing.assert_close(masked.layer.running_var.double(), expected_var, rtol=1e-5, atol=1e-6)


def test_ln_and_rms_are_per_token():
    h = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m = torch.ones(3, 5, dtype=torch.bool)
    ln, rms = sq.TokenNorm("ln", 8).double(), sq.TokenNorm("rms", 8).double()
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(h, m), (h - mu) / torch.sqrt(var + 1e-5))
    torch.testing.assert_close(rms(h, m), h / torch.sqrt((h**2).mean(-1, keepdim=True) + 1e-5))


def test_a_real_token_ignores_the_padding_except_through_bn():
    seqs, mask = small_task(8)
    for norm, independent in (("none", True), ("ln", True), ("rms", True), ("bn-masked", True), ("bn", False)):
        model = sq.SequenceClassifier(norm, width=8, hidden=16, seed=0).train()
        s = torch.as_tensor(seqs)
        noisy = s + torch.as_tensor(~mask)[:, :, None] * 5.0  # change only the padded steps
        a, b = model(s, torch.as_tensor(mask)), model(noisy, torch.as_tensor(mask))
        assert torch.equal(a, b) == independent, norm


def test_batch_dependence_is_exactly_zero_for_ln_and_rms_and_not_for_bn_in_training_mode():
    seqs, mask = small_task(40)
    probes = (seqs[:4], mask[:4])
    companions = [(seqs[4 + 12 * i : 16 + 12 * i], mask[4 + 12 * i : 16 + 12 * i]) for i in range(3)]
    for norm in sq.NORMS:
        model = sq.SequenceClassifier(norm, width=8, hidden=16, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        change_train, _ = sq.batch_dependence(model, probes, companions, train_mode=True)
        change_eval, flips = sq.batch_dependence(model, probes, companions, train_mode=False)
        assert change_eval == 0.0 and flips == 0.0, norm
        assert (change_train > 0) == norm.startswith("bn"), norm
        for k, v in model.state_dict().items():  # running statistics untouched
            assert torch.equal(v, before[k]), (norm, k)
    with pytest.raises(ValueError, match="two sets"):
        sq.batch_dependence(model, probes, companions[:1], train_mode=True)


def test_bn_at_batch_one_in_training_mode_uses_the_sequences_own_statistics():
    seqs, mask = small_task(6)
    y = np.arange(6) % 10
    model = sq.SequenceClassifier("bn", width=8, hidden=16, seed=0)
    acc_eval = sq.evaluate_sequences(model, seqs, mask, y, batch_size=1)
    acc_batched = sq.evaluate_sequences(model, seqs, mask, y, batch_size=6)
    assert acc_eval == acc_batched  # running statistics: one sequence at a time or all together
    n = int(mask[0].sum())
    one = (torch.as_tensor(seqs[:1, :n]), torch.as_tensor(mask[:1, :n]))
    with torch.no_grad():
        h = model.embed(one[0]) + model.position[:n]
        out = model.norm1.train()(h, one[1])
    # a batch of one: per feature, mean 0 over the sequence's own steps
    assert torch.allclose(out.mean(dim=(0, 1)), torch.zeros(8), atol=1e-5)


# ---------------------------------------------------------------- a tiny run


def test_a_tiny_run_on_synthetic_data():
    data = synthetic()
    overrides = {
        "norms": ["bn", "ln"],
        "train_size": 64,
        "test_size": 40,
        "epochs": 2,
        "batch_size": 16,
        "eval_batch": 16,
        "batch1_size": 5,
        "probes": 4,
        "companions": 8,
        "random_draws": 2,
    }
    record = sq.run_experiment("sequences", seeds=[0, 1], overrides=overrides, data=data)
    assert record.seeds == [0, 1] and record.config["torch"] == torch.__version__
    for _, result in record.per_seed():
        assert set(result) == {"bn", "ln"}
        for r in result.values():
            assert len(r["train_loss"]) == 2 and len(r["test_acc_curve"]) == 2
            assert 0 <= r["test_acc"] <= 1 and r["test_acc"] == r["test_acc_curve"][-1]
        assert result["ln"]["dep_random_train"] == 0.0 and result["bn"]["dep_random_train"] > 0
    with pytest.raises(ValueError, match="no configuration entry"):
        sq.run_experiment("sequences", seeds=[0], overrides={"depth": 3}, data=data)
