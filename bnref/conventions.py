"""Each framework's Batch Normalization convention, written once as data.

Every implementation, test and chapter reads eps, momentum, the running-variance bias, the default
channel axis and the batch-variance formula from here, so a convention is stated in exactly one place.

The running estimates of all three conventions are one update rule (book, eq. ``eq-running-update``)::

    r_k = (1 - w_k) * r_{k-1} + w_k * b_k

where ``b_k`` is the statistic of batch ``k`` (the mean, or the variance with the convention's bias),
and the weight ``w_k`` on the new value is

=================  =================================================================
convention          w_k
=================  =================================================================
PyTorch             ``momentum`` (default 0.1)
Keras               ``1 - momentum`` (default momentum 0.99, so w = 0.01)
Flax (linen)        ``1 - momentum`` (default momentum 0.99, so w = 0.01)
cumulative / paper  ``1 / k`` (PyTorch ``momentum=None``; Ioffe & Szegedy, Algorithm 2)
=================  =================================================================

With ``w_k = 1/k`` the first batch replaces the initial value, and after k steps ``r_k`` is the plain
average of the k batch statistics. For the variance with the unbiased correction this is exactly the
paper's Algorithm 2 inference statistic ``Var[x] = m / (m - 1) * E_B[sigma_B^2]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from . import validation as v

__all__ = [
    "Convention",
    "PYTORCH",
    "PYTORCH_CUMULATIVE",
    "KERAS",
    "PAPER",
    "FLAX",
    "FLAX_TWO_PASS",
    "CONVENTIONS",
    "get_convention",
]


@dataclass(frozen=True)
class Convention:
    """A Batch Normalization convention as data.

    Attributes
    ----------
    name : str
        Short identifier (``"pytorch"``, ``"keras"``, ``"paper"``, ...).
    eps : float
        The stabiliser added to the variance inside the square root, ``sqrt(var + eps)``.
    momentum : float or None
        The framework's own momentum argument, in the framework's own meaning (see
        ``momentum_weights``). ``None`` selects the cumulative average, weight ``1/k`` at step ``k``.
    momentum_weights : {"new", "old"}
        ``"new"``: momentum is the weight of the new batch statistic (PyTorch).
        ``"old"``: momentum is the weight kept on the old running value (Keras).
    running_var : {"unbiased", "biased"}
        Which batch variance feeds the running estimate: ``"unbiased"`` multiplies the biased
        variance by ``m / (m - 1)`` with ``m`` the number of values per channel; ``"biased"`` uses it
        as is. Normalisation in training always uses the biased variance in all conventions here.
    axis : int
        The default channel axis: 1 for NCHW / (N, C) layouts, -1 for channels-last.
    init_mean, init_var : float
        Initial running mean and variance (0 and 1 in every convention here); finite, ``init_var >= 0``.
    var_method : {"two-pass", "one-pass"}
        How the batch variance (used to normalise, and fed to the running estimate) is computed.
        ``"two-pass"``: the mean first, then ``mean((x - mean)^2)`` (eq. ``eq-batch-var``; Welford-type
        and corrected two-pass algorithms count here too), accurate whatever ``|mean| / std``.
        ``"one-pass"``: ``mean(x^2) - mean(x)^2`` (eq. ``eq-fwd-one-pass``), which loses about
        ``2 log10(|mean| / std)`` digits (``flax.linen.BatchNorm``'s default, ``use_fast_variance=True``).
        Default ``"two-pass"``.
    """

    name: str
    eps: float
    momentum: float | None
    momentum_weights: Literal["new", "old"]
    running_var: Literal["unbiased", "biased"]
    axis: int
    init_mean: float = 0.0
    init_var: float = 1.0
    var_method: Literal["two-pass", "one-pass"] = "two-pass"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string; got {self.name!r} ({type(self.name).__name__})")
        v.check_eps(self.eps)
        if self.momentum is not None and not 0.0 <= v.check_real(self.momentum, "momentum") <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1] or be None (the cumulative average); got {self.momentum!r}")
        v.check_choice(self.momentum_weights, "momentum_weights", ("new", "old"))
        v.check_choice(self.running_var, "running_var", ("unbiased", "biased"))
        v.check_int(self.axis, "axis")
        if not math.isfinite(v.check_real(self.init_mean, "init_mean")):
            raise ValueError(f"init_mean must be finite; got {self.init_mean!r}")
        init_var = v.check_real(self.init_var, "init_var")
        if not (init_var >= 0 and math.isfinite(init_var)):
            raise ValueError(f"init_var must be a finite number >= 0 (a variance); got {self.init_var!r}")
        v.check_choice(self.var_method, "var_method", ("two-pass", "one-pass"))

    def new_value_weight(self, step: int) -> float:
        """Weight ``w_k`` of the new batch statistic in the running update at 1-based step ``k``.

        Parameters
        ----------
        step : int
            The number of training batches seen *including* the current one (PyTorch's
            ``num_batches_tracked`` after it is incremented), so the first batch is step 1.

        Examples
        --------
        >>> from bnref import KERAS, PAPER, PYTORCH
        >>> PYTORCH.new_value_weight(step=5)
        0.1
        >>> KERAS.new_value_weight(step=5)  # 1 - 0.99, rounded in binary floating point
        0.010000000000000009
        >>> [PAPER.new_value_weight(step) for step in (1, 2, 4)]
        [1.0, 0.5, 0.25]
        """
        if self.momentum is None:
            step = v.check_int(step, "step")
            if step < 1:
                raise ValueError(f"the cumulative average needs step >= 1; got {step}")
            return 1.0 / step
        return self.momentum if self.momentum_weights == "new" else 1.0 - self.momentum

    def replace(self, **changes: object) -> Convention:
        """A copy with some fields changed.

        Examples
        --------
        >>> from bnref import PYTORCH, PYTORCH_CUMULATIVE
        >>> PYTORCH.replace(name="pytorch-cumulative", momentum=None) == PYTORCH_CUMULATIVE
        True
        """
        return dataclasses.replace(self, **changes)


#: ``torch.nn.BatchNorm1d/2d/3d`` defaults: eps 1e-5, r = (1 - 0.1) r + 0.1 b, unbiased running variance, NCHW.
PYTORCH = Convention(name="pytorch", eps=1e-5, momentum=0.1, momentum_weights="new", running_var="unbiased", axis=1)

#: PyTorch with ``momentum=None``: the cumulative average of the batch statistics.
PYTORCH_CUMULATIVE = PYTORCH.replace(name="pytorch-cumulative", momentum=None)

#: ``keras.layers.BatchNormalization`` defaults: eps 1e-3, r = 0.99 r + 0.01 b, biased running variance, NHWC.
KERAS = Convention(name="keras", eps=1e-3, momentum=0.99, momentum_weights="old", running_var="biased", axis=-1)

#: Ioffe & Szegedy (2015), Algorithm 2: the population mean is the average of the batch means and the
#: population variance is m/(m-1) times the average batch variance. As a running update this is the
#: cumulative average with the unbiased variance, i.e. the same rule as ``PYTORCH_CUMULATIVE``. The paper
#: names no value for eps; 1e-5 is used here, as in PyTorch.
PAPER = Convention(name="paper", eps=1e-5, momentum=None, momentum_weights="new", running_var="unbiased", axis=1)

#: ``flax.linen.BatchNorm`` defaults (flax 0.12.8, measured in tests/test_jax_bn.py): eps 1e-5 inside the sqrt,
#: r = 0.99 r + 0.01 b (momentum on the old value), biased running variance, channels last (every axis but the
#: last reduced), and the one-pass variance E[x^2] - E[x]^2 (``use_fast_variance=True``).
FLAX = Convention(
    name="flax", eps=1e-5, momentum=0.99, momentum_weights="old", running_var="biased", axis=-1, var_method="one-pass"
)

#: ``flax.linen.BatchNorm(use_fast_variance=False)``: Flax with the two-pass variance ``mean(|x - mean|^2)``.
FLAX_TWO_PASS = FLAX.replace(name="flax-two-pass", var_method="two-pass")

CONVENTIONS: dict[str, Convention] = {
    c.name: c for c in (PYTORCH, PYTORCH_CUMULATIVE, KERAS, PAPER, FLAX, FLAX_TWO_PASS)
}


def get_convention(name: str | Convention) -> Convention:
    """Look a convention up by name (``"pytorch"``, ``"pytorch-cumulative"``, ``"keras"``, ``"paper"``,
    ``"flax"``, ``"flax-two-pass"``); a ``Convention`` is returned as it is."""
    if isinstance(name, Convention):
        return name
    if not isinstance(name, str):
        raise TypeError(f"convention must be a Convention or the name of one; got {name!r} ({type(name).__name__})")
    if name not in CONVENTIONS:
        raise ValueError(f"unknown convention {name!r}; known: {', '.join(sorted(CONVENTIONS))}")
    return CONVENTIONS[name]
