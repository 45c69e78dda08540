"""The running-average rules found in the wild, and how the conformance tool tells them apart by behaviour.

Every rule is the update of eq. ``eq-running-update``, ``r_k = (1 - w_k) r_{k-1} + w_k b_k``, with its own weight
``w_k`` of the new batch statistic at step ``k`` (1-based):

==================  =========================================  ==============================================
rule                w_k                                        where
==================  =========================================  ==============================================
constant            ``w``                                      PyTorch (``momentum`` = w = 0.1), Keras and Flax
                                                               (``momentum`` = 1 - w = 0.99), PaddlePaddle,
                                                               MindSpore, Jittor
cumulative          ``1 / k``                                  PyTorch ``momentum=None``; Ioffe & Szegedy's
                                                               population statistics
debiased            ``(1 - d) / (1 - d^k)``                    a zero-debiased exponential average of decay d:
                                                               Haiku ``BatchNorm``, Equinox ``mode="batch"``,
                                                               TensorFlow ``ExponentialMovingAverage(
                                                               zero_debias=True)``
first-replaces      ``1`` at k = 1, then ``w``                  Equinox ``mode="ema"``
==================  =========================================  ==============================================

The debiased rule in that form. A zero-debiased average keeps a hidden average that starts at zero,
``h_k = d h_{k-1} + (1 - d) b_k``, ``h_0 = 0``, and reads ``r_k = h_k / (1 - d^k)``. Haiku's
``ExponentialMovingAverage`` (dm-haiku, ``haiku/_src/moving_averages.py``: ``hidden = hidden * decay + value *
(one - decay)``, ``average /= (one - jnp.power(decay, counter))``, ``hidden`` initialised with ``jnp.zeros``)
does exactly this, and Haiku's ``BatchNorm`` feeds it the batch mean and variance (``haiku/_src/batch_norm.py``:
``self.mean_ema(mean)``, ``self.var_ema(var)``) and normalises at inference with ``mean_ema.average``. Equinox's
``BatchNorm(mode="batch")`` (``equinox/nn/_batch_norm.py``) keeps ``hidden_mean * momentum + mean * (1 -
momentum)`` and divides by ``1 - momentum**counter`` at inference. Since ``h_k = (1 - d^k) r_k``,

    ``(1 - d^k) r_k = d (1 - d^{k-1}) r_{k-1} + (1 - d) b_k``,

whose two weights sum to ``1 - d^k``: the debiased average is the update above with ``w_k = (1 - d) / (1 - d^k)``
(1 at the first step, ``1 / (1 + d)`` at the second, ``1 / (1 + d + d^2)`` at the third), and it tends to the
cumulative average as ``d -> 1``. A hidden average that does not start at zero (Equinox's ``mode="batch"`` starts
its hidden variance at 1) adds ``d^k h_0 / (1 - d^k)`` to ``r_k``: after one step ``d h_0 / (1 - d)``, 99 for d =
0.99; the tool reports it as an offset of the variance (``bnref.check.probes``).

Equinox's ``mode="ema"`` sets the running statistics to the first batch's (``lax.select(first_time, batch_mean,
mean)``) and then updates them with ``(1 - momentum) * batch + momentum * running``: the first-replaces rule.

Telling them apart takes three steps: the measured ``w_1, w_2, w_3`` are constant (constant), ``1, 1/2, 1/3``
(cumulative), ``1, w, w`` (first-replaces) or ``1, 1/(1 + d), 1/(1 + d + d^2)`` for the ``d`` that the second
step gives (debiased), each within the tolerance of the measurement (``infer_rule``).

NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bnref.check.report import decimal, short, snap
from bnref.conventions import Convention

__all__ = ["KINDS", "STEPS", "RunningRule", "infer_rule", "evidence"]

#: The rules, by name.
KINDS: tuple[str, ...] = ("constant", "cumulative", "debiased", "first-replaces")
#: The training steps the probe measures: enough to tell every rule from every other.
STEPS = 3


@dataclass(frozen=True)
class RunningRule:
    """A running-average rule: the weight ``w_k`` of the new batch statistic at step ``k`` (see the module docstring).

    Attributes
    ----------
    kind : {"constant", "cumulative", "debiased", "first-replaces"}
    w : float or None
        "constant": the weight of the new value (PyTorch's momentum; 1 - Keras' momentum). "first-replaces": the
        weight from the second step on. "debiased": ``1 - d`` for the decay ``d``. "cumulative": None.

    Examples
    --------
    >>> from bnref.conventions import PYTORCH
    >>> RunningRule("debiased", 0.01).weights(3)
    [1.0, 0.5025125628140701, 0.3366890003703585]
    >>> RunningRule.from_convention(PYTORCH).describe()
    'w = 0.1'
    """

    kind: str
    w: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "cumulative":
            if self.w is not None:
                raise ValueError("the cumulative average has no weight w (w_k = 1/k)")
        elif not (isinstance(self.w, int | float) and not isinstance(self.w, bool) and 0.0 <= self.w <= 1.0):
            raise ValueError(f"the {self.kind} rule needs a weight w in [0, 1]; got {self.w!r}")
        if self.kind == "debiased" and self.w == 0.0:
            raise ValueError("a debiased average needs a decay below 1 (w > 0)")

    @property
    def decay(self) -> float | None:
        """``d = 1 - w`` of a debiased average (None for the other rules)."""
        return None if self.kind != "debiased" else 1.0 - self.w

    def new_value_weight(self, step: int) -> float:
        """``w_k`` at the 1-based ``step``."""
        if not (isinstance(step, int) and step >= 1):
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        if self.kind == "constant":
            return float(self.w)
        if self.kind == "cumulative":
            return 1.0 / step
        if self.kind == "first-replaces":
            return 1.0 if step == 1 else float(self.w)
        d = self.decay
        return (1.0 - d) / (1.0 - d**step)

    def weights(self, steps: int = STEPS) -> list[float]:
        return [self.new_value_weight(k) for k in range(1, steps + 1)]

    @classmethod
    def from_convention(cls, convention: Convention) -> RunningRule:
        """The rule of a ``Convention``: the cumulative average for ``momentum=None``, else a constant weight."""
        if convention.momentum is None:
            return cls("cumulative")
        return cls("constant", convention.new_value_weight(1))

    def describe(self) -> str:
        """Short and stable: "w = 0.1", "w_k = 1/k", "debiased, decay 0.99", "first replaces, then w = 0.01"."""
        if self.kind == "constant":
            return f"w = {self.w:.6g}"
        if self.kind == "cumulative":
            return "w_k = 1/k"
        if self.kind == "debiased":
            return f"debiased, decay {self.decay:.6g}"
        return f"first replaces, then w = {self.w:.6g}"

    def explain(self) -> str:
        """The rule in words, with the frameworks' own parameters (the measured column of a report)."""
        if self.kind == "constant":
            w = self.w
            return f"w = {w:.6g} (torch momentum {w:.6g}; Keras/Flax momentum {short(1 - w)})"
        if self.kind == "cumulative":
            return "w_k = 1/k (cumulative average)"
        if self.kind == "debiased":
            return f"zero-debiased average, decay {self.decay:.6g}: w_k = (1 - d)/(1 - d^k)"
        return (
            f"first batch replaces the initial value, then w = {self.w:.6g} (Keras/Flax momentum {short(1 - self.w)})"
        )


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


def infer_rule(w: Sequence[float], tol: Sequence[float]) -> RunningRule | None:
    """The rule whose weights match the measured ``w = (w_1, w_2, w_3)`` within ``tol`` (None if none does).

    Tried in this order, so that a measurement that two rules explain gets the simpler: constant (which also
    holds ``1, 1, 1``), cumulative, first-replaces, debiased. The weight of the rule found is the shortest decimal
    within the tolerance of its measurement (0.1, not 0.10000002).
    """
    if len(w) < STEPS or len(tol) < STEPS:
        raise ValueError(f"infer_rule needs {STEPS} weights and tolerances, got {len(w)} and {len(tol)}")
    w1, w2, w3 = (float(v) for v in w[:STEPS])
    t1, t2, t3 = (float(v) for v in tol[:STEPS])
    if not all(math.isfinite(v) for v in (w1, w2, w3, t1, t2, t3)):
        return None
    if _close(w1, w2, t1 + t2) and _close(w2, w3, t2 + t3) and _close(w1, w3, t1 + t3):
        return RunningRule("constant", min(max(snap(w1, t1), 0.0), 1.0)) if -t1 <= w1 <= 1 + t1 else None
    if not _close(w1, 1.0, t1):
        return None
    if _close(w2, 0.5, t2) and _close(w3, 1 / 3, t3):
        return RunningRule("cumulative")
    if _close(w2, w3, t2 + t3) and -t2 <= w2 <= 1 + t2:
        return RunningRule("first-replaces", min(max(snap(w2, t2), 0.0), 1.0))
    if not 0.5 < w2 < 1.0:
        return None
    d = 1.0 / w2 - 1.0  # w_2 = 1 / (1 + d)
    predicted = 1.0 / (1.0 + d + d * d)
    # the tolerance of the prediction, carried from w_2: dw_3/dw_2 = (1 + 2d) w_3^2 / w_2^2
    carried = (1.0 + 2.0 * d) * predicted**2 / w2**2 * t2
    if _close(w3, predicted, t3 + carried):
        d_tol = t2 / w2**2
        return RunningRule("debiased", 1.0 - snap(d, d_tol))
    return None


def evidence(w: Sequence[float], tol: Sequence[float]) -> str:
    """The measured weights at the precision of their tolerances: "w_1 = 1, w_2 = 0.50251, w_3 = 0.33667"."""
    return ", ".join(f"w_{k} = {decimal(v, t)}" for k, (v, t) in enumerate(zip(w, tol, strict=True), start=1))
