"""Ghost Batch Normalization and Batch Renormalization as PyTorch layers, and a pluggable normalisation layer.

* :class:`GhostBatchNorm`: BN whose training-mode statistics are computed per consecutive sub-batch of
  ``ghost_batch_size`` examples (Hoffer et al. 2017), the torch twin of
  :func:`bnref.normalization.ghost_batch_norm_forward` and its running update.
* :class:`BatchRenorm`: Batch Renormalization (Ioffe 2017) with ``r`` and ``d`` held constant in the
  gradient, the torch twin of :func:`bnref.normalization.batch_renorm_forward` and
  :func:`~bnref.normalization.batch_renorm_running_update`.
* :func:`norm_layer`: one of the normalisations of :data:`METHODS` (BN, Ghost BN, Batch Renorm, GroupNorm,
  LayerNorm) over a number of channels, as the chapter "Beyond Batch Normalization" plugs them into a network
  (:func:`bnref.experiments.beyond.build_norm_lenet`).

This module imports PyTorch at the top; ``import bnref`` and ``import bnref.layers`` do not import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["METHODS", "GhostBatchNorm", "BatchRenorm", "norm_layer", "check_count"]

#: The normalisations :func:`norm_layer` builds, with what each one is in torch.
METHODS: dict[str, str] = {
    "bn": "Batch Normalization: nn.BatchNorm2d / nn.BatchNorm1d",
    "ghost": "Ghost Batch Normalization: bnref.layers.ghost_renorm.GhostBatchNorm",
    "renorm": "Batch Renormalization: bnref.layers.ghost_renorm.BatchRenorm",
    "gn": "Group Normalization: nn.GroupNorm(G, C)",
    "ln": "Layer Normalization over (C, H, W): nn.GroupNorm(1, C)",
}


def check_count(name: str, value: object, low: int) -> int:
    """``value`` as an int, ValueError unless it is an integer (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


class GhostBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Ghost Batch Normalization (Hoffer et al. 2017): BN over consecutive sub-batches ("ghost batches").

    In training, a batch of ``N`` examples is split into ``N / ghost_batch_size`` consecutive ghost
    batches; each is normalised with its own mean and biased variance over every axis but the channel
    axis 1 (PyTorch's BN on that slice, eq. ``eq-ghost-bn``); ``gamma`` (``weight``) and ``beta`` (``bias``)
    are shared. The running statistics get one PyTorch update per ghost batch, in order
    (``r <- (1 - momentum) r + momentum b``, the unbiased ghost-batch variance for ``running_var``), as
    :func:`bnref.normalization.ghost_batch_norm_running_update` with the PyTorch convention. In
    inference it is plain BN with the running statistics. ``ghost_batch_size == N`` is
    ``nn.BatchNorm*``, value for value.

    A batch that ``ghost_batch_size`` does not divide, or one smaller than it, raises ValueError (the rule
    of :func:`bnref.normalization.ghost_batch_norm_forward`). Input ``(N, C)``, ``(N, C, L)`` or
    ``(N, C, H, W)``; a subclass of PyTorch's ``_BatchNorm``, so :func:`bnref.layers.precise_bn.precise_bn`
    treats it as a BN layer.
    """

    def __init__(
        self, num_features: int, ghost_batch_size: int, eps: float = 1e-5, momentum: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        self.ghost_batch_size = check_count("ghost_batch_size", ghost_batch_size, 1)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"GhostBatchNorm expects (N, C), (N, C, L) or (N, C, H, W) input; got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        n, g = x.shape[0], self.ghost_batch_size
        if g > n:
            raise ValueError(f"ghost_batch_size={g} is larger than the batch of {n} examples")
        if n % g:
            raise ValueError(f"ghost_batch_size={g} does not divide the batch of {n} examples")
        ghosts = []
        for chunk in x.split(g, dim=0):
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            ghosts.append(
                F.batch_norm(
                    chunk, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
                )
            )
        return torch.cat(ghosts, dim=0) if len(ghosts) > 1 else ghosts[0]


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe 2017, Algorithm 1), channels on axis 1, eq. ``eq-batch-renorm``.

    Training mode, per channel, with the batch mean ``mu_B`` and biased variance ``var_B``::

        sigma_B = sqrt(var_B + eps),  sigma = sqrt(running_var + eps)
        r = clip(sigma_B / sigma, 1 / r_max, r_max)        (no gradient)
        d = clip((mu_B - running_mean) / sigma, -d_max, d_max)   (no gradient)
        y = gamma * ((x - mu_B) / sigma_B * r + d) + beta

    then the running statistics move with ``w = 1 - momentum`` (Keras' rule, ``momentum`` the weight of
    the old value; the paper averages the standard deviation)::

        running_mean <- momentum * running_mean + w * mu_B
        sigma'       <- momentum * sigma + w * sigma_B,   running_var <- max(sigma'^2 - eps, 0)

    as :func:`bnref.normalization.batch_renorm_running_update`. The layer thus keeps the paper's running standard
    deviation ``sigma`` (it averages ``sigma_B``, not ``var_B``), stored as ``running_var = sigma^2 - eps`` so
    that the buffers have BN's names and meaning. Inference:
    ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``. ``r_max`` and ``d_max`` are plain
    attributes the training loop sets at every step (the chapter's schedule:
    :func:`bnref.experiments.beyond.renorm_schedule`); ``r_max = 1, d_max = 0`` is BN. The gradient is
    :func:`bnref.normalization.batch_renorm_backward`'s: autograd through ``x_hat`` with ``r`` and ``d`` detached.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9) -> None:
        super().__init__()
        self.num_features = check_count("num_features", num_features, 1)
        if not (isinstance(eps, float) and eps > 0):
            raise ValueError(f"eps must be a positive float; got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1]; got {momentum!r}")
        self.eps, self.momentum = eps, momentum
        self.r_max, self.d_max = 1.0, 0.0
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, d_max={self.d_max}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            c = self.num_features
            raise ValueError(f"BatchRenorm({c}) expects input (N, {c}, ...); got {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        gamma, beta = self.weight.view(shape), self.bias.view(shape)
        if not self.training:
            inv_std = torch.rsqrt(self.running_var + self.eps)
            return gamma * (x - self.running_mean.view(shape)) * inv_std.view(shape) + beta
        if self.r_max < 1.0 or self.d_max < 0.0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0; got {self.r_max}, {self.d_max}")
        dims = [0, *range(2, x.dim())]
        if x.numel() // self.num_features < 2:
            raise ValueError("BatchRenorm needs at least 2 values per channel in training")
        mu_b = x.mean(dim=dims)
        sigma_b = torch.sqrt(x.var(dim=dims, unbiased=False) + self.eps)
        with torch.no_grad():
            sigma = torch.sqrt(self.running_var + self.eps)
            r = torch.clamp(sigma_b / sigma, 1.0 / self.r_max, self.r_max)
            d = torch.clamp((mu_b - self.running_mean) / sigma, -self.d_max, self.d_max)
            w = 1.0 - self.momentum
            self.running_mean.mul_(self.momentum).add_(w * mu_b)
            new_sigma = self.momentum * sigma + w * sigma_b
            self.running_var.copy_(torch.clamp(new_sigma**2 - self.eps, min=0.0))
        x_hat = (x - mu_b.view(shape)) / sigma_b.view(shape)
        return gamma * (x_hat * r.view(shape) + d.view(shape)) + beta


def norm_layer(method: str, channels: int, *, groups: int = 1, ghost_batch_size: int = 1) -> nn.Module:
    """One normalisation layer over ``channels`` (input ``(N, C)`` or ``(N, C, H, W)``).

    ``"bn"``: ``nn.BatchNorm1d``, which accepts both shapes (for images
    :func:`bnref.experiments.beyond.build_norm_lenet` uses ``nn.BatchNorm2d``, which gives the same numbers).
    ``"ghost"``: :class:`GhostBatchNorm`. ``"renorm"``: :class:`BatchRenorm`. ``"gn"``: ``nn.GroupNorm(groups, C)``.
    ``"ln"``: ``nn.GroupNorm(1, C)``, Layer Normalization over all of an example's ``(C, H, W)`` values with one
    ``gamma`` and ``beta`` per channel (``nn.LayerNorm([C, H, W])`` normalises the same values but has one
    ``gamma`` per value).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}; got {method!r}")
    channels = check_count("channels", channels, 1)
    if method == "bn":
        return nn.BatchNorm1d(channels)
    if method == "ghost":
        return GhostBatchNorm(channels, ghost_batch_size)
    if method == "renorm":
        return BatchRenorm(channels)
    groups = 1 if method == "ln" else check_count("groups", groups, 1)
    if channels % groups:
        raise ValueError(f"groups={groups} does not divide the {channels} channels")
    return nn.GroupNorm(groups, channels)
