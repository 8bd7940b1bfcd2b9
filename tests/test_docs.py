"""Every Python block of the README and the documentation pages runs as written, and a block the
page shows the output of prints that output."""
import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHOWN = re.compile(r"```python\n(.*?)```\s*\nprints\n\n```\n(.*?)```", re.S)


def blocks(shown: bool):
    """(page, index, code, documented output or None) for every Python block of every page."""
    out = []
    for page in PAGES:
        text = page.read_text()
        with_output = {m.group(1): m.group(2) for m in SHOWN.finditer(text)}
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S), start=1):
            if (code in with_output) == shown:
                out.append(pytest.param(page, code, with_output.get(code),
                                        id=f"{page.relative_to(ROOT)}:{i}"))
    return out


def run(page, code) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(page), "exec"), {})
    return out.getvalue().split("\n")[:-1]


def test_every_page_with_code_is_found():
    assert len(blocks(shown=True)) >= 1 and len(blocks(shown=False)) >= 3


@pytest.mark.parametrize("page, code, documented", blocks(shown=True))
def test_example_prints_the_documented_output(page, code, documented):
    printed, documented = run(page, code), documented.split("\n")[:-1]
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


@pytest.mark.parametrize("page, code, documented", blocks(shown=False))
def test_python_block_runs(page, code, documented):
    run(page, code)
