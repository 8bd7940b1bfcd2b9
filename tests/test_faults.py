"""What happens on faults: a user error is one line and exit status 2 before any work; Ctrl-C
and SIGTERM (real signals, in subprocesses) end a training run or a sweep with a checkpoint or
its finished rows, one line naming where and how to resume, exit status 130 / 143; the resumed
run completes with every row once; a rank that hangs does not hold the others past the
process group's timeout."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from suite.harness import cli, distributed
from suite.experiments import figures, lam, peers, regress, sweeps_cli
from suite.experiments.omniglot import __main__ as omniglot
from suite.verify import __main__ as verify

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "omniglot"
needs_data = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/omniglot missing")


def refusal(main, prog, argv, capsys):
    status = cli.run(main, argv, prog=prog)
    err = capsys.readouterr().err
    return status, err.strip().splitlines()


TRAIN = ["train", "--recipe", "maml", "--iterations", "2", "--quiet"]


@pytest.mark.parametrize("argv, says", [
    (["--meta-batch", "0"], "--meta-batch must be an integer >= 1, got 0"),
    (["--inner-lr", "-0.1"], "--inner-lr must be a finite number > 0, got -0.1"),
    (["--eval-tasks", "-5"], "--eval-tasks must be an integer >= 1, got -5"),
    (["--n-way", "1"], "--n-way must be an integer >= 2, got 1"),
    (["--iterations", "-1"], "--iterations must be >= 0"),
    (["--minutes", "-1"], "--minutes must be > 0"),
    (["--device", "gpu"], "--device gpu: not a torch device name"),
    (["--data", "full", "--root", "{tmp}"], "images_background.zip, images_evaluation.zip not "
     "found in {tmp} (--root). Get them with: imaml-suite omniglot download"),
    (["--out", "{file}/runs"], "--out {file}/runs: cannot create the folder"),
    pytest.param(["--n-way", "5000"], "--n-way 5000: the meta-training characters of --data "
                 "small give 544 classes", marks=needs_data),
    pytest.param(["--k-query", "25"], "--k-shot 1 + --k-query 25: a character has 20 "
                 "drawings", marks=needs_data),
])
def test_omniglot_user_errors_are_one_line(argv, says, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    fill = {"tmp": str(tmp_path), "file": str(tmp_path / "file")}
    argv = [a.format(**fill) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    status, lines = refusal(omniglot.main, omniglot.PROG, TRAIN + argv, capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("imaml-suite omniglot") and says.format(**fill) in lines[0]
    assert not (tmp_path / "out" / "runs.csv").exists()


def test_a_meta_batch_the_processes_cannot_split_is_refused_before_joining(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(distributed, "init", lambda device: pytest.fail("joined the group"))
    status, lines = refusal(omniglot.main, omniglot.PROG, TRAIN + [
        "--meta-batch", "4", "--out", str(tmp_path)], capsys)
    assert status == 2 and lines == ["imaml-suite omniglot: error: --meta-batch 4 is not "
                                     "divisible by the 3 processes: every rank must take an "
                                     "equal share of the meta-batch (choose a multiple of 3)"]
    monkeypatch.setenv("RANK", "1")   # the other ranks refuse silently: one line per job
    assert refusal(omniglot.main, omniglot.PROG, TRAIN + [
        "--meta-batch", "4", "--out", str(tmp_path)], capsys) == (2, [])


@pytest.mark.parametrize("main, prog, argv, says", [
    (figures.main, "imaml-suite figures", ["--threads", "-1"],
     "--threads must be a finite number >= 1, got -1"),
    (figures.main, "imaml-suite figures", ["--out", "{file}/x"], "cannot create the folder"),
    (sweeps_cli.main, "imaml-suite sweeps", ["error", "--steps", "2", "--repeats", "-1"],
     "--repeats must be a finite number >= 0, got -1"),
    (sweeps_cli.main, "imaml-suite sweeps", ["cost", "--steps", "2", "--out", "{file}/x.csv"],
     "does not exist (create it first)"),
    (peers.main, "imaml-suite peers", ["--threads", "0"], "--threads must be"),
    (lam.main, "imaml-suite lam", ["--iterations", "0"], "--iterations must be"),
    (regress.main, "imaml-suite regress", ["--baseline", "{tmp}/none.json"],
     "no baseline at"),
    (verify.main, "imaml-suite verify", ["nothing"], "give MODULE:FUNCTION"),
])
def test_every_cli_refuses_in_one_line(main, prog, argv, says, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = [a.format(tmp=tmp_path, file=tmp_path / "file") for a in argv]
    status, lines = refusal(main, prog, argv, capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith(prog) and ": error: " in lines[0]
    assert says in lines[0]


def start(args, log: Path, **env):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env={**os.environ, **env})


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_cli(args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


@needs_data
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_training_with_a_checkpoint_and_the_run_resumes(sig, status, tmp_path):
    out, log = tmp_path / "runs", tmp_path / "stderr"
    args = ["-m", "suite", "omniglot", "train", "--recipe", "fomaml", "--meta-batch", "2",
            "--inner-steps", "1", "--k-query", "2", "--eval-tasks", "5", "--quiet",
            "--out", str(out)]
    proc = start(args + ["--iterations", "1000"], log)
    run = out / "5w1s-small" / "fomaml"
    wait_for(lambda: (run / "checkpoint.pt").exists(), "the first checkpoint (iteration 25)")
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == status
    lines = log.read_text().strip().splitlines()
    assert "Traceback" not in log.read_text()
    assert lines[-2] == (f"{sig.name}: finishing this step, then saving (send it again to stop "
                         "at once)")
    stopped = torch.load(run / "checkpoint.pt", weights_only=False)["iteration"]
    assert 25 <= stopped < 1000
    assert lines[-1] == (f"imaml-suite omniglot: stopped by {sig.name}; fomaml stopped after "
                         f"iteration {stopped} of 1000, checkpoint and metrics written to {run}. "
                         f"Resume with: imaml-suite omniglot {' '.join(args[3:])} "
                         "--iterations 1000")
    assert list(pd.read_csv(run / "metrics.csv").iteration) == list(range(1, stopped + 1))
    if sig == signal.SIGINT:   # resumed (to a nearer end, a resumable setting): every row once
        done = run_cli(args + ["--iterations", str(stopped + 2)])
        assert done.returncode == 0, done.stderr
        assert list(pd.read_csv(run / "metrics.csv").iteration) == list(range(1, stopped + 3))
        assert pd.read_csv(out / "runs.csv").iterations.tolist() == [stopped + 2]


def test_sigterm_keeps_a_sweeps_finished_rows_and_the_rerun_completes(tmp_path):
    out, log = tmp_path / "cost.csv", tmp_path / "stderr"
    args = ["-m", "suite", "sweeps", "cost", "--methods", "maml", "--steps", *map(str, range(1, 7)),
            "--n-way", "5", "--k-shot", "1", "--repeats", "1", "--quiet", "--out", str(out)]
    proc = start(args, log)
    wait_for(lambda: out.exists() and len(pd.read_csv(out)) >= 2, "two finished rows")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    text = log.read_text()
    assert "Traceback" not in text
    kept = pd.read_csv(out)
    assert (kept.status == "ok").all() and 2 <= len(kept) < 6
    assert text.strip().splitlines()[-1] == (
        f"imaml-suite sweeps: stopped by SIGTERM; {len(kept)} of 6 points finished, kept "
        f"in {out}. Resume with: imaml-suite sweeps {' '.join(args[3:])}")
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    final = pd.read_csv(out)
    assert sorted(final.inner_steps) == list(range(1, 7)) and (final.status == "ok").all()
    pd.testing.assert_frame_equal(final.iloc[:len(kept)], kept)   # finished rows untouched


def test_a_hung_rank_does_not_hold_the_others_past_the_timeout(tmp_path):
    """Rank 1 stops answering; rank 0's next collective gives up after the process group's
    timeout (2 s here, IMAML_SUITE_DIST_TIMEOUT_S) with PeerLost, not a wait forever."""
    import dist_workers as w
    from test_distributed import free_port
    import torch.multiprocessing as mp
    os.environ["IMAML_SUITE_DIST_TIMEOUT_S"] = "2"
    try:
        mp.start_processes(w.hang_worker, args=(2, free_port(), str(tmp_path)), nprocs=2,
                           start_method="spawn")
    finally:
        del os.environ["IMAML_SUITE_DIST_TIMEOUT_S"]
    said, waited = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert 1.5 < float(waited) < 20.0
    assert said.startswith("rank 0: all_reduce with the other 1 process(es) failed (") and \
        said.endswith("one of them died or hung (timeout 2 s, IMAML_SUITE_DIST_TIMEOUT_S). "
                      "Rank 0's files are whole: rerun the same command to resume")
