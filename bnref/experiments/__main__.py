"""``python -m bnref.experiments``: the experiments' command line (:mod:`bnref.experiments.cli`)."""

import sys

from bnref.experiments.cli import main

sys.exit(main())
