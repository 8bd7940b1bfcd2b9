"""``python -m suite.sweeps`` = ``imaml-suite sweeps``, kept for the older form; the code is in
``suite.experiments.sweeps``."""
import sys

from suite.harness.commands import run

if __name__ == "__main__":
    sys.exit(run("sweeps"))
