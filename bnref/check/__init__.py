"""Checks of every implementation against the oracle: one driver (adapter) per framework, the cases, the agreement
tables, the precision sweep and the conformance tool.

Imports the root and ``bnref.layers`` only. The command line and ``from bnref.conformance import Adapter, check``
live in the public module :mod:`bnref.conformance`.
"""
