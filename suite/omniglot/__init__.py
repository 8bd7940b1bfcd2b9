"""``python -m suite.omniglot`` = ``imaml-suite omniglot``, kept for the older form; the code is
in ``suite.experiments.omniglot``."""
