"""suite.verify against code written outside the suite: correct plain-PyTorch MAML and iMAML,
higher's and torchopt's, and deliberately broken versions, each diagnosed by name."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples.verify import plain
from suite.verify import VerificationError, check, judge
from examples.verify import broken as bad

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fn, claims", [(plain.maml, "maml"), (plain.imaml, "imaml")])
def test_correct_plain_pytorch_passes(fn, claims):
    report = check(fn, claims=claims)
    assert report.passed and report.verdict.startswith("PASS")


def test_correct_maml_without_claims_names_maml():
    report = judge(plain.maml, cost=False)
    assert report.passed and report.matches[0] == ("maml", "")


@pytest.mark.parametrize("fn, claims, words", [
    (bad.maml_first_order, "maml", "create_graph=True missing"),
    (bad.maml_one_step_short, "maml", "one step fewer"),
    (bad.maml_query_at_theta, "maml", "the adapted parameters are not used"),
    (bad.maml_without_prox, "maml", "lam is ignored"),
    (bad.maml_sign_flipped, "maml", "sign flip"),
    (bad.imaml_forgets_lam, "imaml", "the factor lam of g = lam (H + lam I)^-1 v is missing"),
])
def test_broken_implementations_are_diagnosed_by_name(fn, claims, words):
    with pytest.raises(VerificationError) as info:
        check(fn, claims=claims)
    assert words in str(info.value)
    assert "FAIL" in str(info.value)


def test_first_order_maml_is_first_order():
    # What the issue asks to see: "matches first-order MAML to 1e-16 and differs from MAML"
    report = judge(bad.maml_first_order, "maml", cost=False)
    assert report.verdict.startswith("FAIL: matches first-order MAML to ")
    assert report.worst[("fomaml", "")] < 1e-12 and report.worst[("maml", "")] > 1e-2
    # it passes as what it is
    assert judge(bad.maml_first_order, "fomaml", cost=False).passed


def test_in_place_changes_to_the_model_are_reported():
    report = judge(bad.maml_in_place, "maml", cost=False)
    assert any("changed the model's parameters in place" in d for d in report.diagnosis)


def test_flat_form_and_mse():
    assert judge(bad.flat_maml, "maml", form="flat", cost=False).passed
    assert not judge(bad.flat_fomaml, "maml", form="flat", cost=False).passed
    report = judge(bad.maml_mse, "maml", loss="mse", cost=False)
    assert report.passed
    # the linear problem's references are the scipy closed forms' to rounding
    assert "closed forms on the linear problem to" in report.tolerance_note


def test_peers_pass():
    pytest.importorskip("higher")
    pytest.importorskip("torchopt")
    from suite.verify import adapters
    assert check(adapters.higher_maml, claims="maml").passed
    assert check(adapters.torchopt_imaml, claims="imaml").passed


def test_cli_report_card_and_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "suite", "verify", "examples/verify/plain.py:maml",
                        "--claims", "maml", "--report", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and (tmp_path / "report.md").exists()
    assert (tmp_path / "report.png").exists() and "memory grows by" in r.stdout
    r = subprocess.run([sys.executable, "-m", "suite", "verify",
                        "examples/verify/broken.py:maml_one_step_short", "--claims", "maml",
                        "--no-cost"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "one step fewer" in r.stdout


def test_an_unimportable_function_is_a_one_line_refusal(capsys):
    from suite.harness import cli
    from suite.verify.__main__ import main
    assert cli.run(main, ["no_such_module:f"], prog="imaml-suite verify") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no_such_module: cannot be imported" in line


def _same(shown: str, printed: str) -> bool:
    """Equal text; numbers equal to their printed digits, except rounding-level ones (< 1e-12
    on both sides: a float64 difference whose digits depend on the BLAS build)."""
    num = r"-?\d+\.\d+(?:e[+-]\d+)?"
    if re.sub(num, "#", shown) != re.sub(num, "#", printed):
        return False
    for a, b in zip(re.findall(num, shown), re.findall(num, printed)):
        if not (a == b or (abs(float(a)) < 1e-12 and abs(float(b)) < 1e-12)):
            return False
    return True


def test_readme_verify_command_prints_what_the_readme_shows():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Verify your own meta-gradient")[1].split("\n## ")[0]
    command = re.search(r"```sh\n(imaml-suite verify .*?)\n```", section).group(1)
    shown = re.search(r"prints \(exit status (\d)\)\n\n```\n(.*?)\n```", section, re.S)
    r = subprocess.run([sys.executable, "-m", "suite", *command.split()[1:]], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == int(shown.group(1))
    assert any(_same(shown.group(2), line) for line in r.stdout.splitlines()), r.stdout[:800]
