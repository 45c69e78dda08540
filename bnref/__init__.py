"""bnref: a verified reference for Batch Normalization.

The top level holds the NumPy reference, the conventions and the gradient check (the module
``bnref.finite_differences``, whose function ``gradcheck`` is exported as ``bnref.gradcheck``); it imports
nothing but NumPy. The framework modules are imported explicitly when needed::

    import bnref                  # NumPy only
    from bnref.layers import torch_bn    # PyTorch from scratch + adapters to torch.nn.BatchNorm*
    from bnref.layers import keras_bn    # TensorFlow / Keras 3 from scratch + adapters
    from bnref.layers import jax_bn      # JAX from scratch (custom_vjp) + a drop-in for flax.linen.BatchNorm
    from bnref.check import agreement   # every implementation on one case, as a table (Keras on each backend)
    from bnref.check import precision   # the |mean|/std sweep: where each implementation loses float32 precision
    from bnref.check import conformance # any BN through an adapter against the oracle (NumPy only; the shipped
                                  # adapters, which import their framework when used: bnref.check.adapters)
    from bnref.layers import transfer    # weights between torch.nn.BatchNorm* and Keras BatchNormalization
    from bnref import testing     # check_close and the error model behind every tolerance (NumPy only)
    from bnref.layers import precise_bn  # PyTorch: running statistics recomputed as population statistics
    from bnref.experiments import beyond      # PyTorch: Ghost BN and Batch Renorm layers, the small-batch experiment
"""

from .conventions import (
    CONVENTIONS,
    FLAX,
    FLAX_TWO_PASS,
    KERAS,
    PAPER,
    PYTORCH,
    PYTORCH_CUMULATIVE,
    Convention,
    get_convention,
)
from .finite_differences import gradcheck, numerical_gradients, relative_error
from .folding import fold_batch_norm
from .normalization import (
    BatchRenormCache,
    GhostBatchNormCache,
    GroupNormCache,
    LayerNormCache,
    RMSNormCache,
    batch_renorm_backward,
    batch_renorm_clipping,
    batch_renorm_forward,
    batch_renorm_running_update,
    ghost_batch_norm_backward,
    ghost_batch_norm_forward,
    ghost_batch_norm_running_update,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
)
from .reference import (
    BatchNormCache,
    RunningStats,
    batch_mean_var,
    batch_norm_backward,
    batch_norm_backward_staged,
    batch_norm_forward,
    batch_norm_inference,
    fold_into_preceding,
    inference_affine,
    running_update,
    update_running_stats,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNormCache",
    "BatchRenormCache",
    "CONVENTIONS",
    "Convention",
    "FLAX",
    "FLAX_TWO_PASS",
    "GhostBatchNormCache",
    "GroupNormCache",
    "KERAS",
    "LayerNormCache",
    "PAPER",
    "PYTORCH",
    "PYTORCH_CUMULATIVE",
    "RMSNormCache",
    "RunningStats",
    "batch_mean_var",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_renorm_backward",
    "batch_renorm_clipping",
    "batch_renorm_forward",
    "batch_renorm_running_update",
    "fold_batch_norm",
    "fold_into_preceding",
    "get_convention",
    "ghost_batch_norm_backward",
    "ghost_batch_norm_forward",
    "ghost_batch_norm_running_update",
    "gradcheck",
    "group_norm_backward",
    "group_norm_forward",
    "inference_affine",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "numerical_gradients",
    "relative_error",
    "rms_norm_backward",
    "rms_norm_forward",
    "running_update",
    "update_running_stats",
]
