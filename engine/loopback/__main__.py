"""``python -m soaktop.engine.loopback``: see :mod:`soaktop.engine.loopback.process`."""

import sys

from soaktop.engine.loopback.process import main

sys.exit(main())
