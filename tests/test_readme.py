"""The README's example runs as written and prints what the README says."""
import contextlib
import io
import pathlib
import re

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
        # Same method, counts and order of magnitude of the error (float64 rounding may
        # move the last digits across BLAS builds).
        g, w = got.split(), want.split()
        assert g[0] == w[0] and g[4:] == w[4:]
        assert abs(float(g[3]) / float(w[3]) - 1) < 0.5 or max(float(g[3]), float(w[3])) < 1e-12
