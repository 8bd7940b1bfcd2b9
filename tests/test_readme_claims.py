"""Every number the README and the documentation pages quote, read back from the committed
file it comes from.

Each claim is a regular expression whose groups capture the quoted numbers, and a function that
formats the same numbers from the results files; every place a claim's sentence appears (the
README's headline and the docs page may both state it) must agree with the file, and a sentence
that drifts from its file (or a file regenerated without updating the sentence) fails here.
"""
import pathlib
import re

import pandas as pd
import pytest

from suite.experiments import claims
from suite.experiments.omniglot import recipes

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = {path.relative_to(ROOT).as_posix(): path.read_text()
         for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
RESULTS = ROOT / "results"


def read_results(relative: str) -> pd.DataFrame:
    """The committed version of a results file (``git show HEAD:results/...``): the README
    quotes what is committed, and a user who reruns ``make figures`` before ``make test``
    rewrites the timing-dependent files in the working tree. Outside git, the file itself."""
    import io
    import subprocess
    try:
        text = subprocess.run(["git", "show", f"HEAD:results/{relative}"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return pd.read_csv(RESULTS / relative)
    return pd.read_csv(io.StringIO(text))


def sci(x: float) -> str:
    """One significant digit in scientific notation, as the README writes small errors: 4e-7."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def short(x: float) -> str:
    """Two significant digits for numbers near 1 (0.54, 0.12), one-digit scientific below 0.01."""
    return f"{x:.2g}" if x >= 0.01 else sci(x)


def fig2a():
    f = read_results("figure2a.csv")
    return f[f.status == "ok"]


def err(frame, n_train, method, K=None, cg=None):
    g = frame[(frame.n_train == n_train) & (frame.method == method)]
    if cg is not None:
        g = g[g.cg_steps == cg]
    return g if K is None else float(g[g.inner_steps == K].rel_error.iloc[0])


FULL, FEW, KMAX = 40, 4, 10000


def fig2b():
    f = read_results("figure2b.csv")
    return f[f.status == "ok"]


def slope(frame, method, column):
    return claims._slope(frame[frame.method == method].sort_values("inner_steps"), column)[0]


def peak_mib(frame, method, K):
    return frame[(frame.method == method) & (frame.inner_steps == K)].peak_bytes.iloc[0] / 2**20


def mib_range(frame, method):
    g = frame[frame.method == method].peak_bytes / 2**20
    return f"{g.min():.1f}" if f"{g.min():.1f}" == f"{g.max():.1f}" else None


def range2(series):
    low, high = f"{series.min():.2g}", f"{series.max():.2g}"
    return low if low == high else f"{low} to {high}"


def gpu_maml16():
    g = read_results("gpu/cost_cnn_20w5s_h200.csv")
    return g[(g.method == "maml") & (g.inner_steps == 16) & (g.status == "ok")].iloc[0]


def omniglot_rows():
    f = read_results("omniglot/runs.csv")
    specs = {n: r.signature() for n, r in recipes.RECIPES.items()}
    f = f[(f.recipe_spec == f.recipe.map(specs)) & (f.train_seed == 0) & (f.heldout == "test")]
    return f.set_index("recipe")   # the README's tables quote seed 0 on the test characters


def pct(acc, ci):
    return f"{100 * acc:.1f} ± {100 * ci:.1f}"


CLAIMS = {
    "figure 2a, converged MAML and iMAML": (
        r"At K = 10\^4, MAML reaches (\S+)\s+\(full rank\) and (\S+) \(few-shot\); iMAML with 50 CG "
        r"steps (\S+) and\s+(\S+)\.",
        lambda: [sci(err(fig2a(), n, m, KMAX, cg)) for m, cg, n in
                 (("maml", None, FULL), ("maml", None, FEW), ("imaml", 50, FULL),
                  ("imaml", 50, FEW))]),
    "figure 2a, CG steps on a clustered spectrum": (
        r"distinct eigenvalues\) 5 CG steps leave (\S+) and 2 steps (\S+) at K = 10\^4",
        lambda: [short(err(fig2a(), FEW, "imaml", KMAX, c)) for c in (5, 2)]),
    "figure 2a, CG steps on a spread spectrum": (
        r"5 CG steps leave (\S+) and 20 steps\s+(\S+);",
        lambda: [short(err(fig2a(), FULL, "imaml", KMAX, c)) for c in (5, 20)]),
    "figure 2a, FOMAML's bias": (
        r"FOMAML's error is its bias\*\*: (.+?) in the full-rank panel and\s+(.+?) in the few-shot",
        lambda: [range2(err(fig2a(), n, "fomaml").rel_error) for n in (FULL, FEW)]),
    "figure 2a, truncated beyond K = 10": (
        r"stays near 1 beyond \((.+?) full rank, (.+?) few-shot\)",
        lambda: [range2(err(fig2a(), n, "truncated").query("inner_steps > 10").rel_error)
                 for n in (FULL, FEW)]),
    "figure 2b, MAML memory": (
        r"\*\*: (\S+) MiB per inner step, from\s+(\S+) MiB at 1 step to (\S+) MiB at 16",
        lambda: [f"{slope(fig2b(), 'maml', 'peak_bytes') / 2**20:.1f}",
                 f"{peak_mib(fig2b(), 'maml', 1):.1f}", f"{peak_mib(fig2b(), 'maml', 16):.1f}"]),
    "figure 2b, flat memory": (
        r"iMAML memory is flat: holds\*\*: (\S+) MiB at every K; FOMAML's too \((\S+) MiB\)",
        lambda: [mib_range(fig2b(), "imaml"), mib_range(fig2b(), "fomaml")]),
    "figure 2b, MAML time per step": (
        r"\((\S+)x FOMAML's time per step\)",
        lambda: [f"{slope(fig2b(), 'maml', 'time_s') / slope(fig2b(), 'fomaml', 'time_s'):.1f}"]),
    "figure 2b, iMAML's slope": (
        r"iMAML's slope read (\S+) ms against FOMAML's (\S+) ms per step",
        lambda: [f"{slope(fig2b(), m, 'time_s') * 1e3:.0f}" for m in ("imaml", "fomaml")]),
    "the frontier": (
        r"at K = 16 its peak is (\S+) MiB, (\S+) of backprop's (\S+) MiB.*?iMAML's (\S+) MiB plus "
        r"the 16 iterates of (\S+) MiB\), and it grows by (\S+) parameter vectors.*?one step's "
        r"graph \((\S+) MiB\).*?not met: (\S+)x at K = 16.*?it took (\S+) s more than backprop "
        r"at K = 16, where FOMAML's whole\s+meta-gradient takes (\S+) s \(at K = 64: (\S+) s "
        r"more, FOMAML (\S+) s\).*?peak (\S+) of backprop's at K = 16 \(target ≤ 1/2\) and (\S+) "
        r"at K = 64\s+\(target ≤ 1/4\), in (\S+)x and (\S+)x its time.*?backprop's peak passes "
        r"iMAML's from K = (\d+) and is (\S+)x\s+iMAML's at K = 64; checkpointing passes it from "
        r"K = (\d+) \((\S+)x at K = 64\); mixed mode from K = (\d+),\s+and at K = 64 it needs "
        r"only (\S+)x iMAML's memory.*?mixed mode takes (\S+)x iMAML's time\s+at K = 64.*?its "
        r"peak for a meta-batch of 16 is (\S+)x",
        lambda: frontier_numbers()),
    "figure 2b, 12 GB": (
        r"for one task at 16 steps is\s+(\S+) MB \(`results/gpu/cost_cnn_20w5s_h200.csv`, with "
        r"`nn.BatchNorm2d`, CUDA's default; live\s+tensor bytes (\S+) MB, the same on the CPU "
        r"with that BatchNorm\).*?by B ≈ (\S+) tasks",
        lambda: [f"{gpu_maml16().cuda_peak_bytes / 1e6:.0f}", f"{gpu_maml16().peak_bytes / 1e6:.0f}",
                 f"{12e9 / gpu_maml16().cuda_peak_bytes:.0f}"]),
    "figure 2b, truncated with k = K": (
        r"timed together\s+with it, interleaved, it takes (\S+) to (\S+) of MAML's time",
        lambda: truncated_over_maml()),
    "curvature products": (
        r"the reverse product costs (\S+)\s+gradients, the forward one (\S+), a Gauss-Newton "
        r"product (\S+):.*?Its reverse product costs (\S+)\s+gradients of the native model and "
        r"(\S+) of its own.*?but reads (\S+) native ones.*?(\S+) of the native product's time; "
        r"iMAML at K = 16, C = 5 takes (\S+) of its\s+ideal and (\S+) of its time.*?read (\S+) "
        r"native gradients \((\S+) of its own\) against the\s+native product's (\S+):.*?"
        r"iMAML's peak is (\S+) MiB \(`results/figure2b.csv`\) against\s+(\S+) with.*?the "
        r"closed form's gradient costs (\S+) native ones.*?its iMAML takes (\S+)x the native "
        r"model's time.*?the reverse product costs (\S+) gradients there and the\s+forward one "
        r"(\S+),.*?on\s+5-way 1-shot tasks.*?the native product costs only (\S+) gradients.*?"
        r"the closed form's iMAML takes (\S+)x the native model's time.*?its product costs "
        r"(\S+)\s+gradients and its gradient (\S+)\.",
        lambda: hvp_costs()),
    "table 1, the headline": (
        r"the exponent of κ in compute\s+is (\S+) for MAML with GD, (\S+) with Nesterov AGD and (\S+) "
        r"for iMAML \(theory (\S+), (\S+), (\S+)\); in\s+graph memory (\S+) for MAML and (\S+) for "
        r"iMAML \(theory (\S+) and (\S+)\)",
        lambda: table1_headline()),
    "the frontier, the headline": (
        r"at K = 64 mixed-mode MAML needs\s+(\S+)x iMAML's memory where backprop needs (\S+)x",
        lambda: frontier_headline()),
    "omniglot over seeds, the headline": (
        (r"over (\d) seeds \(`results/omniglot/runs.csv`\): MAML (\S+ ± \S+), iMAML "
         r"\(Gauss-Newton, λ learned per layer\) (\S+ ± \S+), first-order MAML (\S+ ± \S+) "
         r"\(mean ± 95% across seeds\); paired by seed, MAML − iMAML is (\S+) ± (\S+) points "
         r"\((\w+)\) and iMAML − first-order MAML (\S+) ± (\S+) \((\w+)\)"
         ).replace(" ", r"\s+"),
        lambda: omniglot_headline()),
    "the iMAML choice on validation characters": (
        (r"learned λ per layer leads \((\S+)\) before λ fixed at 0.5 \((\S+)\) and the paper's "
         r"Hessian at λ = 0.5 \((\S+)\), but every difference is inside the seed spread "
         r"\((\S+) ± (\S+) points for the first two").replace(" ", r"\s+"),
        lambda: choice_numbers()),
    "the chosen iMAML recipe on the test characters": (
        r"After\s+choosing, its held-out score over the 3 seeds is (\S+ ± \S+) \(λ fixed at "
        r"0.5: (\S+ ± \S+) on\s+the same tasks and seeds\)",
        lambda: chosen_on_test()),
    "learned lambda": (
        r"\*\*Learned vector λ against the best scalar λ\*\*: (\S+) against (\S+)\s+\((.+?)\), "
        r"(\S+)% lower.*?gives (\S+), so the learned vector closes (\S+)% of the gap.*?"
        r"Spearman correlation with 1/s² is (\S+) ",
        lambda: learned_lam()),
}


def frontier_numbers():
    import json
    f = read_results("frontier.csv")
    c = f[(f.workload == "cnn") & (f.status == "ok")]
    peak = c.pivot_table(index="inner_steps", columns="method", values="peak_bytes") / 2**20
    t = c.pivot_table(index="inner_steps", columns="method", values="time_s")
    vector = c.n_params.iloc[0] * 4 / 2**20
    first = lambda m: str(next(k for k in peak.index if peak.loc[k, m] > peak.loc[k, "imaml"]))  # noqa
    gate = json.loads((ROOT / "results" / "baselines" / "regress.json").read_text())["metrics"]
    return [f"{peak.loc[16, 'maml-mixed']:.1f}", f"{peak.loc[16, 'maml-mixed'] / peak.loc[16, 'maml']:.3f}",
            f"{peak.loc[16, 'maml']:.1f}", f"{peak.loc[16, 'imaml']:.1f}", f"{vector:.2f}",
            f"{slope(c, 'maml-mixed', 'peak_bytes') / 2**20 / vector:.2f}",
            f"{slope(c, 'maml', 'peak_bytes') / 2**20:.1f}",
            f"{t.loc[16, 'maml-mixed'] / t.loc[16, 'maml']:.2f}",
            f"{t.loc[16, 'maml-mixed'] - t.loc[16, 'maml']:.2f}", f"{t.loc[16, 'fomaml']:.2f}",
            f"{t.loc[64, 'maml-mixed'] - t.loc[64, 'maml']:.2f}", f"{t.loc[64, 'fomaml']:.2f}",
            f"{peak.loc[16, 'maml-checkpoint'] / peak.loc[16, 'maml']:.3f}",
            f"{peak.loc[64, 'maml-checkpoint'] / peak.loc[64, 'maml']:.3f}",
            f"{t.loc[16, 'maml-checkpoint'] / t.loc[16, 'maml']:.2f}",
            f"{t.loc[64, 'maml-checkpoint'] / t.loc[64, 'maml']:.2f}",
            first("maml"), f"{peak.loc[64, 'maml'] / peak.loc[64, 'imaml']:.1f}",
            first("maml-checkpoint"), f"{peak.loc[64, 'maml-checkpoint'] / peak.loc[64, 'imaml']:.2f}",
            first("maml-mixed"), f"{peak.loc[64, 'maml-mixed'] / peak.loc[64, 'imaml']:.2f}",
            f"{t.loc[64, 'maml-mixed'] / t.loc[64, 'imaml']:.2f}",
            f"{gate['cnn20w5s/batched16/maml-mixed/peak_over_one_task']['value']:.1f}"]


def table1_headline():
    fits = {f["spec"].label: f for f in claims._fits(read_results("table1.csv"))}
    gd, agd, imaml = (fits[k] for k in ("MAML (GD + full back-prop)",
                                         "MAML (Nesterov AGD + full back-prop)",
                                         "Implicit MAML (AGD inner solve + CG)"))
    memory = lambda f: f"{f['memory_exp']:.2f}".replace("-0.00", "0.00")  # noqa: E731
    return ([f"{f['compute_exp']:.2f}" for f in (gd, agd, imaml)]
            + [f"{f['spec'].compute_exponent:g}" for f in (gd, agd, imaml)]
            + [memory(gd), memory(imaml)]
            + [f"{f['spec'].memory_exponent:g}" for f in (gd, imaml)])


def frontier_headline():
    f = read_results("frontier.csv")
    c = f[(f.workload == "cnn") & (f.status == "ok")]
    peak = c.pivot_table(index="inner_steps", columns="method", values="peak_bytes")
    return [f"{peak.loc[64, 'maml-mixed'] / peak.loc[64, 'imaml']:.2f}",
            f"{peak.loc[64, 'maml'] / peak.loc[64, 'imaml']:.1f}"]


def omniglot_headline():
    from suite.experiments.omniglot import recipes, report
    frame = table2_over_seeds()
    means = report.seed_means(frame).set_index("recipe")
    imaml = recipes.DEFAULT_IMAML
    values = [str(int(means.seeds.min()))] + [pct(means.loc[r, "accuracy"], means.loc[r, "ci95"])
                                              for r in ("maml", imaml, "fomaml")]
    for a, b in (("maml", imaml), (imaml, "fomaml")):
        d = report.paired_difference(frame, a, b)
        values += [f"{100 * d['mean']:+.1f}", f"{100 * d['half']:.1f}",
                   "resolved" if d["resolved"] else "unresolved"]
    return values


def choice_numbers():
    from suite.experiments.omniglot import report
    f = read_results("omniglot/runs.csv")
    f = f[f.heldout == "validation20"]
    means = report.seed_means(f).set_index("recipe").accuracy.sort_values(ascending=False)
    d = report.paired_difference(f, means.index[0], means.index[1])
    return [f"{100 * means[r]:.1f}" for r in means.index] + [
        f"{100 * d['mean']:+.1f}", f"{100 * d['half']:.1f}"]


def chosen_on_test():
    from suite.experiments.omniglot import report
    f = read_results("omniglot/runs.csv")
    specs = {n: r.signature() for n, r in recipes.RECIPES.items()}
    f = f[(f.recipe_spec == f.recipe.map(specs)) & (f.heldout == "test")]
    means = report.seed_means(f).set_index("recipe")
    return [pct(means.loc[r, "accuracy"], means.loc[r, "ci95"])
            for r in (recipes.DEFAULT_IMAML, recipes.HELDOUT_CHOICE)]


def truncated_over_maml():
    f = fig2b().pivot_table(index="inner_steps", columns="method", values="time_s")
    ratio = (f.truncated / f.maml)[f.index <= 4]
    return [f"{ratio.min():.2f}", f"{ratio.max():.2f}"]


def hvp_costs():
    h = read_results("hvp_cost_cpu.csv").set_index(["batchnorm", "what"])
    rerun = read_results("hvp_cost_cpu_rerun.csv").set_index(["batchnorm", "what"])
    gpu = read_results("gpu/hvp_cost_h200_rerun.csv").set_index(["batchnorm", "what"])
    small = read_results("hvp_cost_cpu_5w1s.csv").set_index(["batchnorm", "what"])
    cost = lambda f, bn, what, d=1, unit="in_native_gradients": f"{f.loc[(bn, what), unit]:.{d}f}"  # noqa
    ratio = lambda f, what: f.loc[("closed-form", what), "seconds"] / f.loc[("native", what),
                                                                          "seconds"]  # noqa
    peak = lambda name: read_results(name).query(  # noqa: E731
        "method == 'imaml' and inner_steps == 16").peak_bytes.iloc[0] / 2**20
    return [cost(h, "native", "reverse HVP"), cost(h, "native", "forward HVP"),
            cost(h, "native", "Gauss-Newton product"), cost(h, "closed-form", "reverse HVP", 2),
            cost(h, "closed-form", "reverse HVP", 2, "in_own_gradients"),
            cost(h, "closed-form", "gradient", 2), f"{ratio(h, 'reverse HVP'):.2f}",
            f"{h.loc[('closed-form', 'imaml / fomaml (K=16, C=5)'), 'over_ideal']:.2f}",
            f"{ratio(h, 'imaml'):.2f}", cost(rerun, "closed-form", "reverse HVP", 2),
            cost(rerun, "closed-form", "reverse HVP", 2, "in_own_gradients"),
            cost(rerun, "native", "reverse HVP", 2),
            f"{peak('figure2b.csv'):.1f}", f"{peak('gpu/cost_cnn_20w5s_h200_final.csv'):.1f}", cost(gpu, "closed-form", "gradient", 2),
            f"{ratio(gpu, 'imaml'):.2f}", cost(gpu, "native", "reverse HVP"),
            cost(gpu, "native", "forward HVP"), cost(small, "native", "reverse HVP"),
            f"{ratio(small, 'imaml'):.2f}", cost(h, "primitive", "reverse HVP"),
            cost(h, "primitive", "gradient")]


def learned_lam():
    from suite.experiments import lam
    s = lam.summary(read_results("learned_lam.csv"))
    return [f"{s['vector_loss']:.4f}", f"{s['best_scalar_loss']:.4f}",
            s["best_scalar"].replace("scalar lam", "λ ="), f"{100 * s['gain']:.0f}",
            f"{s['bayes_loss']:.4f}", f"{100 * s['gap_closed']:.0f}", f"{s['spearman']:.2f}"]


@pytest.mark.parametrize("name", list(CLAIMS))
def test_quoted_numbers_match_their_file(name):
    pattern, values = CLAIMS[name]
    found = [(page, m) for page, text in PAGES.items() for m in re.finditer(pattern, text, re.S)]
    assert found, f"{name}: the sentence is gone from the README and the docs ({pattern})"
    want = values()
    for page, m in found:
        assert list(m.groups()) == want, f"{name} in {page}"


def test_table1_rows_match_the_file():
    fits = {f["spec"].label: f for f in claims._fits(read_results("table1.csv"))}
    rows = re.findall(r"^\| (.+?) \| ([-\d.]+) \((\S+)\) \| ([-\d.]+) \((\S+)\) \|$",
                      PAGES["docs/figures.md"], re.M)
    assert len(rows) == len(fits)
    for label, c, ct, m, mt in rows:
        f = fits[label]
        assert (c, ct, m, mt) == (f"{f['compute_exp']:.2f}", f"{f['spec'].compute_exponent:g}",
                                  f"{f['memory_exp']:.2f}".replace("-0.00", "0.00"),
                                  f"{f['spec'].memory_exponent:g}"), label


def test_omniglot_table_matches_runs():
    """The variants table of docs/omniglot.md: every recipe at seed 0."""
    runs = omniglot_rows()
    rows = re.findall(r"^\| `([\w.-]+)` \| ([\d.]+ ± [\d.]+) \| ([\d.]+ ± [\d.]+) \| (\d+) \|",
                      PAGES["docs/omniglot.md"], re.M)
    assert rows, "the Omniglot table is gone from docs/omniglot.md"
    for recipe, as_trained, plain, iterations in rows:
        r = runs.loc[recipe]
        assert as_trained == pct(r.acc_as_trained, r.ci95_as_trained), recipe
        assert plain == pct(r.acc_plain_gd, r.ci95_plain_gd), recipe
        assert int(iterations) == int(r.iterations), recipe


def table2_over_seeds():
    """Table 2's recipes on the test characters, one row per recipe and seed (current specs)."""
    f = read_results("omniglot/runs.csv")
    specs = {n: r.signature() for n, r in recipes.RECIPES.items()}
    return f[(f.recipe_spec == f.recipe.map(specs)) & (f.heldout == "test")
             & f.recipe.isin(recipes.TABLE2_RECIPES)]


def test_omniglot_seed_table_matches_runs():
    """Table 2 over seeds in docs/omniglot.md: the mean ± 95% across seeds, the sd across seeds
    and each seed's accuracy, from report.seed_means over runs.csv."""
    from suite.experiments.omniglot import report
    frame = table2_over_seeds()
    means = report.seed_means(frame).set_index("recipe")
    rows = re.findall(r"^\| `([\w.-]+)` \| ([\d.]+ ± [\d.]+) \| ([\d.]+) \| ((?:[\d.]+ \| )+)",
                      PAGES["docs/omniglot.md"], re.M)
    assert {r[0] for r in rows} == set(recipes.TABLE2_RECIPES)
    seeds = sorted(set(frame.train_seed))
    assert len(seeds) >= 3
    for recipe, mean, sd, per_seed in rows:
        m = means.loc[recipe]
        assert mean == pct(m.accuracy, m.ci95) and sd == f"{100 * m.seed_sd:.1f}", recipe
        mine = frame[frame.recipe == recipe].set_index("train_seed").accuracy
        assert per_seed.split(" | ")[:-1] == [f"{100 * mine[s]:.1f}" for s in seeds], recipe


def test_omniglot_orderings_match_runs():
    """Each ordering docs/omniglot.md states between neighbours over seeds: the paired
    difference and its interval from report.paired_difference, resolved as the page says."""
    from suite.experiments.omniglot import report
    frame = table2_over_seeds()
    lines = re.findall(r"^- `([\w.-]+)` − `([\w.-]+)`: (\S+) ± (\S+) points: (.*)$",
                       PAGES["docs/omniglot.md"], re.M)
    means = report.seed_means(frame).set_index("recipe").accuracy.sort_values(ascending=False)
    assert [(a, b) for a, b, *_ in lines] == list(zip(means.index[:-1], means.index[1:]))
    for a, b, mean, half, verdict in lines:
        d = report.paired_difference(frame, a, b)
        assert (mean, half) == (f"{100 * d['mean']:+.1f}", f"{100 * d['half']:.1f}"), (a, b)
        assert verdict == (f"**{a} above {b}**" if d["resolved"] else
                           "unresolved (the seed spread covers the difference)"), (a, b)
