"""The package's layers and its commands: each layer imports only the layers above it, every
command of the registry runs under each of its names, and the size limits the layout keeps."""
import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from suite.harness import commands

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suite"
# A layer may import the layers listed for it (and itself); suite.verify sits beside the
# experiments and uses the core and the harness.
MAY_IMPORT = {
    "core": {"core"},
    "models": {"core", "models"},
    "harness": {"core", "models", "harness"},
    "experiments": {"core", "models", "harness", "experiments"},
    "verify": {"core", "models", "harness", "verify", "experiments"},
}
# The older forms, kept: python -m suite.NAME (suite/omniglot/ and suite/verify/ are packages)
# and python suite/figures.py.
OLD_FORMS = {name: SUITE / f"{name}.py" for name in ("sweeps", "figures", "regress", "peers",
                                                     "lam", "learning")}
OLD_FORMS |= {name: SUITE / name / "__main__.py" for name in ("omniglot", "verify")}


def suite_imports(path: Path) -> set[str]:
    """The second component of every ``suite.X...`` module the file imports (at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                 else [])
        found |= {n.split(".")[1] for n in names if n.startswith("suite.") and "." in n}
    return found


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_imports_only_the_layers_above_it(layer):
    for path in sorted((SUITE / layer).rglob("*.py")):
        bad = suite_imports(path) - MAY_IMPORT[layer]
        assert not bad, f"{path.relative_to(ROOT)} imports suite.{sorted(bad)}"


def test_no_module_over_350_lines_and_no_core_function_over_60():
    for path in SUITE.rglob("*.py"):
        lines = path.read_text().count("\n")
        assert lines <= 350, f"{path.relative_to(ROOT)} has {lines} lines"
    for path in (SUITE / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}: {node.name} has {length} lines"


def run(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_console_script_is_the_registry():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {commands.SCRIPT: "suite.harness.commands:main"}
    installed = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    if commands.SCRIPT not in installed:
        pytest.skip("the project is not installed (pip install -e .)")
    assert installed[commands.SCRIPT] == scripts[commands.SCRIPT]


def test_help_lists_every_command_and_an_unknown_one_is_a_usage_error(capsys):
    r = run("-m", "suite", "--help")   # as a user runs it
    assert r.returncode == 0 and all(f"  {name} " in r.stdout for name in commands.COMMANDS)
    assert commands.main(["nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imaml-suite: error:") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", sorted(commands.COMMANDS))
def test_every_command_answers_help_under_its_name(name, capsys):
    with pytest.raises(SystemExit) as exit:
        commands.run(name, ["--help"])
    assert exit.value.code == 0 and f"usage: imaml-suite {name}" in capsys.readouterr().out


def test_every_command_keeps_its_older_form():
    assert set(OLD_FORMS) == set(commands.COMMANDS)   # a new command names its older form
    for name, path in OLD_FORMS.items():
        text = path.read_text()
        assert f'run("{name}")' in text or f'prog("{name}")' in text, path
    # the one that is a script, run as a user would (the others are python -m forms)
    r = run("suite/figures.py", "--help")
    assert r.returncode == 0 and "usage: imaml-suite figures" in r.stdout, r.stderr
