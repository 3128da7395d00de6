"""One architecture description, two views: the finite network and its infinite-width kernel.

As in neural-tangents' ``stax``, ``wn.mlp(...)`` describes a fully-connected network once;
``arch.network(in_dim, width, seed)`` builds a finite ``torch.nn.Module`` initialised by the same
convention and ``arch.kernel(x1, x2)`` gives the NNGP and NTK of its infinite-width limit. The
closed forms and their equations are in :mod:`widenet.kernels` and :mod:`widenet.activations`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from widenet import activations as _act
from widenet._checks import check_int, check_real
from widenet.kernels import (
    FCTiler,
    Kernel,
    KernelTile,
    _check_tile,
    _resolve_get,
    assemble,
    fc_recursion,
    fc_tiler,
    fc_tiles,
    prepare_inputs,
)
from widenet.layers import PARAMETERIZATIONS, Dense, Elementwise

DEFAULT_TILE = 512


@dataclass(frozen=True)
class MLP:
    """A fully-connected architecture: ``depth`` x [Dense(width), activation], Dense(out_dim).

    Every Dense uses the same ``w_std`` and ``b_std``. Build it with :func:`mlp`.
    """

    depth: int
    activation: _act.Activation
    w_std: float
    b_std: float
    out_dim: int
    parameterization: str

    # -- the infinite-width kernel -------------------------------------------------------

    def _recursion(self, in_dim: int, width):
        if self.parameterization == "standard":
            if width is None:
                raise ValueError(
                    "width is required for parameterization='standard': its NTK grows with the "
                    "width (pass width=n, the hidden width of the finite network)"
                )
            width = check_int(width, "width", minimum=1)
        elif width is not None:
            raise ValueError(
                "width applies only to parameterization='standard'; the NTK-parameterization "
                "kernel is the width -> infinity limit"
            )
        return fc_recursion(
            self.activation,
            self.depth,
            self.w_std,
            self.b_std,
            self.parameterization,
            in_dim,
            width,
        )

    def kernel_tiles(
        self,
        x1,
        x2=None,
        *,
        tile: int = DEFAULT_TILE,
        get=("nngp", "ntk"),
        dtype: torch.dtype | None = None,
        width: int | None = None,
    ) -> Iterator[KernelTile]:
        """Stream the kernel block by block: yields ``KernelTile(rows, cols, Kernel)``.

        With ``x2=None`` only blocks on or above the diagonal are yielded (the kernel is
        symmetric). Each block holds both NNGP and NTK when the NTK is requested (the NTK
        recursion needs the NNGP anyway). Memory: O(tile^2) per block.
        """
        _, need_ntk = _resolve_get(get)
        _check_tile(tile)
        x1, x2 = prepare_inputs(x1, x2, dtype)
        rec = self._recursion(x1.shape[1], width)
        return fc_tiles(rec, x1, x2, tile=tile, need_ntk=need_ntk)

    def kernel_tiler(
        self,
        x1,
        x2=None,
        *,
        get=("nngp", "ntk"),
        dtype: torch.dtype | None = None,
        width: int | None = None,
    ) -> FCTiler:
        """A function ``tiler(rows, cols) -> Kernel`` computing any one block on its own.

        The unit of work of :meth:`kernel_tiles` and of :func:`widenet.scale.kernel_to_zarr`
        (same operations, so the same bits). With ``x2=None`` the kernel is symmetric and a
        diagonal block must be requested with ``rows == cols``.
        """
        _, need_ntk = _resolve_get(get)
        x1, x2 = prepare_inputs(x1, x2, dtype)
        return fc_tiler(self._recursion(x1.shape[1], width), x1, x2, need_ntk=need_ntk)

    def kernel(
        self,
        x1,
        x2=None,
        *,
        get=("nngp", "ntk"),
        tile: int | None = None,
        dtype: torch.dtype | None = None,
        width: int | None = None,
        progress: bool = False,
    ) -> Kernel:
        """The infinite-width NNGP and NTK between ``x1`` (n1, d) and ``x2`` (n2, d).

        ``x2=None`` (or ``x2`` being the very tensor ``x1``) means ``x2 = x1``: the kernel is
        symmetric, so only half the work is done. The result has the
        inputs' dtype (``dtype`` overrides it; float32 is the default for float32 inputs) and
        device. ``tile`` bounds the block size (default 512): memory beyond the output is
        O(tile^2). ``get`` selects "nngp", "ntk" or both. ``width`` is the hidden width, needed
        (only) for ``parameterization="standard"``, whose NTK depends on it. ``progress`` shows a
        progress bar over the tiles (on stderr).
        """
        need_nngp, need_ntk = _resolve_get(get)
        if x2 is x1:  # the same tensor: take the symmetric path (half the work, exact diagonal)
            x2 = None
        x1, x2 = prepare_inputs(x1, x2, dtype)
        tile = DEFAULT_TILE if tile is None else _check_tile(tile)
        rec = self._recursion(x1.shape[1], width)
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        tiles = fc_tiles(rec, x1, x2, tile=tile, need_ntk=need_ntk)
        if progress:
            tiles = _with_progress(tiles, x1.shape[0], n2, tile, symmetric=x2 is None)
        return assemble(
            tiles,
            x1.shape[0],
            n2,
            symmetric=x2 is None,
            need_nngp=need_nngp,
            need_ntk=need_ntk,
            dtype=x1.dtype,
            device=x1.device,
        )

    # -- the finite network ---------------------------------------------------------------

    def network(
        self,
        in_dim: int,
        width: int,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> nn.Sequential:
        """A finite network of hidden width ``width``, initialised from ``seed``.

        Parameters are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in layer
        order, so a seed gives the same network on every device.
        """
        in_dim = check_int(in_dim, "in_dim", minimum=1)
        width = check_int(width, "width", minimum=1)
        seed = check_int(seed, "seed")
        gen = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        fan_in = in_dim
        for _ in range(self.depth):
            layers.append(self._dense(fan_in, width, gen, dtype))
            layers.append(Elementwise(self.activation.fn, self.activation.name))
            fan_in = width
        layers.append(self._dense(fan_in, self.out_dim, gen, dtype))
        net = nn.Sequential(*layers)
        return net.to(device) if device is not None else net

    def _dense(self, fan_in, fan_out, gen, dtype) -> Dense:
        return Dense(
            fan_in,
            fan_out,
            w_std=self.w_std,
            b_std=self.b_std,
            parameterization=self.parameterization,
            generator=gen,
            dtype=dtype,
        )


def _with_progress(tiles, n1: int, n2: int, tile: int, *, symmetric: bool):
    from rich.progress import track

    r, c = -(-n1 // tile), -(-n2 // tile)
    total = r * (r + 1) // 2 if symmetric else r * c
    return track(tiles, total=total, description=f"kernel {n1}x{n2}", transient=True)


def mlp(
    depth: int,
    activation="relu",
    w_std: float = 1.0,
    b_std: float = 0.0,
    out_dim: int = 1,
    parameterization: str = "ntk",
) -> MLP:
    """Describe a fully-connected network (neural-tangents' stax conventions).

    ``depth`` hidden layers, each ``Dense(width)`` then ``activation``, then ``Dense(out_dim)``.
    ``activation``: a name (relu, leaky_relu, erf, gelu, identity, sin, cos in closed form; tanh,
    sigmoid, softplus, silu, elu by quadrature), a :class:`widenet.activations.Activation` such
    as ``activations.leaky_relu(0.1)`` or ``activations.abrelu(a, b)``, or any elementwise torch
    callable (quadrature). ``parameterization``: "ntk" (w_std/sqrt(fan_in) W x + b_std b with
    W, b ~ N(0, 1)) or "standard" (W ~ N(0, w_std^2/fan_in), b ~ N(0, b_std^2)).
    """
    depth = check_int(depth, "depth", minimum=1)
    w_std = check_real(w_std, "w_std", minimum=0.0)
    b_std = check_real(b_std, "b_std", minimum=0.0)
    out_dim = check_int(out_dim, "out_dim", minimum=1)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
        )
    return MLP(depth, _act.get(activation), w_std, b_std, out_dim, parameterization)
