"""The one command line of the book's experiments: every group of :mod:`bnref.experiments` in one registry.

::

    python -m bnref.experiments list [GROUP]
    python -m bnref.experiments show NAME
    python -m bnref.experiments run NAME|GROUP|all [NAME|GROUP ...] [--seeds N] [--device cpu|cuda|cuda:N] --out DIR
    python -m bnref.experiments check [DIR]

The groups are ``claims`` (:mod:`bnref.experiments.claims`), ``dynamics`` (:mod:`bnref.experiments.dynamics`),
``bn-placement`` (:mod:`bnref.experiments.placement`), ``normfree`` (:mod:`bnref.experiments.normfree`),
``domain-shift`` (:mod:`bnref.experiments.recalibration`), ``beyond`` (:mod:`bnref.experiments.beyond`),
``sequence-models`` (:mod:`bnref.experiments.sequences`) and ``distributed`` (:mod:`bnref.experiments.distributed`),
in the book's order; the grammar is :meth:`bnref.experiments.registry.Registry.main`'s. Importing this module
imports PyTorch (some chapter modules need it to declare their networks).
"""

from __future__ import annotations

from collections.abc import Sequence

from bnref.experiments import (
    beyond,
    claims,
    distributed,
    dynamics,
    normfree,
    placement,
    recalibration,
    sequences,
)
from bnref.experiments.registry import Registry

__all__ = ["REGISTRY", "main"]

#: Every experiment of the book but the MNIST one (``python -m bnref.train experiment mnist``).
REGISTRY = Registry.joined(
    claims.REGISTRY,
    dynamics.REGISTRY,
    placement.REGISTRY,
    normfree.REGISTRY,
    recalibration.REGISTRY,
    beyond.REGISTRY,
    sequences.REGISTRY,
    distributed.REGISTRY,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bnref.experiments`` and of the ``bnref-experiments`` console script."""
    return REGISTRY.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
