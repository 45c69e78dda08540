"""Batch Normalization from scratch in PyTorch, with the derived backward pass.

Three layers of API, each a drop-in for its PyTorch counterpart:

* ``BatchNormFunction`` -- a ``torch.autograd.Function``: the training-mode forward (batch mean, biased
  variance, ``x_hat``, ``y``) and the *derived* backward (book, eqs. ``eq-dbeta``, ``eq-dgamma``,
  ``eq-dx-compact``), not autograd through the forward. The backward is written in differentiable torch
  operations, so it can itself be differentiated (double backward, gradient penalties).
* ``batch_norm`` -- the functional form, with the meaning of ``torch.nn.functional.batch_norm``.
* ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` -- modules with the constructor, parameters, buffers,
  ``state_dict`` keys and versioning, and input-rank checks of ``torch.nn.BatchNorm1d/2d/3d``; ``BatchNorm``
  accepts any of their ranks (2D to 5D). All subclass ``torch.nn.modules.batchnorm._BatchNorm``, the native
  layers' base, so ``isinstance``-based tools treat them as BN layers (``nn.SyncBatchNorm.
  convert_sync_batchnorm`` turns them into native ``SyncBatchNorm`` layers with their weights and
  statistics); from that base they inherit only the bookkeeping (parameters and buffers, ``reset_*``,
  loading old state dicts without ``num_batches_tracked``); the forward and backward are bnref's.

The convention (eps 1e-5, running update ``r = (1 - w) r + w b`` with ``w = momentum`` or ``1/k`` for
``momentum=None``, unbiased variance fed to the running estimate) is read from ``bnref.conventions.PYTORCH``.

Numerics. Statistics are computed in float32 for float16/bfloat16 inputs (as PyTorch does) and the output
is cast back to the input dtype. The variance is computed in two passes, ``mean((x - mean)^2)``, so inputs
with ``|mean| / std`` up to 1e3 keep float32 precision (the one-pass ``E[x^2] - E[x]^2`` would not).

Errors. Bad input raises ``ValueError`` naming the problem. Where PyTorch raises ``RuntimeError`` for a
shape mismatch (a buffer or parameter whose length is not the channel count), bnref raises
``ShapeMismatchError``, which is both a ``ValueError`` and a ``RuntimeError``, so code written against either
catches it. eps follows PyTorch: > 0 in training, >= 0 in inference, checked at the forward.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from bnref.conventions import PYTORCH, Convention

__all__ = [
    "BatchNormFunction",
    "batch_norm",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "ShapeMismatchError",
    "compute_dtype",
    "input_gradient",
    "scale_and_shift",
]


class ShapeMismatchError(ValueError, RuntimeError):
    """A tensor's shape does not match the channel count: a ValueError that is also PyTorch's RuntimeError."""


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


def _mean_var(xc: torch.Tensor, dims: tuple[int, ...], b: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance, in two passes (no cancellation of large numbers)."""
    mean = xc.mean(dim=dims)
    centred = xc - mean.view(b)
    return mean, (centred * centred).mean(dim=dims)


def scale_and_shift(x_hat: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, b) -> torch.Tensor:
    """``y = gamma * x_hat + beta`` (eq. ``eq-scale-shift``), with ``gamma = 1`` / ``beta = 0`` when absent.

    ``b`` is the shape that broadcasts a per-channel vector against ``x_hat`` (``(1, C, 1, 1)`` for NCHW).
    """
    y = x_hat
    if weight is not None:
        y = y * weight.to(x_hat.dtype).view(b)
    if bias is not None:
        y = y + bias.to(x_hat.dtype).view(b)
    return y


def input_gradient(
    dy: torch.Tensor,
    x_hat: torch.Tensor,
    inv_std: torch.Tensor,
    weight: torch.Tensor | None,
    dbeta: torch.Tensor,
    dgamma: torch.Tensor,
    m: int,
    b,
) -> torch.Tensor:
    """``dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)`` (eq. ``eq-dx-compact``).

    ``dbeta = sum(dy)`` and ``dgamma = sum(dy * x_hat)`` are per-channel sums over all ``m`` values of the
    channel: over the batch here, over every rank's shard in ``bnref.experiments.distributed``. ``m = 0`` (an empty
    batch) gives an empty ``dx``.
    """
    scale = inv_std if weight is None else weight.to(dy.dtype) * inv_std
    return (scale / max(m, 1)).view(b) * (m * dy - dbeta.view(b) - x_hat * dgamma.view(b))


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

    The backward is made of differentiable torch operations. When autograd records it (``create_graph=True``,
    a double backward), ``mean``, ``inv_std`` and ``x_hat`` are rebuilt from the saved input ``x`` inside the
    graph, so the second derivative is the derivative of the formula above; otherwise the saved statistics
    are reused. An empty batch (``m = 0``) gives an empty ``y`` and zero ``dgamma``, ``dbeta``.

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

        mean, var = _mean_var(xc, dims, b)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (xc - mean.view(b)) * inv_std.view(b)
        y = scale_and_shift(x_hat, weight, bias, b)

        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.axis, ctx.eps, ctx.m = axis, eps, _values_per_channel(x.shape, axis)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):  # type: ignore[override]
        x, weight, mean, inv_std = ctx.saved_tensors
        dims, b = _reduce_dims(x.dim(), ctx.axis), _bshape(x.dim(), ctx.axis)
        m = ctx.m
        xc = x.to(compute_dtype(x.dtype))
        if torch.is_grad_enabled():  # double backward: the statistics as functions of x, inside the graph
            mean, var = _mean_var(xc, dims, b)
            inv_std = torch.rsqrt(var + ctx.eps)
        x_hat = (xc - mean.view(b)) * inv_std.view(b)
        g = dy.to(xc.dtype)

        dbeta = g.sum(dim=dims)
        dgamma = (g * x_hat).sum(dim=dims)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = input_gradient(g, x_hat, inv_std, weight, dbeta, dgamma, m, b).to(x.dtype)
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
        raise ShapeMismatchError(
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

    As in PyTorch: training needs ``eps > 0`` and more than one value per channel, except that an empty
    batch (``m = 0``) gives an empty output and leaves the running estimates alone; inference needs
    ``eps >= 0``.

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
    if training and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, got {eps!r}")
    if not eps >= 0:
        raise ValueError(f"batch_norm eps must be non-negative, got {eps!r}")
    if training:
        return _batch_norm_train(x, running_mean, running_var, weight, bias, momentum, eps, axis, convention)
    if running_mean is None or running_var is None:
        raise ValueError("inference mode (training=False) needs running_mean and running_var")
    return _batch_norm_inference(x, running_mean, running_var, weight, bias, eps, axis)


def _batch_norm_train(x, running_mean, running_var, weight, bias, momentum, eps, axis, convention):
    m = _values_per_channel(x.shape, axis)
    if m == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
            f"(channels on dim {axis}); a variance needs at least 2 values"
        )
    y, mean, var = BatchNormFunction.apply(x, weight, bias, eps, axis)
    if m > 0 and (running_mean is not None or running_var is not None):
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
# The modules: drop-ins for nn.BatchNorm1d / 2d / 3d
# ----------------------------------------------------------------------------------------------------


class BatchNorm(_BatchNorm):
    """Drop-in replacement for ``torch.nn.BatchNorm1d``, ``BatchNorm2d`` and ``BatchNorm3d``.

    Accepts inputs of shape (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W): channels on dim 1,
    statistics over every other dim (``m = N * L``, ``N * H * W``, ...). ``BatchNorm1d/2d/3d`` below add
    the native layers' rank checks.

    * ``.train()``: normalise with the batch mean and biased variance; if ``track_running_stats``, update
      ``running_mean``/``running_var`` by ``r = (1 - w) r + w b`` with ``w = momentum``, or ``w = 1/k`` at
      the k-th batch when ``momentum=None`` (cumulative average), the variance fed being ``m/(m-1) var``.
    * ``.eval()``: normalise with the running estimates if tracked, else with the batch statistics.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance inside the square root (default from ``PYTORCH.eps``); as in PyTorch it must
        be > 0 in training and >= 0 in inference, checked at the forward.
    momentum : float or None
        Weight of the new batch statistic, in [0, 1] (default ``PYTORCH.momentum``); None: cumulative average.
    affine : bool
        Learnable ``weight`` (gamma, init 1) and ``bias`` (beta, init 0).
    track_running_stats : bool
        Keep the buffers ``running_mean`` (init 0), ``running_var`` (init 1), ``num_batches_tracked``.
    device, dtype
        Where and in which dtype the parameters and buffers live.
    bias : bool, keyword-only
        With ``affine``, whether ``bias`` exists (``nn.BatchNorm*`` gained this switch in PyTorch 2.13).

    Notes
    -----
    Parameters, buffers, ``state_dict`` keys and the state-dict version (2: ``num_batches_tracked``; a
    version-1 state dict without it loads with the counter at 0) are those of ``nn.BatchNorm*``, whose base
    class this one shares, so ``load_state_dict`` works in both directions.
    """

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
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self._update_rule = PYTORCH.replace(momentum=momentum)  # validates momentum; see _running_update_rule
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _running_update_rule(self) -> Convention:
        """PyTorch's update rule with this module's momentum, built once (again only if momentum changes).

        Only the fields of the running update are read from it (``new_value_weight`` and ``running_var``);
        the module's own ``eps`` is used for normalising.
        """
        if self._update_rule.momentum != self.momentum:
            self._update_rule = PYTORCH.replace(momentum=self.momentum)
        return self._update_rule

    def count_batch(self) -> float:
        """Count this forward's batch and return ``w``, the weight of its statistics in the running update.

        In training with running statistics tracked, ``num_batches_tracked`` grows by one and ``w`` is
        ``momentum``, or ``1/k`` at the k-th batch for ``momentum=None``; otherwise nothing is counted and ``w = 0``.
        """
        if not (self.training and self.track_running_stats and self.num_batches_tracked is not None):
            return 0.0
        rule = self._running_update_rule()
        self.num_batches_tracked.add_(1)
        # w_k needs the step only for the cumulative average (momentum=None); avoid a device sync otherwise.
        step = int(self.num_batches_tracked.item()) if rule.momentum is None else 1
        return rule.new_value_weight(step)

    def reset_running_stats(self) -> None:
        """Running mean and variance back to ``PYTORCH.init_mean`` / ``init_var``, ``num_batches_tracked`` to 0."""
        if self.track_running_stats:
            self.running_mean.fill_(PYTORCH.init_mean)
            self.running_var.fill_(PYTORCH.init_var)
            self.num_batches_tracked.zero_()

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a Tensor, got {type(x).__name__}")
        if not 2 <= x.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input with channels on dim 1 (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (N, C, ...); see the class docstring for the two modes."""
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ShapeMismatchError(
                f"expected {self.num_features} channels on dim 1, got input of shape {tuple(x.shape)}"
            )
        new_value_weight = self.count_batch()
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
            convention=self._running_update_rule(),
        )


class BatchNorm1d(BatchNorm):
    """``BatchNorm`` for (N, C) or (N, C, L) inputs, the drop-in for ``torch.nn.BatchNorm1d``."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        super()._check_input_dim(x)
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.dim()}D input)")


class BatchNorm2d(BatchNorm):
    """``BatchNorm`` for (N, C, H, W) inputs, the drop-in for ``torch.nn.BatchNorm2d``."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        super()._check_input_dim(x)
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")


class BatchNorm3d(BatchNorm):
    """``BatchNorm`` for (N, C, D, H, W) inputs, the drop-in for ``torch.nn.BatchNorm3d``."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        super()._check_input_dim(x)
        if x.dim() != 5:
            raise ValueError(f"expected 5D input (got {x.dim()}D input)")
