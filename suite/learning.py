"""``python -m suite.learning`` = ``imaml-suite learning``, kept for the older form; the code is in
``suite.experiments.learning``."""
import sys

from suite.harness.commands import run

if __name__ == "__main__":
    sys.exit(run("learning"))
