"""What every command line shares: a user error is one line and exit status 2; Ctrl-C
(SIGINT) and SIGTERM end a run with one line saying where it stopped and the command that
resumes it, exit status 130 / 143 (128 + the signal, as shells report it).

    if __name__ == "__main__":
        sys.exit(cli.run(main, prog="imaml-suite sweeps"))

Tracebacks are left for bugs: a user error raises ``UsageError`` (a ``SystemExit``, so a
caller of ``main()`` still sees it as one), an argparse error goes through ``Parser``, a
stop raises ``Interrupted`` or ``KeyboardInterrupt``, a lost peer process ``PeerLost``.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch

from suite.core.validation import describe_range

STOP_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "out"
"""Every command's default output folder (``out/results/...``, ``out/reports/...``), ignored
by git: a trial run never replaces the committed ``results/`` and ``reports/``. Refreshing
those is asked for explicitly, with ``make refresh`` or ``--out`` naming them."""


def out_path(kind: str, name: str = "") -> Path:
    """The default path of a command's ``kind`` ("results" or "reports") output ``name``."""
    return OUT / kind / name if name else OUT / kind


_where = {"line": ""}


class UsageError(SystemExit):
    """A user error (a flag's value, a path, data that cannot satisfy the configuration):
    ``run`` prints ``message`` as one line and exits with status 2."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.message, self.prog = message, prog


class Interrupted(BaseException):
    """A run stopped by ``signum``; ``where`` says where (what is saved). A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` records it as a failed point."""

    def __init__(self, signum: int, where: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.where = signum, where


class PeerLost(Exception):
    """Another process of a torchrun job died or stopped answering."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are ``UsageError``s: one line (the usage is in --help)."""

    def error(self, message: str):
        raise UsageError(message, prog=self.prog)


def progress(line: str) -> None:
    """Where a long run is now, for the line printed if it is stopped there."""
    _where["line"] = line


def writable_folder(flag: str, path) -> Path:
    """``path`` as a folder that exists (created if needed) and can be written, before any
    work starts; else a ``UsageError`` naming ``flag``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot create the folder ({err.strerror}); choose "
                         "a folder you can write to")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the folder is not writable; choose one you can "
                         "write to")
    return path


def resume_command(prog: str, argv) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    launcher = " (under torchrun: the same torchrun command, any number of processes)" \
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    return f"{prog} {shlex.join(args)}".rstrip() + launcher


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _raise_interrupted(signum, frame):
    raise Interrupted(signum, _where["line"])


def run(main, argv=None, *, prog: str) -> int:
    """``main(argv)``'s exit status, with user errors, stops and lost peers as one line on
    stderr (rank 0's alone under torchrun, for user errors)."""
    _where["line"] = ""
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return main(argv)
    except UsageError as err:
        if _is_rank_zero():
            print(f"{err.prog or prog}: error: {err.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        where = getattr(err, "where", "") or _where["line"]
        print(f"{prog}: stopped by {signal.Signals(signum).name}"
              f"{'; ' + where if where else ''}. Resume with: {resume_command(prog, argv)}",
              file=sys.stderr)
        return STOP_STATUS[signum]
    except PeerLost as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class StopRequest:
    """While active, SIGINT and SIGTERM are noted rather than acted on, so that a loop can
    finish its step and save (``signum`` is the first one; None until then). A second signal
    stops at once (``Interrupted``), leaving the last save as it was."""

    def __init__(self, say=None):
        self.signum = None
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self._old = {}

    def _note(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, f"stopped at once ({_where['line'] or 'nothing saved'})")
        self.signum = signum
        self.say(f"{signal.Signals(signum).name}: finishing this step, then saving "
                 "(send it again to stop at once)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._note) for s in STOP_STATUS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def check_device(device: str, flag: str = "--device") -> torch.device:
    """The torch device named ``device``, refused with a message (not a traceback) when it
    is not a device name or names a CUDA device this machine lacks."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"{flag} {device}: not a torch device name; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {device}: no CUDA device is available on this machine "
                         "(install a CUDA build of torch on a GPU machine, see the README)")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{flag} {device}: only cpu and cuda devices are supported")
    return dev


def cli_range(parser, flag: str, value, low: float, high: float = math.inf, *,
              low_open: bool = False) -> None:
    """Refuse a command-line value (or each of a list) outside the range, through
    ``parser.error`` (usage and exit status 2), before any work starts."""
    if value is None:
        return
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
            parser.error(f"{flag} must be {describe_range(low, high, low_open, False)}, got {v}")


def cli_out_folder(parser, flag: str, path) -> None:
    """An output file's folder must exist: a typo should not create a new tree silently. The
    defaults' own tree, ``out/``, is created as needed."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() and folder.is_relative_to(OUT.resolve()):
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        parser.error(f"{flag} {path}: the folder {folder} does not exist (create it first)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's layout and shows every flag's default."""
