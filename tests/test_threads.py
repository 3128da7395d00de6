"""The CPU thread policy (widenet.threads): order, restoring the caller's setting, errors, and
kernels unchanged by it."""

import math
import types

import pytest
import torch

import widenet as wn
from widenet import kernels, threads


@pytest.fixture
def two_threads(monkeypatch):
    # The pool is what these tests exercise: as if the machine were quiet, whatever its load.
    monkeypatch.setattr(threads, "machine_busy", lambda: False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_map_blocks_keeps_order_runs_single_threaded_and_restores(two_threads):
    seen = []

    def work(i):
        seen.append(torch.get_num_threads())
        return i * i

    assert list(threads.map_blocks(work, range(9), "cpu", ahead=3)) == [i * i for i in range(9)]
    assert seen == [1] * 9  # every block single-threaded, in the pool's threads
    assert torch.get_num_threads() == 2


def test_map_blocks_closed_early_restores_and_errors_propagate(two_threads):
    it = threads.map_blocks(lambda i: i, range(100), "cpu")
    assert next(it) == 0
    it.close()
    assert torch.get_num_threads() == 2

    def boom(i):
        if i == 3:
            raise ValueError("block 3")
        return i

    with pytest.raises(ValueError, match="block 3"):
        threads.run_blocks(boom, range(6), "cpu")
    assert torch.get_num_threads() == 2


def test_single_threaded_restores(two_threads):
    with threads.single_threaded("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), threads.single_threaded("cpu"):
        raise RuntimeError
    assert torch.get_num_threads() == 2


def test_fc_kernel_bitwise_independent_of_thread_count(two_threads, monkeypatch):
    # Every tile is the same sequence of single-threaded operations under either setting, so
    # the kernels agree bit for bit (not merely to a tolerance); tile 8 gives 45 tiles.
    x = torch.randn(70, 5, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(kernels, "SMALL_KERNEL_ENTRIES", 0)  # the pool, not the small path
    net = wn.mlp(2, "relu", math.sqrt(2), 0.1)
    pooled = net.kernel(x, tile=8)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    serial = net.kernel(x, tile=8)
    assert torch.equal(pooled.nngp, serial.nngp) and torch.equal(pooled.ntk, serial.ntk)
    x2 = torch.randn(13, 5, generator=torch.Generator().manual_seed(1))
    torch.set_num_threads(2)
    a = net.kernel(x, x2, tile=4)
    torch.set_num_threads(1)
    b = net.kernel(x, x2, tile=4)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)


def test_map_blocks_max_workers_one_runs_in_the_calling_thread(two_threads):
    import threading

    me = threading.get_ident()
    where = list(threads.map_blocks(lambda i: threading.get_ident(), range(5), max_workers=1))
    assert where == [me] * 5
    assert torch.get_num_threads() == 2


def test_busy_machine_runs_blocks_in_the_calling_thread(two_threads, monkeypatch):
    import threading

    monkeypatch.setattr(threads, "machine_busy", lambda: True)
    me = threading.get_ident()
    assert list(threads.map_blocks(lambda i: threading.get_ident(), range(4))) == [me] * 4
    assert threads.pool_size(10) == 1


@pytest.mark.parametrize("busy", [False, True])
def test_solver_threads_sets_torch_and_blas_and_restores(two_threads, monkeypatch, busy):
    # SciPy's BLAS loaded before `before` is taken, as solver_threads loads it.
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(threads, "machine_busy", lambda: busy)

    def blas():
        return {
            i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"
        }

    before = blas()
    with threads.solver_threads(100):  # small: one thread whatever the load
        assert torch.get_num_threads() == 1 and set(blas().values()) == {1}
    with threads.solver_threads(10_000):  # large: one thread only when busy
        want = 1 if busy else 2
        assert torch.get_num_threads() == want and set(blas().values()) == {want}
    assert torch.get_num_threads() == 2 and blas() == before


def test_own_load_averages_the_process_cpu_rate_like_the_load_average(monkeypatch):
    clock = {"wall": 100.0, "cpu": 0.0}
    fake = types.SimpleNamespace(monotonic=lambda: clock["wall"], process_time=lambda: clock["cpu"])
    monkeypatch.setattr(threads, "time", fake)
    monkeypatch.setattr(threads, "_OWN", {"wall": None, "cpu": 0.0, "rate": 0.0})
    assert threads.own_load() == 0.0  # no history yet
    for _ in range(600):  # two busy threads for ten minutes, sampled every second
        clock["wall"] += 1.0
        clock["cpu"] += 2.0
        rate = threads.own_load()
    assert rate == pytest.approx(2.0, rel=1e-3)
    clock["wall"] += 60.0  # a minute idle: down by e, as the kernel's 1-minute average
    assert threads.own_load() == pytest.approx(2.0 * math.exp(-1.0), rel=1e-3)


@pytest.mark.parametrize(
    ("load", "own", "wanted", "busy"),
    [
        (2.04, 1.9, 2, False),  # the load of this process's own two threads: quiet
        (2.6, 1.9, 2, True),  # and one other process
        (0.3, 0.0, 2, False),  # background noise
        (1.8, 0.0, 2, False),  # below the cores (e.g. a process that has just ended): quiet
        (2.2, 0.0, 2, True),  # two other busy processes
        (2.2, 0.0, 1, True),  # and one thread wanted
        (2.2, 1.0, 1, False),  # one other process, this one on one thread: a core each
        (3.9, 1.0, 2, True),  # one spinner per core beside this process (contention mode)
    ],
)
def test_machine_busy_counts_other_processes_only(monkeypatch, load, own, wanted, busy):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "own_load", lambda: own)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        assert threads.machine_busy() is busy
    finally:
        torch.set_num_threads(before)
