"""The learned-lam experiment: its Bayes-optimal prior is the posterior mean, its pipeline
writes every output and resumes, its CLI refuses bad arguments."""
import numpy as np
import pandas as pd
import pytest

import synthetic
from suite.experiments import lam as lam_experiment


def test_bayes_optimal_prior_gives_the_posterior_mean():
    # prox_inner_solution at theta = mean, lam = noise^2 / (n spreads^2) against the
    # Gaussian posterior mean written directly: (X^T X / s^2 + diag(1/spreads^2))^-1
    # (X^T y / s^2 + mean / spreads^2). Two dense float64 solves of a well-conditioned
    # 6 x 6 system agree to ~1e-14; 1e-10 leaves room and catches a wrong factor (O(1)).
    mean, spreads, noise = np.linspace(-1, 1, 6), np.geomspace(0.1, 2, 6), 0.3
    for task in synthetic.make_prior_tasks(5, mean=mean, spreads=spreads, n_train=4, n_test=3,
                                           noise=noise, seed=0):
        lam = synthetic.bayes_lam(spreads, noise, 4)
        ours = synthetic.prox_inner_solution(task, mean, lam)
        X, y = task.X_train, task.y_train
        A = X.T @ X / noise ** 2 + np.diag(1 / spreads ** 2)
        posterior = np.linalg.solve(A, X.T @ y / noise ** 2 + mean / spreads ** 2)
        np.testing.assert_allclose(ours, posterior, rtol=1e-10)


def test_prior_tasks_refuse_bad_arguments():
    with pytest.raises(ValueError, match="spread"):
        synthetic.make_prior_tasks(2, mean=np.zeros(3), spreads=np.array([1.0, 0.0, 1.0]),
                                   n_train=2, n_test=2, noise=0.1, seed=0)
    with pytest.raises(ValueError, match="noise"):
        synthetic.make_prior_tasks(2, mean=np.zeros(3), spreads=np.ones(3), n_train=2,
                                   n_test=2, noise=0.0, seed=0)


def test_experiment_writes_every_output_and_resumes(tmp_path, monkeypatch):
    cfg = lam_experiment.LamConfig(dim=4, n_train=2, iterations=3, meta_batch=2, eval_tasks=20,
                                   grid=[0.1, 1.0])
    out, coords = tmp_path / "lam.csv", tmp_path / "coords.csv"
    frame = lam_experiment.run(cfg, out, coords, progress=lambda *a: None)
    assert list(frame.config) == ["scalar lam 0.1", "scalar lam 1", "learned scalar",
                                  "learned vector", "Bayes-optimal"]
    assert frame.meta_test_loss.notna().all() and (frame.meta_test_loss > 0).all()
    # the implicit solves converged (CG to 10 eps relative, reported as its residual)
    assert (frame.max_cg_residual.dropna() < 1e-10).all()
    assert (frame.max_inner_stationarity.dropna() < 1e-10).all()
    c = pd.read_csv(coords)
    assert len(c) == 4 and (c.learned_lam > 0).all()
    assert not np.allclose(c.learned_lam, 0.1)       # the vector moved from its start
    assert frame.set_index("config").loc["scalar lam 1", "lam_geomean"] == pytest.approx(1.0)
    # a rerun computes nothing: every configuration is in the file
    monkeypatch.setattr(lam_experiment, "meta_train",
                        lambda *a, **k: pytest.fail("recomputed a finished configuration"))
    again = lam_experiment.run(cfg, out, coords, progress=lambda *a: None)
    assert len(again) == 5
    md = lam_experiment.markdown(again, cfg)
    s = lam_experiment.summary(again)
    assert (f"- Learned vector λ: {s['vector_loss']:.5f}, against the best scalar λ of the grid "
            f"({s['best_scalar']}) {s['best_scalar_loss']:.5f}: {100 * s['gain']:.1f}% lower") in md
    assert ("reached)" if s["gain_ok"] else "**not reached**)") in md
    assert all(f"| {r.config} | {r.meta_test_loss:.5f} ± {r.ci95:.5f} |" in md
               for r in again.itertuples())
    png = lam_experiment.plot(again, c, tmp_path / "lam.png")
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("argv,message", [
    (["--iterations", "0"], "--iterations must be"), (["--seed", "-1"], "--seed must be"),
    (["--out", "/nonexistent/x.csv"], "does not exist")])
def test_cli_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit, match=message):
        lam_experiment.main(argv)
