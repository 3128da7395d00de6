"""Input validation shared by every public function.

Errors name the argument and say what was expected, in the style of scikit-learn's
``check_array``: a user should be able to fix the call from the message alone.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def as_tensor(x, name: str, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Return ``x`` as a floating tensor, converting NumPy arrays and nested sequences.

    Integer and boolean inputs are promoted to ``dtype`` (default float32); other non-float
    dtypes (complex, float16 on CPU) are refused rather than silently cast.
    """
    if x is None:
        raise ValueError(f"{name} is required, got None")
    if isinstance(x, np.ndarray) or not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a tensor or array of numbers: {err}") from None
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(dtype or torch.float32)
    elif x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    if device is not None:
        x = x.to(check_device(device))
    return x


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists here: "cpu", "cuda", "cuda:N", "mps" or a
    ``torch.device``. A misspelt type (``"gpu"``) or an accelerator this machine lacks
    (``"cuda"`` without CUDA, ``"cuda:3"`` with two GPUs) is a ValueError naming the argument,
    instead of torch's RuntimeError at the first tensor moved there."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            hint = " (did you mean 'cuda'?)" if device.strip().lower() == "gpu" else ""
            raise ValueError(
                f"{name} must be 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got "
                f"{device!r}{hint}"
            ) from None
    elif isinstance(device, (int, np.integer)) and not isinstance(device, bool) and device >= 0:
        dev = torch.device("cuda", int(device))  # torch's convention: an index is a CUDA device
    else:
        raise ValueError(f"{name} must be a string or a torch.device, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={device!r} but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use 'cpu'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{name}={device!r} but this machine has {count} CUDA device(s)")
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f"{name}={device!r} but MPS is not available on this machine; use 'cpu'")
    return dev


def expected_in_features(model) -> int | None:
    """The input feature size of a torch model: ``in_features`` of its first module that has
    one (``nn.Linear`` and the like), or None when no module says."""
    for module in model.modules():
        size = getattr(module, "in_features", None)
        if isinstance(size, int):
            return size
    return None


def check_in_features(model, x: torch.Tensor, name: str = "x") -> None:
    """``x`` (n, d) must have the feature size the model's first layer expects."""
    size = expected_in_features(model)
    if size is not None and x.ndim == 2 and x.shape[1] != size:
        raise ValueError(
            f"{name} has {x.shape[1]} features per sample (shape {tuple(x.shape)}), but the "
            f"model's first layer expects {size}"
        )


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite. A finite sum means finite entries (a NaN or an
    infinity makes the sum NaN or infinite), at the cost of one reduction without an n-sized
    boolean temporary (0.01 s against 0.09 s for a 4000 x 4000 float64 kernel); only a
    non-finite (or overflowed) sum is looked at entry by entry."""
    return bool(torch.isfinite(x.detach().sum())) or bool(torch.isfinite(x).all())


def check_finite(x: torch.Tensor, name: str) -> None:
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); expected finite numbers")


def check_inputs(
    x, name: str, *, ndim: int = 2, dtype: torch.dtype | None = None, device=None
) -> torch.Tensor:
    """Validate a batch of inputs: a finite float tensor with ``ndim`` dimensions."""
    x = as_tensor(x, name, dtype=dtype, device=device)
    if x.ndim != ndim:
        what = " (n_samples, n_features)" if ndim == 2 else ""
        raise ValueError(f"{name} must have {ndim} dimensions{what}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(x.shape)})")
    check_finite(x, name)
    return x


def check_pair(x1: torch.Tensor, x2: torch.Tensor | None, names=("x1", "x2")) -> None:
    """``x2`` must match ``x1`` in feature shape, dtype and device."""
    if x2 is None:
        return
    n1, n2 = names
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"{n1} and {n2} must have the same feature shape, got {tuple(x1.shape[1:])} "
            f"and {tuple(x2.shape[1:])}"
        )
    if x1.dtype != x2.dtype:
        raise TypeError(f"{n1} and {n2} must have the same dtype, got {x1.dtype} and {x2.dtype}")
    if x1.device != x2.device:
        raise ValueError(
            f"{n1} and {n2} must be on the same device, got {x1.device} and {x2.device}"
        )


def check_real(value, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number, optionally bounded below (``strict``: > minimum)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be {rel} {minimum}, got {value!r}")
    return float(value)


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
