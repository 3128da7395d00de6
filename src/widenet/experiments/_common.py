"""Pieces shared by the lab's experiments: targets, width sweeps, plain gradient descent."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pydantic
import torch


def _distinct_positive(widths: list[int]) -> list[int]:
    if any(w < 1 for w in widths):
        raise ValueError("widths must be positive")
    if len(set(widths)) < 2:
        raise ValueError("need at least two distinct widths to fit a slope")
    return sorted(set(widths))


# A width sweep: at least two distinct positive widths, sorted (a config field type).
Widths = Annotated[list[int], pydantic.AfterValidator(_distinct_positive)]


def parity_targets(labels: torch.Tensor) -> torch.Tensor:
    """Integer labels -> +1 (even) / -1 (odd); real targets -> standardized. float64, (n,)."""
    if labels.dtype not in (torch.int64, torch.int32):
        y = labels.to(torch.float64)
        return (y - y.mean()) / y.std().clamp_min(1e-12)
    return 1.0 - 2.0 * (labels % 2).to(torch.float64)


def slope(widths, values) -> float:
    """Least-squares slope of log(values) against log(widths)."""
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def mse(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of every experiment: 0.5 * mean((model(x) - y)^2)."""
    return 0.5 * ((model(x) - y) ** 2).mean()


def gradient_descent(model, x, y, lr: float, steps: int, on_step=None) -> float:
    """Full-batch GD on :func:`mse`; returns the final training loss.

    Plain updates (importing torch.optim costs seconds of torch._dynamo import for nothing).
    ``on_step(step)`` is called before each step and once after the last (``step == steps``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(steps):
        if on_step is not None:
            on_step(step)
        grads = torch.autograd.grad(mse(model, x, y), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(g, alpha=lr)
    if on_step is not None:
        on_step(steps)
    with torch.no_grad():
        final = float(mse(model, x, y))
    if not np.isfinite(final):
        raise FloatingPointError(f"gradient descent diverged (lr={lr:.3g}); lower lr_scale")
    return final
