"""The frameworks' own BatchNorm tests, run on the native layer (the control) and on bnref's drop-ins.

Nothing of the frameworks' test code is copied here; both suites are read from the installed packages.

* Keras: the test module that ships in the Keras wheel,
  ``keras/src/layers/normalization/batch_normalization_test.py`` (33 tests in Keras 3.15.1), run with
  ``unittest`` as it is, and once more with ``keras.src.layers.BatchNormalization`` (the name that module
  calls) replaced by ``bnref.layers.keras_bn.BatchNormalization``.
* PyTorch: ``torch.testing._internal.common_modules.module_db`` ships in the wheel and describes, for
  ``nn.BatchNorm1d/2d/3d``, the constructor arguments and inputs PyTorch's generic module tests use
  (``module_inputs_func``), the error cases (``module_error_inputs_func``) and whether training and
  inference differ. PyTorch's driver, ``test/test_modules.py``, is not in the wheel, so the generic checks
  are written here in our own words (``_MODULE_CHECKS``), one test per check, module and mode, each looping
  over every module input as PyTorch's driver does; ``_NN_CHECKS`` adds the ``test_nn.py``-style BN tests
  (empty batch, gradient penalty, version-1 state dicts, ``assign=True`` on the meta device, rank checks,
  ``convert_sync_batchnorm``, eps = 0 in inference, mis-sized buffers, ...). Every check runs on the native
  classes and on ``bnref.layers.torch_bn.BatchNorm1d/2d/3d``.

The oracle of the value checks is ``bnref``'s NumPy reference in float64, for the native control as for
bnref, so the control is not a comparison of the native layer with itself. Tolerances follow the book's
appendix "How the checks are bounded" (``ch-bounds``): ``C * eps * (1 + sqrt(m)) * S`` with ``S`` the
condition scale of the quantity (``bnref.testing``); gradcheck / gradgradcheck in float64 use
``atol = 1e-8``, ``rtol = 1e-7`` with ``h = 1e-6`` (derived in ``tests/test_torch_bn.py``).

``*_DELIBERATE`` list, by test id and with the reason, the differences bnref keeps on purpose; any other
failure, and any listed one that stops failing, fails the test below.
"""

from __future__ import annotations

import copy
import io
import math
import os
import time
import unittest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bnref  # noqa: E402
from bnref import PYTORCH  # noqa: E402
from bnref.testing import BOUND_C  # noqa: E402

#: Keras tests that fail on bnref's layer on purpose (id -> reason). None today.
KERAS_DELIBERATE: dict[str, str] = {}

#: PyTorch checks that fail on bnref's modules on purpose (id -> reason). None today.
TORCH_DELIBERATE: dict[str, str] = {}


def _report(kind: str, impl: str, results: dict[str, str | None], seconds: float) -> str:
    failed = {k: v for k, v in results.items() if v is not None}
    lines = [f"{kind} suite on {impl}: {len(results) - len(failed)}/{len(results)} pass ({seconds:.0f} s)"]
    lines += [f"  FAIL {k}: {v}" for k, v in sorted(failed.items())]
    return "\n".join(lines)


def _assert_outcome(kind: str, impl: str, results: dict[str, str | None], deliberate: dict[str, str], seconds: float):
    print(_report(kind, impl, results, seconds))
    failed = {k for k, v in results.items() if v is not None}
    expected = set(deliberate) if impl == "bnref" else set()
    assert expected <= set(results), f"deliberate differences name unknown tests: {expected - set(results)}"
    assert failed == expected, _report(kind, impl, results, seconds)


# ----------------------------------------------------------------------------------------------------
# Keras: the wheel's own test module
# ----------------------------------------------------------------------------------------------------


def _keras_id(test: unittest.TestCase) -> str:
    """The test's name after its class, e.g. ``test_correctness3 (axis=-1, ...)`` (parameters may hold dots)."""
    return test.id().split("BatchNormalizationTest.", 1)[1]


def run_keras_suite(impl: str) -> dict[str, str | None]:
    """Run Keras' BatchNormalization TestCase; ``impl="bnref"`` swaps in bnref's layer. id -> None or error."""
    pytest.importorskip("tensorflow")
    keras_test = pytest.importorskip("keras.src.layers.normalization.batch_normalization_test")
    from keras.src import layers as keras_layers

    from bnref.layers.keras_bn import BatchNormalization

    native = keras_layers.BatchNormalization
    keras_layers.BatchNormalization = native if impl == "native" else BatchNormalization
    try:
        suite = unittest.TestLoader().loadTestsFromTestCase(keras_test.BatchNormalizationTest)
        results: dict[str, str | None] = {_keras_id(t): None for t in suite}  # run() empties suite
        result = unittest.TestResult()
        suite.run(result)
    finally:
        keras_layers.BatchNormalization = native
    for test, trace in result.failures + result.errors:
        results[_keras_id(test)] = trace.strip().splitlines()[-1][:300]
    assert len(results) == result.testsRun == 33, "Keras 3.15.1's module has 33 tests"
    # A skipped test checked nothing, so it must not count as a pass. On the TensorFlow backend (the one this test
    # runs on) none of the 33 skips; one that does means the suite no longer tests the layer as it did.
    skipped = {_keras_id(test): reason for test, reason in result.skipped}
    assert not skipped, f"Keras tests skipped on {impl}, so not passed: {skipped}"
    return results


@pytest.mark.parametrize("impl", ["native", "bnref"])
def test_keras_suite(impl, capsys):
    start = time.perf_counter()
    results = run_keras_suite(impl)
    with capsys.disabled():
        _assert_outcome("Keras", impl, results, KERAS_DELIBERATE, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------
# PyTorch: module_db's BN entries driving our own generic checks
# ----------------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bnref.layers import torch_bn  # noqa: E402

NATIVE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BNREF = {
    nn.BatchNorm1d: torch_bn.BatchNorm1d,
    nn.BatchNorm2d: torch_bn.BatchNorm2d,
    nn.BatchNorm3d: torch_bn.BatchNorm3d,
}
GRAD_TOL = dict(eps=1e-6, atol=1e-8, rtol=1e-7)  # tests/test_torch_bn.py derives these for float64
EPS = {torch.float32: float(np.finfo(np.float32).eps), torch.float64: float(np.finfo(np.float64).eps)}


def _module_info(native_cls):
    from torch.testing._internal.common_modules import module_db

    return next(info for info in module_db if info.module_cls is native_cls)


def _inputs(native_cls, dtype, training, requires_grad=False):
    info = _module_info(native_cls)
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training)


def _build(cls, module_input, dtype, training):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    module = cls(*args, **kwargs).to(dtype)
    return module.train(training)


def _input(module_input) -> torch.Tensor:
    return module_input.forward_input.args[0]


def _bound(x: torch.Tensor, dtype) -> float:
    """C eps (1 + sqrt(m)) S with S = max over channels of (|mean| + max|x - mean|) / sigma + 1 (ch-bounds)."""
    dims = [d for d in range(x.dim()) if d != 1]
    x = x.detach().double()
    m = x.numel() // max(x.shape[1], 1)
    if m == 0:
        return 0.0
    mean, sigma = x.mean(dims), x.var(dims, unbiased=False).add(1e-3).sqrt()
    spread = (x - mean.view([-1 if d == 1 else 1 for d in range(x.dim())])).abs().amax(dims)
    scale = float(((mean.abs() + spread) / sigma).max()) + 1.0
    return BOUND_C * EPS[dtype] * (1 + math.sqrt(m)) * scale


def _oracle(module: nn.Module, x: torch.Tensor, training: bool):
    """Expected output and running buffers after one forward, from bnref's NumPy reference in float64."""
    xn = x.detach().double().numpy()
    c = x.shape[1]
    gamma = np.ones(c) if module.weight is None else module.weight.detach().double().numpy()
    beta = np.zeros(c) if module.bias is None else module.bias.detach().double().numpy()
    tracked = module.running_mean is not None
    rm = module.running_mean.double().numpy().copy() if tracked else None
    rv = module.running_var.double().numpy().copy() if tracked else None
    if not training and tracked:
        return bnref.batch_norm_inference(xn, gamma, beta, rm, rv, module.eps, axis=1), rm, rv
    y, cache = bnref.batch_norm_forward(xn, gamma, beta, module.eps, axis=1)
    if training and tracked:
        step = int(module.num_batches_tracked) + 1
        w = PYTORCH.replace(momentum=module.momentum).new_value_weight(step)
        rm, rv = (1 - w) * rm + w * cache.mean, (1 - w) * rv + w * cache.unbiased_var
    return y, rm, rv


def _close(a: torch.Tensor, b, tol: float, what: str) -> None:
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    err = float((a.detach().double() - b).abs().max()) if a.numel() else 0.0
    assert err <= tol, f"{what}: max error {err:.3g} > bound {tol:.3g}"


def check_forward(cls, native_cls, training):
    """Output and running buffers of one forward equal the float64 NumPy reference (float32 and float64)."""
    for dtype in (torch.float32, torch.float64):
        for mi in _inputs(native_cls, dtype, training):
            module, x = _build(cls, mi, dtype, training), _input(mi)
            if x.numel() == 0:  # empty batch: empty output, running estimates untouched
                before = copy.deepcopy(module.state_dict())
                y = module(x)
                assert y.shape == x.shape, mi.desc
                if module.running_mean is not None:
                    assert torch.equal(module.running_mean, before["running_mean"]), mi.desc
                continue
            y_ref, rm_ref, rv_ref = _oracle(module, x, training)
            tol = _bound(x, dtype)
            y = module(x)
            assert y.dtype == x.dtype and y.shape == x.shape, mi.desc
            _close(y, y_ref, tol, f"{mi.desc} {dtype} y")
            if rm_ref is not None:
                m = x.numel() // x.shape[1]
                _close(module.running_mean, rm_ref, tol * float(x.abs().max() + 1), f"{mi.desc} running_mean")
                _close(
                    module.running_var,
                    rv_ref,
                    tol * float(x.abs().max() + 1) ** 2 * m / max(m - 1, 1),
                    f"{mi.desc} running_var",
                )


def check_grad(cls, native_cls, training):
    """torch.autograd.gradcheck in float64, with respect to the input and the parameters.

    The full Jacobian for inputs of up to 64 elements (the BatchNorm1d inputs); gradcheck's ``fast_mode`` (one
    random projection ``v^T J u`` against central differences) for the 2D/3D inputs of 216 to 384 elements,
    whose full Jacobians made the native control (float64 kernels) the slowest part of this file.
    ``tests/test_torch_bn.py`` checks bnref's full Jacobians on 4D and 5D inputs.
    """
    for mi in _inputs(native_cls, torch.float64, training, requires_grad=True):
        module = _build(cls, mi, torch.float64, training)
        params = [p for p in (module.weight, module.bias) if p is not None]
        x = _input(mi)

        def f(x, *_params, module=module):
            return module(x)

        fast = x.numel() > 64
        assert torch.autograd.gradcheck(f, (x, *params), fast_mode=fast, **GRAD_TOL), mi.desc


def check_gradgrad(cls, native_cls, training):
    """torch.autograd.gradgradcheck in float64: the backward can itself be differentiated.

    Subsampled for CI time with gradgradcheck's ``fast_mode``: instead of the full Jacobian of the backward
    (one column per element of x, of the output gradient and of the parameters: about 800 double-backward
    evaluations for the 3D inputs) it compares one random projection ``v^T J u`` with the same projection of
    central differences; a wrong entry of J escapes only if the error happens to be orthogonal to the random
    vectors. The full-Jacobian gradcheck of the first derivatives runs in ``check_grad``.
    """
    for mi in _inputs(native_cls, torch.float64, training, requires_grad=True):
        module = _build(cls, mi, torch.float64, training)
        params = [p for p in (module.weight, module.bias) if p is not None]
        x = _input(mi)
        if x.numel() == 0:
            continue  # nothing to perturb

        def f(x, *_params, module=module):
            return module(x)

        assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True, **GRAD_TOL), mi.desc


def check_pickle(cls, native_cls, training):
    """torch.save / torch.load of the whole module: same class, same state, same output."""
    for mi in _inputs(native_cls, torch.float32, training):
        module, x = _build(cls, mi, torch.float32, training), _input(mi)
        module(x)  # move the state away from its initial values
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert type(loaded) is type(module) and loaded.training == module.training, mi.desc
        for k, v in module.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), (mi.desc, k)
        assert torch.equal(copy.deepcopy(module)(x), loaded(x)), mi.desc


def check_memory_format(cls, native_cls, training):
    """channels_last inputs (and module): same values as contiguous inputs, output in channels_last."""
    for mi in _inputs(native_cls, torch.float32, training):
        x = _input(mi)
        if x.dim() not in (4, 5):
            continue
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        module = _build(cls, mi, torch.float32, training)
        twin = copy.deepcopy(module).to(memory_format=fmt)
        y, y_last = module(x), twin(x.contiguous(memory_format=fmt))
        if x.numel():
            assert y_last.is_contiguous(memory_format=fmt), mi.desc
        _close(y_last, y.detach().double().numpy(), 2 * _bound(x, torch.float32), f"{mi.desc} channels_last")


def check_non_contiguous(cls, native_cls, training):
    """Non-contiguous input and output gradient: same output and gradients as contiguous ones."""
    for mi in _inputs(native_cls, torch.float64, training, requires_grad=True):
        x = _input(mi).detach()
        module = _build(cls, mi, torch.float64, training)
        twin = copy.deepcopy(module)
        dy = torch.randn_like(x)
        results = []
        for mod, xin, dyin in (
            (module, x, dy),
            (twin, x.repeat_interleave(2, -1)[..., ::2], dy.repeat_interleave(2, -1)[..., ::2]),
        ):
            assert xin.is_contiguous() == (mod is module) or x.numel() == 0
            xin = xin.requires_grad_()
            y = mod(xin)
            y.backward(dyin)
            grads = [xin.grad] + [p.grad for p in (mod.weight, mod.bias) if p is not None]
            results.append([y, *grads])
        for a, b in zip(*results, strict=True):
            _close(a, b.detach().numpy(), _bound(x, torch.float64) * float(dy.abs().sum() + 1), mi.desc)


def check_state_dict(cls, native_cls, training):
    """state_dict keys equal the native layer's, and state moves native -> candidate -> native unchanged."""
    for mi in _inputs(native_cls, torch.float32, training):
        module, native, x = (
            _build(cls, mi, torch.float32, training),
            _build(native_cls, mi, torch.float32, training),
            _input(mi),
        )
        assert list(module.state_dict()) == list(native.state_dict()), mi.desc
        native.train()(x * 2 + 1)
        module.load_state_dict(native.state_dict())
        back = _build(native_cls, mi, torch.float32, training)
        back.load_state_dict(module.state_dict())
        for k, v in native.state_dict().items():
            assert torch.equal(module.state_dict()[k], v) and torch.equal(back.state_dict()[k], v), (mi.desc, k)


def check_train_eval_differ(cls, native_cls, training):
    """module_db says train and eval differ: after one training step the eval output is not the train output."""
    for mi in _inputs(native_cls, torch.float32, training):
        module, x = _build(cls, mi, torch.float32, True), _input(mi)
        if x.numel() == 0:
            continue
        y_train = module(x)
        y_eval = module.eval()(x)
        tracked = module.running_mean is not None
        assert (not torch.allclose(y_train, y_eval)) == tracked, mi.desc  # no buffers: batch stats in both


def check_repr(cls, native_cls, training):
    """repr shows the same arguments as the native layer's."""
    for mi in _inputs(native_cls, torch.float32, training):
        a, b = _build(cls, mi, torch.float32, training), _build(native_cls, mi, torch.float32, training)
        assert repr(a).split("(", 1)[1] == repr(b).split("(", 1)[1], mi.desc


def check_errors(cls, native_cls, training):
    """module_error_inputs_func: the error type and message PyTorch's driver expects.

    As in PyTorch's driver, the module is built and called in its default (training) mode; ``training`` only
    selects which error inputs module_db returns.
    """
    from torch.testing._internal.common_modules import ModuleErrorEnum

    info = _module_info(native_cls)
    for err in info.module_error_inputs_func(
        info, device="cpu", dtype=torch.float32, requires_grad=False, training=training
    ):
        mi = err.module_error_input
        args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
        with pytest.raises(err.error_type, match=err.error_regex):
            module = cls(*args, **kwargs)
            if err.error_on == ModuleErrorEnum.FORWARD_ERROR:
                module(_input(mi))


_MODULE_CHECKS = {
    "forward": check_forward,
    "grad": check_grad,
    "gradgrad": check_gradgrad,
    "pickle": check_pickle,
    "memory_format": check_memory_format,
    "non_contiguous": check_non_contiguous,
    "state_dict": check_state_dict,
    "train_eval_differ": check_train_eval_differ,
    "repr": check_repr,
    "errors": check_errors,
}


# --- test_nn.py-style BN tests, written here -------------------------------------------------------


def nn_empty_batch(cls, native_cls):
    """Training on an empty batch: empty output, zero parameter gradients, running estimates untouched."""
    shape = {nn.BatchNorm1d: (0, 3, 4), nn.BatchNorm2d: (0, 3, 2, 2), nn.BatchNorm3d: (0, 3, 2, 2, 2)}[native_cls]
    module = cls(3)
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert y.shape == shape and x.grad.shape == shape
    assert torch.equal(module.weight.grad, torch.zeros(3)) and torch.equal(module.bias.grad, torch.zeros(3))
    assert torch.equal(module.running_mean, torch.zeros(3)) and torch.equal(module.running_var, torch.ones(3))
    assert int(module.num_batches_tracked) == 1


def nn_gradient_penalty(cls, native_cls):
    """A gradient penalty (double backward) reaches the parameters, and equals the native one in float64."""
    shape = {nn.BatchNorm1d: (6, 3), nn.BatchNorm2d: (3, 3, 2, 2), nn.BatchNorm3d: (2, 3, 2, 2, 2)}[native_cls]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    w0 = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    out = []
    for c in (cls, native_cls):
        module = c(3, dtype=torch.float64)
        with torch.no_grad():
            module.weight.copy_(w0)
        x = x0.clone().requires_grad_()
        y = module(x)
        (gx,) = torch.autograd.grad((y**3).sum(), x, create_graph=True)
        (gx**2).sum().backward()
        assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
        out.append((module.weight.grad, x.grad))
    for a, b in zip(*out, strict=True):
        _close(a, b.numpy(), 1e3 * _bound(x0, torch.float64), "gradient penalty")  # third powers: S ~ 1e3


def nn_version_1_state_dict(cls, native_cls):
    """A version-1 state dict (no num_batches_tracked) loads strictly; the counter keeps its value."""
    state = native_cls(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    module = cls(3)
    module.load_state_dict(state)
    assert int(module.num_batches_tracked) == 0
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        state._metadata[""]["version"] = 2
        module.load_state_dict(state)


def nn_assign_on_meta(cls, native_cls):
    """load_state_dict(assign=True) on a meta-device module: every tensor real, num_batches_tracked too."""
    for version in (1, 2):
        state = native_cls(3).state_dict()
        if version == 1:
            del state["num_batches_tracked"]
            state._metadata[""]["version"] = 1
        module = cls(3, device="meta")
        module.load_state_dict(state, assign=True)
        for k, v in module.state_dict().items():
            assert v.device.type == "cpu", (version, k)
        assert int(module.num_batches_tracked) == 0


def nn_rank_checks(cls, native_cls):
    """Each class rejects the ranks its native counterpart rejects, with its message (ValueError)."""
    good = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}[native_cls]
    module = cls(3)
    for rank in range(1, 7):
        x = torch.randn((4, 3, 2, 2, 2, 2)[:rank])
        if rank in good:
            module(x)
        else:
            with pytest.raises(ValueError, match=f"got {rank}D input"):
                module(x)


def nn_convert_sync_batchnorm(cls, native_cls):
    """nn.SyncBatchNorm.convert_sync_batchnorm converts the layer, keeping weights and statistics."""
    model = nn.Sequential(nn.Identity(), cls(3))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[1].running_mean.fill_(0.5)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], nn.SyncBatchNorm)
    assert torch.equal(converted[1].weight, torch.full((3,), 2.0)) and torch.equal(
        converted[1].running_mean, torch.full((3,), 0.5)
    )


def nn_eps_zero(cls, native_cls):
    """eps = 0: allowed in inference (finite output with positive running variance), refused in training."""
    shape = {nn.BatchNorm1d: (4, 3), nn.BatchNorm2d: (4, 3, 2, 2), nn.BatchNorm3d: (4, 3, 2, 2, 2)}[native_cls]
    module = cls(3, eps=0.0)
    x = torch.randn(shape)
    assert torch.isfinite(module.eval()(x)).all()
    with pytest.raises(ValueError, match="eps must be positive"):
        module.train()(x)


def nn_mis_sized_buffers(cls, native_cls):
    """A running buffer whose length is not the channel count: RuntimeError, as PyTorch's kernel raises."""
    shape = {nn.BatchNorm1d: (4, 3), nn.BatchNorm2d: (4, 3, 2, 2), nn.BatchNorm3d: (4, 3, 2, 2, 2)}[native_cls]
    for training in (True, False):
        module = cls(3).train(training)
        module.running_mean = torch.zeros(2)
        with pytest.raises(RuntimeError, match="3"):
            module(torch.randn(shape))


def nn_one_value_per_channel(cls, native_cls):
    """Training with one value per channel: ValueError 'Expected more than 1 value per channel'."""
    shape = {nn.BatchNorm1d: (1, 3), nn.BatchNorm2d: (1, 3, 1, 1), nn.BatchNorm3d: (1, 3, 1, 1, 1)}[native_cls]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        cls(3)(torch.randn(shape))
    assert cls(3).eval()(torch.randn(shape)).shape == shape


def nn_half_precision(cls, native_cls):
    """float16 / bfloat16 input with float32 parameters: output in the input dtype, statistics in float32."""
    shape = {nn.BatchNorm1d: (8, 3), nn.BatchNorm2d: (4, 3, 2, 2), nn.BatchNorm3d: (2, 3, 2, 2, 2)}[native_cls]
    for dtype in (torch.float16, torch.bfloat16):
        module = cls(3)
        x = (torch.randn(shape) * 2 + 3).to(dtype).requires_grad_()
        y = module(x)
        y.float().sum().backward()
        assert y.dtype == dtype and x.grad.dtype == dtype and module.running_mean.dtype == torch.float32
        m = x.numel() // 3
        expected = 0.1 * x.detach().double().transpose(0, 1).reshape(3, -1).mean(1)
        _close(module.running_mean, expected.numpy(), 0.1 * _bound(x.detach().double(), torch.float32), "running_mean")
        assert m > 1


def nn_momentum_none(cls, native_cls):
    """momentum=None: the running mean after k batches is the mean of the k batch means."""
    shape = {nn.BatchNorm1d: (6, 3), nn.BatchNorm2d: (2, 3, 2, 2), nn.BatchNorm3d: (2, 3, 2, 2, 1)}[native_cls]
    gen = torch.Generator().manual_seed(1)
    module, means = cls(3, momentum=None, dtype=torch.float64), []
    for k in range(4):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) + k
        module(x)
        means.append(x.transpose(0, 1).reshape(3, -1).mean(1))
    _close(module.running_mean, torch.stack(means).mean(0).numpy(), 4 * _bound(x, torch.float64), "cumulative mean")


_NN_CHECKS = {
    "empty_batch": nn_empty_batch,
    "gradient_penalty": nn_gradient_penalty,
    "version_1_state_dict": nn_version_1_state_dict,
    "assign_on_meta": nn_assign_on_meta,
    "rank_checks": nn_rank_checks,
    "convert_sync_batchnorm": nn_convert_sync_batchnorm,
    "eps_zero": nn_eps_zero,
    "mis_sized_buffers": nn_mis_sized_buffers,
    "one_value_per_channel": nn_one_value_per_channel,
    "half_precision": nn_half_precision,
    "momentum_none": nn_momentum_none,
}


def run_torch_suite(impl: str) -> dict[str, str | None]:
    """Every generic check for every BN ModuleInfo and mode, and every test_nn-style test. id -> None or error."""
    results: dict[str, str | None] = {}
    torch.manual_seed(0)  # module_db draws its inputs from the global generator
    for native_cls in NATIVE:
        cls = native_cls if impl == "native" else BNREF[native_cls]
        tests = [
            (f"{name}[{native_cls.__name__}-{'train' if training else 'eval'}]", check, (cls, native_cls, training))
            for name, check in _MODULE_CHECKS.items()
            for training in (True, False)
        ]
        tests += [(f"nn_{name}[{native_cls.__name__}]", check, (cls, native_cls)) for name, check in _NN_CHECKS.items()]
        for test_id, check, args in tests:
            try:
                check(*args)
                results[test_id] = None
            except (Exception, pytest.fail.Exception) as e:  # a check's failure (pytest.raises' too) is its result
                results[test_id] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return results


@pytest.mark.parametrize("impl", ["native", "bnref"])
def test_torch_suite(impl, capsys):
    start = time.perf_counter()
    results = run_torch_suite(impl)
    with capsys.disabled():
        _assert_outcome("PyTorch", impl, results, TORCH_DELIBERATE, time.perf_counter() - start)
