"""bnref.experiments.measures and the claims experiments that use it: calibration error, training with a
validation split, relative gradient norms, inference-mode drift, the A/A experiment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnref.experiments import claims, measures
from bnref.experiments import probes as ex
from bnref.mnist.verdicts import aa_rate


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_data(n_train: int = 400, n_test: int = 100, d: int = 784):
    """Ten Gaussian clusters in the article's input width: an easy problem."""
    rng = np.random.default_rng(3)
    centres = 3.0 * rng.normal(size=(10, d))
    y = rng.integers(0, 10, size=n_train + n_test)
    x = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_calibration_error_by_hand():
    # four predictions, confidences 0.9, 0.9, 0.65, 0.52 with 15 bins: 0.9 falls in (13/15, 14/15], 0.65 in
    # (9/15, 10/15], 0.52 in (7/15, 8/15]. Correct: first, third. Bin of 0.9: accuracy 1/2, confidence 0.9;
    # bin of 0.65: 1 vs 0.65; bin of 0.52: 0 vs 0.52.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.35, 0.65], [0.52, 0.48]])
    labels = np.array([0, 1, 1, 1])
    expected = (2 * abs(0.5 - 0.9) + abs(1 - 0.65) + abs(0 - 0.52)) / 4
    assert measures.calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    # one bin: |accuracy - mean confidence|
    assert measures.calibration_error(probs, labels, bins=1) == pytest.approx(abs(0.5 - 0.7425), abs=1e-12)
    # a confidence of exactly 1 lands in the last bin; perfect confident predictions have no error
    assert measures.calibration_error(np.eye(3), np.arange(3)) == 0.0
    with pytest.raises(ValueError):
        measures.calibration_error(probs, labels[:3])


def test_calibration_error_of_a_calibrated_model_is_small():
    # labels drawn from the model's own probabilities: ECE shrinks like 1 / sqrt(n) per bin
    rng = np.random.default_rng(0)
    logits = 3 * rng.normal(size=(200_000, 5))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    assert measures.calibration_error(p, labels) < 0.01
    # a model that always claims 99 % confidence but is right 20 % of the time
    overconfident = np.full((1000, 5), 0.0025)
    overconfident[:, 0] = 0.99
    labels = np.repeat(np.arange(5), 200)
    assert measures.calibration_error(overconfident, labels) == pytest.approx(0.99 - 0.2)


def test_validation_split_is_disjoint_and_seeded():
    x = np.arange(50, dtype=np.float32).reshape(50, 1)
    y = np.arange(50) % 10
    a = measures.validation_split(x, y, 20, 10, seed=1)
    b = measures.validation_split(x, y, 20, 10, seed=1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert len(a[0]) == 20 and len(a[2]) == 10
    assert not set(a[0][:, 0]) & set(a[2][:, 0])
    with pytest.raises(ValueError):
        measures.validation_split(x, y, 45, 10, seed=1)


def test_overfit_experiment_scores_every_epoch_in_inference_mode():
    data = synthetic_data()
    overrides = {"sizes": [[100, 3]], "val_size": 50, "batch_size": 32}
    result = claims.run_experiment("claims-overfit", seeds=[0], overrides=overrides, data=data).result(0)["100"]
    assert set(result) == {"native", "none"}
    for run in result.values():
        assert set(run) == set(measures.EPOCH_FIELDS)
        assert all(len(v) == 3 for v in run.values())
        assert all(0 <= v <= 1 for f in ("test_ece", "test_conf", "val_acc") for v in run[f])
    # without BN, inference mode is training mode: the training set's loss after the last epoch is what the
    # model gives on it, which the (epoch-averaged) training-mode loss is not; check it against a direct
    # evaluation of a network trained the same way
    x, y, xv, yv = measures.validation_split(data[0], data[1], 100, 50, seed=0)
    again = measures.train_with_validation(
        (x, y, xv, yv, data[2], data[3]), bn="none", placement="after", epochs=3, batch_size=32, lr=1e-3, seed=0
    )
    assert again == result["none"]


def test_gradient_record_holds_weight_norms():
    overrides = {
        "depth": 3,
        "width": 16,
        "batch": 32,
        "training": {
            **claims.EXPERIMENTS["claims-gradients"].config["training"],
            "train_size": 200,
            "checkpoints": [0, 2],
        },
    }
    result = claims.run_experiment("claims-gradients", seeds=[0], overrides=overrides, data=synthetic_data())
    r = result.result(0)
    for nets in r["init"].values():
        for norms in nets.values():
            assert len(norms["grad"]) == len(norms["weight"]) == 4 and min(norms["weight"]) > 0
    model = ex.build_mlp(3, 16, bn=True, init="he", seed=0)
    np.testing.assert_allclose(r["init"]["relu"]["BN, He"]["weight"], measures.weight_norms(model))
    steps = r["training"]["BN, He"]["norms"]
    assert set(steps) == {"0", "2"}
    # SGD moved the weights
    assert steps["0"]["weight"] != steps["2"]["weight"]


def test_inference_mode_drift_equals_training_mode_drift_without_bn():
    overrides = {
        "steps": 6,
        "record_every": 2,
        "train_size": 128,
        "probe_size": 32,
        "depth": 3,
        "width": 16,
        "layer": 1,
        "batch_size": 32,
        "lr": 0.01,
    }
    r = claims.run_experiment("claims-ics", seeds=[0], overrides=overrides, data=synthetic_data()).result(0)
    # no BN and no noise: the two modes compute the same function
    np.testing.assert_allclose(r["no BN"]["drift_eval"], r["no BN"]["drift"], rtol=1e-6)
    # with BN they differ: training mode standardises the probe by its own statistics, inference mode does not
    assert not np.allclose(r["BN"]["drift_eval"], r["BN"]["drift"])
    assert len(r["BN"]["drift_eval"]) == 2


def test_aa_experiment_gives_one_result_per_network_and_seed():
    overrides = {"steps": 5, "train_size": 128, "batch_size": 32, "tail": 2}
    record = claims.run_experiment("claims-aa", seeds=list(range(6)), overrides=overrides, data=synthetic_data())
    for bn in ("native", "none"):
        acc = [r[bn]["test_acc"] for _, r in record.per_seed()]
        assert len(acc) == 6 and all(0 <= a <= 1 for a in acc)
        assert 0 <= aa_rate(acc, 3) <= 1
    exp = claims.EXPERIMENTS["claims-aa"]
    assert len(exp.seeds) >= 20  # enough for A/A comparisons of 5 seeds against 5
    assert exp.config["lr"] in claims.LR_GRID


def test_close_verdicts_rest_on_five_seeds():
    for name in ("claims-small-batch", "claims-ics-fresh", "claims-overfit", "claims-gradients", "claims-ics"):
        assert len(claims.EXPERIMENTS[name].seeds) >= 5, name
