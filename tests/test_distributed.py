"""bnref.layers.sync_bn: synchronised BN on gloo processes (bnref.experiments.launcher) equals BN over the whole batch.

One ``torch.multiprocessing.spawn`` per world size (2 and 4 processes on localhost) runs every case of that
world size; the ranks return raw arrays and this process checks them against ``torch.nn.BatchNorm`` in
float64 over the concatenated batch (the reference).

Tolerances: each float32 result is compared, per channel, with the float64 reference against the bounds of
``bnref.testing.training_bounds`` (y, dx, dgamma, dbeta; the book's appendix ``ch-bounds``, eqs.
eq-bound-y, eq-bound-dx, eq-bound-dgamma, eq-bound-dbeta) and ``running_mean_bound`` /
``running_var_bound`` (eq-bound-running), all with ``m`` = values per channel of the *whole* batch. That is
the right ``m`` for the synchronised layer too: a sum of m terms has m - 1 additions whatever their order
(shard sums first, then the sum over ranks), and the probabilistic bound of eq-bound-unit holds for any
order. The Chan merge is computed in float64 on W x C numbers and adds nothing visible at float32.

Unsynchronised BN (each rank's plain BN on its own shard) must differ from the reference by more than
100 times the same bound, so the checks can tell the two apart. Communication is counted with
``bnref.experiments.launcher.count_collectives``, a shim around ``torch.distributed``'s functions.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from torch import nn  # noqa: E402

from bnref.experiments.launcher import count_collectives, launch, shard_bounds  # noqa: E402
from bnref.layers import torch_bn  # noqa: E402
from bnref.layers.sync_bn import SyncBatchNorm, convert_sync_batchnorm, merge_statistics  # noqa: E402
from bnref.testing import (  # noqa: E402
    channel_summaries,
    check_close,
    running_mean_bound,
    running_var_bound,
    training_bounds,
)

# name, per-example shape (C, ...), shard sizes, momentum, |mean|/std offset of the data
CASES = {
    2: [
        ("dense-even", (3,), (8, 8), 0.1, 0.0),
        ("dense-uneven", (3,), (3, 13), 0.1, 0.0),
        ("dense-single", (3,), (1, 9), 0.1, 0.0),
        ("dense-empty", (3,), (0, 10), 0.1, 0.0),
        ("dense-offset-cumulative", (3,), (6, 10), None, 300.0),
        ("nchw-uneven", (3, 4, 5), (2, 5), 0.1, 0.0),
        ("nchw-single", (3, 4, 5), (1, 4), 0.1, 0.0),
        ("nchw-empty", (3, 2, 3), (3, 0), 0.3, 0.0),
    ],
    4: [
        ("dense-even", (4,), (4, 4, 4, 4), None, 0.0),
        ("dense-uneven-single-empty", (4,), (5, 1, 0, 10), 0.1, 0.0),
        ("dense-offset", (4,), (2, 7, 3, 4), 0.1, 1000.0),
        ("nchw-uneven-empty", (3, 3, 4), (3, 0, 2, 1), 0.1, 0.0),
    ],
}
STEPS = 2  # training steps per case: the running estimates go through two updates


def _case_data(shape, sizes, offset, step, seed=0):
    """The whole batch of one step (float32 x, dy) and the affine parameters, the same on every rank."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    n, c = sum(sizes), shape[0]
    x = torch.randn((n, *shape), generator=g) * (0.5 + torch.rand(c, generator=g)).view(1, c, *[1] * (len(shape) - 1))
    x = x + offset * (1.0 + torch.rand(c, generator=g)).view(1, c, *[1] * (len(shape) - 1))
    dy = torch.randn((n, *shape), generator=g)
    weight = 0.5 + torch.rand(c, generator=torch.Generator().manual_seed(seed))
    bias = torch.randn(c, generator=torch.Generator().manual_seed(seed + 1))
    return x, dy, weight, bias


def _run_cases(rank: int, world_size: int) -> dict:
    """On one rank: every case of this world size; raw results for the parent to check."""
    out = {}
    for name, shape, sizes, momentum, offset in CASES[world_size]:
        start, stop = shard_bounds(sizes)[rank]
        c = shape[0]
        layer = SyncBatchNorm(c, momentum=momentum)
        res: dict = {"steps": []}
        for step in range(STEPS):
            x, dy, weight, bias = _case_data(shape, sizes, offset, step)
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
            layer.zero_grad()
            xs = x[start:stop].clone().requires_grad_(True)
            with count_collectives() as log:
                y = layer(xs)
                y.backward(dy[start:stop])
            grads = torch.stack([layer.weight.grad, layer.bias.grad])
            dist.all_reduce(grads)  # outside the counted step: the sum over ranks (what DDP's average scales)
            unsync = None
            if (stop - start) * int(np.prod(shape[1:])) >= 2:
                local = nn.BatchNorm1d(c) if len(shape) < 3 else nn.BatchNorm2d(c)
                with torch.no_grad():
                    local.weight.copy_(weight)
                    local.bias.copy_(bias)
                unsync = local(x[start:stop]).detach().numpy()
            res["steps"].append(
                {
                    "y": y.detach().numpy(),
                    "dx": xs.grad.numpy(),
                    "dgamma_sum": grads[0].numpy(),
                    "dbeta_sum": grads[1].numpy(),
                    "log": list(log),
                    "unsync_y": unsync,
                }
            )
        res["running_mean"] = layer.running_mean.numpy().copy()
        res["running_var"] = layer.running_var.numpy().copy()
        res["num_batches_tracked"] = int(layer.num_batches_tracked)
        layer.eval()
        x_eval = _case_data(shape, sizes, offset, STEPS)[0]
        with count_collectives() as log_eval, torch.no_grad():
            res["eval_y"] = layer(x_eval[start:stop]).numpy()
        res["eval_log"] = list(log_eval)
        out[name] = res
    out["_ddp"] = _ddp_step(rank, world_size)
    return out


def _ddp_step(rank: int, world_size: int) -> dict:
    """One DDP step of a small BN network converted with convert_sync_batchnorm: averaged gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3))
    model = convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    g = torch.Generator().manual_seed(5)
    sizes = [3 + 2 * r for r in range(world_size)]
    x, labels = torch.randn(sum(sizes), 6, generator=g), torch.randint(0, 3, (sum(sizes),), generator=g)
    start, stop = shard_bounds(sizes)[rank]
    loss = nn.functional.cross_entropy(ddp(x[start:stop]), labels[start:stop], reduction="sum") / sum(sizes)
    loss.backward()
    return {
        "sizes": sizes,
        "grads": [p.grad.numpy().copy() for p in model.parameters()],
        "running_var": model[2].running_var.numpy().copy(),
    }


@functools.cache
def _results(world_size: int) -> tuple[list[dict], None]:
    return launch(_run_cases, world_size), None


# ----------------------------------------------------------------------------------------------------
# The reference: nn.BatchNorm in float64 over the whole batch
# ----------------------------------------------------------------------------------------------------


def _channel_last(a: np.ndarray) -> np.ndarray:
    """(N, C, ...) -> (m, C), one column per channel."""
    return np.moveaxis(np.asarray(a, np.float64), 1, -1).reshape(-1, a.shape[1])


@functools.cache
def _reference(shape, sizes, momentum, offset):
    """Per step the float64 full-batch results and bounds; final running buffers and their bounds."""
    c = shape[0]
    ref = (nn.BatchNorm1d if len(shape) < 3 else nn.BatchNorm2d)(c, momentum=momentum).double()
    steps = []
    mean_b = np.zeros(c)
    var_b = np.zeros(c)
    for step in range(STEPS):
        x, dy, weight, bias = _case_data(shape, sizes, offset, step)
        with torch.no_grad():
            ref.weight.copy_(weight.double())
            ref.bias.copy_(bias.double())
        ref.zero_grad()
        x64 = x.double().requires_grad_(True)
        y = ref(x64)
        y.backward(dy.double())
        xl, dyl = _channel_last(x.numpy()), _channel_last(dy.numpy())
        mean, var = xl.mean(axis=0), xl.var(axis=0)
        x_hat = (xl - mean) / np.sqrt(var + ref.eps)
        s = channel_summaries(x_hat, dyl, mean, var, ref.eps)
        dgamma = ref.weight.grad.numpy().copy()
        bounds = training_bounds(s, weight.double().numpy(), bias.double().numpy(), dgamma, "float32")
        w = momentum if momentum is not None else 1.0 / (step + 1)
        mean_b = running_mean_bound(mean_b, w, s, mean, ref.running_mean.numpy(), "float32")
        var_b = running_var_bound(var_b, w, s, mean, var, ref.running_var.numpy(), "float32", True)
        steps.append(
            {
                "y": y.detach().numpy(),
                "dx": x64.grad.numpy(),
                "dgamma": dgamma,
                "dbeta": ref.bias.grad.numpy().copy(),
                "bounds": bounds,
            }
        )
    ref.eval()
    x_eval = _case_data(shape, sizes, offset, STEPS)[0]
    with torch.no_grad():
        eval_y = ref(x_eval.double()).numpy()
    return steps, ref.running_mean.numpy().copy(), ref.running_var.numpy().copy(), mean_b, var_b, eval_y


def _max_ratio(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> float:
    """max over channels of (max |actual - expected| in the channel) / (that channel's bound)."""
    if actual.shape[0] == 0:
        return 0.0
    err = np.abs(_channel_last(actual) - _channel_last(expected)).max(axis=0)
    return float((err / bound).max())


CASE_IDS = [(w, case[0]) for w in sorted(CASES) for case in CASES[w]]


@pytest.mark.parametrize("world_size,name", CASE_IDS, ids=[f"W{w}-{n}" for w, n in CASE_IDS])
def test_synchronised_equals_full_batch(world_size, name):
    """Outputs, input-gradient slices, summed parameter gradients and running buffers = full-batch BN."""
    results, _ = _results(world_size)
    shape, sizes, momentum, offset = next(c[1:] for c in CASES[world_size] if c[0] == name)
    steps, run_mean, run_var, mean_b, var_b, eval_y = _reference(shape, sizes, momentum, offset)
    bounds_of = shard_bounds(sizes)
    for rank, res in enumerate(results):
        start, stop = bounds_of[rank]
        got = res[name]
        for step, (mine, ref) in enumerate(zip(got["steps"], steps, strict=True)):
            b = ref["bounds"]
            assert mine["y"].shape == ref["y"][start:stop].shape
            for key in ("y", "dx"):
                ratio = _max_ratio(mine[key], ref[key][start:stop], b[key])
                assert ratio <= 1.0, f"rank {rank} step {step} {key}: error / bound = {ratio:.3g}"
            for key in ("dgamma", "dbeta"):
                err = np.abs(mine[f"{key}_sum"] - ref[key])
                assert np.all(err <= b[key]), f"rank {rank} step {step} {key} summed over ranks: {err} > {b[key]}"
        assert np.all(np.abs(got["running_mean"] - run_mean) <= mean_b), f"rank {rank} running_mean"
        assert np.all(np.abs(got["running_var"] - run_var) <= var_b), f"rank {rank} running_var"
        assert got["num_batches_tracked"] == STEPS
        # evaluation uses the running estimates: the float32 inference rounding (C eps32 per element,
        # eq-bound-inference) on top of the running buffers' own bounds
        from bnref.testing import inference_bound

        x_eval = _case_data(shape, sizes, offset, STEPS)[0][start:stop].numpy()
        if x_eval.shape[0]:
            _, _, weight, bias = _case_data(shape, sizes, offset, 0)
            eb = inference_bound(
                _channel_last(x_eval), weight.numpy(), bias.numpy(), run_mean, run_var, 1e-5, mean_b, var_b, "float32"
            )
            ratio = _max_ratio(got["eval_y"], eval_y[start:stop], eb)
            assert ratio <= 1.0, f"rank {rank} eval output: error / bound = {ratio:.3g}"


def _has_partial_shard(shape, sizes) -> bool:
    """Some rank holds >= 2 values per channel but not the whole batch (so plain BN runs and differs)."""
    per_example = int(np.prod(shape[1:]))
    return any(0 < n < sum(sizes) and n * per_example >= 2 for n in sizes)


UNSYNC_IDS = [(w, c[0]) for w in sorted(CASES) for c in CASES[w] if _has_partial_shard(c[1], c[2])]


@pytest.mark.parametrize("world_size,name", UNSYNC_IDS, ids=[f"W{w}-{n}" for w, n in UNSYNC_IDS])
def test_unsynchronised_differs_measurably(world_size, name):
    """Per-rank BN on its own shard misses the full-batch output by more than 100 times the bound."""
    results, _ = _results(world_size)
    shape, sizes, momentum, offset = next(c[1:] for c in CASES[world_size] if c[0] == name)
    steps = _reference(shape, sizes, momentum, offset)[0]
    bounds_of = shard_bounds(sizes)
    ratios = []
    for rank, res in enumerate(results):
        start, stop = bounds_of[rank]
        unsync = res[name]["steps"][0]["unsync_y"]
        if unsync is None or unsync.shape[0] == 0 or stop - start == sum(sizes):
            continue  # a rank with one value per channel cannot run plain BN; a rank with all data is the batch
        ratios.append(_max_ratio(unsync, steps[0]["y"][start:stop], steps[0]["bounds"]["y"]))
    assert ratios, "the case was chosen for having such a rank"
    assert min(ratios) > 100, f"unsynchronised BN error / bound per rank: {ratios}"


@pytest.mark.parametrize("world_size", sorted(CASES))
def test_two_collectives_per_step_and_their_bytes(world_size):
    """Exactly one all_gather (3C + 1 numbers) in the forward, one all_reduce (2C) in the backward."""
    results, _ = _results(world_size)
    for rank, res in enumerate(results):
        for name, shape, *_ in CASES[world_size]:
            c = shape[0]
            for step in res[name]["steps"]:
                log = step["log"]
                assert [e.op for e in log] == ["all_gather", "all_reduce"], (name, rank, log)
                gather, reduce = log
                assert gather.sent_bytes == (3 * c + 1) * 4 and gather.shape == (3 * c + 1,)
                assert gather.received_bytes == world_size * (3 * c + 1) * 4
                assert reduce.sent_bytes == reduce.received_bytes == 2 * c * 4
            assert res[name]["eval_log"] == [], f"{name}: evaluation communicated {res[name]['eval_log']}"


@pytest.mark.parametrize("world_size", sorted(CASES))
def test_ddp_gradients_are_the_full_batch_average(world_size):
    """DDP + convert_sync_batchnorm: every rank's averaged gradient is the full-batch gradient / W."""
    results, _ = _results(world_size)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    sizes = results[0]["_ddp"]["sizes"]
    g = torch.Generator().manual_seed(5)
    x, labels = torch.randn(sum(sizes), 6, generator=g), torch.randint(0, 3, (sum(sizes),), generator=g)
    loss = nn.functional.cross_entropy(model(x.double()), labels, reduction="sum") / sum(sizes)
    loss.backward()
    m = sum(sizes)
    for res in results:
        for got, p in zip(res["_ddp"]["grads"], model.parameters(), strict=True):
            expected = p.grad.numpy() / world_size
            # a few layers of m-term float32 sums: eq-bound-check with cond 10 for the chained layers
            assert check_close(got, expected, dtype="float32", m=m, cond=10.0, show="none").passed
        assert np.array_equal(res["_ddp"]["running_var"], results[0]["_ddp"]["running_var"])


# ----------------------------------------------------------------------------------------------------
# In one process: the merge, the drop-in, the fallback
# ----------------------------------------------------------------------------------------------------


def test_merge_matches_concatenation_and_beats_sum_of_squares():
    """Chan's merge of shard triples equals the two-pass statistics of the concatenation in float32 at
    |mean|/std = 1e3, where merging sums of squares (E[x^2] - E[x]^2) loses the variance."""
    g = torch.Generator().manual_seed(3)
    sizes = [5, 1, 0, 30, 12]
    x = 1000.0 + torch.randn(sum(sizes), 4, generator=g)
    shards = [x[a:b] for a, b in shard_bounds(sizes)]
    counts = torch.tensor([float(len(s)) for s in shards])
    means = torch.stack([s.mean(0) if len(s) else torch.zeros(4) for s in shards])
    m2s = torch.stack([((s - s.mean(0)) ** 2).sum(0) if len(s) else torch.zeros(4) for s in shards])
    n, mean, m2 = merge_statistics(counts, means, m2s)
    x64 = x.double()
    var64 = x64.var(0, unbiased=False)
    assert n == sum(sizes)
    m = sum(sizes)
    # mean: eq-bound-mean with cond 1; variance: eq-bound-two-pass as a relative bound, cond = 1 + r^2 e
    assert check_close(mean, x64.mean(0), dtype="float32", m=m, show="none").passed
    r = float((x64.mean(0).abs() / var64.sqrt()).max())
    from bnref.testing import reduction_error

    cond = 1 + r**2 * reduction_error("float32", m)
    assert check_close(m2 / n, var64, dtype="float32", m=m, cond=cond, show="none").passed
    sums = torch.stack([s.sum(0) for s in shards]).sum(0)
    squares = torch.stack([(s * s).sum(0) for s in shards]).sum(0)
    naive = squares / m - (sums / m) ** 2
    assert not check_close(naive, var64, dtype="float32", m=m, cond=cond, show="none").passed


def test_merge_rejects_bad_input():
    with pytest.raises(ValueError, match="counts"):
        merge_statistics(torch.tensor([1.0, -1.0]), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expected"):
        merge_statistics(torch.tensor([1.0]), torch.zeros(2, 3), torch.zeros(2, 3))


def test_drop_in_for_nn_syncbatchnorm():
    """Constructor, parameters, buffers, state_dict keys and version are those of nn.SyncBatchNorm."""
    ours, native = (
        SyncBatchNorm(7, 1e-3, None, True, True, None, bias=False),
        nn.SyncBatchNorm(7, 1e-3, None, bias=False),
    )
    assert list(ours.state_dict()) == list(native.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in native.named_parameters()]
    assert ours._version == native._version
    ours.load_state_dict(native.state_dict())
    native.load_state_dict(ours.state_dict())
    assert ours.process_group is None and ours.momentum is None and ours.eps == 1e-3
    with pytest.raises(ValueError, match="num_features"):
        SyncBatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        SyncBatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="2D"):
        SyncBatchNorm(3)(torch.zeros(3))
    with pytest.raises(ValueError, match="channels"):
        SyncBatchNorm(3)(torch.zeros(4, 2))


def test_without_process_group_it_is_plain_bn():
    """No initialised group: training and evaluation equal nn.BatchNorm (float32, eq-bound-y), no collective."""
    assert not dist.is_initialized()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 4, 4, generator=g) * 2 + 1
    ours, native = SyncBatchNorm(3, momentum=None), nn.BatchNorm2d(3, momentum=None).double()
    m = 16 * 16
    for _ in range(2):
        with count_collectives() as log:
            y = ours(x)
        assert log == []
        assert check_close(y.detach(), native(x.double()).detach(), dtype="float32", m=m, cond=3.0, show="none")
    assert check_close(ours.running_var, native.running_var, dtype="float32", m=m, show="none").passed
    ours.eval(), native.eval()
    assert check_close(ours(x).detach(), native(x.double()).detach(), dtype="float32", m=1, cond=10.0, show="none")


def test_convert_sync_batchnorm_converts_native_and_bnref_layers():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        torch_bn.BatchNorm2d(4, momentum=None),
        nn.Sequential(nn.SyncBatchNorm(4)),
    )
    model[1].running_mean.fill_(0.5)
    weight = model[1].weight
    model.eval()
    out = convert_sync_batchnorm(model, process_group="pg")
    assert out is model
    for layer in (out[1], out[2], out[3][0]):
        assert type(layer) is SyncBatchNorm and layer.process_group == "pg" and not layer.training
    assert out[1].weight is weight and float(out[1].running_mean[0]) == 0.5
    assert out[2].momentum is None
    single = convert_sync_batchnorm(nn.BatchNorm1d(3, affine=False))
    assert isinstance(single, SyncBatchNorm) and single.weight is None
    with pytest.raises(ValueError, match="Module"):
        convert_sync_batchnorm("not a module")


def test_committed_ddp_record_matches_the_experiment_definition():
    """The chapter's record describes the experiment bnref.experiments.distributed declares, with at least 3 seeds."""
    from pathlib import Path

    from bnref.experiments.distributed import DDP_EXPERIMENT, DDP_VARIANTS, REGISTRY
    from bnref.records import load_experiment

    experiment = REGISTRY.get(DDP_EXPERIMENT["name"])
    folder = Path(__file__).resolve().parents[1] / "book" / "results"
    record = load_experiment(folder / experiment.record_filename({"type": "cpu", "name": "any CPU"}))
    assert record.device["type"] == "cpu"
    REGISTRY.check(record)  # the config as defined (torch's version aside), the first k >= 3 seeds
    assert REGISTRY.load(DDP_EXPERIMENT["name"], folder).to_dict() == record.to_dict()
    for _, result in record.per_seed():
        assert set(result) == set(DDP_VARIANTS)
        assert len(result["single"]["epochs"]) == DDP_EXPERIMENT["epochs"]


def test_launch_refuses_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        launch(_run_cases, 0)
    with pytest.raises(ValueError, match="backend"):
        launch(_run_cases, 2, backend="mpi")
