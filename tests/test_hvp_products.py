"""Exact Hessian-vector products: reverse-over-reverse, forward-over-reverse, and the CNN with
BatchNorm written from primitive operations or with its double backward in closed form, all
equal in float64; the closed form against finite differences; the hvp-cost report."""
import pytest
import torch

from suite import meta_gradient
from suite.core.hvp import FASTEST_HVP, HVP_PRODUCTS, hvp_at, hvp_product
from suite.core.solvers import GD
from suite.experiments.sweeps import cnn_products
from suite.models.batchnorm import ClosedFormBatchNorm2d
from suite.models.conv4 import BATCHNORMS, FASTEST_BATCHNORM, conv4, resolve_batchnorm
from suite.harness.workloads import cnn_tasks

F64 = torch.float64


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def cnn():
    tasks, theta = cnn_tasks(n_way=5, k_shot=1, dtype=F64, seed=3, batchnorm="native")
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


@pytest.mark.parametrize("batchnorm", sorted(set(BATCHNORMS) - {"native"}))
def test_each_batchnorm_is_the_same_function(batchnorm, cnn):
    # Same parameters (BatchNorm's initialisation draws no random numbers), the same
    # normalisation and derivatives written with other kernels: float64 rounding only,
    # ~1e-15 relative; 1e-10 is far below any wrong term (O(1)). Both exact products.
    native, _, theta = cnn
    other = cnn_tasks(n_way=5, k_shot=1, dtype=F64, seed=3, batchnorm=batchnorm)[0][0]
    x = native.support[0]
    assert _rel(other.outputs(theta, x), native.outputs(theta, x)) < 1e-12
    v = torch.randn_like(theta)
    for name, product_at in HVP_PRODUCTS.items():
        gn, hn = product_at(native.train_loss, theta)
        go, ho = product_at(other.train_loss, theta)
        assert _rel(go, gn) < 1e-10 and _rel(ho(v), hn(v)) < 1e-10, name


def test_closed_form_batchnorm_against_finite_differences():
    # torch's gradcheck compares each analytic derivative with central differences in float64
    # (its default tolerances: eps 1e-6, atol 1e-5, rtol 1e-3, against an O(eps^2) error):
    # first derivatives in reverse and forward mode, second derivatives reverse-over-reverse
    # and forward-over-reverse, and third derivatives through the recorded double backward.
    torch.manual_seed(0)
    bn = ClosedFormBatchNorm2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=F64, requires_grad=True)
    w = torch.randn(3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(bn, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b), check_fwd_over_rev=True)
    gy = torch.randn(4, 3, 5, 5, dtype=F64)

    def grad_of_f(x, w, b):
        return torch.autograd.grad((f(x, w, b) * gy).sum(), (x, w), create_graph=True)

    assert torch.autograd.gradgradcheck(grad_of_f, (x, w, b))


def test_closed_form_batchnorm_gradient_is_native_bit_for_bit_on_cpu():
    # Its forward and first backward are the very kernels nn.BatchNorm2d runs on the CPU, so
    # first-order methods (and FOMAML's numbers) do not change by a bit in float32.
    native = cnn_tasks(n_way=5, k_shot=1, seed=3, batchnorm="native")[0][0]
    closed, theta = cnn_tasks(n_way=5, k_shot=1, seed=3, batchnorm="closed-form")
    phi = theta.detach().requires_grad_(True)
    gn, = torch.autograd.grad(native.train_loss(phi), phi)
    gc, = torch.autograd.grad(closed[0].train_loss(phi), phi)
    assert torch.equal(gn, gc)


def test_auto_batchnorm_is_the_fastest_measured_per_device():
    assert resolve_batchnorm("auto", "cpu") == FASTEST_BATCHNORM["cpu"]
    assert resolve_batchnorm("auto", "cuda:0") == FASTEST_BATCHNORM["cuda"]
    assert resolve_batchnorm("primitive", "cuda") == "primitive"
    tasks, _ = cnn_tasks(n_way=2, k_shot=1)
    kinds = {type(m).__name__ for m in tasks[0].module.modules()}
    assert type(BATCHNORMS[FASTEST_BATCHNORM["cpu"]](1)).__name__ in kinds
    with pytest.raises(ValueError, match="batchnorm must be 'auto' or one of"):
        cnn_tasks(n_way=2, k_shot=1, batchnorm="fused")
    with pytest.raises(ValueError, match="batchnorm='auto' is cnn_tasks' choice"):
        conv4(2, batchnorm="auto")


def test_recorded_fastest_choices_are_what_their_rows_say(tmp_path):
    """results/fastest.json, which hvp='auto' and batchnorm='auto' read, holds what
    fastest.choose reads off the committed hvp-cost rows it names; record() keeps the other
    device types."""
    import pandas as pd
    from suite.core import fastest
    recorded = fastest.load()
    assert set(recorded) == {"cpu", "cuda"}
    root = fastest.CHECKOUT
    for device, choice in recorded.items():
        rows = pd.read_csv(root / choice["source"])
        assert fastest.choose(rows) == {k: choice[k] for k in ("hvp", "batchnorm")}, device
        assert set(rows.device.map(lambda d: d.split(":")[0])) == {device}
    assert FASTEST_HVP == fastest.fastest("hvp") and FASTEST_BATCHNORM == fastest.fastest(
        "batchnorm")
    cpu = pd.read_csv(root / recorded["cpu"]["source"])
    slower = cpu.copy()
    slower.loc[(slower.batchnorm == "native") & (slower.what == "imaml"), "seconds"] = 1e-3
    path = tmp_path / "fastest.json"
    path.write_text(fastest.RECORD.read_text())
    choice = fastest.record(slower, "cpu", fastest.CHECKOUT / "results" / "x.csv", path)
    assert choice["batchnorm"] == "native" and choice["source"] == "results/x.csv"
    assert fastest.load(path)["cuda"] == recorded["cuda"]
    assert fastest.record(slower, "cpu", tmp_path / "y.csv", path)["source"] == str(
        (tmp_path / "y.csv").resolve())   # outside the checkout: the path itself


def test_closed_form_batchnorm_refuses_bad_input():
    with pytest.raises(ValueError, match="affine=True"):
        ClosedFormBatchNorm2d(3, affine=False)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) inputs, got 3"):
        ClosedFormBatchNorm2d(3)(torch.randn(2, 3, 4))


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
    for bn in BATCHNORMS:
        for what in ("gradient", "reverse HVP", "forward HVP", "Gauss-Newton product",
                     "gradient with its graph", "fomaml", "imaml"):
            assert (bn, what) in whats
    seconds = {(r["batchnorm"], r["what"]): r.get("seconds") for r in rows}
    ratio = [r for r in rows if r["what"].startswith("imaml /")]
    assert len(ratio) == len(BATCHNORMS)
    for r in ratio:   # iMAML's ideal: K + 2 gradients and C products of c gradients each
        bn = r["batchnorm"]
        c = seconds[(bn, "reverse HVP")] / seconds[(bn, "gradient")]
        assert r["ideal"] == pytest.approx((2 + 2 + c * 2) / (2 + 1), rel=1e-12)
        measured = seconds[(bn, "imaml")] / seconds[(bn, "fomaml")]
        assert r["over_ideal"] == pytest.approx(measured / r["ideal"], rel=1e-12)
    unit = [r for r in rows if r["what"] == "gradient" and r["batchnorm"] == "native"][0]
    assert unit["in_native_gradients"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_closed_form_batchnorm_on_cuda():
    # On CUDA nn.BatchNorm2d may take cuDNN's kernels and the closed form the native ones:
    # in float64 still rounding only, so the CPU's 1e-10 bound holds for both products.
    native, theta = cnn_tasks(n_way=5, k_shot=1, dtype=F64, seed=3, device="cuda",
                              batchnorm="native")
    closed, _ = cnn_tasks(n_way=5, k_shot=1, dtype=F64, seed=3, device="cuda",
                          batchnorm="closed-form")
    v = torch.randn_like(theta)
    for name, product_at in HVP_PRODUCTS.items():
        gn, hn = product_at(native[0].train_loss, theta)
        gc, hc = product_at(closed[0].train_loss, theta)
        assert _rel(gc, gn) < 1e-10 and _rel(hc(v), hn(v)) < 1e-10, name
