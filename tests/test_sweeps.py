"""Results store and sweeps: atomic writes, resume, status rows, the CLI."""
import math

import pandas as pd
import pytest
import torch

import suite.experiments.sweeps as sweeps
import suite.experiments.sweeps_cli as sweeps_cli
from suite.harness.results import ResultsStore

TINY = dict(methods=["maml", "fomaml", "imaml"], steps_list=[2, 4], cg_list=[3], kappas=[10.0],
            dim=5)


def test_error_sweep_writes_rows_with_provenance(tmp_path):
    out = tmp_path / "e.csv"
    sweeps.run_sweep(sweeps.error_points(**TINY), out, repeats=1, progress=False)
    frame = pd.read_csv(out)
    assert len(frame) == 6 and (frame["status"] == "ok").all()
    for column in ["method", "solver", "inner_steps", "cg_steps", "truncate", "kappa", "lam",
                   "rel_error", "time_s", "time_iqr_s", "peak_bytes", "graph_bytes",
                   "cuda_peak_bytes", "nvml_used_bytes", "device", "dtype", "threads", "seed",
                   "torch_version", "git_commit", "timestamp", "status"]:
        assert column in frame.columns, column
    assert frame["rel_error"].notna().all() and (frame["peak_bytes"] > 0).all()
    assert frame["torch_version"].iloc[0] == torch.__version__


def test_rerun_resumes_without_recomputing(tmp_path, monkeypatch):
    out = tmp_path / "e.csv"
    points = sweeps.error_points(**TINY)
    sweeps.run_sweep(points[:3], out, repeats=1, progress=False)   # "interrupted" after 3
    before = pd.read_csv(out)
    calls = []
    real = sweeps.run_points
    monkeypatch.setattr(sweeps, "run_points",
                        lambda cfgs, **kw: calls.extend(cfgs) or real(cfgs, **kw))
    sweeps.run_sweep(points, out, repeats=1, progress=False)
    assert len(calls) == 3                                            # only the missing ones
    after = pd.read_csv(out)
    assert len(after) == 6
    pd.testing.assert_frame_equal(after.iloc[:3], before)            # finished rows untouched


def test_points_at_one_step_count_are_timed_together(tmp_path, monkeypatch):
    groups = []
    real = sweeps.time_calls
    monkeypatch.setattr(sweeps, "time_calls",
                        lambda fns, **kw: groups.append(len(fns)) or real(fns, **kw))
    points = sweeps.error_points(**TINY)
    sweeps.run_sweep(points, tmp_path / "i.csv", repeats=1, progress=False,
                     interleave=("inner_steps",))
    per_k = pd.Series([p["inner_steps"] for p in points]).value_counts()
    assert sorted(groups) == sorted(per_k.tolist())     # one interleaved timing per K
    frame = pd.read_csv(tmp_path / "i.csv")
    assert frame.time_s.notna().all() and (frame.status == "ok").all()


def test_cuda_oom_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def boom(method, *args, **kwargs):
        if method == "maml":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(method, *args, **kwargs)
    real = sweeps.meta_gradient_batch
    monkeypatch.setattr(sweeps, "meta_gradient_batch", boom)
    out = tmp_path / "c.csv"
    sweeps.run_sweep(sweeps.error_points(**TINY), out, repeats=1, progress=False)
    frame = pd.read_csv(out)
    assert set(frame.loc[frame.method == "maml", "status"]) == {"oom"}
    assert frame.loc[frame.method == "maml", "rel_error"].isna().all()
    assert set(frame.loc[frame.method != "maml", "status"]) == {"ok"}


def test_store_refuses_non_finite_ok_results_and_leaves_no_temp_files(tmp_path):
    store = ResultsStore(tmp_path / "r.csv", ["a"], ["x"])
    store.add({"a": 1, "x": 0.5, "status": "ok"})
    with pytest.raises(ValueError, match="non-finite x"):
        store.add({"a": 2, "x": math.nan, "status": "ok"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    assert ResultsStore(tmp_path / "r.csv", ["a"], ["x"]).done({"a": 1.0})


def test_cli_help_and_cuda_refusal(capsys):
    with pytest.raises(SystemExit) as exit_:
        sweeps_cli.main(["cost", "--help"])
    assert exit_.value.code == 0
    assert "--device" in capsys.readouterr().out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            sweeps_cli.main(["cost", "--steps", "1", "--device", "cuda"])


def test_cli_cost_sweep_on_synthetic(tmp_path, capsys):
    out = tmp_path / "c.csv"
    code = sweeps_cli.main(["cost", "--workload", "synthetic", "--steps", "1", "3", "--dim", "6",
                        "--methods", "maml", "imaml", "--repeats", "1", "--quiet",
                        "--out", str(out)])
    assert code == 0
    frame = pd.read_csv(out)
    assert len(frame) == 4 and (frame.status == "ok").all()


def test_cli_repeats_zero_measures_errors_and_memory_without_timing(tmp_path):
    """The README's torchrun example passes --repeats 0 (ranks sharing one CPU must not time)."""
    out = tmp_path / "e.csv"
    assert sweeps_cli.main(["error", "--steps", "5", "--kappas", "10", "--dim", "4", "--cg-steps",
                        "2", "--methods", "fomaml", "--repeats", "0", "--quiet", "--out",
                        str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row.status == "ok" and row.rel_error > 0 and row.peak_bytes > 0
    assert pd.isna(row.time_s)
