"""Every shell command of the README and the documentation pages, run as written at its
smallest scale.

A command is the text of a ``sh`` block (one per line, ``\\`` continuing it, ``#`` starting a
comment) or a ``$ `` line of a ``text`` block, whose following lines are its output. It is
shrunk by one declared rule, ``SCALE``: the flags that set a command's size take their smallest
values (the first value of a list, 3 outer iterations, 10 evaluation tasks, one timed repeat or
none) and every output goes to a temporary folder; nothing else of the command changes. A
command that cannot run here says why (``cannot_run``). Where the page shows what a command
prints, the lines shown must be printed, and the exit status shown must be the status.

The commands take minutes (they load torch, train, measure), so they are marked
``docs_commands``, left out of the default run and run by ``make docs`` (in CI). The last test
checks that they left the committed ``results/`` and ``reports/`` untouched.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
pytestmark = pytest.mark.docs_commands

FIRST = object()   # a list-valued flag keeps its first value
ON = object()      # a switch that is added
DROP = object()    # a flag that is left out
INPUT_WITH_REPORT_ONLY = {"--out"}   # with --report-only, --out names rows to read: kept

# The declared shrinking rule: for each program, the flags that set its size and where its
# outputs go. A flag the command lacks is added (with the program's smallest scale).
SCALE = {
    "figures": {"--scale": "smoke", "--out": "{tmp}/figures"},
    "sweeps error": {"--steps": FIRST, "--cg-steps": FIRST, "--kappas": FIRST,
                     "--repeats": "0", "--out": "{tmp}/error.csv"},
    "sweeps cost": {"--steps": FIRST, "--repeats": "0", "--out": "{tmp}/cost.csv"},
    "sweeps hvp-cost": {"--n-way": "5", "--k-shot": "1", "--lam": "1000",
                        "--lr": "0.001", "--repeats": "1", "--out": "{tmp}/hvp.csv"},
    "omniglot recipes": {},
    "omniglot train": {"--iterations": "3", "--eval-tasks": "10", "--meta-batch": "2",
                       "--out": "{tmp}/omniglot"},
    "omniglot table2": {"--iterations": "3", "--eval-tasks": "10", "--meta-batch": "2",
                        "--seeds": FIRST, "--out": "{tmp}/omniglot",
                        "--reports": "{tmp}/reports", "--quiet": ON},
    "omniglot variants": {"--iterations": "3", "--eval-tasks": "10", "--meta-batch": "2",
                          "--recipes": ("imaml-gn", "imaml-paper-keep"),
                          "--out": "{tmp}/omniglot", "--reports": "{tmp}/reports",
                          "--quiet": ON},
    # two seeds: the least that gives the choice's spread across seeds
    "omniglot choose": {"--iterations": "3", "--eval-tasks": "10", "--meta-batch": "2",
                        "--seeds": ("0", "1"), "--out": "{tmp}/omniglot",
                        "--reports": "{tmp}/reports", "--quiet": ON},
    "peers": {"--steps": "5", "--batch-steps": "5", "--meta-batch": "2",
              "--n-way": "5", "--k-shot": "1", "--repeats": "1",
              "--out": "{tmp}/peers.csv", "--report": "{tmp}/peers.md"},
    "regress": {"--skip-learning": ON, "--baseline": "{tmp}/regress.json"},
    "verify": {},
    # A timing threshold is not judged here: on a shared machine it is noise at this scale.
    "pytest": {"-k": "test_bench_synthetic", "--benchmark-storage": "file://{tmp}/bench",
               "--benchmark-compare-fail": DROP},
}
# make targets and the command their Makefile recipe runs (checked against the Makefile).
MAKE = {"figures": "-m suite figures", "peers": "-m suite peers", "regress": "-m suite regress"}
RUN_BY_CI = {"test": "make test", "docs": "make docs", "regress": "make regress"}


@dataclass
class Command:
    page: str
    line: str
    shown: list[str]       # the output lines the page shows
    status: int            # the exit status the page shows (0 unless it says)


def commands() -> list[Command]:
    found = []
    for page in PAGES:
        text, name = page.read_text(), page.relative_to(ROOT).as_posix()
        for m in re.finditer(r"```sh\n(.*?)```(\s*\nprints(?: \(exit status (\d)\))?\n\n```\n"
                             r"(.*?)```)?", text, re.S):
            lines = re.sub(r"\\\n\s*", "", m.group(1)).splitlines()
            lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in lines]
            lines = [ln for ln in lines if ln and not ln.startswith("#")]
            shown = m.group(4).splitlines() if m.group(4) and len(lines) == 1 else []
            found += [Command(name, ln, shown, int(m.group(3) or 0)) for ln in lines]
        for block in re.findall(r"```text\n(.*?)```", text, re.S):
            for m in re.finditer(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", block, re.M):
                found.append(Command(name, m.group(1), m.group(2).splitlines(), 2
                                     if ": error: " in m.group(2) else 0))
    return found


def program(argv: list[str]) -> str:
    """The key of SCALE for an argv that starts after the interpreter: ``-m suite COMMAND
    [SUBCOMMAND]`` or ``-m pytest``."""
    if argv[:2] == ["-m", "pytest"]:
        return "pytest"
    assert argv[:2] == ["-m", "suite"], argv
    sub = argv[3] if len(argv) > 3 and not argv[3].startswith("-") else ""
    return f"{argv[2]} {sub}".strip() if f"{argv[2]} {sub}".strip() in SCALE else argv[2]


def shrink(argv: list[str], rule: dict, tmp: Path) -> list[str]:
    """``argv`` with each flag of ``rule`` set to its small value (``--flag=value`` keeps its
    form), and the rule's other flags added. A ``--report-only`` command measures nothing: only
    its outputs move (``--out`` is then the rows it reads and stays)."""
    report_only = "--report-only" in argv
    if report_only:
        rule = {flag: new for flag, new in rule.items() if isinstance(new, str)
                and "{tmp}" in new and flag not in INPUT_WITH_REPORT_ONLY}
    out, seen, i = [], set(), 0
    while i < len(argv):
        a = argv[i]
        name, joined = (a.split("=", 1)[0], True) if a.startswith("--") and "=" in a else (a, False)
        values = [a.split("=", 1)[1]] if joined else []
        while not joined and i + 1 + len(values) < len(argv) \
                and not argv[i + 1 + len(values)].startswith("-"):
            values.append(argv[i + 1 + len(values)])
        if name in rule:
            seen.add(name)
            new = rule[name]
            if new is ON:
                out.append(name)
            elif isinstance(new, tuple):
                out += [name, *new]
            elif new is not DROP:
                value = values[0] if new is FIRST else new.format(tmp=tmp)
                out += [f"{name}={value}"] if joined else [name, value]
            i += 1 + (0 if joined else len(values))
            continue
        out.append(a)
        i += 1
    for flag, new in rule.items():
        if flag not in seen and new is not FIRST and new is not DROP:
            out += [flag] if new is ON else [flag, *new] if isinstance(new, tuple) else \
                [flag, new.format(tmp=tmp)]
    return out


def cannot_run(words: list[str]) -> str | None:
    """Why a documented command cannot run on this machine, or None."""
    cuda = "cuda" in " ".join(words) or any(w.endswith(".sh") for w in words)
    if cuda and not torch.cuda.is_available():
        return "needs a CUDA device"
    if "--nnodes" in words:
        return "needs two machines"
    if "download" in words:
        return "fetches the archives from the network"
    if "--data" in words and words[words.index("--data") + 1] == "full" and not (
            ROOT / "data" / "omniglot" / "images_background.zip").exists():
        return "needs the full Omniglot archives (imaml-suite omniglot download)"
    if words[:1] == ["make"] and words[1] in RUN_BY_CI and len(words) == 2:
        return f"run by CI itself ({RUN_BY_CI[words[1]]} in .ci/run)"
    return None


def to_argv(words: list[str], tmp: Path) -> list[str]:
    """The command as an argv for this interpreter, shrunk by SCALE."""
    if words[0] == "make":
        words = ["python"] + MAKE[words[1]].split() + (["--update"] if "UPDATE=1" in words
                                                         else [])
    if words[0] == "imaml-suite":   # the console script is `python -m suite`
        words = ["python", "-m", "suite"] + words[1:]
    if words[0].endswith("pytest"):
        words = ["python", "-m", "pytest"] + words[1:]
    if words[0] == "torchrun":
        words = ["python", "-m", "torch.distributed.run"] + words[1:]
        at = words.index("-m", 3)
        launcher, words = words[:at], ["python"] + words[at:]
    else:
        launcher = []
    assert words[0] == "python", words
    argv = words[1:]
    argv = shrink(argv, SCALE[program(argv)], tmp)
    return [sys.executable] + launcher[1:] + argv


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("docs_commands")


@pytest.mark.parametrize("command", commands(), ids=lambda c: f"{c.page}: {c.line[:60]}")
def test_documented_command_runs(command, tmp):
    words = shlex.split(command.line)
    reason = cannot_run(words)
    if reason:
        pytest.skip(reason)
    argv = to_argv(words, tmp)
    if "--update" in argv:   # the gate's --update replaces a copy of the committed baseline
        shutil.copy(ROOT / "results" / "baselines" / "regress.json", tmp / "regress.json")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", "2"))
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    said = done.stdout + done.stderr
    assert done.returncode == command.status, (shlex.join(argv), said[-3000:])
    for line in command.shown:
        assert line.strip() in said, (line, said[-3000:])


def test_every_page_command_has_a_rule():
    for command in commands():
        words = shlex.split(command.line)
        if cannot_run(words) is None and words[0] != "make":
            assert to_argv(words, Path("/tmp"))


def test_make_targets_run_what_this_test_says():
    makefile = (ROOT / "Makefile").read_text()
    for target, runs in MAKE.items():
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        assert runs in recipe, (target, recipe)
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(run in ci for run in RUN_BY_CI.values())


def test_committed_results_untouched():
    """Runs last in this module: no documented command wrote into results/ or reports/."""
    changed = subprocess.run(["git", "status", "--porcelain", "--", "results", "reports"],
                             cwd=ROOT, capture_output=True, text=True).stdout
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    assert changed == "", changed
