"""``python -m openmla``: the command line of :mod:`openmla.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
