"""``python -m engine.loopback``: see :mod:`engine.loopback.process`."""

import sys

from engine.loopback.process import main

sys.exit(main())
