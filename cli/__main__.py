"""``python -m cli``: the same command as the ``fitgate`` console script."""

import sys

from cli.main import main

sys.exit(main())
