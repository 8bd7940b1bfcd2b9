"""Reports of the Omniglot runs: Table 2 with its targets and its spread over seeds, and the
choice of the default iMAML recipe (the variants' report is ``variants_report``, the curves
``curves``). Everything is read from ``runs.csv`` and each run's ``metrics.csv`` and
``curve.csv``; nothing is computed here that a run did not store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from suite.experiments.omniglot import recipes

ABOVE_UNTRAINED = 20.0   # points
WITHIN_MAML = 2.0
REPTILE_WITHIN_FOMAML = 5.0


def run_dir(out: Path, row) -> Path:
    """A run's folder: ``setting/recipe`` for seed 0 evaluated on the test characters (as
    the first runs were written), ``setting/recipe-seedS[-validationN]`` otherwise."""
    seed = int(row.get("train_seed", 0) or 0)
    heldout = row.get("heldout", "test")
    heldout = "test" if not isinstance(heldout, str) else heldout
    name = row["recipe"] + (f"-seed{seed}" if seed or heldout != "test" else "") + \
        ("" if heldout == "test" else f"-{heldout}")
    return Path(out) / row["setting"] / name


def run_metrics(out: Path, row) -> dict:
    """Over the training run's metrics.csv: the median seconds per iteration (robust to a
    busy moment of a shared machine) and the means of the implicit recipes' diagnostics
    (NaN where a recipe has none)."""
    path = run_dir(out, row) / "metrics.csv"
    m = pd.read_csv(path) if path.exists() and path.stat().st_size > 1 else pd.DataFrame()

    def mean(col):
        return float(m[col].mean()) if col in m and m[col].notna().any() else np.nan
    return {"s_per_iteration": float(m["seconds"].median()) if "seconds" in m else np.nan,
            "breakdown_rate": mean("cg_breakdown"),
            "stationarity": mean("inner_stationarity"), "cg_residual": mean("cg_residual"),
            "min_curvature": float(m["cg_min_curvature"].min())
            if "cg_min_curvature" in m and m["cg_min_curvature"].notna().any() else np.nan,
            "fallback_rate": mean("cg_fallbacks"),
            "probe_cosine": mean("probe_cosine_to_maml")}


def format_pct(acc, ci) -> str:
    return f"{100 * acc:.1f} ± {100 * ci:.1f}"


def format_num(x, fmt) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def setting_line(frame: pd.DataFrame) -> str:
    first, commits = frame.iloc[0], sorted(set(frame.git_commit))
    return (f"{int(first['n_way'])}-way {int(first['k_shot'])}-shot, data `{first['setting']}`, "
            f"{int(first['k_query'])} query images per class, meta-batch "
            f"{int(first['meta_batch'])}, {int(first['iterations'])} outer iterations per recipe "
            f"(outer Adam lr {first['outer_lr']:g}; Reptile its own outer step), inner GD "
            f"{int(first['inner_steps'])} steps at lr {first['inner_lr']:g}, {int(first['cg_steps'])} "
            f"CG steps; {first['device_name']} ({int(first['threads'])} threads), evaluated on "
            f"{int(first['eval_tasks'])} held-out tasks (95% interval), "
            f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}.")


def headline(frame: pd.DataFrame) -> dict:
    return {r.recipe: 100 * r.accuracy for r in frame.itertuples()}


def targets(frame: pd.DataFrame) -> list[tuple[str, str, bool | None]]:
    """(target, measured, reached) for each of Table 2's targets that the frame can decide."""
    acc = headline(frame)
    out = []
    if "untrained" in acc:
        low = {k: v - acc["untrained"] for k, v in acc.items()
               if k != "untrained" and k in recipes.TABLE2_RECIPES}
        worst = min(low, key=low.get)
        out.append((f"every recipe of Table 2 at least {ABOVE_UNTRAINED:g} points above the "
                    "untrained initialisation", f"smallest margin {low[worst]:+.1f} ({worst})",
                    low[worst] >= ABOVE_UNTRAINED))
    imaml = {k: v for k, v in acc.items()
             if recipes.RECIPES[k].implicit and recipes.RECIPES[k].solver != "newton-cg"}
    if imaml and {"fomaml", "maml"} <= acc.keys():
        best = max(imaml, key=imaml.get)
        out.append(("best iMAML recipe not below first-order MAML and within "
                    f"{WITHIN_MAML:g} points of MAML",
                    f"{best} {imaml[best]:.1f} vs FOMAML {acc['fomaml']:.1f}, MAML {acc['maml']:.1f}",
                    imaml[best] >= acc["fomaml"] and imaml[best] >= acc["maml"] - WITHIN_MAML))
        default = recipes.DEFAULT_IMAML
        measured = f"default {default}; best {best}"
        if default in acc and best != default and "ci95" in frame:
            ci = frame.set_index("recipe").ci95
            measured += (f" ({imaml[best] - acc[default]:+.1f} ± "
                         f"{100 * float(np.hypot(ci[best], ci[default])):.1f} points)")
        out.append(("the default iMAML recipe is the best one found", measured,
                    acc.get(default, -1) >= imaml[best]))
    if "imaml-hf" in acc and {"fomaml", "maml"} <= acc.keys():
        hf = acc["imaml-hf"]
        out.append(("iMAML-HF not below first-order MAML and within "
                    f"{WITHIN_MAML:g} points of MAML",
                    f"{hf:.1f} vs FOMAML {acc['fomaml']:.1f}, MAML {acc['maml']:.1f}",
                    hf >= acc["fomaml"] and hf >= acc["maml"] - WITHIN_MAML))
    if {"reptile", "fomaml"} <= acc.keys():
        gap = acc["reptile"] - acc["fomaml"]
        out.append((f"Reptile within {REPTILE_WITHIN_FOMAML:g} points of first-order MAML",
                    f"{acc['reptile']:.1f} vs {acc['fomaml']:.1f} ({gap:+.1f})",
                    gap >= -REPTILE_WITHIN_FOMAML))
    return out


def diagnoses(frame: pd.DataFrame, out: Path) -> list[str]:
    """For each recipe behind a target that is not reached, what its run measured."""
    by = frame.set_index("recipe")
    acc = headline(frame)
    row = lambda r: by.loc[r].to_dict() | {"recipe": r}  # noqa: E731
    lines = []
    if {"reptile", "fomaml"} <= acc.keys() and acc["reptile"] < acc["fomaml"] - REPTILE_WITHIN_FOMAML:
        c = pd.read_csv(run_dir(out, row("reptile")) / "curve.csv").set_index("iteration")
        mid = c.index[len(c) // 2]
        rep, fo = run_metrics(out, row("reptile")), run_metrics(out, row("fomaml"))
        lines.append(
            f"- **Reptile**: {100 * c.accuracy.iloc[-1]:.1f}% on the curve's tasks at iteration "
            f"{c.index[-1]}, {100 * c.accuracy.loc[mid]:.1f}% at {mid}; an iteration costs "
            f"{rep['s_per_iteration']:.2f} s against first-order MAML's "
            f"{fo['s_per_iteration']:.2f} s. Its direction θ − mean φ is, to first order, the "
            "gradient of the joint training loss; the term that meta-learns is second order in "
            "the inner step (Nichol et al. 2018), small with Adam at lr 1e-3 over 5 steps, and "
            f"the published schedule anneals ε over 100,000 iterations, here over "
            f"{int(by.loc['reptile', 'iterations'])}. The "
            "curves against training seconds show it at equal time.")
    default = recipes.DEFAULT_IMAML
    implicit = {k: v for k, v in acc.items()
                if recipes.RECIPES[k].implicit and recipes.RECIPES[k].solver != "newton-cg"}
    best = max(implicit, key=implicit.get) if implicit else None
    if default in acc and best not in (None, default):
        ci = frame.set_index("recipe").ci95
        half = 100 * float(np.hypot(ci[best], ci[default]))
        gap = implicit[best] - acc[default]
        lines.append(
            f"- **Default iMAML recipe**: {best} scored {gap:.1f} points above the default "
            f"{default}, " + ("within" if gap <= half else "beyond") + f" the {half:.1f}-point "
            "interval of the difference (the same held-out tasks). "
            + (f"The default is kept ({best}: {recipes.RECIPES[best].label.lower()}, one more "
               "setting to choose, for a difference these 600 tasks cannot resolve); the "
               "variants report compares them." if gap <= half
               else "The default should be changed to it."))
    if "imaml-hf" in acc and "maml" in acc and acc["imaml-hf"] < acc["maml"] - WITHIN_MAML:
        hf = run_metrics(out, row("imaml-hf"))
        # the GD recipe with iMAML-HF's meta-gradient, at the same seed (a variant, not a
        # Table 2 row, once the default moved to another recipe)
        gd = run_metrics(out, row("imaml-hf") | {"recipe": recipes.HELDOUT_CHOICE})
        gd = None if np.isnan(gd["stationarity"]) else gd
        r = by.loc["imaml-hf"]
        plain, gap = 100 * r.acc_plain_gd, acc["maml"] - acc["imaml-hf"]
        lines.append(
            f"- **iMAML-HF**: {hf['s_per_iteration']:.2f} s per iteration; its inner loop "
            f"({int(r.hf_steps)} Newton steps of {int(r.cg_steps)} CG iterations with a line "
            f"search on G) ends at a mean inner stationarity of {hf['stationarity']:.3f}"
            + (f", against {gd['stationarity']:.3f} after {recipes.HELDOUT_CHOICE}'s "
               f"{int(r.inner_steps)} GD steps with the same meta-gradient" if gd else "")
            + f". From the same θ, adapting by plain GD gives {plain:.1f}% "
            f"({plain - acc['maml']:+.1f} against MAML): of the {gap:.1f} points between it "
            f"and MAML, {plain - acc['imaml-hf']:.1f} come from adapting by Newton-CG at "
            "evaluation rather than from the meta-learned θ.")
    return lines


def _target_lines(rows) -> list[str]:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    for what, measured, ok in rows:
        lines.append(f"| {what} | {measured} | {'reached' if ok else 'not reached'} |")
    return lines


def table2_markdown(frame: pd.DataFrame, out: Path, variants: pd.DataFrame | None = None) -> str:
    """Table 2 from runs.csv's rows; with several seeds per recipe, accuracies are means over
    seeds (interval: across seeds) and an 'Across seeds' section gives each seed and the
    orderings the spread resolves."""
    order = [r for r in recipes.TABLE2_RECIPES if r in set(frame.recipe)]
    by_seed = frame
    several = frame.train_seed.nunique() > 1 if "train_seed" in frame else False
    if several:
        frame = seed_means(frame)
        variants = seed_means(variants) if variants is not None and len(variants) else variants
    frame = frame.set_index("recipe").loc[order].reset_index()
    first = frame.iloc[0]
    col = recipes.SETTINGS.get((int(first["n_way"]), int(first["k_shot"])))
    lines = ["# Table 2, measured (Omniglot)", "", "Generated by `imaml-suite omniglot "
             "table2`.", "", setting_line(frame), "",
             "| method | accuracy % | adapt as trained | adapt by plain GD | s / iteration "
             "| tasks with a CG breakdown | paper's number (its own setting) |",
             "|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        spec = recipes.RECIPES[r.recipe]
        m = run_metrics(out, r)
        paper = recipes.PAPER.get(spec.paper)
        ref = f"{paper[1][col]}" if paper is not None and col is not None else "-"
        lines.append(
            f"| {spec.label} | **{format_pct(r.accuracy, r.ci95)}** ({r.evaluation}) | "
            f"{format_pct(r.acc_as_trained, r.ci95_as_trained)} | {format_pct(r.acc_plain_gd, r.ci95_plain_gd)} "
            f"| {format_num(m['s_per_iteration'], '.2f')} | {format_num(m['breakdown_rate'], '.0%')} | {ref} |")
    if several:
        lines += ["", "Accuracy: the mean over seeds, ± the 95% interval of that mean across "
                  "seeds; the adaptation columns are means over seeds.", ""]
        lines += seed_lines(by_seed, order)
    both = pd.concat([frame, variants]) if variants is not None else frame
    lines += ["", "## Targets", ""] + _target_lines(targets(both.drop_duplicates("recipe")))
    missed = diagnoses(both.drop_duplicates("recipe"), out)
    if missed:
        lines += ["", "Where a target is not reached, what the runs measured:", ""] + missed
    notes = [f"**{recipes.RECIPES[r].label}**: {recipes.RECIPES[r].note}" for r in order
             if recipes.RECIPES[r].note]
    lines += ["", "Recipes: " + "; ".join(notes) + "." if notes else "", "",
              "The paper's numbers come from the full Omniglot (1200 training characters), "
              "meta-batch 32 and tens of thousands of outer iterations on a GPU; these runs use "
              "the small archives (136 training characters, 106 held-out characters of other "
              "alphabets) and a few hundred iterations on a CPU, so levels are not comparable, "
              "only the ordering at equal iterations. The headline accuracy adapts as the "
              "recipe's evaluation says (as trained, or by plain GD for the official code's "
              "formulation); both are given, on the same held-out tasks. 'Tasks with a CG "
              "breakdown': the share of training tasks whose CG met p^T A p <= 0. The learning "
              "curves are in `reports/omniglot_curves.png`; the iMAML variants in "
              "`reports/imaml_variants.md`."]
    return "\n".join(lines) + "\n"


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe: its lowest seed's row (settings, provenance, run folder) with the
    accuracies averaged over its seeds, ``ci95`` the 95% t-interval of that mean across
    seeds, ``seed_sd`` the standard deviation across seeds and ``seeds`` their number."""
    frame = frame.sort_values("train_seed")
    g = frame.groupby("recipe", sort=False)
    out = g.first()
    for acc in ("accuracy", "acc_as_trained", "acc_plain_gd"):
        out[acc] = g[acc].mean()
    out["seeds"] = g.size()
    out["seed_sd"] = g.accuracy.std(ddof=1)
    out["ci95"] = [_t_half(sd, n) for sd, n in zip(out.seed_sd, out.seeds)]
    return out.reset_index()


def _t_half(sd: float, n: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else np.nan


def paired_difference(frame: pd.DataFrame, a: str, b: str) -> dict:
    """a minus b, paired by seed (the same initialisation and task stream) and by held-out
    task (every run is scored on the same tasks, so a seed's difference of mean accuracies
    is the mean of its task-wise differences; ``eval_tasks.csv`` keeps those): the mean over
    seeds with its 95% t-interval across seeds; ``resolved`` when the interval excludes 0."""
    acc = {r: frame[frame.recipe == r].set_index("train_seed").accuracy for r in (a, b)}
    d = (acc[a] - acc[b]).dropna().to_numpy()
    half = _t_half(float(d.std(ddof=1)), len(d)) if len(d) > 1 else np.nan
    mean = float(d.mean()) if len(d) else np.nan
    return {"a": a, "b": b, "mean": mean, "half": half, "seeds": len(d),
            "resolved": bool(len(d) > 1 and abs(mean) > half)}


def seed_lines(frame: pd.DataFrame, order: list[str]) -> list[str]:
    """The per-seed table and the orderings the seed spread resolves."""
    seeds = sorted(set(frame.train_seed))
    lines = ["## Across seeds", "",
             f"Seeds {', '.join(map(str, seeds))} (initialisation and task stream); each "
             "seed's accuracy with its 95% interval over the held-out tasks, then the mean "
             "over seeds and the standard deviation across them.", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd across seeds |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for recipe in order:
        mine = frame[frame.recipe == recipe].set_index("train_seed")
        cells = [format_pct(mine.loc[s, "accuracy"], mine.loc[s, "ci95"]) if s in mine.index else "-"
                 for s in seeds]
        lines.append(f"| {recipes.RECIPES[recipe].label} | " + " | ".join(cells) +
                     f" | {100 * mine.accuracy.mean():.1f} | {100 * mine.accuracy.std(ddof=1):.1f} |")
    means = frame.groupby("recipe").accuracy.mean().loc[order].sort_values(ascending=False)
    lines += ["", "Orderings, neighbours by mean accuracy (differences paired by seed and by "
              "held-out task; 95% t-interval across seeds):", ""]
    for a, b in zip(means.index[:-1], means.index[1:]):
        d = paired_difference(frame, a, b)
        verdict = (f"{a} above {b}" if d["resolved"] else
                   f"{a} and {b}: unresolved (the seed spread covers the difference)")
        lines.append(f"- {100 * d['mean']:+.1f} ± {100 * d['half']:.1f} points over "
                     f"{d['seeds']} seeds: {verdict}.")
    return lines


def choice_markdown(frame: pd.DataFrame, out: Path, tested: pd.DataFrame) -> str:
    """The default iMAML recipe chosen by the seed mean on validation characters (``frame``);
    then the chosen recipe's score on the held-out test characters (``tested``, where those
    runs exist), and whether the choice differs from ``recipes.DEFAULT_IMAML``."""
    means = seed_means(frame).set_index("recipe")
    order = list(means.accuracy.sort_values(ascending=False).index)
    chosen, default = order[0], recipes.DEFAULT_IMAML
    first = frame.iloc[0]
    lines = ["# The default iMAML recipe, chosen on validation characters", "",
             "Generated by `imaml-suite omniglot choose`.", "",
             f"Each candidate trains on the meta-training characters less "
             f"{first['heldout'].removeprefix('validation')} validation characters and is "
             "scored on tasks of those; the held-out test characters play no part. "
             + setting_line(frame), "",
             "| candidate | validation accuracy % (mean over seeds ± 95% across seeds) | seeds |",
             "|---|---|---|"]
    for r in order:
        lines.append(f"| {recipes.RECIPES[r].label} | {format_pct(means.loc[r, 'accuracy'], means.loc[r, 'ci95'])} "
                     f"| {int(means.loc[r, 'seeds'])} |")
    lines += [""] + seed_lines(frame, order)[-len(order) - 1:]
    runner_up = paired_difference(frame, chosen, order[1]) if len(order) > 1 else None
    lines += ["", f"**Chosen: {chosen}** (highest mean over seeds)" + (
        "" if runner_up is None or runner_up["resolved"] else
        f"; its lead over {order[1]} is within the seed spread, so the choice among them is "
        "a tie broken by the mean") + ". " + (
        f"The current default is {default}: set `recipes.DEFAULT_IMAML` to {chosen} and "
        "retrain Table 2's iMAML row." if chosen != default else
        "It is the default iMAML recipe (`recipes.DEFAULT_IMAML`, Table 2's iMAML row). "
        + ("Chosen on the held-out test tasks themselves, the default had been the same: the "
           "choice did not change." if chosen == recipes.HELDOUT_CHOICE else
           f"Chosen on the held-out test tasks themselves, the default had been "
           f"{recipes.HELDOUT_CHOICE}: the choice changed."))]
    if len(tested):
        test = seed_means(tested).set_index("recipe")
        if chosen in test.index:
            r = test.loc[chosen]
            if int(r.seeds) > 1:
                score = (f"{format_pct(r.accuracy, r.ci95)}% (mean over {int(r.seeds)} seeds ± 95% "
                         "across them)")
            else:   # one seed has no spread across seeds: its interval over the tasks
                one = tested[tested.recipe == chosen].iloc[0]
                score = (f"{format_pct(one.accuracy, one.ci95)}% at seed {int(one.train_seed)} (one "
                         "seed: the interval is over the held-out tasks, not across seeds)")
            lines += ["", f"Held-out test characters, after choosing: {chosen} scores {score} "
                      "(`reports/table2.md`, `reports/imaml_variants.md`)."]
    return "\n".join(lines) + "\n"
