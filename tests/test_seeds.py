"""Table 2 over seeds: runs keyed and foldered by seed and held-out set, means over seeds with
the spread across them, orderings stated only where the spread resolves them (paired by seed
and by held-out task), and the default iMAML recipe chosen on validation characters. Hand-made
rows and per-task files: the statistics are checked against numbers worked out by hand."""
import numpy as np
import pandas as pd
import pytest

from suite.experiments.omniglot import recipes, report

DEFAULT = recipes.DEFAULT_IMAML


def test_run_folders_keep_the_first_runs_and_separate_seeds_and_validation(tmp_path):
    row = {"setting": "5w1s-small", "recipe": "maml"}
    assert report.run_dir(tmp_path, row) == tmp_path / "5w1s-small" / "maml"
    assert report.run_dir(tmp_path, row | {"train_seed": 0, "heldout": "test"}) == \
        tmp_path / "5w1s-small" / "maml"
    assert report.run_dir(tmp_path, row | {"train_seed": 2, "heldout": "test"}).name == \
        "maml-seed2"
    assert report.run_dir(tmp_path, row | {"train_seed": 0, "heldout": "validation20"}).name \
        == "maml-seed0-validation20"


def runs(tmp_path, per_task: dict, heldout="test"):
    """Rows and eval_tasks.csv files for {(recipe, seed): per-task accuracies}."""
    rows = []
    for (recipe, seed), acc in per_task.items():
        row = {"recipe": recipe, "setting": "5w1s-small", "train_seed": seed,
               "heldout": heldout, "evaluation": "as-trained", "accuracy": float(np.mean(acc)),
               "ci95": 0.01, "acc_as_trained": float(np.mean(acc)), "acc_plain_gd": 0.5,
               "ci95_as_trained": 0.01, "ci95_plain_gd": 0.01, "n_way": 5, "k_shot": 1,
               "k_query": 15, "meta_batch": 8, "iterations": 300, "outer_lr": 1e-3,
               "inner_steps": 16, "inner_lr": 0.1, "cg_steps": 5, "device_name": "cpu",
               "threads": 2, "eval_tasks": len(acc), "git_commit": "abc"}
        folder = report.run_dir(tmp_path, row)
        folder.mkdir(parents=True)
        pd.DataFrame({"task": range(len(acc)), "as-trained": acc}).to_csv(
            folder / "eval_tasks.csv", index=False)
        rows.append(row)
    return pd.DataFrame(rows)


def test_paired_difference_is_the_t_interval_of_the_per_seed_differences(tmp_path):
    # a - b per seed: task differences (0.1, 0.3) -> 0.2; (0.0, 0.2) -> 0.1; (0.3, 0.3) -> 0.3
    frame = runs(tmp_path, {("maml", 0): [0.6, 0.8], ("fomaml", 0): [0.5, 0.5],
                            ("maml", 1): [0.5, 0.7], ("fomaml", 1): [0.5, 0.5],
                            ("maml", 2): [0.8, 0.8], ("fomaml", 2): [0.5, 0.5]})
    d = report.paired_difference(frame, "maml", "fomaml")
    tasks = [pd.read_csv(report.run_dir(tmp_path, r) / "eval_tasks.csv")["as-trained"]
             for _, r in frame.iterrows()]
    assert [float(t.mean()) for t in tasks] == pytest.approx(list(frame.accuracy))
    # mean 0.2, sd 0.1, t(0.975, 2) = 4.3027: half = 4.3027 * 0.1 / sqrt(3) = 0.248414
    assert d["mean"] == pytest.approx(0.2) and d["half"] == pytest.approx(0.248414, rel=1e-5)
    assert d["seeds"] == 3 and not d["resolved"]          # 0.2 < 0.248: the spread covers it
    frame2 = runs(tmp_path / "b", {("maml", s): [0.7, 0.7] for s in range(3)} |
                  {("fomaml", s): [0.5, 0.5 + 0.01 * s] for s in range(3)})
    d2 = report.paired_difference(frame2, "maml", "fomaml")
    # differences 0.2, 0.195, 0.19: mean 0.195, sd 0.005 -> half 0.0124: resolved
    assert d2["mean"] == pytest.approx(0.195) and d2["resolved"]


def test_seed_means_average_the_accuracies_and_give_the_spread(tmp_path):
    frame = runs(tmp_path, {("maml", s): [a] for s, a in enumerate([0.6, 0.7, 0.8])})
    m = report.seed_means(frame).set_index("recipe").loc["maml"]
    assert m.accuracy == pytest.approx(0.7) and m.seed_sd == pytest.approx(0.1)
    assert m.seeds == 3 and m.ci95 == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-6)


def test_table2_over_seeds_reports_means_each_seed_and_unresolved_orderings(tmp_path):
    acc = {"maml": [0.90, 0.86, 0.88], "fomaml": [0.87, 0.88, 0.86], "untrained": [0.45] * 3}
    frame = runs(tmp_path, {(r, s): [a[s]] * 4 for r, a in acc.items() for s in range(3)})
    md = report.table2_markdown(frame, tmp_path)
    assert "## Across seeds" in md and "| 88.0 | 2.0 |" in md        # maml: mean 88, sd 2
    assert "maml and fomaml: unresolved" in md                       # +0.7 ± 5.2
    assert "fomaml above untrained" in md


def test_the_choice_is_made_on_validation_rows_and_says_whether_it_changed(tmp_path,
                                                                          monkeypatch):
    first, other = [r for r in recipes.IMAML_CANDIDATES if r != DEFAULT][:2]
    val = runs(tmp_path, {(r, s): [a + 0.01 * s] * 3 for s in range(3) for r, a in
                          ((DEFAULT, 0.80), (other, 0.83), (first, 0.79))},
               heldout="validation20")
    test = runs(tmp_path / "t", {(other, 0): [0.9] * 3})
    md = report.choice_markdown(val, tmp_path, test)
    assert f"**Chosen: {other}**" in md and f"set `recipes.DEFAULT_IMAML` to {other}" in md
    # one tested seed: its interval over the held-out tasks, never a NaN spread across seeds
    assert (f"Held-out test characters, after choosing: {other} scores 90.0 ± 1.0% at "
            "seed 0 (one seed: the interval is over the held-out tasks") in md
    assert "nan" not in md
    tested = runs(tmp_path / "t3", {(other, s): [0.9 + 0.01 * s] * 3
                                    for s in range(3)})
    assert "scores 91.0 ± 2.5% (mean over 3 seeds ± 95% across them)" in \
        report.choice_markdown(val, tmp_path, tested)      # sd 0.01: 4.303 x 0.01 / sqrt(3)
    same = val.assign(accuracy=np.where(val.recipe == DEFAULT, 0.9, val.accuracy))
    monkeypatch.setattr(recipes, "HELDOUT_CHOICE", first)
    assert f"the default had been {first}: the choice changed" in report.choice_markdown(
        same, tmp_path, test.iloc[:0])
    monkeypatch.setattr(recipes, "HELDOUT_CHOICE", DEFAULT)
    assert "the choice did not change" in report.choice_markdown(same, tmp_path, test.iloc[:0])
