"""Finite-width layers that share their initialisation convention with the kernel engine.

neural-tangents' stax convention (Jacot et al. 2018; Lee et al. 2019, eq. 1) for a dense layer in
the NTK parameterization is

    y = (w_std / sqrt(fan_in)) W x + b_std b,    W_ij, b_i ~ N(0, 1),

so the scale lives in the forward pass and gradient descent sees O(1) parameters. The standard
parameterization moves the scale into the initialisation, W ~ N(0, w_std^2 / fan_in),
b ~ N(0, b_std^2), and computes y = W x + b. ``Dense`` covers both with two scalars,
``weight_scale`` and ``bias_scale``, that the empirical-NTK fast path reads; ``Conv`` is the same
for a 1-D or 2-D convolution, whose fan-in is in_channels x filter size (neural-tangents'
``stax.Conv``: w_std / sqrt(C k) W * x + b_std b).

These are the finite networks that :meth:`widenet.architectures.Architecture.network` builds
from the layer descriptions of :mod:`widenet.stax` (``wn.Dense``, ``wn.Conv``, ...); the
descriptions share their names, the modules live here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from widenet._checks import check_device

PARAMETERIZATIONS = ("ntk", "standard")


class Dense(nn.Linear):
    """``y = weight_scale * W x + bias_scale * b``: an ``nn.Linear`` whose scale is explicit.

    With ``parameterization="ntk"``, ``weight_scale = w_std / sqrt(in_features)``,
    ``bias_scale = b_std`` and W, b ~ N(0, 1). With ``"standard"``, both scales are 1 and
    W ~ N(0, w_std^2 / in_features), b ~ N(0, b_std^2).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        w_std: float = 1.0,
        b_std: float = 0.0,
        parameterization: str = "ntk",
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device=None,
        bias: bool = True,
    ) -> None:
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
            )
        device = None if device is None else check_device(device)
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.w_std = float(w_std)
        self.b_std = float(b_std)
        self.parameterization = parameterization
        if parameterization == "ntk":
            self.weight_scale = self.w_std / math.sqrt(in_features)
            self.bias_scale = self.b_std
            w_init, b_init = 1.0, 1.0
        else:
            self.weight_scale = 1.0
            self.bias_scale = 1.0
            w_init, b_init = self.w_std / math.sqrt(in_features), self.b_std
        with torch.no_grad():
            # Draw on the CPU from the seeded generator so that a seed gives the same network
            # on every device.
            w = torch.randn(self.weight.shape, generator=generator, dtype=self.weight.dtype)
            self.weight.copy_(w * w_init)
            if self.bias is not None:
                b = torch.randn(self.bias.shape, generator=generator, dtype=self.bias.dtype)
                self.bias.copy_(b * b_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight_scale == 1.0 else self.weight * self.weight_scale
        bias = self.bias
        if bias is not None and self.bias_scale != 1.0:
            bias = bias * self.bias_scale
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, w_std={self.w_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
        )


class Elementwise(nn.Module):
    """An elementwise activation ``fn`` as a module (so that it shows in ``print(net)``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
        )


def pad_spatial(x: torch.Tensor, pads: tuple[tuple[int, int], ...], mode: str) -> torch.Tensor:
    """Pad the spatial axes of a channels-first batch (N, C, *S): ``pads[i] = (before, after)``
    of spatial axis i, with zeros (``mode="zeros"``) or by wrapping around (``"circular"``)."""
    if all(p == (0, 0) for p in pads):
        return x
    if mode == "circular":
        for i, (lo, hi) in enumerate(pads):
            n = x.shape[2 + i]
            idx = torch.arange(-lo, n + hi, device=x.device) % n
            x = x.index_select(2 + i, idx)
        return x
    spec: list[int] = []
    for lo, hi in reversed(pads):
        spec.extend((lo, hi))
    return F.pad(x, spec)


class Conv(nn.Module):
    """``y = weight_scale * W * pad(x) + bias_scale * b``: a 1-D or 2-D convolution, scale explicit.

    ``weight`` has torch's shape (out_channels, in_channels, *kernel_size). ``pads`` holds the
    (before, after) padding of every spatial axis, applied with zeros (``padding_mode="zeros"``)
    or circularly before an unpadded ``F.conv1d``/``F.conv2d`` with ``stride``; this covers
    XLA's asymmetric "SAME" padding (even filters, strides), which torch's ``padding=`` cannot.
    With ``parameterization="ntk"``: ``weight_scale = w_std / sqrt(in_channels * filter size)``,
    ``bias_scale = b_std``, W, b ~ N(0, 1); with ``"standard"`` both scales are 1 and
    W ~ N(0, w_std^2 / fan_in), b ~ N(0, b_std^2). ``bias=False``: no bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        *,
        stride: tuple[int, ...],
        pads: tuple[tuple[int, int], ...],
        padding_mode: str = "zeros",
        w_std: float = 1.0,
        b_std: float = 0.0,
        bias: bool = True,
        parameterization: str = "ntk",
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_parameterization(parameterization)
        if len(kernel_size) not in (1, 2):
            raise ValueError(f"Conv is 1-D or 2-D, got kernel_size {kernel_size!r}")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        self.padding_mode = padding_mode
        self.w_std, self.b_std = float(w_std), float(b_std)
        self.parameterization = parameterization
        fan_in = self.in_channels * math.prod(self.kernel_size)
        dtype = dtype or torch.get_default_dtype()
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(self.out_channels, dtype=dtype)) if bias else None
        if parameterization == "ntk":
            self.weight_scale = self.w_std / math.sqrt(fan_in)
            self.bias_scale = self.b_std
            w_init, b_init = 1.0, 1.0
        else:
            self.weight_scale = self.bias_scale = 1.0
            w_init, b_init = self.w_std / math.sqrt(fan_in), self.b_std
        with torch.no_grad():  # drawn on the CPU from the seeded generator, as Dense
            self.weight.copy_(torch.randn(shape, generator=generator, dtype=dtype) * w_init)
            if self.bias is not None:
                b = torch.randn(self.out_channels, generator=generator, dtype=dtype)
                self.bias.copy_(b * b_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_spatial(x, self.pads, self.padding_mode)
        weight = self.weight if self.weight_scale == 1.0 else self.weight * self.weight_scale
        bias = self.bias
        if bias is not None and self.bias_scale != 1.0:
            bias = bias * self.bias_scale
        conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d
        return conv(x, weight, bias, stride=self.stride)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, pads={self.pads}, padding_mode={self.padding_mode!r}, "
            f"w_std={self.w_std}, b_std={self.b_std}, bias={self.bias is not None}, "
            f"parameterization={self.parameterization!r}"
        )


class AvgPool(nn.Module):
    """Average pooling over windows of ``kernel_size`` with ``stride`` after padding ``pads``
    (zeros or circular); padded positions count in the average (neural-tangents' ``AvgPool``
    with ``normalize_edges=False``)."""

    def __init__(self, kernel_size, stride, pads, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.pads, self.padding_mode = tuple(pads), padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_spatial(x, self.pads, self.padding_mode)
        pool = F.avg_pool1d if len(self.kernel_size) == 1 else F.avg_pool2d
        return pool(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, pads={self.pads}, "
            f"padding_mode={self.padding_mode!r}"
        )


class GlobalAvgPool(nn.Module):
    """The mean over every spatial position: (N, C, *S) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))


class LayerNorm(nn.Module):
    """(x - mean_c x) / sqrt(var_c x + eps) over the channel axis (dim 1), per position, with no
    learned affine map (neural-tangents' ``LayerNorm``, eps = 1e-12 by default)."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class Residual(nn.Module):
    """x + branch(x)."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)
