"""A method from outside the suite, end to end: the example plugin package under
examples/imaml_fd_plugin is installed (pip, into a temporary folder), found through its entry
point, and then appears in the sweep, a figure, the gate, the Omniglot recipes and the test
contract by its name, with no file of the suite changed."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "imaml_fd_plugin"
SHARED = ROOT.parent / "shared" / "data" / "omniglot"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(PLUGIN)],
                   check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    return env


def run(env, *args, cwd=ROOT, check=True):
    r = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    if check and r.returncode != 0:
        pytest.fail(f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def test_plugin_is_registered_and_described(plugin_env):
    r = run(plugin_env, "-c", "import suite; print(suite.PLUGINS); "
            "print(suite.METHODS['imaml-fd'].describe())")
    assert "['imaml-fd']" in r.stdout and "option fd_step" in r.stdout
    # without the package the suite does not know it
    r = run(dict(os.environ), "-c", "import suite; print('imaml-fd' in suite.METHODS)")
    assert r.stdout.strip() == "False"


def test_plugin_in_a_sweep_and_a_figure(plugin_env, tmp_path):
    out = tmp_path / "e.csv"
    run(plugin_env, "-m", "suite", "sweeps", "error", "--methods", "imaml", "imaml-fd",
        "--steps", "200", "--kappas", "10", "--dim", "8", "--cg-steps", "20",
        "--repeats", "1", "--quiet", "--out", str(out))
    rows = pd.read_csv(out).set_index("method")
    # kappa 10, 200 GD steps at 1/L: the inner error is 0.9^200 ~ 7e-10; 20 CG steps on an
    # 8-dim system converge; finite differences add ~eps / 1e-5 ~ 1e-11: both near 1e-9
    assert rows.loc["imaml-fd", "rel_error"] < 1e-6 and rows.loc["imaml", "rel_error"] < 1e-6
    figs = tmp_path / "figs"
    r = run(plugin_env, "-m", "suite", "figures", "--scale", "smoke", "--only", "fig2a", "--quiet",
            "--methods", "maml", "imaml", "imaml-fd", "--out", str(figs))
    assert (figs / "reports" / "figure2a.png").exists()
    assert "imaml-fd" in set(pd.read_csv(figs / "results" / "figure2a.csv").method)
    assert "Figure 2a" in r.stdout


def test_plugin_in_the_gate_and_the_recipes(plugin_env, tmp_path):
    baseline = tmp_path / "regress.json"
    baseline.write_bytes((ROOT / "results" / "baselines" / "regress.json").read_bytes())
    r = run(plugin_env, "-m", "suite", "regress", "--baseline", str(baseline), "--methods",
            "imaml-fd", check=False)   # no baseline yet: the gate fails, naming the metric
    assert r.returncode == 1 and "no baseline (record it with --add, on purpose)" in r.stdout
    r = run(plugin_env, "-m", "suite", "regress", "--baseline", str(baseline), "--add",
            "--methods", "imaml-fd")
    assert "synthetic/imaml-fd/rel_error" in r.stdout
    r = run(plugin_env, "-m", "suite", "regress", "--baseline", str(baseline), "--methods",
            "imaml-fd", "imaml")
    assert "0 failed" in r.stdout
    r = run(plugin_env, "-m", "suite", "omniglot", "recipes")
    assert "imaml-fd" in r.stdout
    if not SHARED.exists():
        pytest.skip(f"no Omniglot archives at {SHARED}")
    r = run(plugin_env, "-m", "suite", "omniglot", "train", "--recipe", "imaml-fd",
            "--iterations", "2", "--meta-batch", "2", "--inner-steps", "1", "--k-query", "2",
            "--eval-tasks", "5",
            "--quiet", "--out", str(tmp_path / "omniglot"))
    assert "imaml-fd:" in r.stdout + r.stderr and "after 2 iterations" in r.stdout + r.stderr


def test_plugin_passes_the_contract(plugin_env):
    r = run(plugin_env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_contract.py",
            "-k", "imaml-fd", check=False)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "6 passed" in r.stdout      # one per registered solver
