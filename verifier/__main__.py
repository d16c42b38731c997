"""``python -m tallystick.verifier`` runs the offline CLI."""

import sys

from ._cli import main

sys.exit(main())
