"""``python -m shoal.cli``: the same as the ``shoal`` command."""
import sys

from . import main

sys.exit(main())
