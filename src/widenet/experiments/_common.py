"""Pieces shared by the lab's experiments: targets, width sweeps, plain gradient descent."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pydantic
import torch

from widenet.data import parity_targets  # noqa: F401 (the experiments import it from here)


def _distinct_positive(widths: list[int]) -> list[int]:
    if any(w < 1 for w in widths):
        raise ValueError("widths must be positive")
    if len(set(widths)) < 2:
        raise ValueError("need at least two distinct widths to fit a slope")
    return sorted(set(widths))


# A width sweep: at least two distinct positive widths, sorted (a config field type).
Widths = Annotated[list[int], pydantic.AfterValidator(_distinct_positive)]


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


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over all entries (the Frobenius norm for matrices)."""
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def loglog_panel(ax, widths, values, fitted, ylabel, title, references, *, label="measured"):
    """A width sweep on log–log axes: ``values`` (widths × seeds) against width, per-seed points
    (when there are several seeds), their mean with its fitted ``slope`` in the legend, and
    reference slopes ``references`` = [(slope, label), …] through the data's geometric mean."""
    w = np.asarray(widths, dtype=float)
    mean = values.mean(1)
    if values.shape[1] > 1:
        for j in range(values.shape[1]):
            ax.plot(w, values[:, j], "o", color="tab:blue", alpha=0.35, ms=4)
    ax.plot(w, mean, "o-", color="tab:blue", lw=2, label=f"{label} (slope {fitted:.2f})")
    for (ref, ref_label), style in zip(references, ("--", ":"), strict=False):
        anchor = np.exp(np.mean(np.log(mean)) - ref * np.mean(np.log(w)))
        ax.plot(w, anchor * w**ref, style, color="0.35", label=ref_label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width n")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
