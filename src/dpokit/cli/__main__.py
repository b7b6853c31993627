"""``python -m dpokit.cli`` (what torchrun and accelerate launch run): the ``dpokit`` command."""

import sys

from . import main

sys.exit(main())
