r"""How convolution, pooling and flattening act on spatial covariances (the CNN kernel maps).

The pre-activations of an infinitely wide convolutional layer are, channel by channel, a Gaussian
process over (input, position) pairs; its covariance K(x, x')[p, p'] (one number per pair of
inputs and pair of positions) is all the kernel needs to carry (Novak et al. 2019, "Bayesian
deep convolutional networks with many channels are Gaussian processes"; Garriga-Alonso et al.
2019, "Deep convolutional networks as shallow Gaussian processes"; Arora et al. 2019, "On exact
computation with an infinitely wide neural net", the CNTK). With the filter taps t of a
convolution (|t| = filter size, channels-first inputs, neural-tangents' NTK parameterization
y_p = w_std / sqrt(C |t|) sum_{c, t} W_{c,t} x_{c, s p + t} + b_std b):

    K_out[p, p'] = w_std^2 / |t| sum_t K_in[s p + t, s p' + t] + b_std^2   (convolution)
    K_out[p, p'] = 1 / |w|^2 sum_{t, t'} K_in[s p + t, s p' + t']          (average pooling)
    K_out        = 1 / P^2 sum_{p, p'} K_in[p, p']                      (global average pooling)
    K_out        = 1 / P sum_p K_in[p, p]                               (flatten, then Dense)

where positions outside the input read as zero ("same" padding), wrap around ("circular") or
are never read ("valid"). A convolution moves both positions by the same tap, so the map is a
sum of |t| shifted copies of the covariance along the diagonal of each (p, p') pair of axes; it
is separable over the spatial axes (a filter is a product of per-axis windows), so a k x k
filter costs 2k shifted sums, not k^2. Pooling moves the two positions independently, so it is
a window sum along every spatial axis of either input.

Layouts. ``"full"`` holds every position pair, shape (..., *S, *S) for spatial shape S;
``"diag"`` holds only p = p', shape (..., *S) — enough when nothing downstream mixes positions
(convolutions and pointwise layers map the position-diagonal to itself, and a Flatten readout
reads only it), which is neural-tangents' ``diagonal_spatial`` and makes a CNN without pooling
cost O(P) per pair instead of O(P^2). ``"vector"`` is a plain (...,) covariance. Leading
dimensions are batch dimensions (pairs of inputs) and are never touched here.

Padding amounts follow XLA's "SAME" rule (as neural-tangents and TensorFlow): the output has
ceil(n / s) positions and the total padding max((ceil(n / s) - 1) s + k - n, 0) is split with
the smaller half before.
"""

from __future__ import annotations

import math

import torch

PADDINGS = ("same", "valid", "circular")
LAYOUTS = ("vector", "diag", "full")


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of XLA's "SAME" rule for one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def axis_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of one axis: none for "valid", the SAME rule otherwise."""
    return (0, 0) if padding == "valid" else same_pads(size, window, stride)


def output_size(size: int, window: int, stride: int, padding: str) -> int:
    """Number of output positions along one axis (0 when a "valid" window does not fit)."""
    if padding == "valid":
        return max((size - window) // stride + 1, 0)
    return -(-size // stride)


def pad_axes(x: torch.Tensor, pads: dict[int, tuple[int, int]], circular: bool) -> torch.Tensor:
    """Pad dimensions ``dim -> (before, after)`` of ``x`` with zeros or by wrapping around."""
    pads = {d % x.ndim: p for d, p in pads.items() if p != (0, 0)}
    if not pads:
        return x
    if circular:
        for d, (lo, hi) in pads.items():
            n = x.shape[d]
            idx = torch.arange(-lo, n + hi, device=x.device) % n
            x = x.index_select(d, idx)
        return x
    # One constant pad over the trailing dimensions: F.pad takes (last_lo, last_hi, ...).
    first = min(pads)
    spec: list[int] = []
    for d in range(x.ndim - 1, first - 1, -1):
        spec.extend(pads.get(d, (0, 0)))
    return torch.nn.functional.pad(x, spec)


def window_sum(x: torch.Tensor, dims: tuple[int, ...], window: int, stride: int, n_out: int):
    """sum_{t < window} x[..., s i + t, ...] with the same offset t on every dim of ``dims``.

    One dim gives a pooling window sum; two dims (the same spatial axis of the two inputs of a
    covariance) give the shifted sum of a convolution. Returns a new tensor.
    """
    dims = tuple(d % x.ndim for d in dims)
    out = None
    for t in range(window):
        idx = [slice(None)] * x.ndim
        for d in dims:
            idx[d] = slice(t, t + stride * (n_out - 1) + 1, stride)
        v = x[tuple(idx)]
        out = v.clone() if out is None else out.add_(v)
    return out


def shifted_sum(x: torch.Tensor, dims: tuple[int, ...], window: int, before: int) -> torch.Tensor:
    """sum_{t < window} x[..., p + t - before, ...] (jointly on ``dims``), zero outside: the
    stride-1 "same" window sum without materialising the padded tensor (one copy and
    window - 1 partial in-place additions). Returns a new tensor."""
    dims = tuple(d % x.ndim for d in dims)
    out = x.clone()  # the tap at offset 0 (0 <= before < window)
    for t in range(window):
        a = t - before
        if a == 0:
            continue
        src = [slice(None)] * x.ndim
        dst = [slice(None)] * x.ndim
        for d in dims:
            n = x.shape[d]
            if abs(a) >= n:
                break
            dst[d] = slice(max(0, -a), n - max(0, a))
            src[d] = slice(max(0, a), n + min(0, a))
        else:
            out[tuple(dst)].add_(x[tuple(src)])  # in place on the view (no write-back copy)
    return out


def conv_map(
    k: torch.Tensor,
    layout: str,
    spatial: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    padding: str,
) -> torch.Tensor:
    """(1 / |t|) sum_t K[s p + t, s p' + t]: the convolution's map without w_std^2 and b_std^2.

    ``k`` has layout "full" (..., *S, *S) or "diag" (..., *S) with S = ``spatial``.
    """
    d = len(spatial)
    circular = padding == "circular"
    size = math.prod(window)
    if padding == "same" and all(s == 1 for s in stride):
        for i, (n, w) in enumerate(zip(spatial, window, strict=True)):
            lo = same_pads(n, w, 1)[0]
            dims = (-d + i,) if layout == "diag" else (-2 * d + i, -d + i)
            k = shifted_sum(k, dims, w, lo)
        return k.div_(size)
    if layout == "diag":
        pads = {
            -d + i: axis_pads(n, w, s, padding)
            for i, (n, w, s) in enumerate(zip(spatial, window, stride, strict=True))
        }
        k = pad_axes(k, pads, circular)
        for i, (n, w, s) in enumerate(zip(spatial, window, stride, strict=True)):
            k = window_sum(k, (-d + i,), w, s, output_size(n, w, s, padding))
        return k.div_(size)
    k = _pad_full(k, spatial, window, stride, padding)
    for i, (n, w, s) in enumerate(zip(spatial, window, stride, strict=True)):
        k = window_sum(k, (-2 * d + i, -d + i), w, s, output_size(n, w, s, padding))
    return k.div_(size)


def _pad_full(k, spatial, window, stride, padding):
    """Pad both position axes (p and p') of every spatial dimension of a "full" covariance for
    a window sum of ``padding`` (zeros, or wrap-around for "circular")."""
    d = len(spatial)
    pads = {}
    for i, (n, w, s) in enumerate(zip(spatial, window, stride, strict=True)):
        p = axis_pads(n, w, s, padding)
        pads[-2 * d + i] = p
        pads[-d + i] = p
    return pad_axes(k, pads, padding == "circular")


def pool_map(
    k: torch.Tensor,
    spatial: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    padding: str,
) -> torch.Tensor:
    """(1 / |w|^2) sum_{t, t'} K[s p + t, s p' + t'] on a "full" covariance (average pooling,
    padded positions counted as zeros as in neural-tangents' ``AvgPool``)."""
    d = len(spatial)
    k = _pad_full(k, spatial, window, stride, padding)
    for i, (n, w, s) in enumerate(zip(spatial, window, stride, strict=True)):
        m = output_size(n, w, s, padding)
        k = window_sum(k, (-2 * d + i,), w, s, m)
        k = window_sum(k, (-d + i,), w, s, m)
    return k.div_(math.prod(window) ** 2)


def global_mean(k: torch.Tensor, layout: str, d: int) -> torch.Tensor:
    """1 / P^2 sum_{p, p'} K[p, p'] ("full") — the global average pooling map."""
    if layout != "full":
        raise ValueError(f"global average pooling needs the full covariance, got {layout!r}")
    return k.mean(dim=tuple(range(-2 * d, 0)))


def diagonal_mean(k: torch.Tensor, layout: str, d: int) -> torch.Tensor:
    """1 / P sum_p K[p, p] — the flatten map (a Dense layer on the flattened features)."""
    if layout == "full":
        k = position_diagonal(k, d)
    return k.mean(dim=tuple(range(-d, 0)))


def position_diagonal(k: torch.Tensor, d: int) -> torch.Tensor:
    """K[..., p, p] of a "full" covariance (..., *S, *S), as a new (..., *S) tensor."""
    spatial = k.shape[k.ndim - d :]
    p = math.prod(spatial)
    flat = k.reshape(*k.shape[: k.ndim - 2 * d], p, p)
    return torch.diagonal(flat, dim1=-2, dim2=-1).reshape(*flat.shape[:-2], *spatial).clone()


def input_covariance(
    x1: torch.Tensor, x2: torch.Tensor | None, layout: str, *, paired: bool = False
) -> torch.Tensor:
    """K^0 = x . x' / C of raw inputs, channels-first (n, C, *S) or vectors (n, d).

    ``paired=False``: every pair, shape (n1, n2, ...); ``x2=None`` means x2 = x1.
    ``paired=True``: x1[i] against itself only, shape (n, ...).
    """
    c = x1.shape[1]
    if x1.ndim == 2:  # vectors
        if paired:
            return (x1 * x1).sum(1) / c
        xb = x1 if x2 is None else x2
        return (x1 @ xb.T).div_(c)
    spatial = tuple(x1.shape[2:])
    p = math.prod(spatial)
    a = x1.reshape(x1.shape[0], c, p)
    if paired:
        if layout == "diag":
            return (a * a).sum(1).div_(c).reshape(-1, *spatial)
        k = torch.bmm(a.transpose(1, 2), a).div_(c)  # (n, P, P)
        return k.reshape(-1, *spatial, *spatial)
    b = a if x2 is None else x2.reshape(x2.shape[0], c, p)
    if layout == "diag":
        # (P, n1, C) @ (P, C, n2) -> (P, n1, n2) -> (n1, n2, P)
        k = torch.bmm(a.permute(2, 0, 1), b.permute(2, 1, 0)).permute(1, 2, 0)
        return k.div_(c).reshape(a.shape[0], b.shape[0], *spatial)
    # (n1 P, C) @ (C, n2 P) -> (n1, P, n2, P) -> (n1, n2, P, P)
    k = a.transpose(1, 2).reshape(-1, c) @ b.permute(1, 0, 2).reshape(c, -1)
    k = k.reshape(a.shape[0], p, b.shape[0], p).permute(0, 2, 1, 3).div_(c)
    return k.reshape(a.shape[0], b.shape[0], *spatial, *spatial)
