"""The README's example runs as written and prints what the README says."""
import contextlib
import io
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_prints_the_documented_output():
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    printed = out.getvalue().split("\n")[:-1]
    documented = re.search(r"```\n(imaml .*?)```", text, re.S).group(1).split("\n")[:-1]
    assert len(printed) == len(documented) == 3
    for got, want in zip(printed, documented):
        g, w = got.split(), want.split()
        assert g[0] == w[0] and g[4:] == w[4:]          # method and work counts: exact
        # FOMAML's error is its bias, a property of the task (0.63): reproducible to many
        # digits, so its two printed digits must match up to one unit in the last (a
        # rounding boundary). MAML's and iMAML's errors are set by float64 rounding (MAML:
        # phi_K equals Alg* to ~1e-15 here; iMAML: 10 CG steps on a 10-dim system lose
        # orthogonality at ~1e-9): they move with the BLAS build's order of summation, so
        # only their level is fixed, within a factor 10.
        e_got, e_want = float(g[3]), float(w[3])
        if e_want > 1e-6:
            assert abs(e_got - e_want) <= 0.11 * 10 ** np.floor(np.log10(e_want)), (got, want)
        else:
            assert e_want / 10 <= e_got <= 10 * e_want, (got, want)


def test_every_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for i, code in enumerate(blocks[1:], start=2):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{README} (python block {i})", "exec"), {})
