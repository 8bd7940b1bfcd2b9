"""``python suite/figures.py`` = ``imaml-suite figures``, kept for the older form (the
installed package is imported, no path is edited); the code is in ``suite.experiments.figures``."""
import sys

from suite.harness.commands import run

if __name__ == "__main__":
    sys.exit(run("figures"))
