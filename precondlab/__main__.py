"""``python -m precondlab ...`` (and ``torchrun -m precondlab run ...``): the command line."""

from precondlab.cli import entry

if __name__ == "__main__":
    entry()
