import sys

from suite.harness.commands import run

sys.exit(run("omniglot"))
