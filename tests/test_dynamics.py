"""Closed-form training dynamics (``widenet.dynamics``) against the things they claim to predict.

* The agreement test (Lee et al. 2019, eqs. 8–11): ``gradient_descent_mse`` with the empirical
  NTK equals, step by step, the outputs of ``wn.linearize(net)`` trained by full-batch GD with
  a torch optimizer. Both are exact for the linear model, so in float64 they differ by rounding
  accumulated over the steps (~1e-14 relative); the bar is 1e-8.
* The infinite-width ensemble (eqs. 14–16): ``gp_ensemble_mse`` against a Monte-Carlo ensemble
  of finite networks, within 5 standard errors plus a finite-width bias (see the test).
* The NNGP posterior against scikit-learn's GaussianProcessRegressor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import widenet as wn
from widenet import dynamics as dy
from widenet import layers

F64 = torch.float64
ARCH = wn.mlp(2, "relu", w_std=1.4, b_std=0.1)


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def one_thread():
    # Hundreds of tiny matrix products: a thread pool only adds synchronisation cost.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    d, n, m = 3, 8, 5
    x = torch.randn(n, d, generator=gen, dtype=F64)
    x_test = torch.randn(m, d, generator=gen, dtype=F64)
    y = torch.randn(n, 1, generator=gen, dtype=F64)
    net = ARCH.network(d, 64, seed=0, dtype=F64)
    ntk = wn.empirical_ntk(net, x)
    ntk_test = wn.empirical_ntk(net, x_test, x)
    with torch.no_grad():
        f0, f0_test = net(x), net(x_test)
    return dict(net=net, x=x, x_test=x_test, y=y, ntk=ntk, ntk_test=ntk_test, f0=f0, f0t=f0_test)


def train_linearized(p, loss, lr, steps):
    """Outputs of wn.linearize(net) trained with torch.optim.SGD at each step in ``steps``."""
    lin = wn.linearize(p["net"])
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    record_train, record_test = [], []
    for step in range(max(steps) + 1):
        if step in steps:
            with torch.no_grad():
                record_train.append(lin(p["x"]))
                record_test.append(lin(p["x_test"]))
        opt.zero_grad()
        sq = 0.5 * (lin(p["x"]) - p["y"]) ** 2
        (sq.mean() if loss == "mean" else sq.sum()).backward()
        opt.step()
    return torch.stack(record_train), torch.stack(record_test)


# --------------------------------------------------------------------------------------------
# The agreement test: closed form == training the linearized network
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", dy.LOSSES)
def test_gradient_descent_equals_training_linearized_network(problem, loss, one_thread):
    p = problem
    steps = [0, 1, 2, 7, 30, 60]
    lr = 0.7 * dy.max_learning_rate(p["ntk"], loss=loss)
    got_train, got_test = train_linearized(p, loss, lr, steps)
    pred = dy.gradient_descent_mse(
        p["ntk"],
        p["y"],
        steps,
        ntk_test_train=p["ntk_test"],
        f0_train=p["f0"],
        f0_test=p["f0t"],
        learning_rate=lr,
        loss=loss,
    )
    assert pred.train.shape == (len(steps), 8, 1) and pred.test.shape == (len(steps), 5, 1)
    assert pred.train.dtype == F64
    # measured: 1.0e-15 (train) and 1.9e-15 (test) relative, both losses
    assert rel(pred.train, got_train) < 1e-8
    assert rel(pred.test, got_test) < 1e-8
    # Training actually moved the outputs (the comparison is not of constants).
    assert float((got_train[-1] - p["y"]).abs().max()) < 0.5 * float((p["f0"] - p["y"]).abs().max())


@pytest.mark.parametrize("n", [1, 2, 3, 57])
def test_factored_eigenvectors_equal_an_explicit_eigendecomposition(n):
    # The CPU path keeps V = Q S factored (dsytrd reflectors, tridiagonal eigenvectors); V is
    # only defined up to column signs, so compare sign-free quantities with NumPy's eigh.
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n + 2, generator=gen, dtype=torch.float64)
    k = a @ a.T
    v = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    e = dy._eig(k, "k", 0.0)
    lam, vec = np.linalg.eigh(k.numpy())
    np.testing.assert_allclose(e.values.numpy(), lam, rtol=0, atol=1e-12 * lam.max())
    d = torch.rand(n, generator=gen, dtype=torch.float64)
    ref = vec @ np.diag(d.numpy()) @ vec.T @ v.numpy()
    got = e.expand(d[:, None] * e.project(v))
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    # The explicit matrix, formed on demand, is orthogonal and diagonalises k.
    q = e.vectors
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(n), atol=1e-12)
    np.testing.assert_allclose((q.T @ k @ q).numpy(), np.diag(lam), atol=1e-11 * lam.max())


def _kernel_with_identity_reflectors(n: int, gen) -> torch.Tensor:
    """A PSD kernel whose tridiagonalisation has reflectors with τ = 0: blocks (random PSD,
    diagonal, random PSD) on the diagonal, so columns with nothing to annihilate occur."""
    sizes = (n // 2, 5, n - n // 2 - 5)
    blocks = []
    for i, size in enumerate(sizes):
        if i == 1:
            blocks.append(torch.diag(torch.rand(size, generator=gen, dtype=F64) + 0.5))
        else:
            a = torch.randn(size, size + 2, generator=gen, dtype=F64)
            blocks.append(a @ a.T)
    return torch.block_diag(*blocks)


@pytest.mark.parametrize(("n", "block"), [(23, 4), (300, 7), (300, 128)])
def test_compact_wy_blocks_equal_the_explicit_eigenvectors(n, block, monkeypatch):
    # Q is applied in compact WY blocks (several blocks, a partial last one, τ = 0 reflectors);
    # every product of the factored V must equal the one with NumPy's explicit eigenvectors.
    monkeypatch.setattr(dy, "_WY_BLOCK", block)
    gen = torch.Generator().manual_seed(n)
    k = _kernel_with_identity_reflectors(n, gen)
    kx = torch.randn(9, n, generator=gen, dtype=F64)
    e = dy._eig(k, "k", 0.0)
    tau = e._reflectors[1]
    assert bool((tau == 0).any()) and bool((tau != 0).any())  # both kinds are exercised
    assert len(e._blocks or dy._wy_blocks(*e._reflectors, block)) == math.ceil((n - 1) / block)
    lam, vec = np.linalg.eigh(k.numpy())
    np.testing.assert_allclose(e.values.numpy(), lam, rtol=0, atol=1e-12 * lam.max())
    v = torch.randn(n, 4, generator=gen, dtype=F64)
    d = torch.rand(n, generator=gen, dtype=F64)
    # V diag(d) Vᵀ v and kx V diag(d) Vᵀ v do not depend on V's column signs (nor on the
    # basis chosen inside an eigenspace: the diagonal block's eigenvalues are distinct).
    ref = vec @ (d.numpy()[:, None] * (vec.T @ v.numpy()))
    z = d[:, None] * e.project(v)
    got = e.expand(z)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    ref_left = kx.numpy() @ ref
    got_left = kx @ e.expand(z)
    np.testing.assert_allclose(got_left.numpy(), ref_left, atol=1e-12 * np.abs(ref_left).max())
    q = e.vectors
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(n), atol=1e-12)
    np.testing.assert_allclose((q.T @ k @ q).numpy(), np.diag(lam), atol=1e-11 * lam.max())


@pytest.mark.parametrize("n", [1, 5, 64, 300])
def test_tiled_symmetric_passes_equal_the_plain_ones(n, monkeypatch):
    # max |x − xᵀ| and ½ (x + xᵀ) tile by tile (tiles of 64: partial tiles at n = 5 and 300)
    # are the very numbers of the untiled formulas.
    monkeypatch.setattr(dy, "_TILE", 64)
    x = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=F64)
    assert dy._max_asymmetry(x) == float((x - x.T).abs().max())
    assert torch.equal(dy._symmetrised(x), (x + x.T) * 0.5)


@pytest.mark.parametrize("fn", ["flow", "descent"])
def test_predictions_equal_the_plain_eigendecomposition(fn, monkeypatch):
    # Train and test outputs at several times, n = 300 with 4 WY blocks, against the formulas
    # evaluated with NumPy's explicit eigenvectors (float64): only rounding separates them.
    monkeypatch.setattr(dy, "_WY_BLOCK", 64)
    gen = torch.Generator().manual_seed(1)
    n, m, k = 300, 40, 3
    x = torch.randn(n + m, 5, generator=gen, dtype=F64)
    ker = ARCH.kernel(x, get="ntk").ntk
    ntk, ntk_test = ker[:n, :n], ker[n:, :n]
    y = torch.randn(n, k, generator=gen, dtype=F64)
    f0 = 0.1 * torch.randn(n, k, generator=gen, dtype=F64)
    f0t = 0.1 * torch.randn(m, k, generator=gen, dtype=F64)
    lam, vec = np.linalg.eigh(ntk.numpy())
    rate = 0.5 / y.numel()  # learning_rate 0.5, loss "mean"
    if fn == "flow":
        t = np.array([0.0, 3.0, 100.0, 1e4, 1e6])
        decay = np.exp(-rate * lam[None] * t[:, None])
        pred = dy.gradient_flow_mse(
            ntk, y, t, ntk_test_train=ntk_test, f0_train=f0, f0_test=f0t, learning_rate=0.5
        )
    else:
        t = np.array([0, 1, 10, 1000, 100000])
        decay = (1.0 - rate * lam[None]) ** t[:, None]
        pred = dy.gradient_descent_mse(
            ntk, y, t, ntk_test_train=ntk_test, f0_train=f0, f0_test=f0t, learning_rate=0.5
        )
    b = vec.T @ (f0 - y).numpy()
    train = y.numpy()[None] + np.einsum("ij,tj,jk->tik", vec, decay, b)
    # Θ(x, X) Θ⁻¹ (I − decay): λ > 0 here (checked), so (1 − decay)/λ is well defined.
    assert lam.min() > 1e-8 * lam.max()
    test = f0t.numpy()[None] - np.einsum(
        "ij,tj,jk->tik", ntk_test.numpy() @ vec, (1 - decay) / lam, b
    )
    np.testing.assert_allclose(pred.train.numpy(), train, atol=1e-11 * np.abs(train).max())
    np.testing.assert_allclose(pred.test.numpy(), test, atol=1e-10 * np.abs(test).max())


def _many_times_problem(kind: str = "random"):
    """NTK blocks, targets and initial outputs: random targets and outputs (n = 300), or
    smooth targets from zero outputs (n = 600), whose residual lies mostly along the top
    eigenvectors, so that the small-λ entries of f ⊙ b are far below the largest."""
    gen = torch.Generator().manual_seed(1 if kind == "random" else 2)
    n, m, k, d = (300, 40, 3, 5) if kind == "random" else (600, 50, 3, 10)
    x = torch.randn(n + m, d, generator=gen, dtype=F64)
    ker = ARCH.kernel(x, get="ntk").ntk
    if kind == "random":
        y = torch.randn(n, k, generator=gen, dtype=F64)
        f0 = 0.1 * torch.randn(n, k, generator=gen, dtype=F64)
        f0t = 0.1 * torch.randn(m, k, generator=gen, dtype=F64)
    else:
        y = torch.stack([x[:n, 0], x[:n, 1] ** 2, torch.sin(x[:n, 2])], 1)
        f0, f0t = torch.zeros_like(y), torch.zeros(m, k, dtype=F64)
    return ker[:n, :n], ker[n:, :n], y, f0, f0t


def test_time_basis_reproduces_every_row_to_rounding():
    # The decays and (1 − decay)/λ of 120 log-spaced times (the benchmark's range: the first
    # rows barely move, the last decay only along λ = 0) on an NTK spectrum, with a
    # zero eigenvalue: rank far below the 241 rows, and each row reproduced to eps·σ₁·‖row‖.
    ker, _, y, _, _ = _many_times_problem()
    lam = torch.linalg.eigvalsh(ker)
    lam[0] = 0.0
    times = np.concatenate([[0.0], np.logspace(0, 9, 119)])
    decay, g = dy._flow_factors(lam, times, 1.0 / y.numel(), 1e-12 * float(lam.max()))
    factors = torch.cat([decay, g, torch.zeros_like(g[:1])])  # and an underflowed row
    a, b = dy._time_basis(factors)
    rows = factors.shape[0]
    assert a.shape[1] <= dy._BASIS_MAX_FRACTION * rows
    np.testing.assert_allclose((a.T @ a).numpy(), np.eye(a.shape[1]), atol=1e-13)
    err = torch.linalg.vector_norm(b @ a.T - factors, dim=1)
    bound = 4 * torch.finfo(F64).eps * math.sqrt(rows) * torch.linalg.vector_norm(factors, dim=1)
    assert bool((err <= bound).all()), float((err / bound.clamp_min(1e-300)).max())
    assert bool((b[(factors == 0).all(dim=1)] == 0).all())
    # Too few rows, or full rank: no basis (the plain product is taken).
    assert dy._time_basis(factors[:10]) is None
    assert dy._time_basis(torch.randn(40, 300, generator=torch.Generator().manual_seed(0))) is None


@pytest.mark.parametrize("kind", ["random", "smooth"])
@pytest.mark.parametrize("fn", ["flow", "descent", "dual"])
def test_predictions_with_a_time_basis_equal_the_plain_product(fn, kind, monkeypatch):
    # 120 times (240 factor rows for train and test): the products go through the time basis.
    # What the product computes at every time, the train residual f_t − y, the test change
    # f_t − f_0 and the dual coefficients, equals the plain product's (basis switched off) to
    # 5e-12 of that time's own largest entry, plus the rounding of the stored outputs
    # (4 eps max|y| for the train residual: it is read back as f_t − y). Measured: at most
    # 0.1 of that bound.
    ntk, ntk_test, y, f0, f0t = _many_times_problem(kind)
    used = []
    basis = dy._time_basis
    monkeypatch.setattr(dy, "_time_basis", lambda f: used.append(basis(f)) or used[-1])
    kw = dict(f0_train=f0, learning_rate=0.5)
    if fn == "dual":
        t = np.concatenate([[0.0], np.logspace(-1, 7, 119)])
        call = lambda: (dy.gradient_flow_dual(ntk, y, t, **kw),)  # noqa: E731
    else:
        kw.update(ntk_test_train=ntk_test, f0_test=f0t)
        if fn == "flow":
            t = np.concatenate([[0.0], np.logspace(-2, 8, 118), [np.inf]])
            call = lambda: tuple(vars(dy.gradient_flow_mse(ntk, y, t, **kw)).values())  # noqa: E731
        else:
            t = np.unique(np.logspace(0, 8, 150).astype(int))[:120]
            call = lambda: tuple(vars(dy.gradient_descent_mse(ntk, y, t, **kw)).values())  # noqa: E731
    got = call()
    assert len(used) == 1 and used[0] is not None
    monkeypatch.setattr(dy, "_BASIS_MIN_ROWS", 10**9)
    plain = call()
    start = (y, f0t) if fn != "dual" else (torch.zeros_like(y),)
    eps = torch.finfo(F64).eps
    for a, b, s0 in zip(got, plain, start, strict=True):
        change_a, change_b = a - s0, b - s0
        bound = 5e-12 * change_b.flatten(1).abs().amax(dim=1) + 4 * eps * float(s0.abs().max())
        assert bool(((change_a - change_b).flatten(1).abs().amax(dim=1) <= bound).all())


def test_time_basis_error_is_relative_to_the_weighted_columns():
    # _spectral_columns bases the rows f ⊙ w, w = ‖b‖ over the outputs, so the error of every
    # f ⊙ b_j is a few eps·√F of ‖[f ⊙ b_1, …, f ⊙ b_k]‖, even where b is small exactly where
    # f is large (here g ≈ 1/λ up to 100, b ∝ (λ/λmax)²). Measured: 1.2e-14 of the columns,
    # against the bound 16 eps √F = 5.5e-14; a basis of the factors alone errs by
    # eps·‖f‖·max|b| there, 2.0e-11. V = I, so the product is f ⊙ b itself.
    n, k = 400, 3
    lam = torch.logspace(-2, 3, n, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(n, k, generator=gen, dtype=F64) * (lam / lam.max())[:, None] ** 2
    _, g = dy._flow_factors(lam, np.logspace(-2, 4, 240), 1.0, 0.0)  # rank 73
    e = dy._Eig(lam, float(lam.max()), 0.0, vectors=torch.eye(n, dtype=F64))
    p, bmat = dy._spectral_columns(e, g, b)
    assert bmat is not None
    got = torch.tensordot(bmat, p, dims=([1], [1]))  # (F, n, k)
    exact = g[:, :, None] * b[None]
    err = torch.linalg.vector_norm(got - exact, dim=1)  # (F, k)
    scale = torch.linalg.vector_norm(exact, dim=(1, 2))[:, None]
    assert bool((err <= 16 * torch.finfo(F64).eps * math.sqrt(g.shape[0]) * scale).all())


@pytest.mark.parametrize("last", [400, 100000])
def test_divergent_descent_past_the_float_range_of_a_plain_norm(last, monkeypatch):
    # allow_divergent: (1 − ηλ/N)^s grows past 1e154, where a plain row norm (Σ f²) would
    # overflow (last step 400: outputs near 1e280, still finite), or to infinity (100000).
    # Finite rows keep a basis (norms scaled by the row's largest entry) and agree with the
    # plain product to 1e-12 per time; infinite ones take the plain product, exactly.
    ntk, ntk_test, y, f0, _ = _many_times_problem()
    lr = 3.0 * dy.max_learning_rate(ntk) * y.shape[1]
    steps = np.unique(np.geomspace(1, last, 200).astype(int))[-40:]
    kw = dict(ntk_test_train=ntk_test, f0_train=f0, learning_rate=lr, allow_divergent=True)
    got = dy.gradient_descent_mse(ntk, y, steps, **kw)
    assert bool(torch.isfinite(got.test).all()) == (last == 400)
    assert last != 400 or float(got.test.abs().max()) > 1e200
    monkeypatch.setattr(dy, "_BASIS_MIN_ROWS", 10**9)
    plain = dy.gradient_descent_mse(ntk, y, steps, **kw)
    for a, b in ((got.train, plain.train), (got.test, plain.test)):
        if last == 400:
            scale = b.flatten(1).abs().amax(dim=1)
            assert bool(((a - b).flatten(1).abs().amax(dim=1) <= 1e-12 * scale).all())
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_gradient_flow_is_the_small_step_limit_of_gd(problem):
    p = problem
    kw = dict(ntk_test_train=p["ntk_test"], f0_train=p["f0"], f0_test=p["f0t"])
    t = np.array([0.0, 0.5, 2.0, 5.0])
    flow = dy.gradient_flow_mse(p["ntk"], p["y"], t, **kw)
    errors = []
    for h in (1e-2, 5e-3):
        gd = dy.gradient_descent_mse(
            p["ntk"], p["y"], np.round(t / h).astype(int), learning_rate=h, **kw
        )
        errors.append(max(rel(gd.train, flow.train), rel(gd.test, flow.test)))
    # Euler's method: the error is first order in the step (measured 4.4e-3 and 2.2e-3).
    assert errors[0] < 1e-2
    assert 1.8 < errors[0] / errors[1] < 2.2


def test_infinite_time_is_kernel_regression(problem):
    p = problem
    pred = dy.gradient_flow_mse(
        p["ntk"],
        p["y"],
        [1.0, math.inf],
        ntk_test_train=p["ntk_test"],
        f0_train=p["f0"],
        f0_test=p["f0t"],
    )
    expected = p["f0t"] + p["ntk_test"] @ torch.linalg.solve(p["ntk"], p["y"] - p["f0"])
    assert rel(pred.test[1], expected) < 1e-9
    assert rel(pred.train[1], p["y"]) < 1e-12
    # Many GD steps converge to the same point.
    lr = dy.critical_learning_rate(p["ntk"])
    gd = dy.gradient_descent_mse(
        p["ntk"], p["y"], 200_000, ntk_test_train=p["ntk_test"], f0_train=p["f0"], f0_test=p["f0t"],
        learning_rate=lr,
    )  # fmt: skip
    assert rel(gd.test[0], expected) < 1e-6


def test_shapes_dtype_vector_targets_and_scalar_time():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=gen)
    k = ARCH.kernel(x).ntk  # float32
    y = torch.randn(6, generator=gen)
    pred = dy.gradient_flow_mse(k, y, 1.0)
    assert pred.train.shape == (1, 6, 1) and pred.test is None and pred.train.dtype == torch.float32
    y3 = torch.randn(6, 3, generator=gen)
    pred3 = dy.gradient_flow_mse(k, y3, np.array([0.0, 2.0]), loss="sum")
    assert pred3.train.shape == (2, 6, 3)
    torch.testing.assert_close(pred3.train[0], torch.zeros(6, 3))  # f0 defaults to 0
    # Each output column evolves independently with the same kernel.
    col = dy.gradient_flow_mse(k, y3[:, 1], 2.0, loss="sum")
    torch.testing.assert_close(pred3.train[1, :, 1:2], col.train[0])


def test_singular_kernel_finite_times_and_diag_reg():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(6, 2, generator=gen, dtype=F64)
    k = feats @ feats.T  # rank 2
    y = torch.randn(6, generator=gen, dtype=F64)
    kt = torch.randn(3, 2, generator=gen, dtype=F64) @ feats.T
    # Finite times are fine: the λ → 0 limit of (1 − e^{−ηλt/N})/λ is ηt/N.
    pred = dy.gradient_descent_mse(k, y, [0, 5, 50], ntk_test_train=kt, learning_rate=0.1)
    assert torch.isfinite(pred.test).all()
    flow = dy.gradient_flow_mse(k, y, [3.0], ntk_test_train=kt)
    assert torch.isfinite(flow.test).all()
    with pytest.raises(ValueError, match="ntk_train_train is singular.*diag_reg"):
        dy.gradient_flow_mse(k, y, math.inf, ntk_test_train=kt)
    reg = dy.gradient_flow_mse(k, y, math.inf, ntk_test_train=kt, diag_reg=1e-3)
    expected = kt @ torch.linalg.solve(k + 1e-3 * torch.eye(6, dtype=F64), y)
    assert rel(reg.test[0, :, 0], expected) < 1e-9


def test_gd_factors_are_accurate_for_tiny_eigenvalues():
    # (1 − (1 − ηλ)^s)/λ = η Σ_{j<s} (1 − ηλ)^j: the naive formula loses every digit at λ ~ 1e-14.
    from widenet.dynamics import _gd_factors

    lam = torch.tensor([0.0, 1e-14, 1e-9, 1e-3, 0.3, 1.5], dtype=F64)
    steps = np.array([0, 1, 7, 1000])
    power, g = _gd_factors(lam, steps, 0.1, tol=0.0)
    for i, s in enumerate(steps):
        for j, lj in enumerate(lam.tolist()):
            r = 1.0 - 0.1 * lj
            expected = 0.1 * sum(r**q for q in range(s))
            assert float(g[i, j]) == pytest.approx(expected, rel=1e-10, abs=1e-300)
            assert float(power[i, j]) == pytest.approx(r**s, rel=1e-10)


# --------------------------------------------------------------------------------------------
# Learning rates
# --------------------------------------------------------------------------------------------


def test_learning_rate_limits(problem):
    p = problem
    lam = torch.linalg.eigvalsh(p["ntk"])
    n = p["ntk"].shape[0]
    assert dy.max_learning_rate(p["ntk"]) == pytest.approx(2 * n / float(lam[-1]), rel=1e-12)
    assert dy.max_learning_rate(p["ntk"], loss="sum") == pytest.approx(2 / float(lam[-1]))
    crit = dy.critical_learning_rate(p["ntk"], diag_reg=0.5)
    assert crit == pytest.approx(2 * n / float(lam[0] + lam[-1] + 1.0), rel=1e-12)

    lr_max = dy.max_learning_rate(p["ntk"])
    kw = dict(ntk_test_train=p["ntk_test"], f0_train=p["f0"], f0_test=p["f0t"])
    ok = dy.gradient_descent_mse(
        p["ntk"], p["y"], [0, 100, 2000], learning_rate=0.99 * lr_max, **kw
    )
    resid = (ok.train - p["y"]).abs().amax(dim=(1, 2))
    assert resid[2] < resid[1] < resid[0]  # bounded and converging
    with pytest.raises(ValueError, match=r"learning_rate=.*exceeds max_learning_rate"):
        dy.gradient_descent_mse(p["ntk"], p["y"], 10, learning_rate=1.01 * lr_max, **kw)
    bad = dy.gradient_descent_mse(
        p["ntk"], p["y"], [0, 100, 1000], learning_rate=1.01 * lr_max, allow_divergent=True, **kw
    )
    resid = (bad.train - p["y"]).abs().amax(dim=(1, 2))
    assert resid[2] > 100 * resid[1] > 100 * resid[0]


# --------------------------------------------------------------------------------------------
# Infinite-width ensemble and the NNGP posterior
# --------------------------------------------------------------------------------------------


def _mlp_ntk_and_outputs(net, xs):
    """Θ̂(xs, xs) and f0(xs) of a ReLU ``ARCH.network`` by the per-layer factorisation.

    Θ̂ = Σ_layers (G Gᵀ) ⊙ (ws² A Aᵀ + bs²) with A a Dense layer's inputs and G = ∂f/∂(its
    outputs) (Novak et al. 2022); wn.empirical_ntk computes the same (checked below) but with a
    per-call set-up cost that dominates at 7 points, and the ensemble needs hundreds of calls.
    """
    dense = [m for m in net if isinstance(m, layers.Dense)]
    inputs, pre = [], []
    a = xs
    for i, layer in enumerate(dense):
        inputs.append(a)
        z = layer.weight_scale * a @ layer.weight.T + layer.bias_scale * layer.bias
        pre.append(z)
        a = torch.relu(z) if i < len(dense) - 1 else z
    g = torch.ones_like(a)
    theta = torch.zeros(xs.shape[0], xs.shape[0], dtype=xs.dtype)
    for i in reversed(range(len(dense))):
        layer = dense[i]
        theta += (g @ g.T) * (layer.weight_scale**2 * inputs[i] @ inputs[i].T + layer.bias_scale**2)
        if i:
            g = (g @ (layer.weight_scale * layer.weight)) * (pre[i - 1] > 0)
    return theta, a


def _ensemble_check(n_seeds, width, z=5.0):
    """Sample mean/cov of finite networks' gradient-flow test outputs vs gp_ensemble_mse.

    Each network (seed s) gives f_t(x) = f0(x) + Θ̂(x,X) Θ̂⁻¹(I − e^{−ηΘ̂t/N})(y − f0(X)) with
    its own empirical NTK Θ̂ and initial outputs f0; over seeds these are (as width → ∞)
    Gaussian with the mean and covariance of Lee et al. eqs. 14–16. Tolerance: z standard
    errors of the Monte-Carlo estimate (mean: sqrt(Σ_ii/S); covariance entries, Gaussian:
    sqrt((Σ_ii Σ_jj + Σ_ij²)/S)) plus a finite-width bias. At width n the output covariance and
    the NTK differ from their limits by O(1/n) in expectation and Θ̂ fluctuates by O(1/√n),
    which enters the mean and covariance at second order, O(1/n); we allow 4·scale/n with
    scale the largest prior standard deviation (mean) or variance (covariance): at n = 512
    that is <1% of the scale, and an error in the formulas (a missing cross term, a wrong
    1/N) is O(scale).
    """
    gen = torch.Generator().manual_seed(10)
    d, n, m = 3, 4, 3
    x = torch.randn(n, d, generator=gen, dtype=F64)
    x_test = torch.randn(m, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    t = [0.5, 3.0]
    kern = ARCH.kernel(torch.cat([x, x_test]))
    nngp, ntk = kern.nngp, kern.ntk
    gp = dy.gp_ensemble_mse(
        nngp[:n, :n], ntk[:n, :n], nngp[n:, :n], ntk[n:, :n], nngp[n:, n:], y, t
    )
    samples = []
    xs = torch.cat([x, x_test])
    for s in range(n_seeds):
        net = ARCH.network(d, width, seed=s, dtype=F64)
        with torch.no_grad():
            th, f0 = _mlp_ntk_and_outputs(net, xs)
        if s == 0:
            torch.testing.assert_close(th, wn.empirical_ntk(net, xs), rtol=1e-10, atol=0)
            torch.testing.assert_close(f0, net(xs).detach(), rtol=1e-12, atol=1e-14)
        pred = dy.gradient_flow_mse(
            th[:n, :n], y, t, ntk_test_train=th[n:, :n], f0_train=f0[:n], f0_test=f0[n:]
        )
        samples.append(pred.test[:, :, 0])
    samples = torch.stack(samples)  # (S, T, m)
    mean = samples.mean(0)
    centred = samples - mean
    cov = torch.einsum("sti,stj->tij", centred, centred) / (n_seeds - 1)

    var = torch.diagonal(gp.covariance, dim1=1, dim2=2)  # (T, m)
    prior_scale = float(torch.diagonal(nngp[n:, n:]).max())
    se_mean = torch.sqrt(var / n_seeds)
    se_cov = torch.sqrt((var[:, :, None] * var[:, None, :] + gp.covariance**2) / n_seeds)
    bias_mean = 4 * math.sqrt(prior_scale) / width
    bias_cov = 4 * prior_scale / width
    err_mean = (mean - gp.mean[:, :, 0]).abs()
    err_cov = (cov - gp.covariance).abs()
    assert (err_mean <= z * se_mean + bias_mean).all(), (err_mean / se_mean).max()
    assert (err_cov <= z * se_cov + bias_cov).all(), (err_cov / se_cov).max()
    # The test has power: training moved the ensemble well beyond the tolerance.
    moved = (gp.covariance[1] - nngp[n:, n:]).abs()
    # Power: the untrained prior (t = 0) would fail the covariance check.
    assert (moved > z * se_cov[1] + bias_cov).any()
    return float((err_mean / se_mean).max()), float((err_cov / se_cov).max())


def test_gp_ensemble_matches_monte_carlo_wide_networks(one_thread):
    # measured: max |error|/SE = 0.6 (mean) and 1.2 (covariance) at width 512
    _ensemble_check(n_seeds=200, width=512)


@pytest.mark.slow
def test_gp_ensemble_matches_monte_carlo_wide_networks_large(one_thread):
    _ensemble_check(n_seeds=2000, width=1024)


def test_gp_ensemble_limits():
    gen = torch.Generator().manual_seed(4)
    x, xt = torch.randn(5, 3, generator=gen, dtype=F64), torch.randn(2, 3, generator=gen, dtype=F64)
    y = torch.randn(5, 2, generator=gen, dtype=F64)
    k, kt, ktt = ARCH.kernel(x), ARCH.kernel(xt, x), ARCH.kernel(xt)
    # t = 0: the prior. t = ∞ with Θ = K: the NNGP posterior.
    ens = dy.gp_ensemble_mse(k.nngp, k.ntk, kt.nngp, kt.ntk, ktt.nngp, y, [0.0, math.inf])
    assert ens.mean.shape == (2, 2, 2) and ens.covariance.shape == (2, 2, 2)
    torch.testing.assert_close(ens.mean[0], torch.zeros(2, 2, dtype=F64))
    torch.testing.assert_close(ens.covariance[0], ktt.nngp, rtol=1e-12, atol=1e-14)
    post = dy.nngp_posterior(k.nngp, kt.nngp, ktt.nngp, y, noise_variance=0.1)
    ens_k = dy.gp_ensemble_mse(
        k.nngp, k.nngp, kt.nngp, kt.nngp, ktt.nngp, y, math.inf, diag_reg=0.1
    )
    torch.testing.assert_close(ens_k.mean, post.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ens_k.covariance, post.covariance, rtol=1e-10, atol=1e-12)
    # The t = ∞ mean is NTK kernel regression.
    expected = kt.ntk @ torch.linalg.solve(k.ntk, y)
    assert rel(ens.mean[1], expected) < 1e-9


@pytest.mark.parametrize("noise", [1e-2, 0.5])
def test_nngp_posterior_matches_sklearn(noise):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import DotProduct

    gen = torch.Generator().manual_seed(5)
    x, xt = torch.randn(7, 3, generator=gen, dtype=F64), torch.randn(4, 3, generator=gen, dtype=F64)
    y = torch.randn(7, generator=gen, dtype=F64)
    joint = ARCH.kernel(torch.cat([x, xt])).nngp
    # Features Φ with Φ Φᵀ = the joint kernel, so sklearn's DotProduct kernel is the NNGP.
    lam, vec = torch.linalg.eigh(joint)
    phi = (vec * lam.clamp(min=0).sqrt()).numpy()
    gpr = GaussianProcessRegressor(
        DotProduct(sigma_0=0.0, sigma_0_bounds="fixed"), alpha=noise, optimizer=None
    ).fit(phi[:7], y.numpy())
    mean, cov = gpr.predict(phi[7:], return_cov=True)
    post = dy.nngp_posterior(joint[:7, :7], joint[7:, :7], joint[7:, 7:], y, noise_variance=noise)
    assert post.mean.shape == (1, 4, 1) and post.covariance.shape == (1, 4, 4)
    np.testing.assert_allclose(post.mean[0, :, 0].numpy(), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(post.covariance[0].numpy(), cov, rtol=1e-8, atol=1e-10)


def test_nngp_posterior_noiseless_interpolates_and_singular_needs_noise():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    y = torch.randn(5, generator=gen, dtype=F64)
    k = ARCH.kernel(x).nngp
    post = dy.nngp_posterior(k, k, k, y)  # test points = training points
    assert rel(post.mean[0, :, 0], y) < 1e-9
    assert float(post.covariance.abs().max()) < 1e-9 * float(k.abs().max())
    direct = np.linalg.solve(k.numpy() + 0.3 * np.eye(5), y.numpy())
    noisy = dy.nngp_posterior(k, k, k, y, noise_variance=0.3)
    np.testing.assert_allclose(noisy.mean[0, :, 0].numpy(), k.numpy() @ direct, rtol=1e-10)
    dup = torch.cat([x, x[:1]])
    kd = ARCH.kernel(dup).nngp  # a repeated point: singular
    with pytest.raises(ValueError, match="nngp_train_train is singular.*noise_variance"):
        dy.nngp_posterior(kd, kd, kd, torch.randn(6, dtype=F64))


# --------------------------------------------------------------------------------------------
# ODE dynamics
# --------------------------------------------------------------------------------------------


def test_ode_with_mse_matches_gradient_flow(problem):
    p = problem
    t = [3.0, 0.0, 1.0, 10.0]  # any order
    ode = dy.ode_dynamics(
        p["ntk"], p["f0"], p["y"], t,
        loss=lambda f, y: 0.5 * ((f - y) ** 2).mean(),
        ntk_test_train=p["ntk_test"], f0_test=p["f0t"],
    )  # fmt: skip
    flow = dy.gradient_flow_mse(
        p["ntk"], p["y"], t, ntk_test_train=p["ntk_test"], f0_train=p["f0"], f0_test=p["f0t"]
    )
    # measured 6e-10 (the solver's rtol=1e-8)
    assert rel(ode.train, flow.train) < 1e-6
    assert rel(ode.test, flow.test) < 1e-6


def test_ode_cross_entropy_descends_and_matches_euler(one_thread):
    gen = torch.Generator().manual_seed(7)
    n, m, k = 6, 3, 3
    x = torch.randn(n + m, 4, generator=gen, dtype=F64)
    theta = ARCH.kernel(x).ntk
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    f0 = 0.5 * torch.randn(n + m, k, generator=gen, dtype=F64)
    times = np.linspace(0.0, 4.0, 9)
    lr = 2.0
    ode = dy.ode_dynamics(
        theta[:n, :n], f0[:n], labels, times,
        ntk_test_train=theta[n:, :n], f0_test=f0[n:], learning_rate=lr,
    )  # fmt: skip
    ce = torch.stack(
        [torch.nn.functional.cross_entropy(ode.train[i], labels) for i in range(len(times))]
    )
    assert (ce[1:] < ce[:-1]).all()  # monotone: dL/dt = −η gᵀΘg ≤ 0
    correct = ode.train[-1].gather(1, labels[:, None])
    assert (correct.squeeze(1) > ode.train[0].gather(1, labels[:, None]).squeeze(1)).all()
    assert (ode.train[-1].argmax(1) == labels).all()

    # Explicit Euler in float64: first-order convergence towards the ODE solution.
    y = torch.nn.functional.one_hot(labels, k).to(F64)
    errors = []
    for h in (2e-3, 1e-3):
        f = f0.clone()
        for _ in range(round(times[-1] / h)):
            g = (torch.softmax(f[:n], 1) - y) / n
            f = f - h * lr * theta[:, :n] @ g
        errors.append(max(rel(f[:n], ode.train[-1]), rel(f[n:], ode.test[-1])))
    assert errors[1] < 1e-3
    assert 1.8 < errors[0] / errors[1] < 2.2


# --------------------------------------------------------------------------------------------
# Bad inputs: each error names the argument
# --------------------------------------------------------------------------------------------


def _bad_cases():
    k = ARCH.kernel(torch.randn(4, 2, generator=torch.Generator().manual_seed(8))).ntk
    y = torch.ones(4)
    kt = torch.ones(2, 4)
    nan = k.clone()
    nan[0, 0] = float("nan")
    asym = k.clone()
    asym[0, 1] += 1.0
    neg = -torch.eye(4)
    flow = dy.gradient_flow_mse
    return [
        (lambda: flow(torch.ones(4, 3), y, 1.0), "ntk_train_train must be a non-empty square"),
        (lambda: flow(nan, y, 1.0), "ntk_train_train contains 1 NaN"),
        (lambda: flow(asym, y, 1.0), "ntk_train_train is not symmetric"),
        (lambda: flow(neg, y, 1.0), "ntk_train_train is not positive semi-definite"),
        (lambda: flow(k, torch.ones(3), 1.0), r"y_train must have shape \(4,\)"),
        (lambda: flow(k, y, -1.0), "t must be >= 0"),
        (lambda: flow(k, y, [[1.0]]), "t must be a scalar or a 1-D"),
        (lambda: flow(k, y, 1.0, ntk_test_train=torch.ones(2, 3)), "ntk_test_train must have"),
        (lambda: flow(k, y, 1.0, f0_train=torch.ones(3, 1)), "f0_train must have shape"),
        (lambda: flow(k, y, 1.0, ntk_test_train=kt, f0_test=torch.ones(3)), "f0_test must have"),
        (lambda: flow(k, y, 1.0, f0_test=torch.ones(2)), "f0_test was given without"),
        (lambda: flow(k, y, 1.0, learning_rate=0.0), "learning_rate must be > 0"),
        (lambda: flow(k, y, 1.0, loss="l2"), "loss must be one of"),
        (lambda: flow(k, y, 1.0, diag_reg=-1.0), "diag_reg must be >= 0"),
        (lambda: dy.gradient_descent_mse(k, y, 1.5), "steps must be integers"),
        (lambda: dy.gradient_descent_mse(k, y, -1), "steps must be >= 0"),
        (lambda: dy.max_learning_rate(neg), "ntk_train_train is not positive"),
        (
            lambda: dy.gp_ensemble_mse(k, k, kt, torch.ones(3, 4), torch.eye(2), y, 1.0),
            "ntk_test_train must have shape",
        ),
        (
            lambda: dy.gp_ensemble_mse(k, k, kt, kt, torch.eye(3), y, 1.0),
            "nngp_test_test must have shape",
        ),
        (
            lambda: dy.gp_ensemble_mse(torch.eye(3), k, kt, kt, torch.eye(2), y, 1.0),
            "nngp_train_train must have shape",
        ),
        (lambda: dy.nngp_posterior(k, kt, torch.eye(2), y, noise_variance=-1), "noise_variance"),
        (lambda: dy.ode_dynamics(k, torch.zeros(4, 3), y, 1.0, loss="hinge"), "loss must be"),
        (lambda: dy.ode_dynamics(k, torch.zeros(4, 3), y * 5, 1.0), "y_train of shape"),
        (lambda: dy.ode_dynamics(k, torch.zeros(3, 3), y, 1.0), "f0_train must have shape"),
        (lambda: dy.ode_dynamics(k, torch.zeros(4, 3), y, math.inf), "t must be finite"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_name_the_argument(case):
    call, match = _bad_cases()[case]
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("driver", ["stevd", "stemr"])
def test_tridiagonal_drivers_give_the_same_predictions(driver, monkeypatch):
    # dstevd (divide and conquer) where SciPy has it, MRRR (dstemr) where it does not.
    if driver == "stevd":
        assert dy._TRIDIAGONAL_DRIVER == "stevd"  # this SciPy offers it
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(60, 70, generator=gen, dtype=F64)
    k = a @ a.T / 70 + 0.1 * torch.eye(60, dtype=F64)
    kx = torch.randn(7, 60, generator=gen, dtype=F64)
    y = torch.randn(60, 2, generator=gen, dtype=F64)
    t = [0.5, 3.0, 40.0]
    monkeypatch.setattr(dy, "_TRIDIAGONAL_DRIVER", driver)
    got = dy.gradient_flow_mse(k, y, t, ntk_test_train=kx)
    lam, v = np.linalg.eigh(k.numpy())
    n = y.numel()
    for i, ti in enumerate(t):
        decay = np.exp(-lam * ti / n)
        train = y.numpy() - v @ (decay[:, None] * (v.T @ y.numpy()))
        test = kx.numpy() @ v @ (((1 - decay) / lam)[:, None] * (v.T @ y.numpy()))
        np.testing.assert_allclose(got.train[i].numpy(), train, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.test[i].numpy(), test, rtol=1e-10, atol=1e-12)
