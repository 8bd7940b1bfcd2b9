"""Exact Hessian-vector products: reverse-over-reverse, forward-over-reverse, and the CNN with
BatchNorm written from primitive operations, all equal in float64; the hvp-cost report."""
import pytest
import torch

from suite import meta_gradient
from suite.linalg import FASTEST_HVP, HVP_PRODUCTS, hvp_at, hvp_product
from suite.solvers import GD
from suite.sweeps import cnn_products
from suite.workloads import cnn_tasks

F64 = torch.float64


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def cnn():
    tasks, theta = cnn_tasks(n_way=5, k_shot=1, dtype=F64, seed=3)
    prim, _ = cnn_tasks(n_way=5, k_shot=1, dtype=F64, seed=3, batchnorm="primitive")
    return tasks[0], prim[0], theta


def test_products_agree_in_float64(cnn):
    # Two exact products of the same Hessian in float64: they differ by the order of sums,
    # ~1e-15 relative; 1e-10 is far from that and far below any wrong term (O(1)).
    task, _, theta = cnn
    v = torch.randn_like(theta)
    reference = hvp_at(task.train_loss, theta)[1](v)
    for name, product_at in HVP_PRODUCTS.items():
        g, product = product_at(task.train_loss, theta)
        assert _rel(product(v), reference) < 1e-10, name
        assert _rel(g, hvp_at(task.train_loss, theta)[0]) < 1e-12, name


def test_primitive_batchnorm_is_the_same_function(cnn):
    # Same parameters (BatchNorm's initialisation draws no random numbers), the same
    # normalisation written with other kernels: float64 rounding only, ~1e-15.
    native, prim, theta = cnn
    x = native.support[0]
    assert _rel(prim.outputs(theta, x), native.outputs(theta, x)) < 1e-12
    v = torch.randn_like(theta)
    gn, hn = hvp_at(native.train_loss, theta)
    gp, hp = hvp_at(prim.train_loss, theta)
    assert _rel(gp, gn) < 1e-10 and _rel(hp(v), hn(v)) < 1e-10


def test_imaml_takes_each_product(cnn):
    task, _, theta = cnn
    runs = {h: meta_gradient("imaml", task, theta, lam=10.0, solver=GD(3, 0.1), cg_steps=4,
                             hvp=h).grad for h in ("reverse", "forward", "auto")}
    assert _rel(runs["forward"], runs["reverse"]) < 1e-10
    assert torch.equal(runs["auto"], runs[FASTEST_HVP["cpu"]])
    with pytest.raises(ValueError, match="hvp must be 'auto' or one of"):
        hvp_product("fast", "cpu")


def test_hvp_cost_rows():
    rows = cnn_products(n_way=2, k_shot=1, device="cpu", repeats=1, threads=1, steps=2,
                        cg_steps=2)
    whats = {(r["batchnorm"], r["what"]) for r in rows}
    for bn in ("native", "primitive"):
        for what in ("gradient", "reverse HVP", "forward HVP", "Gauss-Newton product",
                     "gradient with its graph", "fomaml", "imaml"):
            assert (bn, what) in whats
    ratio = [r for r in rows if r["what"].startswith("imaml /")]
    assert len(ratio) == 2 and all(r["ideal"] > 1 and r["over_ideal"] > 0 for r in ratio)
    unit = [r for r in rows if r["what"] == "gradient" and r["batchnorm"] == "native"][0]
    assert unit["in_native_gradients"] == 1.0
