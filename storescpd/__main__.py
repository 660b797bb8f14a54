"""python -m storescpd: the same as the storescpd command."""

import sys

from storescpd.cli.main import main

sys.exit(main())
