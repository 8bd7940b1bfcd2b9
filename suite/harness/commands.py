"""Every command of the suite, in one registry: ``imaml-suite COMMAND ...`` (the console
script), ``python -m suite COMMAND ...`` (the same, without the script on PATH).

Each command is a module with ``main(argv) -> int`` that builds its parser with
``prog(NAME)``; ``run`` wraps it in ``cli.run`` (a user error is one line and exit status 2,
a stop says how to resume). The older forms (``python -m suite.sweeps``, ``python
suite/figures.py``, ...) are kept as thin files that call ``run`` too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from suite.harness import cli

SCRIPT = "imaml-suite"


@dataclass(frozen=True)
class Command:
    module: str
    summary: str


COMMANDS = {
    "figures": Command("suite.experiments.figures",
                       "Figures 2a and 2b, Table 1, CG against Neumann, the memory frontier"),
    "sweeps": Command("suite.experiments.sweeps_cli",
                      "one sweep of meta-gradient errors, time and memory, or curvature costs"),
    "omniglot": Command("suite.experiments.omniglot.__main__",
                        "Omniglot meta-training: Table 2 over seeds, the iMAML variants, ..."),
    "verify": Command("suite.verify.__main__", "a verdict on your own meta-gradient code"),
    "regress": Command("suite.experiments.regress",
                       "the regression gate: metrics against results/baselines/"),
    "peers": Command("suite.experiments.peers",
                     "side by side with higher and torchopt, and task-batched meta-gradients"),
    "lam": Command("suite.experiments.lam", "a learned per-coordinate lam against a scalar one"),
    "learning": Command("suite.experiments.learning",
                        "the learning check's spread over seeds (its tolerance)"),
}


def prog(name: str) -> str:
    """How command ``name`` is called, as its usage and resume lines print it."""
    if name not in COMMANDS:
        raise KeyError(f"no command {name!r}; the commands are {sorted(COMMANDS)}")
    return f"{SCRIPT} {name}"


def run(name: str, argv=None) -> int:
    """Command ``name`` on ``argv`` (default: the process's arguments), its exit status."""
    module = importlib.import_module(COMMANDS[name].module)
    return cli.run(module.main, sys.argv[1:] if argv is None else list(argv), prog=prog(name))


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<10}{c.summary}" for name, c in COMMANDS.items())
    parser = cli.Parser(
        prog=SCRIPT, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The meta-gradient benchmark and verification suite.",
        epilog=f"commands:\n{listing}\n\n{SCRIPT} COMMAND --help: that command's options")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                        help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in COMMANDS:
        return run(argv[0], argv[1:])
    try:
        if not argv:
            parser.error(f"give a COMMAND, one of: {', '.join(COMMANDS)} ({SCRIPT} --help)")
        parser.parse_args(argv)
    except cli.UsageError as err:
        print(f"{SCRIPT}: error: {err.message}", file=sys.stderr)
        return 2
    return 0
