"""Tests of bnref.folding: BN folded into the preceding layer, against torch.nn.utils.fusion and Keras.

Bounds from ``bnref.testing.check_close`` (appendix ``ch-bounds``): a folded weight is a product of a few
roundings (m = 1); a folded bias cancels ``b - running_mean`` (its condition factor is computed from the
terms); a layer output is a sum over its fan-in, m = fan-in + 1, with the condition factor
``(|W| * |x| + |b|) / |y|`` computed by running the same layer on absolute values in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cond

import bnref
from bnref.folding import OUT_CHANNEL_AXIS, fold_batch_norm
from bnref.testing import check_close

SEEDS = (0, 1, 2)


def _random_bn(bn, rng: np.random.Generator) -> None:
    import torch

    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(rng.normal(size=c)))
        bn.bias.copy_(torch.tensor(rng.normal(size=c)))
        bn.running_mean.copy_(torch.tensor(rng.normal(scale=2.0, size=c)))
        bn.running_var.copy_(torch.tensor(rng.uniform(0.2, 3.0, size=c)))
    bn.eval()


def _np(t) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def _bn_args(bn):
    return _np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var), bn.eps


#: name -> (layer from torch.nn, its BN from torch.nn, input shape, layout of fold_batch_norm)
CASES = {
    "Linear": (lambda nn: nn.Linear(12, 5), lambda nn: nn.BatchNorm1d(5), (7, 12), "torch.Linear"),
    "Linear-no-bias": (lambda nn: nn.Linear(12, 5, bias=False), lambda nn: nn.BatchNorm1d(5), (7, 12), "torch.Linear"),
    "Conv2d": (lambda nn: nn.Conv2d(3, 4, 3, padding=1), lambda nn: nn.BatchNorm2d(4), (2, 3, 6, 6), "torch.Conv"),
    "Conv2d-groups": (
        lambda nn: nn.Conv2d(4, 6, 3, groups=2, bias=False),
        lambda nn: nn.BatchNorm2d(6),
        (2, 4, 5, 5),
        "torch.Conv",
    ),
    "ConvTranspose2d": (
        lambda nn: nn.ConvTranspose2d(3, 4, 3, stride=2),
        lambda nn: nn.BatchNorm2d(4),
        (2, 3, 4, 4),
        "torch.ConvTranspose",
    ),
}


def _apply(layer_module, x64: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The layer's own operation in float64 with weight w and bias b (stride, padding, groups kept)."""
    import torch

    F = torch.nn.functional
    m = layer_module
    xt, wt, bt = torch.tensor(x64), torch.tensor(w), torch.tensor(b)
    if isinstance(m, torch.nn.Linear):
        return F.linear(xt, wt, bt).numpy()
    if isinstance(m, torch.nn.ConvTranspose2d):
        return F.conv_transpose2d(xt, wt, bt, stride=m.stride, padding=m.padding, groups=m.groups).numpy()
    return F.conv2d(xt, wt, bt, stride=m.stride, padding=m.padding, groups=m.groups).numpy()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(CASES))
def test_fold_agrees_with_torch_fusion_and_with_the_unfused_layers(torch, seed, case):
    from torch.nn.utils import fusion

    make_layer, make_bn, shape, layout = CASES[case]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layer, bn = make_layer(torch.nn), make_bn(torch.nn)
    _random_bn(bn, rng)
    layer.eval()
    if isinstance(layer, torch.nn.Linear):
        fused = fusion.fuse_linear_bn_eval(layer, bn)
    else:
        fused = fusion.fuse_conv_bn_eval(layer, bn, transpose=isinstance(layer, torch.nn.ConvTranspose2d))

    w64 = _np(layer.weight)
    b64 = None if layer.bias is None else _np(layer.bias)
    wf, bf = fold_batch_norm(w64, b64, *_bn_args(bn), layer=layout)

    # the folded parameters: torch (float32) against the reference (float64)
    scale, _ = bnref.inference_affine(*_bn_args(bn))
    b_in = np.zeros_like(bf) if b64 is None else b64
    s_bias = (np.abs(b_in) + np.abs(_np(bn.running_mean))) * np.abs(scale) + np.abs(_np(bn.bias))
    assert check_close(_np(fused.weight), wf, dtype="float32", m=1, what="weight", show="none")
    assert check_close(_np(fused.bias), bf, dtype="float32", m=1, cond=cond(s_bias, bf), what="bias", show="none")

    # outputs: the fused torch module and the unfused pair (both float32) against the folded float64 layer
    x64 = rng.normal(size=shape)
    expected = _apply(layer, x64, wf, bf)
    fan_in = int(np.prod(w64.shape)) // wf.shape[OUT_CHANNEL_AXIS[layout]]
    s_out = _apply(layer, np.abs(x64), np.abs(wf), np.abs(bf))
    x32 = torch.tensor(x64.astype(np.float32))
    with torch.no_grad():
        fused_y, unfused_y = _np(fused(x32)), _np(bn(layer(x32)))
    # the unfused pair rounds z before BN rescales it: its scale is |W| |x| |scale| + |b - mean| |scale| + |beta|
    s_unfused = np.abs(_apply(layer, np.abs(x64), np.abs(w64), np.abs(b_in)))
    b_shape = [1] * x64.ndim
    b_shape[1] = -1
    s_unfused = s_unfused * np.abs(scale).reshape(b_shape) + (
        np.abs(_np(bn.running_mean)) * np.abs(scale) + np.abs(_np(bn.bias))
    ).reshape(b_shape)
    m = fan_in + 1
    assert check_close(fused_y, expected, dtype="float32", m=m, cond=cond(s_out, expected), what="fused")
    assert check_close(unfused_y, expected, dtype="float32", m=m, cond=cond(s_unfused, expected), what="unfused")


def test_planted_fault_wrong_axis_or_eps_is_caught(torch):
    """Folding along the wrong axis, or with Keras' eps for a PyTorch layer, fails the same bound."""
    from torch.nn.utils import fusion

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    conv, bn = torch.nn.ConvTranspose2d(4, 4, 3), torch.nn.BatchNorm2d(4)
    _random_bn(bn, rng)
    with torch.no_grad():
        bn.running_var.mul_(1e-2)  # variances near eps, where eps matters
    conv.eval()
    fused = fusion.fuse_conv_bn_eval(conv, bn, transpose=True)
    w64, b64 = _np(conv.weight), _np(conv.bias)
    g, b, rm, rv, eps = _bn_args(bn)
    right, _ = fold_batch_norm(w64, b64, g, b, rm, rv, eps=eps, layer="torch.ConvTranspose")
    wrong_axis, _ = fold_batch_norm(w64, b64, g, b, rm, rv, eps=eps, layer="torch.Conv")  # out axis 0, not 1
    wrong_eps, _ = fold_batch_norm(w64, b64, g, b, rm, rv, eps=1e-3, layer="torch.ConvTranspose")
    kw = dict(dtype="float32", m=1, show="none")
    assert check_close(_np(fused.weight), right, **kw).passed
    assert not check_close(_np(fused.weight), wrong_axis, **kw).passed
    assert not check_close(_np(fused.weight), wrong_eps, **kw).passed


def test_bad_input_raises_named_errors():
    g = np.ones(4)
    with pytest.raises(
        ValueError, match="layer must be 'torch.Linear', .* or 'keras.ConvTranspose'; got 'torch.Dense'"
    ):
        fold_batch_norm(np.ones((4, 3)), None, g, 0 * g, 0 * g, g, layer="torch.Dense")
    with pytest.raises(ValueError, match=r"scale must have shape \(2,\) to match axis 1 of the weight \(4, 2, 3, 3\)"):
        # a grouped transposed convolution: weight (in, out / groups, kh, kw) has 2 of the 4 channels on axis 1
        fold_batch_norm(np.ones((4, 2, 3, 3)), None, g, 0 * g, 0 * g, g, layer="torch.ConvTranspose")
    with pytest.raises(ValueError, match=r"running_var must be >= 0; it is negative at channels \[0, 1, 2, 3\]"):
        fold_batch_norm(np.ones((4, 3)), None, g, 0 * g, 0 * g, -g, layer="torch.Linear")
    with pytest.raises(ValueError, match=r"running_mean has non-finite values \(nan or inf\) at channels \[2\]"):
        fold_batch_norm(np.ones((4, 3)), None, g, 0 * g, np.array([0, 0, np.nan, 0]), g, layer="torch.Linear")
    with pytest.raises(TypeError, match="layer must be 'torch.Linear', .*; got \\['torch.Linear'\\]"):
        fold_batch_norm(np.ones((4, 3)), None, g, 0 * g, 0 * g, g, layer=["torch.Linear"])


# ----------------------------------------------------------------------------------------------------
# Keras 3.15 (TensorFlow backend): an unfused model against its folded layer
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["Dense", "Conv2D", "Conv2DTranspose"])
def test_fold_agrees_with_an_unfused_keras_model(seed, kind):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    if kind == "Dense":
        shape, layer, layout = (6, 10), keras.layers.Dense(5), "keras.Dense"
    elif kind == "Conv2D":
        shape, layer, layout = (2, 6, 6, 3), keras.layers.Conv2D(4, 3, padding="same"), "keras.Conv"
    else:
        shape, layer, layout = (2, 4, 4, 3), keras.layers.Conv2DTranspose(4, 3, strides=2), "keras.ConvTranspose"
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    model = keras.Sequential([keras.Input(shape[1:]), layer, bn])
    c = 4 if kind != "Dense" else 5
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    mean, var = rng.normal(scale=2.0, size=c), rng.uniform(0.2, 3.0, size=c)
    bn.set_weights([a.astype("float32") for a in (gamma, beta, mean, var)])
    kernel = layer.get_weights()[0]  # Keras' initial kernel; a random bias so that the fold's bias term is tested
    layer.set_weights([kernel, rng.normal(size=c).astype("float32")])
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    g, b, mu, v = (w.astype(np.float64) for w in bn.get_weights())
    wf, bf = fold_batch_norm(kernel, bias, g, b, mu, v, eps=1e-3, layer=layout)

    folded = keras.Sequential([keras.Input(shape[1:]), layer.__class__.from_config(layer.get_config())])
    x = rng.normal(size=shape).astype("float32")
    folded.layers[0].set_weights([wf, bf])  # the folded layer in float32 (set_weights casts)
    folded64 = keras.Sequential(
        [keras.Input(shape[1:]), layer.__class__.from_config({**layer.get_config(), "dtype": "float64"})]
    )
    folded64.layers[0].set_weights([wf, bf])
    expected = np.asarray(folded64(x.astype(np.float64)))
    folded64.layers[0].set_weights([np.abs(wf), np.abs(bf)])
    s_out = np.asarray(folded64(np.abs(x).astype(np.float64)))
    fan_in = kernel.size // c
    unfused_y = np.asarray(model(x, training=False))
    folded_y = np.asarray(folded(x))
    # the unfused model rounds z before BN: scale |W||x||scale| + |b - mean||scale| + |beta|, as s_out bounds
    scale = np.abs(g) / np.sqrt(v + 1e-3)
    folded64.layers[0].set_weights([np.abs(kernel), np.abs(bias)])
    s_unfused = np.asarray(folded64(np.abs(x).astype(np.float64))) * scale + np.abs(mu) * scale + np.abs(b)
    m = fan_in + 1
    assert check_close(unfused_y, expected, dtype="float32", m=m, cond=cond(s_unfused, expected), what="unfused")
    assert check_close(folded_y, expected, dtype="float32", m=m, cond=cond(s_out, expected), what="folded")


def test_docstring_examples_run():
    import doctest
    import importlib

    module = importlib.import_module("bnref.folding")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# ----------------------------------------------------------------------------------------------------
# ONNX export from PyTorch and ONNX Runtime (onnx 1.23.2, onnxruntime 1.32.0, CPU execution provider)
# ----------------------------------------------------------------------------------------------------


def _small_nets():
    import torch

    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 3, bias=False),
        torch.nn.BatchNorm2d(3),
    )
    # the article's layout: flatten 28 x 28, dense, BN, ReLU, dense
    mlp = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(784, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    return {"conv": (conv, (3, 1, 10, 10)), "mlp": (mlp, (3, 1, 28, 28))}


def _folded_reference(net, x64: np.ndarray, absolute: bool = False) -> np.ndarray:
    """The net in float64 with every BN folded by ``fold_batch_norm`` into the layer before it.

    With ``absolute``, every weight, bias and input is replaced by its absolute value and ReLU by the identity:
    the condition scale ``|W| |x| + |b|`` of the whole net (appendix ch-bounds)."""
    import torch

    F = torch.nn.functional
    mods = list(net)
    h = torch.tensor(np.abs(x64) if absolute else x64)
    i = 0
    while i < len(mods):
        mod = mods[i]
        if isinstance(mod, torch.nn.Flatten):
            h = torch.flatten(h, 1)
        elif isinstance(mod, torch.nn.ReLU):
            h = h if absolute else torch.relu(h)
        else:
            w = _np(mod.weight)
            b = np.zeros(w.shape[0]) if mod.bias is None else _np(mod.bias)
            if i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.modules.batchnorm._BatchNorm):
                layout = "torch.Linear" if isinstance(mod, torch.nn.Linear) else "torch.Conv"
                w, b = fold_batch_norm(w, b, *_bn_args(mods[i + 1]), layer=layout)
                i += 1
            if absolute:
                w, b = np.abs(w), np.abs(b)
            wt, bt = torch.tensor(w), torch.tensor(b)
            h = F.linear(h, wt, bt) if isinstance(mod, torch.nn.Linear) else F.conv2d(h, wt, bt)
        i += 1
    return h.numpy()


# the legacy TorchScript exporter (dynamo=False) is deprecated in torch 2.13; the default torch.export-based one
# needs onnxscript, which the pinned stack does not carry
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["conv", "mlp"])
def test_onnx_runtime_folds_conv_bn_and_agrees_with_the_folded_reference(torch, tmp_path, seed, name):
    """Exported with BN kept as a node; ONNX Runtime's basic graph optimisations remove it after a Conv (measured
    with onnxruntime 1.32.0: Gemm + BatchNormalization is left unfused). With optimisations off and on, the
    outputs agree with the folded float64 reference within the float32 bound of the two layers."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net, shape = _small_nets()[name]
    for mod in net:
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            _random_bn(mod, rng)
    net.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(shape),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
    )
    assert "BatchNormalization" in [n.op_type for n in onnx.load(str(path)).graph.node]

    x64 = rng.normal(size=shape).astype(np.float32).astype(np.float64)
    expected = _folded_reference(net, x64)
    scale = _folded_reference(net, x64, absolute=True)
    fan_ins = [int(np.prod(m.weight.shape[1:])) for m in net if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    # two layers in a row: each adds at most its own bound on the same absolute scale, so cond = 2 S / |y|
    m = max(fan_ins) + 1
    levels = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    for label, level in levels.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.optimized_model_filepath = str(tmp_path / f"{name}-{label}.onnx")
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        y = session.run(None, {"x": x64.astype(np.float32)})[0]
        ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
        folded_away = "BatchNormalization" not in ops
        assert folded_away == (label == "basic" and name == "conv"), (label, ops)
        result = check_close(y, expected, dtype="float32", m=m, cond=2 * cond(scale, expected), what=f"ort {label}")
        assert result.passed, str(result)
