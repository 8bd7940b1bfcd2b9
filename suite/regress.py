"""``python -m suite.regress`` = ``imaml-suite regress``, kept for the older form; the code is in
``suite.experiments.regress``."""
import sys

from suite.harness.commands import run

if __name__ == "__main__":
    sys.exit(run("regress"))
