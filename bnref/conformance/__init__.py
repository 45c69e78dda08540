"""Point the oracle at any Batch Normalization: the public face of :mod:`bnref.check.conformance`.

``from bnref.conformance import Adapter, check`` and ``python -m bnref.conformance`` stay where users find them; the
code lives in ``bnref.check`` (the conformance tool, its cases and the shipped adapters).
"""

from bnref.check.conformance import (
    FAULTS,
    NAMES,
    RATIOS,
    SEEDS,
    SWEEP,
    ZH,
    Adapter,
    Line,
    PlantedFault,
    Report,
    adapter_for,
    check,
    main,
    run,
    run_many,
)

__all__ = [
    "Adapter",
    "Line",
    "Report",
    "check",
    "PlantedFault",
    "FAULTS",
    "NAMES",
    "adapter_for",
    "run",
    "run_many",
    "main",
    "ZH",
    "RATIOS",
    "SEEDS",
    "SWEEP",
]
