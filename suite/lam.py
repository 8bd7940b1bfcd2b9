"""``python -m suite.lam`` = ``imaml-suite lam``, kept for the older form; the code is in
``suite.experiments.lam``."""
import sys

from suite.harness.commands import run

if __name__ == "__main__":
    sys.exit(run("lam"))
