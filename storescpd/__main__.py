"""python -m storescpd: the same as the storescpd command."""

import sys

from .cli import main

sys.exit(main())
