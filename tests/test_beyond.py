"""Tests of bnref.layers.ghost_renorm and bnref.experiments.beyond:
the torch Ghost BN and Batch Renorm layers against bnref.normalization in float64, the
pluggable LeNet, the verdict rule, and the committed record of the small-batch experiment against its definition.

Tolerances (appendix ch-bounds, eq-bound-check): ``check_close`` in float64 with ``m`` the length of the longest
sum behind a value and ``cond`` the condition factor, the sum of absolute values a result is computed from over
the size of the result, computed below from the float64 terms.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnref import normalization as nrm
from bnref.experiments import beyond as by
from bnref.experiments import dynamics as dyn
from bnref.layers import ghost_renorm
from bnref.records import load_experiments
from bnref.testing import check_close

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"
SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one PyTorch thread is faster than two on a loaded 2-core machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cond(scale: np.ndarray, expected: np.ndarray) -> float:
    """``max S / max |expected|``, at least 1."""
    top = float(np.max(np.abs(expected)))
    return max(1.0, float(np.max(scale)) / top) if top > 0 else 1.0


def _channels_last(a: np.ndarray) -> np.ndarray:
    """(N, C, ...) -> (values, C)."""
    return np.moveaxis(np.asarray(a, np.float64), 1, -1).reshape(-1, a.shape[1])


def _bn_scales(x: np.ndarray, dy_hat: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Condition scales of a standardisation of ``x`` (values, C) over axis 0 with upstream ``dy_hat = dL/dx_hat``:
    ``S_xhat = |x_hat| + |mu| / sigma`` (eq-bound-y) and ``S_dx`` (eq-bound-dx); returns both and m."""
    m = len(x)
    mu = x.mean(axis=0)
    inv_std = 1 / np.sqrt(x.var(axis=0) + eps)
    x_hat = (x - mu) * inv_std
    s_xhat = np.abs(x_hat) + np.abs(mu) * inv_std
    a = np.abs(dy_hat)
    s_dx = inv_std / m * (m * a + a.sum(axis=0) + s_xhat * (a * s_xhat).sum(axis=0))
    return s_xhat, s_dx, m


def _case(seed: int, shape: tuple[int, ...]):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(loc=0.7, scale=1.3, size=shape)
    return x, rng.normal(size=c), rng.normal(size=c), rng.normal(size=shape)


def _run(module: nn.Module, x: np.ndarray, dy: np.ndarray):
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy()


# ---------------------------------------------------------------- Ghost BN


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,gb", [((12, 5), 3), ((8, 3, 4, 4), 4), ((6, 2, 5), 2)])
def test_ghost_batch_norm_module_agrees_with_the_numpy_reference_in_float64(seed, shape, gb):
    x, gamma, beta, dy = _case(seed, shape)
    c, eps = shape[1], 1e-5
    layer = ghost_renorm.GhostBatchNorm(c, gb, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    y, dx, dgamma, dbeta = _run(layer.train(), x, dy)
    y_ref, cache = nrm.ghost_batch_norm_forward(x, gamma, beta, gb, eps=eps)
    dx_ref, dgamma_ref, dbeta_ref = nrm.ghost_batch_norm_backward(dy, cache)
    mean_ref, var_ref, step = nrm.ghost_batch_norm_running_update(np.zeros(c), np.ones(c), cache, step=0)
    assert step == int(layer.num_batches_tracked) == shape[0] // gb
    s_dgamma = 0.0
    for k in range(shape[0] // gb):
        sl = slice(k * gb, (k + 1) * gb)
        xk, dyk = _channels_last(x[sl]), _channels_last(dy[sl])
        s_xhat, s_dx, m = _bn_scales(xk, dyk * gamma, eps)
        s_y = np.abs(gamma) * s_xhat + np.abs(beta)
        yk, yk_ref = _channels_last(y[sl]), _channels_last(y_ref[sl])
        dxk, dxk_ref = _channels_last(dx[sl]), _channels_last(dx_ref[sl])
        assert check_close(yk, yk_ref, dtype="float64", m=m, cond=_cond(s_y, yk_ref), show="none")
        assert check_close(dxk, dxk_ref, dtype="float64", m=m, cond=_cond(s_dx, dxk_ref), show="none")
        s_dgamma = s_dgamma + np.sum(np.abs(dyk) * s_xhat, axis=0)
    m_all = int(np.prod(shape)) // c
    assert check_close(dgamma, dgamma_ref, dtype="float64", m=m_all, cond=_cond(s_dgamma, dgamma_ref), show="none")
    s_dbeta = np.sum(np.abs(_channels_last(dy)), axis=0)
    assert check_close(dbeta, dbeta_ref, dtype="float64", m=m_all, cond=_cond(s_dbeta, dbeta_ref), show="none")
    # running statistics: each update mixes old and new; the scale is the larger of |old| and the sums' |x|
    m_ghost = m_all // (shape[0] // gb)
    s_mean = np.abs(cache.means).max(axis=0) + np.sqrt(cache.variances.max(axis=0)) * 4
    assert check_close(layer.running_mean.numpy(), mean_ref, dtype="float64", m=m_ghost, cond=_cond(s_mean, mean_ref))
    s_var = np.maximum(cache.variances.max(axis=0) * m_ghost / (m_ghost - 1), 1.0)
    assert check_close(layer.running_var.numpy(), var_ref, dtype="float64", m=m_ghost, cond=_cond(s_var, var_ref))
    # inference: plain BN with the running statistics
    layer.eval()
    with torch.no_grad():
        y_inf = layer(torch.tensor(x)).numpy()
    bshape = (1, c) + (1,) * (len(shape) - 2)
    y_inf_ref = gamma.reshape(bshape) * (x - mean_ref.reshape(bshape)) / np.sqrt(var_ref.reshape(bshape) + eps)
    y_inf_ref += beta.reshape(bshape)
    s_inf = np.abs(gamma.reshape(bshape)) * (np.abs(x) + np.abs(mean_ref.reshape(bshape))) / np.sqrt(
        var_ref.reshape(bshape) + eps
    ) + np.abs(beta.reshape(bshape))
    assert check_close(y_inf, y_inf_ref, dtype="float64", m=2, cond=_cond(s_inf, y_inf_ref), show="none")


def test_planted_fault_whole_batch_statistics_fail_the_ghost_bound():
    x, gamma, beta, _ = _case(5, (12, 4))
    y_ref, _ = nrm.ghost_batch_norm_forward(x, gamma, beta, 4)
    whole = nn.BatchNorm1d(4, dtype=torch.float64).train()
    with torch.no_grad():
        whole.weight.copy_(torch.tensor(gamma))
        whole.bias.copy_(torch.tensor(beta))
        y_whole = whole(torch.tensor(x)).numpy()
    assert not check_close(y_whole, y_ref, dtype="float64", m=4, cond=10.0, show="none").passed


def test_ghost_batch_norm_with_one_ghost_batch_is_torch_batch_norm_value_for_value():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    ghost, plain = ghost_renorm.GhostBatchNorm(3, 8), nn.BatchNorm2d(3)
    assert torch.equal(ghost(x), plain(x))
    assert torch.equal(ghost.running_var, plain.running_var)


# ---------------------------------------------------------------- Batch Renorm


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(10, 4), (6, 3, 4, 4)])
def test_batch_renorm_module_agrees_with_the_numpy_reference_in_float64(seed, shape):
    x, gamma, beta, dy = _case(seed, shape)
    c, eps, r_max, d_max, momentum = shape[1], 1e-5, 1.5, 0.4, 0.9
    rng = np.random.default_rng(seed + 10)
    rmean, rvar = rng.normal(scale=0.5, size=c), rng.uniform(0.5, 3.0, size=c)
    layer = ghost_renorm.BatchRenorm(c, eps=eps, momentum=momentum).double()
    layer.r_max, layer.d_max = r_max, d_max
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
        layer.running_mean.copy_(torch.tensor(rmean))
        layer.running_var.copy_(torch.tensor(rvar))
    y, dx, dgamma, dbeta = _run(layer.train(), x, dy)
    y_ref, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, r_max, d_max, eps=eps, axis=1)
    dx_ref, dgamma_ref, dbeta_ref = nrm.batch_renorm_backward(dy, cache)
    mean_ref, var_ref = nrm.batch_renorm_running_update(rmean, rvar, cache, momentum=momentum)
    assert np.any((cache.r > 1 / r_max) & (cache.r < r_max)) and np.any(np.abs(cache.r) == r_max) | np.any(
        np.abs(cache.d) == d_max
    ), "the case must have clipped and unclipped corrections"
    xl, dyl = _channels_last(x), _channels_last(dy)
    s_xhat, s_dx, m = _bn_scales(xl, dyl * gamma * cache.r, eps)
    # y = gamma (x_hat r + d) + beta: r, d each from a ratio of sums (scale |r| + |d| on top of x_hat's)
    s_y = np.abs(gamma) * (s_xhat * np.abs(cache.r) + np.abs(cache.d) + 1) + np.abs(beta)
    for a, b, s in ((y, y_ref, s_y), (dx, dx_ref, s_dx)):
        a_l, b_l = _channels_last(a), _channels_last(b)
        assert check_close(a_l, b_l, dtype="float64", m=m, cond=_cond(s, b_l), show="none")
    s_dgamma = np.sum(np.abs(dyl) * (s_xhat * np.abs(cache.r) + np.abs(cache.d) + 1), axis=0)
    assert check_close(dgamma, dgamma_ref, dtype="float64", m=m, cond=_cond(s_dgamma, dgamma_ref), show="none")
    s_dbeta = np.sum(np.abs(dyl), axis=0)
    assert check_close(dbeta, dbeta_ref, dtype="float64", m=m, cond=_cond(s_dbeta, dbeta_ref), show="none")
    s_mean = np.abs(rmean) + np.abs(xl).mean(axis=0)
    assert check_close(layer.running_mean.numpy(), mean_ref, dtype="float64", m=m, cond=_cond(s_mean, mean_ref))
    s_var = rvar + xl.var(axis=0) + 1.0
    assert check_close(layer.running_var.numpy(), var_ref, dtype="float64", m=m, cond=_cond(s_var, var_ref))


def test_batch_renorm_with_r_max_1_and_d_max_0_is_torch_batch_norm_in_the_forward():
    torch.manual_seed(1)
    x = (torch.randn(16, 3, 4, 4) * 3 + 2).double()
    renorm, plain = ghost_renorm.BatchRenorm(3).double().train(), nn.BatchNorm2d(3).double().train()
    y, y_bn = renorm(x), plain(x)
    bound = check_close(y.detach().numpy(), y_bn.detach().numpy(), dtype="float64", m=16 * 16, cond=3.0, show="none")
    assert bound.passed


def test_planted_fault_renorm_without_the_correction_fails_the_bound():
    x, gamma, beta, _ = _case(4, (10, 4))
    rmean, rvar = np.full(4, 2.0), np.full(4, 0.3)  # far from the batch: r and d are clipped, not 1 and 0
    y_ref, cache = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 2.0, 1.0, eps=1e-5, axis=1)
    y_bn, _ = nrm.batch_renorm_forward(x, gamma, beta, rmean, rvar, 1.0, 0.0, eps=1e-5, axis=1)
    assert not check_close(y_bn, y_ref, dtype="float64", m=10, cond=10.0, show="none").passed


def test_renorm_schedule_is_fixed_in_steps_and_short_runs_get_no_verdict():
    cfg = by.get_experiment("beyond-small-batch").config
    warmup, d_end, r_end = cfg["renorm_warmup_steps"], cfg["renorm_d_max_steps"], cfg["renorm_r_max_steps"]
    assert warmup < d_end <= r_end == by.renorm_steps(cfg)
    assert by.renorm_schedule(0, cfg) == (1.0, 0.0)
    assert by.renorm_schedule(warmup, cfg) == (1.0, 0.0)  # plain BN up to the end of the warm-up
    r_mid, d_mid = by.renorm_schedule((warmup + d_end) // 2, cfg)
    assert 1.0 < r_mid < cfg["renorm_r_max"] and 0.0 < d_mid < cfg["renorm_d_max"]
    r_d, d_d = by.renorm_schedule(d_end, cfg)
    assert r_d < cfg["renorm_r_max"] and d_d == cfg["renorm_d_max"]  # d_max relaxed first, as in the paper
    assert by.renorm_schedule(r_end, cfg) == (cfg["renorm_r_max"], cfg["renorm_d_max"])
    assert by.renorm_schedule(10 * r_end, cfg) == (cfg["renorm_r_max"], cfg["renorm_d_max"])
    # the schedule does not depend on the batch size; whether a run is judged does
    for bs in cfg["batch_sizes"]:
        long_enough = by.run_steps(cfg, bs) >= r_end
        assert by.judged(cfg, "renorm", bs) == long_enough
        assert all(by.judged(cfg, m, bs) for m in ghost_renorm.METHODS if m != "renorm")
    assert by.judged(cfg, "renorm", min(cfg["batch_sizes"]))
    assert not by.judged(cfg, "renorm", max(cfg["batch_sizes"]))  # 48 steps at batch 128


# ---------------------------------------------------------------- networks and bad input


def test_every_method_starts_from_the_weights_of_the_bn_lenet():
    reference = dyn.build_lenet(bn=True, seed=3)
    ref_weights = [p for p in reference.parameters() if p.dim() > 1]
    for method in ghost_renorm.METHODS:
        model = by.build_norm_lenet(method, seed=3)
        assert model(torch.rand(16, 784)).shape == (16, 10)
        weights = [p for p in model.parameters() if p.dim() > 1]
        assert len(weights) == len(ref_weights) == 5
        assert all(torch.equal(a, b) for a, b in zip(weights, ref_weights, strict=True)), method
    bn = by.build_norm_lenet("bn", seed=3)
    pairs = zip(bn.state_dict().values(), reference.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_layer_norm_is_group_norm_with_one_group_over_c_h_w():
    layer = ghost_renorm.norm_layer("ln", 6)
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    ref = nn.functional.layer_norm(x, (6, 5, 5), eps=1e-5)  # gamma 1, beta 0 at initialisation
    assert torch.allclose(layer.double()(x), ref, rtol=0, atol=1e-12)


def test_bad_input_raises_named_value_errors():
    with pytest.raises(ValueError, match="method"):
        ghost_renorm.norm_layer("weight-norm", 4)
    with pytest.raises(ValueError, match="does not divide the 6 channels"):
        ghost_renorm.norm_layer("gn", 6, groups=4)
    with pytest.raises(ValueError, match="gn_groups"):
        by.build_norm_lenet("gn", gn_groups=(3, 4))
    with pytest.raises(ValueError, match="ghost_batch_size"):
        ghost_renorm.GhostBatchNorm(3, 0)
    ghost = ghost_renorm.GhostBatchNorm(3, 4).train()
    with pytest.raises(ValueError, match="does not divide"):
        ghost(torch.randn(6, 3))
    with pytest.raises(ValueError, match="larger than the batch"):
        ghost(torch.randn(2, 3))
    renorm = ghost_renorm.BatchRenorm(3)
    renorm.r_max = 0.5
    with pytest.raises(ValueError, match="r_max"):
        renorm(torch.randn(4, 3))
    with pytest.raises(ValueError, match="expects input"):
        ghost_renorm.BatchRenorm(3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="unknown experiment"):
        by.get_experiment("beyond-everything")
    with pytest.raises(ValueError, match="no method"):
        by.verdicts({"gn": {2: np.ones(3)}})


# ---------------------------------------------------------------- verdict rule


def test_verdicts_and_unbeaten_follow_the_paired_rule():
    acc = {
        "bn": {2: np.array([0.50, 0.52, 0.51]), 128: np.array([0.90, 0.91, 0.92])},
        "gn": {2: np.array([0.80, 0.81, 0.83]), 128: np.array([0.905, 0.92, 0.915])},
        "ln": {2: np.array([0.60, 0.53, 0.49]), 128: np.array([0.80, 0.82, 0.81])},
    }
    v = by.verdicts(acc)
    assert v[2] == {"gn": "higher", "ln": "no measurable difference"}
    assert v[128] == {"gn": "no measurable difference", "ln": "lower"}
    assert by.unbeaten(acc, 2) == ["gn"]
    assert by.unbeaten(acc, 128) == ["gn", "bn"]  # neither beats the other, highest mean first
    with pytest.raises(ValueError, match="batch size 64"):
        by.unbeaten(acc, 64)


def test_unbeaten_is_not_best_and_excludes_runs_without_a_verdict():
    # a beats c on every seed; b is noisy and beats nobody, and nobody beats b: both a and b are unbeaten,
    # although b's mean is below c's, which is beaten
    acc = {
        "a": {128: np.array([0.95, 0.96, 0.97])},
        "b": {128: np.array([0.99, 0.80, 0.89])},
        "c": {128: np.array([0.90, 0.91, 0.92])},
    }
    assert by.unbeaten(acc, 128) == ["a", "b"]
    assert float(acc["b"][128].mean()) < float(acc["c"][128].mean())
    # Batch Renorm at batch 128 (48 steps, shorter than its schedule) neither beats nor is listed
    cfg = by.get_experiment("beyond-small-batch").config
    acc = {"bn": {128: np.array([0.90, 0.91, 0.92])}, "renorm": {128: np.array([0.95, 0.96, 0.97])}}
    assert by.unbeaten(acc, 128) == ["renorm"]
    assert by.unbeaten(acc, 128, cfg=cfg) == ["bn"]
    assert by.verdicts(acc, cfg=cfg)[128] == {"renorm": by.NO_VERDICT}
    assert by.verdicts(acc)[128] == {"renorm": "higher"}


def test_runner_on_synthetic_data_writes_every_method_and_batch_size(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.2, 0.8, size=(10, 784))
    y = np.arange(72) % 10
    x = np.clip(centres[y] + 0.1 * rng.standard_normal((72, 784)), 0, 1).astype(np.float32)
    data = (x[:48], y[:48].astype(np.int64), x[48:], y[48:].astype(np.int64))
    overrides = {"train_size": 32, "test_size": 24, "batch_sizes": [4, 16], "precise_examples": 16}
    rec = by.run_experiment("beyond-small-batch", seeds=[0], data=data, overrides=overrides, out=tmp_path)
    assert (tmp_path / "beyond-small-batch.cpu.json").is_file()
    acc = by.accuracies(rec)
    assert sorted(acc) == sorted([*ghost_renorm.METHODS, "bn-precise"])
    assert all(sorted(acc[m]) == [4, 16] for m in acc)
    res = rec.result(0)
    assert res["bn"]["4"]["steps"] == 8 and res["renorm"]["16"]["steps"] == 2
    # ghost batches of 16 on a batch of 4: one ghost batch per batch, so Ghost BN is BN value for value
    assert res["ghost"]["4"]["test_acc"] == res["bn"]["4"]["test_acc"]


# ---------------------------------------------------------------- the committed record


def test_the_committed_record_matches_its_definition():
    records = [r for r in load_experiments(RESULTS, "beyond-small-batch") if r.device["type"] == "cpu"]
    assert len(records) == 1
    record = records[0]
    by.check_record(record)
    acc = by.accuracies(record)
    cfg = record.config
    assert sorted(acc) == sorted([*cfg["methods"], "bn-precise"])
    for m, by_bs in acc.items():
        assert sorted(by_bs) == sorted(cfg["batch_sizes"]), m
        assert all(len(v) == len(record.seeds) and np.all((v >= 0) & (v <= 1)) for v in by_bs.values())
    # every method saw the same number of examples at every batch size
    for _, res in record.per_seed():
        for bs in cfg["batch_sizes"]:
            assert res["bn"][str(bs)]["steps"] * bs == cfg["epochs"] * cfg["train_size"]


def test_check_record_rejects_a_changed_config_and_too_few_seeds():
    record = by.load_record("beyond-small-batch", RESULTS)
    changed = copy.deepcopy(record)
    changed.config["base_lr"] = 0.5
    with pytest.raises(ValueError, match="base_lr"):
        by.check_record(changed)
    fewer = copy.deepcopy(record)
    fewer.seeds = fewer.seeds[:2]
    with pytest.raises(ValueError, match="seeds"):
        by.check_record(fewer)


# ---------------------------------------------------------------- BN folded away


def _lenet_with_statistics(seed: int) -> nn.Sequential:
    net = dyn.build_lenet(bn=True, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                mod.bias.copy_(0.3 * torch.randn(c, generator=gen))
                mod.running_mean.copy_(torch.randn(c, generator=gen))
                mod.running_var.copy_(0.3 + torch.rand(c, generator=gen))
    return net.eval()


@pytest.mark.parametrize("seed", SEEDS)
def test_folded_copy_matches_torch_fusion_and_computes_the_same_function(seed):
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    net = _lenet_with_statistics(seed)
    folded = by.folded_copy(net)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded)
    assert len(folded) == len(net) - 4 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net)
    # layer by layer against torch's own fusion (float32 products and one sum: m = 1 per value, cond from terms)
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))][:4]
    bns = [m for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ours = [m for m in folded if isinstance(m, (nn.Conv2d, nn.Linear))][:4]
    for layer, bn, mine in zip(layers, bns, ours, strict=True):
        fuse = fuse_conv_bn_eval if isinstance(layer, nn.Conv2d) else fuse_linear_bn_eval
        theirs = fuse(copy.deepcopy(layer), bn)
        w, b = theirs.weight.detach().double().numpy(), theirs.bias.detach().double().numpy()
        assert check_close(mine.weight.detach().numpy(), w, dtype="float32", m=1, cond=2.0, show="none")
        s_b = np.abs(bn.bias.detach().double().numpy()) + np.abs(
            (bn.weight / torch.sqrt(bn.running_var + bn.eps) * bn.running_mean).detach().double().numpy()
        )
        assert check_close(mine.bias.detach().numpy(), b, dtype="float32", m=2, cond=_cond(s_b, b), show="none")
    # the whole network in float64: only float64 rounding separates the two
    x = torch.rand(8, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y, y_folded = net.double()(x).numpy(), by.folded_copy(net).double()(x).numpy()
    assert check_close(y_folded, y, dtype="float64", m=401, cond=100.0, show="none")
    with pytest.raises(ValueError, match="nn.Sequential"):
        by.folded_copy(nn.Linear(3, 3))


def test_command_line_lists_and_refuses_bad_runs(capsys):
    """``python -m bnref.experiments.beyond`` (the registry's command line over the group ``beyond``):
    list names the experiment; a run with an unknown
    name, without --out, or with --seeds 0 stops with a usage error before anything trains."""
    assert by.REGISTRY.main(["list"]) == 0
    assert "beyond-small-batch" in capsys.readouterr().out
    for argv in (["run", "nothing", "--out", "/tmp/x"], ["run", "beyond-small-batch"], ["run", "--seeds", "0"]):
        with pytest.raises(SystemExit) as stop:
            by.REGISTRY.main(argv)
        assert stop.value.code == 2, argv
