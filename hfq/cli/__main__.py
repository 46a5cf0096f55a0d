"""python -m hfq.cli: the same as the `hfq` command."""

import sys

from . import main

sys.exit(main())
