"""Kernels on disk (widenet.scale): bit-for-bit equality with the in-memory engine, resume after
SIGKILL, refused mismatching stores, schedulers, and the solvers against dense references."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import widenet as wn
from widenet import scale

ARCH = wn.mlp(3, "relu", math.sqrt(2.0), 0.1)


def _x(n, d=5, seed=0, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _equal(store, kernel, which):
    got = store.load(which, dtype=kernel.dtype)
    return torch.equal(got, kernel)


# ---- writing: equal to the in-memory engine --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_store_equals_in_memory_bit_for_bit(tmp_path, dtype):
    # Same tiler, same tile: the same floating-point operations, so the same bits.
    x = _x(70, dtype=dtype)
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "K.zarr", tile=16)
    k = ARCH.kernel(x, tile=16)
    assert _equal(st, k.nngp, "nngp") and _equal(st, k.ntk, "ntk")
    # Only the upper triangle was computed: 5 tile rows -> 15 tiles, not 25.
    assert len(st.written_tiles) == 15 and all(i <= j for i, j in st.written_tiles)
    # The store is an ordinary full Zarr array for any reader (mirrored lower tiles).
    raw = zarr.open_array(str(tmp_path / "K.zarr"), path="ntk", mode="r")[:]
    assert raw.dtype == np.dtype(str(dtype).removeprefix("torch."))
    np.testing.assert_array_equal(raw, raw.T)
    meta = st.meta
    assert meta["architecture"]["activation"] == "relu" and meta["architecture"]["depth"] == 3
    assert meta["tile"] == 16 and meta["widenet_version"] == wn.__version__
    assert (
        meta["dtype"] == str(dtype).removeprefix("torch.")
        and len(meta["inputs"]["x1_sha256"]) == 64
    )


def test_cross_kernel_and_single_kernel(tmp_path):
    x1, x2 = _x(37, seed=1), _x(50, seed=2)
    st = scale.kernel_to_zarr(ARCH, x1, x2, out=tmp_path / "X.zarr", tile=16, get="nngp")
    assert st.kernels == ("nngp",) and st.shape == (37, 50) and not st.symmetric
    assert len(st.written_tiles) == 3 * 4
    assert _equal(st, ARCH.kernel(x1, x2, tile=16).nngp, "nngp")
    with pytest.raises(ValueError, match="which must be one of"):
        st.load("ntk")


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiles_computed_in_blocks_equal_in_memory_with_that_tile(tmp_path, symmetric):
    # A 32-tile assembled from 8-blocks (mirrored inside diagonal tiles) is arch.kernel's own
    # assembly at tile=8: equal bits; a tile computed whole (tile=32) differs by rounding on
    # the blocks' diagonals, which shows that the blocks are really used.
    x1, x2 = _x(75, seed=3), (None if symmetric else _x(41, seed=4))
    st = scale.kernel_to_zarr(ARCH, x1, x2, out=tmp_path / "K.zarr", tile=32, block=8)
    assert st.meta["block"] == 8 and st.meta["tile"] == 32
    k8, k32 = ARCH.kernel(x1, x2, tile=8), ARCH.kernel(x1, x2, tile=32)
    assert _equal(st, k8.nngp, "nngp") and _equal(st, k8.ntk, "ntk")
    if symmetric:
        assert not torch.equal(k8.ntk, k32.ntk)
    # Default: the engine's 512 where it divides the tile, else the tile itself.
    assert scale._block_size(None, 4096) == 512 and scale._block_size(None, 100) == 100
    with pytest.raises(ValueError, match="block must divide tile"):
        scale.kernel_to_zarr(ARCH, x1, out=tmp_path / "B.zarr", tile=32, block=7)
    with pytest.raises(ValueError, match="block applies to an architecture"):
        scale.kernel_to_zarr(ARCH.network(5, 8), x1, out=tmp_path / "C.zarr", get="ntk", block=4)


def _supports_o_direct(folder: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_chunks_written_unbuffered_where_possible(tmp_path, monkeypatch):
    # Chunks whose length is a multiple of 4096 B (32 x 32 float64 = 8 KiB) go through
    # O_DIRECT; others (16 x 16 float64 = 2 KiB), and any file system refusing O_DIRECT,
    # through zarr's buffered LocalStore, with the same result.
    calls = []
    real = scale._put_unbuffered

    def spy(path, value):
        done = real(path, value)
        calls.append((path.parts[-4], done))  # .../K.zarr/<array>/c/<i>/<j>
        return done

    monkeypatch.setattr(scale, "_put_unbuffered", spy)
    x = _x(64, dtype=torch.float64)
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "A.zarr", tile=32)
    direct = {name for name, done in calls if done}
    assert direct == ({"nngp", "ntk"} if _supports_o_direct(tmp_path) else set())
    assert _equal(st, ARCH.kernel(x, tile=32).ntk, "ntk")
    # No scan of each chunk for the fill value (zarr ignores open_array's config for that).
    assert scale._open_array(str(tmp_path / "A.zarr"), "ntk").config.write_empty_chunks
    calls.clear()
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "U.zarr", tile=16)  # 2 KiB chunks
    assert calls and not any(done for _, done in calls)
    assert _equal(st, ARCH.kernel(x, tile=16).nngp, "nngp")

    calls.clear()
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "P.zarr", tile=32, direct_io=False)
    assert not calls and _equal(st, ARCH.kernel(x, tile=32).ntk, "ntk")

    def refuse(*args, **kwargs):
        raise OSError(22, "Invalid argument")  # what tmpfs answers to O_DIRECT

    monkeypatch.setattr(scale.os, "open", refuse)
    calls.clear()
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "R.zarr", tile=32)
    assert calls and not any(done for _, done in calls)
    assert _equal(st, ARCH.kernel(x, tile=32).ntk, "ntk")


def test_edge_chunks_written_whole_from_the_tile_buffer(tmp_path, monkeypatch):
    # 75 points, tile 32: edge tiles of 32 x 11 and 11 x 11 are stored by zarr as whole 32 x 32
    # chunks; they are written with O_DIRECT straight from the chunk-sized buffer, padding
    # zero (so the files' bytes are reproducible), and read back as the in-memory kernel.
    calls = []
    real = scale._put_unbuffered

    def spy(path, value):
        done = real(path, value)
        calls.append(("/".join(path.parts[-4:]), value.shape, done))  # <array>/c/<i>/<j>
        return done

    monkeypatch.setattr(scale, "_put_unbuffered", spy)
    x = _x(75, dtype=torch.float64)
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "E.zarr", tile=32, block=8)
    k8 = ARCH.kernel(x, tile=8)
    assert _equal(st, k8.nngp, "nngp") and _equal(st, k8.ntk, "ntk")
    assert st.array("ntk").chunks == (32, 32)
    if _supports_o_direct(tmp_path):
        # 6 upper tiles, 3 of them off the diagonal: 9 chunks per kernel, all whole and direct.
        assert len(calls) == 18 and all(shape == (32, 32) and done for _, shape, done in calls)
        assert {key for key, _, _ in calls} >= {"ntk/c/2/0", "ntk/c/0/2", "ntk/c/2/2"}
        raw = np.fromfile(tmp_path / "E.zarr" / "ntk" / "c" / "2" / "0", dtype=np.float64)
        chunk = raw.reshape(32, 32)
        assert np.array_equal(chunk[:11], k8.ntk[64:75, :32].numpy())
        assert not chunk[11:].any()

    def refuse(*args, **kwargs):
        raise OSError(22, "Invalid argument")

    # Where O_DIRECT is refused, zarr writes the edge tiles from the (strided) buffer views.
    monkeypatch.setattr(scale.os, "open", refuse)
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "F.zarr", tile=32, block=8)
    assert _equal(st, k8.nngp, "nngp") and _equal(st, k8.ntk, "ntk")


def test_chunks_no_larger_than_the_kernel(tmp_path):
    # Few points and the default tile 4096: chunks of the kernel's own size, not 4096 x 4096
    # (128 MB of float64 for a few kilobytes).
    x1, x2 = _x(20, dtype=torch.float64), _x(7, seed=1, dtype=torch.float64)
    st = scale.kernel_to_zarr(ARCH, x1, out=tmp_path / "S.zarr")
    assert st.array("ntk").chunks == (20, 20) and st.tile == 4096
    assert _equal(st, ARCH.kernel(x1).ntk, "ntk")
    st = scale.kernel_to_zarr(ARCH, x1, x2, out=tmp_path / "C.zarr", tile=16)
    assert st.array("nngp").chunks == (16, 7)
    assert _equal(st, ARCH.kernel(x1, x2, tile=16).nngp, "nngp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tiles_stored_like_the_in_memory_kernel_on_cuda(tmp_path):
    # Tiles computed on the GPU (in device blocks, copied into host chunk buffers, edge tiles
    # included): the same operations as arch.kernel on the GPU at tile=block, so equal bits.
    x = _x(75).cuda()
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "G.zarr", tile=32, block=8)
    k = ARCH.kernel(x, tile=8)
    assert _equal(st, k.ntk.cpu(), "ntk") and _equal(st, k.nngp.cpu(), "nngp")
    net = ARCH.network(5, 32, seed=3).cuda()
    st = scale.kernel_to_zarr(net, x, out=tmp_path / "N.zarr", tile=32, get="ntk")
    ref = wn.empirical_ntk(net, x).cpu()
    assert float((st.load(dtype=torch.float32) - ref).norm() / ref.norm()) < 1e-5


def test_empirical_ntk_store_matches_in_memory(tmp_path):
    # Per-tile empirical_ntk calls use other block sizes than one big call: GEMM summation
    # order differs, so equality is to rounding; 1e-12 relative in float64 leaves ~1000 ulp.
    x = _x(45, dtype=torch.float64)
    net = ARCH.network(5, 32, seed=3, dtype=torch.float64)
    st = scale.kernel_to_zarr(net, x, out=tmp_path / "E.zarr", tile=16, get="ntk")
    ref = wn.empirical_ntk(net, x)
    assert float((st.load() - ref).norm() / ref.norm()) < 1e-12
    x2 = _x(20, seed=4, dtype=torch.float64)
    st2 = scale.kernel_to_zarr(net, x, x2, out=tmp_path / "E2.zarr", tile=16, get="ntk")
    ref2 = wn.empirical_ntk(net, x, x2)
    assert float((st2.load() - ref2).norm() / ref2.norm()) < 1e-12
    assert st.meta["architecture"]["kind"] == "empirical_ntk"


def test_processes_scheduler_equals_in_memory(tmp_path):
    x = _x(60)
    st = scale.kernel_to_zarr(
        ARCH, x, out=tmp_path / "P.zarr", tile=16, scheduler="processes", workers=2
    )
    k = ARCH.kernel(x, tile=16)
    assert _equal(st, k.ntk, "ntk") and _equal(st, k.nngp, "nngp")


def test_threads_scheduler_equals_in_memory(tmp_path):
    x = _x(60)
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "T.zarr", tile=16, workers=3)
    assert _equal(st, ARCH.kernel(x, tile=16).ntk, "ntk")


# ---- resume and safety ------------------------------------------------------------------------


def test_resume_recomputes_only_unfinished_tiles(tmp_path):
    x = _x(64)
    path = tmp_path / "R.zarr"
    scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    # Simulate a run killed after writing garbage into two tiles but before their markers.
    done = zarr.open_array(str(path), path="done", mode="r+")
    ntk = zarr.open_array(str(path), path="ntk", mode="r+")
    for i, j in ((0, 2), (3, 3)):
        done[i, j] = 0
        ntk[16 * i : 16 * i + 16, 16 * j : 16 * j + 16] = -1.0
    st = scale.open_kernel(path)
    assert not st.complete and len(st.pending()) == 2
    with pytest.raises(ValueError, match="incomplete"):
        st.load("ntk")
    st = scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    assert st.written_tiles == ((0, 2), (3, 3))
    assert _equal(st, ARCH.kernel(x, tile=16).ntk, "ntk")
    # A complete store: a rerun computes nothing.
    assert scale.kernel_to_zarr(ARCH, x, out=path, tile=16).written_tiles == ()


def test_mismatching_store_refused(tmp_path):
    x = _x(40)
    path = tmp_path / "M.zarr"
    scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    cases = [
        (dict(kernel=ARCH, x1=x * 2), "x1_sha256"),
        (dict(kernel=ARCH, x1=x, tile=8), "tile"),
        (dict(kernel=ARCH, x1=x, dtype=torch.float64), "dtype"),
        (dict(kernel=wn.mlp(2, "relu", math.sqrt(2.0), 0.1), x1=x), "architecture.depth"),
        (dict(kernel=ARCH, x1=x, get="ntk"), "kernels"),
        (dict(kernel=ARCH, x1=x, x2=_x(40, seed=9)), "symmetric"),
    ]
    for kwargs, key in cases:
        kwargs.setdefault("tile", 16)
        with pytest.raises(scale.StoreMismatchError, match=key):
            scale.kernel_to_zarr(out=path, **kwargs)
    with pytest.raises(FileExistsError, match="resume"):
        scale.kernel_to_zarr(ARCH, x, out=path, tile=16, resume=False)
    st = scale.kernel_to_zarr(ARCH, x * 2, out=path, tile=16, overwrite=True)
    assert _equal(st, ARCH.kernel(x * 2, tile=16).ntk, "ntk")
    (tmp_path / "plain.zarr").mkdir()
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a widenet kernel store"):
        scale.open_kernel(tmp_path / "plain.zarr")
    with pytest.raises(FileNotFoundError, match="no kernel store"):
        scale.open_kernel(tmp_path / "absent.zarr")


def test_bad_arguments(tmp_path):
    x = _x(10)
    out = tmp_path / "B.zarr"
    with pytest.raises(ValueError, match="tile must be a positive integer"):
        scale.kernel_to_zarr(ARCH, x, out=out, tile=0)
    with pytest.raises(TypeError, match="kernel must be an architecture"):
        scale.kernel_to_zarr("relu", x, out=out)
    net = ARCH.network(5, 8)
    with pytest.raises(ValueError, match="empirical NTK only"):
        scale.kernel_to_zarr(net, x, out=out, get="nngp")
    with pytest.raises(ValueError, match="mode='trace'"):
        scale.kernel_to_zarr(net, x, out=out, get="ntk", mode="full")
    with pytest.raises(ValueError, match="apply only to the empirical NTK"):
        scale.kernel_to_zarr(ARCH, x, out=out, implementation="jacobian")
    with pytest.raises(ValueError, match="x1 contains 1 NaN"):
        scale.kernel_to_zarr(ARCH, torch.where(x == x[0, 0], torch.nan, x), out=out)
    with pytest.raises(ValueError, match="scheduler must be"):
        scale.kernel_to_zarr(ARCH, x, out=out, tile=4, scheduler="bogus")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        scale.kernel_to_zarr(ARCH, x, out=out, tile=4, overwrite=True, workers=0)


def test_overflowing_tile_refused_and_not_marked_done(tmp_path):
    x = _x(20) * 1e19  # finite inputs whose covariances overflow float32
    with pytest.raises(FloatingPointError, match="overflowed"):
        scale.kernel_to_zarr(ARCH, x, out=tmp_path / "O.zarr", tile=8)
    assert not scale.open_kernel(tmp_path / "O.zarr").done().any()


def test_sigkill_mid_run_then_rerun_of_the_command_equals_in_memory(tmp_path):
    from typer.testing import CliRunner

    from widenet.cli import app

    x = torch.randn(320, 5, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    path = tmp_path / "K.zarr"
    # `widenet kernel ... --out K.zarr`, 210 small tiles (seconds), in a subprocess we SIGKILL as
    # soon as a few are done (so many that a fast machine cannot finish between two polls).
    args = ["kernel", "--data", str(tmp_path / "x.npy"), "--depth", "3", "--b-std", "0.1"]
    args += ["--dtype", "float32", "--tile", "16", "--out", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(scale.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "widenet.cli", *args], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if (path / "done" / "zarr.json").exists():
                if int(scale.open_kernel(path).done().sum()) >= 3:
                    break
        assert proc.poll() is None, "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    pending = [(r.start // 16, c.start // 16) for r, c in scale.open_kernel(path).pending()]
    assert 0 < len(pending) < 210  # 20 tile rows: 210 upper tiles
    result = CliRunner().invoke(app, args)  # the same command again
    assert result.exit_code == 0, result.output
    assert f"computed {len(pending)} of 210 tiles" in result.output  # only the unfinished ones
    st = scale.open_kernel(path)
    k = ARCH.kernel(x, tile=16)
    assert _equal(st, k.ntk, "ntk") and _equal(st, k.nngp, "nngp")
    assert not list(path.rglob("*.partial"))
    # The Python API resumes a store made by the command too (same computation).
    assert scale.kernel_to_zarr(ARCH, x, out=path, tile=16).written_tiles == ()


# ---- solvers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    d = tmp_path_factory.mktemp("solve")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    xt = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    st = scale.kernel_to_zarr(ARCH, x, out=d / "K.zarr", tile=48)
    stt = scale.kernel_to_zarr(ARCH, xt, x, out=d / "Kt.zarr", tile=48)
    k, kt = ARCH.kernel(x, tile=48), ARCH.kernel(xt, x, tile=48)  # the stores' bits
    return dict(x=x, xt=xt, y=y, st=st, stt=stt, k=k, kt=kt)


def test_matmul_and_columns(problem):
    st, k = problem["st"], problem["k"].ntk
    v = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # Half the tiles are read and used twice; float64 sums in another order: 1e-12 relative.
    torch.testing.assert_close(st.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st.matmul(v[:, 0]), k @ v[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(problem["stt"].matmul(v), problem["kt"].ntk @ v, rtol=1e-12, atol=0)
    idx = np.array([0, 5, 47, 48, 199])
    np.testing.assert_array_equal(st.columns("ntk", idx), k[:, idx].numpy())
    torch.testing.assert_close(st.diagonal(), k.diagonal())
    with pytest.raises(ValueError, match=r"v must have shape \(200,\)"):
        st.matmul(torch.ones(199))


def test_kernel_ridge_cholesky_and_cg(problem):
    st, k, y = problem["st"], problem["k"].ntk, problem["y"]
    ridge = 1e-2
    ref = torch.linalg.solve(k + ridge * torch.eye(200, dtype=torch.float64), y)
    chol = scale.kernel_ridge(st, y, ridge=ridge, method="cholesky")
    assert chol.method == "cholesky"
    torch.testing.assert_close(chol.alpha, ref, rtol=1e-10, atol=1e-10)  # cond ~1e4: 1e-12 x 1e2
    iters = {}
    for pre in ("nystrom", "jacobi", None):
        sol = scale.kernel_ridge(st, y, ridge=ridge, method="cg", preconditioner=pre, rank=80)
        # CG stops at relative residual 1e-8; the error is at most cond(K + ridge) times that.
        assert float((sol.alpha - ref).norm() / ref.norm()) < 1e-6
        assert float(sol.relative_residual.max()) <= 1e-8
        iters[pre] = sol.iterations
    assert iters["nystrom"] < iters[None]  # the preconditioner must help
    auto = scale.kernel_ridge(st, y[:, 0], ridge=ridge, memory_limit_bytes=10)
    assert auto.method == "cg"
    assert scale.kernel_ridge(st, y, ridge=ridge).method == "cholesky"
    # Predictions at test points from the test-train store.
    pred = problem["stt"].matmul(chol.alpha)
    torch.testing.assert_close(pred, problem["kt"].ntk @ ref, rtol=1e-9, atol=1e-9)


def test_kernel_ridge_bad_inputs(problem, tmp_path):
    st, y = problem["st"], problem["y"]
    with pytest.raises(ValueError, match="ridge must be > 0 for CG"):
        scale.kernel_ridge(st, y, ridge=0.0, method="cg")
    with pytest.raises(ValueError, match=r"y must have shape \(200,\)"):
        scale.kernel_ridge(st, y[:10], ridge=1.0)
    with pytest.raises(ValueError, match="method must be"):
        scale.kernel_ridge(st, y, ridge=1.0, method="lu")
    with pytest.raises(ValueError, match="did not converge"):
        scale.kernel_ridge(st, y, ridge=1e-6, method="cg", preconditioner=None, maxiter=2)
    with pytest.raises(ValueError, match="symmetric store"):
        scale.kernel_ridge(problem["stt"], y, ridge=1.0)
    # A kernel that is not positive definite: duplicate points make K singular.
    x = torch.cat([problem["x"][:20]] * 2)
    sing = scale.kernel_to_zarr(wn.mlp(1, "identity"), x, out=tmp_path / "S.zarr", tile=16)
    with pytest.raises(ValueError, match="not positive definite"):
        scale.kernel_ridge(sing, torch.ones(40), ridge=0.0, method="cholesky")


def test_truncated_gradient_flow_within_stated_bounds(problem):
    st, k, y = problem["st"], problem["k"].ntk, problem["y"]
    kt, kxx = problem["kt"].ntk, ARCH.kernel(problem["xt"]).ntk.diagonal()
    ts = np.array([0.0, 0.5, 5.0, 50.0, 500.0, 5e4])
    exact = wn.dynamics.gradient_flow_mse(k, y, ts, ntk_test_train=kt)
    eig = torch.linalg.eigvalsh(k).flip(0)
    for rank in (4, 30, 120):
        fl = scale.gradient_flow_mse(st, y, ts, rank=rank, k_test_train=kt, k_test_diag=kxx)
        # Lanczos to machine precision: the top eigenvalues of the dense eigvalsh.
        torch.testing.assert_close(fl.eigenvalues, eig[:rank], rtol=1e-10, atol=1e-10)
        train_err = (fl.train - exact.train).norm(dim=1)  # (T, k)
        test_err = (fl.test - exact.test).abs()  # (T, m, k)
        # The bounds are theorems: rounding (1e-12 relative) is the only slack allowed.
        assert bool((train_err <= fl.train_bound * (1 + 1e-9) + 1e-10).all())
        assert bool((test_err <= fl.test_bound * (1 + 1e-9) + 1e-10).all())
        # ...and not vacuous: the train bound is within 10x of the error at late times.
        late = train_err[-1] / fl.train_bound[-1]
        assert bool((late > 0.1).all()), late
    # Larger rank, smaller residual and bound.
    small = scale.gradient_flow_mse(st, y, ts, rank=4)
    assert bool((fl.residual_norm < small.residual_norm).all())
    assert float(fl.train_bound[0].abs().max()) == 0.0  # t = 0: f_0 = 0 exactly


def test_truncated_gradient_flow_bad_inputs(problem):
    st, y = problem["st"], problem["y"]
    with pytest.raises(ValueError, match="rank must be < n"):
        scale.gradient_flow_mse(st, y, 1.0, rank=200)
    with pytest.raises(ValueError, match="t must be finite"):
        scale.gradient_flow_mse(st, y, math.inf, rank=3)
    with pytest.raises(ValueError, match="k_test_train must have 200 columns"):
        scale.gradient_flow_mse(st, y, 1.0, rank=3, k_test_train=torch.ones(3, 7))
    with pytest.raises(ValueError, match="k_test_diag needs k_test_train"):
        scale.gradient_flow_mse(st, y, 1.0, rank=3, k_test_diag=torch.ones(3))


# ---- command line -----------------------------------------------------------------------------


def test_cli_kernel_store_resume_mismatch_and_solve(tmp_path):
    from typer.testing import CliRunner

    from widenet.cli import app

    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert "Traceback" not in result.output, result.output
        return result

    rng = np.random.default_rng(0)
    x, xt = rng.standard_normal((50, 4)), rng.standard_normal((9, 4))
    y = rng.standard_normal((50, 2))
    for name, arr in (("x", x), ("xt", xt), ("y", y)):
        np.save(tmp_path / f"{name}.npy", arr)
    k, kt = tmp_path / "K.zarr", tmp_path / "Kt.zarr"
    base = ("kernel", "--data", tmp_path / "x.npy", "--depth", "2", "--tile", "16")
    r = invoke(*base, "--out", k)
    assert r.exit_code == 0 and "computed 10 of 10 tiles" in r.output
    r = invoke(*base, "--out", k)  # a rerun continues: nothing left
    assert r.exit_code == 0 and "computed 0 of 10 tiles" in r.output
    r = invoke(*base, "--out", tmp_path / "B.zarr", "--buffered-io")  # page cache, same bits
    assert r.exit_code == 0 and "computed 10 of 10 tiles" in r.output
    assert torch.equal(
        scale.open_kernel(k).load("ntk"), scale.open_kernel(tmp_path / "B.zarr").load("ntk")
    )
    r = invoke(*base[:-1], "8", "--out", k)
    assert r.exit_code == 2 and "refusing to mix" in r.output
    r = invoke(*base, "--out", k, "--scheduler", "carrier-pigeon")
    assert r.exit_code == 2 and "--scheduler must be" in r.output
    r = invoke(*base, "--x2", tmp_path / "xt.npy", "--out", tmp_path / "K.npz")
    assert r.exit_code == 2 and "--x2 is for a .zarr" in r.output
    xt_base = ("kernel", "--data", tmp_path / "xt.npy", "--x2", tmp_path / "x.npy")
    assert invoke(*xt_base, "--depth", "2", "--tile", "16", "--out", kt).exit_code == 0

    arch = wn.mlp(2, "relu", math.sqrt(2.0), 0.0)
    kk = arch.kernel(torch.as_tensor(x)).ntk
    ref = torch.linalg.solve(kk + 1e-3 * torch.eye(50, dtype=torch.float64), torch.as_tensor(y))
    for method in ("cholesky", "cg"):
        out = tmp_path / f"{method}.npz"
        r = invoke(
            "solve", k, "--targets", tmp_path / "y.npy", "--test-kernel", kt,
            "--method", method, "--rank", "20", "--out", out,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        res = np.load(out)
        np.testing.assert_allclose(res["alpha"], ref.numpy(), rtol=1e-6, atol=1e-8)
        pred = arch.kernel(torch.as_tensor(xt), torch.as_tensor(x)).ntk @ ref
        np.testing.assert_allclose(res["test_mean"], pred.numpy(), rtol=1e-6, atol=1e-8)
    out = tmp_path / "flow.npz"
    args = ("solve", k, "--targets", tmp_path / "y.npy", "--time", "1", "--time", "100")
    r = invoke(*args, "--rank", "10", "--out", out)
    assert r.exit_code == 0, r.output
    res = np.load(out)
    exact = wn.dynamics.gradient_flow_mse(kk, torch.as_tensor(y), [1.0, 100.0])
    err = np.linalg.norm(res["train_mean"] - exact.train.numpy(), axis=1)
    assert (err <= res["train_bound"] * (1 + 1e-9) + 1e-10).all()
    # Test points: the bound needs K(x, x), from a symmetric store of them or a .npy.
    xt64 = torch.as_tensor(xt)
    np.save(tmp_path / "kd.npy", arch.kernel(xt64).ntk.diagonal().numpy())
    kxx = tmp_path / "Kxx.zarr"
    assert (
        invoke("kernel", "--data", tmp_path / "xt.npy", "--depth", "2", "--out", kxx).exit_code == 0
    )
    exact = wn.dynamics.gradient_flow_mse(
        kk,
        torch.as_tensor(y),
        [1.0, 100.0],
        ntk_test_train=arch.kernel(xt64, torch.as_tensor(x)).ntk,
    )
    bounds = []
    for diag in (tmp_path / "kd.npy", kxx):
        r = invoke(
            *args,
            "--rank",
            "10",
            "--test-kernel",
            kt,
            "--test-diagonal",
            diag,
            "--out",
            out,
            "--overwrite",
        )
        assert r.exit_code == 0, r.output
        res = np.load(out)
        err = np.abs(res["test_mean"] - exact.test.numpy())
        assert (err <= res["test_bound"] * (1 + 1e-9) + 1e-10).all() and err.max() > 1e-8
        bounds.append(res["test_bound"])
    np.testing.assert_allclose(bounds[0], bounds[1], rtol=1e-6)
    r = invoke(*args, "--test-diagonal", tmp_path / "kd.npy", "--out", out)
    assert r.exit_code == 2 and "--test-diagonal goes with --time and --test-kernel" in r.output
    r = invoke(*args, "--test-kernel", kt, "--test-diagonal", kt, "--out", out)
    assert r.exit_code == 2 and "expected a symmetric store" in r.output
    r = invoke("solve", k, "--out", tmp_path / "p.npz")
    assert r.exit_code == 2 and "--targets onehot needs" in r.output
    r = invoke("ntk", "--data", tmp_path / "x.npy", "--width", "64", "--out", tmp_path / "T.zarr")
    assert r.exit_code == 0 and "computed 1 of 1 tiles" in r.output


def test_cli_solve_onehot_from_bundled_set(tmp_path):
    from typer.testing import CliRunner

    from widenet.cli import app

    runner = CliRunner()
    k = tmp_path / "K.zarr"
    r = runner.invoke(
        app, ["kernel", "--data", "iris", "--n", "60", "--tile", "32", "--out", str(k)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["solve", str(k), "--ridge", "1e-2", "--out", str(tmp_path / "p.npz")])
    assert r.exit_code == 0, r.output
    res = np.load(tmp_path / "p.npz")
    assert res["alpha"].shape == (60, 3)  # iris: three classes, one-hot
    # Ridge regression on one-hot labels fits the training set: every argmax right.
    assert (res["train_mean"].argmax(1) == res["train_targets"].argmax(1)).all()


def test_bench_scale_summary_rows():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from run import summary_rows
    finally:
        sys.path.pop(0)
    scale_res = dict(
        config=dict(n=100, dask_n=100),
        goals=dict(tile_throughput=0.8, dask_speedup=1.7, peak_rss_gib=2.0),
        tile_throughput_vs_memory=0.9,
        dask_speedup_1_to_2=1.8,
        peak_rss_gib=0.5,
    )
    rows = summary_rows(None, None, None, None, scale_res)
    assert [r[1] for r in rows] == [0.9, 1.8, 4.0]


def test_tile_names_are_unambiguous():
    # One DEFAULT_TILE (the in-memory engine's); the store's chunk tile is STORE_TILE. The old
    # scale.DEFAULT_TILE (= the store's tile) still answers, with a DeprecationWarning.
    from widenet import architectures

    assert architectures.DEFAULT_TILE == 512 and scale.STORE_TILE == 4096
    assert "DEFAULT_TILE" not in vars(scale)  # not a plain attribute any more
    with pytest.warns(DeprecationWarning, match="STORE_TILE"):
        assert scale.DEFAULT_TILE == scale.STORE_TILE
    with pytest.raises(AttributeError):
        scale.NO_SUCH_NAME  # noqa: B018 (the attribute access is the test)
