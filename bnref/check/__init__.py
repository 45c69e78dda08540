"""Checks of every implementation against the oracle: one driver (adapter) per framework, the cases, the agreement
tables, the precision sweep and the conformance tool.

=================  =================================================================================================
module             what it holds
=================  =================================================================================================
``contract``       the adapter contract (``Adapter``), the calls that hold an adapter to it (``ContractError``)
``adapters``       one driver per framework: PyTorch, Keras on any backend, Flax, bnref's from-scratch layers
``cases``          ``Case`` and its batches, the frameworks' conventions for a case, input layouts
``rules``          the running-average rules (constant, 1/k, zero-debiased, first batch replaces), inferred
``truth``          the float64 reference on a case, the derived bounds per step, ``Diff`` and ``compare_trace``
``tables``         ``Row``, ``AgreementTable``, ``summary_table``, ``ConventionTable``
``backends``       Keras on every backend: jobs in one fresh process per ``KERAS_BACKEND``
``agreement``      every implementation on one case (``run_case``, ``run_cases``, ``cross_convention``)
``precision``      the ``|mean|/std`` sweep and its verdict
``report``         the conformance report (``Line``, ``Report``) and numbers written at their deciding precision
``probes``         the conformance tool's convention probes (layout, eps, running statistics)
``accuracy``       the conformance tool's accuracy, edge-case and half-precision lines
``conformance``    ``check``, ``assert_conforms``, the planted faults, adapters by spec, ``run_many``
``cli``            the command line, ``python -m bnref.conformance``
=================  =================================================================================================

Imports the root and ``bnref.layers`` only; importing any of these modules needs NumPy only (each adapter imports its
framework when it is created). The public face of the conformance tool is :mod:`bnref.conformance`.
"""
