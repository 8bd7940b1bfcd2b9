"""The side-by-side report's ratios and target verdicts, on a hand-made frame (no peers needed)."""
import re
import pandas as pd
import pytest

from suite.experiments.peers import main, report, targets


def frame():
    def row(impl, method, batch, time_s, iqr=0.0):
        return dict(impl=impl, method=method, inner_steps=5, meta_batch=batch, n_way=20, k_shot=5,
                    lam=10.0 if method == "imaml" else 0.0,
                    cg_steps=5 if method == "imaml" else None, time_s=time_s, time_iqr_s=iqr,
                    peak_bytes=100, repeats=3, device="cuda", device_name="GPU", threads=1,
                    torch_version="x", git_commit="abc")
    return pd.DataFrame([
        row("ours", "maml", 1, 1.0), row("higher", "maml", 1, 1.04, iqr=0.1),   # 1.04: noise
        row("ours", "maml", 16, 10.0), row("higher", "maml", 16, 10.0),
        row("ours-vmap", "maml", 16, 4.0),                                      # 0.4: reached
        row("ours", "fomaml", 16, 10.0), row("ours-vmap", "fomaml", 16, 7.0),   # 0.7: not
        row("ours", "imaml", 16, 10.0), row("torchopt", "imaml", 16, 12.0),
        row("ours-vmap", "imaml", 16, 5.2, iqr=0.52),                           # 0.52: noise
    ])


def test_target_verdicts():
    got = {what: (round(v, 3), verdict) for what, v, verdict in targets(frame())}
    assert got == {
        "MAML per task, 5 steps: ours / higher time <= 1": (0.962, "reached"),
        "MAML meta-batch 16, 5 steps: vmap throughput >= 2x the loop (time ratio <= 0.5)":
            (0.4, "reached"),
        "FOMAML meta-batch 16, 5 steps: vmap throughput >= 2x the loop (time ratio <= 0.5)":
            (0.7, "not reached"),
        "IMAML meta-batch 16, 5 steps: vmap throughput >= 2x the loop (time ratio <= 0.5)":
            (0.52, "within timing noise"),
        "MAML meta-batch 16, 5 steps: vmap / higher time <= 0.5": (0.4, "reached"),
        "IMAML meta-batch 16, 5 steps: vmap / torchopt time <= 0.5": (0.433, "reached"),
    }


def test_report_lists_every_batched_method():
    md = report(frame(), "results/gpu/peers.csv")
    assert "| fomaml | 5 | 16 | 0.70 (1.4x) | no peer |" in md
    assert "Raw rows: `results/gpu/peers.csv`." in md


@pytest.mark.parametrize("argv,name", [(["--meta-batch", "1"], "--meta-batch"),
                                       (["--steps", "0"], "--steps"),
                                       (["--batch-steps", "-1"], "--batch-steps"),
                                       (["--lam", "0"], "--lam")])
def test_cli_names_the_bad_argument(argv, name, capsys):
    with pytest.raises(SystemExit, match=re.escape(name)):
        main(argv)


def test_report_only_rewrites_the_report_from_the_rows(tmp_path, capsys):
    csv, md = tmp_path / "peers.csv", tmp_path / "peers.md"
    frame().to_csv(csv, index=False)
    assert main(["--report-only", "--out", str(csv), "--report", str(md)]) == 0
    assert md.read_text() == report(frame(), str(csv))
    with pytest.raises(SystemExit, match=re.escape("does not exist")):
        main(["--report-only", "--out", str(tmp_path / "none.csv")])
    frame().iloc[:0].to_csv(csv, index=False)
    with pytest.raises(SystemExit, match=re.escape("holds no rows")):
        main(["--report-only", "--out", str(csv), "--report", str(md)])
