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

On the CPU a tile runs in strips of rows small enough for its temporaries to stay in a core's
cache, every strip through all layers; the ReLU recursion in the NTK parameterization is fused
into eight passes per layer (:func:`_relu_strips`). ``kernel()`` has each tile written
into the outputs, mirror included, by the pool worker that computed it (:func:`fc_kernel`).
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from widenet._checks import all_finite, check_device, check_inputs, check_pair
from widenet.activations import Activation, correlation
from widenet.threads import map_blocks, pool_size, single_threaded

GETS = ("nngp", "ntk")
_TWO_PI = 2.0 * math.pi


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


# Entries of the row strips of a block (FCRecursion.tile): 32768 float32 entries are 128 KiB
# per temporary, so a strip's temporaries and its NNGP and NTK rows stay in a core's L2
# cache, where a 512 x 512 block in one piece ran each operation from memory. That wins when
# the blocks run one at a time (1 thread, n = 4000, quiet: 0.167 s against 0.183 s whole)
# and when two blocks at once in a pool run the compiled fused recursion; eager strips in a
# pool contend for the GIL through their Python-side operations and whole blocks win
# (0.115-0.132 s against 0.164-0.171 s, same machine and minute): see _strips_for.
STRIP_ENTRIES = 32768


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

    @property
    def fused(self) -> bool:
        """Whether :meth:`tile` runs the fused ReLU recursion (:func:`_relu_strips`): phi =
        b relu (an (a, b)-ReLU with a = 0, b != 0) in the NTK parameterization."""
        ab = self.activation.abrelu
        return (
            ab is not None
            and ab[0] == 0.0
            and ab[1] != 0.0
            and all(w == self.w_var for w in self.ntk_weight)
            and all(b == self.b_var for b in self.ntk_bias)
        )

    def tile(
        self,
        c: torch.Tensor,
        q1: list[torch.Tensor],
        q2: list[torch.Tensor],
        need_ntk: bool,
        *,
        zeros: list[bool] | None = None,
        divide: float | None = None,
        diagonal: bool = False,
        same: torch.Tensor | None = None,
        ntk_out: torch.Tensor | None = None,
        mirror: tuple | None = None,
        strips: bool = True,
    ) -> Kernel:
        """Run the recursion on one block. ``c`` is K^0 of the block and is consumed.

        ``divide``: c holds d K^0 (the raw inner products), divided by ``divide`` first.
        ``zeros[l]``: whether a variance of layer l may be 0 (None: look). ``diagonal`` (a
        symmetric kernel's diagonal block, its diagonal c = q) and ``same`` (a mask of the
        pairs of equal inputs, their c = q) mark the entries whose correlation is exactly 1
        at every layer. ``c`` may be a view with unit column stride (into an output); the NTK
        is written into ``ntk_out`` when given; ``mirror``: (nngp, ntk) destinations (or
        None) of the block's transpose.

        On the CPU the block runs in strips of rows of about :data:`STRIP_ENTRIES` entries
        (``strips=False``: the whole block at once), each strip through every layer while its
        temporaries stay in the core's cache (the entries are independent: the strips change
        no bit). The ReLU recursion in the NTK parameterization is fused
        (:func:`_relu_strips`); other activations run their duals.
        """
        if c.stride(-1) != 1:
            c = c.contiguous()
        n_rows, n_cols = c.shape
        ntk = None
        if need_ntk:
            ntk = ntk_out if ntk_out is not None else torch.empty_like(c)
        strip = n_rows
        if strips and c.device.type == "cpu" and self.activation.closed_form:
            strip = max(1, STRIP_ENTRIES // max(n_cols, 1))
        if self.fused and self.depth > 0:
            self._relu_tile(c, q1, q2, ntk, zeros, divide, diagonal, same, mirror, strip)
            return Kernel(c, ntk)
        for r0 in range(0, n_rows, strip):
            rows = slice(r0, min(r0 + strip, n_rows))
            part, theta = c[rows], (None if ntk is None else ntk[rows])
            out = self._rows(part, [q[rows] for q in q1], q2, theta, zeros, divide)
            if out.data_ptr() != part.data_ptr():
                part.copy_(out)
            if mirror is not None:  # the strip's transpose, while the strip is in cache
                for dst, src in zip(mirror, (part, theta), strict=True):
                    if dst is not None:
                        dst[:, rows] = src.T
        return Kernel(c, ntk)

    def _rows(self, c, q1, q2, ntk, zeros, divide) -> torch.Tensor:
        """The layer-by-layer recursion through the activation's duals on rows ``c``
        (consumed); the NTK is written into ``ntk``; returns the NNGP."""
        theta = None
        dual = self.activation.dual_inplace or self.activation.dual
        if divide is not None:
            c.div_(divide)
        for layer in range(self.depth + 1):
            # c is the post-activation covariance of the previous layer (K^0 for layer 0).
            if ntk is not None:
                if theta is None:
                    theta = torch.mul(c, self.ntk_weight[layer], out=ntk).add_(self.ntk_bias[layer])
                else:  # theta w_var + (c ntk_weight + ntk_bias), in place
                    theta.mul_(self.w_var).add_(c, alpha=self.ntk_weight[layer])
                    theta.add_(self.ntk_bias[layer])
            c = c.mul_(self.w_var).add_(self.b_var)
            if layer == self.depth:
                break
            c, dot = dual(q1[layer][:, None], c, q2[layer][None, :], ntk is not None)
            if ntk is not None:
                theta.mul_(dot)
        return c

    def _relu_tile(self, c, q1, q2, ntk, zeros, divide, diagonal, same, mirror, strip) -> None:
        """The fused ReLU recursion on the block ``c`` (in place; the NTK into ``ntk``), by
        :func:`_relu_strips` (see there), on the CPU compiled by TorchScript where it can be
        (on a GPU a block is one strip and the GIL no bottleneck)."""
        n_rows, n_cols = c.shape
        beta = self.activation.abrelu[1]
        # The norms' factors: -sqrt(q) of the rows, sqrt(q) of the columns (per layer).
        r1 = _stack(q1, n_rows, c).sqrt_().neg_()
        r2 = _stack(q2, n_cols, c).sqrt_()
        cap = min(strip, n_rows) * n_cols
        buf = _scratch(3 * cap, c.dtype, c.device)[: 3 * cap].view(3, cap)
        m_k, m_t = (None, None) if mirror is None else mirror
        fn = _compiled_relu_strips() if c.device.type == "cpu" else _relu_strips
        fn(
            c,
            ntk,
            r1,
            r2,
            buf,
            strip,
            self.w_var * (beta * beta) / _TWO_PI,
            self.b_var,
            self.w_var if divide is None else self.w_var / divide,
            0 if diagonal else -1,
            same,
            [True] * self.depth if zeros is None else [bool(z) for z in zeros],
            m_k,
            m_t if ntk is not None else None,
        )


def _relu_strips(
    c: torch.Tensor,
    theta: torch.Tensor | None,
    r1: torch.Tensor,
    r2: torch.Tensor,
    buf: torch.Tensor,
    strip: int,
    gain: float,
    b_var: float,
    scale: float,
    diagonal: int,
    pin: torch.Tensor | None,
    zeros: list[bool],
    mirror_k: torch.Tensor | None,
    mirror_t: torch.Tensor | None,
) -> None:
    r"""The fused recursion of phi = beta relu in the NTK parameterization, on the block ``c``
    (in: K^0 up to a factor, ``scale`` c = w^2 K^0; out: the NNGP, in place) in strips of
    ``strip`` rows; the NTK into ``theta`` (None: NNGP only). ``r1`` (layers, rows) holds
    -sqrt(q1) and ``r2`` (layers, cols) sqrt(q2), the per-layer variances' square roots;
    ``buf`` (3, >= strip x cols) the strips' temporaries; ``gain`` = w^2 beta^2 / (2 pi).

    With rho = K / sqrt(q1 q2) (K the pre-activation covariance of a layer, q1, q2 the
    variances) and g = sqrt(1 - rho^2) + (pi - arccos rho) rho (Cho & Saul 2009), every
    hidden layer is

        K'     = b^2 + w^2 (beta^2 / (2 pi)) sqrt(q1 q2) g
        Theta' = K'  + w^2 (beta^2 / (2 pi)) (pi - arccos rho) Theta,

    the recursion of the module docstring with its constants folded: eight passes over a
    strip per layer (three of them fused multiply-adds) where the activation's dual and the
    separate updates took nineteen. The norm is negated, so that K / norm is -rho, the
    argument arccos and the updates take (pi - arccos rho = arccos(-rho)). Where the
    correlation is exactly 1 (``diagonal`` >= 0: the diagonal of a symmetric block, from
    column ``diagonal``; ``pin``: a mask of equal inputs), rho is set to 1: the folded
    constants round differently from the diagonals' own recursion, and arccos has an
    infinite slope at 1. ``zeros[l]``: whether a variance of layer l may be 0 (rho = 0 there,
    as in the duals). ``mirror_k``, ``mirror_t``: destinations of the block's transposes,
    written strip by strip while the strip is in cache.

    Each strip runs through all layers while its temporaries stay in the core's cache (the
    entries are independent: the strips change no bit). Compiled by TorchScript (see
    :func:`_compiled_relu_strips`), the strips run without the GIL, so two tiles in two threads
    run in parallel.
    """
    n_rows, n_cols = c.shape[0], c.shape[1]
    depth = r1.shape[0]
    bias = torch.full((), b_var, dtype=c.dtype, device=c.device)
    one = torch.ones((), dtype=c.dtype, device=c.device)
    for r0 in range(0, n_rows, strip):
        r_end = min(r0 + strip, n_rows)
        size = (r_end - r0) * n_cols
        part = c[r0:r_end]
        p = buf[0, :size].view(r_end - r0, n_cols)
        s = buf[1, :size].view(r_end - r0, n_cols)
        n = buf[2, :size].view(r_end - r0, n_cols)
        th: torch.Tensor | None = None
        # K^1 = w^2 K^0 + b^2 = Theta^1 in one pass: into theta when there is one (part
        # then receives -rho), else in place.
        if theta is not None:
            th = theta[r0:r_end]
            k = torch.add(bias, part, alpha=scale, out=th)
        else:
            k = torch.add(bias, part, alpha=scale, out=part)
        for layer in range(depth):
            torch.mul(r1[layer, r0:r_end].unsqueeze(1), r2[layer].unsqueeze(0), out=n)
            neg_rho = torch.div(k, n, out=part).clamp_(-1.0, 1.0)
            if diagonal >= 0:
                neg_rho.diagonal(diagonal + r0).fill_(-1.0)
            if pin is not None:
                neg_rho.masked_fill_(pin[r0:r_end], -1.0)
            if zeros[layer]:
                neg_rho.masked_fill_(n == 0, 0.0)
            torch.arccos(neg_rho, out=p)  # pi - arccos(rho)
            torch.addcmul(one, neg_rho, neg_rho, value=-1.0, out=s).sqrt_()
            s.addcmul_(p, neg_rho, value=-1.0)  # g
            k = torch.addcmul(bias, s, n, value=-gain, out=neg_rho)  # K' (over -rho)
            if th is not None:
                torch.addcmul(k, th, p, value=gain, out=th)
        if mirror_k is not None:
            mirror_k[:, r0:r_end].copy_(part.t())
        if mirror_t is not None and th is not None:
            mirror_t[:, r0:r_end].copy_(th.t())


# Compile _relu_strips with TorchScript (False: always the eager function; read once).
USE_TORCHSCRIPT = True
_RELU_STRIPS: list = []  # the function _compiled_relu_strips settled on, once per process


def _compiled_relu_strips():
    """:func:`_relu_strips` compiled by ``torch.jit.script`` (once per process), or the plain
    function where TorchScript is unavailable or fails: the same operations, the same bits.

    Compiled, a strip's ~30 operations run in TorchScript's interpreter without the GIL,
    where from Python each takes and releases it: with two tiles in two threads, the eager
    strips ran 1.3-1.6x faster than one thread, the compiled ones 1.65-1.9x (n = 4000,
    float32, development machine, quiet). ``torch.jit.script`` is deprecated in favour of
    ``torch.compile``, which took 23.7 s to compile this recursion: its deprecation warning is
    silenced here, and its removal would leave the eager fallback.
    """
    if not _RELU_STRIPS:
        fn = _relu_strips
        if USE_TORCHSCRIPT:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn = torch.jit.script(_relu_strips)
            except Exception:  # noqa: BLE001 - any failure to compile: the eager function
                fn = _relu_strips
        _RELU_STRIPS.append(fn)
    return _RELU_STRIPS[0]


def relu_strips_compiled() -> bool:
    """Whether the fused ReLU recursion runs compiled by TorchScript on the CPU."""
    return _compiled_relu_strips() is not _relu_strips


def _stack(qs: list[torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
    """The per-layer variances as one (layers, n) tensor."""
    if not qs:
        return like.new_empty((0, n))
    return torch.stack(qs)


_WORKSPACE = threading.local()


def _scratch(numel: int, dtype: torch.dtype, device, slot: str = "strips") -> torch.Tensor:
    """This thread's flat buffer ``slot`` of at least ``numel`` entries (the temporaries of
    the row strips, or a block's), reused from block to block: a fresh buffer of a few MiB
    costs page faults each time (5 ms for a 2 MiB block in float64 on the development
    machine, as much as the block's arithmetic); grown when too small."""
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    key = (slot, dtype, str(device))
    have = buffers.get(key)
    if have is None or have.numel() < numel:
        have = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return have


def _block(slot: str, shape, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) view of this thread's buffer ``slot`` (see :func:`_scratch`)."""
    numel = shape[0] * shape[1]
    return _scratch(numel, like.dtype, like.device, slot)[:numel].view(shape)


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


def _check_finite_result(k: torch.Tensor, what: str) -> None:
    if not all_finite(k):
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
    # zeros[l]: whether a variance of layer l (of x1 or x2) is 0 (None: each dual looks).
    zeros: tuple[bool, ...] | None = None
    # Blocks in row strips on the CPU (FCRecursion.tile), else whole.
    strips: bool = True

    def __call__(self, rows: slice, cols: slice, *, out=None, mirror=None) -> Kernel:
        """The block kernel[rows, cols]; for a symmetric kernel, diagonal blocks need rows ==
        cols (they are symmetrised exactly).

        ``out``: (nngp, ntk) destinations of the block (each a view with unit column stride
        of the block's shape, or None), written in place of fresh tensors; ``mirror``: the
        same for the transposed block kernel[cols, rows] of a symmetric kernel. The values
        are the same, bit for bit. Returns the block (views of ``out`` where given).
        """
        xb = self.x1 if self.x2 is None else self.x2
        diag = self.symmetric and rows == cols
        d = self.x1.shape[1]
        direct = out is not None and not diag and self.g1 is None
        # Writing into given outputs, the block's temporaries live in this thread's buffers.
        reuse = out is not None and self.x1.device.type == "cpu"
        a, b = self.x1[rows], xb[cols]
        shape = (a.shape[0], b.shape[0])
        with torch.no_grad():
            if direct and out[0] is not None:
                c = torch.mm(a, b.T, out=out[0])
            elif reuse:
                c = torch.mm(a, b.T, out=_block("c", shape, a))
            else:
                c = a @ b.T
            # Without a diagonal or duplicates to fix, c / d is taken strip by strip, in cache.
            divide = d if not diag and self.g1 is None else None
            if divide is None:
                c.div_(d)
            if diag:
                # Exact self-covariances on the diagonal keep rho = 1 there.
                if reuse:  # (c + c^T) 0.5: the same rounding as 0.5 (c + c^T)
                    c = torch.add(c, c.T, out=_block("sym", shape, c)).mul_(0.5)
                else:
                    c = 0.5 * (c + c.T)
                c.diagonal().copy_(self.q01[rows])
            same = None
            if self.g1 is not None:
                # An exact duplicate pair gets c = q, its self-covariance, as the diagonal
                # does: the GEMM's rounding (|c - q| ~ sqrt(d) eps q) would give rho < 1,
                # which the recursion amplifies (arccos: theta ~ sqrt(2 (1 - rho))), so that
                # duplicated rows differed and the kernel lost its singularity.
                same = self.g1[rows][:, None] == self.g2[cols][None, :]
                if bool(same.any()):
                    q = self.q01[rows][:, None]
                    if reuse:  # c is this thread's buffer: in place
                        c = torch.where(same, q, c, out=c)
                    else:
                        c = torch.where(same, q, c)
                else:
                    same = None
            k = self.rec.tile(
                c,
                [q[rows] for q in self.d1],
                [q[cols] for q in self.d2],
                self.need_ntk,
                zeros=self.zeros,
                divide=divide,
                diagonal=diag,
                same=same,
                ntk_out=out[1] if direct else (_block("ntk", shape, c) if reuse else None),
                mirror=mirror if direct else None,
                strips=self.strips,
            )
            if diag and not self.rec.fused:
                # The duals are not bitwise symmetric in (q1, q2) (rounding order in the
                # closed forms, node placement in quadrature), so a diagonal block comes
                # out asymmetric by rounding/quadrature error: mirror it exactly. (The fused
                # ReLU recursion is: its every operation is symmetric in (q1, q2) and c.)
                k = Kernel(*(None if b is None else 0.5 * (b + b.T) for b in (k.nngp, k.ntk)))
            if out is not None and not direct:
                blocks = (k.nngp, k.ntk)
                if mirror is not None:
                    _write(mirror, tuple(None if b is None else b.T for b in blocks))
                k = Kernel(*_write(out, blocks))
            elif direct and out[0] is None:
                k = Kernel(None, k.ntk)
        return k


def _write(dsts, blocks) -> list:
    """Copy each block into its destination (skipping None); the destinations, else None."""
    done = []
    for dst, block in zip(dsts, blocks, strict=True):
        if dst is not None and block is not None:
            dst.copy_(block)
            done.append(dst)
        else:
            done.append(None)
    return done


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
        zeros = tuple(
            bool((a == 0).any()) or bool((b == 0).any()) for a, b in zip(d1, d2, strict=True)
        )
    return FCTiler(rec, x1, x2, q01, d1, d2, need_ntk, g1, g2, zeros)


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
    # (widenet.threads); a tile's few hundred small operations are too short for intra-op
    # threads.
    # Small kernels run in the calling thread: at n = 1347 (6 tiles, float64, load ~10) the
    # pool took 0.22 s against 0.09 s.
    n1, n2 = tiler.shape
    small = n1 * n2 <= SMALL_KERNEL_ENTRIES
    grid = list(grid)
    tiler = _strips_for(tiler, 1 if small else pool_size(len(grid), x1.device))
    return map_blocks(work, grid, x1.device, max_workers=1 if small else None)


def _strips_for(tiler: FCTiler, workers: int) -> FCTiler:
    """Row strips when the blocks run one at a time or run the compiled fused recursion
    (without the GIL); whole blocks in a pool of eager ones, whose strips' many small
    operations would contend for the GIL (see STRIP_ENTRIES). The values are the same bit
    for bit. Measured at n = 4000, float32, a pool of two, quiet: compiled strips
    0.072-0.080 s, compiled whole blocks 0.093-0.097 s, eager whole blocks 0.106-0.112 s."""
    if workers <= 1 or (tiler.rec.fused and relu_strips_compiled()):
        return tiler
    return dataclasses.replace(tiler, strips=False)


# Outputs of at least this many bytes are allocated in transparent huge pages on the CPU
# where the operating system offers them (madvise mode): a fresh 64 MiB output faulted in
# 4 KiB pages cost as much as a fifth of the FC kernel's arithmetic at n = 4000 (glibc maps
# every allocation above 32 MiB afresh; smaller ones it reuses, which beats fresh huge pages).
HUGE_PAGE_BYTES = 32 << 20
USE_HUGE_PAGES = True


def _output(shape, dtype, device) -> torch.Tensor:
    """An uninitialised output tensor; large CPU ones in transparent huge pages if possible."""
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if (
        USE_HUGE_PAGES
        and torch.device(device).type == "cpu"
        and nbytes >= HUGE_PAGE_BYTES
        and hasattr(mmap, "MADV_HUGEPAGE")
    ):
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            buf.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError, AttributeError):
            pass
        else:
            return torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)
    return torch.empty(shape, dtype=dtype, device=device)


def fc_kernel(
    rec: FCRecursion,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    tile: int,
    need_nngp: bool,
    need_ntk: bool,
    track=None,
) -> Kernel:
    """The whole kernel of ``rec`` on validated inputs, as :func:`assemble` of
    :func:`fc_tiles` gives it (the same tiles, the same bits), but with every tile written
    into the outputs, its mirror and its finiteness check included, by the worker that
    computed it, while the tile is in that core's cache: the consumer thread, which did that
    work alone, would otherwise run a third thread on two cores. ``track(iterable, total)``
    wraps the tiles' completions (a progress bar)."""
    tile = check_tile(tile)
    tiler = fc_tiler(rec, x1, x2, need_ntk=need_ntk)
    n1, n2 = tiler.shape
    symmetric = tiler.symmetric
    outs = []
    for need, what in ((need_nngp, "nngp"), (need_ntk, "ntk")):
        if need:
            outs.append((what, _output((n1, n2), x1.dtype, x1.device)))

    kernel = dict(outs)
    nngp, ntk = kernel.get("nngp"), kernel.get("ntk")

    def work(rc):
        rows, cols = rc
        dst = (None if nngp is None else nngp[rows, cols], None if ntk is None else ntk[rows, cols])
        mirror = None
        if symmetric and rows != cols:
            mirror = tuple(None if o is None else o[cols, rows] for o in (nngp, ntk))
        k = tiler(rows, cols, out=dst, mirror=mirror)
        return [
            w for w, b in (("nngp", k.nngp), ("ntk", k.ntk)) if b is not None and not all_finite(b)
        ]

    grid = list(tile_grid(n1, n2, tile, symmetric=symmetric))
    small = n1 * n2 <= SMALL_KERNEL_ENTRIES
    tiler = _strips_for(tiler, 1 if small else pool_size(len(grid), x1.device))
    done = map_blocks(work, grid, x1.device, max_workers=1 if small else None)
    if track is not None:
        done = track(done, len(grid))
    bad = set()
    for b in done:
        bad.update(b)
    for what, out in outs:
        if what in bad:
            _check_finite_result(out, what.upper())
    return Kernel(nngp, ntk)


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
            if not bad[what] and not all_finite(block):
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
