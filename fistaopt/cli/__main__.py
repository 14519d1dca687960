"""``python -m fistaopt.cli``: the ``fistaopt`` command."""

import sys

from fistaopt.cli import main

sys.exit(main())
