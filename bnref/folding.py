"""Batch Normalization folded into the layer before it, for deployment (NumPy only).

At inference BN is one affine map per channel, ``y = scale * z + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - scale * running_mean``
(``bnref.inference_affine``, eq. ``eq-inference-affine``). When ``z`` comes from a linear layer or a
convolution, ``z = W * x + b``, the two maps compose into one layer (``bnref.fold_into_preceding``,
eq. ``eq-fold``)::

    W_folded = W * scale     (each output channel's slice of W times its scale)
    b_folded = b * scale + shift

This module only names where the output channels sit in each framework's weight layout and chains the two
reference functions; it holds no arithmetic of its own.
"""

from __future__ import annotations

import numpy as np

from . import validation as v
from .reference import fold_into_preceding, inference_affine

__all__ = ["OUT_CHANNEL_AXIS", "fold_batch_norm"]

#: The output-channel axis of each layer's weight (groups == 1 for the transposed convolutions).
OUT_CHANNEL_AXIS: dict[str, int] = {
    "torch.Linear": 0,  # (out, in)
    "torch.Conv": 0,  # Conv1d/2d/3d: (out, in / groups, *kernel)
    "torch.ConvTranspose": 1,  # ConvTranspose1d/2d/3d: (in, out / groups, *kernel)
    "keras.Dense": -1,  # (in, out)
    "keras.Conv": -1,  # Conv1D/2D/3D: (*kernel, in / groups, out)
    "keras.ConvTranspose": -2,  # Conv1DTranspose/2D/3D: (*kernel, out, in)
}


def fold_batch_norm(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
    layer: str = "torch.Conv",
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference-mode BN into the layer before it, eqs. ``eq-inference-affine`` and ``eq-fold``.

    Parameters
    ----------
    weight : ndarray
        The preceding layer's weight, in the layout ``layer`` names (see ``OUT_CHANNEL_AXIS``).
    bias : ndarray of shape (C,), or None for a layer without bias
    gamma, beta, running_mean, running_var : array_like, shape (C,)
        The BN layer's parameters and running statistics; ``C`` output channels.
    eps : float
        The BN layer's eps (PyTorch 1e-5, Keras 1e-3).
    layer : str
        A key of ``OUT_CHANNEL_AXIS``. A transposed convolution must have ``groups == 1`` (its weight
        then has C entries on the output axis; otherwise the shape check raises).

    Returns
    -------
    weight_folded : ndarray, shape of weight
    bias_folded : ndarray, shape (C,)

    Examples
    --------
    >>> import numpy as np
    >>> from bnref.folding import fold_batch_norm
    >>> w, b = np.ones((2, 3)), np.zeros(2)  # torch.nn.Linear(3, 2): weight (out, in)
    >>> gamma, beta, mean, var = np.array([2.0, 1.0]), np.zeros(2), np.array([1.0, 0.0]), np.full(2, 4.0)
    >>> wf, bf = fold_batch_norm(w, b, gamma, beta, mean, var, eps=1e-12, layer="torch.Linear")
    >>> wf[:, 0].round(6).tolist(), bf.round(6).tolist()
    ([1.0, 0.5], [-1.0, 0.0])
    """
    v.check_choice(layer, "layer", tuple(OUT_CHANNEL_AXIS))
    scale, shift = inference_affine(gamma, beta, running_mean, running_var, eps)
    return fold_into_preceding(weight, bias, scale, shift, out_axis=OUT_CHANNEL_AXIS[layer])
