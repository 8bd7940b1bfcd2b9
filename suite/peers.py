"""``python -m suite.peers`` = ``imaml-suite peers``, kept for the older form; the code is in
``suite.experiments.peers``."""
import sys

from suite.harness.commands import run

if __name__ == "__main__":
    sys.exit(run("peers"))
