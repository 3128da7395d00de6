"""One architecture description, two views: the finite network and its infinite-width kernel.

As in neural-tangents' ``stax``, ``wn.serial(*layers)`` (layers from :mod:`widenet.stax`:
``wn.Dense``, ``wn.Conv``, ``wn.AvgPool``, ``wn.GlobalAvgPool``, ``wn.Flatten``,
``wn.LayerNorm``, ``wn.Residual`` and the activations) describes a network once;
``arch.network(in_shape, width, seed)`` builds a finite ``torch.nn.Module`` initialised by the
same convention and ``arch.kernel(x1, x2)`` gives the NNGP and NTK of its infinite-width limit,
on vectors (N, d), sequences (N, C, L) or images (N, C, H, W). ``wn.mlp(...)`` is the
fully-connected preset (it keeps the fused recursion of :mod:`widenet.kernels`); more presets
are in :mod:`widenet.presets`, and :func:`from_spec` reads a preset name or a YAML-style list
of layers. The equations are in :mod:`widenet.stax`, :mod:`widenet.covariance`,
:mod:`widenet.kernels` and :mod:`widenet.activations`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from widenet import activations as _act
from widenet import stax
from widenet._checks import (
    as_tensor,
    check_device,
    check_finite,
    check_inputs,
    check_int,
    check_pair,
    check_real,
)
from widenet.kernels import (
    FCTiler,
    Kernel,
    KernelTile,
    Tiler,
    assemble,
    check_tile,
    fc_kernel,
    fc_recursion,
    fc_tiler,
    fc_tiles,
    prepare_inputs,
    resolve_get,
)
from widenet.layers import PARAMETERIZATIONS, Dense, Elementwise

DEFAULT_TILE = 512


class Architecture:
    """A network description: a sequence of :mod:`widenet.stax` layers (``self.layers``).

    Every architecture has the same methods: :meth:`kernel`, :meth:`kernel_tiles`,
    :meth:`kernel_tiler`, :meth:`kernel_diagonal` and :meth:`network`.
    """

    layers: tuple

    # -- the infinite-width kernel -------------------------------------------------------

    def _check_width(self, width):
        standard = _uses_standard(self.layers)
        if standard:
            if width is None:
                raise ValueError(
                    "width is required for parameterization='standard': its NTK grows with the "
                    "width (pass width=n, the hidden width of the finite network)"
                )
            return check_int(width, "width", minimum=1)
        if width is not None:
            raise ValueError(
                "width applies only to parameterization='standard'; the NTK-parameterization "
                "kernel is the width -> infinity limit"
            )
        return None

    def plan(self, in_shape, width: int | None = None) -> stax.Plan:
        """The checked plan of the kernel computation on inputs of feature shape ``in_shape``
        (channels first): raises :class:`widenet.stax.ArchitectureError` naming the layer the
        closed form cannot follow."""
        return stax.compile_plan(self.layers, tuple(in_shape), self._check_width(width))

    def _inputs(self, x1, x2, dtype):
        x1, x2 = _prepare_any(x1, x2, dtype)
        return x1, x2

    def _tiler(self, x1, x2, need_ntk: bool, width) -> Tiler:
        """The tiler of this architecture's kernel on inputs validated by :meth:`_inputs`."""
        plan = self.plan(x1.shape[1:], width)
        return stax.stax_tiler(plan, x1, x2, need_ntk=need_ntk)

    def _tiles(self, x1, x2, tile: int, need_ntk: bool, width) -> Iterator[KernelTile]:
        """The tiles (on and above the diagonal when ``x2 is None``) of the kernel."""
        return stax.stax_tiles(self._tiler(x1, x2, need_ntk, width), tile)

    def kernel_tiler(
        self,
        x1,
        x2=None,
        *,
        get=("nngp", "ntk"),
        dtype: torch.dtype | None = None,
        width: int | None = None,
    ) -> Tiler:
        """A function ``tiler(rows, cols) -> Kernel`` computing any one block on its own.

        The unit of work of :meth:`kernel_tiles` and of :func:`widenet.scale.kernel_to_zarr`
        (same operations, so the same bits). With ``x2=None`` the kernel is symmetric and a
        diagonal block must be requested with ``rows == cols``. Per-input variances are
        computed once, here (O(n)); a block of any size is computed in workspace blocks, so
        memory stays bounded.
        """
        _, need_ntk = resolve_get(get)
        x1, x2 = self._inputs(x1, x2, dtype)
        return self._tiler(x1, x2, need_ntk, width)

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
        symmetric). Memory beyond a block is bounded by the engine's workspace.
        """
        check_tile(tile)
        _, need_ntk = resolve_get(get)
        x1, x2 = self._inputs(x1, x2, dtype)
        return self._tiles(x1, x2, tile, need_ntk, width)

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
        """The infinite-width NNGP and NTK between ``x1`` and ``x2`` (n1 x n2).

        Inputs: vectors (n, d), sequences (n, C, L) or images (n, C, H, W), channels first.
        ``x2=None`` (or the very tensor ``x1``) means ``x2 = x1``: the kernel is symmetric and
        only half the work is done. The result has the inputs' dtype (``dtype`` overrides it)
        and device. ``tile`` bounds the output block size (default 512); ``get`` selects
        "nngp", "ntk" or both; ``width`` is the hidden width, needed (only) when a layer uses
        ``parameterization="standard"``; ``progress`` shows a progress bar over the tiles.
        """
        need_nngp, need_ntk = resolve_get(get)
        if x2 is x1:
            x2 = None
        x1, x2 = self._inputs(x1, x2, dtype)
        tile = DEFAULT_TILE if tile is None else check_tile(tile)
        return self._kernel(x1, x2, tile, need_nngp, need_ntk, width, progress)

    def _kernel(self, x1, x2, tile, need_nngp, need_ntk, width, progress) -> Kernel:
        """The assembled kernel on inputs validated by :meth:`_inputs`."""
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        tiles = self._tiles(x1, x2, tile, need_ntk, width)
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

    def kernel_diagonal(
        self,
        x,
        *,
        get=("nngp", "ntk"),
        dtype: torch.dtype | None = None,
        width: int | None = None,
    ) -> Kernel:
        """K(x_i, x_i) and Theta(x_i, x_i) for every input: a Kernel of (n,) vectors, O(n) work
        (each input against itself only; pooling layers still cost O(P^2) per input)."""
        need_nngp, need_ntk = resolve_get(get)
        x, _ = self._inputs(x, None, dtype)
        plan = self.plan(x.shape[1:], width)
        _, k = stax.self_kernels(plan, x, need_ntk)
        return Kernel(k.nngp if need_nngp else None, k.ntk)

    # -- the finite network ---------------------------------------------------------------

    def network(
        self,
        in_shape,
        width: int,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> nn.Sequential:
        """A finite network of hidden width ``width`` (the channels or features of every layer
        whose output size is None), for inputs of feature shape ``in_shape`` (an int d for
        vectors, (C, L) or (C, H, W)), initialised from ``seed``.

        Parameters are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in layer
        order, so a seed gives the same network on every device. Its forward pass checks the
        input's feature shape.
        """
        in_shape = _check_in_shape(in_shape)
        width = check_int(width, "width", minimum=1)
        seed = check_int(seed, "seed")
        stax.compile_plan(self.layers, in_shape, width)  # the same checks as the kernel
        gen = torch.Generator().manual_seed(seed)
        net, _ = stax.build_network(self.layers, in_shape, width, gen, dtype)
        net.register_forward_pre_hook(_ShapeCheck(in_shape))
        return net if device is None else net.to(check_device(device))

    def spec(self) -> list:
        """The layers as a YAML-able list (the inverse of :func:`from_spec`)."""
        return [layer.spec() for layer in self.layers]


class _ShapeCheck:
    """Forward pre-hook: the input must be (N, *in_shape)."""

    def __init__(self, in_shape):
        self.in_shape = tuple(in_shape)

    def __call__(self, module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"this network takes inputs of shape (N, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}"
            )


def _check_in_shape(in_shape) -> tuple:
    if isinstance(in_shape, (int,)) and not isinstance(in_shape, bool):
        in_shape = (in_shape,)
    try:
        in_shape = tuple(in_shape)
    except TypeError:
        raise ValueError(
            f"in_shape must be an int (vector inputs) or a tuple (C, L) / (C, H, W), got "
            f"{in_shape!r}"
        ) from None
    if not 1 <= len(in_shape) <= 3:
        raise ValueError(
            f"in_shape must be (d,), (C, L) or (C, H, W) (channels first, no batch axis), got "
            f"{in_shape!r}"
        )
    for v in in_shape:
        check_int(v, "in_shape entries", minimum=1)
    return tuple(int(v) for v in in_shape)


def _uses_standard(layers) -> bool:
    for layer in layers:
        if isinstance(layer, stax.Residual):
            if _uses_standard(layer.layers):
                return True
        elif getattr(layer, "parameterization", "ntk") == "standard":
            return True
    return False


def _prepare_any(x1, x2, dtype):
    """Validate (x1, x2) of any rank: (n, d), (n, C, L) or (n, C, H, W), same feature shape."""
    x1 = as_tensor(x1, "x1", dtype=dtype)
    if x1.ndim not in (2, 3, 4):
        raise ValueError(
            f"x1 must be vectors (n, d), sequences (n, C, L) or images (n, C, H, W), got shape "
            f"{tuple(x1.shape)}"
        )
    if x1.shape[0] == 0:
        raise ValueError(f"x1 has no samples (shape {tuple(x1.shape)})")
    check_finite(x1, "x1")
    if x2 is not None:
        x2 = as_tensor(x2, "x2", dtype=dtype)
        if x2.shape[0] == 0:
            raise ValueError(f"x2 has no samples (shape {tuple(x2.shape)})")
        check_finite(x2, "x2")
        check_pair(x1, x2)
    return x1, x2


@dataclass(frozen=True, init=False)
class Serial(Architecture):
    """The architecture ``layers[0] -> layers[1] -> ...``; build it with :func:`serial`."""

    layers: tuple

    def __init__(self, *layers):
        object.__setattr__(self, "layers", tuple(layers))

    def __repr__(self):
        return f"serial({', '.join(repr(layer) for layer in self.layers)})"

    def fully_connected(self) -> MLP | None:
        """The :class:`MLP` this stack equals, if it is depth x [Dense, activation] + Dense
        with one w_std, b_std and parameterization (then its kernels use the fused
        fully-connected recursion of :mod:`widenet.kernels`, bit for bit ``wn.mlp``'s)."""
        layers = self.layers
        if len(layers) < 3 or len(layers) % 2 == 0:
            return None
        denses, acts = layers[0::2], layers[1::2]
        if not all(type(d) is stax.Dense for d in denses):
            return None
        if not all(type(a) is stax.Activation for a in acts):
            return None
        first = denses[0]
        for d in denses:
            if (d.w_std, d.b_std, d.parameterization) != (
                first.w_std,
                first.b_std,
                first.parameterization,
            ):
                return None
        if first.b_std is None or len({a.activation for a in acts}) != 1:
            return None
        if first.parameterization == "standard" and any(
            d.out_features is not None for d in denses[:-1]
        ):
            return None  # explicit hidden sizes: the MLP's NTK assumes `width` everywhere
        out = denses[-1].out_features
        return MLP(
            len(acts),
            acts[0].activation,
            first.w_std,
            first.b_std,
            out or 1,
            first.parameterization,
        )

    def kernel_tiler(self, x1, x2=None, **kwargs):
        fc = self.fully_connected()
        if fc is not None and _is_vectors(x1):
            return fc.kernel_tiler(x1, x2, **kwargs)
        return Architecture.kernel_tiler(self, x1, x2, **kwargs)

    def kernel_tiles(self, x1, x2=None, **kwargs):
        fc = self.fully_connected()
        if fc is not None and _is_vectors(x1):
            return fc.kernel_tiles(x1, x2, **kwargs)
        return Architecture.kernel_tiles(self, x1, x2, **kwargs)

    def kernel(self, x1, x2=None, **kwargs):
        fc = self.fully_connected()
        if fc is not None and _is_vectors(x1):
            return fc.kernel(x1, x2, **kwargs)
        return Architecture.kernel(self, x1, x2, **kwargs)


def _is_vectors(x) -> bool:
    return getattr(x, "ndim", None) == 2 or (
        not isinstance(x, torch.Tensor) and getattr(as_tensor(x, "x1"), "ndim", None) == 2
    )


def serial(*layers) -> Serial:
    """Compose layers of :mod:`widenet.stax` into an architecture (neural-tangents'
    ``stax.serial``). Example::

        arch = wn.serial(
            wn.Conv(kernel_size=3, padding="same", w_std=2**0.5, b_std=0.1), wn.Relu(),
            wn.AvgPool(kernel_size=2),
            wn.Conv(kernel_size=3, w_std=2**0.5),
            wn.Residual(wn.Relu(), wn.Conv(kernel_size=3, w_std=2**0.5)),
            wn.Relu(), wn.GlobalAvgPool(), wn.Dense(10),
        )
        k = arch.kernel(x1, x2)                                   # x: (N, C, H, W)
        net = arch.network(in_shape=(1, 8, 8), width=256, seed=0)

    (Without the Conv after the pooling, the residual block's ReLU would act on an average of
    ReLU outputs, which is not Gaussian: no closed form, and ``kernel`` says so.)
    """
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    for i, layer in enumerate(layers):
        if isinstance(layer, Architecture):
            raise TypeError(f"serial: layer {i} is an architecture; pass its layers: *arch.layers")
        if not isinstance(layer, stax.Layer):
            raise TypeError(
                f"serial: layer {i} must be a widenet layer (wn.Dense, wn.Conv, wn.Relu, ...), "
                f"got {layer!r}"
            )
    if not layers:
        raise ValueError("serial needs at least one layer")
    return Serial(*layers)


@dataclass(frozen=True)
class MLP(Architecture):
    """A fully-connected architecture: ``depth`` x [Dense(width), activation], Dense(out_dim).

    Every Dense uses the same ``w_std`` and ``b_std``. Build it with :func:`mlp`. Its
    ``layers`` are the equivalent :func:`serial` description; its kernels use the fused
    fully-connected recursion of :mod:`widenet.kernels`.
    """

    depth: int
    activation: _act.Activation
    w_std: float
    b_std: float
    out_dim: int
    parameterization: str

    @property
    def layers(self) -> tuple:
        dense = stax.Dense(None, self.w_std, self.b_std, parameterization=self.parameterization)
        act = stax.Activation(self.activation)
        readout = stax.Dense(
            self.out_dim, self.w_std, self.b_std, parameterization=self.parameterization
        )
        return (dense, act) * self.depth + (readout,)

    # -- the infinite-width kernel -------------------------------------------------------

    def _recursion(self, in_dim: int, width):
        width = self._check_width(width)
        return fc_recursion(
            self.activation,
            self.depth,
            self.w_std,
            self.b_std,
            self.parameterization,
            in_dim,
            width,
        )

    # The fused fully-connected recursion of widenet.kernels on (n, d) inputs; kernel,
    # kernel_tiles and kernel_tiler are Architecture's, through these three hooks.

    def _inputs(self, x1, x2, dtype):
        return prepare_inputs(x1, x2, dtype)

    def _tiler(self, x1, x2, need_ntk: bool, width) -> FCTiler:
        return fc_tiler(self._recursion(x1.shape[1], width), x1, x2, need_ntk=need_ntk)

    def _tiles(self, x1, x2, tile: int, need_ntk: bool, width) -> Iterator[KernelTile]:
        rec = self._recursion(x1.shape[1], width)
        return fc_tiles(rec, x1, x2, tile=tile, need_ntk=need_ntk)

    def _kernel(self, x1, x2, tile, need_nngp, need_ntk, width, progress) -> Kernel:
        # Each tile written into the outputs by the worker that computed it (fc_kernel).
        track = None
        if progress:
            n2 = x1.shape[0] if x2 is None else x2.shape[0]

            def track(done, total):
                return _with_progress(done, x1.shape[0], n2, tile, symmetric=x2 is None)

        rec = self._recursion(x1.shape[1], width)
        return fc_kernel(
            rec, x1, x2, tile=tile, need_nngp=need_nngp, need_ntk=need_ntk, track=track
        )

    # -- the finite network ---------------------------------------------------------------

    def kernel_diagonal(self, x, *, get=("nngp", "ntk"), dtype=None, width=None) -> Kernel:
        """K(x_i, x_i) and Theta(x_i, x_i) for every input (n, d): (n,) vectors, O(n d)."""
        x = check_inputs(x, "x", dtype=dtype)
        return Architecture.kernel_diagonal(self, x, get=get, dtype=dtype, width=width)

    def network(
        self,
        in_dim: int | None = None,
        width: int | None = None,
        seed: int = 0,
        *,
        in_shape=None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> nn.Sequential:
        """A finite network of hidden width ``width``, initialised from ``seed``, for inputs of
        ``in_dim`` features (``in_shape=(d,)`` or ``d`` is accepted too).

        Parameters are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in layer
        order, so a seed gives the same network on every device.
        """
        if in_shape is not None:
            if in_dim is not None:
                raise ValueError("pass in_dim or in_shape, not both")
            shape = _check_in_shape(in_shape)
            if len(shape) != 1:
                raise ValueError(f"an MLP takes vector inputs: in_shape=(d,), got {in_shape!r}")
            in_dim = shape[0]
        if width is None:
            raise ValueError("width is required (the hidden width of the finite network)")
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
        return net if device is None else net.to(check_device(device))

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


# --------------------------------------------------------------------------------------------
# Descriptions as data (YAML)
# --------------------------------------------------------------------------------------------


def _layer_from_spec(item, where: str):
    if isinstance(item, stax.Layer):
        return item
    if isinstance(item, str):
        name, args = item.strip(), {}
    elif isinstance(item, dict) and len(item) == 1:
        ((name, args),) = item.items()
        if args is None:
            args = {}
    else:
        raise ValueError(
            f"{where}: a layer is a name ('relu') or a one-key mapping ({{conv: {{kernel_size: "
            f"3}}}}), got {item!r}"
        )
    key = str(name).strip().lower()
    if key == "residual":
        if not isinstance(args, list):
            raise ValueError(f"{where}: residual takes a list of layers, got {args!r}")
        return stax.Residual(
            *(_layer_from_spec(a, f"{where}.residual[{i}]") for i, a in enumerate(args))
        )
    make = stax.LAYER_NAMES.get(key)
    if make is None:
        if isinstance(args, dict) and not args:
            try:  # any activation name: "tanh", "leaky_relu(0.1)", ...
                return stax.Activation(str(name))
            except ValueError:
                pass
        raise ValueError(
            f"{where}: unknown layer {name!r}; expected one of "
            f"{', '.join(sorted(stax.LAYER_NAMES))}, residual, or an activation name"
        )
    if isinstance(args, dict):
        try:
            return make(**args)
        except TypeError as err:
            raise ValueError(f"{where}: {name}: {err}") from None
    if isinstance(args, list):
        return make(*args)
    return make(args)


def from_spec(spec) -> Architecture:
    """An architecture from data: a preset name, a mapping or a list of layers.

    - a preset name: ``"mlp"``, ``"cnn"`` (CNN-GAP, depth 3), ``"cnn-vec"`` / ``"cnn-gap"``,
      ``"myrtle5"``, ``"myrtle7"``, ``"myrtle10"`` (see :mod:`widenet.presets`);
    - ``{"preset": name, **arguments}``, e.g. ``{"preset": "cnn", "depth": 5,
      "readout": "flatten"}``, or ``{"layers": [...]}``;
    - a list of layers, each a name (``"relu"``, ``"flatten"``, ``"tanh"``,
      ``"leaky_relu(0.1)"``) or a one-key mapping ``{"conv": {"kernel_size": 3, "w_std":
      1.41}}``; ``{"residual": [layers...]}`` nests.

    This is what ``yaml.safe_load`` gives for a file such as::

        - conv: {kernel_size: 3, w_std: 1.414, b_std: 0.1}
        - relu
        - conv: {kernel_size: 3, w_std: 1.414}
        - avg_pool: {kernel_size: 2}
        - residual: [relu, {conv: {kernel_size: 3, w_std: 1.414}}]
        - relu
        - global_avg_pool
        - dense: {out_features: 1}
    """
    from widenet import presets

    if isinstance(spec, Architecture):
        return spec
    if isinstance(spec, str):
        return presets.get(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        if "preset" in spec:
            name = spec.pop("preset")
            return presets.get(name, **spec)
        if set(spec) == {"layers"}:
            return from_spec(list(spec["layers"]))
        raise ValueError(
            f"an architecture mapping needs 'preset' (with its arguments) or 'layers', got keys "
            f"{sorted(spec)}"
        )
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("an architecture needs at least one layer, got an empty list")
        return serial(*(_layer_from_spec(item, f"layer {i}") for i, item in enumerate(spec)))
    raise TypeError(
        f"spec must be a preset name, a mapping or a list of layers, got {type(spec).__name__}"
    )
