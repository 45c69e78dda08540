"""``python -m bnref.train``: the article's MNIST model trained from the command line.

A thin public module; the code lives in :mod:`bnref.mnist.cli`.
"""

from bnref.mnist.cli import build_experiment_parser, build_parser, main, run_experiment_command

__all__ = ["build_parser", "build_experiment_parser", "main", "run_experiment_command"]
