"""Beyond Batch Normalization: the small-batch experiment of the chapter ``beyond``, and BN folded away.

The chapter ``beyond`` compares five normalisations in a LeNet-style network trained on MNIST with
batches of 2 to 128 examples. The experiment is declared once here (the group ``beyond`` of :data:`REGISTRY`)
and run in full by::

    python -m bnref.experiments run beyond-small-batch --out book/results/
    python -m bnref.experiments run beyond-small-batch --seeds 3 --device cuda --out /tmp/records

which writes one :class:`bnref.records.ExperimentRecord` (``beyond-small-batch.cpu.json``; ``python -m
bnref.experiments.beyond run ...`` is the same command over this group). The chapter shows the committed record
and runs a reduced configuration live (:func:`run_experiment` with ``overrides``), checked against the record's
spread with :func:`bnref.mnist.verdicts.within_spread`; :func:`check_record` fails when the record's
configuration no longer matches the definition here.

What is here
------------
* :func:`build_norm_lenet`: the LeNet of :func:`bnref.experiments.dynamics.build_lenet` with a pluggable
  normalisation (:func:`bnref.layers.ghost_renorm.norm_layer`: BN, Ghost BN, Batch Renorm, GroupNorm or
  LayerNorm) after each convolution and hidden linear layer.
* :func:`renorm_schedule`: the ``(r_max, d_max)`` schedule of Batch Renorm, by
  :func:`bnref.normalization.batch_renorm_clipping` with fixed step counts, the same at every batch size;
  :func:`judged`: whether a run is long enough to be judged (Batch Renorm: at least the schedule's length).
* :func:`verdicts` and :func:`unbeaten`: the rule that turns the record's seeds into the chapter's verdicts
  (:func:`bnref.mnist.verdicts.compare_paired`: the same sign for every seed and a mean difference beyond two
  standard errors, and 5 seeds for a close difference).
* :func:`folded_copy`: a model with every BN layer folded into the layer before it.

PyTorch is imported at the top of this module; ``import bnref`` does not import it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnref.experiments import probes as ex
from bnref.experiments.dynamics import train_steps
from bnref.experiments.registry import Data, Experiment, Registry
from bnref.layers.ghost_renorm import METHODS, BatchRenorm, GhostBatchNorm, norm_layer
from bnref.layers.precise_bn import precise_bn
from bnref.mnist.torch_training import evaluate
from bnref.mnist.verdicts import compare_paired
from bnref.normalization import batch_renorm_clipping
from bnref.records import ExperimentRecord

__all__ = [
    "REGISTRY",
    "EXPERIMENTS",
    "build_norm_lenet",
    "renorm_schedule",
    "renorm_steps",
    "run_steps",
    "judged",
    "NO_VERDICT",
    "learning_rate",
    "get_experiment",
    "run_experiment",
    "load_record",
    "check_record",
    "accuracies",
    "verdicts",
    "unbeaten",
    "folded_copy",
]

# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------


def build_norm_lenet(
    method: str, *, seed: int = 0, gn_groups: Sequence[int] = (3, 4, 4, 4), ghost_batch_size: int = 16
) -> nn.Sequential:
    """:func:`bnref.experiments.dynamics.build_lenet` with the normalisation ``method`` where that network has BN.

    ``conv 5x5, 6 -> norm -> ReLU -> max-pool -> conv 5x5, 16 -> norm -> ReLU -> max-pool -> Linear 400->120
    -> norm -> ReLU -> Linear 120->84 -> norm -> ReLU -> Linear 84->10``; the layers before a normalisation
    have no bias (every method here subtracts a mean, then adds its own ``beta``). The four norms see
    6, 16, 120 and 84 channels; ``gn_groups`` gives GroupNorm's groups for each. Every layer with weights
    is created in the same order whatever ``method``, and no normalisation layer draws random numbers,
    so one seed gives every method the same initial weights (for ``"bn"`` those of
    ``build_lenet(bn=True, seed=seed)``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}; got {method!r}")
    if len(gn_groups) != 4:
        raise ValueError(f"gn_groups needs one group count per normalisation layer (4); got {list(gn_groups)}")
    widths = (6, 16, 120, 84)
    image = method == "bn"
    norms = []
    for k, (c, g) in enumerate(zip(widths, gn_groups, strict=True)):
        layer = norm_layer(method, c, groups=g, ghost_batch_size=ghost_batch_size)
        if image and k < 2:
            layer = nn.BatchNorm2d(c)
        norms.append(layer)
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5, padding=2, bias=False), norms[0], nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False), norms[1], nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120, bias=False), norms[2], nn.ReLU(),
        nn.Linear(120, 84, bias=False), norms[3], nn.ReLU(),
        nn.Linear(84, 10),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# training rules
# --------------------------------------------------------------------------------------------


def learning_rate(cfg: dict[str, Any], batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``lr = base_lr * batch_size / base_batch``."""
    return cfg["base_lr"] * batch_size / cfg["base_batch"]


def renorm_schedule(step: int, cfg: dict[str, Any]) -> tuple[float, float]:
    """``(r_max, d_max)`` of Batch Renorm at the 0-based training ``step``, the same at every batch size.

    :func:`bnref.normalization.batch_renorm_clipping` with the step counts of ``cfg``: plain BN
    (``r_max = 1, d_max = 0``) for the first ``renorm_warmup_steps`` steps, then a linear relaxation that
    reaches ``renorm_d_max`` at step ``renorm_d_max_steps`` and ``renorm_r_max`` at step ``renorm_r_max_steps``
    (the paper's final values and its order: ``d_max`` first). The paper's counts (5,000, 25,000 and 40,000
    steps on ImageNet) are far beyond this chapter's budget; these are fixed counts that the longer runs honour,
    and :func:`judged` gives no verdict for a run shorter than the schedule.
    """
    return batch_renorm_clipping(
        step, cfg["renorm_r_max"], cfg["renorm_d_max"], cfg["renorm_warmup_steps"], cfg["renorm_r_max_steps"],
        cfg["renorm_d_max_steps"],
    )  # fmt: skip


def renorm_steps(cfg: dict[str, Any]) -> int:
    """The length of Batch Renorm's schedule in steps: the step from which its clipping is fully relaxed."""
    return max(cfg["renorm_r_max_steps"], cfg["renorm_d_max_steps"])


def run_steps(cfg: dict[str, Any], batch_size: int) -> int:
    """The number of training steps of a run at ``batch_size``: every batch size sees the same examples."""
    return cfg["epochs"] * (cfg["train_size"] // batch_size)


def judged(cfg: dict[str, Any], method: str, batch_size: int) -> bool:
    """Whether the run of ``method`` at ``batch_size`` may get a verdict: always, except Batch Renorm in a run
    shorter than its schedule (:func:`renorm_steps`), which ends before the clipping is fully relaxed and so
    does not test the method as the paper defines it."""
    return method != "renorm" or run_steps(cfg, batch_size) >= renorm_steps(cfg)


#: The word in the verdict table for a run that :func:`judged` excludes.
NO_VERDICT = "no verdict"


class _RenormClock:
    """``after_backward`` hook: sets every :class:`BatchRenorm`'s ``(r_max, d_max)`` for the next step."""

    def __init__(self, model: nn.Module, cfg: dict[str, Any]) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, BatchRenorm)]
        self.cfg = cfg
        self.set(0)

    def set(self, step: int) -> None:
        r_max, d_max = renorm_schedule(step, self.cfg)
        for m in self.layers:
            m.r_max, m.d_max = r_max, d_max

    def __call__(self, step: int, _model: nn.Module) -> None:
        self.set(step + 1)


# --------------------------------------------------------------------------------------------
# the runner: one seed
# --------------------------------------------------------------------------------------------


def _run_small_batch(cfg: dict[str, Any], seed: int, device: torch.device, data: Data) -> dict[str, Any]:
    """Every method at every batch size from the same initial weights and examples; test accuracy after a
    fixed number of examples seen; for BN also after precise BN."""
    x, y = ex.take_subset(data[0], data[1], cfg["train_size"], seed=seed)
    xt, yt = data[2][: cfg["test_size"]], data[3][: cfg["test_size"]]
    out: dict[str, dict[str, dict[str, float]]] = {m: {} for m in [*cfg["methods"], "bn-precise"]}
    for bs in cfg["batch_sizes"]:
        steps = run_steps(cfg, bs)
        for method in cfg["methods"]:
            model = build_norm_lenet(
                method, seed=seed, gn_groups=cfg["gn_groups"], ghost_batch_size=min(cfg["ghost_batch_size"], bs)
            ).to(device)
            clock = _RenormClock(model, cfg) if method == "renorm" else None
            t0 = time.perf_counter()
            loss = train_steps(
                model, x, y, steps=steps, batch_size=bs, lr=learning_rate(cfg, bs), momentum=cfg["momentum"],
                seed=seed, after_backward=clock,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            test_loss, test_acc = evaluate(model, xt, yt)
            tail = max(1, steps // 10)
            out[method][str(bs)] = {
                "test_acc": test_acc,
                "test_loss": test_loss,
                "train_loss_end": float(np.mean(loss[-tail:])),
                "steps": steps,
                "seconds": seconds,
            }
            if method == "bn":
                # precise BN over the first precise_examples training images, in batches of the training size
                n_precise = cfg["precise_examples"] // bs * bs
                precise_bn(model, x[:n_precise], batch_size=bs)
                p_loss, p_acc = evaluate(model, xt, yt)
                out["bn-precise"][str(bs)] = {"test_acc": p_acc, "test_loss": p_loss}
    return out


def _experiments() -> list[Experiment]:
    return [
        Experiment(
            "beyond-small-batch",
            "beyond",
            "LeNet with BN, Ghost BN, Batch Renorm, GroupNorm or LayerNorm, SGD with momentum on 6,144 MNIST images "
            "for 1 epoch at batch sizes 2 to 128 (learning rate scaled linearly with the batch size), test "
            "accuracy on 2,000 test images; BN also after precise BN; Batch Renorm's clipping relaxed over a fixed "
            "250 steps",
            {
                "methods": list(METHODS),
                "batch_sizes": [2, 4, 8, 16, 32, 128],
                "train_size": 6144,
                "test_size": 2000,
                "epochs": 1,
                "base_lr": 0.1,
                "base_batch": 128,
                "momentum": 0.9,
                "gn_groups": [3, 4, 4, 4],
                "ghost_batch_size": 16,
                "renorm_r_max": 3.0,
                "renorm_d_max": 5.0,
                "renorm_warmup_steps": 50,
                "renorm_d_max_steps": 150,
                "renorm_r_max_steps": 250,
                "precise_examples": 2048,
            },
            (0, 1, 2, 3, 4),
            _run_small_batch,
        ),
    ]


#: The chapter's experiment, the group ``beyond``.
REGISTRY = Registry({"beyond": _experiments()}, module="bnref.experiments.beyond")
EXPERIMENTS: dict[str, Experiment] = REGISTRY.experiments
get_experiment, run_experiment, load_record, check_record = REGISTRY.get, REGISTRY.run, REGISTRY.load, REGISTRY.check


# --------------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------------


def accuracies(record: ExperimentRecord, key: str = "test_acc") -> dict[str, dict[int, np.ndarray]]:
    """``method -> batch size -> per-seed values`` (in the order of ``record.seeds``) of one result field."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for _, res in record.per_seed():
        for method, by_bs in res.items():
            for bs, values in by_bs.items():
                out.setdefault(method, {}).setdefault(int(bs), []).append(values[key])
    return {m: {bs: np.asarray(v, dtype=np.float64) for bs, v in d.items()} for m, d in out.items()}


def verdicts(
    acc: dict[str, dict[int, np.ndarray]], baseline: str = "bn", cfg: dict[str, Any] | None = None
) -> dict[int, dict[str, str]]:
    """Each method against ``baseline`` at each batch size: ``"higher"``, ``"lower"``, ``"no measurable
    difference"`` or ``"undecided"`` by :func:`bnref.mnist.verdicts.compare_paired` (per-seed paired differences:
    the same sign for every seed and a mean beyond two standard errors; a close difference needs 5 seeds).

    With the experiment's ``cfg``, a run that :func:`judged` excludes gets :data:`NO_VERDICT` instead."""
    if baseline not in acc:
        raise ValueError(f"no method {baseline!r} in the accuracies; have {sorted(acc)}")
    out: dict[int, dict[str, str]] = {}
    for bs, base in sorted(acc[baseline].items()):
        out[bs] = {
            m: compare_paired(v[bs], base, "higher", "lower") if cfg is None or judged(cfg, m, bs) else NO_VERDICT
            for m, v in acc.items()
            if m != baseline
        }
    return out


def unbeaten(
    acc: dict[str, dict[int, np.ndarray]],
    batch_size: int,
    methods: Sequence[str] | None = None,
    cfg: dict[str, Any] | None = None,
) -> list[str]:
    """The methods that no other method beats at ``batch_size`` by the paired rule, highest mean first.

    Method ``o`` beats ``m`` when :func:`bnref.mnist.verdicts.compare_paired` finds ``o`` higher than ``m``.
    "Not beaten" is not "best": the relation is not transitive, so two listed methods may differ by less than the
    rule can see while one of them has beaten a third that the other has not (and a listed method may have a
    lower mean than one that is not listed). With the experiment's ``cfg``, runs that :func:`judged` excludes
    take no part: they neither beat nor are listed.
    """
    methods = list(acc if methods is None else methods)
    missing = [m for m in methods if m not in acc or batch_size not in acc[m]]
    if missing:
        raise ValueError(f"no values at batch size {batch_size} for {missing}")
    if cfg is not None:
        methods = [m for m in methods if judged(cfg, m, batch_size)]

    def beats(o: str, m: str) -> bool:
        return compare_paired(acc[o][batch_size], acc[m][batch_size], "higher", "lower") == "higher"

    kept = [m for m in methods if not any(beats(o, m) for o in methods if o != m)]
    return sorted(kept, key=lambda m: -float(acc[m][batch_size].mean()))


# --------------------------------------------------------------------------------------------
# deployment: BN folded away
# --------------------------------------------------------------------------------------------


def folded_copy(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` in which every BN layer that directly follows a ``Conv2d`` or ``Linear`` is folded into
    it by :func:`bnref.folding.fold_batch_norm` (eqs. ``eq-inference-affine`` and ``eq-fold``) and removed.

    The result computes the inference-mode function of ``model`` (BN with its running statistics) with one
    layer fewer per BN; the folded weights and biases are computed in float64 and stored in the layer's
    dtype. A BN layer after anything else is kept. ``model`` itself is not changed.
    """
    from bnref.folding import fold_batch_norm

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"folded_copy needs an nn.Sequential; got {type(model).__name__}")
    mods = list(model)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        layer = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        bn = isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(nxt, GhostBatchNorm)
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and bn:
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                raise ValueError("folded_copy folds only convolutions with groups == 1")

            def arr(t: torch.Tensor | None) -> np.ndarray | None:
                return None if t is None else t.detach().double().cpu().numpy()

            layout = "torch.Linear" if isinstance(layer, nn.Linear) else "torch.Conv"
            w, b = fold_batch_norm(
                arr(layer.weight), arr(layer.bias), arr(nxt.weight), arr(nxt.bias), arr(nxt.running_mean),
                arr(nxt.running_var), eps=nxt.eps, layer=layout,
            )  # fmt: skip
            # skip_init: no random initialisation (the global RNG is left alone); the values are copied in
            where = {"dtype": layer.weight.dtype, "device": layer.weight.device}
            if isinstance(layer, nn.Linear):
                new = torch.nn.utils.skip_init(nn.Linear, layer.in_features, layer.out_features, bias=True, **where)
            else:
                new = torch.nn.utils.skip_init(
                    nn.Conv2d, layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                    padding=layer.padding, dilation=layer.dilation, bias=True, padding_mode=layer.padding_mode,
                    **where,
                )  # fmt: skip
            with torch.no_grad():
                new.weight.copy_(torch.as_tensor(w))
                new.bias.copy_(torch.as_tensor(b))
            out.append(new.eval())
            i += 2
        else:
            out.append(copy.deepcopy(layer).eval())
            i += 1
    return nn.Sequential(*out).eval()


if __name__ == "__main__":
    raise SystemExit(REGISTRY.main())
