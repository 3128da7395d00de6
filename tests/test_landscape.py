"""widenet.landscape: loss, Hessian, inertia, critical points and slices in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import widenet as wn
from widenet import embedding as E
from widenet import landscape as L

F64 = torch.float64


def _problem(depth=1, width=3, n=15, d=2, out=1, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, out, generator=g, dtype=F64)
    net = wn.mlp(depth, "tanh", b_std=0.5, out_dim=out).network(d, width, seed=seed, dtype=F64)
    return net, x, y


@pytest.fixture(scope="module")
def sin_data():
    x = torch.linspace(-1, 1, 12, dtype=F64)[:, None]
    return x, torch.sin(torch.pi * x)


@pytest.fixture(scope="module")
def sin_minimum(sin_data):
    x, y = sin_data
    start = wn.mlp(1, "tanh", b_std=1.0).network(1, 2, seed=0, dtype=F64)
    return L.find_critical_point(start, x, y, method="lbfgs", max_iter=500)


def test_loss_convention_and_dtype():
    net, x, y = _problem(out=2)
    loss, theta = L.loss_function(net, x, y)
    assert theta.dtype == F64 and theta.numel() == sum(p.numel() for p in net.parameters())
    expected = 0.5 * (net(x) - y).detach().square().sum(1).mean()  # 1/(2n) Σ_i ‖f(x_i) − y_i‖²
    assert abs(float(loss(theta)) - float(expected)) <= 1e-15 * float(expected)
    single, x1, y1 = _problem()
    loss1, t1 = L.loss_function(single, x1, y1.reshape(-1))  # (n,) targets for one output
    with torch.no_grad():
        assert float(loss1(t1)) == pytest.approx(float(0.5 * (single(x1) - y1).square().mean()))
    with pytest.raises(ValueError, match=r"y must be \(n, out_dim\)"):
        L.loss_function(net, x, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        L.loss_function(net, x, torch.full_like(y, float("nan")))
    with pytest.raises(TypeError, match="nn.Module or widenet FCNet"):
        L.loss_function("net", x, y)


def test_hessian_matches_double_autograd_and_finite_differences():
    net, x, y = _problem(depth=2, width=3)
    h = L.hessian(net, x, y)
    loss, theta = L.loss_function(net, x, y)
    p = theta.numel()
    # brute force: one reverse pass per gradient component of a create_graph gradient
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(t), t, create_graph=True)
    rows = [torch.autograd.grad(g[i], t, retain_graph=True)[0] for i in range(p)]
    brute = torch.stack(rows)
    # same float64 derivatives by two routes: agree to rounding (1e-12 of the largest entry)
    assert float((h - brute).abs().max()) <= 1e-12 * float(brute.abs().max())
    # central differences of the gradient, step 1e-5: truncation O(h²·∇⁴L) ~ 1e-10 and
    # rounding O(eps·|∇L|/h) ~ 1e-11, so 1e-7 of the largest entry is a safe bound.
    grad = torch.func.grad(loss)
    step = 1e-5
    fd = torch.stack(
        [(grad(theta + step * e) - grad(theta - step * e)) / (2 * step) for e in torch.eye(p)]
    )
    assert float((h - fd).abs().max()) <= 1e-7 * float(h.abs().max())
    assert torch.equal(h, h.T)
    with pytest.raises(ValueError, match="max_parameters"):
        L.hessian(net, x, y, max_parameters=5)


def test_lanczos_extremes_match_dense_eigvalsh():
    net, x, y = _problem(depth=2, width=5, n=30)  # 51 parameters
    lam = torch.linalg.eigvalsh(L.hessian(net, x, y))
    ext = L.hessian_extreme_eigenvalues(net, x, y, k=3)
    # Lanczos converged to tol 1e-10 (relative) on well-separated extremes
    scale = float(lam.abs().max())
    assert torch.allclose(ext.largest, lam[-3:], rtol=0, atol=1e-8 * scale)
    assert torch.allclose(ext.smallest, lam[:3], rtol=0, atol=1e-8 * scale)
    assert float(ext.smallest[0]) < 0  # random point with random targets: indefinite
    hvp, _ = L.hessian_vector_product(net, x, y)
    v = ext.largest_vectors[:, -1]
    assert torch.allclose(hvp(v), ext.largest[-1] * v, atol=1e-7 * scale)
    with pytest.raises(ValueError, match="k must be < the number of parameters"):
        L.hessian_extreme_eigenvalues(net, x, y, k=51)


def test_inertia_counts_and_errors():
    diag = torch.tensor([-2.0, -1e-14, 0.0, 3e-13, 1.0, 5.0], dtype=F64)
    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=F64))[0]
    m = q @ torch.diag(diag) @ q.T
    m = (m + m.T) / 2
    got = L.inertia(m)  # default tol 5·eps^(2/3) ≈ 1.8e-10
    assert (got.negative, got.zero, got.positive) == (1, 3, 2)
    assert got.tol == pytest.approx(5 * torch.finfo(F64).eps ** (2 / 3))
    strict = L.inertia(diag, tol=0.0)
    assert (strict.negative, strict.zero, strict.positive) == (2, 1, 3)
    assert got.gap[0] <= 1e-12 and got.gap[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="symmetric"):
        L.inertia(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="square"):
        L.inertia(torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        L.inertia(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="tol must be >= 0"):
        L.inertia(diag, tol=-1.0)


@pytest.mark.parametrize("method", ["newton", "lbfgs", "gradient_norm"])
def test_critical_point_finder_certifies_the_gradient(method, sin_data, sin_minimum):
    x, y = sin_data
    # start near the strict width-2 minimum (perturbed), where every method must land
    ref = sin_minimum
    theta = L.parameter_vector(ref.model)
    noise = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    near = L.with_parameters(ref.model, theta + 1e-3 * noise)
    # L-BFGS crawls along the flattest direction (λ ≈ 7e-6): its Newton polish finishes
    cp = L.find_critical_point(
        near, x, y, method=method, tol=1e-10, max_iter=None if method != "lbfgs" else 200
    )
    assert cp.converged and cp.grad_norm <= 1e-10
    # the certificate is the gradient norm recomputed independently at the returned point
    assert float(L.gradient(cp.model, x, y).norm()) == pytest.approx(cp.grad_norm, abs=1e-15)
    assert next(cp.model.parameters()).dtype == F64
    assert cp.loss == pytest.approx(ref.loss, rel=1e-8)


def test_gradient_norm_and_newton_reach_a_saddle(sin_data, sin_minimum):
    x, y = sin_data
    narrow = E.FCNet.from_module(sin_minimum.model)
    saddle = E.split_neuron(narrow, 0, 0, 0.3)  # index-1 saddle of width 3 (see test_embedding)
    theta = saddle.flat()
    noise = torch.randn(theta.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    near = L.with_parameters(saddle.to_module(), theta + 1e-4 * noise)
    for method in ("gradient_norm", "newton"):
        cp = L.find_critical_point(near, x, y, method=method)
        assert cp.converged, (method, cp.grad_norm)
        inert = L.inertia(L.hessian(cp.model, x, y))
        assert inert.negative >= 1, method  # a saddle, not the minimum L-BFGS would seek
        # on the embedded critical manifold: the narrow loss
        assert cp.loss == pytest.approx(float(0.5 * (narrow(x) - y).square().mean()), rel=1e-10)


def test_finder_reports_non_convergence_and_checks_arguments(sin_data):
    x, y = sin_data
    net = wn.mlp(1, "tanh", b_std=1.0).network(1, 2, seed=3, dtype=torch.float32)
    cp = L.find_critical_point(net, x, y, method="newton", max_iter=1)
    assert not cp.converged and cp.grad_norm > 1e-10 and cp.iterations == 1
    assert next(cp.model.parameters()).dtype == F64  # float32 input, float64 search
    with pytest.raises(ValueError, match="method must be one of"):
        L.find_critical_point(net, x, y, method="adam")
    with pytest.raises(ValueError, match="tol must be > 0"):
        L.find_critical_point(net, x, y, tol=0.0)


def test_loss_slices_and_filter_normalised_directions(sin_data):
    x, y = sin_data
    a = wn.mlp(1, "tanh", b_std=1.0).network(1, 4, seed=0, dtype=F64)
    b = wn.mlp(1, "tanh", b_std=1.0).network(1, 4, seed=1, dtype=F64)
    line = L.loss_slice_1d(a, x, y, b, t=[0.0, 0.5, 1.0])
    loss_a, theta_a = L.loss_function(a, x, y)
    loss_b, theta_b = L.loss_function(b, x, y)
    assert float(line.loss[0]) == pytest.approx(float(loss_a(theta_a)), rel=1e-14)
    assert float(line.loss[2]) == pytest.approx(float(loss_b(theta_b)), rel=1e-14)
    mid = L.with_parameters(a, (theta_a + theta_b) / 2)
    assert float(line.loss[1]) == pytest.approx(
        float(L.loss_function(mid, x, y)[0](L.parameter_vector(mid))), rel=1e-14
    )
    d = L.filter_normalized_direction(a, seed=3)
    # each neuron's (row's) direction has the norm of its weights; biases get 0 (Li et al.)
    start = 0
    for p in a.parameters():
        part = d[start : start + p.numel()].view_as(p)
        if p.ndim == 2:
            torch.testing.assert_close(part.norm(dim=1), p.detach().norm(dim=1))
        else:
            assert float(part.abs().max()) == 0.0
        start += p.numel()
    e = L.filter_normalized_direction(a, seed=4)
    plane = L.loss_slice_2d(a, x, y, d, e, a=[-1.0, 0.0, 1.0], b=[0.0, 2.0])
    assert plane.loss.shape == (3, 2)
    assert float(plane.loss[1, 0]) == pytest.approx(float(loss_a(theta_a)), rel=1e-14)
    shifted = L.with_parameters(a, theta_a + 1.0 * d + 2.0 * e)
    assert float(plane.loss[2, 1]) == pytest.approx(
        float(L.loss_function(shifted, x, y)[0](L.parameter_vector(shifted))), rel=1e-12
    )
    with pytest.raises(ValueError, match="flat direction of shape"):
        L.loss_slice_1d(a, x, y, torch.ones(3))
    with pytest.raises(ValueError, match="same parameters"):
        L.loss_slice_1d(a, x, y, nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1)))


@pytest.mark.cuda
def test_cuda_matches_cpu(sin_data, sin_minimum):
    x, y = sin_data
    narrow = E.FCNet.from_module(sin_minimum.model)
    wide = E.compose(narrow, [E.Split(0, 0, 0.3), E.Null(0)])
    gpu = wide.to("cuda")
    h_cpu = L.hessian(wide.to_module(), x, y)
    h_gpu = L.hessian(gpu.to_module(), x.cuda(), y.cuda())
    assert h_gpu.is_cuda
    # same float64 arithmetic up to reduction order: 1e-12 of the largest entry
    assert float((h_gpu.cpu() - h_cpu).abs().max()) <= 1e-12 * float(h_cpu.abs().max())
    cp = L.find_critical_point(gpu.to_module(), x.cuda(), y.cuda(), method="newton")
    assert cp.converged and next(cp.model.parameters()).is_cuda
    ext = L.hessian_extreme_eigenvalues(gpu.to_module(), x.cuda(), y.cuda(), k=2)
    assert ext.largest.is_cuda
    s = L.loss_slice_1d(
        gpu.to_module(),
        x.cuda(),
        y.cuda(),
        L.filter_normalized_direction(gpu.to_module(), seed=0),
        t=[0.0, 1.0],
    )
    assert s.loss.is_cuda


@pytest.mark.slow
def test_lanczos_on_a_few_thousand_parameters():
    net, x, y = _problem(depth=2, width=60, n=60, d=10, seed=4)  # 4381 parameters
    lam = torch.linalg.eigvalsh(L.hessian(net, x, y))
    ext = L.hessian_extreme_eigenvalues(net, x, y, k=4)
    scale = float(lam.abs().max())
    assert torch.allclose(ext.largest, lam[-4:], rtol=0, atol=1e-8 * scale)
    assert torch.allclose(ext.smallest, lam[:4], rtol=0, atol=1e-8 * scale)
