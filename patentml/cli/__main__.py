"""``python -m patentml.cli``."""

import sys

from patentml.cli import main

sys.exit(main())
