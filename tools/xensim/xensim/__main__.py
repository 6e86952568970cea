"""``python -m xensim``."""

import sys

from .cli import main

sys.exit(main())
