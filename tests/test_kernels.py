"""The closed-form NNGP/NTK engine: reference values, H-infinity, numerics, tiling, errors, CUDA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import widenet as wn
from widenet import activations as A

F64 = torch.float64
DATA = Path(__file__).parent / "data" / "nt_fc_kernels.json"
REF = json.loads(DATA.read_text())
KEYS = ("nngp12", "ntk12", "nngp11", "ntk11")


def _case_id(c):
    return f"{c['activation']}-d{c['depth']}-w{c['w_std']:g}-b{c['b_std']:g}"


def _arch(case):
    act = A.leaky_relu(0.1) if case["activation"] == "leaky_relu" else case["activation"]
    return wn.mlp(case["depth"], act, w_std=case["w_std"], b_std=case["b_std"])


def _rel(a, b):
    return float(torch.linalg.norm(a.double() - b) / torch.linalg.norm(b))


# --- 1. neural-tangents reference ------------------------------------------------------------


@pytest.mark.parametrize("case", REF["cases"], ids=[_case_id(c) for c in REF["cases"]])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_matches_neural_tangents(case, dtype):
    x1 = torch.tensor(REF["x1"], dtype=dtype)
    x2 = torch.tensor(REF["x2"], dtype=dtype)
    arch = _arch(case)
    k12, k11 = arch.kernel(x1, x2), arch.kernel(x1)
    got = dict(zip(KEYS, (k12.nngp, k12.ntk, k11.nngp, k11.ntk), strict=True))
    # float64: the closed forms are exact, so only rounding remains (measured <= 8e-16); the
    # acceptance bar is 1e-6. float32: measured <= 7e-7 (sin, depth 4); bar 1e-4.
    tol = 1e-6 if dtype == F64 else 1e-4
    for key in KEYS:
        assert got[key].dtype == dtype
        err = _rel(got[key], torch.tensor(case[key], dtype=F64))
        assert err <= tol, (key, err)


def test_reference_covers_every_activation():
    assert {c["activation"] for c in REF["cases"]} == {
        "relu",
        "erf",
        "leaky_relu",
        "gelu",
        "identity",
        "sin",
    }


def test_identity_kernel_by_hand():
    # Linear network: NNGP = w^2 (w^2 x.x'/d + b^2) + b^2, NTK = 2 NNGP-like sum (depth 1).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=F64)
    w2, b2 = 1.5**2, 0.4**2
    k0 = x @ x.T / 3
    k1 = w2 * k0 + b2
    nngp = w2 * k1 + b2
    ntk = nngp + w2 * k1
    k = wn.mlp(1, "identity", w_std=1.5, b_std=0.4).kernel(x)
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-14, atol=1e-14)


# --- 5. Du et al. H-infinity -----------------------------------------------------------------


def test_h_infinity_monte_carlo():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=F64)
    h = wn.h_infinity(x)
    m = 400_000
    w = torch.randn(m, 4, generator=g, dtype=F64)
    on = (w @ x.T >= 0).to(F64)  # (m, n) indicators
    est = (on.T @ on) / m * (x @ x.T)
    p = (on.T @ on) / m
    # Per-entry MC std of the mean: |x_i . x_j| sqrt(p (1 - p) / m); allow 5 of them.
    sd = (x @ x.T).abs() * torch.sqrt(p * (1 - p) / m)
    assert bool(((h - est).abs() <= 5 * sd + 1e-12).all())
    assert torch.equal(h, h.T)
    assert float(torch.linalg.eigvalsh(h)[0]) >= -1e-12 * float(h.diagonal().max())
    # x2 form agrees with the symmetric one.
    torch.testing.assert_close(wn.h_infinity(x, x[:2]), h[:, :2], rtol=1e-13, atol=1e-15)


def test_h_infinity_by_hand():
    e = torch.eye(3, dtype=F64)
    x = torch.stack([e[0], e[1], -e[0], 2 * e[0], torch.zeros(3, dtype=F64)])
    h = wn.h_infinity(x)
    # parallel unit: 1 * (pi - 0) / 2pi = 1/2; orthogonal: x.x' = 0; antiparallel: pi - pi = 0;
    # 2 e0 vs e0: 2 * 1/2; zero vector: 0.
    assert h[0, 0] == pytest.approx(0.5, abs=1e-15)
    assert h[0, 1] == pytest.approx(0.0, abs=1e-15)
    assert h[0, 2] == pytest.approx(0.0, abs=1e-15)
    assert h[0, 3] == pytest.approx(1.0, abs=1e-15)
    assert h[3, 3] == pytest.approx(2.0, abs=1e-15)
    assert float(h[4].abs().max()) == 0.0
    # H-infinity is the first-layer part of the NTK of the bias-free depth-1 relu net (NTK
    # parameterization, w_std = 1): Theta = NNGP + Tdot(K1) K1 with K1 = x.x'/d, so
    # Theta - NNGP = H / d.
    theta = wn.mlp(1, "relu").kernel(x, get="ntk").ntk
    d = 3
    nngp_part = wn.mlp(1, "relu").kernel(x, get="nngp").nngp
    torch.testing.assert_close(theta - nngp_part, h / d, rtol=1e-13, atol=1e-15)


# --- 6. numerics -----------------------------------------------------------------------------

NUMERIC_ACTS = {
    "relu": A.relu,
    "leaky_relu": lambda: A.leaky_relu(0.1),
    "abrelu": lambda: A.abrelu(-0.5, 2.0),
    "erf": A.erf,
    "gelu": A.gelu,
    "sin": A.sin,
    "cos": A.cos,
    "identity": A.identity,
    "tanh": lambda: A.get("tanh"),
}


def _inputs(kind, dtype=F64):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 5, generator=g, dtype=F64)
    base = base / base.norm(dim=1, keepdim=True) * math.sqrt(5) * 0.6  # |x|^2/d = 0.36
    z = torch.zeros(2, 5, dtype=F64)
    x = {
        "zeros": torch.cat([z, base]),
        "duplicates": torch.cat([base, base[:2]]),
        "pm_collinear": torch.cat([base[:2], -base[:1], 3 * base[:1], base[2:]]),
        "huge_1e6": base * 1e6,
        "huge_1e15": base * 1e15,
        "tiny_1e-20": base * 1e-20,
        "mixed_scales": torch.cat([base[:2] * 1e-20, base[2:], base[:1] * 1e6]),
    }[kind]
    return x.to(dtype)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("b_std", [0.0, 0.5])
@pytest.mark.parametrize(
    "kind",
    [
        "zeros",
        "duplicates",
        "pm_collinear",
        "huge_1e6",
        "huge_1e15",
        "tiny_1e-20",
        "mixed_scales",
    ],
)
def test_numerics_symmetric_psd(kind, b_std, parameterization):
    x = _inputs(kind)
    for name, make in NUMERIC_ACTS.items():
        # Quadrature (tanh) is only accurate for moderate variances (test_activations): keep it
        # to the inputs with |x|^2/d <= ~3 (its PSD-ness is only as good as its accuracy).
        if name == "tanh" and kind.startswith(("huge", "mixed")):
            continue
        arch = wn.mlp(2, make(), w_std=1.2, b_std=b_std, parameterization=parameterization)
        width = 50 if parameterization == "standard" else None
        k = arch.kernel(x, width=width)
        for mat in (k.nngp, k.ntk):
            assert bool(torch.isfinite(mat).all()), (name, kind)
            assert torch.equal(mat, mat.T), (name, kind)
            ev = torch.linalg.eigvalsh(mat)
            # A PSD kernel computed in float64 is PSD up to rounding: eigvalsh's backward error
            # is ~n eps ||K|| ~ 1e-15 ||K||, the duals add a few ulps per entry and layer; 1e-6
            # leaves room for tanh's quadrature error (<= 2e-7 at these variances).
            assert float(ev[0]) >= -1e-6 * float(ev[-1].abs()), (name, kind, ev)


def test_numerics_float32_huge_and_overflow():
    x = _inputs("huge_1e6", torch.float32)
    for make in NUMERIC_ACTS.values():
        k = wn.mlp(2, make(), w_std=1.2, b_std=0.5).kernel(x)
        assert bool(torch.isfinite(k.nngp).all()) and bool(torch.isfinite(k.ntk).all())
        assert torch.equal(k.ntk, k.ntk.T)
    # |x|^2 ~ 1e50 overflows float32: an error, not inf.
    big = _inputs("zeros", torch.float32)[2:] * 1e25
    with pytest.raises(FloatingPointError, match="overflow"):
        wn.mlp(2, "relu").kernel(big)
    with pytest.raises(FloatingPointError, match="overflow"):
        wn.mlp(2, "relu").kernel(big, big[:2])
    # The same inputs are fine in float64.
    k = wn.mlp(2, "relu").kernel(big, dtype=F64)
    assert k.ntk.dtype == F64 and bool(torch.isfinite(k.ntk).all())


def test_numerics_zero_rows_values():
    x = _inputs("zeros")
    k = wn.mlp(2, "relu", b_std=0.0).kernel(x)
    # With b_std = 0 a zero input has zero kernel (relu is homogeneous).
    assert float(k.nngp[:2].abs().max()) == 0.0 and float(k.ntk[:2].abs().max()) == 0.0
    k = wn.mlp(2, "relu", b_std=0.5).kernel(x)
    assert bool((k.nngp[0, 0] > 0) & (k.ntk[0, 0] > 0))
    torch.testing.assert_close(k.nngp[0], k.nngp[1], rtol=0, atol=0)


def test_collinear_correlations():
    x = _inputs("pm_collinear")
    k = wn.mlp(1, "relu").kernel(x)
    # relu, bias-free: x vs -x gives 0 covariance after the relu; x vs 3x gives 3 K(x, x).
    assert float(k.nngp[0, 2].abs()) <= 1e-15 * float(k.nngp[0, 0])
    torch.testing.assert_close(k.nngp[0, 3], 3 * k.nngp[0, 0], rtol=1e-14, atol=0)
    torch.testing.assert_close(k.ntk[0, 3], 3 * k.ntk[0, 0], rtol=1e-14, atol=0)


# --- 7. tiling -------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu"])
def test_tiling_matches_untiled(activation):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(11, 4, generator=g, dtype=F64)
    x2 = torch.randn(8, 4, generator=g, dtype=F64)
    arch = wn.mlp(3, activation, w_std=1.3, b_std=0.2)
    full, full12 = arch.kernel(x1), arch.kernel(x1, x2)
    for t in (1, 3, 7, 11):
        k, k12 = arch.kernel(x1, tile=t), arch.kernel(x1, x2, tile=t)
        for a, b in ((k.nngp, full.nngp), (k.ntk, full.ntk), (k12.nngp, full12.nngp)):
            # Same arithmetic per entry; only the diagonal-block symmetrisation and the
            # entries' block placement differ -> rounding-level agreement.
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(k12.ntk, full12.ntk, rtol=1e-12, atol=1e-14)
        assert torch.equal(k.ntk, k.ntk.T)
    # x2 the very tensor x1 takes the symmetric path: bit-identical to x2 = None.
    ident = arch.kernel(x1, x1, tile=3)
    assert torch.equal(ident.ntk, arch.kernel(x1, tile=3).ntk)
    # x2 = x1 (general path) vs x2 = None (symmetric path).
    same = arch.kernel(x1, x1.clone(), tile=3)
    torch.testing.assert_close(same.nngp, full.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(same.ntk, full.ntk, rtol=1e-12, atol=1e-14)


def test_tiling_quadrature_activation():
    # A quadrature dual is not symmetric under (q1, q2) swap beyond its own accuracy (node
    # placement differs), and which of T(q_i, c, q_j) / T(q_j, c, q_i) an entry of a symmetric
    # kernel gets depends on the tiling. So tiled == untiled only to the quadrature accuracy:
    # with |x|^2/d = 0.5 and w_std = 1 every variance is <= ~0.6, where tanh's default rule is
    # good to ~1e-12 (documented in widenet.activations); the bound is that of the older
    # 48-node Gauss-Hermite rule, kept as a loose guard.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=g, dtype=F64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(2.0)
    arch = wn.mlp(2, "tanh", w_std=1.0, b_std=0.1)
    full = arch.kernel(x)
    for t in (2, 9):
        k = arch.kernel(x, tile=t)
        torch.testing.assert_close(k.nngp, full.nngp, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(k.ntk, full.ntk, rtol=1e-7, atol=1e-9)
        assert torch.equal(k.ntk, k.ntk.T)
    torch.testing.assert_close(arch.kernel(x, x[:3]).ntk, full.ntk[:, :3], rtol=1e-7, atol=1e-9)


def test_progress_bar_does_not_change_the_kernel():
    x = torch.randn(10, 3, dtype=F64)
    arch = wn.mlp(2, "relu", b_std=0.1)
    for x2 in (None, x[:4]):
        shown = arch.kernel(x, x2, tile=3, progress=True)
        assert torch.equal(shown.ntk, arch.kernel(x, x2, tile=3).ntk)


def test_kernel_tiles_upper_triangle_and_assembly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g, dtype=F64)
    arch = wn.mlp(2, "erf", b_std=0.1)
    full = arch.kernel(x)
    tiles = list(arch.kernel_tiles(x, tile=3))
    assert all(isinstance(t, wn.KernelTile) for t in tiles)
    assert all(t.rows.start <= t.cols.start for t in tiles)
    assert len(tiles) == 4 * 5 // 2  # ceil(10/3) = 4 row blocks, upper triangle incl. diagonal
    out = torch.full((10, 10), float("nan"), dtype=F64)
    for t in tiles:
        out[t.rows, t.cols] = t.kernel.ntk
        out[t.cols, t.rows] = t.kernel.ntk.T
    # Equal to rounding, not bit for bit: a 3x3 tile and the 10x10 block run the erf dual's
    # vectorised transcendental functions with other vector/remainder splits, which differ in
    # the last bit on some CPUs (5e-17 on entries of size 1 on a Xeon with AVX-512); a
    # misplaced tile is O(1) off.
    scale = float(full.ntk.abs().max())
    torch.testing.assert_close(out, full.ntk, rtol=0, atol=1e-14 * scale)
    tiles12 = list(arch.kernel_tiles(x, x[:4], tile=3))
    assert len(tiles12) == 4 * 2
    out = torch.empty(10, 4, dtype=F64)
    for t in tiles12:
        out[t.rows, t.cols] = t.kernel.nngp
    ref = arch.kernel(x, x[:4]).nngp
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14 * float(ref.abs().max()))


def test_get_selects_kernels():
    x = torch.randn(4, 3, dtype=F64)
    arch = wn.mlp(2, "relu")
    k = arch.kernel(x, get="nngp")
    assert k.ntk is None and k.nngp.shape == (4, 4) and k.shape == (4, 4)
    k = arch.kernel(x, get="ntk")
    assert k.nngp is None and k.ntk.shape == (4, 4) and k.shape == (4, 4)
    both = arch.kernel(x)
    torch.testing.assert_close(k.ntk, both.ntk, rtol=0, atol=0)
    torch.testing.assert_close(arch.kernel(x, get=("nngp",)).nngp, both.nngp, rtol=0, atol=0)


def _with_repeats(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 6, generator=g, dtype=F64)
    x[3] = x[50]  # a duplicated input
    x[9] = 0.0  # a zero input (zero variance with b_std = 0)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_row_strips_change_no_bit(monkeypatch, dtype, activation):
    # Entries are independent: running a block in strips of 1 row or in one piece is the same
    # arithmetic per entry (relu: the fused recursion; erf: the duals).
    from widenet import kernels

    x = _with_repeats(dtype)
    for b_std in (0.0, 0.2):
        arch = wn.mlp(3, activation, w_std=1.4, b_std=b_std)
        monkeypatch.setattr(kernels, "STRIP_ENTRIES", 1)
        strips = arch.kernel(x, tile=32), arch.kernel(x, x[:20].clone(), tile=32)
        monkeypatch.setattr(kernels, "STRIP_ENTRIES", 1 << 40)
        whole = arch.kernel(x, tile=32), arch.kernel(x, x[:20].clone(), tile=32)
        for a, b in zip(strips, whole, strict=True):
            assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_fused_relu_recursion_matches_the_duals(monkeypatch, dtype):
    # The fused ReLU recursion (constants folded, rho pinned to 1 where inputs are equal)
    # against the layer-by-layer recursion through the activation's dual maps: rounding-level
    # agreement, relative to the kernel's largest entry (measured 3.3e-16 in float64, 1.9e-7 in
    # float32; bars 1e-14 and 2e-6).
    from widenet.kernels import FCRecursion

    x = _with_repeats(dtype)
    tol = 1e-14 if dtype == F64 else 2e-6
    for depth, w_std, b_std in ((1, 1.0, 0.0), (3, math.sqrt(2.0), 0.1), (4, 1.3, 0.0)):
        arch = wn.mlp(depth, "relu", w_std=w_std, b_std=b_std)
        fused = arch.kernel(x, tile=16), arch.kernel(x, x[:30].clone(), tile=16)
        with monkeypatch.context() as m:
            m.setattr(FCRecursion, "fused", property(lambda self: False))
            duals = arch.kernel(x, tile=16), arch.kernel(x, x[:30].clone(), tile=16)
        for a, b in zip(fused, duals, strict=True):
            for u, v in ((a.nngp, b.nngp), (a.ntk, b.ntk)):
                # Relative to the kernel's scale: entries near rho = -1 are tiny differences
                # (g ~ (pi - theta)^3 cancels), rounded in both forms alike.
                torch.testing.assert_close(u, v, rtol=tol, atol=tol * float(v.abs().max()))
        k = fused[0]
        assert torch.equal(k.ntk, k.ntk.T) and torch.equal(k.nngp, k.nngp.T)
        # Equal inputs give equal rows, bit for bit; the diagonal is the kernel_diagonal.
        assert torch.equal(k.ntk[3], k.ntk[50]) and torch.equal(k.nngp[3], k.nngp[50])
        d = arch.kernel_diagonal(x)
        torch.testing.assert_close(k.ntk.diagonal(), d.ntk, rtol=4 * tol, atol=0)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_kernel_written_by_the_workers_equals_its_tiles(monkeypatch, activation):
    # kernel() writes each tile (and its mirror) into the outputs in the pool's workers;
    # kernel_tiles() yields the same tiles: the assembled result must be the same bits.
    from widenet import kernels

    monkeypatch.setattr(kernels, "SMALL_KERNEL_ENTRIES", 0)  # the pool, not the small path
    x = _with_repeats(torch.float32)
    arch = wn.mlp(3, activation, w_std=1.4, b_std=0.1)
    for x2 in (None, x[:45].clone()):
        full = arch.kernel(x, x2, tile=16)
        for what in ("nngp", "ntk"):
            out = torch.full(full.shape, float("nan"))
            for t in arch.kernel_tiles(x, x2, tile=16):
                block = getattr(t.kernel, what)
                out[t.rows, t.cols] = block
                if x2 is None:
                    out[t.cols, t.rows] = block.T
            assert torch.equal(out, getattr(full, what)), what
        only = arch.kernel(x, x2, tile=16, get="ntk")
        assert only.nngp is None and torch.equal(only.ntk, full.ntk)


def test_tile_memory_bounded():
    """For n = 3000, tile = 256: no intermediate in the dual exceeds tile^2 elements."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g)
    base = A.erf()
    largest = [0]

    def spy(q1, c, q2, need_dot):
        largest[0] = max(largest[0], c.numel(), q1.numel(), q2.numel())
        return base.dual(q1, c, q2, need_dot)

    act = A.Activation("erf_spy", torch.erf, spy)
    k = wn.mlp(2, act).kernel(x, tile=256)
    assert k.ntk.shape == (3000, 3000)
    # Every dual call sees one tile (or a vector of diagonals), never a full n x n block.
    assert 0 < largest[0] <= 256 * 256
    torch.testing.assert_close(k.ntk[:5, :5], wn.mlp(2, "erf").kernel(x[:5]).ntk)


# --- standard parameterization ---------------------------------------------------------------


def test_standard_parameterization_ntk_linear_in_width():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=F64)
    arch = wn.mlp(2, "relu", w_std=1.2, b_std=0.1, parameterization="standard")
    k1, k2, k4 = (arch.kernel(x, width=n) for n in (100, 200, 400))
    # Theta(n) is affine in n to leading order? Each layer's own term is n E[phi phi] and the
    # backward factor is O(1), so Theta(n) = A n + B exactly in this recursion: second
    # differences vanish.
    torch.testing.assert_close(k4.ntk - k2.ntk, 2 * (k2.ntk - k1.ntk), rtol=1e-10, atol=1e-10)
    assert bool((k2.ntk > k1.ntk).all())
    torch.testing.assert_close(k1.nngp, wn.mlp(2, "relu", w_std=1.2, b_std=0.1).kernel(x).nngp)


# --- 9. bad input ----------------------------------------------------------------------------

X = torch.randn(4, 3, dtype=F64)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: wn.mlp(0), ValueError, "depth"),
        (lambda: wn.mlp(2.0), ValueError, "depth"),
        (lambda: wn.mlp("2"), ValueError, "depth"),
        (lambda: wn.mlp(1, w_std=-1.0), ValueError, "w_std"),
        (lambda: wn.mlp(1, b_std=-0.1), ValueError, "b_std"),
        (lambda: wn.mlp(1, w_std=float("nan")), ValueError, "w_std"),
        (lambda: wn.mlp(1, b_std=float("nan")), ValueError, "b_std"),
        (lambda: wn.mlp(1, "swish"), ValueError, "unknown activation.*relu.*tanh"),
        (lambda: wn.mlp(1, "abrelu"), ValueError, "abrelu"),
        (lambda: wn.mlp(1, out_dim=0), ValueError, "out_dim"),
        (lambda: wn.mlp(1, parameterization="foo"), ValueError, "parameterization"),
        (lambda: wn.mlp(1).kernel(X[0]), ValueError, "x1"),
        (lambda: wn.mlp(1).kernel(X[None]), ValueError, "x1"),
        (lambda: wn.mlp(1).kernel(X, X[0]), ValueError, "x2"),
        (lambda: wn.mlp(1).kernel(X.clone().fill_(float("nan"))), ValueError, "x1"),
        (lambda: wn.mlp(1).kernel(X, X.clone().fill_(float("inf"))), ValueError, "x2"),
        (lambda: wn.mlp(1).kernel(X, torch.randn(2, 4, dtype=F64)), ValueError, "x1 and x2"),
        (lambda: wn.mlp(1).kernel(X, X.float()), TypeError, "x1 and x2.*dtype"),
        (lambda: wn.mlp(1).kernel(X, tile=0), ValueError, "tile"),
        (lambda: wn.mlp(1).kernel(X, tile=2.5), ValueError, "tile"),
        (lambda: list(wn.mlp(1).kernel_tiles(X, tile=0)), ValueError, "tile"),
        (lambda: wn.mlp(1).kernel(X, get="foo"), ValueError, "get"),
        (lambda: wn.mlp(1).kernel(X, get=()), ValueError, "get"),
        (lambda: wn.mlp(1, parameterization="standard").kernel(X), ValueError, "width"),
        (lambda: wn.mlp(1).kernel(X, width=10), ValueError, "width"),
        (
            lambda: wn.mlp(1, parameterization="standard").kernel(X, width=0),
            ValueError,
            "width",
        ),
        (lambda: wn.mlp(1).network(3, 0), ValueError, "width"),
        (lambda: wn.mlp(1).network(0, 3), ValueError, "in_dim"),
        (lambda: wn.h_infinity(X[0]), ValueError, "x1"),
        (lambda: wn.h_infinity(X, X.float()), TypeError, "dtype"),
    ],
    ids=[
        "depth0",
        "depth-float",
        "depth-str",
        "w_std-neg",
        "b_std-neg",
        "w_std-nan",
        "b_std-nan",
        "unknown-activation",
        "abrelu-string",
        "out_dim0",
        "parameterization",
        "x1-1d",
        "x1-3d",
        "x2-1d",
        "x1-nan",
        "x2-inf",
        "feature-mismatch",
        "dtype-mismatch",
        "tile0",
        "tile-float",
        "tiles-tile0",
        "get-foo",
        "get-empty",
        "standard-no-width",
        "ntk-with-width",
        "standard-width0",
        "network-width0",
        "network-in_dim0",
        "hinf-1d",
        "hinf-dtype",
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- 10. CUDA --------------------------------------------------------------------------------


@pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)
@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh"])
def test_cuda_matches_cpu(activation):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(37, 6, generator=g, dtype=F64)
    x2 = torch.randn(11, 6, generator=g, dtype=F64)
    arch = wn.mlp(3, activation, w_std=1.3, b_std=0.2)
    for args in ((x1,), (x1, x2)):
        cpu = arch.kernel(*args, tile=16)
        gpu = arch.kernel(*(a.cuda() for a in args), tile=16)
        for a, b in ((gpu.nngp, cpu.nngp), (gpu.ntk, cpu.ntk)):
            assert a.device.type == "cuda"
            # Same float64 arithmetic; only library-level rounding (matmul, transcendental
            # functions) differs between devices.
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)
    h = wn.h_infinity(x1.cuda())
    assert h.device.type == "cuda"
    torch.testing.assert_close(h.cpu(), wn.h_infinity(x1), rtol=1e-10, atol=1e-12)
    net = arch.network(6, 32, seed=0, device="cuda")
    assert next(net.parameters()).device.type == "cuda"


def _partition(ids):
    """The partition of row indices that ``ids`` induces (as a set of frozensets)."""
    groups: dict = {}
    for i, g in enumerate(ids.tolist()):
        groups.setdefault(g, set()).add(i)
    return {frozenset(s) for s in groups.values()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_duplicate_ids_same_partition_as_torch_unique(dtype, seed):
    # The reference: torch.unique(dim=0) on all rows, an exact lexicographic comparison.
    # Entries from {-1, 0, 1} in d = 3 give 27 distinct rows, so 40-60 rows always repeat;
    # seeds 0-1 also draw the all-distinct case (Gaussian rows) to see (None, None).
    gen = torch.Generator().manual_seed(seed)
    from widenet.kernels import duplicate_ids

    for gaussian in (False, True):

        def draw(n, gen=gen, gaussian=gaussian):
            if gaussian:
                return torch.randn(n, 3, generator=gen, dtype=dtype)
            return torch.randint(-1, 2, (n, 3), generator=gen).to(dtype)

        x1, x2 = draw(40), draw(20)
        for a, b in ((x1, None), (x1, x2)):
            g1, g2 = duplicate_ids(a, b)
            xs = a if b is None else torch.cat([a, b])
            _, inv, counts = torch.unique(xs, dim=0, return_inverse=True, return_counts=True)
            if bool((counts == 1).all()):
                assert g1 is None and g2 is None
                continue
            assert g1 is not None
            ours = g1 if b is None else torch.cat([g1, g2])
            assert _partition(ours) == _partition(inv)


def test_duplicate_ids_signed_zero_and_single_rows():
    from widenet.kernels import duplicate_ids

    x = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0]])
    g1, g2 = duplicate_ids(x, None)  # 0.0 == -0.0: rows 0 and 1 are the same input
    assert g1[0] == g1[1] != g1[2] and torch.equal(g2, g1)
    assert duplicate_ids(x[:1], None) == (None, None)
    g1, g2 = duplicate_ids(x[2:], x[:1])  # across the two sets only: none
    assert (g1, g2) == (None, None)
    g1, g2 = duplicate_ids(x[2:], torch.tensor([[5.0, 5.0], [2.0, 3.0]]))
    assert g1[0] == g2[1] != g2[0]


# --------------------------------------------------------------------------------------------
# The fused ReLU recursion compiled by TorchScript (the GIL-free strips) and its eager twin
# --------------------------------------------------------------------------------------------


def _fused_cases(dtype):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1100, 30, generator=gen, dtype=dtype)
    x2 = torch.randn(600, 30, generator=gen, dtype=dtype)
    x[7] = x[3]  # duplicates within x and across x, x2: pinned correlations
    x2[5] = x[9]
    x[20] = 0.0  # a zero input: zero variances at every layer with b = 0
    arch = wn.mlp(3, "relu", 2**0.5, 0.0)
    return [
        arch.kernel(x),
        arch.kernel(x, x2),
        arch.kernel(x, get="nngp"),
        arch.kernel(x, tile=128),
        wn.mlp(2, "relu", 1.3, 0.2).kernel(x2),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_compiled_fused_recursion_equals_the_eager_one(dtype, monkeypatch):
    from widenet import kernels as K

    compiled = K._compiled_relu_strips()
    assert isinstance(compiled, torch.jit.ScriptFunction)  # TorchScript works in this torch
    assert K.relu_strips_compiled()
    got = _fused_cases(dtype)
    monkeypatch.setattr(K, "_RELU_STRIPS", [K._relu_strips])  # the eager function
    assert not K.relu_strips_compiled()
    want = _fused_cases(dtype)
    for g, w in zip(got, want, strict=True):
        for a, b in ((g.nngp, w.nngp), (g.ntk, w.ntk)):
            if b is not None:
                assert torch.equal(a, b)
    assert torch.equal(got[0].ntk, got[0].ntk.T)  # a symmetric kernel stays exactly symmetric
    assert torch.equal(got[0].nngp[7], got[0].nngp[3])  # duplicates stay identical


def test_fused_recursion_falls_back_to_eager_without_torchscript(monkeypatch):
    from widenet import kernels as K

    def broken(fn):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "script", broken)
    monkeypatch.setattr(K, "_RELU_STRIPS", [])
    assert K._compiled_relu_strips() is K._relu_strips
    assert not K.relu_strips_compiled()
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    k = wn.mlp(2, "relu", 2**0.5, 0.1).kernel(x)
    ref = wn.mlp(2, "relu", 2**0.5, 0.1).kernel(x, x.clone())  # x2 given: same values
    assert torch.allclose(k.ntk, ref.ntk, rtol=1e-13, atol=0)
    monkeypatch.setattr(K, "_RELU_STRIPS", [])
    monkeypatch.setattr(K, "USE_TORCHSCRIPT", False)
    assert K._compiled_relu_strips() is K._relu_strips
