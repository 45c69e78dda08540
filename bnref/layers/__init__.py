"""From-scratch framework layers and drop-ins, checked against the NumPy oracle in ``bnref``.

Each module imports its framework at the top, so ``import bnref.layers`` imports none of them; import the one you
need (``from bnref.layers import torch_bn``). This layer imports only the root (``bnref``); it knows nothing of
``bnref.check``, ``bnref.mnist`` or ``bnref.experiments``.
"""
