"""Point the oracle at any Batch Normalization: the public face of :mod:`bnref.check.conformance`.

``from bnref.conformance import Adapter, check`` and ``python -m bnref.conformance`` stay where users find them; the
code lives in ``bnref.check`` (the adapter contract, the probes, the accuracy checks, the report, the shipped
adapters and the command line). For a pytest suite: ``assert_conforms(adapter)``. The names are those of
``bnref.check.conformance.__all__`` and ``main``, the command line.
"""

import bnref.check.conformance as tool
from bnref.check.cli import main
from bnref.check.conformance import *  # noqa: F403  (the tool's public names, listed in its __all__)

__all__ = [*tool.__all__, "main"]

del tool
