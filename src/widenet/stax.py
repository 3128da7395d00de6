r"""The layer algebra: one description per layer gives both its finite module and its kernel map.

A network is described as a sequence of layers (``wn.serial(wn.Conv(kernel_size=3), wn.Relu(),
wn.GlobalAvgPool(), wn.Dense(1))``), as in neural-tangents' ``stax`` (Novak et al. 2020, "Neural
Tangents: fast and easy infinite neural networks in Python"), with torch's channels-first
layout. Each layer knows

- its **kernel map**: how the NNGP covariance K and the NTK Theta of its input, for every pair
  of inputs (and pair of positions, for images and sequences), become those of its output in
  the infinite-width limit, and
- its **module**: the finite ``torch.nn.Module`` initialised by the same convention.

Kernel maps (K, Theta -> K', Theta'), in the NTK parameterization (Jacot et al. 2018; Lee et al.
2019), with C -> infinity channels; :mod:`widenet.covariance` holds the spatial operators:

- ``Dense`` on vectors: K' = w^2 K + b^2,  Theta' = w^2 Theta + K'.
- ``Conv``: K' = w^2 conv(K) + b^2,  Theta' = w^2 conv(Theta) + K', with conv(K)[p, p'] the
  mean over the filter taps t of K[s p + t, s p' + t] (Novak et al. 2019, Garriga-Alonso et
  al. 2019; the CNTK of Arora et al. 2019).
- activation phi (``Relu``, ``Erf``, ...): K' = T(K), Theta' = Theta * Tdot(K), the dual maps of
  :mod:`widenet.activations` applied position pair by position pair, with the variances
  K(x, x)[p, p] and K(x', x')[p', p'] (Cho & Saul 2009; Lee et al. 2018; Jacot et al. 2018).
- ``AvgPool``, ``GlobalAvgPool``, ``Flatten``: the same linear map on K and Theta.
- ``LayerNorm`` (over channels): K'[p, p'] = K[p, p'] / sqrt(K(x,x)[p,p] K(x',x')[p',p']), and
  Theta alike (its input is a centred Gaussian, so the channel mean vanishes).
- ``Residual(f)``: x + f(x): K' = K + K_f, Theta' = Theta + Theta_f, exact because f's output,
  after a fresh random layer, is independent of x (and x has mean zero) (Yang 2019, "Scaling
  limits of wide neural networks with weight sharing"; Tensor Programs).

In the standard parameterization (``parameterization="standard"``: W ~ N(0, w^2 / fan_in),
b ~ N(0, b^2)) K is unchanged and a weight layer adds fan_in * map(K) + [bias] instead of K' to
Theta (Sohl-Dickstein et al. 2020), fan_in = channels x filter size of the finite network: it
needs the ``width``.

Which closed forms hold (neural-tangents' rules, as errors naming the layer): an activation or a
``LayerNorm`` needs a centred Gaussian input — the output of a Dense or Conv layer, possibly
pooled or summed — not the raw inputs nor another activation's output; a ``Residual`` branch
must contain a Dense or Conv layer (otherwise f(x) is correlated with x) and both summands must
be Gaussian; ``Flatten`` output is not i.i.d. over features, so only a Dense may follow it.

Covariance layouts (``"vector"``, ``"diag"``, ``"full"``, see :mod:`widenet.covariance`) are
chosen backwards from the output: a layer that mixes positions (pooling) needs the full
position-pair covariance of its input, a Flatten readout only its diagonal, everything else
passes its need on. A CNN with a Flatten readout thus costs O(n^2 P) per layer, a pooling CNN
O(n^2 P^2).

**Adding a layer.** Subclass :class:`Layer` (a frozen dataclass is convenient) and implement

- ``kernel_map(self, k: KernelState) -> KernelState``: return ``k.replace(nngp=..., ntk=...)``
  (or ``k.both(f)`` when one map f applies to both).
  ``k.nngp`` and ``k.ntk`` (``None`` when the NTK is not requested) have shape
  ``(*batch, *layout)``; ``k.shape`` is the input's feature shape (channels first), ``k.layout``
  its layout; for ``uses_variances = True`` layers the variances ``k.var1``, ``k.var2`` are set,
  broadcastable against ``k.nngp``.
- ``module(self, in_shape, width, generator, dtype) -> torch.nn.Module``,

and, where they differ from the defaults, ``output_shape(in_shape, width)`` (same shape),
``input_layout(out_layout)`` (same layout: a pointwise layer), ``output_gaussian(gaussian)``
(unchanged) and ``uses_variances`` (False). Example, a fixed gain y = g x::

    from dataclasses import dataclass
    import widenet as wn

    @dataclass(frozen=True)
    class Gain(wn.stax.Layer):
        g: float = 2.0

        def kernel_map(self, k):
            s = self.g**2
            return k.replace(nngp=k.nngp * s, ntk=None if k.ntk is None else k.ntk * s)

        def module(self, in_shape, width, generator, dtype):
            return wn.layers.Elementwise(lambda x: self.g * x, f"gain {self.g}")

    arch = wn.serial(wn.Dense(), wn.Relu(), Gain(3.0), wn.Dense(1))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields

import torch
from torch import nn

from widenet import activations as _act
from widenet import covariance as cov
from widenet import layers as modules
from widenet._checks import check_int, check_real
from widenet.kernels import Kernel, KernelTile, Tiler, duplicate_ids, tile_grid
from widenet.threads import run_blocks

PARAMETERIZATIONS = modules.PARAMETERIZATIONS
_ORDER = {"vector": 0, "diag": 1, "full": 2}

# Workspace of one block of the tiled kernel: the block side is chosen so that the block's
# covariances (about WORKSPACE_TENSORS live tensors of its largest layout) fit in this budget.
# On the CPU a block that stays in cache is fastest (the maps are a few passes over memory
# each): measured on CNN-GAP depth 3, 8x8 inputs, n = 100, one thread, CPU time 0.46 s at
# 8 MiB, 0.73 s at 32 MiB, 0.91 s at 256 MiB. On a GPU, large blocks amortise the launches.
WORKSPACE_BYTES = 8 * 2**20
WORKSPACE_BYTES_CUDA = 1024 * 2**20
WORKSPACE_TENSORS = 10


def workspace_bytes(device) -> int:
    """The workspace budget of one block on ``device`` (see WORKSPACE_BYTES)."""
    return WORKSPACE_BYTES_CUDA if torch.device(device).type == "cuda" else WORKSPACE_BYTES


class ArchitectureError(ValueError):
    """A description the closed form cannot follow, or a wrong input; names the layer."""


@dataclass
class KernelState:
    """The NNGP covariance and NTK flowing between layers, for a batch of input pairs.

    ``nngp``/``ntk``: (*batch, *layout) with batch (n1, n2) for a block of pairs or (n,) for
    each input with itself; layout () for "vector", S for "diag", S + S for "full" (S the
    spatial shape, ``shape[1:]``). ``shape``: the feature shape (channels first; channels may be
    None, meaning infinitely many). ``var1``/``var2``: the position-diagonal variances
    K(x, x)[p, p] of the rows' and columns' inputs, broadcastable against ``nngp`` (set only for
    layers with ``uses_variances``). ``need_ntk``: whether the NTK is tracked. ``owned``: the
    tensors may be overwritten in place.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    shape: tuple
    layout: str
    gaussian: bool
    need_ntk: bool = True
    var1: torch.Tensor | None = None
    var2: torch.Tensor | None = None
    owned: bool = True

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    def replace(self, **changes) -> KernelState:
        return replace(self, **changes)

    def both(self, f, **changes) -> KernelState:
        """The same map ``f`` on the NNGP and the NTK (a linear layer without weights, or a
        rescaling); the NTK stays None when it is not requested."""
        return replace(
            self, nngp=f(self.nngp), ntk=None if self.ntk is None else f(self.ntk), **changes
        )


class Layer:
    """Base class of every layer description (see the module docstring for the protocol)."""

    uses_variances = False
    needs_gaussian_input = False

    # -- description --------------------------------------------------------------------

    def output_shape(self, in_shape: tuple, width: int | None) -> tuple:
        return in_shape

    def input_layout(self, out_layout: str) -> str:
        return out_layout

    def output_gaussian(self, gaussian: bool) -> bool:
        return gaussian

    # -- the two views --------------------------------------------------------------------

    def kernel_map(self, k: KernelState) -> KernelState:
        raise NotImplementedError(f"{type(self).__name__} has no kernel map")

    def module(self, in_shape: tuple, width: int, generator, dtype) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} has no finite module")

    # -- helpers ---------------------------------------------------------------------------

    def spec(self):
        """A YAML-able description: ``{name: {arguments}}`` (see :func:`from_spec`)."""
        args = {}
        for f in dataclass_fields(self) if hasattr(self, "__dataclass_fields__") else ():
            v = getattr(self, f.name)
            if f.default is not v and v != f.default:
                args[f.name] = list(v) if isinstance(v, tuple) else v
        return {_SPEC_NAMES.get(type(self), type(self).__name__): args}


def _fail(layer, message: str):
    raise ArchitectureError(f"{layer!r}: {message}")


def _check_spatial(layer, in_shape):
    if len(in_shape) < 2:
        _fail(
            layer,
            f"a spatial layer needs images (N, C, H, W) or sequences (N, C, L); its input "
            f"here is a vector of {in_shape[0] if in_shape[0] else 'infinitely many'} "
            "features (after Dense, Flatten or GlobalAvgPool, or vector data)",
        )
    if len(in_shape) > 3:
        _fail(layer, f"only 1-D and 2-D inputs are supported, got feature shape {in_shape}")


def _tuple(value, d: int, name: str, layer) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * d
    value = tuple(value)
    if len(value) != d or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        _fail(layer, f"{name} must be an int or a tuple of {d} ints for {d}-D inputs, got {value}")
    if any(v < 1 for v in value):
        _fail(layer, f"{name} must be positive, got {value}")
    return value


def _window_geometry(layer, in_shape, *, stride_defaults_to_window: bool):
    """(window, stride, pads, output spatial shape) of a windowed layer (Conv, AvgPool) with
    ``kernel_size``, ``stride`` and ``padding`` on an input of feature shape ``in_shape``.
    With ``stride_defaults_to_window``, ``stride=None`` means the window (torch's pooling)."""
    _check_spatial(layer, in_shape)
    spatial = tuple(in_shape[1:])
    d = len(spatial)
    window = _tuple(layer.kernel_size, d, "kernel_size", layer)
    if stride_defaults_to_window and layer.stride is None:
        stride = window
    else:
        stride = _tuple(layer.stride, d, "stride", layer)
    if layer.padding == "valid":
        for n, w in zip(spatial, window, strict=True):
            if w > n:
                _fail(
                    layer,
                    f"the window {window} is larger than its 'valid' (unpadded) input of "
                    f"spatial shape {spatial}",
                )
    pads = tuple(
        cov.axis_pads(n, w, s, layer.padding)
        for n, w, s in zip(spatial, window, stride, strict=True)
    )
    out = tuple(
        cov.output_size(n, w, s, layer.padding)
        for n, w, s in zip(spatial, window, stride, strict=True)
    )
    return window, stride, pads, out


def _check_padding(padding, what: str) -> str:
    p = str(padding).lower()
    if p not in cov.PADDINGS:
        raise ValueError(f"{what}: padding must be one of {cov.PADDINGS}, got {padding!r}")
    return p


def _check_std(value, name: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    return check_real(value, name, minimum=0.0)


def _check_out(value, name: str):
    return None if value is None else check_int(value, name, minimum=1)


def _check_param(parameterization):
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
        )
    return parameterization


def _fan_in_channels(layer, in_shape) -> int:
    c = in_shape[0]
    if c is None:
        _fail(
            layer,
            "parameterization='standard' needs the finite width of its input (its NTK grows "
            "with the fan-in): pass width=n",
        )
    return c


# --------------------------------------------------------------------------------------------
# Weight layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense(Layer):
    """A fully-connected layer on vectors: w_std / sqrt(fan_in) W x + b_std b (NTK
    parameterization, W, b ~ N(0, 1)) or W x + b with W ~ N(0, w_std^2 / fan_in), b ~ N(0,
    b_std^2) ("standard"). ``out_features=None``: the network's width. ``b_std=None``: no bias.
    Kernel: K' = w^2 K + b^2, Theta' = w^2 Theta + K' (ntk) or + fan_in K + 1 (standard).
    """

    out_features: int | None = None
    w_std: float = 1.0
    b_std: float | None = 0.0
    parameterization: str = "ntk"

    def __post_init__(self):
        object.__setattr__(self, "out_features", _check_out(self.out_features, "out_features"))
        object.__setattr__(self, "w_std", _check_std(self.w_std, "w_std"))
        object.__setattr__(self, "b_std", _check_std(self.b_std, "b_std", allow_none=True))
        _check_param(self.parameterization)

    def output_shape(self, in_shape, width):
        if len(in_shape) != 1:
            _fail(
                self,
                f"Dense needs vector inputs; its input here has feature shape "
                f"{_show(in_shape)}: put Flatten() or GlobalAvgPool() before it (or use "
                "Conv(kernel_size=1) for a per-position layer)",
            )
        if self.parameterization == "standard":
            _fan_in_channels(self, in_shape)
        return (self.out_features if self.out_features is not None else width,)

    def output_gaussian(self, gaussian):
        return True

    def kernel_map(self, k):
        w2 = self.w_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        nngp = k.nngp * w2 + b2
        ntk = None
        if k.need_ntk:
            if self.parameterization == "ntk":
                ntk = nngp.clone() if k.ntk is None else torch.add(nngp, k.ntk, alpha=w2)
            else:
                ntk = k.nngp * float(k.shape[0]) + (0.0 if self.b_std is None else 1.0)
                if k.ntk is not None:
                    ntk.add_(k.ntk, alpha=w2)
        return k.replace(nngp=nngp, ntk=ntk)

    def module(self, in_shape, width, generator, dtype):
        return modules.Dense(
            in_shape[0],
            self.output_shape(in_shape, width)[0],
            w_std=self.w_std,
            b_std=0.0 if self.b_std is None else self.b_std,
            bias=self.b_std is not None,
            parameterization=self.parameterization,
            generator=generator,
            dtype=dtype,
        )


@dataclass(frozen=True)
class Conv(Layer):
    """A 1-D or 2-D convolution (from the input's rank), channels-first, neural-tangents'
    ``stax.Conv`` convention: w_std / sqrt(C k) W * x + b_std b, k the filter size.

    ``out_channels=None``: the network's width. ``kernel_size``/``stride``: an int or a tuple,
    as in torch. ``padding``: "same" (zeros, XLA's SAME split), "valid" or "circular".
    ``b_std=None``: no bias. Kernel: K'[p, p'] = w^2 mean_t K[s p + t, s p' + t] + b^2.
    """

    out_channels: int | None = None
    kernel_size: int | tuple = None
    stride: int | tuple = 1
    padding: str = "same"
    w_std: float = 1.0
    b_std: float | None = 0.0
    parameterization: str = "ntk"

    def __post_init__(self):
        if self.kernel_size is None:
            raise ValueError("Conv: kernel_size is required (an int or a tuple)")
        object.__setattr__(self, "out_channels", _check_out(self.out_channels, "out_channels"))
        object.__setattr__(self, "padding", _check_padding(self.padding, "Conv"))
        object.__setattr__(self, "w_std", _check_std(self.w_std, "w_std"))
        object.__setattr__(self, "b_std", _check_std(self.b_std, "b_std", allow_none=True))
        _check_param(self.parameterization)
        for name in ("kernel_size", "stride"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))

    def geometry(self, in_shape):
        """(window, stride, pads, output spatial shape) on an input of feature shape in_shape."""
        return _window_geometry(self, in_shape, stride_defaults_to_window=False)

    def output_shape(self, in_shape, width):
        _, _, _, out = self.geometry(in_shape)
        if self.parameterization == "standard":
            _fan_in_channels(self, in_shape)
        return (self.out_channels if self.out_channels is not None else width, *out)

    def output_gaussian(self, gaussian):
        return True

    def kernel_map(self, k):
        window, stride, _, _ = self.geometry(k.shape)
        w2 = self.w_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        mapped = cov.conv_map(k.nngp, k.layout, k.spatial, window, stride, self.padding)
        ntk = None
        if k.need_ntk and self.parameterization == "standard":
            fan_in = float(k.shape[0] * math.prod(window))
            ntk = mapped * fan_in + (0.0 if self.b_std is None else 1.0)
        nngp = mapped.mul_(w2).add_(b2)
        if k.need_ntk:
            if self.parameterization == "ntk":
                ntk = nngp.clone()
            if k.ntk is not None:
                t = cov.conv_map(k.ntk, k.layout, k.spatial, window, stride, self.padding)
                ntk.add_(t, alpha=w2)
        return k.replace(nngp=nngp, ntk=ntk)

    def module(self, in_shape, width, generator, dtype):
        window, stride, pads, _ = self.geometry(in_shape)
        return modules.Conv(
            in_shape[0],
            self.output_shape(in_shape, width)[0],
            window,
            stride=stride,
            pads=pads,
            padding_mode="circular" if self.padding == "circular" else "zeros",
            w_std=self.w_std,
            b_std=0.0 if self.b_std is None else self.b_std,
            bias=self.b_std is not None,
            parameterization=self.parameterization,
            generator=generator,
            dtype=dtype,
        )


# --------------------------------------------------------------------------------------------
# Parameter-free linear layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvgPool(Layer):
    """Average pooling (1-D or 2-D) over ``kernel_size`` windows; ``stride=None`` means
    ``kernel_size`` (torch's default; neural-tangents' ``AvgPool`` defaults to stride 1).
    ``padding``: "valid" (default), "same" (zeros counted in the average, as neural-tangents'
    ``normalize_edges=False``) or "circular". Needs the full position-pair covariance."""

    kernel_size: int | tuple = None
    stride: int | tuple | None = None
    padding: str = "valid"

    def __post_init__(self):
        if self.kernel_size is None:
            raise ValueError("AvgPool: kernel_size is required (an int or a tuple)")
        object.__setattr__(self, "padding", _check_padding(self.padding, "AvgPool"))
        for name in ("kernel_size", "stride"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))

    def geometry(self, in_shape):
        """(window, stride, pads, output spatial shape); ``stride=None`` means the window."""
        return _window_geometry(self, in_shape, stride_defaults_to_window=True)

    def output_shape(self, in_shape, width):
        return (in_shape[0], *self.geometry(in_shape)[3])

    def input_layout(self, out_layout):
        return "full"

    def kernel_map(self, k):
        window, stride, _, _ = self.geometry(k.shape)

        def pool(t):
            return cov.pool_map(t, k.spatial, window, stride, self.padding)

        return k.both(pool)

    def module(self, in_shape, width, generator, dtype):
        window, stride, pads, _ = self.geometry(in_shape)
        mode = "circular" if self.padding == "circular" else "zeros"
        return modules.AvgPool(window, stride, pads, mode)


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """The mean over all positions, (C, *S) -> (C,): K' = mean_{p, p'} K[p, p']."""

    def output_shape(self, in_shape, width):
        _check_spatial(self, in_shape)
        return (in_shape[0],)

    def input_layout(self, out_layout):
        return "full"

    def kernel_map(self, k):
        d = len(k.spatial)
        return k.both(lambda t: cov.global_mean(t, k.layout, d))

    def module(self, in_shape, width, generator, dtype):
        return modules.GlobalAvgPool()


@dataclass(frozen=True)
class Flatten(Layer):
    """(C, *S) -> (C prod(S),), as ``torch.nn.Flatten``. A Dense layer on it sees
    K' = mean_p K[p, p] (its fan-in is C prod(S)), so only the position-diagonal is needed;
    the flattened features are not identically distributed, so only a Dense may follow."""

    def output_shape(self, in_shape, width):
        _check_spatial(self, in_shape)
        c = in_shape[0]
        return (None if c is None else c * math.prod(in_shape[1:]),)

    def input_layout(self, out_layout):
        return "diag"

    def output_gaussian(self, gaussian):
        return False

    def kernel_map(self, k):
        d = len(k.spatial)
        return k.both(lambda t: cov.diagonal_mean(t, k.layout, d))

    def module(self, in_shape, width, generator, dtype):
        return nn.Flatten()


@dataclass(frozen=True)
class LayerNorm(Layer):
    """(x - mean_c x) / sqrt(var_c x + eps) over channels, per position (neural-tangents'
    ``LayerNorm``; no learned scale). Kernel: K'[p, p'] = K[p, p'] / sqrt((K(x,x)[p,p] + eps)
    (K(x',x')[p',p'] + eps)), Theta alike; needs a centred Gaussian input."""

    eps: float = 1e-12

    def __post_init__(self):
        object.__setattr__(self, "eps", check_real(self.eps, "eps", minimum=0.0))

    uses_variances = True
    needs_gaussian_input = True

    def kernel_map(self, k):
        scale = torch.rsqrt((k.var1 + self.eps) * (k.var2 + self.eps))
        return k.both(lambda t: t * scale)

    def module(self, in_shape, width, generator, dtype):
        return modules.LayerNorm(self.eps)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

_NOT_GAUSSIAN = (
    "its closed form (a Gaussian expectation) needs a centred Gaussian input, the output of a "
    "Dense or Conv layer (possibly pooled, normalised or summed with another), but here its "
    "input is {what}, which is not Gaussian: put a Dense or Conv layer before it"
)

# Quadrature duals hold (entries x nodes) temporaries: apply them in chunks of this many entries.
_QUADRATURE_CHUNK = 2**14


@dataclass(frozen=True)
class Activation(Layer):
    """An elementwise activation: a name (``"relu"``, ``"tanh"``, ``"leaky_relu(0.1)"``, ...), a
    :class:`widenet.activations.Activation`, or any elementwise torch callable (its duals by
    quadrature), exactly as ``wn.mlp`` takes them. Kernel: K' = T(K), Theta' = Theta Tdot(K)."""

    fn: object = field(default="relu", compare=False)
    # Layers compare by their resolved activation ("leaky_relu(0.1)" == leaky_relu(0.1)).
    activation: _act.Activation = field(init=False, repr=False)

    uses_variances = True
    needs_gaussian_input = True

    def __post_init__(self):
        object.__setattr__(self, "activation", _act.get(self.fn))

    def __repr__(self):
        return f"Activation({self.activation.name!r})"

    def spec(self):
        name = self.activation.name
        return name if isinstance(self.fn, str) or not callable(self.fn) else repr(self)

    def output_gaussian(self, gaussian):
        return False

    def kernel_map(self, k):
        act = self.activation
        if act.closed_form:
            dual = act.dual_inplace if (k.owned and act.dual_inplace is not None) else act.dual
            nngp, dot = dual(k.var1, k.nngp, k.var2, k.need_ntk and k.ntk is not None)
        else:
            nngp, dot = _chunked_dual(act, k)
        ntk = None
        if k.ntk is not None:
            ntk = k.ntk.mul_(dot) if k.owned else k.ntk * dot
        return k.replace(nngp=nngp, ntk=ntk, var1=None, var2=None)

    def module(self, in_shape, width, generator, dtype):
        return modules.Elementwise(self.activation.fn, self.activation.name)


def _chunked_dual(act: _act.Activation, k: KernelState):
    need_dot = k.need_ntk and k.ntk is not None
    c = k.nngp
    q1 = k.var1.expand_as(c).reshape(-1)
    q2 = k.var2.expand_as(c).reshape(-1)
    flat = c.reshape(-1)
    nngp = torch.empty_like(flat)
    dot = torch.empty_like(flat) if need_dot else None
    for i in range(0, flat.numel(), _QUADRATURE_CHUNK):
        s = slice(i, i + _QUADRATURE_CHUNK)
        a, b = act.dual(q1[s], flat[s], q2[s], need_dot)
        nngp[s] = a
        if need_dot:
            dot[s] = b
    return nngp.reshape(c.shape), None if dot is None else dot.reshape(c.shape)


def Relu() -> Activation:  # noqa: N802 - a layer constructor, as neural-tangents' stax.Relu
    """phi(x) = max(x, 0) (arc-cosine kernel, Cho & Saul 2009)."""
    return Activation("relu")


def LeakyRelu(slope: float = 0.01) -> Activation:  # noqa: N802
    """phi(x) = max(x, slope x) (as torch's leaky_relu)."""
    return Activation(_act.leaky_relu(slope))


def Erf() -> Activation:  # noqa: N802
    """phi(x) = erf(x) (Williams 1997)."""
    return Activation("erf")


def Gelu() -> Activation:  # noqa: N802
    """phi(x) = x Phi(x), exact GELU."""
    return Activation("gelu")


# --------------------------------------------------------------------------------------------
# Residual block
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class Residual(Layer):
    """x + f(x), f = serial(*layers). Kernel: K + K_f, Theta + Theta_f (f must contain a Dense or
    Conv layer, so that f(x) is independent of x, and both summands must be Gaussian)."""

    layers: tuple

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual: layer {i} must be a widenet layer, got {layer!r}")
        object.__setattr__(self, "layers", tuple(layers))

    def __repr__(self):
        return f"Residual({', '.join(repr(layer) for layer in self.layers)})"

    def spec(self):
        return {"residual": [layer.spec() for layer in self.layers]}

    def module(self, in_shape, width, generator, dtype):
        return modules.Residual(build_network(self.layers, in_shape, width, generator, dtype)[0])


def _show(shape) -> str:
    return "(" + ", ".join("inf" if s is None else str(s) for s in shape) + ")"


# --------------------------------------------------------------------------------------------
# The plan: shapes, Gaussianity and layouts, checked before any arithmetic
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    layer: Layer
    in_shape: tuple
    out_shape: tuple
    branch: list | None = None
    in_layout: str = "vector"
    out_layout: str = "vector"
    uid: int = 0


def _plan(layers, in_shape, width, gaussian, source, counter):
    """Forward pass over shapes and Gaussianity; returns (steps, out_shape, gaussian,
    has_weight_layer). ``source`` describes the current input for error messages."""
    steps = []
    has_weights = False
    for layer in layers:
        if isinstance(layer, Residual):
            branch, out, g_branch, w_branch = _plan(
                layer.layers, in_shape, width, gaussian, source, counter
            )
            if not w_branch:
                _fail(
                    layer,
                    "the branch has no Dense or Conv layer, so f(x) is correlated with x and "
                    "the kernel of x + f(x) is not the sum of the two kernels",
                )
            if not (gaussian and g_branch):
                what = f"the skip input x ({source})" if not gaussian else "the branch output"
                _fail(
                    layer,
                    "both summands must be centred Gaussians (outputs of Dense or Conv layers, "
                    f"before any activation); {what} is not",
                )
            if tuple(out[1:]) != tuple(in_shape[1:]) or (
                out[0] is not None and in_shape[0] is not None and out[0] != in_shape[0]
            ):
                _fail(
                    layer,
                    f"the branch maps feature shape {_show(in_shape)} to {_show(out)}; x + f(x) "
                    "needs them equal",
                )
            has_weights = True
            counter[0] += 1
            steps.append(Step(layer, tuple(in_shape), tuple(in_shape), branch, uid=counter[0]))
            source = f"the output of {layer!r}"
            continue
        if not isinstance(layer, Layer):
            raise TypeError(f"expected a widenet layer (wn.Dense, wn.Conv, ...), got {layer!r}")
        if layer.needs_gaussian_input and not gaussian:
            _fail(layer, _NOT_GAUSSIAN.format(what=source))
        out = tuple(layer.output_shape(tuple(in_shape), width))
        g = bool(layer.output_gaussian(gaussian))
        has_weights = has_weights or isinstance(layer, (Dense, Conv))
        counter[0] += 1
        steps.append(Step(layer, tuple(in_shape), out, uid=counter[0]))
        in_shape, gaussian, source = out, g, f"the output of {layer!r}"
    return steps, tuple(in_shape), gaussian, has_weights


def _assign_layouts(steps: list[Step], out_layout: str) -> str:
    for step in reversed(steps):
        step.out_layout = out_layout if len(step.out_shape) > 1 else "vector"
        if step.branch is not None:
            branch_in = _assign_layouts(step.branch, step.out_layout)
            in_layout = max(step.out_layout, branch_in, key=_ORDER.get)
        elif len(step.in_shape) == 1:
            in_layout = "vector"
        else:
            in_layout = step.layer.input_layout(step.out_layout)
            if in_layout not in ("diag", "full"):
                raise ArchitectureError(
                    f"{step.layer!r}: input_layout must be 'diag' or 'full', got {in_layout!r}"
                )
        step.in_layout = in_layout
        out_layout = in_layout
    return out_layout


@dataclass
class Plan:
    steps: list[Step]
    in_shape: tuple
    out_shape: tuple
    in_layout: str
    largest: int  # entries per input pair of the largest covariance held

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)


def _layout_size(shape, layout) -> int:
    p = math.prod(shape[1:]) if len(shape) > 1 else 1
    return {"vector": 1, "diag": p, "full": p * p}[layout]


def _largest(steps) -> int:
    m = 1
    for s in steps:
        m = max(m, _layout_size(s.in_shape, s.in_layout), _layout_size(s.out_shape, s.out_layout))
        if s.branch:
            m = max(m, _largest(s.branch))
    return m


def compile_plan(layers, in_shape: tuple, width: int | None) -> Plan:
    """Check ``layers`` on inputs of feature shape ``in_shape`` (channels first) and choose the
    covariance layout of every layer; raises :class:`ArchitectureError` naming the layer."""
    if not layers:
        raise ArchitectureError("an architecture needs at least one layer")
    steps, out, _, _ = _plan(layers, tuple(in_shape), width, False, "the network input", [0])
    if len(out) != 1:
        raise ArchitectureError(
            f"the network's output has feature shape {_show(out)}; the kernel is that of a "
            "vector output: end with Flatten() or GlobalAvgPool() and a Dense readout"
        )
    in_layout = _assign_layouts(steps, "vector")
    return Plan(steps, tuple(in_shape), out, in_layout, _largest(steps))


# --------------------------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------------------------


def _to_layout(k: KernelState, layout: str, batch_ndim: int) -> KernelState:
    if k.layout == layout:
        return k
    if k.layout == "full" and layout == "diag":
        d = len(k.spatial)
        return k.both(lambda t: cov.position_diagonal(t, d), layout="diag", owned=True)
    raise ArchitectureError(f"internal: cannot convert layout {k.layout!r} to {layout!r}")


class _Variances:
    """Supplies (var1, var2) to the layers that use variances.

    ``mode="self"`` (batch (n,), each input with itself): reads them off the covariance and
    records them per layer. ``mode="pairs"`` (batch (n1, n2)): reads them from the per-input
    records ``store1``/``store2`` at ``rows``/``cols``, and *pins* the pairs ``pins = (i, j)``
    (an input with itself or with an exact duplicate): their position-diagonal covariance is
    set to those variances, so that rho = 1 exactly there (arccos has infinite slope at 1, so
    a rounding-level difference would grow to ~sqrt(eps)) and a duplicate input's row is the
    original's bit for bit.
    """

    def __init__(self, mode: str, store1=None, store2=None, rows=None, cols=None, pins=None):
        self.mode = mode
        self.store1, self.store2 = store1, store2  # uid -> (n, *S) position-diagonal variances
        self.rows, self.cols = rows, cols
        self.pins = pins
        self.record: dict[int, torch.Tensor] = {}

    def __call__(self, step: Step, k: KernelState) -> KernelState:
        """``k`` with var1, var2 set (and its pinned pairs' variances written in)."""
        d = len(k.spatial) if k.layout != "vector" else 0
        s = tuple(k.spatial) if k.layout != "vector" else ()
        if self.mode == "self":
            # A copy: the layer may overwrite k.nngp in place.
            v = (k.nngp if k.layout != "full" else _pos_diag_view(k.nngp, d)).clone()
            self.record[step.uid] = v
            if k.layout == "full":
                n = v.shape[0]
                return k.replace(var1=v.reshape(n, *s, *(1,) * d), var2=v.reshape(n, *(1,) * d, *s))
            return k.replace(var1=v, var2=v)
        v1, v2 = self.store1[step.uid][self.rows], self.store2[step.uid][self.cols]
        if self.pins is not None:
            i, j = self.pins
            nngp = k.nngp if k.owned else k.nngp.clone()
            if k.layout == "full":
                p = math.prod(s)
                flat = nngp.view(*nngp.shape[:2], p, p)
                ar = torch.arange(p, device=nngp.device)
                flat[i[:, None], j[:, None], ar, ar] = v1.reshape(-1, p)[i]
            else:
                nngp[i, j] = v1[i]
            k = k.replace(nngp=nngp)  # (owned unchanged: it covers the NTK too)
        n1, n2 = v1.shape[0], v2.shape[0]
        if k.layout == "full":
            return k.replace(
                var1=v1.reshape(n1, 1, *s, *(1,) * d), var2=v2.reshape(1, n2, *(1,) * d, *s)
            )
        return k.replace(var1=v1.reshape(n1, 1, *s), var2=v2.reshape(1, n2, *s))


def _pos_diag_view(k: torch.Tensor, d: int) -> torch.Tensor:
    spatial = k.shape[k.ndim - d :]
    p = math.prod(spatial)
    flat = k.reshape(*k.shape[: k.ndim - 2 * d], p, p)
    return torch.diagonal(flat, dim1=-2, dim2=-1).reshape(*flat.shape[:-2], *spatial)


def run_steps(steps, k: KernelState, variances: _Variances, batch_ndim: int) -> KernelState:
    """Apply the kernel maps of ``steps`` to ``k`` (see :class:`KernelState`)."""
    for step in steps:
        k = _to_layout(k, step.in_layout, batch_ndim)
        k.shape = step.in_shape
        if step.branch is not None:
            f = run_steps(step.branch, k.replace(owned=False), variances, batch_ndim)
            f = _to_layout(f, step.out_layout, batch_ndim)
            x = _to_layout(k, step.out_layout, batch_ndim)
            nngp = x.nngp + f.nngp
            ntk = None
            if x.ntk is not None or f.ntk is not None:
                ntk = f.ntk if x.ntk is None else (x.ntk if f.ntk is None else x.ntk + f.ntk)
            k = KernelState(nngp, ntk, step.out_shape, step.out_layout, True, k.need_ntk)
            continue
        if step.layer.uses_variances:
            k = variances(step, k)
        out = step.layer.kernel_map(k)
        # A layer keeps its input's layout (or gives a vector); the next step may take the
        # position-diagonal of a "full" output.
        k = KernelState(
            out.nngp,
            out.ntk,
            step.out_shape,
            "vector" if len(step.out_shape) == 1 else step.in_layout,
            True,
            k.need_ntk,
            owned=True,
        )
    return k


def input_state(x1, x2, layout: str, need_ntk: bool, *, paired: bool = False) -> KernelState:
    """The raw-input covariance x . x' / C as a :class:`KernelState` (no NTK yet)."""
    k0 = cov.input_covariance(x1, x2, layout, paired=paired)
    return KernelState(k0, None, tuple(x1.shape[1:]), layout, False, need_ntk)


# --------------------------------------------------------------------------------------------
# The tiled engine
# --------------------------------------------------------------------------------------------


def block_side(plan: Plan, dtype: torch.dtype, budget: int | None = None, device="cpu") -> int:
    """Rows (= columns) of one workspace block: WORKSPACE_TENSORS covariances of the largest
    layout of ``plan`` for side^2 pairs fit in ``budget`` bytes (default: the device's)."""
    budget = workspace_bytes(device) if budget is None else budget
    per_pair = plan.largest * torch.finfo(dtype).bits // 8 * WORKSPACE_TENSORS
    return max(1, math.isqrt(max(budget // per_pair, 1)))


def self_kernels(plan: Plan, x: torch.Tensor, need_ntk: bool, budget: int | None = None):
    """Run ``plan`` on every input against itself, in chunks: returns (variances, Kernel) with
    ``variances[uid]`` the position-diagonal variances (n, *S) where a layer needs them and the
    Kernel of (n,) diagonals K(x, x), Theta(x, x) of the output."""
    budget = workspace_bytes(x.device) if budget is None else budget
    per_point = plan.largest * torch.finfo(x.dtype).bits // 8 * WORKSPACE_TENSORS
    chunk = max(1, budget // per_point)
    starts = list(range(0, x.shape[0], chunk))
    results: dict[int, tuple] = {}

    def work(i):
        with torch.no_grad():
            v = _Variances("self")
            k0 = input_state(x[i : i + chunk], None, plan.in_layout, need_ntk, paired=True)
            k = run_steps(plan.steps, k0, v, 1)
        results[i] = (v.record, k.nngp, k.ntk)

    run_blocks(work, starts, x.device)
    parts: dict[int, list] = {}
    nngp, ntk = [], []
    for i in starts:
        record, a, b = results[i]
        for uid, t in record.items():
            parts.setdefault(uid, []).append(t)
        nngp.append(a)
        ntk.append(b)
    variances = {uid: torch.cat(ts) for uid, ts in parts.items()}
    out = Kernel(torch.cat(nngp), torch.cat(ntk) if need_ntk else None)
    return variances, out


@dataclass(frozen=True)
class StaxTiler(Tiler):
    """Computes any one tile ``kernel[rows, cols]`` of an architecture's kernel on its own.

    The per-input variances every activation and LayerNorm needs are computed once, at
    construction (O(n) work); a tile is computed in workspace blocks of ``block`` x ``block``
    pairs so that memory stays O(block^2 x largest covariance) whatever the tile size. Same
    interface as :class:`widenet.kernels.FCTiler`: ``x1``, ``x2`` (None: symmetric), ``shape``,
    ``symmetric``, ``__call__(rows, cols) -> Kernel``.
    """

    plan: Plan
    x1: torch.Tensor
    x2: torch.Tensor | None
    var1: dict
    var2: dict
    need_ntk: bool
    block: int
    # Duplicate inputs: equal rows of x1 and x2 share an id (None when no row repeats).
    g1: torch.Tensor | None = None
    g2: torch.Tensor | None = None

    def _block(self, rows: slice, cols: slice, self_pairs: bool) -> KernelState:
        xb = self.x1 if self.x2 is None else self.x2
        device = self.x1.device
        if self.g1 is not None:
            same = self.g1[rows][:, None] == self.g2[cols][None, :]
            pins = same.nonzero(as_tuple=True) if bool(same.any()) else None
        elif self_pairs:
            ar = torch.arange(rows.stop - rows.start, device=device)
            pins = (ar, ar)
        else:
            pins = None
        v = _Variances("pairs", self.var1, self.var2, rows, cols, pins)
        x2 = None if self_pairs else xb[cols]
        k0 = input_state(self.x1[rows], x2, self.plan.in_layout, self.need_ntk)
        return run_steps(self.plan.steps, k0, v, 2)

    def __call__(self, rows: slice, cols: slice) -> Kernel:
        """The block kernel[rows, cols]; for a symmetric kernel, diagonal blocks need rows ==
        cols (they are symmetrised exactly)."""
        n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
        diag = self.symmetric and rows == cols
        dtype, device = self.x1.dtype, self.x1.device
        nngp = torch.empty((n_r, n_c), dtype=dtype, device=device)
        ntk = torch.empty((n_r, n_c), dtype=dtype, device=device) if self.need_ntk else None
        grid = list(tile_grid(n_r, n_c, self.block, symmetric=diag))

        def work(rc):
            r, c = rc
            rr = slice(rows.start + r.start, rows.start + r.stop)
            cc = slice(cols.start + c.start, cols.start + c.stop)
            with torch.no_grad():
                k = self._block(rr, cc, diag and r == c)
            for out, b in ((nngp, k.nngp), (ntk, k.ntk)):
                if out is None:
                    continue
                out[r, c] = b
                if diag and r != c:
                    out[c, r] = b.T

        run_blocks(work, grid, device)
        with torch.no_grad():
            if diag:
                nngp = 0.5 * (nngp + nngp.T)
                ntk = None if ntk is None else 0.5 * (ntk + ntk.T)
        return Kernel(nngp, ntk)


def stax_tiler(plan: Plan, x1, x2, *, need_ntk: bool, budget: int | None = None) -> StaxTiler:
    """The :class:`StaxTiler` of ``plan`` on validated inputs (``x2=None``: symmetric)."""
    var1, _ = self_kernels(plan, x1, False, budget)
    var2 = var1 if x2 is None else self_kernels(plan, x2, False, budget)[0]
    block = block_side(plan, x1.dtype, budget, x1.device)
    g1, g2 = duplicate_ids(
        x1.reshape(x1.shape[0], -1), None if x2 is None else x2.reshape(x2.shape[0], -1)
    )
    if g1 is not None and x2 is None:
        g2 = g1
    return StaxTiler(plan, x1, x2, var1, var2, need_ntk, block, g1, g2)


def stax_tiles(tiler: StaxTiler, tile: int) -> Iterator[KernelTile]:
    for rows, cols in tile_grid(*tiler.shape, tile, symmetric=tiler.symmetric):
        yield KernelTile(rows, cols, tiler(rows, cols))


# --------------------------------------------------------------------------------------------
# The finite network
# --------------------------------------------------------------------------------------------


def build_network(
    layers, in_shape: tuple, width: int, generator, dtype
) -> tuple[nn.Sequential, tuple]:
    """nn.Sequential of the layers' modules on inputs of feature shape ``in_shape``; returns
    (network, output feature shape). Parameters are drawn from ``generator`` in layer order."""
    mods = []
    shape = tuple(in_shape)
    for layer in layers:
        if isinstance(layer, Residual):
            branch, out = build_network(layer.layers, shape, width, generator, dtype)
            if out != shape:
                _fail(
                    layer,
                    f"the branch maps feature shape {_show(shape)} to {_show(out)}; x + f(x) "
                    f"needs them equal (at width {width})",
                )
            mods.append(modules.Residual(branch))
            continue
        out = tuple(layer.output_shape(shape, width))
        mods.append(layer.module(shape, width, generator, dtype))
        shape = out
    return nn.Sequential(*mods), shape


# --------------------------------------------------------------------------------------------
# Names for specs (YAML)
# --------------------------------------------------------------------------------------------

_SPEC_NAMES = {
    Dense: "dense",
    Conv: "conv",
    AvgPool: "avg_pool",
    GlobalAvgPool: "global_avg_pool",
    Flatten: "flatten",
    LayerNorm: "layer_norm",
}

LAYER_NAMES: dict[str, Callable] = {
    "dense": Dense,
    "conv": Conv,
    "avg_pool": AvgPool,
    "global_avg_pool": GlobalAvgPool,
    "flatten": Flatten,
    "layer_norm": LayerNorm,
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "erf": Erf,
    "gelu": Gelu,
    "activation": Activation,
}
