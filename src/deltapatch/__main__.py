"""``python -m deltapatch`` (what ``torchrun -m deltapatch`` runs)."""

import sys

from .cli import main

sys.exit(main())
