"""The references themselves, checked by means that do not use their closed forms."""
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

import synthetic


@pytest.mark.parametrize("kappa", [1.0, 10.0, 1e3, 1e5])
@pytest.mark.parametrize("lam,h_min", [(1.0, 0.0), (0.5, 0.2), (0.0, 0.1)])
def test_realized_kappa_matches_request(kappa, lam, h_min):
    task = synthetic.make_task(12, 40, 10, kappa, lam, h_min=h_min, seed=0)
    eig = scipy.linalg.eigvalsh(task.train_hessian())
    # Eigenvalues of a 12x12 matrix of norm up to 1e5 are accurate to ~1e-16 * 1e5 absolute:
    # relative 1e-8 of kappa leaves a wide margin even at kappa = 1e5.
    realized = (eig[-1] + lam) / (eig[0] + lam)
    assert realized == pytest.approx(kappa, rel=1e-8)
    assert eig[0] == pytest.approx(h_min, abs=1e-9 * (1 + kappa))


@pytest.mark.parametrize("kappa", [10.0, 1e4])
def test_few_shot_spectrum(kappa):
    # n_train < dim: rank-n_train Hessian, so H + lam I has n_train + 1 distinct eigenvalues.
    task = synthetic.make_task(20, 4, 10, kappa, 0.5, seed=1)
    eig = scipy.linalg.eigvalsh(task.train_hessian()) + 0.5
    assert task.realized_kappa() == pytest.approx(kappa, rel=1e-8)
    np.testing.assert_allclose(eig[:16], 0.5, rtol=1e-10)
    assert len(np.unique(np.round(eig / eig[0], 6))) == 5


def test_meta_batch_is_reproducible_and_independent():
    a = synthetic.make_meta_batch(3, 5, 10, 4, 10.0, 1.0, seed=11)
    b = synthetic.make_meta_batch(3, 5, 10, 4, 10.0, 1.0, seed=11)
    for ta, tb in zip(a, b):
        np.testing.assert_array_equal(ta.X_train, tb.X_train)
    assert not np.allclose(a[0].X_train, a[1].X_train)


def test_inner_solution_minimizes_G():
    task = synthetic.make_task(6, 20, 8, 50.0, 0.7, seed=1)
    theta = np.arange(6.0)
    phi = synthetic.inner_solution(task, theta)
    # Optimality: grad G = grad L_train + lam (phi - theta) = 0 to rounding (kappa * eps).
    residual = task.train_grad(phi) + task.lam * (phi - theta)
    assert np.linalg.norm(residual) < 1e-12 * (1 + np.linalg.norm(theta))


def _F(task, theta):
    return task.test_loss(synthetic.inner_solution(task, theta))


def test_exact_meta_gradient_matches_finite_differences():
    task = synthetic.make_task(6, 20, 8, 30.0, 0.5, seed=2)
    theta = np.linspace(-1, 1, 6)
    h = 1e-5
    fd = np.array([(_F(task, theta + h * e) - _F(task, theta - h * e)) / (2 * h)
                   for e in np.eye(6)])
    # F is quadratic in theta, so central differences are exact up to rounding eps*F/h ~ 1e-11.
    assert synthetic.relative_error(synthetic.exact_meta_gradient(task, theta), fd) < 1e-8


@pytest.mark.parametrize("path", ["gd", "agd"])
def test_k_step_derivative_matches_finite_differences(path):
    task = synthetic.make_task(5, 20, 8, 20.0, 1.0, seed=4)
    theta, lr, K = np.linspace(0.3, -0.5, 5), 1 / 20.0, 13

    def run(th):
        if path == "gd":
            return synthetic.gd_path(task, th, K, lr)
        return synthetic.agd_path(task, th, K, lr, 0.6)

    _, J = run(theta)
    h = 1e-6
    fd = np.stack([(run(theta + h * e)[0] - run(theta - h * e)[0]) / (2 * h)
                   for e in np.eye(5)], axis=1)
    # phi_K is affine in theta: central differences carry only rounding, ~eps/h = 1e-10.
    np.testing.assert_allclose(J, fd, atol=1e-8)


def test_gd_meta_gradient_approaches_exact_as_steps_grow():
    task = synthetic.make_task(6, 20, 8, 10.0, 1.0, seed=5)
    theta = np.ones(6)
    exact = synthetic.exact_meta_gradient(task, theta)
    lr = 1 / 10.0
    errors = [synthetic.relative_error(synthetic.gd_meta_gradient(task, theta, k, lr), exact)
              for k in (5, 20, 80, 400)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-12


@pytest.mark.parametrize("kwargs,name", [
    (dict(kappa=0.5), "kappa"), (dict(lam=-1.0), "lam"), (dict(dim=0), "dim"),
    (dict(n_train=3, h_min=0.1), "h_min"), (dict(noise=float("nan")), "noise"),
    (dict(lam=0.0, h_min=0.0), "h_min"),
])
def test_bad_arguments_name_the_parameter(kwargs, name):
    args = dict(dim=5, n_train=10, n_test=4, kappa=10.0, lam=1.0) | kwargs
    with pytest.raises(ValueError, match=name):
        synthetic.make_task(**args)
