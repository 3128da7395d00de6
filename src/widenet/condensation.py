"""Condensation: neurons of a layer that point the same way, and the layer's effective width.

At small initialisation, the input weights of a wide layer's neurons *condense* onto a few
directions during training (Luo, Xu, Ma, Zhang 2021; Zhang, Xu et al. 2021/2022): the network
then computes the same function as a much narrower one. A neuron k of a layer with activation σ
computes ``a_k σ(w_kᵀx + b_k)``; its *direction* is the unit vector of ``(w_k, b_k)`` (bias
included, so that neurons are compared on the augmented input ``x̃ = (x, 1)``).

Two neurons belong to the same group when the cosine similarity of their directions is at least
``threshold``. Groups are formed by complete-linkage agglomerative clustering on the cosine
distance ``1 − cos`` (SciPy), cut at ``1 − threshold``: *every* pair in a group is at least
``threshold``-similar (single linkage would chain dissimilar neurons through intermediate ones).
The number of groups is the layer's **effective width** — the width of the narrowest network
that the condensed layer is, up to the threshold, an embedding of (the inverse of the splitting
embedding of Zhang et al. 2021, see :mod:`widenet.embedding`).

Neurons whose input weights are all (numerically) zero have no direction; each computes the
constant σ(0), so they are put together in one group of their own.

References
----------
Luo, Xu, Ma, Zhang (2021). Phase diagram for two-layer ReLU neural networks at infinite-width
limit. JMLR 22(71). arXiv:2007.07497.
Zhang, Zhang, Luo, Xu (2021). Embedding Principle of Loss Landscape of Deep Neural Networks.
NeurIPS. arXiv:2105.14573.
"""

from __future__ import annotations

import numpy as np
import torch

from widenet._checks import as_tensor, check_finite, check_real

__all__ = ["effective_width", "group_neurons", "neuron_directions"]

# Rows with norm below this fraction of the largest row norm count as zero (no direction).
_ZERO_NORM = 1e-12


def _augmented(weight, bias) -> torch.Tensor:
    w = as_tensor(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight must be (n_neurons, fan_in), got shape {tuple(w.shape)}")
    if w.shape[0] == 0:
        raise ValueError("weight has no neurons (0 rows)")
    check_finite(w, "weight")
    if bias is None:
        return w
    b = as_tensor(bias, "bias", dtype=w.dtype, device=w.device)
    if b.shape != (w.shape[0],):
        raise ValueError(
            f"bias must have shape ({w.shape[0]},) to match weight, got {tuple(b.shape)}"
        )
    check_finite(b, "bias")
    return torch.cat([w, b[:, None]], dim=1)


def neuron_directions(weight, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit directions ``(w_k, b_k) / ‖(w_k, b_k)‖`` and amplitudes ``‖(w_k, b_k)‖`` of a layer.

    ``weight`` is ``(n_neurons, fan_in)`` (``nn.Linear.weight``'s layout), ``bias`` ``(n_neurons,)``
    or None. Returns ``(directions (n, fan_in [+1]), amplitudes (n,))``; rows of zero neurons are 0.
    """
    w = _augmented(weight, bias)
    norms = torch.linalg.vector_norm(w, dim=1)
    zero = norms <= _ZERO_NORM * norms.max().clamp_min(torch.finfo(w.dtype).tiny)
    directions = torch.where(zero[:, None], 0.0, w / norms.clamp_min(1e-300)[:, None])
    return directions, norms


def group_neurons(weight, bias=None, *, threshold: float = 0.9) -> torch.Tensor:
    """Group label per neuron (``(n_neurons,)`` int64, groups numbered 0, 1, … by first member).

    Neurons ``j, k`` share a group only if ``cos(θ_j, θ_k) ≥ threshold`` for every pair of the
    group (complete linkage on ``1 − cos``). Zero neurons form one group of their own.
    """
    threshold = check_real(threshold, "threshold")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    directions, norms = neuron_directions(weight, bias)
    u = directions.detach().to("cpu", torch.float64).numpy()
    zero = ~np.any(u != 0.0, axis=1)
    raw = np.full(len(u), -1, dtype=np.int64)
    live = np.flatnonzero(~zero)
    if len(live) == 1:
        raw[live] = 0
    elif len(live) > 1:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        # Rounding can push 1 - cos a hair below 0 or above 2.
        dist = np.clip(pdist(u[live], metric="cosine"), 0.0, 2.0)
        tree = linkage(dist, method="complete")
        # fcluster keeps merges with distance <= t; a tiny slack keeps exact ties together.
        raw[live] = fcluster(tree, t=1.0 - threshold + 1e-12, criterion="distance")
    if zero.any():
        raw[zero] = raw.max() + 1
    # Renumber by first appearance so labels do not depend on SciPy's internal order.
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return torch.as_tensor(order[inverse], dtype=torch.int64, device=norms.device)


def effective_width(weight, bias=None, *, threshold: float = 0.9) -> int:
    """Number of neuron groups of :func:`group_neurons`: the width after condensation."""
    return int(group_neurons(weight, bias, threshold=threshold).max()) + 1
