r"""Kernels too large for memory: tiled on disk (Zarr 3), on Dask, resumable; solvers at scale.

An n x n kernel of n = 50 000 points is 10 GB per kernel in float32, 1 000 000 points 4 TB:
it cannot be held in RAM (neural-tangents users hit this as allocations of terabytes). This
module writes a kernel tile by tile into a chunked Zarr store, one chunk per tile, and solves
kernel regression by reading the store tile by tile.

Writing (:func:`kernel_to_zarr`). The kernel of any architecture of the closed-form engine
(``wn.mlp(...)``; each tile is assembled from blocks of
:meth:`widenet.architectures.MLP.kernel_tiler`, the very unit of work of the in-memory engine,
so the store equals ``arch.kernel(x, tile=block)`` bit for bit, by default ``arch.kernel(x)``) or
the empirical NTK of a ``torch.nn.Module`` (each tile one :func:`widenet.empirical_ntk` call on
its rows and columns; it equals the in-memory empirical NTK to rounding, not bit for bit,
because the block sizes and hence the GEMM summation order differ: 8e-17 relative (Frobenius)
measured in float64 on 100 points, tested to 1e-12). A tile with an overflowed (non-finite)
value is refused with FloatingPointError and gets no done marker. A symmetric kernel
(``x2=None``) computes only the tiles on and above the diagonal and writes each one and its
transpose, so the store holds the full matrix and any Zarr reader (``zarr.open_array``,
``dask.array.from_zarr``) sees an ordinary array.

Speed. A tile is computed in blocks of the in-memory engine's size (``block``, default 512)
and assembled as that engine assembles its output, the mirror of an off-diagonal tile from the
blocks' transposes, into page-aligned chunk-sized buffers reused from tile to tile (an edge
tile into the corner of one). A chunk of the store is its C-order bytes (Zarr 3, the
``bytes`` codec alone), so each chunk is written straight from its buffer with O_DIRECT where
the file system allows it: a kernel store is written once and is larger than the page cache,
whose copies cost more CPU than the disk's bandwidth here. At n = 50 000 (20 GB) the store's
time per tile is 0.83-1.16x the in-memory engine's (0.90-0.99x on the same 16 384 points;
benchmarks/README.md).

Safety. The store's attributes (``attrs["widenet"]``) record the architecture (or the model's
structure and a hash of its parameters), a SHA-256 of the inputs, shape, dtype, tile size,
kernels and the library version. Each tile has a done marker (array ``done``, one chunk per
tile) written only after both kernels' chunks of the tile and of its mirror, and their CRC32C
checksums (array ``checksum``, computed from the tile buffers already in memory), were written
(Zarr's local store and the O_DIRECT writer write each chunk to a temporary file and rename it,
so a chunk is never seen half written). A new store is built under a temporary name beside its
path (``.NAME.PID.HEX.creating``) and renamed into place, so a kill during creation leaves no
store (the temporary of a dead process is removed by the next run). Running the same call again
(the default ``resume=True``) checks that the metadata match (a store made by another
architecture, other inputs, dtype, tile or version is refused with :class:`StoreMismatchError`
rather than mixed), verifies every done tile against its checksums (``verify=True``: one read of
the done tiles), clears the markers of bad ones and recomputes them with the unfinished ones
(``store.repaired_tiles``). Killing a run at any moment (SIGKILL, a dead Dask worker) loses at
most the tiles in flight; a chunk changed, truncated or lost later is found by the checksums
(:func:`verify_store`), and a reader meeting an unreadable or non-finite tile stops with
:class:`CorruptStoreError` naming the store and the tile. Only a directory that is a widenet
store is ever deleted (``overwrite=True``). One writer at a time: the call holds an advisory
``flock`` on the store's ``zarr.json`` (:class:`_StoreLock` says what holds on shared file
systems) for its whole run, during which its threads, processes or Dask workers write under it;
a second writer gets :class:`StoreBusyError`.

Schedulers. ``"threads"`` (in-process; ``workers`` threads, default 1: torch's intra-op threads
already use the cores), ``"processes"`` (a pool of ``workers`` spawned processes, the tiler sent
once to each by cloudpickle), or Dask: a ``distributed.Client`` or a scheduler address
``"tcp://host:port"`` (each tile a task; the tiler is scattered once to every worker; a task
whose worker dies is rerun elsewhere by Dask, and it rewrites its whole tile). Every worker must
see the store path (a shared file system). Nothing here starts a server: a LocalCluster is the
caller's, and one started by widenet's tests and benchmark listens on 127.0.0.1 only.

Solvers reading the store (never the whole matrix unless asked to):

- :func:`kernel_ridge` solves (K + ridge I) alpha = y: by Cholesky in memory when the n x n
  float64 matrix fits in ``memory_limit_bytes`` (``method="auto"``), else by preconditioned
  conjugate gradients (Hestenes & Stiefel 1952) whose mat-vecs stream the store's upper tiles
  (in process or as Dask tasks), with a column-Nystrom preconditioner P = C W^+ C^T + ridge I
  from ``rank`` random landmark columns (Williams & Seeger 2001; as a CG preconditioner:
  Frangella, Tropp & Udell 2023, "Randomized Nystrom preconditioning"), applied by Woodbury.
  Predictions at test points are ``KernelStore.matmul`` of a test-train store with alpha.
- :func:`gradient_flow_mse` gives the closed-form outputs of gradient flow on the MSE loss at
  times t (Lee et al. 2019, eqs. 8-11, as :func:`widenet.dynamics.gradient_flow_mse` with
  f_0 = 0, the infinite-width ensemble mean) from the top ``rank`` eigenpairs of Theta computed
  by Lanczos (ARPACK's implicitly restarted Lanczos, ``scipy.sparse.linalg.eigsh``, on a
  ``LinearOperator`` whose mat-vec streams the store), with a rigorous error bound (its
  docstring).

Devices: tiles are computed where the inputs (or the model) are, CUDA included, and moved to
the host to be written; the solvers run on the CPU in float64 (NumPy/SciPy).

Using an existing cluster: start a scheduler and workers the usual way (``dask scheduler`` +
``dask worker tcp://host:8786``, ``dask_jobqueue.SLURMCluster(...).scale(jobs=...)``, or the
Dask Kubernetes operator's ``KubeCluster``), make the store path visible to every worker (a
shared file system mounted at the same path), and pass ``scheduler=cluster.scheduler_address``
or a ``Client`` (CLI: ``--scheduler tcp://host:8786``). widenet itself never opens a port; the
test suite's and the benchmark's clusters (:func:`local_cluster`) listen on 127.0.0.1 only, with no
HTTP server.

Measured (2-core shared development machine, load average 8-14 from other jobs, so absolute
times are inflated): the test suite's stores of 64-256 points are bit-identical to
``arch.kernel(x, tile=...)``; a writer SIGKILLed once 5 or more of its 78 tiles were done and
then rerun computed exactly the missing ones (tests/test_scale.py); a Dask worker SIGKILLed
once 10 or more of 210 tiles were done lost none (tests/test_scale_dask.py); a writer
SIGKILLed at chosen steps of its log (during creation, inside a chunk write, between a tile's
chunks and its checksum or marker, and again while resuming) and rerun gave a store equal bit
for bit to an uninterrupted one (tests/test_reliability_store.py). Benchmark figures
are in ``benchmarks/README.md`` (``benchmarks/bench_scale.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import glob
import hashlib
import json
import logging
import math
import mmap
import multiprocessing
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no writer lock
    fcntl = None

from widenet._checks import as_tensor, check_finite, check_int, check_real
from widenet._version import __version__
from widenet.architectures import DEFAULT_TILE as ENGINE_TILE
from widenet.architectures import MLP, Architecture
from widenet.kernels import check_finite_result as _check_finite_result
from widenet.kernels import check_tile, resolve_get, tile_grid
from widenet.threads import run_blocks

__all__ = [
    "FORMAT",
    "CorruptStoreError",
    "KernelStore",
    "RidgeSolution",
    "StoreBusyError",
    "StoreMismatchError",
    "StoreReport",
    "TruncatedFlow",
    "WorkerDiedError",
    "check_scheduler",
    "gradient_flow_mse",
    "is_kernel_store",
    "kernel_ridge",
    "kernel_to_zarr",
    "local_cluster",
    "open_kernel",
    "tile_checksum",
    "verify_store",
]

# /2: a CRC32C checksum of every chunk recorded with each tile's done marker (array
# "checksum"). Stores of /1 are still read; they are refused for resuming (StoreMismatchError).
FORMAT = "widenet-kernel-store/2"
_FORMAT_PREFIX = "widenet-kernel-store/"
_log = logging.getLogger(__name__)
# The tile of a store on disk: one chunk per tile, so larger than the in-memory engine's
# (widenet.architectures.DEFAULT_TILE, 512): fewer files and done markers, and a 4096^2 float64
# chunk (128 MiB) still fits in memory. The only tile constant of this module; DEFAULT_TILE is
# the engine's alone (scale.DEFAULT_TILE, the former name of STORE_TILE, warns: __getattr__).
STORE_TILE = 4096
SCHEDULERS = ("threads", "processes")
_KINDS = ("nngp", "ntk")


def __getattr__(name: str):
    # scale.DEFAULT_TILE was the store's tile (4096), easily taken for the engine's
    # architectures.DEFAULT_TILE (512): still answered for old scripts, with a warning.
    if name == "DEFAULT_TILE":
        import warnings

        warnings.warn(
            "widenet.scale.DEFAULT_TILE is deprecated: the store's chunk tile is "
            "widenet.scale.STORE_TILE (4096); widenet.architectures.DEFAULT_TILE (512) is the "
            "in-memory engine's",
            DeprecationWarning,
            stacklevel=2,
        )
        return STORE_TILE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StoreMismatchError(ValueError):
    """An existing store was made by a different computation than the one requested."""


class StoreBusyError(OSError):
    """Another process holds the store's writer lock (it is computing the same store). An
    OSError, like the EWOULDBLOCK of the lock it reports."""


class CorruptStoreError(ValueError):
    """A tile of a store is unreadable, non-finite or fails its checksum."""


class WorkerDiedError(ChildProcessError):
    """A worker process of ``scheduler="processes"`` died; the store is resumable. A
    ChildProcessError (an OSError), as a failure of a child process."""


# --------------------------------------------------------------------------------------------
# Progress (rich, on stderr, with ETA)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(k)``; a rich bar with count, elapsed time and ETA when ``enabled``."""
    if not enabled:
        yield lambda k=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k=1: bar.advance(task, k)


# --------------------------------------------------------------------------------------------
# What a tile is computed from
# --------------------------------------------------------------------------------------------


def _sha256(x: torch.Tensor) -> str:
    arr = x.detach().cpu().contiguous().numpy()
    return hashlib.sha256(arr.tobytes()).hexdigest()


@dataclass(frozen=True)
class _ArchSource:
    """Tiles of a closed-form architecture kernel, each assembled from ``block``-sized blocks
    of the engine's own :class:`FCTiler` exactly as ``arch.kernel(x, tile=block)`` assembles
    its output (so the store equals it bit for bit). Blocks of the engine's default size keep
    the temporaries in cache (a 4096² tile computed whole is ~1.25x slower than in 512²
    blocks), and the mirror tile of a symmetric kernel is assembled from the blocks'
    transposes while they are in cache (transposing the 4096² tile afterwards cost ~0.07 s
    per kernel, a sixth of the tile's arithmetic)."""

    tiler: object  # widenet.kernels.FCTiler
    gets: tuple[str, ...]
    block: int

    def with_mirror(self, rows: slice, cols: slice, mirror: bool, alloc):
        """({kernel: K[rows, cols]}, {kernel: K[cols, rows]} or None); ``alloc(shape, like)``
        gives the output tensors."""
        n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
        diag = self.tiler.symmetric and rows == cols
        x = self.tiler.x1
        out = {g: alloc((n_r, n_c), x) for g in self.gets}
        back = {g: alloc((n_c, n_r), x) for g in self.gets} if mirror else None

        def work(rc):  # each block writes its own parts of out and back
            r, c = rc
            k = self.tiler(_shift(r, rows.start), _shift(c, cols.start))
            for g in self.gets:
                b = getattr(k, g)
                out[g][r, c] = b
                if diag and r != c:
                    out[g][c, r] = b.T
                if back is not None:
                    back[g][c, r] = b.T

        # CPU: single-threaded blocks in a pool of the configured thread count, as the
        # in-memory engine (widenet.threads); on a loaded machine the intra-op barriers of a
        # block's small operations cost more than the work.
        grid = tile_grid(n_r, n_c, min(self.block, max(n_r, n_c)), symmetric=diag)
        run_blocks(work, grid, x.device)
        return out, back


class _BufferPool:
    """Host tile buffers reused from tile to tile (thread-safe), each the size of a whole
    chunk: a tile of another shape (an edge tile) gets the corner of one, so that its chunk is
    written straight from it (:meth:`_Task._write`). A fresh 64 MB buffer costs
    40-60 ms of page faults (system time) on the 2-core development machine, a sixth of a
    tile's arithmetic, for each of the up to four buffers of a tile; the pool holds as many
    as are in flight at once (two tiles' worth in the pipelined writer). Buffers are kept per
    tile shape, so an edge buffer's padding is never written: it stays zero."""

    def __init__(self, chunk: tuple[int, int]):
        self.chunk = chunk
        self._free: dict = {}
        self._owned: set[int] = set()
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu":
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        with self._lock:
            free = self._free.get((shape, like.dtype))
            if free:
                return free.pop()
        whole = tuple(max(s, c) for s, c in zip(shape, self.chunk, strict=True))
        t = _host_empty(whole, like)[: shape[0], : shape[1]]
        with self._lock:
            self._owned.add(t.data_ptr())
        return t

    def owns(self, t: torch.Tensor) -> bool:
        with self._lock:
            return t.device.type == "cpu" and t.data_ptr() in self._owned

    def put(self, t: torch.Tensor) -> None:
        with self._lock:
            if t.data_ptr() in self._owned:
                self._free.setdefault((tuple(t.shape), t.dtype), []).append(t)


def _host_empty(shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised host tensor of ``like``'s dtype, page-aligned (its own mmap, zero
    until written) as O_DIRECT requires (see ``_put_unbuffered``)."""
    np_dtype = torch.empty((), dtype=like.dtype).numpy().dtype
    buf = mmap.mmap(-1, max(1, shape[0] * shape[1] * np_dtype.itemsize))
    arr = np.frombuffer(buf, dtype=np_dtype, count=shape[0] * shape[1]).reshape(shape)
    return torch.from_numpy(arr)  # keeps arr, hence the mmap, alive


def _whole_chunk(a: torch.Tensor, chunk: tuple[int, int]) -> np.ndarray | None:
    """The C-order array of shape ``chunk`` whose top-left corner is ``a`` (a tile, or an edge
    tile, in a chunk-sized buffer of :class:`_BufferPool`), or None if ``a`` is not in one."""
    c0, c1 = chunk
    if (
        a.device.type != "cpu"
        or a.storage_offset() != 0
        or a.shape[0] > c0
        or a.shape[1] > c1
        or (a.shape[0] > 1 and a.stride(0) != c1)
        or (a.shape[1] > 1 and a.stride(1) != 1)
        or a.untyped_storage().nbytes() < c0 * c1 * a.element_size()
    ):
        return None
    return a.as_strided((c0, c1), (c1, 1)).numpy()


def _shift(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by)


@dataclass(frozen=True)
class _EmpiricalSource:
    """Tiles of the empirical NTK (trace mode) of a model, from one
    :class:`widenet.empirical.EmpiricalNTKTiles`: planned once per process, each tile computed
    in the sample blocks and output groups that fit its memory limit."""

    tiles: object  # widenet.empirical.EmpiricalNTKTiles

    def __call__(self, rows: slice, cols: slice) -> dict[str, torch.Tensor]:
        return {"ntk": self.tiles(rows, cols)}


def _arch_metadata(arch: Architecture, width) -> dict:
    if not isinstance(arch, MLP):
        return dict(kind="serial", layers=arch.spec(), width=width)
    act = arch.activation
    return dict(
        kind="mlp",
        depth=arch.depth,
        activation=act.name,
        activation_params=[float(p) for p in act.params],
        closed_form=bool(act.closed_form),
        w_std=arch.w_std,
        b_std=arch.b_std,
        out_dim=arch.out_dim,
        parameterization=arch.parameterization,
        width=width,
    )


def _model_metadata(model: nn.Module, options: dict) -> dict:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(_sha256(p).encode())
    return dict(
        kind="empirical_ntk",
        model=repr(model),
        parameters_sha256=h.hexdigest(),
        options={
            k: (v if isinstance(v, (int, float, str)) else repr(v)) for k, v in options.items()
        },
    )


def _block_size(block, tile: int) -> int:
    if block is None:
        return ENGINE_TILE if tile % ENGINE_TILE == 0 else tile
    block = check_tile(block)
    if tile % block:
        raise ValueError(f"block must divide tile ({tile}), got {block}")
    return block


def _make_source(kernel, x1, x2, *, get, dtype, width, tile, block, ntk_options):
    """(source, x1, x2, gets, architecture metadata) for an MLP or a torch model."""
    if isinstance(kernel, Architecture):
        need_nngp, need_ntk = resolve_get(get)
        if ntk_options:
            raise ValueError(
                f"{sorted(ntk_options)} apply only to the empirical NTK of a torch model"
            )
        block = _block_size(block, tile)
        tiler = kernel.kernel_tiler(x1, x2, get=get, dtype=dtype, width=width)
        gets = tuple(g for g, need in zip(_KINDS, (need_nngp, need_ntk), strict=True) if need)
        source = _ArchSource(tiler, gets, block)
        return source, tiler.x1, tiler.x2, gets, _arch_metadata(kernel, width)
    if isinstance(kernel, nn.Module):
        if get not in ("ntk", ("ntk",)):
            raise ValueError(
                f"a torch model's store holds its empirical NTK only: get='ntk', got {get!r}"
            )
        if width is not None:
            raise ValueError("width applies to an architecture (wn.mlp), not to a torch model")
        if block is not None:
            raise ValueError("block applies to an architecture (wn.mlp), not to a torch model")
        if ntk_options.get("mode", "trace") != "trace":
            raise ValueError(
                "the store holds the empirical NTK in mode='trace' (n1, n2); got "
                f"mode={ntk_options['mode']!r}"
            )
        x1 = as_tensor(x1, "x1", dtype=dtype)
        x2 = None if x2 is None or x2 is x1 else as_tensor(x2, "x2", dtype=dtype)
        from widenet.empirical import empirical_ntk_tiles

        options = {key: v for key, v in ntk_options.items() if key != "mode"}
        source = _EmpiricalSource(empirical_ntk_tiles(kernel, x1, x2, **options))
        # Validate everything (shapes, dtypes, BatchNorm in train mode, ...) on a tiny tile.
        source(slice(0, 1), slice(0, 1))
        return source, x1, x2, ("ntk",), _model_metadata(kernel, ntk_options)
    raise TypeError(
        "kernel must be an architecture (wn.mlp(...)) or a torch.nn.Module (empirical NTK), "
        f"got {type(kernel).__name__}"
    )


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


_DIRECT_ALIGN = 4096  # O_DIRECT needs offset, length and buffer aligned to the block size


def _put_unbuffered(path: Path, data: np.ndarray) -> bool:
    """Write a chunk's bytes with O_DIRECT to a temporary file renamed into place, as zarr's
    LocalStore does; False (nothing written) where O_DIRECT is unavailable or ``data`` (C
    order) is not page-aligned in length and address."""
    n = data.nbytes
    if (
        not hasattr(os, "O_DIRECT")
        or n == 0
        or n % _DIRECT_ALIGN
        or data.ctypes.data % _DIRECT_ALIGN
        or not data.flags.c_contiguous
    ):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    except OSError:  # e.g. EINVAL on tmpfs, which has no O_DIRECT
        return False
    view = memoryview(data.reshape(-1).view(np.uint8))
    try:
        written = 0
        while written < n:
            written += os.write(fd, view[written:])
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(path)
    return True


def _raw_chunks(arr) -> bool:
    """Whether a chunk of ``arr`` is stored as its C-order bytes: Zarr 3 with the ``bytes``
    codec alone, in this machine's byte order (the Zarr v3 specification, "bytes" codec)."""
    import sys

    from zarr.codecs import BytesCodec

    codecs = getattr(arr.metadata, "codecs", ())
    return (
        arr.metadata.zarr_format == 3
        and len(codecs) == 1
        and isinstance(codecs[0], BytesCodec)
        and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
    )


def _open_array(path: str, name: str):
    import zarr

    # write_empty_chunks: a tile is never all fill value (NaN), so skip zarr's scan for it
    # (~20 ms per 64 MB chunk). open_array(config=...) ignores it for an existing array
    # (zarr 3.1), with_config does not.
    arr = zarr.open_array(path, path=name, mode="r+")
    return arr.with_config({"write_empty_chunks": True})


def _compute_tile(source, gets, symmetric: bool, rows: slice, cols: slice, pool) -> dict:
    """{kernel: (K[rows, cols], K[cols, rows] or None)} in host buffers of ``pool`` (a
    :class:`_BufferPool`); the mirror only for an off-diagonal tile of a symmetric kernel."""
    mirror = symmetric and rows != cols
    if isinstance(source, _ArchSource):
        blocks, back = source.with_mirror(rows, cols, mirror, pool.get)
    else:
        blocks = source(rows, cols)
        back = {g: b.T for g, b in blocks.items()} if mirror else None
    out = {}
    for name in gets:
        block = blocks[name].detach()
        _check_finite_result(block, name.upper())
        pair = (block, None if back is None else back[name].detach())
        out[name] = tuple(None if t is None else _in_buffer(t, pool) for t in pair)
    return out


def tile_checksum(a) -> int:
    """CRC32C (Castagnoli) of a tile's values in C order, as the store records it.

    ``a``: a host tensor or NumPy array (any strides; a strided edge tile is copied). CRC32C
    rather than zlib's CRC-32: the same 32 bits of protection against random corruption, in
    hardware (SSE4.2 / ARMv8 CRC instructions) through ``google-crc32c``, which zarr 3 itself
    requires: 4 ms per 64 MB tile against zlib's 10 ms on the development machine.
    """
    arr = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return int(google_crc32c.value(arr))


def _in_buffer(t: torch.Tensor, pool) -> torch.Tensor:
    if pool.owns(t):
        return t
    # torch's blocked copy transposes a mirror 2-4x faster than NumPy's strided copy.
    return pool.get(tuple(t.shape), torch.empty((), dtype=t.dtype)).copy_(t)


class _Task:
    """Everything a worker needs for any tile; picklable by cloudpickle. Each copy (one per
    worker process) opens the store's arrays once, on first use, and has its own buffers."""

    def __init__(
        self, source, path: str, gets, tile: int, chunk, symmetric: bool, *, threads, direct_io
    ):
        self.source, self.path, self.gets = source, path, tuple(gets)
        self.tile, self.chunk, self.symmetric = tile, tuple(chunk), symmetric
        self.torch_threads, self.direct_io = threads, direct_io
        self._arrays: dict = {}
        self._buffers = _BufferPool(self.chunk)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_arrays", "_buffers")}

    def __setstate__(self, state):
        self.__dict__.update(state, _arrays={}, _buffers=_BufferPool(state["chunk"]))

    def arrays(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = _open_array(self.path, name)
        return self._arrays[name]

    def compute(self, rows: slice, cols: slice) -> dict:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return _compute_tile(self.source, self.gets, self.symmetric, rows, cols, self._buffers)

    def store(self, rows: slice, cols: slice, blocks: dict) -> tuple[int, int]:
        """Write a computed tile (and its mirror), then its done marker; the buffers go back
        to the pool."""
        i, j = rows.start // self.tile, cols.start // self.tile
        crc = np.zeros((2, len(self.gets)), dtype=np.uint32)
        for k, name in enumerate(self.gets):
            a, a_mirror = blocks[name]
            crc[0, k] = tile_checksum(a)
            self._write(name, rows, cols, a)
            if a_mirror is not None:
                crc[1, k] = tile_checksum(a_mirror)
                self._write(name, cols, rows, a_mirror)
        # The checksums, then the marker: a tile is done only once all of it is on disk.
        self.arrays("checksum")[i, j] = crc
        self.arrays("done")[i, j] = 1
        for pair in blocks.values():
            for a in pair:
                if a is not None:
                    self._buffers.put(a)
        return i, j

    def _write(self, name: str, rows: slice, cols: slice, a: torch.Tensor) -> None:
        # The chunk's bytes straight from the tile's chunk-sized buffer, with O_DIRECT: no
        # copy by zarr, and an edge tile's chunk (stored whole by zarr, padding included)
        # not allocated, filled and copied again (~0.1 s per 64 MB edge chunk). Otherwise,
        # or where O_DIRECT is refused, zarr writes it through the page cache.
        arr = self.arrays(name)
        c0, c1 = arr.chunks
        if self.direct_io and rows.start % c0 == 0 and cols.start % c1 == 0 and _raw_chunks(arr):
            whole = _whole_chunk(a, arr.chunks)
            key = arr.metadata.encode_chunk_key((rows.start // c0, cols.start // c1))
            if whole is not None and _put_unbuffered(Path(self.path, name, key), whole):
                return
        arr[rows, cols] = a.numpy()

    def __call__(self, rows: slice, cols: slice) -> tuple[int, int]:
        return self.store(rows, cols, self.compute(rows, cols))


_REPAIR = (
    "run widenet.scale.verify_store (CLI: `widenet verify STORE`) to list the bad tiles, then "
    "the same kernel_to_zarr call (CLI: `widenet kernel`) again to recompute them"
)


class KernelStore:
    """A kernel in a Zarr store written by :func:`kernel_to_zarr`: metadata, tiles, mat-vecs.

    ``store.meta`` is the recorded metadata; ``store.array("ntk")`` the zarr array;
    ``store.load("ntk")`` the whole matrix as a float64 tensor (only when it fits);
    ``store.matmul(v, "ntk")`` the product K v streamed tile by tile. Tiles read for mat-vecs
    are kept in memory (float64) up to ``cache_bytes`` (default 256 MiB), which spares the
    iterative solvers most reads of a kernel that fits; larger ones stream from the store.
    """

    def __init__(self, path, *, cache_bytes: int = 256 * 2**20):
        import zarr

        self.path = str(path)
        try:
            group = zarr.open_group(self.path, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(f"no kernel store at {self.path}") from None
        meta = dict(group.attrs).get("widenet")
        if not isinstance(meta, dict) or not str(meta.get("format")).startswith(_FORMAT_PREFIX):
            raise ValueError(
                f"{self.path} is a Zarr store but not a widenet kernel store ({FORMAT})"
            )
        self.meta = meta
        self.written_tiles: tuple[tuple[int, int], ...] = ()
        self.repaired_tiles: tuple[tuple[int, int], ...] = ()
        self._arrays: dict = {}
        self._tiles: dict = {}
        self._cache_left = check_int(cache_bytes, "cache_bytes", minimum=0)
        self._complete = False

    # -- description ---------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.meta["shape"])

    @property
    def tile(self) -> int:
        return int(self.meta["tile"])

    @property
    def symmetric(self) -> bool:
        return bool(self.meta["symmetric"])

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(self.meta["kernels"])

    def array(self, which: str = "ntk"):
        import zarr

        self._check_which(which)
        if which not in self._arrays:
            self._arrays[which] = zarr.open_array(self.path, path=which, mode="r")
        return self._arrays[which]

    def read(self, which: str, rows: slice, cols: slice) -> np.ndarray:
        """K[rows, cols] in the store's dtype, checked: an unreadable chunk or a non-finite
        value raises :class:`CorruptStoreError` naming the store and the tile."""
        t = self.tile
        try:
            block = np.asarray(self.array(which)[rows, cols])
        except (ValueError, OSError, TypeError) as err:
            if rows.stop - rows.start > t or cols.stop - cols.start > t:
                for i0 in range(rows.start, rows.stop, t):  # find the unreadable tile
                    for j0 in range(cols.start, cols.stop, t):
                        self.read(
                            which,
                            slice(i0, min(i0 + t, rows.stop)),
                            slice(j0, min(j0 + t, cols.stop)),
                        )
            raise CorruptStoreError(
                f"{self.path}: tile ({rows.start // t}, {cols.start // t}) of {which} is "
                f"unreadable ({err}); {_REPAIR}"
            ) from None
        finite = np.isfinite(block)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            i, j = (rows.start + int(r)) // t, (cols.start + int(c)) // t
            raise CorruptStoreError(
                f"{self.path}: tile ({i}, {j}) of {which} holds {int((~finite).sum())} "
                f"non-finite value(s) (e.g. at row {rows.start + int(r)}, column "
                f"{cols.start + int(c)}): the store is corrupt; {_REPAIR}"
            )
        return block

    def _tile(self, which: str, rows: slice, cols: slice) -> np.ndarray:
        key = (which, rows.start, cols.start)
        block = self._tiles.get(key)
        if block is None:
            block = self.read(which, rows, cols).astype(np.float64, copy=False)
            if block.nbytes <= self._cache_left:
                self._tiles[key] = block
                self._cache_left -= block.nbytes
        return block

    def _check_which(self, which: str) -> None:
        if which not in self.kernels:
            raise ValueError(
                f"which must be one of {self.kernels} (the kernels in {self.path}), got {which!r}"
            )

    def grid(self) -> list[tuple[slice, slice]]:
        """Every tile to compute: on and above the diagonal for a symmetric kernel."""
        return list(tile_grid(*self.shape, self.tile, symmetric=self.symmetric))

    def done(self) -> np.ndarray:
        """(tiles along rows, tiles along columns) bool: which tiles are complete."""
        import zarr

        return zarr.open_array(self.path, path="done", mode="r")[:] == 1

    def pending(self) -> list[tuple[slice, slice]]:
        done = self.done()
        t = self.tile
        return [(r, c) for r, c in self.grid() if not done[r.start // t, c.start // t]]

    @property
    def complete(self) -> bool:
        return not self.pending()

    def _require_complete(self) -> None:
        if self._complete:  # markers are never removed by widenet
            return
        left = len(self.pending())
        if left:
            raise ValueError(
                f"{self.path} is incomplete ({left} of {len(self.grid())} tiles not done); "
                "run the same kernel_to_zarr call (or `widenet kernel` command) again to finish it"
            )
        self._complete = True

    # -- reading -------------------------------------------------------------------------

    def load(self, which: str = "ntk", *, dtype=torch.float64, progress: bool = False):
        """The whole matrix in memory (n1 x n2 x 8 bytes in float64): for kernels that fit."""
        self._check_which(which)
        self._require_complete()
        n1, n2 = self.shape
        out = torch.empty((n1, n2), dtype=dtype)
        starts = range(0, n1, self.tile)
        with _progress(len(starts), f"loading {which} {n1}x{n2}", progress) as advance:
            for i0 in starts:
                rows = slice(i0, min(i0 + self.tile, n1))
                out[rows] = torch.from_numpy(self.read(which, rows, slice(0, n2)))
                advance(1)
        return out

    def _strip_product(self, which: str, i0: int, v: np.ndarray) -> np.ndarray:
        """Contribution of tile row ``i0`` to K v, as a dense (n1, k) float64 array."""
        n1, n2 = self.shape
        t = self.tile
        out = np.zeros((n1, v.shape[1]))
        rows = slice(i0, min(i0 + t, n1))
        for j0 in range(i0 if self.symmetric else 0, n2, t):
            cols = slice(j0, min(j0 + t, n2))
            block = self._tile(which, rows, cols)
            out[rows] += block @ v[cols]
            if self.symmetric and j0 != i0:  # the mirror tile, without reading it
                out[cols] += block.T @ v[rows]
        return out

    def matmul(self, v, which: str = "ntk", *, scheduler=None, progress: bool = False):
        """K v for v of shape (n2,) or (n2, k), in float64, streaming the tiles.

        A symmetric store is read only on and above the diagonal (half the bytes). Memory: one
        tile plus O(n k). ``scheduler``: None (in process) or a Dask ``Client`` / address (one
        task per tile row, the partial products summed here).
        """
        self._check_which(which)
        self._require_complete()
        v = as_tensor(v, "v", dtype=torch.float64).cpu().numpy()
        squeeze = v.ndim == 1
        v = v[:, None] if squeeze else v
        if v.ndim != 2 or v.shape[0] != self.shape[1]:
            raise ValueError(
                f"v must have shape ({self.shape[1]},) or ({self.shape[1]}, k), got {v.shape}"
            )
        check_finite(torch.from_numpy(v), "v")
        starts = list(range(0, self.shape[0], self.tile))
        out = np.zeros((self.shape[0], v.shape[1]))
        with _progress(len(starts), f"K v ({which})", progress) as advance:
            if scheduler is None:
                for i0 in starts:
                    out += self._strip_product(which, i0, v)
                    advance(1)
            else:
                with _client(scheduler) as client:
                    from distributed import as_completed

                    vf = client.scatter(v, broadcast=True)
                    futs = [
                        client.submit(_strip_task, self.path, which, i0, vf, pure=False)
                        for i0 in starts
                    ]
                    for fut in as_completed(futs, loop=client.loop):
                        out += fut.result()
                        advance(1)
        return torch.from_numpy(out[:, 0] if squeeze else out)

    def diagonal(self, which: str = "ntk") -> torch.Tensor:
        """The diagonal (float64), reading only the diagonal tiles."""
        self._check_which(which)
        self._require_complete()
        n = min(self.shape)
        t = self.tile
        parts = [
            np.diag(self.read(which, slice(i, min(i + t, n)), slice(i, min(i + t, n))))
            for i in range(0, n, t)
        ]
        return torch.from_numpy(np.concatenate(parts).astype(np.float64))

    def columns(self, which: str, index: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """K[:, index] (n1, len(index)) float64, one pass over the tiles that hold them."""
        self._check_which(which)
        self._require_complete()
        n1, n2 = self.shape
        t = self.tile
        out = np.empty((n1, len(index)))
        starts = sorted({int(c) // t * t for c in index})
        with _progress(len(starts), f"columns ({which})", progress) as advance:
            for j0 in starts:
                sel = np.nonzero((index >= j0) & (index < j0 + t))[0]
                for i0 in range(0, n1, t):
                    block = self.read(which, slice(i0, min(i0 + t, n1)), slice(j0, min(j0 + t, n2)))
                    out[i0 : i0 + t, sel] = block[:, index[sel] - j0]
                advance(1)
        return out


def _strip_task(path: str, which: str, i0: int, v: np.ndarray) -> np.ndarray:
    return KernelStore(path)._strip_product(which, i0, v)


def open_kernel(path) -> KernelStore:
    """Open a kernel store written by :func:`kernel_to_zarr` (read-only use)."""
    return KernelStore(path)


def check_scheduler(scheduler, workers=None) -> str:
    """Validate ``scheduler`` (and ``workers``) before anything is created or connected.

    Returns ``"threads"``, ``"processes"`` or ``"dask"``. A Dask address must use a protocol
    distributed knows (``tcp://``, ``tls://``, ``inproc://``, ``ws://``, ``wss://``, ``ucx://``);
    ``"bogus://x"`` is refused here rather than by a Client that then hangs on its own cleanup.
    """
    expected = (
        "scheduler must be 'threads', 'processes', a Dask scheduler address such as "
        "'tcp://127.0.0.1:8786', or a distributed.Client"
    )
    if isinstance(scheduler, str) and scheduler in SCHEDULERS:
        if workers is not None:
            check_int(workers, "workers", minimum=1)
        return scheduler
    if isinstance(scheduler, str) and "://" in scheduler:
        from distributed.comm.registry import backends

        protocol, _, location = scheduler.partition("://")
        if protocol not in backends or not location:
            raise ValueError(
                f"{expected}; got {scheduler!r}: unknown protocol {protocol!r} (known: "
                f"{', '.join(p + '://' for p in sorted(backends))})"
                if protocol not in backends
                else f"{expected}; got {scheduler!r} (no host after '://')"
            )
    else:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - a dependency of widenet
            Client = ()
        if not isinstance(scheduler, Client):
            raise ValueError(f"{expected}; got {scheduler!r}")
    if workers is not None:
        raise ValueError("workers applies to 'threads' and 'processes'; a Dask cluster has its own")
    return "dask"


@contextlib.contextmanager
def _client(scheduler):
    """A Dask client: the caller's ``Client`` (left open) or one connected to an address."""
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - a dependency of widenet
        raise ImportError(f"Dask schedulers need dask[distributed]: {err}") from None
    if check_scheduler(scheduler) != "dask":
        raise ValueError(f"scheduler must be a Dask address or Client here, got {scheduler!r}")
    if isinstance(scheduler, Client):
        yield scheduler
        return
    try:
        client = Client(scheduler, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise OSError(f"could not connect to the Dask scheduler at {scheduler}: {err}") from None
    try:
        yield client
    finally:
        client.close()


def local_cluster(workers: int = 2, *, threads_per_worker: int = 1):
    """A ``distributed.LocalCluster`` of ``workers`` processes on 127.0.0.1, no HTTP servers.

    Listening: the scheduler's and each worker's and nanny's comm port (tcp, random ports),
    all on 127.0.0.1; nothing else. In distributed (checked with 2026.8) a scheduler and every
    worker start an HTTP server whatever ``dashboard_address`` says (``None`` means the
    default port 8787, ``":0"`` a random port, both serving the JSON/Prometheus/health
    routes): here they serve no routes and are stopped once up, the workers' by a worker
    plugin that also stops the HTTP server of a worker a nanny restarts. Use it as a context
    manager and connect with ``distributed.Client(cluster)``.
    """
    import dask
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin

    class NoHttpServer(WorkerPlugin):
        name = "widenet-no-http-server"

        def setup(self, worker):
            worker.http_server.stop()

    no_routes = {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}
    with dask.config.set(no_routes):
        cluster = distributed.LocalCluster(
            n_workers=check_int(workers, "workers", minimum=1),
            threads_per_worker=check_int(threads_per_worker, "threads_per_worker", minimum=1),
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            worker_dashboard_address=None,
            scheduler_kwargs=dict(dashboard=False, dashboard_address="127.0.0.1:0"),
            silence_logs=50,
        )
    try:
        cluster.scheduler.http_server.stop()
        with distributed.Client(cluster, set_as_default=False) as client:
            client.register_plugin(NoHttpServer())
    except BaseException:
        cluster.close()
        raise
    return cluster


# --------------------------------------------------------------------------------------------
# Creating, locking and verifying a store
# --------------------------------------------------------------------------------------------


def is_kernel_store(path) -> bool:
    """Whether ``path`` is a directory whose Zarr group metadata (``zarr.json``) has the
    attribute ``widenet`` of a kernel store: the only directories ``overwrite=True`` deletes."""
    try:
        with open(Path(path, "zarr.json"), "rb") as f:
            meta = json.load(f)
        fmt = meta["attributes"]["widenet"]["format"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX)


class _StoreLock:
    """An advisory writer lock: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the group's
    ``zarr.json`` (a file every store has and widenet never rewrites, so no extra file appears
    among the group's members). Released when the descriptor is closed, including by the
    kernel when the process dies, so a killed writer never leaves a stale lock.

    flock is exact between processes of one host. On a shared file system it holds across
    hosts only where the file system makes flock coherent (Linux NFS clients emulate it by
    byte-range locks sent to the server, NFSv4 or NFSv3 with lockd; Lustre mounted with
    ``-o flock``; not ``-o localflock``/``nolock``, where it is per host): there, start one
    writer per store.
    """

    def __init__(self, group_dir: Path):
        self.path = Path(group_dir)
        target = self.path / "zarr.json"
        try:
            self._file = open(target, "r+b", buffering=0)  # noqa: SIM115 - held until release
        except PermissionError:  # write access is for NFS's emulation of flock only
            self._file = open(target, "rb", buffering=0)  # noqa: SIM115
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise StoreBusyError(
                f"{group_dir} is being written by another process (it holds the lock on "
                f"{target}); wait for it to finish (then rerun to check or complete the store), "
                "or use another path"
            ) from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _creating_dirs(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{glob.escape(path.name)}.*.creating"))


def _remove_stale_creations(path: Path) -> None:
    """Delete temporary directories ``.NAME.PID.HEX.creating`` left by a creation that was
    killed before its rename: only those of a process that is gone (this host) whose lock is
    free."""
    for tmp in _creating_dirs(path):
        pid = tmp.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still running: maybe creating it now
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif pid.isdigit():
            continue
        try:
            lock = _StoreLock(tmp) if (tmp / "zarr.json").exists() else None
        except StoreBusyError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            lock.release()


def _create_store(path: Path, meta: dict, dtype: torch.dtype) -> _StoreLock | None:
    """Create the store under a temporary name beside ``path`` (``.NAME.PID.HEX.creating``),
    take its lock and rename it into place: a kill at any moment leaves either no store or a
    complete empty one. Returns the held lock, or None when another process created ``path``
    first (the caller then treats it as an existing store)."""
    import zarr

    n1, n2 = meta["shape"]
    t = meta["tile"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.creating"
    try:
        group = zarr.open_group(str(tmp), mode="w-", attributes={"widenet": meta})
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        for name in meta["kernels"]:
            # Uncompressed: kernel values do not compress, and zstd would cost CPU per tile.
            group.create_array(
                name,
                shape=(n1, n2),
                chunks=(min(t, n1), min(t, n2)),  # a 64 MB chunk for 100 points would be waste
                dtype=np_dtype,
                compressors=None,
                fill_value=float("nan"),
                dimension_names=("x1", "x2"),
            )
        grid = (-(-n1 // t), -(-n2 // t))
        # checksum[i, j, 0, k]: CRC32C of kernel k's chunk (i, j); [i, j, 1, k] of its mirror
        # chunk (j, i) for an off-diagonal tile of a symmetric kernel. One chunk per tile.
        group.create_array(
            "checksum",
            shape=(*grid, 2, len(meta["kernels"])),
            chunks=(1, 1, 2, len(meta["kernels"])),
            dtype=np.uint32,
            compressors=None,
            fill_value=0,
        )
        group.create_array(
            "done", shape=grid, chunks=(1, 1), dtype=np.uint8, compressors=None, fill_value=0
        )
        lock = _StoreLock(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)  # atomic; replaces an empty directory, fails on a non-empty one
    except OSError:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if path.is_dir() and any(path.iterdir()):
            return None
        raise
    lock.path = path
    return lock


@dataclass(frozen=True)
class StoreReport:
    """What :func:`verify_store` found.

    ``tiles``: tiles of the grid (upper triangle for a symmetric kernel); ``done``: those with
    a done marker; ``checked``: done tiles whose chunks were read and checksummed;
    ``bad_tiles``: (row, column) tile indices whose chunks are unreadable, missing or fail
    their checksum, with ``reasons`` (one string each). ``ok``: no bad tile; ``complete``: ok
    and every tile done.
    """

    path: str
    tiles: int
    done: int
    checked: int
    bad_tiles: tuple[tuple[int, int], ...]
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.bad_tiles

    @property
    def complete(self) -> bool:
        return self.ok and self.done == self.tiles

    def summary(self) -> str:
        head = (
            f"{self.path}: {self.done} of {self.tiles} tiles done, {self.checked} checked, "
            f"{len(self.bad_tiles)} bad"
        )
        lines = [head] + [
            f"  tile {i}, {j}: {why}"
            for (i, j), why in zip(self.bad_tiles, self.reasons, strict=True)
        ]
        return "\n".join(lines)


def _check_tiles(store: KernelStore, tiles, advance=lambda k=1: None) -> list:
    """[((i, j), reason)] for the tiles among ``tiles`` whose chunks do not match the
    checksums recorded with their done markers (read back through zarr: what any reader sees)."""
    import zarr

    t = store.tile
    n1, n2 = store.shape
    try:
        sums = zarr.open_array(store.path, path="checksum", mode="r")[:]
    except (FileNotFoundError, ValueError, OSError, KeyError) as err:
        fmt = store.meta.get("format")
        why = f"no checksums in this store ({fmt}: {type(err).__name__})"
        return [(tile, why) for tile in tiles]
    bad = []
    for i, j in tiles:
        rows = slice(i * t, min(i * t + t, n1))
        cols = slice(j * t, min(j * t + t, n2))
        why = None
        if not sums[i, j].any():
            why = "done marker without recorded checksums"
        for k, which in enumerate(store.kernels):
            parts = [(rows, cols, sums[i, j, 0, k], (i, j))]
            if store.symmetric and i != j:
                parts.append((cols, rows, sums[i, j, 1, k], (j, i)))
            for r, c, expected, chunk in parts:
                if why is not None:
                    break
                try:
                    got = tile_checksum(np.asarray(store.array(which)[r, c]))
                except (ValueError, OSError, TypeError) as err:
                    why = f"{which} chunk {chunk} unreadable ({err})"
                    break
                if got != int(expected):
                    why = f"{which} chunk {chunk} fails its checksum (changed, truncated or lost)"
        if why is not None:
            bad.append(((i, j), why))
        advance(1)
    return bad


def verify_store(path, *, progress: bool = False) -> StoreReport:
    """Check every done tile of a kernel store against its recorded CRC32C checksums.

    Reads each done tile's chunks (and their mirrors) once through zarr, as a reader would,
    and compares the CRC32C of their values with the checksums written with the done marker
    (:func:`tile_checksum`). A chunk overwritten, truncated or deleted after its marker is
    reported with the tile's (row, column) indices. Nothing is changed: rerunning the
    ``kernel_to_zarr`` call that made the store recomputes the bad tiles. For the CLI's
    ``widenet verify STORE`` (exit status non-zero unless ``report.ok``).

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: ``path`` is not a widenet kernel store.
    """
    store = KernelStore(path)
    done = store.done()
    t = store.tile
    tiles = [(r.start // t, c.start // t) for r, c in store.grid()]
    marked = [(i, j) for i, j in tiles if done[i, j]]
    with _progress(len(marked), f"verifying {Path(store.path).name}", progress) as advance:
        bad = _check_tiles(store, marked, advance)
    return StoreReport(
        path=store.path,
        tiles=len(tiles),
        done=len(marked),
        checked=len(marked),
        bad_tiles=tuple(b[0] for b in bad),
        reasons=tuple(b[1] for b in bad),
    )


def _flat(meta: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _check_same(store: KernelStore, meta: dict) -> None:
    # "extra" describes where the inputs came from; the inputs' hash already guards them.
    old = {k: v for k, v in _flat(store.meta).items() if not k.startswith("extra.")}
    new = {k: v for k, v in _flat(meta).items() if not k.startswith("extra.")}
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        shown = "; ".join(f"{k}: store has {old.get(k)!r}, requested {new.get(k)!r}" for k in diff)
        raise StoreMismatchError(
            f"{store.path} holds a different kernel ({shown}); refusing to mix them. Use another "
            "path, or overwrite=True (CLI: --overwrite) to start it again"
        )


def _remove_partials(path: str) -> None:
    # Temporary files of chunk writes interrupted by a kill (zarr's LocalStore and the O_DIRECT
    # writer rename a finished one into place); harmless but untidy.
    if os.path.isdir(path):
        for p in Path(path).rglob("*.partial"):
            p.unlink(missing_ok=True)


def kernel_to_zarr(
    kernel,
    x1,
    x2=None,
    *,
    out,
    tile: int = STORE_TILE,
    block: int | None = None,
    get=("nngp", "ntk"),
    dtype: torch.dtype | None = None,
    width: int | None = None,
    scheduler="threads",
    workers: int | None = None,
    torch_threads: int | None = None,
    resume: bool = True,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = False,
    direct_io: bool = True,
    extra_metadata: dict | None = None,
    **ntk_options,
) -> KernelStore:
    """Write the kernel of ``kernel`` between ``x1`` and ``x2`` tile by tile into a Zarr store.

    Args:
        kernel: an architecture (``wn.mlp(...)``): its infinite-width NNGP and/or NTK; or a
            ``torch.nn.Module``: its empirical NTK (trace over outputs / k, as
            :func:`widenet.empirical_ntk`; ``ntk_options`` such as ``params=``,
            ``implementation=`` are passed on).
        x1, x2: inputs (n1, d), (n2, d); ``x2=None`` (or the very tensor x1): symmetric, only
            the tiles on and above the diagonal are computed and each is mirrored.
        out: path of the store (a directory, conventionally ``K.zarr``).
        tile: rows and columns per tile = Zarr chunk (default 4096: 64 MB per float32 tile).
        block: architectures only: a tile is computed in blocks of ``block`` rows and columns
            (must divide ``tile``; default the in-memory engine's 512 where it divides
            ``tile``, else ``tile``); the store equals ``kernel.kernel(x1, x2, tile=block)``
            bit for bit.
        get: "nngp", "ntk" or both (architectures only); one Zarr array each.
        dtype: cast the inputs (and so the store) to float32 or float64; default their dtype.
        width: hidden width, only for ``parameterization="standard"`` architectures.
        scheduler: "threads" (``workers`` threads in this process, default 1), "processes"
            (``workers`` spawned processes, default the CPU count), a Dask ``Client`` or a
            scheduler address "tcp://host:port" (each tile a task).
        torch_threads: torch intra-op threads in each worker task (None: leave as is; for
            "processes" with ``workers`` given, the CPU count / workers).
        resume: an existing store with the same metadata is completed (only tiles without a
            done marker are computed); False refuses an existing store.
        overwrite: delete an existing store and start again (only a widenet kernel store:
            any other directory, or a file, is refused with FileExistsError).
        verify: on resuming, check every done tile against its recorded CRC32C checksums (one
            read of the done tiles) and recompute the bad ones (``repaired_tiles``).
        progress: a rich progress bar with ETA over the tiles (stderr).
        direct_io: write whole chunks with O_DIRECT, bypassing the page cache, where the file
            system supports it (Linux; falls back silently per chunk otherwise); False writes
            through the page cache, e.g. on NFS, where O_DIRECT writes are synchronous.
        extra_metadata: more JSON-able facts to record (descriptive: not compared on resume).

    Returns:
        The :class:`KernelStore`; ``written_tiles`` lists the (row, column) tile indices this
        call computed, ``repaired_tiles`` those among them that were marked done but failed
        their checksums.

    Raises:
        StoreMismatchError: ``out`` holds a store of another computation.
        FileExistsError: ``out`` exists and ``resume`` is False (and not ``overwrite``); or
            ``out`` is a file, or a non-empty directory that is not a widenet kernel store.
        StoreBusyError: another process is writing the store.
        ValueError: a bad argument, e.g. ``scheduler`` (checked before anything is created).
        OSError: the Dask scheduler at the given address cannot be reached.
        WorkerDiedError: a worker process of ``scheduler="processes"`` died; rerun to resume.
    """
    tile = check_tile(tile)
    if x2 is x1:
        x2 = None
    source, x1, x2, gets, arch_meta = _make_source(
        kernel,
        x1,
        x2,
        get=get,
        dtype=dtype,
        width=width,
        tile=tile,
        block=block,
        ntk_options=ntk_options,
    )
    symmetric = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if symmetric else x2.shape[0]
    meta = dict(
        format=FORMAT,
        architecture=arch_meta,
        kernels=list(gets),
        shape=[n1, n2],
        symmetric=symmetric,
        dtype=str(x1.dtype).removeprefix("torch."),
        tile=tile,
        block=getattr(source, "block", None),
        inputs=dict(
            x1_sha256=_sha256(x1),
            x1_shape=list(x1.shape),
            x2_sha256=None if symmetric else _sha256(x2),
            x2_shape=None if symmetric else list(x2.shape),
        ),
        widenet_version=__version__,
    )
    if extra_metadata:
        meta["extra"] = extra_metadata
    kind = check_scheduler(scheduler, workers)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(
            f"out={str(path)!r} is a file, not a kernel store (a directory); choose another path"
        )
    with contextlib.ExitStack() as stack:
        # Connect to a Dask scheduler before anything is created: a wrong address fails here.
        client = stack.enter_context(_client(scheduler)) if kind == "dask" else scheduler
        lock, repaired = _open_for_writing(
            path, meta, x1.dtype, resume, overwrite, verify, progress
        )
        stack.callback(lock.release)
        store = KernelStore(path)
        todo = store.pending()
        if kind == "processes" and torch_threads is None and workers:
            # Share the cores among the processes rather than oversubscribe them.
            torch_threads = max(1, (os.cpu_count() or 1) // workers)
        chunk = store.array(gets[0]).chunks
        task = _Task(
            source,
            str(path),
            gets,
            tile,
            chunk,
            symmetric,
            threads=torch_threads,
            direct_io=direct_io,
        )
        description = f"{'+'.join(gets)} {n1}x{n2} -> {path.name}"
        with _progress(len(todo), description, progress) as advance:
            written = _run_tiles(task, todo, client, workers, advance, store)
    store.written_tiles = tuple(sorted(written))
    store.repaired_tiles = repaired
    return store


def _open_for_writing(path: Path, meta, dtype, resume, overwrite, verify, progress):
    """(held lock, tiles found bad and marked undone) for a new, overwritten or resumed store.

    Only a widenet kernel store is ever deleted (``overwrite``) or resumed; any other
    non-empty directory is refused untouched. A resumed store's done tiles are verified
    against their checksums and the bad ones lose their done marker, to be recomputed.
    """
    import zarr

    _remove_stale_creations(path)
    for _ in range(2):
        if not (path.is_dir() and any(path.iterdir())):
            lock = _create_store(path, meta, dtype)
            if lock is not None:
                return lock, ()
        if not is_kernel_store(path):
            raise FileExistsError(
                f"{path} exists and is not a widenet kernel store (its zarr.json has no "
                f"'widenet' attributes); refusing to {'delete' if overwrite else 'write into'} "
                "it. Choose another path"
            )
        lock = _StoreLock(path)
        if overwrite:
            shutil.rmtree(path)
            lock.release()
            continue
        try:
            if not resume:
                raise FileExistsError(
                    f"{path} exists; pass resume=True to complete it or overwrite=True"
                )
            store = KernelStore(path)
            _check_same(store, meta)
            _remove_partials(str(path))
            done = store.done()
            marked = [
                (r.start // store.tile, c.start // store.tile)
                for r, c in store.grid()
                if verify and done[r.start // store.tile, c.start // store.tile]
            ]
            with _progress(len(marked), f"verifying {path.name}", progress) as advance:
                bad = _check_tiles(store, marked, advance)
        except BaseException:
            lock.release()
            raise
        if bad:
            marks = zarr.open_array(str(path), path="done", mode="r+")
            for (i, j), why in bad:
                marks[i, j] = 0
                _log.info("%s: tile (%d, %d) is bad (%s); recomputing it", path, i, j, why)
            message = (
                f"{path}: {len(bad)} done tile(s) failed their checksum (first: tile "
                f"{bad[0][0]}: {bad[0][1]}); recomputing them"
            )
            if progress:
                from rich.console import Console

                Console(stderr=True).print(message, soft_wrap=True, markup=False)
            else:
                _log.warning(message)
        return lock, tuple(sorted(b[0] for b in bad))
    raise StoreBusyError(f"{path} was created and deleted concurrently; try again")


def _run_tiles(task: _Task, todo, scheduler, workers, advance, store) -> list[tuple[int, int]]:
    written = []
    if not todo:
        return written
    if scheduler == "threads":
        workers = 1 if workers is None else check_int(workers, "workers", minimum=1)
        if workers == 1:
            # Pipelined: tile k is written by a helper thread while tile k + 1 is computed
            # (two tiles in memory at most), so the disk hides behind the arithmetic.
            with cf.ThreadPoolExecutor(1) as writer:
                pending = None
                for rows, cols in todo:
                    blocks = task.compute(rows, cols)
                    if pending is not None:
                        written.append(pending.result())
                        advance(1)
                    pending = writer.submit(task.store, rows, cols, blocks)
                written.append(pending.result())
                advance(1)
            return written
        with cf.ThreadPoolExecutor(workers) as pool:
            for fut in cf.as_completed([pool.submit(task, r, c) for r, c in todo]):
                written.append(fut.result())
                advance(1)
        return written
    if scheduler == "processes":
        import cloudpickle

        if workers is None:
            workers = os.cpu_count() or 1
        workers = check_int(workers, "workers", minimum=1)
        ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools can hang
        payload = cloudpickle.dumps(task)
        try:
            with cf.ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(payload,)
            ) as pool:
                futs = [pool.submit(_worker_tile, r, c) for r, c in todo]
                for fut in cf.as_completed(futs):
                    written.append(fut.result())
                    advance(1)
        except cf.process.BrokenProcessPool as err:
            raise _worker_died(store, written, err) from None
        return written
    with _client(scheduler) as client:
        from distributed import as_completed

        remote = client.scatter(task, broadcast=True, hash=False)
        # pure=False: a rerun after a failure must recompute, never reuse a stale result.
        futs = [client.submit(_dask_tile, remote, r, c, pure=False, retries=2) for r, c in todo]
        for fut in as_completed(futs, loop=client.loop):
            written.append(fut.result())
            advance(1)
    return written


def _worker_died(store: KernelStore, written, err) -> WorkerDiedError:
    """The error for a dead worker process: which tiles are done (their markers), and that a
    rerun of the same call resumes."""
    done = store.done()
    t = store.tile
    tiles = [(r.start // t, c.start // t) for r, c in store.grid()]
    finished = [ij for ij in tiles if done[ij]]
    shown = ", ".join(f"({i}, {j})" for i, j in finished[:20])
    more = f" and {len(finished) - 20} more" if len(finished) > 20 else ""
    return WorkerDiedError(
        f"a worker process died (killed, or out of memory?) while writing {store.path}: "
        f"{len(finished)} of {len(tiles)} tiles are done ({len(written)} by this run"
        f"{': ' + shown + more if finished else ''}); the store is consistent: run the same "
        f"call again to compute only the {len(tiles) - len(finished)} remaining tiles ({err})"
    )


_WORKER_TASK: _Task | None = None  # set once per worker process by _init_worker


def _init_worker(payload: bytes) -> None:
    import cloudpickle

    global _WORKER_TASK
    _WORKER_TASK = cloudpickle.loads(payload)


def _worker_tile(rows: slice, cols: slice) -> tuple[int, int]:
    return _WORKER_TASK(rows, cols)


def _dask_tile(task: _Task, rows: slice, cols: slice) -> tuple[int, int]:
    return task(rows, cols)


# --------------------------------------------------------------------------------------------
# Solvers reading the store
# --------------------------------------------------------------------------------------------


def _as_store(store) -> KernelStore:
    return store if isinstance(store, KernelStore) else KernelStore(store)


def _square_store(store, which: str) -> KernelStore:
    store = _as_store(store)
    store._check_which(which)
    if store.shape[0] != store.shape[1] or not store.symmetric:
        raise ValueError(
            f"the train kernel must be a symmetric store (x2=None), got {store.path} of shape "
            f"{store.shape}"
        )
    store._require_complete()
    return store


def _targets(y, n: int) -> np.ndarray:
    y = as_tensor(y, "y", dtype=torch.float64).cpu()
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, k), got {tuple(y.shape)}")
    check_finite(y, "y")
    return y.numpy()


@dataclass(frozen=True)
class RidgeSolution:
    """alpha (n, k) float64 with (K + ridge I) alpha = y; predictions are K(x, X) alpha.

    ``relative_residual`` (k,) is ||y − (K + ridge I) alpha|| / ||y|| per column (for CG the
    recurrence's residual, which tracks the true one to rounding); ``iterations`` is 0 for
    Cholesky.
    """

    alpha: torch.Tensor
    method: str
    iterations: int
    relative_residual: torch.Tensor


def _nystrom_preconditioner(store, which, ridge, rank, seed, progress):
    """v -> P^{-1} v for P = C W^+ C^T + ridge I, C = K[:, S], W = K[S, S], |S| = rank.

    C W^+ C^T = U U^T with U = C Q_+ S_+^{-1/2} (W = Q S Q^T, eigenvalues above rounding);
    U = Z diag(d)^{1/2} E^T in thin form (QR then a small eigh), so by Woodbury
    P^{-1} v = Z (Z^T v) / (d + ridge) + (v − Z Z^T v) / ridge.
    """
    n = store.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(rank, n), replace=False))
    c = store.columns(which, idx, progress=progress)
    s, q = np.linalg.eigh(0.5 * (c[idx] + c[idx].T))
    keep = s > len(idx) * np.finfo(np.float64).eps * max(s.max(), 0.0)
    u = c @ (q[:, keep] / np.sqrt(s[keep]))
    z, r = np.linalg.qr(u)
    d, e = np.linalg.eigh(r @ r.T)
    z = z @ e
    d = np.clip(d, 0.0, None)

    def apply(v):
        zv = z.T @ v
        return z @ (zv / (d + ridge)[:, None]) + (v - z @ zv) / ridge

    return apply


def _pcg(matvec, b, precond, tol, maxiter, advance):
    """Preconditioned conjugate gradients for SPD A x = b, columns of b independently."""
    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r)
    p = z.copy()
    rz = np.sum(r * z, axis=0)
    bnorm = np.linalg.norm(b, axis=0)
    bnorm[bnorm == 0] = 1.0
    res = np.linalg.norm(r, axis=0) / bnorm
    it = 0
    while it < maxiter and np.any(res > tol):
        it += 1
        ap = matvec(p)
        pap = np.sum(p * ap, axis=0)
        active = (res > tol) & (pap > 0)
        step = np.where(active, rz / np.where(pap > 0, pap, 1.0), 0.0)
        x += step * p
        r -= step * ap
        res = np.linalg.norm(r, axis=0) / bnorm
        advance(1)
        z = precond(r)
        rz_new = np.sum(r * z, axis=0)
        beta = np.where(active, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_new
    return x, it, res


def kernel_ridge(
    store,
    y,
    *,
    ridge: float,
    which: str = "ntk",
    method: str = "auto",
    memory_limit_bytes: int | None = None,
    tol: float = 1e-8,
    maxiter: int | None = None,
    preconditioner: str | None = "nystrom",
    rank: int = 500,
    seed: int = 0,
    scheduler=None,
    progress: bool = False,
) -> RidgeSolution:
    """Kernel ridge regression on a stored kernel: alpha = (K + ridge I)^{-1} y.

    The predictor at test points x is K(x, X) alpha (``test_store.matmul(solution.alpha)``);
    ridge = 0 with the NTK is the converged (t = ∞) gradient-flow solution of
    :func:`widenet.dynamics.gradient_flow_mse`.

    Args:
        store: a symmetric :class:`KernelStore` (or its path).
        y: targets (n,) or (n, k).
        ridge: the regulariser, >= 0 (> 0 for CG: the system must be positive definite).
        which: "ntk" or "nngp".
        method: "cholesky" (the float64 matrix in memory, n² × 8 bytes, twice during the
            factorisation), "cg" (preconditioned conjugate gradients; memory one tile + O(n
            (k + rank))), or "auto": Cholesky when 2 n² × 8 bytes fit in
            ``memory_limit_bytes`` (default min(half the available RAM, 4 GiB)), else CG.
        tol: CG stops when every column's relative residual is <= tol.
        maxiter: CG iterations (default min(n, 1000)); each is one pass over the upper tiles.
        preconditioner: "nystrom" (``rank`` random landmark columns, one extra pass over the
            store; the default), "jacobi" (the diagonal) or None.
        seed: of the landmark draw.
        scheduler: None (in process) or a Dask Client / address for the CG mat-vecs.
        progress: progress bars with ETA (loading, landmark columns, CG iterations).

    Raises:
        ValueError: the kernel plus ridge is not positive definite (Cholesky fails, or CG meets
            a direction of non-positive curvature), or CG did not converge in maxiter.
    """
    from widenet.empirical import memory_limit as _memory_limit

    store = _square_store(store, which)
    n = store.shape[0]
    yv = _targets(y, n)
    ridge = check_real(ridge, "ridge", minimum=0.0)
    if method not in ("auto", "cholesky", "cg"):
        raise ValueError(f"method must be 'auto', 'cholesky' or 'cg', got {method!r}")
    if method == "auto":
        limit = _memory_limit(memory_limit_bytes, torch.device("cpu"))
        method = "cholesky" if 2 * n * n * 8 <= limit else "cg"
    if method == "cholesky":
        k = store.load(which, progress=progress)
        k.diagonal().add_(ridge)
        chol, info = torch.linalg.cholesky_ex(k)
        if int(info):
            raise ValueError(
                f"{which} + ridge·I is not positive definite (Cholesky failed at column "
                f"{int(info)}); increase ridge (now {ridge:g})"
            )
        yt = torch.from_numpy(yv)
        alpha = torch.cholesky_solve(yt, chol)
        res = torch.linalg.norm(yt - (k @ alpha), dim=0) / torch.linalg.norm(yt, dim=0).clamp_min(
            1e-300
        )
        return RidgeSolution(alpha, "cholesky", 0, res)

    if not ridge > 0:
        raise ValueError("ridge must be > 0 for CG (the kernel alone may be singular)")
    tol = check_real(tol, "tol", minimum=0.0, strict=True)
    maxiter = min(n, 1000) if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    if preconditioner == "nystrom":
        rank = check_int(rank, "rank", minimum=1)
        precond = _nystrom_preconditioner(store, which, ridge, rank, seed, progress)
    elif preconditioner == "jacobi":
        inv_diag = 1.0 / (store.diagonal(which).numpy() + ridge)
        precond = lambda v: v * inv_diag[:, None]  # noqa: E731
    elif preconditioner is None:
        precond = lambda v: v  # noqa: E731
    else:
        raise ValueError(
            f"preconditioner must be 'nystrom', 'jacobi' or None, got {preconditioner!r}"
        )
    with contextlib.ExitStack() as stack:
        client = None if scheduler is None else stack.enter_context(_client(scheduler))

        def matvec(p):
            return store.matmul(p, which, scheduler=client).numpy() + ridge * p

        with _progress(maxiter, f"CG ({which}, n={n})", progress) as advance:
            alpha, it, res = _pcg(matvec, yv, precond, tol, maxiter, advance)
    if np.any(res > tol):
        raise ValueError(
            f"CG did not converge in {maxiter} iterations (relative residual {res.max():.3g} > "
            f"tol {tol:g}); raise maxiter or rank, or ridge"
        )
    return RidgeSolution(torch.from_numpy(alpha), "cg", it, torch.from_numpy(res))


# Where (1 − e^{−u})/√u · √a peaks: 2u = e^u − 1 (u > 0).
_U_STAR = 1.2564312086261697


def _sup_h(a: np.ndarray, lam: float) -> np.ndarray:
    """sup over 0 < μ <= lam of (1 − e^{−aμ})/√μ, elementwise in a >= 0."""
    lam = max(lam, 0.0)
    at = a * lam
    peak = np.sqrt(a) * (1.0 - math.exp(-_U_STAR)) / math.sqrt(_U_STAR)
    if lam == 0.0:
        return np.zeros_like(a)
    return np.where(at <= _U_STAR, -np.expm1(-at) / math.sqrt(lam), peak)


@dataclass(frozen=True)
class TruncatedFlow:
    """Gradient-flow outputs from the top ``rank`` eigenpairs, with rigorous error bounds.

    ``train`` (T, n, k), ``test`` (T, m, k) or None; ``train_bound`` (T, k) bounds the
    Euclidean norm over training points of each output column's error; ``test_bound``
    (T, m, k) bounds each test output's absolute error (None without ``k_test_diag``).
    ``eigenvalues`` (rank,) descending; ``residual_norm`` (k,) = ||y − V Vᵀ y||.
    """

    train: torch.Tensor
    test: torch.Tensor | None
    train_bound: torch.Tensor
    test_bound: torch.Tensor | None
    eigenvalues: torch.Tensor
    residual_norm: torch.Tensor


def gradient_flow_mse(
    store,
    y,
    t,
    *,
    rank: int,
    which: str = "ntk",
    k_test_train=None,
    k_test_diag=None,
    learning_rate: float = 1.0,
    loss: str = "mean",
    tol: float = 0.0,
    seed: int = 0,
    scheduler=None,
    progress: bool = False,
) -> TruncatedFlow:
    r"""Gradient-flow predictions at times t from a truncated eigendecomposition of a stored Θ.

    Lee et al. 2019, eqs. 8–11, with f_0 = 0 (the mean of the infinite-width ensemble), c = η/N
    (N = y.numel() for ``loss="mean"``, 1 for ``"sum"``) and Θ = Σ_i λ_i v_i v_iᵀ:

        f_t(X) = (I − e^{−cΘt}) y,        f_t(x) = Θ(x, X) Θ⁻¹ (I − e^{−cΘt}) y.

    The top ``rank`` = r eigenpairs (λ_1 ≥ … ≥ λ_r) come from ARPACK's implicitly restarted
    Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``) on a LinearOperator whose mat-vec
    streams the store (each mat-vec is one pass over its upper tiles). The rest of the spectrum
    is dropped: with P⊥ = I − V_r V_rᵀ and g(λ) = (1 − e^{−cλt})/λ,

        train error  = Σ_{i>r} (1 − e^{−cλ_i t}) v_i v_iᵀ y,
        test error   = Θ(x, X) Σ_{i>r} g(λ_i) v_i v_iᵀ y.

    **Error bounds** (for each output column y, exact eigenpairs; λ_{r+1} ≤ λ_r):

        ||train error||_2 ≤ (1 − e^{−c λ_r t}) ||P⊥ y||_2,
        |test error(x)|   ≤ √Θ(x, x) · sup_{0<μ≤λ_r} (1 − e^{−cμt})/√μ · ||P⊥ y||_2.

    The second follows from Θ(x, X) = φ(x)ᵀΦ with Θ(X, X) = ΦᵀΦ (the joint kernel is PSD) and
    Cauchy–Schwarz: |φ(x)ᵀΦw| ≤ √Θ(x,x) (wᵀΘw)^{1/2} = √Θ(x,x) (Σ_{i>r} λ_i g(λ_i)² (v_iᵀy)²)^{1/2}.
    The supremum is (1 − e^{−cλ_r t})/√λ_r when cλ_r t ≤ u* ≈ 1.2564 (the root of 2u = e^u − 1),
    else √(ct) (1 − e^{−u*})/√u*. Both bounds are computed and returned; they shrink as the
    dropped spectrum carries less of y (||P⊥ y||) and as λ_r → 0. t = ∞ is refused (Θ⁻¹ needs
    the whole spectrum: use :func:`kernel_ridge`). ``tol`` is eigsh's (0: machine precision);
    the bounds assume the eigenpairs it returns are exact to that precision.

    Args:
        store: symmetric :class:`KernelStore` of Θ(X, X) (or its path).
        y: targets (n,) or (n, k).
        t: a time ≥ 0 or a 1-D array of them (finite).
        rank: r, 1 ≤ r < n.
        k_test_train: Θ(x, X) as a (m, n) store or tensor; gives ``test``.
        k_test_diag: Θ(x, x) (m,), for ``test_bound``.
        scheduler: None or a Dask Client / address for the mat-vecs.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    from widenet.dynamics import check_loss as _check_loss
    from widenet.dynamics import check_times as _times

    store = _square_store(store, which)
    n = store.shape[0]
    yv = _targets(y, n)
    times = _times(t, "t", integer=False, allow_inf=False)
    rank = check_int(rank, "rank", minimum=1)
    if rank >= n:
        raise ValueError(
            f"rank must be < n = {n} for Lanczos; for the full spectrum load the kernel "
            "(store.load()) and use widenet.dynamics.gradient_flow_mse"
        )
    lr = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    c = lr / (yv.size if _check_loss(loss) == "mean" else 1.0)
    tol = check_real(tol, "tol", minimum=0.0)
    ktest = None
    if k_test_train is not None:
        if isinstance(k_test_train, (KernelStore, str, os.PathLike)):
            ktest = _as_store(k_test_train)
            ktest._check_which(which)
            m_test = ktest.shape[0]
            cols = ktest.shape[1]
        else:
            ktest = as_tensor(k_test_train, "k_test_train", dtype=torch.float64).cpu()
            if ktest.ndim != 2:
                raise ValueError(f"k_test_train must be (m, n), got shape {tuple(ktest.shape)}")
            check_finite(ktest, "k_test_train")
            m_test, cols = ktest.shape
        if cols != n:
            raise ValueError(f"k_test_train must have {n} columns (training points), got {cols}")
    if k_test_diag is not None:
        if ktest is None:
            raise ValueError("k_test_diag needs k_test_train")
        kd = as_tensor(k_test_diag, "k_test_diag", dtype=torch.float64).cpu().reshape(-1)
        if kd.shape[0] != m_test:
            raise ValueError(f"k_test_diag must have {m_test} entries, got {kd.shape[0]}")
        check_finite(kd, "k_test_diag")
        if bool((kd < 0).any()):
            raise ValueError("k_test_diag must be >= 0 (a kernel's diagonal)")

    ncv = min(n, max(2 * rank + 1, 20))
    with contextlib.ExitStack() as stack:
        client = None if scheduler is None else stack.enter_context(_client(scheduler))
        advance = stack.enter_context(
            _progress(3 * ncv, f"Lanczos mat-vecs (≈, rank {rank})", progress)
        )

        def matmat(v):
            advance(1)
            return store.matmul(np.asarray(v).reshape(n, -1), which, scheduler=client).numpy()

        op = LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        lam, vec = eigsh(op, k=rank, which="LA", ncv=ncv, tol=tol, v0=v0)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    coeff = vec.T @ yv  # (r, k)
    resid = np.linalg.norm(yv - vec @ coeff, axis=0)  # ||P⊥ y|| per column
    lam_r = max(float(lam[-1]), 0.0)
    at = c * times[:, None] * lam[None, :]  # (T, r)
    one_minus = -np.expm1(-at)
    train = np.einsum("nr,trk->tnk", vec, one_minus[:, :, None] * coeff[None])
    train_bound = -np.expm1(-c * times * lam_r)[:, None] * resid[None, :]
    test = test_bound = None
    if ktest is not None:
        kv = (
            ktest.matmul(vec, which, scheduler=scheduler)
            if isinstance(ktest, KernelStore)
            else ktest @ torch.from_numpy(vec)
        ).numpy()
        safe = np.where(lam > 0, lam, 1.0)
        g = np.where(lam[None, :] > 0, one_minus / safe[None, :], c * times[:, None])
        test = np.einsum("mr,trk->tmk", kv, g[:, :, None] * coeff[None])
        if k_test_diag is not None:
            sup = _sup_h(c * times, lam_r)  # (T,)
            test_bound = (
                np.sqrt(kd.numpy())[None, :, None] * sup[:, None, None] * resid[None, None, :]
            )
    as_t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return TruncatedFlow(
        as_t(train), as_t(test), as_t(train_bound), as_t(test_bound), as_t(lam.copy()), as_t(resid)
    )
