"""Side by side with peer libraries: higher (unrolled MAML) and torchopt (implicit gradients).

    imaml-suite peers --steps 5 15 25 --meta-batch 16      # writes results/peers.csv, reports/peers.md
    imaml-suite peers --device cuda --out results/gpu/peers.csv --report reports/peers_gpu.md

Needs the optional extra: ``pip install -c constraints.txt -e '.[peers]'`` (higher 0.2.1,
torchopt 0.7.3). learn2learn 0.2.0 does not build on Python 3.11 and is not compared.

The peer implementations below use each library as its documentation shows; they compute
the same quantities as ``suite.meta_gradient`` (agreement is tested in float64) so that
time and memory can be compared on equal work, measured in one run and reported as ratios,
with a verdict on each target (task batching: 2x the loop's throughput and half
the peer's time at meta-batch 16; per task: no slower than higher).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch.func import functional_call, grad

from suite.harness import cli, commands
from suite.core.batched import BatchedTasks, batched_meta_gradient
from suite.harness.cli import HelpFormatter, check_device, cli_range
from suite.harness.measure import measure_memory, time_calls
from suite.core.methods import meta_gradient_batch
from suite.core.registry import get_method
from suite.harness.results import ResultsStore, provenance
from suite.core.solvers import GD
from suite.harness.workloads import cnn_tasks

ROOT = Path(__file__).resolve().parents[2]


def require_peers():
    try:
        import higher  # noqa: F401
        import torchopt  # noqa: F401
    except ImportError as err:
        raise cli.UsageError(f"{err.name} is not installed: pip install -c constraints.txt -e "
                         "'.[peers]'") from None


def higher_maml(tasks, theta, *, steps: int, lr: float) -> torch.Tensor:
    """Mean MAML meta-gradient (lam = 0, SGD inner loop) with higher.innerloop_ctx."""
    import higher
    model = tasks[0].module
    torch.nn.utils.vector_to_parameters(theta.detach().clone(), model.parameters())
    for p in model.parameters():
        p.grad = None
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for task in tasks:
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False,
                                  track_higher_grads=True) as (fmodel, diffopt):
            x, y = task.support
            for _ in range(steps):
                diffopt.step(task.loss(fmodel(x), y))
            xq, yq = task.query
            (task.loss(fmodel(xq), yq) / len(tasks)).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def torchopt_root(f, *, lam: float, steps: int, lr: float, cg_steps: int, rtol: float):
    """torchopt's implicit differentiation around GD on G = f + lam/2 |phi - th|^2:
    ``solve(phi0, th, x, y) -> phi`` by ``steps`` of GD, differentiable in ``th`` through
    torchopt.diff.implicit.custom_root (optimality grad G = 0) and its CG solve."""
    import torchopt

    def optimality(phi, th, x, y):
        return grad(f)(phi, x, y) + lam * (phi - th)

    @torchopt.diff.implicit.custom_root(
        optimality, argnums=1,
        solve=torchopt.linear_solve.solve_cg(maxiter=cg_steps, rtol=rtol))
    def solve(phi0, th, x, y):
        phi, th = phi0.detach(), th.detach()
        for _ in range(steps):
            phi = phi - lr * (grad(f)(phi, x, y) + lam * (phi - th))
        return phi
    return solve


@contextlib.contextmanager
def quiet_torchopt():
    """torchopt 0.7.3 calls the deprecated functorch.vjp: its warnings, silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        yield


def torchopt_imaml(tasks, theta, *, lam: float, steps: int, lr: float, cg_steps: int,
                   rtol: float = 1e-5) -> torch.Tensor:
    """Mean iMAML meta-gradient with torchopt.diff.implicit.custom_root and its CG solve
    (GD inner loop on G, optimality grad G = 0)."""
    model, layout = tasks[0].module, tasks[0]

    def loss(phi, x, y):
        return layout.loss(functional_call(model, layout.unflatten(phi), (x,)), y)

    solve = torchopt_root(loss, lam=lam, steps=steps, lr=lr, cg_steps=cg_steps, rtol=rtol)
    th = theta.detach().clone().requires_grad_(True)
    with quiet_torchopt():
        for task in tasks:
            phi = solve(th.detach().clone(), th, *task.support)
            (loss(phi, *task.query) / len(tasks)).backward()
    return th.grad


# The peer implementation of each method compared: (library, its function).
PEERS = {"maml": ("higher", lambda tasks, theta, *, steps, lr, lam, cg_steps:
                  higher_maml(tasks, theta, steps=steps, lr=lr)),
         "imaml": ("torchopt", lambda tasks, theta, *, steps, lr, lam, cg_steps:
                   torchopt_imaml(tasks, theta, lam=lam, steps=steps, lr=lr, cg_steps=cg_steps))}
BATCHED_ONLY = ("fomaml",)   # compared only in the meta-batch settings (no peer)


def method_lam(method: str, lam: float) -> float:
    """The methods that need lam > 0 run at ``lam``; the others as plain MAML (lam 0)."""
    return lam if get_method(method).needs_positive_lam else 0.0


def _options(method: str, cg_steps: int) -> dict:
    return {o.name: cg_steps for o in get_method(method).options if o.axis == "cg_steps"}


def contenders(tasks, theta, *, steps, lr, lam, cg_steps, batched: bool):
    """{name: zero-argument function} of the implementations compared at one setting: ours
    and the peer's for each method of ``PEERS``; with a meta-batch also ``BATCHED_ONLY``,
    and the vmap form of each method that has one (``Method.batched``)."""
    gd = GD(steps, lr)
    methods = list(PEERS) + (list(BATCHED_ONLY) if batched else [])
    out = {}
    for m in methods:
        kw = dict(lam=method_lam(m, lam), **_options(m, cg_steps))
        out[f"ours/{m}"] = (lambda m=m, kw=kw: meta_gradient_batch(m, tasks, theta, solver=gd,
                                                                   **kw).grad)
        if m in PEERS:
            library, fn = PEERS[m]
            out[f"{library}/{m}"] = (lambda fn=fn: fn(tasks, theta, steps=steps, lr=lr, lam=lam,
                                                      cg_steps=cg_steps))
    if batched:
        bt = BatchedTasks.stack(tasks)
        for m in methods:
            if get_method(m).batched is not None:
                kw = dict(lam=method_lam(m, lam), **_options(m, cg_steps))
                out[f"ours-vmap/{m}"] = (lambda m=m, kw=kw: batched_meta_gradient(
                    m, bt, theta, steps=steps, lr=lr, **kw).grad)
    return out


KEY = ["impl", "method", "inner_steps", "meta_batch", "n_way", "k_shot", "lam", "cg_steps",
       "device"]


def run(steps_list, batch_steps, meta_batch, *, n_way=20, k_shot=5, lr=0.1, lam=10.0,
        cg_steps=5, repeats=2, threads=None, device="cpu", out=None,
        progress=True) -> pd.DataFrame:
    """Measure every contender at each (inner steps, meta-batch) of the plan; with ``out``,
    rows are written after each setting and a setting already there is skipped (resume).
    The contenders of one setting are always measured together, in one interleaved run."""
    store = ResultsStore(out, KEY, ["time_s", "peak_bytes"]) if out is not None else None
    rows = []
    plan = [(s, 1) for s in steps_list] + [(s, meta_batch) for s in batch_steps]
    for i, (steps, batch) in enumerate(plan):
        tasks, theta = cnn_tasks(n_way=n_way, k_shot=k_shot, n_tasks=batch, seed=0,
                                 device=device)
        fns = contenders(tasks, theta, steps=steps, lr=lr, lam=lam, cg_steps=cg_steps,
                         batched=batch > 1)

        def key(name):
            impl, method = name.split("/")
            return dict(impl=impl, method=method, inner_steps=steps, meta_batch=batch,
                        n_way=n_way, k_shot=k_shot, lam=method_lam(method, lam),
                        cg_steps=cg_steps if _options(method, cg_steps) else None,
                        device=str(torch.device(device)))
        if store is not None and all(store.done(key(name)) for name in fns):
            if progress:
                print(f"[{i + 1}/{len(plan)}] steps {steps}, meta-batch {batch}: already in "
                      f"{out}", file=sys.stderr)
            continue
        # The memory pass also runs each function once before it is timed (first-call costs).
        memory = {name: measure_memory(fn, device, track_graph=False)
                  for name, fn in fns.items()}
        times = time_calls(fns, repeats=repeats, threads=threads, warmup=0)
        for name, t in times.items():
            row = dict(key(name), time_s=t.median_s, time_iqr_s=t.iqr_s,
                       peak_bytes=memory[name].peak_bytes,
                       cuda_peak_bytes=memory[name].cuda_peak_bytes, repeats=repeats,
                       **provenance(device=device, dtype="float32", threads=t.threads, seed=0),
                       status="ok")
            rows.append(row)
            if store is not None:
                store.add(row)
        if progress:
            print(f"[{i + 1}/{len(plan)}] steps {steps}, meta-batch {batch}: " + ", ".join(
                f"{n} {t.median_s:.2f}s" for n, t in times.items()), file=sys.stderr)
    if store is None:
        return pd.DataFrame(rows)
    frame = store.read()
    wanted = pd.Series(list(zip(frame.inner_steps, frame.meta_batch))).isin(plan).to_numpy()
    return frame[wanted & (frame.n_way == n_way) & (frame.k_shot == k_shot)
                 & (frame.device == str(torch.device(device)))].reset_index(drop=True)


def _ratio(frame, ours, peer, method, col="time_s"):
    """Ratio of ``col`` between two implementations of ``method``, by (inner_steps,
    meta_batch); empty where either was not measured."""
    sub = frame[frame.method == method].set_index(["inner_steps", "meta_batch", "impl"])[col]
    impls = sub.index.get_level_values("impl")
    if ours not in impls or peer not in impls:
        return pd.Series(dtype=float)
    return (sub.xs(ours, level="impl") / sub.xs(peer, level="impl")).dropna()


def _noise(frame, impls, method):
    """Largest relative IQR of the timings of ``impls`` for ``method``: ratios closer to a
    target than this are not told apart from it."""
    sub = frame[(frame.method == method) & frame.impl.isin(impls)]
    return float((sub.time_iqr_s / sub.time_s).max())


def targets(frame: pd.DataFrame) -> list[tuple[str, float, str]]:
    """The targets as (what, measured ratio, verdict); a verdict is 'reached',
    'within timing noise' or 'not reached'."""
    def verdict(value, bound, noise):
        return ("reached" if value <= bound else
                "within timing noise" if value <= bound * (1 + noise) else "not reached")
    out = []
    for key, r in _ratio(frame, "ours", "higher", "maml").items():
        if key[1] == 1:
            out.append((f"MAML per task, {key[0]} steps: ours / higher time <= 1", r,
                        verdict(r, 1.0, _noise(frame, ["ours", "higher"], "maml"))))
    for method in ("maml", "fomaml", "imaml"):
        for key, r in _ratio(frame, "ours-vmap", "ours", method).items():
            out.append((f"{method.upper()} meta-batch {key[1]}, {key[0]} steps: vmap throughput "
                        f">= 2x the loop (time ratio <= 0.5)", r,
                        verdict(r, 0.5, _noise(frame, ["ours-vmap", "ours"], method))))
    for method, peer in (("maml", "higher"), ("imaml", "torchopt")):
        for key, r in _ratio(frame, "ours-vmap", peer, method).items():
            out.append((f"{method.upper()} meta-batch {key[1]}, {key[0]} steps: vmap / {peer} "
                        f"time <= 0.5", r,
                        verdict(r, 0.5, _noise(frame, ["ours-vmap", peer], method))))
    return out


def report(frame: pd.DataFrame, source: str = "results/peers.csv") -> str:
    first = frame.iloc[0]
    imaml = frame[frame.method == "imaml"]
    lines = ["# Side by side with higher and torchopt", "",
             f"4-layer CNN, {int(first['n_way'])}-way {int(first['k_shot'])}-shot, float32 on "
             f"{first['device']} ({first['device_name']}, {int(first['threads'])} threads), "
             f"torch {first['torch_version']}, commit {first['git_commit']}; median of "
             f"{int(first['repeats'])} interleaved timings. Ratios < 1 mean ours is faster or "
             "smaller; memory is the peak of live tensor bytes (device-independent). MAML: "
             f"lam = 0, inner SGD; iMAML: lam = {imaml.lam.iloc[0]:g}, "
             f"{int(imaml.cg_steps.iloc[0])} CG steps.", "",
             "| inner steps | meta-batch | ours / higher MAML: time, memory | "
             "ours / torchopt iMAML: time, memory |", "|---|---|---|---|"]
    mt, mm = _ratio(frame, "ours", "higher", "maml"), _ratio(frame, "ours", "higher", "maml",
                                                             "peak_bytes")
    it, im = (_ratio(frame, "ours", "torchopt", "imaml"),
              _ratio(frame, "ours", "torchopt", "imaml", "peak_bytes"))
    def pair(time, memory, key):
        return f"{time[key]:.2f}, {memory[key]:.2f}" if key in time.index else "not measured"
    for key in mt.index.union(it.index):
        lines.append(f"| {key[0]} | {key[1]} | {pair(mt, mm, key)} | {pair(it, im, key)} |")
    if (frame.impl == "ours-vmap").any():
        lines += ["", "Task-batched (torch.func.vmap over the meta-batch) against the per-task "
                  "loop and the peers, same tasks:", "",
                  "| method | inner steps | meta-batch | vmap / our loop: time (throughput x) | "
                  "vmap / peer: time | vmap / our loop: memory |", "|---|---|---|---|---|---|"]
        for method, peer in (("maml", "higher"), ("fomaml", None), ("imaml", "torchopt")):
            v = _ratio(frame, "ours-vmap", "ours", method)
            m = _ratio(frame, "ours-vmap", "ours", method, "peak_bytes")
            p = _ratio(frame, "ours-vmap", peer, method) if peer else None
            for key in v.index:
                vs_peer = f"{p[key]:.2f} ({peer})" if p is not None else "no peer"
                lines.append(f"| {method} | {key[0]} | {key[1]} | {v[key]:.2f} "
                             f"({1 / v[key]:.1f}x) | {vs_peer} | {m[key]:.2f} |")
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {what} | {value:.2f} | {verdict} |" for what, value, verdict in targets(frame)]
    lines += ["", "'within timing noise': above the bound by less than the largest relative "
              "interquartile range of the two timings.", "", f"Raw rows: `{source}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = cli.Parser(prog=commands.prog("peers"), description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 15, 25],
                        help="inner steps, per task")
    parser.add_argument("--batch-steps", type=int, nargs="+", default=[5],
                        help="inner steps of the meta-batch comparison")
    parser.add_argument("--meta-batch", type=int, default=16,
                        help="tasks of the batched comparison")
    parser.add_argument("--lam", type=float, default=10.0, help="iMAML's lam")
    parser.add_argument("--n-way", type=int, default=20, help="classes per task")
    parser.add_argument("--k-shot", type=int, default=5, help="images per class")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (median, IQR)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, default=cli.out_path("results", "peers.csv"),
                        help="CSV of rows (resumed if present)")
    parser.add_argument("--report", type=Path, default=cli.out_path("reports", "peers.md"),
                        help="markdown report to write")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the report from the rows in --out (no measurement)")
    args = parser.parse_args(argv)
    if args.meta_batch < 2:
        parser.error(f"--meta-batch must be >= 2 (the batched comparison), got {args.meta_batch}")
    for name in ("steps", "batch_steps"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lam > 0:
        parser.error(f"--lam must be > 0 (iMAML), got {args.lam}")
    cli_range(parser, "--threads", args.threads, 1)
    cli_range(parser, "--repeats", args.repeats, 1)
    for flag, path in (("--out", args.out), ("--report", args.report)):
        cli.writable_folder(flag, path.parent)
    if args.report_only:
        if not args.out.exists():
            parser.error(f"--report-only: {args.out} does not exist")
        frame = ResultsStore(args.out, KEY, []).read()
        if frame.empty:
            parser.error(f"--report-only: {args.out} holds no rows")
    else:
        require_peers()
        check_device(args.device)
        frame = run(args.steps, args.batch_steps, args.meta_batch, n_way=args.n_way,
                    k_shot=args.k_shot, lam=args.lam, repeats=args.repeats,
                    threads=args.threads, device=args.device, out=args.out)
    try:
        source = args.out.resolve().relative_to(ROOT)
    except ValueError:
        source = args.out
    md = report(frame, str(source))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("peers")))
