"""``python -m shoal ...`` is the ``shoal`` command."""
import sys

from .cli import main

sys.exit(main())
