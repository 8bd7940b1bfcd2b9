"""imaml-suite verify MODULE:FUNCTION: judge a meta-gradient implementation (see
``suite.verify``). MODULE is an importable module (the current folder is searched first) or
a path to a .py file. Exit status: 0 when the function matches the reference it claims (or,
without --claims, some reference), 1 when it does not, 2 for a usage error."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from suite.harness import cli, commands
from suite.harness.cli import HelpFormatter
from suite.verify import CLAIMS, FORMS, judge
from suite.verify.card import markdown, write
from suite.verify.problems import LOSSES
from suite.verify.references import TRUNCATIONS


def load(parser, spec: str):
    if ":" not in spec:
        parser.error(f"{spec}: give MODULE:FUNCTION (e.g. my_maml:maml or path/to/file.py:maml)")
    module_name, _, attr = spec.rpartition(":")
    sys.path.insert(0, str(Path.cwd()))   # the user's own modules, as `python -m` finds them
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                parser.error(f"{module_name}: no such file")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[path.stem] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        parser.error(f"{module_name}: cannot be imported ({err})")
    fn = getattr(module, attr, None)
    if not callable(fn):
        parser.error(f"{spec}: {module_name} has no function {attr!r}")
    return fn


def main(argv=None) -> int:
    parser = cli.Parser(prog=commands.prog("verify"), description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("function", help="MODULE:FUNCTION or path/to/file.py:FUNCTION")
    parser.add_argument("--claims", choices=sorted(CLAIMS), default=None,
                        help="what the function claims to compute (none: report what it "
                        "matches)")
    parser.add_argument("--truncate", type=int, choices=TRUNCATIONS, default=None,
                        help="with --claims truncated: the number of steps it keeps")
    parser.add_argument("--form", choices=FORMS, default="module",
                        help="module: fn(model, support, query, *, steps, lr, lam); flat: the "
                        "suite's fn(task, theta, *, lam, solver)")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="ce",
                        help="the loss the function uses: cross-entropy (classification) or "
                        "mean squared error (regression)")
    parser.add_argument("--no-cost", action="store_true",
                        help="skip the memory and time measurement against K")
    parser.add_argument("--report", type=Path, default=None,
                        help="folder for the report card (report.md, report.png)")
    args = parser.parse_args(argv)
    if args.truncate is not None and args.claims != "truncated":
        parser.error("--truncate goes with --claims truncated")
    if args.report is not None and args.report.exists() and not args.report.is_dir():
        parser.error(f"--report {args.report}: not a folder")
    fn = load(parser, args.function)
    report = judge(fn, args.claims, form=args.form, loss=args.loss, truncate=args.truncate,
                   cost=not args.no_cost, name=args.function)
    print(markdown(report), end="")
    if args.report is not None:
        for path in write(report, args.report):
            print(f"wrote {path}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("verify")))
