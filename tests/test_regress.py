"""The regression gate fails on worsened metrics and passes on equal or better ones."""
import json

import pytest

from suite import regress

BASE = {"e": {"kind": "error", "value": 1e-6}, "b": {"kind": "bytes", "value": 1000.0},
        "r": {"kind": "ratio", "value": 2.0}}


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
    monkeypatch.setattr(regress, "measure", lambda methods=None: worse)
    assert regress.main(["--baseline", str(path)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "2 passed, 1 failed" in out
    monkeypatch.setattr(regress, "measure", lambda methods=None: BASE)
    assert regress.main(["--baseline", str(path)]) == 0


def test_update_is_explicit(tmp_path, monkeypatch):
    path = tmp_path / "base.json"
    monkeypatch.setattr(regress, "measure", lambda methods=None: BASE)
    with pytest.raises(SystemExit, match="--update"):
        regress.main(["--baseline", str(path)])
    assert not path.exists()                       # comparing never writes a baseline
    assert regress.main(["--baseline", str(path), "--update"]) == 0
    assert json.loads(path.read_text())["metrics"] == BASE


def test_committed_baseline_covers_every_metric_kind():
    data = json.loads(regress.BASELINE.read_text())
    assert {"git_commit", "torch_version", "timestamp"} <= set(data["provenance"])
    kinds = {m["kind"] for m in data["metrics"].values()}
    assert kinds == {"error", "bytes", "ratio"}
