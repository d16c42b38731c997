"""``python -m tallystick.daemon``: the same as the ``tallystickd`` console script."""

import sys

from .cli import main

sys.exit(main())
