"""Reliability of kernel stores (issue 16, items 2, 3, 6 and 7): what overwrite deletes, kills at
any moment (fault injection), corruption detected and repaired, one writer, schedulers validated
before anything is created, a dead process worker, and what a local cluster listens on."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import widenet as wn
from widenet import scale

ARCH = wn.mlp(3, "relu", math.sqrt(2.0), 0.1)
SRC = str(Path(scale.__file__).resolve().parents[1])


def _x(n, d=5, seed=0, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _arrays(path) -> dict[str, np.ndarray]:
    """Every array of a store, as raw bits (so NaN payloads and -0.0 compare exactly)."""
    out = {}
    for name in ("nngp", "ntk", "checksum", "done"):
        a = zarr.open_array(str(path), path=name, mode="r")[:]
        out[name] = a.view(np.uint8)
    return out


def _bitwise_equal(a, b) -> bool:
    x, y = _arrays(a), _arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _chunk(path, which, *index) -> Path:
    arr = zarr.open_array(str(path), path=which, mode="r")
    return Path(path, which, arr.metadata.encode_chunk_key(index))


# ---- item 2: overwrite deletes only a widenet store -------------------------------------------


def test_overwrite_refuses_directories_that_are_not_widenet_stores(tmp_path):
    x = _x(12)
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    for overwrite in (True, False):
        with pytest.raises(FileExistsError, match="not a widenet kernel store.*refusing"):
            scale.kernel_to_zarr(ARCH, x, out=user, tile=4, overwrite=overwrite)
    assert (user / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary left
    # A Zarr group of someone else (no "widenet" attributes): refused too.
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w", attributes={"owner": "someone"})
    with pytest.raises(FileExistsError, match="not a widenet kernel store"):
        scale.kernel_to_zarr(ARCH, x, out=other, tile=4, overwrite=True)
    assert (other / "zarr.json").exists()
    # A plain file: a clear error, not NotADirectoryError, and the file is kept.
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file, not a kernel store"):
        scale.kernel_to_zarr(ARCH, x, out=plain, tile=4, overwrite=True)
    assert plain.read_text() == "keep me"
    # An empty directory is a fine place for a new store; a widenet store is overwritten.
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    st = scale.kernel_to_zarr(ARCH, x, out=empty, tile=4)
    assert scale.is_kernel_store(empty) and st.complete
    st = scale.kernel_to_zarr(ARCH, x * 2, out=empty, tile=4, overwrite=True)
    assert torch.equal(st.load("ntk", dtype=torch.float32), ARCH.kernel(x * 2, tile=4).ntk)


# ---- item 3: kill at any moment (fault injection from the tile log) ---------------------------

# The child computes a store with hooks that log every step of the writer ("create-array" per
# array of the temporary group, "rename" into place, "write" per chunk, "checksum" and "done"
# per tile) and SIGKILL the process itself at the step numbered KILL_AT. TORN="partial" first
# leaves half of the chunk's bytes in a temporary file (what a kill inside zarr's or the O_DIRECT
# writer's write looks like); TORN="final" half of them in the chunk file itself (a file system
# without atomic rename).
CHILD = textwrap.dedent(
    """
    import os, signal, sys, uuid
    from pathlib import Path
    import torch, zarr
    import widenet as wn
    from widenet import scale

    out, log, kill_at, torn, n, tile, dtype = sys.argv[1:]
    kill_at, n, tile = int(kill_at), int(n), int(tile)
    count = [0]
    logf = open(log, "a", buffering=1)

    def event(name, detail="", tear=None):
        k = count[0]
        count[0] += 1
        logf.write(f"{k} {name} {detail}\\n")
        if k == kill_at:
            if tear is not None:
                tear()
            os.kill(os.getpid(), signal.SIGKILL)

    create_array = zarr.Group.create_array
    def hooked_create_array(self, name, **kw):
        event("create-array", name)
        return create_array(self, name, **kw)
    zarr.Group.create_array = hooked_create_array

    rename = os.rename
    def hooked_rename(a, b, *args, **kw):
        if str(a).endswith(".creating"):
            event("rename", Path(b).name)
        return rename(a, b, *args, **kw)
    os.rename = hooked_rename

    write = scale._Task._write
    def hooked_write(self, name, rows, cols, a):
        arr = self.arrays(name)
        c0, c1 = arr.chunks
        key = arr.metadata.encode_chunk_key((rows.start // c0, cols.start // c1))
        path = Path(self.path, name, key)
        data = a.contiguous().numpy().tobytes()
        def tear():
            path.parent.mkdir(parents=True, exist_ok=True)
            if torn == "partial":
                target = path.with_suffix(f".{uuid.uuid4().hex}.partial")
            else:
                target = path
            target.write_bytes(data[: len(data) // 2])
        event("write", f"{name} {rows.start} {cols.start}", tear if torn != "none" else None)
        return write(self, name, rows, cols, a)
    scale._Task._write = hooked_write

    setitem = zarr.Array.__setitem__
    def hooked_setitem(self, key, value):
        if self.path in ("checksum", "done"):
            event(self.path, repr(key))
        return setitem(self, key, value)
    zarr.Array.__setitem__ = hooked_setitem

    dt = getattr(torch, dtype)
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(0), dtype=dt)
    arch = wn.mlp(3, "relu", 2.0 ** 0.5, 0.1)
    scale.kernel_to_zarr(arch, x, out=out, tile=tile)
    """
)


def _child(out, log, kill_at=-1, torn="none", n=48, tile=16, dtype="float32"):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    args = [str(out), str(log), str(kill_at), torn, str(n), str(tile), dtype]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, timeout=300
    )
    return proc.returncode, proc.stderr.decode()


def _events(log) -> list[tuple[int, str, str]]:
    out = []
    for line in Path(log).read_text().splitlines():
        k, name, *detail = line.split(" ", 2)
        out.append((int(k), name, detail[0] if detail else ""))
    return out


def _nothing_or_resumable(path) -> str:
    if not path.exists():
        return "nothing"
    st = scale.open_kernel(path)  # opens: metadata and every array are there
    assert len(st.grid()) and st.done().shape
    return "resumable"


def _fault_injection(tmp_path, n, tile, dtype, pick):
    base = tmp_path / "base.zarr"
    rc, err = _child(base, tmp_path / "base.log", n=n, tile=tile, dtype=dtype)
    assert rc == 0, err
    events = _events(tmp_path / "base.log")
    x = _x(n, dtype=getattr(torch, dtype))
    outcomes = []
    for case, (kill_at, torn, second_kill) in enumerate(pick(events)):
        out = tmp_path / f"K{case}.zarr"
        log = tmp_path / f"K{case}.log"
        rc, err = _child(out, log, kill_at, torn, n, tile, dtype)
        assert rc == -signal.SIGKILL, (case, rc, err)
        assert _events(log)[-1][0] == kill_at
        state = _nothing_or_resumable(out)
        if second_kill is not None:  # killed again while resuming
            rc, err = _child(out, tmp_path / f"K{case}b.log", second_kill, "none", n, tile, dtype)
            assert rc == -signal.SIGKILL, (case, rc, err)
            _nothing_or_resumable(out)
        st = scale.kernel_to_zarr(ARCH, x, out=out, tile=tile)
        assert st.complete and scale.verify_store(out).ok
        assert _bitwise_equal(out, base), f"case {case}: {events[kill_at]}"
        assert not list(out.rglob("*.partial"))
        assert not list(tmp_path.glob(".*.creating"))
        outcomes.append(state)
    return events, outcomes


def _moments(events, every=None):
    """(kill_at, torn, second kill) cases: during creation, between tiles, inside chunk writes."""
    first = {}
    nth = {}
    for k, name, _ in events:
        first.setdefault(name, k)
        nth.setdefault(name, []).append(k)
    writes, marks, sums = nth["write"], nth["done"], nth["checksum"]
    cases = [
        (nth["create-array"][-1], "none", None),  # group and kernels created, "done" not yet
        (first["rename"], "none", None),  # complete temporary store, not renamed
        (writes[len(writes) // 3], "partial", None),  # inside a chunk write
        (writes[len(writes) // 2], "final", None),  # a torn chunk file, no marker
        (sums[1], "none", None),  # tile 1's chunks written, no checksum nor marker
        (marks[2], "none", 6),  # between tiles; killed again while resuming
    ]
    if every:
        cases += [(k, "none", None) for k in range(0, len(events), every)]
    return cases


def test_sigkill_at_chosen_moments_then_rerun_equals_uninterrupted_store(tmp_path):
    # 48 points, tile 16: 6 upper tiles, 3 x 6 x 2 chunk writes; 7 child processes (about 3 s
    # each on the loaded 2-core machine, mostly importing torch).
    events, outcomes = _fault_injection(tmp_path, 48, 16, "float32", _moments)
    assert {name for _, name, _ in events} == {
        "create-array",
        "rename",
        "write",
        "checksum",
        "done",
    }
    # A kill before the rename leaves no store; any later one a resumable store.
    assert outcomes == ["nothing", "nothing"] + ["resumable"] * 4


@pytest.mark.slow
def test_sigkill_at_many_moments_larger_store(tmp_path):
    # float64, tile 32: 8 KiB chunks, written with O_DIRECT where the file system allows it;
    # 120 points -> 4 x 4 tiles; a kill at every 7th step of the log as well.
    _fault_injection(tmp_path, 120, 32, "float64", lambda ev: _moments(ev, every=7))


def test_stale_temporary_of_a_killed_creation_is_removed(tmp_path):
    # What a kill before the rename leaves: .NAME.PID.HEX.creating of a dead process.
    x = _x(8)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    dead = int(proc.stdout)
    stale = tmp_path / f".K.zarr.{dead}.{'0' * 32}.creating"
    scale.kernel_to_zarr(ARCH, x, out=stale.with_name("scratch.zarr"), tile=4)
    os.rename(stale.with_name("scratch.zarr"), stale)
    st = scale.kernel_to_zarr(ARCH, x, out=tmp_path / "K.zarr", tile=4)
    assert st.complete and not stale.exists()


# ---- item 3: corruption detected, reported, repaired ------------------------------------------


def test_corrupted_chunks_detected_reported_and_recomputed(tmp_path):
    x = _x(64)
    path = tmp_path / "C.zarr"
    clean = tmp_path / "clean.zarr"
    scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    scale.kernel_to_zarr(ARCH, x, out=clean, tile=16)
    assert scale.verify_store(path).ok
    # Four kinds of damage to chunks whose done markers stay: garbage of the right size,
    # truncation, deletion (zarr then reads the NaN fill value), and a mirror chunk (1, 0) of
    # upper tile (0, 1) changed by one bit; plus a tile whose checksums were lost.
    garbage = _chunk(path, "ntk", 0, 0)
    garbage.write_bytes(np.random.default_rng(0).bytes(garbage.stat().st_size))
    truncated = _chunk(path, "nngp", 1, 1)
    truncated.write_bytes(truncated.read_bytes()[:100])
    _chunk(path, "ntk", 2, 3).unlink()
    mirror = _chunk(path, "ntk", 1, 0)
    raw = bytearray(mirror.read_bytes())
    raw[7] ^= 1
    mirror.write_bytes(bytes(raw))
    _chunk(path, "checksum", 3, 3, 0, 0).unlink()
    report = scale.verify_store(path)
    assert not report.ok and not report.complete
    assert report.bad_tiles == ((0, 0), (0, 1), (1, 1), (2, 3), (3, 3))
    assert report.done == report.tiles == 10
    reasons = dict(zip(report.bad_tiles, report.reasons, strict=True))
    assert "ntk chunk (1, 0) fails its checksum" in reasons[(0, 1)]
    assert "nngp chunk (1, 1) unreadable" in reasons[(1, 1)]
    assert "without recorded checksums" in reasons[(3, 3)]
    assert "tile 2, 3" in report.summary()
    # Solvers stop on a non-finite (deleted -> NaN) or unreadable tile, naming store and tile.
    st = scale.open_kernel(path)
    with pytest.raises(scale.CorruptStoreError, match=r"C\.zarr: tile \(2, 3\) of ntk"):
        st.read("ntk", slice(32, 48), slice(48, 64))
    # (the random garbage of tile (0, 0) holds a NaN too, met first)
    with pytest.raises(scale.CorruptStoreError, match=r"C\.zarr: tile \(\d, \d\) of ntk"):
        scale.kernel_ridge(st, torch.ones(64), ridge=1e-3, method="cg", rank=8)
    with pytest.raises(
        scale.CorruptStoreError, match=r"C\.zarr: tile \(1, 1\) of nngp is unreadable"
    ):
        st.load("nngp")
    # verify=False trusts the markers (no read of the done tiles): nothing is recomputed.
    st = scale.kernel_to_zarr(ARCH, x, out=path, tile=16, verify=False)
    assert st.written_tiles == st.repaired_tiles == ()
    # Resume: the bad tiles are recomputed, the count reported, and the store is whole again.
    st = scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    assert st.repaired_tiles == report.bad_tiles
    assert st.written_tiles == report.bad_tiles
    assert scale.verify_store(path).ok and _bitwise_equal(path, clean)


def test_verify_store_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no kernel store"):
        scale.verify_store(tmp_path / "absent.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a widenet kernel store"):
        scale.verify_store(tmp_path / "g.zarr")


# ---- item 3: one writer -----------------------------------------------------------------------


def test_second_writer_refused_while_the_first_runs(tmp_path):
    path = tmp_path / "L.zarr"
    x = _x(64)
    scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    # A first writer (another process) holds the store's lock while it runs.
    holder = textwrap.dedent(
        f"""
        import fcntl, sys, time
        f = open({str(path / "zarr.json")!r}, "r+b")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        for kwargs in ({}, {"overwrite": True}):
            with pytest.raises(scale.StoreBusyError, match="being written by another process"):
                scale.kernel_to_zarr(ARCH, x, out=path, tile=16, **kwargs)
        assert scale.verify_store(path).ok  # reading is not refused, and nothing was deleted
    finally:
        proc.kill()
        proc.wait()
    # The lock dies with its process: the store is writable again.
    assert scale.kernel_to_zarr(ARCH, x, out=path, tile=16).written_tiles == ()


def test_writer_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    # In one process too: a second call while the first computes its tiles is refused.
    path = tmp_path / "W.zarr"
    x = _x(48)
    seen = []
    compute = scale._Task.compute

    def compute_and_try_second_writer(self, rows, cols):
        if not seen:
            with pytest.raises(scale.StoreBusyError):
                scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
            seen.append(True)
        return compute(self, rows, cols)

    monkeypatch.setattr(scale._Task, "compute", compute_and_try_second_writer)
    assert scale.kernel_to_zarr(ARCH, x, out=path, tile=16).complete and seen


# ---- item 3: schedulers validated before anything is created ----------------------------------


def test_bad_scheduler_refused_before_the_store_is_created(tmp_path):
    import dask

    x = _x(10)
    out = tmp_path / "S.zarr"
    bad = [
        ("bogus://x", "unknown protocol 'bogus'"),
        ("tcp://", "no host"),
        ("bogus", "scheduler must be"),
        (3, "scheduler must be"),
    ]
    for scheduler, match in bad:
        with pytest.raises(ValueError, match=match):
            scale.kernel_to_zarr(ARCH, x, out=out, tile=4, scheduler=scheduler)
        assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="workers must be >= 1"):
        scale.kernel_to_zarr(ARCH, x, out=out, tile=4, scheduler="processes", workers=0)
    with pytest.raises(ValueError, match="workers applies to"):
        scale.kernel_to_zarr(ARCH, x, out=out, tile=4, scheduler="tcp://127.0.0.1:1", workers=2)
    # Nothing listens on port 1: the connection fails within the timeout, and nothing is made.
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(OSError, match="could not connect to the Dask scheduler"):
            scale.kernel_to_zarr(ARCH, x, out=out, tile=4, scheduler="tcp://127.0.0.1:1")
    assert time.monotonic() - t0 < 30 and not out.exists()
    assert scale.check_scheduler("threads") == "threads"
    assert scale.check_scheduler("tls://10.0.0.1:8786") == "dask"


def test_killed_process_worker_reports_done_tiles_and_rerun_resumes(tmp_path):
    # 320 points, tile 16: 210 small tiles on 2 spawned workers; one is SIGKILLed once a few
    # tiles are done. The call must fail with a WorkerDiedError (not a raw BrokenProcessPool)
    # that says how many tiles are done and that rerunning resumes.
    x = _x(320)
    path = tmp_path / "P.zarr"
    killed = []

    def killer():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            time.sleep(0.05)
            try:
                n_done = int(scale.open_kernel(path).done().sum())
            except (FileNotFoundError, ValueError):
                continue
            kids = multiprocessing.active_children()
            if n_done >= 3 and kids:
                os.kill(kids[0].pid, signal.SIGKILL)
                killed.append(n_done)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        with pytest.raises(scale.WorkerDiedError, match=r"tiles are done.*run the same call again"):
            scale.kernel_to_zarr(
                ARCH, x, out=path, tile=16, scheduler="processes", workers=2, torch_threads=1
            )
    finally:
        killed.append(-1)
        watcher.join()
    st = scale.open_kernel(path)
    assert 0 < int(st.done().sum()) < 210
    st = scale.kernel_to_zarr(ARCH, x, out=path, tile=16)
    assert st.complete and scale.verify_store(path).ok
    assert torch.equal(st.load("ntk", dtype=torch.float32), ARCH.kernel(x, tile=16).ntk)


# ---- item 6: what a local cluster listens on --------------------------------------------------


def test_local_cluster_listens_only_on_its_comm_ports_on_loopback():
    distributed = pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")

    def listening():
        me = psutil.Process()
        found = set()
        for p in [me, *me.children(recursive=True)]:
            try:
                conns = p.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
        return found

    before = listening()
    with scale.local_cluster(2) as cluster, distributed.Client(cluster) as client:
        workers = list(client.scheduler_info()["workers"])
        nannies = [w.address for w in cluster.workers.values()]
        expected = {cluster.scheduler_address, *workers, *nannies}
        got = {f"tcp://{ip}:{port}" for ip, port in listening() - before}
        # Exactly the scheduler's, the workers' and their nannies' comm ports, on 127.0.0.1:
        # no dashboard (8787) and no HTTP server of any worker.
        assert got == expected and len(got) == 5
        assert all(a.startswith("tcp://127.0.0.1:") for a in got)
