r"""Infinite-width NNGP and NTK of fully-connected networks, in closed form and in tiles.

For ``depth`` hidden layers of width n -> infinity, each Dense then an activation phi, and a
Dense readout, the pre-activations of layer l are a Gaussian process with covariance K^l and the
network's neural tangent kernel is Theta (Neal 1996; Lee et al. 2018; Matthews et al. 2018;
Jacot et al. 2018; Arora et al. 2019). In neural-tangents' NTK parameterization

    K^0(x, x')       = x . x' / d                                   (raw-input covariance)
    K^l              = w_std^2 E[phi(u) phi(v)] + b_std^2,  (u, v) ~ N(0, K^{l-1}|_{x,x'})
    Theta^l          = K^l + w_std^2 E[phi'(u) phi'(v)] Theta^{l-1},    Theta^1 = K^1

(for the first layer read phi as the identity, E[...] as K^0 and Theta^0 = 0). The readout is
layer ``depth + 1``, so ``nngp = K^{depth+1}`` and ``ntk = Theta^{depth+1}`` are the kernels of
each output unit (they are identical across outputs and zero between different outputs).

In the standard parameterization (W ~ N(0, w_std^2 / fan_in), b ~ N(0, b_std^2), y = W x + b)
the NNGP is the same, but gradients see the unscaled weights: the NTK of a finite network of
hidden width n is, to leading order in n,

    Theta^l = fan_in_l E[phi(u) phi(v)] + 1 + w_std^2 E[phi'(u) phi'(v)] Theta^{l-1},

with fan_in_1 = d and fan_in_l = n otherwise (Sohl-Dickstein et al. 2020, "On the infinite
width limit of neural networks with a standard parameterization"); it grows linearly in n.

Kernels are computed in tiles of rows x columns: the per-layer variances of every input (the
diagonals) are propagated once, then each tile runs the recursion on its own block, in place,
so memory beyond the output is O(tile^2). A symmetric kernel (``x2=None``) computes only the
tiles on and above the diagonal and mirrors them, and its diagonal correlations are exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from widenet._checks import check_device, check_inputs, check_pair
from widenet.activations import Activation, correlation
from widenet.threads import map_blocks, single_threaded

GETS = ("nngp", "ntk")


@dataclass(frozen=True)
class Kernel:
    """The NNGP covariance and the NTK of a network's scalar output: each (n1, n2).

    A field is None when it was not requested (``get=``).
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple((self.nngp if self.nngp is not None else self.ntk).shape)

    def _fields(self) -> dict[str, torch.Tensor]:
        return {n: b for n, b in (("nngp", self.nngp), ("ntk", self.ntk)) if b is not None}

    def numpy(self) -> dict:
        """The present fields as NumPy arrays on the CPU: ``{"nngp": ..., "ntk": ...}``."""
        return {n: b.detach().cpu().numpy() for n, b in self._fields().items()}

    def save(self, path) -> None:
        """Write the present fields to ``path``: safetensors, or ``.npz`` by the suffix.

        A ``.npz`` file holds plain arrays (read back with ``allow_pickle=False``); any other
        suffix is written as safetensors (``safetensors.torch.save_file``). Dtypes are kept.
        """
        from pathlib import Path

        path = Path(path)
        fields = self._fields()
        if not fields:
            raise ValueError("this Kernel has neither nngp nor ntk; nothing to save")
        if path.suffix.lower() == ".npz":
            import numpy as np

            np.savez(path, **self.numpy())
            return
        from safetensors.torch import save_file

        tensors = {n: b.detach().cpu().contiguous() for n, b in fields.items()}
        save_file(tensors, str(path), metadata={"format": "widenet.Kernel"})

    @classmethod
    def load(cls, path, *, device=None) -> Kernel:
        """Read a file written by :meth:`save` (``.npz`` or safetensors), as data only."""
        from pathlib import Path

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no kernel file at {path}")
        if path.suffix.lower() == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as data:
                arrays = {n: torch.from_numpy(data[n]) for n in data.files}
        else:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                arrays = load_file(str(path))
            except SafetensorError as err:
                raise ValueError(f"path: {path} is not a safetensors file ({err})") from None
        extra = sorted(set(arrays) - set(GETS))
        if extra or not arrays:
            raise ValueError(
                f"path: {path} must hold arrays named 'nngp' and/or 'ntk', found {sorted(arrays)}"
            )
        shapes = {tuple(a.shape) for a in arrays.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"path: {path}: nngp and ntk must be 2-D of one shape, got {shapes}")
        if device is not None:
            device = check_device(device)
            arrays = {n: a.to(device) for n, a in arrays.items()}
        return cls(arrays.get("nngp"), arrays.get("ntk"))


@dataclass(frozen=True)
class KernelTile:
    """One block ``kernel[rows, cols]`` of a tiled kernel computation."""

    rows: slice
    cols: slice
    kernel: Kernel


@dataclass(frozen=True)
class FCRecursion:
    """The layer-by-layer recursion of a fully-connected network (see the module docstring).

    ``ntk_weight[l]`` and ``ntk_bias[l]`` weigh layer l's own parameters in its NTK term,
    ntk_weight[l] K_post^{l-1} + ntk_bias[l]: (w_std^2, b_std^2) in the NTK parameterization,
    (fan_in_l, 1) in the standard one.
    """

    activation: Activation
    depth: int
    w_var: float
    b_var: float
    ntk_weight: tuple[float, ...]
    ntk_bias: tuple[float, ...]

    def diagonals(self, q0: torch.Tensor) -> list[torch.Tensor]:
        """Pre-activation variances K^l(x, x) for l = 1..depth (one vector per layer)."""
        out = []
        post = q0
        for _ in range(self.depth):
            q = post * self.w_var + self.b_var
            out.append(q)
            post, _ = self.activation.dual(q, q, q, False)
        return out

    def tile(
        self,
        c: torch.Tensor,
        q1: list[torch.Tensor],
        q2: list[torch.Tensor],
        need_ntk: bool,
    ) -> Kernel:
        """Run the recursion on one block. ``c`` is K^0 of the block and is consumed."""
        theta = None
        dual = self.activation.dual_inplace or self.activation.dual
        for layer in range(self.depth + 1):
            # c is the post-activation covariance of the previous layer (K^0 for layer 0).
            if need_ntk:
                if theta is None:
                    theta = torch.mul(c, self.ntk_weight[layer]).add_(self.ntk_bias[layer])
                else:  # theta w_var + (c ntk_weight + ntk_bias), in place
                    theta.mul_(self.w_var).add_(c, alpha=self.ntk_weight[layer])
                    theta.add_(self.ntk_bias[layer])
            c = c.mul_(self.w_var).add_(self.b_var)
            if layer == self.depth:
                break
            c, dot = dual(q1[layer][:, None], c, q2[layer][None, :], need_ntk)
            if need_ntk:
                theta.mul_(dot)
        return Kernel(c, theta)


def fc_recursion(
    activation: Activation,
    depth: int,
    w_std: float,
    b_std: float,
    parameterization: str,
    in_dim: int,
    width: int | None,
) -> FCRecursion:
    w_var, b_var = w_std * w_std, b_std * b_std
    if parameterization == "ntk":
        weight = (w_var,) * (depth + 1)
        bias = (b_var,) * (depth + 1)
    else:
        # Layer 0's own term is fan_in * K^0 = x . x'; later layers see `width` inputs.
        weight = (float(in_dim),) + (float(width),) * depth
        bias = (1.0,) * (depth + 1)
    return FCRecursion(activation, depth, w_var, b_var, weight, bias)


def _all_finite(k: torch.Tensor) -> bool:
    # A finite sum means finite entries (inf and nan propagate), at the cost of one reduction
    # without temporaries; only when the sum is not finite (or overflowed) look element-wise.
    return bool(torch.isfinite(k.sum())) or bool(torch.isfinite(k).all())


def _check_finite_result(k: torch.Tensor, what: str) -> None:
    if not _all_finite(k):
        advice = (
            "rescale the inputs or pass dtype=torch.float64"
            if k.dtype != torch.float64
            else "rescale the inputs (e.g. standardise them: the kernel scales with the inputs' "
            "squared norms and, for deep or large-w_std networks, grows by a factor per layer) "
            "or use fewer layers or a smaller w_std"
        )
        raise FloatingPointError(
            f"the {what} kernel overflowed in {k.dtype} (input norms too large for this dtype); "
            f"{advice}"
        )


def resolve_get(get) -> tuple[bool, bool]:
    items = (get,) if isinstance(get, str) else tuple(get)
    bad = [g for g in items if g not in GETS]
    if bad or not items:
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    return "nngp" in items, "ntk" in items


def check_tile(tile) -> int:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer (rows/columns per tile), got {tile!r}")
    return tile


def prepare_inputs(x1, x2, dtype):
    """Validate (x1, x2); ``dtype`` casts both, otherwise their dtypes must already agree."""
    x1 = check_inputs(x1, "x1", dtype=dtype)
    if x2 is not None:
        x2 = check_inputs(x2, "x2", dtype=dtype)
        check_pair(x1, x2)
    return x1, x2


class Tiler:
    """The interface of a kernel tiler: inputs ``x1`` and ``x2`` (None: symmetric, x2 = x1),
    and ``__call__(rows, cols) -> Kernel`` computing the block ``kernel[rows, cols]`` on its
    own. Subclasses (:class:`FCTiler`, :class:`widenet.stax.StaxTiler`) hold ``x1``, ``x2``."""

    x1: torch.Tensor
    x2: torch.Tensor | None

    @property
    def symmetric(self) -> bool:
        """True when the kernel is of x1 against itself (x2 is None)."""
        return self.x2 is None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the whole kernel."""
        return self.x1.shape[0], (self.x1 if self.x2 is None else self.x2).shape[0]


@dataclass(frozen=True)
class FCTiler(Tiler):
    """Computes any one tile of the kernel of ``rec`` on validated inputs, independently.

    The per-layer diagonals of every input are propagated once, at construction; a tile then
    needs only its rows' and columns' slices. This is the unit of work of the tiled engine
    (:func:`fc_tiles`) and of the on-disk and distributed writers (:mod:`widenet.scale`), so a
    tile computed by either is the same sequence of floating-point operations. The object is
    picklable by cloudpickle (sent once to each worker process).
    """

    rec: FCRecursion
    x1: torch.Tensor
    x2: torch.Tensor | None  # None: symmetric, x2 = x1
    q01: torch.Tensor
    d1: list
    d2: list
    need_ntk: bool
    # Duplicate inputs: equal rows of x1 and x2 share an id (None when no row repeats).
    g1: torch.Tensor | None = None
    g2: torch.Tensor | None = None

    def __call__(self, rows: slice, cols: slice) -> Kernel:
        """The block kernel[rows, cols]; for a symmetric kernel, diagonal blocks need rows ==
        cols (they are symmetrised exactly)."""
        xb = self.x1 if self.x2 is None else self.x2
        diag = self.symmetric and rows == cols
        with torch.no_grad():
            c = self.x1[rows] @ xb[cols].T
            c.div_(self.x1.shape[1])
            if diag:
                # Exact self-covariances on the diagonal keep rho = 1 there.
                c = 0.5 * (c + c.T)
                c.diagonal().copy_(self.q01[rows])
            if self.g1 is not None:
                # An exact duplicate pair gets c = q, its self-covariance, as the diagonal
                # does: the GEMM's rounding (|c - q| ~ sqrt(d) eps q) would give rho < 1,
                # which the recursion amplifies (arccos: theta ~ sqrt(2 (1 - rho))), so that
                # duplicated rows differed and the kernel lost its singularity.
                same = self.g1[rows][:, None] == self.g2[cols][None, :]
                if bool(same.any()):
                    c = torch.where(same, self.q01[rows][:, None], c)
            k = self.rec.tile(
                c, [q[rows] for q in self.d1], [q[cols] for q in self.d2], self.need_ntk
            )
            if diag:
                # The duals are not bitwise symmetric in (q1, q2) (rounding order in the
                # closed forms, node placement in quadrature), so a diagonal block comes
                # out asymmetric by rounding/quadrature error: mirror it exactly.
                k = Kernel(*(None if b is None else 0.5 * (b + b.T) for b in (k.nngp, k.ntk)))
        return k


def fc_tiler(
    rec: FCRecursion, x1: torch.Tensor, x2: torch.Tensor | None, *, need_ntk: bool
) -> FCTiler:
    """The :class:`FCTiler` of ``rec`` on validated inputs (``x2=None``: symmetric)."""
    d = x1.shape[1]
    # O(n d) vector work: single-threaded (many small operations; see widenet.threads).
    with torch.no_grad(), single_threaded(x1.device):
        q01 = (x1 * x1).sum(1) / d
        d1 = rec.diagonals(q01)
        d2 = d1 if x2 is None else rec.diagonals((x2 * x2).sum(1) / d)
        g1, g2 = duplicate_ids(x1, x2)
    return FCTiler(rec, x1, x2, q01, d1, d2, need_ntk, g1, g2)


# Kernels of at most this many entries (2048^2: up to 10 tiles of 512 on and above the
# diagonal) are computed in the calling thread, single-threaded, rather than in a pool.
SMALL_KERNEL_ENTRIES = 2048 * 2048

_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def duplicate_ids(x1: torch.Tensor, x2: torch.Tensor | None):
    """(ids of x1's rows, ids of x2's rows): equal rows (within and across x1 and x2) share
    an id; (None, None) when no row repeats. ``x2=None``: the ids of x2 are x1's.

    Rows are equal when every entry compares equal (so 0.0 == -0.0). Each row is hashed
    exactly: its entries' bit patterns (with -0.0 made +0.0) times fixed random odd 64-bit
    weights, summed modulo 2^64, so equal rows get equal hashes whatever the summation order.
    One sort of the n hashes finds the rows whose hash repeats; only those (none, in the
    usual case) are compared entry by entry (``torch.unique(dim=0)``). This is O(n d) work in
    a few passes, where ``torch.unique(dim=0)`` on all rows took ~9,000 operations and 36 ms
    at n = 2048 (a lexicographic sort of the rows). Ids are int64; only their equality means
    anything.
    """
    # A few O(n d) passes: single-threaded on the CPU (with 2 intra-op threads on a loaded
    # machine their barriers made it 84 ms instead of 0.2 ms at n = 2048, d = 100).
    with torch.no_grad(), single_threaded(x1.device):
        return _duplicate_ids(x1, x2)


def _duplicate_ids(x1, x2):
    n1 = x1.shape[0]
    xs = x1 if x2 is None else torch.cat([x1, x2])
    xs = xs.reshape(xs.shape[0], -1)
    n = xs.shape[0]
    if n < 2:
        return None, None
    width = xs.element_size()
    as_int = _INT_OF_WIDTH[width] if width in _INT_OF_WIDTH else torch.uint8
    gen = torch.Generator().manual_seed(0x5EED)
    cols = xs.shape[1] * (1 if width in _INT_OF_WIDTH else width)
    weights = torch.randint(-(2**62), 2**62, (cols,), generator=gen, dtype=torch.int64)
    weights = (weights * 2 + 1).to(xs.device)  # odd: a weight never annihilates a bit
    h = torch.empty(n, dtype=torch.int64, device=xs.device)
    step = max(1, (1 << 20) // max(cols, 1))  # rows per pass: ~8 MB of int64 temporaries
    for i in range(0, n, step):
        part = xs[i : i + step]
        if part.dtype.is_floating_point or part.dtype.is_complex:
            part = part + 0  # -0.0 -> +0.0: equal values, equal bits
        bits = part.contiguous().view(as_int).reshape(part.shape[0], cols).to(torch.int64)
        # int64 products and sums wrap modulo 2^64: exact, whatever the summation order.
        h[i : i + step] = (bits * weights).sum(1)
    hs, order = torch.sort(h)
    repeat = hs[1:] == hs[:-1]
    if not bool(repeat.any()):
        return None, None
    # Rows whose hash occurs more than once: resolve them exactly.
    flag = torch.zeros(n, dtype=torch.bool, device=h.device)
    flag[1:] |= repeat
    flag[:-1] |= repeat
    cand = order[flag]
    _, inv, counts = torch.unique(xs[cand], dim=0, return_inverse=True, return_counts=True)
    if bool((counts == 1).all()):
        return None, None  # hash collisions only
    ids = torch.arange(n, device=h.device)
    # Candidates get ids n + (their class): disjoint from the others' row numbers.
    ids[cand] = n + inv
    return ids[:n1], (ids[:n1] if x2 is None else ids[n1:])


def tile_grid(n1: int, n2: int, tile: int, *, symmetric: bool) -> Iterator[tuple[slice, slice]]:
    """(rows, cols) of every tile, row-major; symmetric: only those on or above the diagonal."""
    for i0 in range(0, n1, tile):
        for j0 in range(i0 if symmetric else 0, n2, tile):
            yield slice(i0, min(i0 + tile, n1)), slice(j0, min(j0 + tile, n2))


def fc_tiles(
    rec: FCRecursion,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    tile: int,
    need_ntk: bool,
) -> Iterator[KernelTile]:
    """Yield the tiles of the kernel of ``rec`` on validated inputs.

    With ``x2 is None`` only tiles on or above the diagonal are produced (rows.start <=
    cols.start); the kernel is symmetric, so the rest is their transpose. On the CPU the tiles
    are computed under the policy of :mod:`widenet.threads` (single-threaded tiles in a pool,
    a few ahead of the consumer, which runs single-threaded until the iterator ends).
    """
    tile = check_tile(tile)
    tiler = fc_tiler(rec, x1, x2, need_ntk=need_ntk)
    grid = tile_grid(*tiler.shape, tile, symmetric=tiler.symmetric)

    def work(rc):
        return KernelTile(rc[0], rc[1], tiler(*rc))

    # CPU: every tile single-threaded, the tiles in a pool of the configured thread count
    # (widenet.threads); a tile's ~750 small operations are too short for intra-op threads.
    # Small kernels run in the calling thread: at n = 1347 (6 tiles, float64, load ~10) the
    # pool took 0.22 s against 0.09 s.
    n1, n2 = tiler.shape
    small = n1 * n2 <= SMALL_KERNEL_ENTRIES
    return map_blocks(work, grid, x1.device, max_workers=1 if small else None)


def assemble(
    tiles: Iterator[KernelTile],
    n1: int,
    n2: int,
    *,
    symmetric: bool,
    need_nngp: bool,
    need_ntk: bool,
    dtype: torch.dtype,
    device,
) -> Kernel:
    """Write tiles into preallocated (n1, n2) outputs, mirroring a symmetric kernel."""
    nngp = torch.empty((n1, n2), dtype=dtype, device=device) if need_nngp else None
    ntk = torch.empty((n1, n2), dtype=dtype, device=device) if need_ntk else None
    bad = {"NNGP": False, "NTK": False}  # checked per tile, while the tile is in cache
    for t in tiles:
        for out, block, what in ((nngp, t.kernel.nngp, "NNGP"), (ntk, t.kernel.ntk, "NTK")):
            if out is None:
                continue
            out[t.rows, t.cols] = block
            if symmetric and t.rows != t.cols:
                out[t.cols, t.rows] = block.T
            if not bad[what] and not _all_finite(block):
                bad[what] = True
    for out, what in ((nngp, "NNGP"), (ntk, "NTK")):
        if out is not None and bad[what]:
            _check_finite_result(out, what)
    return Kernel(nngp, ntk)


def h_infinity(x1, x2=None) -> torch.Tensor:
    r"""The Gram matrix H^\infty of Du, Zhai, Poczos & Singh (2018, eq. 3 / Assumption 3.1).

    For the two-layer ReLU network f(x) = m^{-1/2} sum_r a_r relu(w_r . x), w_r ~ N(0, I),
    whose first layer is trained,

        H^\infty_ij = E_w[x_i . x_j 1{w . x_i >= 0, w . x_j >= 0}]
                    = x_i . x_j (pi - arccos(x_i . x_j / (|x_i| |x_j|))) / (2 pi).

    Inputs of zero norm give zero rows; correlations are clamped to [-1, 1] against rounding.
    """
    x1, x2 = prepare_inputs(x1, x2, None)
    xb = x1 if x2 is None else x2
    with torch.no_grad():
        g = x1 @ xb.T
        q1, q2 = (x1 * x1).sum(1), (xb * xb).sum(1)
        if x2 is None:
            g = 0.5 * (g + g.T)
            g.diagonal().copy_(q1)
        rho, _ = correlation(q1[:, None], g, q2[None, :])
        return g * (math.pi - torch.arccos(rho)) / (2.0 * math.pi)


# Public names of the checks that widenet.scale shares with the in-memory engine.
check_finite_result = _check_finite_result
