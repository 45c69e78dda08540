"""``python -m bnref.train``: see ``python -m bnref.train --help``."""

import sys

from bnref.mnist.cli import main

sys.exit(main())
