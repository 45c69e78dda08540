"""Batch Normalization from scratch in PyTorch, with the derived backward pass.

Three layers of API, each a drop-in for its PyTorch counterpart:

* ``BatchNormFunction`` -- a ``torch.autograd.Function``: the training-mode forward (batch mean, biased
  variance, ``x_hat``, ``y``) and the *derived* backward (book, eqs. ``eq-dbeta``, ``eq-dgamma``,
  ``eq-dx-compact``), not autograd through the forward.
* ``batch_norm`` -- the functional form, with the meaning of ``torch.nn.functional.batch_norm``.
* ``BatchNorm`` -- a module with the constructor, parameters, buffers and ``state_dict`` keys of
  ``torch.nn.BatchNorm1d/2d/3d``, so it can replace them in any model and ``load_state_dict`` works
  both ways.

The convention (eps 1e-5, running update ``r = (1 - w) r + w b`` with ``w = momentum`` or ``1/k`` for
``momentum=None``, unbiased variance fed to the running estimate) is read from ``bnref.conventions.PYTORCH``.

Numerics. Statistics are computed in float32 for float16/bfloat16 inputs (as PyTorch does) and the output
is cast back to the input dtype. The variance is computed in two passes, ``mean((x - mean)^2)``, so inputs
with ``|mean| / std`` up to 1e3 keep float32 precision (the one-pass ``E[x^2] - E[x]^2`` would not).
"""

from __future__ import annotations

import torch
from torch import nn

from .conventions import PYTORCH, Convention

__all__ = ["BatchNormFunction", "batch_norm", "BatchNorm", "compute_dtype"]


# ----------------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float32 for float16/bfloat16, the input's own otherwise."""
    return torch.promote_types(dtype, torch.float32)


def _channel_axis(ndim: int, channel_axis: int) -> int:
    if ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (batch and channels), got {ndim}D input")
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for {ndim}D input")
    return channel_axis % ndim


def _reduce_dims(ndim: int, axis: int) -> tuple[int, ...]:
    """Every dimension but the channel one."""
    return tuple(d for d in range(ndim) if d != axis)


def _bshape(ndim: int, axis: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector ``(C,)`` against the input."""
    return tuple(-1 if d == axis else 1 for d in range(ndim))


def _values_per_channel(shape: torch.Size, axis: int) -> int:
    m = 1
    for d, n in enumerate(shape):
        if d != axis:
            m *= n
    return m


# ----------------------------------------------------------------------------------------------------
# The autograd Function: forward and the derived backward
# ----------------------------------------------------------------------------------------------------


class BatchNormFunction(torch.autograd.Function):
    """Training-mode Batch Normalization with the derived (compact) backward pass.

    Forward, per channel over the ``m`` values that share it (eqs. ``eq-batch-mean`` to ``eq-scale-shift``)::

        mean = sum(x) / m
        var = sum((x - mean)^2) / m              (biased, two passes)
        inv_std = 1 / sqrt(var + eps)
        x_hat = (x - mean) * inv_std
        y = gamma * x_hat + beta

    Backward, with ``dy = dL/dy`` (eqs. ``eq-dbeta``, ``eq-dgamma``, ``eq-dx-compact``)::

        dbeta = sum(dy)
        dgamma = sum(dy * x_hat)
        dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)

    Call as ``y, mean, var = BatchNormFunction.apply(x, weight, bias, eps, channel_axis)``.

    Parameters (of ``apply``)
    -------------------------
    x : Tensor, shape (N, C, ...) with the channels on ``channel_axis``
    weight, bias : Tensor of shape (C,), or None (scale 1, shift 0)
    eps : float
    channel_axis : int

    Returns
    -------
    y : Tensor, shape and dtype of x
    mean, var : Tensor, shape (C,), in the compute dtype (float32 for half inputs); the batch mean and the
        biased batch variance, returned for the running estimates and marked non-differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, channel_axis):  # type: ignore[override]
        axis = _channel_axis(x.dim(), channel_axis)
        dims, b = _reduce_dims(x.dim(), axis), _bshape(x.dim(), axis)
        cdtype = compute_dtype(x.dtype)
        xc = x.to(cdtype)

        mean = xc.mean(dim=dims)
        centred = xc - mean.view(b)
        var = (centred * centred).mean(dim=dims)  # second pass: no cancellation of large numbers
        inv_std = torch.rsqrt(var + eps)
        x_hat = centred * inv_std.view(b)

        y = x_hat
        if weight is not None:
            y = y * weight.to(cdtype).view(b)
        if bias is not None:
            y = y + bias.to(cdtype).view(b)

        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.axis, ctx.m, ctx.x_dtype = axis, _values_per_channel(x.shape, axis), x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dmean, _dvar):  # type: ignore[override]
        x_hat, inv_std, weight = ctx.saved_tensors
        dims, b = _reduce_dims(x_hat.dim(), ctx.axis), _bshape(x_hat.dim(), ctx.axis)
        m = ctx.m
        g = dy.to(x_hat.dtype)

        dbeta = g.sum(dim=dims)
        dgamma = (g * x_hat).sum(dim=dims)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            scale = inv_std if weight is None else weight.to(x_hat.dtype) * inv_std
            dx = (scale / m).view(b) * (m * g - dbeta.view(b) - x_hat * dgamma.view(b))
            dx = dx.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dweight = dgamma.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            dbias = dbeta.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None


# ----------------------------------------------------------------------------------------------------
# Functional form
# ----------------------------------------------------------------------------------------------------


def _check_channel_vector(t: torch.Tensor | None, name: str, channels: int, axis: int, shape) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.shape != (channels,):
        raise ValueError(
            f"{name} must have shape ({channels},) to match the {channels} channels on dim {axis} of the "
            f"input with shape {tuple(shape)}; got shape {tuple(t.shape)}"
        )


@torch.no_grad()
def _update_running_(running: torch.Tensor, batch_value: torch.Tensor, weight: float) -> None:
    """In place, ``running = (1 - w) * running + w * batch`` (book, eq. ``eq-running-update``)."""
    running.mul_(1.0 - weight).add_(batch_value.to(running.dtype), alpha=weight)


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = PYTORCH.momentum,  # type: ignore[assignment]
    eps: float = PYTORCH.eps,
    channel_axis: int = 1,
    *,
    convention: Convention = PYTORCH,
) -> torch.Tensor:
    """Batch Normalization with the meaning of ``torch.nn.functional.batch_norm``.

    Training (``training=True``): normalise with the batch statistics through ``BatchNormFunction`` and, if
    running estimates are given, update them in place::

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    (the factor ``m/(m-1)`` because ``convention.running_var == "unbiased"``). Inference
    (``training=False``): ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``.

    Parameters
    ----------
    x : Tensor, shape (N, C), (N, C, L), (N, C, H, W), ... with the channels on ``channel_axis``
    running_mean, running_var : Tensor of shape (C,), or None
        Updated in place in training; required in inference.
    weight, bias : Tensor of shape (C,), or None
    training : bool
    momentum : float
        The weight of the new batch statistic, in [0, 1] (as in ``F.batch_norm``; the module turns
        ``momentum=None`` into ``1 / num_batches_tracked`` before calling this).
    eps : float
    channel_axis : int
        1 for PyTorch's layouts; -1 lets channels-last tensors be normalised without a permute.
    convention : Convention
        Only its ``running_var`` field is used here (which batch variance feeds the running estimate).

    Returns
    -------
    Tensor, shape and dtype of x
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    axis = _channel_axis(x.dim(), channel_axis)
    channels = x.shape[axis]
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        _check_channel_vector(t, name, channels, axis, x.shape)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if training:
        return _batch_norm_train(x, running_mean, running_var, weight, bias, momentum, eps, axis, convention)
    if running_mean is None or running_var is None:
        raise ValueError("inference mode (training=False) needs running_mean and running_var")
    return _batch_norm_inference(x, running_mean, running_var, weight, bias, eps, axis)


def _batch_norm_train(x, running_mean, running_var, weight, bias, momentum, eps, axis, convention):
    m = _values_per_channel(x.shape, axis)
    if m < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
            f"(channels on dim {axis}); a variance needs at least 2 values"
        )
    y, mean, var = BatchNormFunction.apply(x, weight, bias, eps, axis)
    if running_mean is not None or running_var is not None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum (the weight of the new batch statistic) must lie in [0, 1], got {momentum!r}")
        if running_mean is not None:
            _update_running_(running_mean, mean, momentum)
        if running_var is not None:
            fed = var * (m / (m - 1)) if convention.running_var == "unbiased" else var
            _update_running_(running_var, fed, momentum)
    return y


def _batch_norm_inference(x, running_mean, running_var, weight, bias, eps, axis):
    cdtype, b = compute_dtype(x.dtype), _bshape(x.dim(), axis)
    scale = torch.rsqrt(running_var.to(cdtype) + eps)
    if weight is not None:
        scale = scale * weight.to(cdtype)
    y = (x.to(cdtype) - running_mean.to(cdtype).view(b)) * scale.view(b)
    if bias is not None:
        y = y + bias.to(cdtype).view(b)
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# The module: a drop-in for nn.BatchNorm1d / 2d / 3d
# ----------------------------------------------------------------------------------------------------


class BatchNorm(nn.Module):
    """Drop-in replacement for ``torch.nn.BatchNorm1d``, ``BatchNorm2d`` and ``BatchNorm3d``.

    Accepts inputs of shape (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W): channels on dim 1,
    statistics over every other dim (``m = N * L``, ``N * H * W``, ...).

    * ``.train()``: normalise with the batch mean and biased variance; if ``track_running_stats``, update
      ``running_mean``/``running_var`` by ``r = (1 - w) r + w b`` with ``w = momentum``, or ``w = 1/k`` at
      the k-th batch when ``momentum=None`` (cumulative average), the variance fed being ``m/(m-1) var``.
    * ``.eval()``: normalise with the running estimates if tracked, else with the batch statistics.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance inside the square root (default from ``PYTORCH.eps``).
    momentum : float or None
        Weight of the new batch statistic (default ``PYTORCH.momentum``); None: cumulative average.
    affine : bool
        Learnable ``weight`` (gamma, init 1) and ``bias`` (beta, init 0).
    bias : bool, keyword-only
        With ``affine``, whether ``bias`` exists (``nn.BatchNorm*`` gained this switch in PyTorch 2.13).
    track_running_stats : bool
        Keep the buffers ``running_mean`` (init 0), ``running_var`` (init 1), ``num_batches_tracked``.
    device, dtype
        Where and in which dtype the parameters and buffers live.

    Notes
    -----
    The parameter and buffer names equal ``nn.BatchNorm*``'s, so ``state_dict`` keys coincide and
    ``load_state_dict`` works in both directions.
    """

    _version = 2  # as nn.BatchNorm*: the state_dict carries num_batches_tracked

    def __init__(
        self,
        num_features: int,
        eps: float = PYTORCH.eps,
        momentum: float | None = PYTORCH.momentum,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self._convention(eps, momentum)  # validates eps and momentum
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.empty(num_features, **factory))
            self.register_buffer("running_var", torch.empty(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    @staticmethod
    def _convention(eps: float, momentum: float | None) -> Convention:
        """PyTorch's convention with this module's eps and momentum (validated by ``Convention``)."""
        return PYTORCH.replace(eps=eps, momentum=momentum)

    def reset_running_stats(self) -> None:
        """Running mean and variance back to their initial values, ``num_batches_tracked`` to 0."""
        if self.track_running_stats:
            self.running_mean.fill_(PYTORCH.init_mean)
            self.running_var.fill_(PYTORCH.init_var)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; weight (gamma) 1 and bias (beta) 0."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a Tensor, got {type(x).__name__}")
        if not 2 <= x.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input with channels on dim 1 (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels on dim 1, got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (N, C, ...); see the class docstring for the two modes."""
        self._check_input_dim(x)
        conv = self._convention(self.eps, self.momentum)
        new_value_weight = 0.0
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # w_k needs the step only for the cumulative average (momentum=None); avoid a device sync otherwise.
            step = int(self.num_batches_tracked.item()) if conv.momentum is None else 1
            new_value_weight = conv.new_value_weight(step)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            new_value_weight,
            self.eps,
            channel_axis=1,
            convention=conv,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )
