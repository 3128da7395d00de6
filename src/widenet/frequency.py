"""The frequency principle (F-Principle): networks fit low frequencies first.

Three measures of Xu, Zhang, Luo, Xiao, Ma (2019/2020) compare a network's output h with the
target y frequency by frequency during training:

* **DFT peaks (1-D data on a uniform grid)**: with ŷ = DFT(y), ĥ = DFT(h) over the n grid values
  (``torch.fft.fft``, no normalisation), the relative error at frequency index k is

      Δ_F(k) = |ĥ_k − ŷ_k| / |ŷ_k|,

  evaluated at the peaks of |ŷ| (local maxima of |ŷ_k|, 1 ≤ k ≤ n/2, at least ``rel_height``
  times the largest) (Xu et al. 2020, Sec. 3, Fig. 1).
* **Projection method** (high-dimensional data): along a unit direction p (default: the first
  principal component of x), the non-uniform Fourier transform

      ŷ_p(k) = (1/n) Σ_j y_j exp(−2π i k p·x_j),

  and Δ_F(k) = |ĥ_p(k) − ŷ_p(k)| / |ŷ_p(k)| at chosen frequencies k (Xu et al. 2020, Sec. 4.1).
* **Filtering method** (high-dimensional data): Gaussian smoothing on the data points,

      y^{low,δ}_i = Σ_j y_j G_δ(x_i − x_j) / Σ_j G_δ(x_i − x_j),   G_δ(z) = exp(−‖z‖² / (2δ)),
      y^{high,δ} = y − y^{low,δ},

  where **δ is a variance** (squared length; the filter's standard deviation is √δ), as in the
  paper's G^δ. Then e_low = ‖y^{low,δ} − h^{low,δ}‖ / ‖y^{low,δ}‖ and
  e_high = ‖y^{high,δ} − h^{high,δ}‖ / ‖y^{high,δ}‖ (norms over points and outputs). The F-Principle
  shows as e_low < e_high during training (Xu et al. 2020, Sec. 4.2, eq. 4.3-4.4). The filter is
  linear, so both errors are filters of the residual y − h; the n × n kernel is applied in row
  blocks (memory O(block · n)).

References
----------
Xu, Zhang, Luo, Xiao, Ma (2020). Frequency Principle: Fourier Analysis Sheds Light on Deep
Neural Networks. Commun. Comput. Phys. 28(5):1746-1767. arXiv:1901.06523.
Xu, Zhang, Xiao (2019). Training behavior of deep neural network in frequency domain. ICONIP.
arXiv:1807.01251.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from widenet._checks import as_tensor, check_finite, check_int, check_real

__all__ = [
    "FilterErrors",
    "dft_peaks",
    "filter_errors",
    "gaussian_filter",
    "peak_relative_error",
    "principal_direction",
    "projection_relative_error",
    "projection_spectrum",
]


def _signal(y, name: str) -> torch.Tensor:
    y = as_tensor(y, name)
    if y.ndim == 0 or y.shape[-1] < 3:
        raise ValueError(f"{name} must have at least 3 samples on its last axis, got {y.shape}")
    check_finite(y, name)
    return y


def dft_peaks(y, *, rel_height: float = 0.1) -> torch.Tensor:
    """Frequency indices k (ascending) of the peaks of |DFT(y)| for a 1-D signal ``y`` (n,).

    A peak is a local maximum of |ŷ_k| over 1 ≤ k ≤ n//2 (the constant k = 0 excluded) at least
    ``rel_height`` times the largest |ŷ_k| there.
    """
    y = _signal(y, "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n,), got shape {tuple(y.shape)}")
    rel_height = check_real(rel_height, "rel_height", minimum=0.0)
    amp = torch.fft.fft(y.double()).abs()[: y.shape[0] // 2 + 1]
    inner = amp[1:]
    left = torch.cat([amp[:1], inner[:-1]])  # amp[k-1]
    right = torch.cat([inner[1:], inner.new_zeros(1)])  # amp[k+1] (0 past the end)
    is_peak = (inner > left) & (inner >= right) & (inner >= rel_height * inner.max())
    peaks = torch.nonzero(is_peak).reshape(-1) + 1
    if len(peaks) == 0:
        raise ValueError("y has no spectral peak (constant signal?)")
    return peaks


def peak_relative_error(y, h, peaks=None, *, rel_height: float = 0.1) -> torch.Tensor:
    """Δ_F(k) = |ĥ_k − ŷ_k| / |ŷ_k| at the peaks of |ŷ| (or the given indices ``peaks``).

    ``y`` is (n,); ``h`` is (n,) or a batch (..., n) of outputs (e.g. one row per epoch).
    Returns (..., n_peaks) in float64.
    """
    y = _signal(y, "y")
    h = _signal(h, "h")
    if y.ndim != 1 or h.shape[-1] != y.shape[0]:
        raise ValueError(f"y must be (n,) and h (..., n); got {tuple(y.shape)}, {tuple(h.shape)}")
    if peaks is None:
        peaks = dft_peaks(y, rel_height=rel_height)
    peaks = torch.as_tensor(peaks, dtype=torch.int64).reshape(-1)
    if len(peaks) == 0 or int(peaks.min()) < 0 or int(peaks.max()) >= y.shape[0]:
        raise ValueError(f"peaks must be frequency indices in [0, {y.shape[0]}), got {peaks}")
    yk = torch.fft.fft(y.double().cpu())[peaks]
    if bool((yk.abs() == 0).any()):
        raise ValueError("the target has zero amplitude at one of the peaks")
    hk = torch.fft.fft(h.double().cpu(), dim=-1)[..., peaks]
    return (hk - yk).abs() / yk.abs()


def _points(x, name: str = "x") -> torch.Tensor:
    x = as_tensor(x, name)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be (n_samples, n_features) with n >= 2, got {x.shape}")
    check_finite(x, name)
    return x


def _values(y, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    y = as_tensor(y, name, dtype=like.dtype, device=like.device)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} must be (n,) or (n, k) with n = {n} rows, got {tuple(y.shape)}")
    check_finite(y, name)
    return y


def principal_direction(x) -> torch.Tensor:
    """Unit first principal direction of the (centred) rows of ``x`` (sign: largest entry > 0)."""
    x = _points(x)
    xc = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    p = vh[0]
    return p * torch.sign(p[p.abs().argmax()])


def projection_spectrum(x, y, frequencies, direction=None) -> torch.Tensor:
    """ŷ_p(k) = (1/n) Σ_j y_j exp(−2π i k p·x_j) at each k; (n_freq, k_out) complex128."""
    x = _points(x)
    y = _values(y, x.shape[0], "y", x)
    p = principal_direction(x) if direction is None else as_tensor(direction, "direction")
    p = p.double().reshape(-1).to(x.device)
    if p.shape[0] != x.shape[1]:
        raise ValueError(f"direction must have {x.shape[1]} entries, got {p.shape[0]}")
    norm = torch.linalg.vector_norm(p)
    if float(norm) == 0.0:
        raise ValueError("direction is zero")
    k = as_tensor(frequencies, "frequencies", dtype=torch.float64, device=x.device).reshape(-1)
    check_finite(k, "frequencies")
    t = x.double() @ (p / norm)  # projections (n,)
    phase = torch.exp(-2j * torch.pi * k[:, None] * t[None, :])  # (n_freq, n)
    return phase @ y.double().to(torch.complex128) / x.shape[0]


def projection_relative_error(x, y, h, frequencies, direction=None) -> torch.Tensor:
    """|ĥ_p(k) − ŷ_p(k)| / |ŷ_p(k)| at each frequency (norms over outputs): (n_freq,)."""
    x = _points(x)
    y = _values(y, x.shape[0], "y", x)
    h = _values(h, x.shape[0], "h", x)
    if h.shape != y.shape:
        raise ValueError(f"h must have the shape of y {tuple(y.shape)}, got {tuple(h.shape)}")
    yk = projection_spectrum(x, y, frequencies, direction)
    dk = projection_spectrum(x, y - h, frequencies, direction)
    ya = torch.linalg.vector_norm(yk, dim=1)
    if bool((ya == 0).any()):
        raise ValueError("the target's projected spectrum is zero at one of the frequencies")
    return torch.linalg.vector_norm(dk, dim=1) / ya


def _check_delta(delta) -> float:
    return check_real(delta, "delta", minimum=0.0, strict=True)


def gaussian_filter(x, y, delta, *, block: int = 1024) -> torch.Tensor:
    """y^{low,δ}_i = Σ_j y_j G_δ(x_i − x_j) / Σ_j G_δ(x_i − x_j), G_δ(z) = exp(−‖z‖²/(2δ)).

    ``delta`` is the *variance* of the Gaussian. ``y`` is (n,) or (n, k); returns (n, k) in
    the dtype of ``x``. Rows are done ``block`` at a time (memory O(block · n)); each row is
    shifted by its largest log-weight, so no weight underflows to 0/0 however small δ is.
    """
    x = _points(x)
    y = _values(y, x.shape[0], "y", x)
    delta = _check_delta(delta)
    block = check_int(block, "block", minimum=1)
    sq = (x**2).sum(1)
    out = torch.empty_like(y)
    for start in range(0, x.shape[0], block):
        xb = x[start : start + block]
        d2 = (sq[start : start + block, None] + sq[None, :] - 2.0 * xb @ x.T).clamp_min(0.0)
        # The point itself is at distance 0 exactly (rounding can leave a tiny residue).
        idx = torch.arange(start, start + xb.shape[0], device=x.device)
        d2[idx - start, idx] = 0.0
        logw = -d2 / (2.0 * delta)
        wgt = torch.exp(logw - logw.max(1, keepdim=True).values)
        out[start : start + block] = (wgt @ y) / wgt.sum(1, keepdim=True)
    return out


@dataclass(frozen=True)
class FilterErrors:
    """e_low and e_high, one per δ, and the relative size of the target's low part."""

    deltas: tuple[float, ...]
    e_low: tuple[float, ...]
    e_high: tuple[float, ...]
    low_fraction: tuple[float, ...]  # ‖y^low‖² / (‖y^low‖² + ‖y^high‖²)


def filter_errors(x, y, h, deltas: float | Sequence[float], *, block: int = 1024) -> FilterErrors:
    """e_low = ‖(y − h)^{low,δ}‖ / ‖y^{low,δ}‖ and e_high likewise, for each δ (variance)."""
    x = _points(x)
    y = _values(y, x.shape[0], "y", x)
    h = _values(h, x.shape[0], "h", x)
    if h.shape != y.shape:
        raise ValueError(f"h must have the shape of y {tuple(y.shape)}, got {tuple(h.shape)}")
    deltas = [deltas] if isinstance(deltas, (int, float)) else list(deltas)
    if not deltas:
        raise ValueError("deltas is empty")
    lows, highs, fracs = [], [], []
    both = torch.cat([y, y - h], dim=1)  # filter target and residual in one pass
    k = y.shape[1]
    for delta in deltas:
        low = gaussian_filter(x, both, _check_delta(delta), block=block)
        y_low, r_low = low[:, :k], low[:, k:]
        y_high, r_high = y - y_low, (y - h) - r_low
        ny_low, ny_high = torch.linalg.norm(y_low), torch.linalg.norm(y_high)
        if float(ny_low) == 0.0 or float(ny_high) == 0.0:
            raise ValueError(f"delta={delta}: the target's low or high part is zero")
        lows.append(float(torch.linalg.norm(r_low) / ny_low))
        highs.append(float(torch.linalg.norm(r_high) / ny_high))
        fracs.append(float(ny_low**2 / (ny_low**2 + ny_high**2)))
    return FilterErrors(tuple(float(d) for d in deltas), tuple(lows), tuple(highs), tuple(fracs))
