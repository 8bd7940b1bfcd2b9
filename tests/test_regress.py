"""The regression gate fails on worsened metrics and passes on equal or better ones, and it
fails on deliberately broken methods: a MAML whose inner loop is not differentiated (its
meta-gradient error) and a method that climbs the loss (the learning check)."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from suite.experiments import regress
from suite.core.registry import METHODS

BASE = {"e": {"kind": "error", "value": 1e-6}, "b": {"kind": "bytes", "value": 1000.0},
        "r": {"kind": "ratio", "value": 2.0},
        "a": {"kind": "accuracy", "value": 0.6, "tolerance": 0.05}}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def verdicts(**changes):
    now = {k: dict(v) for k, v in BASE.items()}
    for k, value in changes.items():
        now[k]["value"] = value
    return {v.metric: v.ok for v in regress.compare(BASE, now)}


def test_unchanged_and_improved_metrics_pass():
    assert all(verdicts().values())
    assert all(verdicts(e=1e-9, b=900.0).values())


@pytest.mark.parametrize("metric,value", [
    ("e", 1.1e-6),          # error 10% worse (margin: 1% + 1e-12)
    ("e", float("nan")),    # a NaN is never a pass
    ("b", 1011.0),          # 1.1% more memory (margin 1%)
    ("r", 3.1),             # ratio beyond x1.5
    ("r", 1.3),             # ... or below /1.5 (a timing that is suddenly too good is suspect)
    ("a", 0.54),            # accuracy beyond its tolerance, below
    ("a", 0.66),            # ... or above (an evaluation that leaks is suspect too)
    ("a", float("nan")),
])
def test_worsened_metric_fails(metric, value):
    result = verdicts(**{metric: value})
    assert not result[metric]
    assert all(ok for name, ok in result.items() if name != metric)


def test_metric_without_baseline_fails():
    now = dict(BASE, new={"kind": "bytes", "value": 1.0})
    assert not {v.metric: v.ok for v in regress.compare(BASE, now)}["new"]


def test_gate_exits_nonzero_on_regression(tmp_path, monkeypatch, capsys):
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"provenance": {}, "metrics": BASE}))
    worse = {k: dict(v) for k, v in BASE.items()}
    worse["b"]["value"] = 2000.0
    monkeypatch.setattr(regress, "measure", lambda methods=None, learning=True: worse)
    assert regress.main(["--baseline", str(path)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "3 passed, 1 failed" in out
    monkeypatch.setattr(regress, "measure", lambda methods=None, learning=True: BASE)
    assert regress.main(["--baseline", str(path)]) == 0


def test_update_is_explicit(tmp_path, monkeypatch):
    path = tmp_path / "base.json"
    monkeypatch.setattr(regress, "measure", lambda methods=None, learning=True: BASE)
    with pytest.raises(SystemExit, match="--update"):
        regress.main(["--baseline", str(path)])
    assert not path.exists()                       # comparing never writes a baseline
    assert regress.main(["--baseline", str(path), "--update"]) == 0
    assert json.loads(path.read_text())["metrics"] == BASE


def test_committed_baseline_covers_every_metric_kind():
    data = json.loads(regress.BASELINE.read_text())
    assert {"git_commit", "torch_version", "timestamp"} <= set(data["provenance"])
    kinds = {m["kind"] for m in data["metrics"].values()}
    assert kinds == {"error", "bytes", "ratio", "accuracy"}
    assert all(m["tolerance"] > 0 for m in data["metrics"].values() if m["kind"] == "accuracy")


def test_an_accuracy_without_a_tolerance_fails():
    base = {"a": {"kind": "accuracy", "value": 0.6}}
    assert not regress.compare(base, base)[0].ok


def broken(name, fn):
    return dataclasses.replace(METHODS[name], fn=fn)


def test_a_maml_whose_inner_loop_is_not_differentiated_fails_the_gate(monkeypatch):
    committed = json.loads(regress.BASELINE.read_text())["metrics"]
    fomaml = METHODS["fomaml"].fn
    monkeypatch.setitem(METHODS, "maml", broken(
        "maml", lambda task, theta, *, lam, solver, lam_grad=False, **o:
        fomaml(task, theta, lam=lam, solver=solver, **o)))
    failed = [v.metric for v in regress.compare(committed, regress.measure(["maml"]))
              if not v.ok]
    assert failed == ["synthetic/maml/rel_error"]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/omniglot missing")
def test_a_method_that_climbs_the_loss_fails_the_learning_check(monkeypatch):
    from suite.experiments import learning
    committed = json.loads(regress.BASELINE.read_text())["metrics"]
    fomaml = METHODS["fomaml"].fn

    def ascent(task, theta, **kw):
        result = fomaml(task, theta, **kw)
        return dataclasses.replace(result, grad=-result.grad)

    monkeypatch.setitem(METHODS, "fomaml", broken("fomaml", ascent))
    # The gate's first 100 of its 300 held-out tasks (the same stream): a method that climbs
    # the loss collapses by far more than 100 tasks' sampling error (~1.5 points) can blur.
    monkeypatch.setitem(learning.SETTINGS, "eval_tasks", 100)
    now = {}
    learning.gate_metrics(lambda name, kind, value, tolerance=None: now.update(
        {name: {"kind": kind, "value": value}}), names=["fomaml"])
    (verdict,) = regress.compare(committed, now)
    assert verdict.metric == "omniglot5w1s/fomaml/accuracy" and not verdict.ok
    assert verdict.now < verdict.baseline - committed[verdict.metric]["tolerance"]
