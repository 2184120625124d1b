"""``python -m fastnn``: see :mod:`fastnn.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
