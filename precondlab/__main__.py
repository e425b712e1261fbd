"""``python -m precondlab ...`` (and ``torchrun -m precondlab run ...``): the command line."""

import sys

from precondlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
