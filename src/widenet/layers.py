"""Finite-width layers that share their initialisation convention with the kernel engine.

neural-tangents' stax convention (Jacot et al. 2018; Lee et al. 2019, eq. 1) for a dense layer in
the NTK parameterization is

    y = (w_std / sqrt(fan_in)) W x + b_std b,    W_ij, b_i ~ N(0, 1),

so the scale lives in the forward pass and gradient descent sees O(1) parameters. The standard
parameterization moves the scale into the initialisation, W ~ N(0, w_std^2 / fan_in),
b ~ N(0, b_std^2), and computes y = W x + b. ``Dense`` covers both with two scalars,
``weight_scale`` and ``bias_scale``, that the empirical-NTK fast path reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
    ) -> None:
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
            )
        super().__init__(in_features, out_features, bias=True, dtype=dtype, device=device)
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
            b = torch.randn(self.bias.shape, generator=generator, dtype=self.bias.dtype)
            self.weight.copy_(w * w_init)
            self.bias.copy_(b * b_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight_scale == 1.0 else self.weight * self.weight_scale
        bias = self.bias if self.bias_scale == 1.0 else self.bias * self.bias_scale
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
