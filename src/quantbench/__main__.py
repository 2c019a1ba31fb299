"""``python -m quantbench ...`` = the ``quantbench`` command."""

import sys

from quantbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
