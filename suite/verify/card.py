"""The report card: markdown (the verdict, the relative error to every reference at every
setting, the tolerances and why, the cost) and one figure (peak memory and time against K)."""
from __future__ import annotations

from pathlib import Path

SHOWN = ("maml", "fomaml", "implicit-at-phiK", "maml-fewer", "maml-no-prox", "truncated-1",
         "reptile", "no-adaptation")


def _cell(v):
    return "-" if v is None else f"{v:.1e}"


def markdown(report) -> str:
    lines = [f"# suite.verify: {report.name}", "",
             f"- claims: {report.claims or '(none: report what it matches)'}; form "
             f"{report.form}; loss {report.loss}",
             f"- **{report.verdict}**", ""]
    if report.diagnosis:
        lines += ["## Diagnosis", ""] + [f"- {d}" for d in report.diagnosis] + [""]
    keys = [k for k in SHOWN if any((k, "") in c.rel for c in report.calls)]
    lines += ["## Relative error to each reference", "",
              "| problem | setting | " + " | ".join(keys) + " |",
              "|---|---|" + "---|" * len(keys)]
    for c in report.calls:
        cells = [c.error or "" if c.grad is None else _cell(c.rel.get((k, ""))) for k in keys]
        if c.grad is None:
            cells = [f"failed: {c.error}"] + [""] * (len(keys) - 1)
        lines.append(f"| {c.problem} | {c.setting} | " + " | ".join(cells) + " |")
    lines += ["", report.tolerance_note, ""]
    if report.cost is not None:
        fits, rows = report.cost["fits"], report.cost["rows"]
        lines += ["## Cost against the inner steps K", "",
                  f"On the {report.cost['problem']} (lr 0.1, lam 5): {report.cost_note}.", "",
                  "| K | " + " | ".join(f"{n} peak KiB | {n} ms" for n in rows) + " |",
                  "|---|" + "---|---|" * len(rows)]
        for i, k in enumerate(rows["yours"]["steps"]):
            lines.append(f"| {k} | " + " | ".join(
                f"{r['peak_bytes'][i] / 1024:.1f} | {r['time_s'][i] * 1e3:.2f}"
                for r in rows.values()) + " |")
        lines += ["", "Per inner step: " + "; ".join(
            f"{n} {f['bytes_per_step'] / 1024:.1f} KiB, {f['s_per_step'] * 1e3:.2f} ms"
            for n, f in fits.items()) + "."]
    elif report.cost_note:
        lines += [report.cost_note]
    lines += ["", f"Judged in {report.seconds:.1f} s."]
    return "\n".join(lines) + "\n"


def write(report, folder: Path) -> list[Path]:
    """report.md, and report.png when the cost was measured."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "report.md"
    tmp = md.with_suffix(".tmp")
    tmp.write_text(markdown(report))
    tmp.replace(md)
    out = [md]
    if report.cost is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
        for name, r in report.cost["rows"].items():
            style = dict(marker="o", lw=2.2, color="k") if name == "yours" else dict(
                marker=".", lw=1.2, ls="--")
            ax_m.plot(r["steps"], [b / 1024 for b in r["peak_bytes"]], label=name, **style)
            ax_t.plot(r["steps"], [t * 1e3 for t in r["time_s"]], label=name, **style)
        ax_m.set_ylabel("peak live tensor memory [KiB]")
        ax_t.set_ylabel("time per meta-gradient [ms] (median)")
        for ax in (ax_m, ax_t):
            ax.set_xlabel("inner steps K")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{report.name} against the suite's methods on the "
                     f"{report.cost['problem']}\n{report.verdict[:110]}", fontsize=9)
        fig.tight_layout()
        png = folder / "report.png"
        fig.savefig(png, dpi=120)
        plt.close(fig)
        out.append(png)
    return out
