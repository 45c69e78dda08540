"""``python -m bnref.conformance``: see ``python -m bnref.conformance --help``."""

import sys

from bnref.check.cli import main

sys.exit(main())
