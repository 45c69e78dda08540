"""From-scratch framework layers and drop-ins, checked against the NumPy oracle in ``bnref``.

* :mod:`~bnref.layers.torch_bn`: PyTorch BN (functional, autograd Function, ``BatchNorm1d/2d/3d`` drop-ins);
* :mod:`~bnref.layers.keras_bn`: Keras 3 ``BatchNormalization`` on TensorFlow, with the derived gradient;
* :mod:`~bnref.layers.jax_bn`: JAX functions and a Flax ``BatchNorm``;
* :mod:`~bnref.layers.sync_bn`: synchronised BN on ``torch.distributed`` (any backend) and ``convert_sync_batchnorm``;
* :mod:`~bnref.layers.ghost_renorm`: Ghost BN and Batch Renorm as PyTorch layers, and a pluggable ``norm_layer``;
* :mod:`~bnref.layers.precise_bn`: running statistics recomputed after training;
* :mod:`~bnref.layers.transfer`: a BN layer's state moved between PyTorch and Keras.

Each module imports its framework at the top, so ``import bnref.layers`` imports none of them; import the one you
need (``from bnref.layers import torch_bn``). This layer imports only the root (``bnref``); it knows nothing of
``bnref.check``, ``bnref.mnist`` or ``bnref.experiments``.
"""
