"""``python -m bnref.experiments``: the experiments' command line."""

import sys

from bnref.experiments.probes import main

sys.exit(main())
