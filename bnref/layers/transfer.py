"""Moving a trained Batch Normalization layer between PyTorch and Keras.

The state of a BN layer is four vectors and two numbers; moving it is a matter of naming them correctly
(book, chapter "Frameworks side by side", section ``sec-fw-transfer``):

=====================  =====================  =============================================================
PyTorch                Keras                  note
=====================  =====================  =============================================================
``weight``             ``gamma``
``bias``               ``beta``
``running_mean``       ``moving_mean``
``running_var``        ``moving_variance``    PyTorch's is built from unbiased batch variances
``eps``                ``epsilon``            must be copied: the defaults differ (1e-5 vs 1e-3)
``momentum`` = alpha   ``momentum`` = 1-alpha PyTorch weights the new value, Keras the old one
=====================  =====================  =============================================================

``torch_to_keras`` and ``keras_to_torch`` copy the state (and refuse a pair whose channel counts or affine
parameters differ); ``inference_gap`` measures how far the two layers' inference outputs then are apart.
Either side may be the framework's own layer or bnref's from-scratch one (``bnref.layers.torch_bn.BatchNorm``,
``bnref.layers.keras_bn.BatchNormalization``). A framework module: it imports PyTorch at top level (the Keras layer
is used through its attributes only), and ``bnref/__init__.py`` does not import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bnref import relative_error

__all__ = ["KERAS_NAMES", "torch_to_keras", "keras_to_torch", "inference_gap"]

#: The Keras name of each PyTorch BN state vector (the table above).
KERAS_NAMES: dict[str, str] = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def _pairs(bn: Any, layer: Any) -> list[tuple[torch.Tensor, Any]]:
    """``(torch tensor, Keras variable)`` for every state vector both layers have, in the order of the table."""
    pairs = [(getattr(bn, t), getattr(layer, k)) for t, k in KERAS_NAMES.items()]
    return [(tensor, var) for tensor, var in pairs if tensor is not None and var is not None]


def _check_keras_built(layer: Any) -> None:
    if getattr(layer, "moving_mean", None) is None:
        raise ValueError(
            "the Keras layer is not built; call it once on an input or layer.build(input_shape) first "
            "(building needs the input rank, which a BatchNorm module does not know)"
        )


def _check_pair(bn: Any, layer: Any) -> None:
    _check_keras_built(layer)
    if bn.running_mean is None:
        raise ValueError("the torch module has track_running_stats=False: there are no running statistics to move")
    c_keras = int(layer.moving_mean.shape[0])
    if bn.num_features != c_keras:
        raise ValueError(f"channel counts differ: torch {bn.num_features}, Keras {c_keras}")
    keras_affine = (layer.gamma is not None, layer.beta is not None)
    torch_affine = (bn.weight is not None, bn.bias is not None)
    if keras_affine != torch_affine:
        raise ValueError(
            f"affine parameters differ: torch has weight={torch_affine[0]} bias={torch_affine[1]}, "
            f"Keras has gamma (scale)={keras_affine[0]} beta (center)={keras_affine[1]}"
        )


def torch_to_keras(bn: Any, layer: Any) -> None:
    """Copy a torch BN module's state into a built Keras BN layer (native or bnref's).

    gamma <- weight, beta <- bias, moving_mean <- running_mean, moving_variance <- running_var; the Keras
    ``epsilon`` is set to torch's ``eps`` and ``momentum`` to ``1 - momentum`` (Keras weights the old
    value). Inference outputs then agree to float32 precision (``inference_gap``). Training does not stay
    in step: torch feeds the unbiased variance ``m/(m-1) var`` to its running estimate and Keras the biased
    one, so the moving variances drift apart by a relative ``~ w/(m-1)`` per step. A torch module with
    ``momentum=None`` (cumulative average) has no Keras equivalent; Keras' momentum is then left as is.
    If the layer runs inside a compiled ``tf.function``, retrace it: epsilon and momentum are Python floats.
    """
    _check_pair(bn, layer)
    with torch.no_grad():
        for tensor, var in _pairs(bn, layer):
            var.assign(tensor.detach().to("cpu", torch.float64).numpy().astype(var.dtype))
    layer.epsilon = float(bn.eps)
    if bn.momentum is not None:
        layer.momentum = 1.0 - float(bn.momentum)


def keras_to_torch(layer: Any, bn: Any) -> None:
    """Copy a Keras BN layer's state into a torch BN module: the inverse of ``torch_to_keras``.

    ``eps = epsilon``, ``momentum = 1 - momentum``; ``num_batches_tracked`` is left unchanged.
    """
    _check_pair(bn, layer)
    with torch.no_grad():
        for tensor, var in _pairs(bn, layer):
            tensor.copy_(torch.as_tensor(np.asarray(var.numpy(), np.float64)))
    bn.eps = float(layer.epsilon)
    bn.momentum = 1.0 - float(layer.momentum)


def inference_gap(bn: Any, layer: Any, x: np.ndarray) -> float:
    """Max-norm relative difference of the two layers' inference outputs on ``x``.

    Parameters
    ----------
    bn : torch BN module (native or bnref's); put in eval mode for this call and restored after.
    layer : Keras BN layer, built.
    x : ndarray with the channels on ``layer.axis``; the torch module gets it with the channels moved to dim 1.

    Returns
    -------
    float
        ``relative_error(torch_output, keras_output)``; about float32 precision (1e-7) after
        ``torch_to_keras`` / ``keras_to_torch``.
    """
    _check_keras_built(layer)
    x = np.asarray(x)
    axis = layer.axis % x.ndim
    param = next((p for p in bn.buffers() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    was_training = bn.training
    bn.eval()
    try:
        with torch.no_grad():
            yt = bn(torch.as_tensor(x).to(dtype).movedim(axis, 1)).movedim(1, axis)
        yt = yt.to("cpu", torch.float64).numpy()
    finally:
        bn.train(was_training)
    yk = np.asarray(layer(x.astype(layer.compute_dtype), training=False), np.float64)
    return relative_error(yt, yk)
