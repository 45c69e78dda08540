"""Weight transfer between PyTorch and Keras BN layers (``bnref.layers.transfer``), both ways, native and from scratch.

Tolerances come from the error model of ``bnref.testing`` (derived in the book's appendix "How the checks
are bounded", ``ch-bounds``): an inference output is a handful of elementwise roundings, so each side is
within ``C eps32 (|gamma| (|x| + |mean|) / sigma + |beta|)`` of exact (``inference_bound``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import bnref  # noqa: E402
from bnref import KERAS, PYTORCH  # noqa: E402
from bnref.layers import transfer  # noqa: E402
from bnref.layers.keras_bn import BatchNormalization  # noqa: E402
from bnref.layers.torch_bn import BatchNorm  # noqa: E402
from bnref.testing import inference_bound, reduction_error  # noqa: E402


def _trained_torch(cls, x: np.ndarray):
    bn = cls(4)
    for k in range(3):
        bn.train()(torch.tensor(x * (k + 1) + k))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
        bn.bias.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    return bn


def _inference_tol(bn, x) -> float:
    """Relative bound on one side's float32 inference output ``gamma (x - mean) / sqrt(var + eps) + beta``.

    The elementwise roundings of ``bnref.testing.inference_bound`` (appendix ch-bounds); the running
    statistics are copied exactly, so their carried bounds are 0.
    """
    g, b = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    x64 = np.asarray(x, np.float64)
    bound = inference_bound(x64, g, b, mean, var, bn.eps, np.zeros(4), np.zeros(4), "float32")
    y = g * (x64 - mean) / np.sqrt(var + bn.eps) + b
    return float(np.max(bound)) / float(np.max(np.abs(y)))


@pytest.mark.parametrize("torch_cls", [torch.nn.BatchNorm1d, BatchNorm], ids=["torch native", "torch scratch"])
@pytest.mark.parametrize(
    "keras_cls", [keras.layers.BatchNormalization, BatchNormalization], ids=["keras native", "keras scratch"]
)
def test_weight_transfer_both_ways_inference_agrees(torch_cls, keras_cls):
    x = np.random.default_rng(13).normal(2.0, 3.0, size=(16, 4)).astype(np.float32)
    bn = _trained_torch(torch_cls, x)
    layer = keras_cls()
    layer.build(x.shape)
    gap_before = transfer.inference_gap(bn, layer, x)
    transfer.torch_to_keras(bn, layer)
    assert layer.epsilon == bn.eps and abs(layer.momentum - (1 - bn.momentum)) < 1e-15
    tol = _inference_tol(bn, x)
    assert transfer.inference_gap(bn, layer, x) <= tol < gap_before
    back = torch_cls(4)
    transfer.keras_to_torch(layer, back)
    assert back.eps == layer.epsilon and abs(back.momentum - (1 - layer.momentum)) < 1e-15
    assert transfer.inference_gap(back, layer, x) <= tol
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(back, name), getattr(bn, name)), name


def test_eps_mismatch_after_transfer_is_measurable():
    """Moving the weights but not eps (Keras keeps 1e-3): inference outputs differ by ~ eps/(2 var)."""
    x = np.random.default_rng(14).normal(0.0, 0.05, size=(64, 4)).astype(np.float32)  # var ~ 2.5e-3
    bn = _trained_torch(torch.nn.BatchNorm1d, x)
    layer = keras.layers.BatchNormalization()
    layer.build(x.shape)
    transfer.torch_to_keras(bn, layer)
    layer.epsilon = KERAS.eps  # the slip
    # the exact gap, in float64, between the two inference maps that differ only in eps
    g, b = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    x64 = x.astype(np.float64)
    expected = bnref.relative_error(
        g * (x64 - mean) / np.sqrt(var + PYTORCH.eps) + b, g * (x64 - mean) / np.sqrt(var + KERAS.eps) + b
    )
    gap = transfer.inference_gap(bn, layer, x)
    tol = _inference_tol(bn, x)
    assert gap > 100 * tol
    assert abs(gap - expected) <= 2 * tol  # each side's float32 error is within tol (relative to max|y|)


def test_weight_transfer_training_parity_drifts_by_the_variance_bias():
    """After a transfer with matched eps and momentum, one training step moves the running variances by
    w * m/(m-1) var (torch) vs w * var (Keras): the drift is exactly the unbiased/biased difference."""
    rng = np.random.default_rng(15)
    bn = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    layer = keras.layers.BatchNormalization(dtype="float64")
    layer.build((8, 3))
    transfer.torch_to_keras(bn, layer)
    x = rng.normal(size=(8, 3))
    bn.train()(torch.tensor(x))
    layer(x, training=True)
    drift = bn.running_var.numpy() - layer.moving_variance.numpy()
    predicted = PYTORCH.momentum * x.var(0) * (8 / 7 - 1)
    assert np.max(np.abs(drift - predicted)) <= reduction_error("float64", 8) * 4  # 2 updates of O(1) values
    assert np.min(np.abs(drift)) > 1e-4


def test_transfer_validates():
    layer = keras.layers.BatchNormalization()
    with pytest.raises(ValueError, match="not built"):
        transfer.torch_to_keras(torch.nn.BatchNorm1d(3), layer)
    layer.build((2, 4))
    with pytest.raises(ValueError, match="channel counts differ"):
        transfer.torch_to_keras(torch.nn.BatchNorm1d(3), layer)
    with pytest.raises(ValueError, match="affine parameters differ"):
        transfer.torch_to_keras(torch.nn.BatchNorm1d(4, affine=False), layer)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        transfer.torch_to_keras(torch.nn.BatchNorm1d(4, track_running_stats=False), layer)
