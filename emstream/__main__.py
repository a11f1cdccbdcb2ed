"""``python -m emstream`` = the ``emstream`` command."""

import sys

from emstream.cli import main

if __name__ == "__main__":
    sys.exit(main())
