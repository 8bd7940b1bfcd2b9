"""``python -m suite COMMAND ...``: the same as the ``imaml-suite`` console script."""
import sys

from suite.harness.commands import main

sys.exit(main())
