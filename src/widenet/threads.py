"""The CPU thread policy of widenet's blocked computations.

Kernels, stores and estimators split their work into blocks whose operations are cache-sized
(~0.1-1 ms each: a 512 x 512 tile of the FC recursion is a few hundred aten operations). Such
operations are too short for torch's intra-op parallelism: every one is a parallel region
whose closing barrier waits for the slowest of the pool's threads, and on a loaded machine
(more runnable threads than cores) that thread is often descheduled, so each barrier costs
a scheduler time slice instead of microseconds. Measured on 2 cores at a load average of
~17: the closed-form FC kernel, n = 2048, 0.59-0.67 s on one torch thread against 1.8-5.5 s
on two; CNN-GAP depth 3, n = 100, 65 s against 5.7 s in a pool of blocks.

The policy, on the CPU: every block runs single-threaded, and the blocks run in a pool of as
many Python threads as torch's configured intra-op thread count (torch releases the GIL in its
kernels, so the blocks do run in parallel). With one configured thread, or one block, they run
in the calling thread (also single-threaded). On other devices the blocks run one after the
other in the calling thread, as before. The caller's thread setting is restored on return.

On a busy machine (1-minute load average above the cores this process may use, not by its
own threads: :func:`machine_busy`) extra threads do not buy speed: they add
barrier and GIL waits on descheduled threads. Measured at load ~10 on 2 cores: the FC
kernel at n = 4000 took 0.67 s in a pool of two against 0.51 s in one thread;
``gradient_flow_mse`` at n = 2000 took 6.4 s with two torch and BLAS threads against
1.7 s with one. Then every block runs in the calling thread, single-threaded
(:func:`machine_busy`).

Dense solves (eigendecompositions through SciPy's LAPACK, whose BLAS threads ignore
``torch.set_num_threads``) use :func:`solver_threads`: torch's count for both on a quiet
machine, one thread when the machine is busy or the problem small.

``torch.set_num_threads`` also sets the default of threads created later, so a worker's call
would leak into the process: every function here restores the setting it found.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def _is_cpu(device) -> bool:
    return torch.device(device if device is not None else "cpu").type == "cpu"


@contextlib.contextmanager
def single_threaded(device="cpu"):
    """Run the body with one torch intra-op thread on the CPU; restore the setting after.

    For work made of many small operations (per-tile recursions, small solves), where the
    intra-op barriers cost more than the parallelism gains. A no-op on other devices.
    """
    if not _is_cpu(device):
        yield
        return
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_OWN = {"wall": None, "cpu": 0.0, "rate": 0.0}
_OWN_LOCK = threading.Lock()


def own_load() -> float:
    """This process's own part of the 1-minute load average, estimated: its CPU seconds
    (all threads) per second, averaged exponentially over a minute as the kernel averages
    the load, from the CPU time between consecutive calls (0 at the first call)."""
    wall, cpu = time.monotonic(), time.process_time()
    with _OWN_LOCK:
        last = _OWN["wall"]
        if last is not None and wall > last:
            dt = wall - last
            keep = math.exp(-dt / 60.0)
            _OWN["rate"] = _OWN["rate"] * keep + (cpu - _OWN["cpu"]) / dt * (1.0 - keep)
        _OWN["wall"], _OWN["cpu"] = wall, cpu
        return _OWN["rate"]


def machine_busy() -> bool:
    """Whether the 1-minute load average exceeds :func:`usable_cores` because of other
    processes: above the cores, and still leaving fewer idle cores than the configured torch
    threads (by more than half a core) once this process's own part (:func:`own_load`) is
    taken out. False where the load average is unavailable. A lagging, cheap signal: the
    state of the last minute.

    Without the second condition a process keeping its two threads busy on two cores made
    the machine "busy" by itself (load 2.04-2.12 in a quiet benchmark) and switched to one
    thread mid-run. Load left by a process that has just ended cannot be told from a running
    one's, so the first condition stays: below the cores, the machine counts as quiet.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    own = own_load()  # sampled at every call, so that its average stays current
    cores = usable_cores()
    if load <= cores:
        return False
    wanted = min(torch.get_num_threads(), cores)
    return load - own > cores - wanted + 0.5


def pool_size(n_items: int, device="cpu") -> int:
    """How many blocks run at once under this policy: 1 off the CPU or on a busy machine,
    else the configured intra-op thread count (at most ``n_items``)."""
    if not _is_cpu(device) or machine_busy():
        return 1
    return max(1, min(torch.get_num_threads(), n_items))


SMALL_SOLVE = 2048
_CONTROLLER: list = []


def _blas_controller():
    # One controller (a scan of the loaded libraries: 1.6 ms) reused by every call (0.01 ms);
    # SciPy's LAPACK is imported first so that its OpenBLAS is among them.
    if not _CONTROLLER:
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


@contextlib.contextmanager
def solver_threads(size: int, device="cpu"):
    """Threads for a dense solve of order ``size`` (torch's and the BLAS/LAPACK libraries'
    that SciPy and NumPy load, via ``threadpoolctl``): one when ``size <= SMALL_SOLVE`` or the
    machine is busy, else torch's configured count for both. A no-op off the CPU. Restores
    both settings."""
    if not _is_cpu(device):
        yield
        return
    one = size <= SMALL_SOLVE or machine_busy()
    n = 1 if one else torch.get_num_threads()
    with _blas_controller().limit(limits=n, user_api="blas"):
        if one:
            with single_threaded(device):
                yield
        else:
            yield


def run_blocks(work: Callable[[T], object], items: Iterable[T], device="cpu") -> None:
    """``work(item)`` for every item, under the policy above (CPU: single-threaded blocks in
    a pool of the configured thread count). The items must be independent (e.g. write
    disjoint parts of an output), so that the result does not depend on the order."""
    for _ in map_blocks(work, items, device):
        pass


def map_blocks(
    work: Callable[[T], R],
    items: Iterable[T],
    device="cpu",
    *,
    ahead: int | None = None,
    max_workers: int | None = None,
) -> Iterator[R]:
    """``work(item)`` for every item, yielded in the items' order, under the policy above.

    At most ``ahead`` blocks (default: twice the pool) are computed before the consumer takes
    them, so memory stays O(ahead) blocks. The thread setting is captured at this call, set
    to one thread while the blocks run, and restored when the iterator ends or is closed; the
    consumer's own code between items runs in its own thread with its own setting (one
    thread, unless it changes it). ``max_workers`` caps the pool (1: every block in the
    calling thread, single-threaded: for small problems, where a pool's start and the
    contention of its threads for the GIL outweigh its parallelism).
    """
    items = list(items)
    threads = torch.get_num_threads()
    workers = pool_size(len(items), device)
    if max_workers is not None:
        workers = max(1, min(workers, int(max_workers)))
    on_cpu = _is_cpu(device)
    ahead = 2 * workers if ahead is None else max(1, int(ahead))
    return _map_blocks(work, items, threads, workers, on_cpu, ahead)


def _map_blocks(work, items, threads, workers, on_cpu, ahead):
    if not on_cpu:
        for item in items:
            yield work(item)
        return
    torch.set_num_threads(1)
    try:
        if workers == 1:
            for item in items:
                yield work(item)
            return
        with ThreadPoolExecutor(
            max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            pending: deque = deque()
            it = iter(items)
            try:
                for item in it:
                    pending.append(pool.submit(work, item))
                    if len(pending) >= ahead:
                        break
                while pending:
                    result = pending.popleft().result()
                    for item in it:
                        pending.append(pool.submit(work, item))
                        break
                    yield result
            finally:
                for f in pending:
                    f.cancel()
    finally:
        torch.set_num_threads(threads)


SMALL_OPS = 1 << 24


def busy_threads(device="cpu"):
    """A context: one torch thread on a busy CPU (:func:`machine_busy`), else the configured
    threads. With more runnable threads than cores every intra-op region waits for a
    descheduled thread: beside one busy process per core, the empirical NTK of the model
    benchmark's transformer took 2.1-7.2 s per call on two threads and 2.6 s on one."""
    if _is_cpu(device) and machine_busy():
        return single_threaded(device)
    return contextlib.nullcontext()


def small_ops_threads(elements: int, device="cpu"):
    """A context for a sequence of operations on about ``elements`` numbers each: one torch
    thread on the CPU when that is at most ``SMALL_OPS`` (16 M) or the machine is busy, else
    the configured threads. Measured: Hessian-vector products of a 10-64-64-1 MLP on 256
    points (P = 4993) took 3.5 ms on one thread against 23-67 ms on two at load ~7."""
    if _is_cpu(device) and elements <= SMALL_OPS:
        return single_threaded(device)
    return busy_threads(device)
