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

**Merging** (:func:`merge_neurons`, :func:`condense`) replaces each group by one neuron: the
inverse of the splitting embedding ``T^α`` of Zhang et al. (2021), which copies a neuron's
input weights and splits its output weights ``α a, (1 − α) a``. The merged neuron sums the
output weights; its input weights are the output-weighted mean of the members', which is
exact for identical copies, exact for positive multiples when σ is positively homogeneous
(ReLU, leaky ReLU: ``a σ(r u·x̃) = a r σ(u·x̃)``), and otherwise leaves an error of second
order in the spread of the group. For odd σ (tanh, erf) a neuron and its negation are the same
neuron up to the sign of its output weights, so groups are formed up to sign. The merged
network's agreement with the wide one (:class:`Agreement`: max and relative output
difference, and the fraction of equal predicted classes) says how much the merge changed.

References
----------
Zhang, Li, Zhang, Luo, Xu (2022). Embedding Principle: a hierarchical structure of loss
landscape of deep neural networks. J. Mach. Learn. 1(1). arXiv:2111.15527.
Luo, Xu, Ma, Zhang (2021). Phase diagram for two-layer ReLU neural networks at infinite-width
limit. JMLR 22(71). arXiv:2007.07497.
Zhang, Zhang, Luo, Xu (2021). Embedding Principle of Loss Landscape of Deep Neural Networks.
NeurIPS. arXiv:2105.14573.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from widenet._checks import as_tensor, check_finite, check_inputs, check_real

__all__ = [
    "Agreement",
    "amplitude_cover",
    "Condensed",
    "activation_symmetries",
    "condense",
    "effective_width",
    "function_agreement",
    "group_neurons",
    "group_neurons_up_to_sign",
    "merge_neurons",
    "neuron_directions",
]

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


def _complete_linkage(u: np.ndarray, threshold: float, *, absolute: bool) -> np.ndarray:
    """Raw cluster ids of the rows of ``u`` (unit or zero): complete linkage on ``1 − cos``.

    ``absolute``: on ``1 − |cos|`` (directions up to sign). Zero rows get the id ``max + 1``.
    """
    zero = ~np.any(u != 0.0, axis=1)
    raw = np.full(len(u), -1, dtype=np.int64)
    live = np.flatnonzero(~zero)
    if len(live) == 1:
        raw[live] = 0
    elif len(live) > 1:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        cos = 1.0 - pdist(u[live], metric="cosine")
        # Rounding can push 1 - cos a hair below 0 or above 2.
        dist = np.clip(1.0 - (np.abs(cos) if absolute else cos), 0.0, 2.0)
        tree = linkage(dist, method="complete")
        # fcluster keeps merges with distance <= t; a tiny slack keeps exact ties together.
        raw[live] = fcluster(tree, t=1.0 - threshold + 1e-12, criterion="distance")
    if zero.any():
        raw[zero] = raw.max() + 1
    return raw


def _first_appearance(raw: np.ndarray) -> np.ndarray:
    # Renumber by first appearance so labels do not depend on SciPy's internal order.
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse]


def _check_threshold(threshold) -> float:
    threshold = check_real(threshold, "threshold")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return threshold


def group_neurons(weight, bias=None, *, threshold: float = 0.9) -> torch.Tensor:
    """Group label per neuron (``(n_neurons,)`` int64, groups numbered 0, 1, … by first member).

    Neurons ``j, k`` share a group only if ``cos(θ_j, θ_k) ≥ threshold`` for every pair of the
    group (complete linkage on ``1 − cos``). Zero neurons form one group of their own.
    """
    threshold = _check_threshold(threshold)
    directions, norms = neuron_directions(weight, bias)
    u = directions.detach().to("cpu", torch.float64).numpy()
    labels = _first_appearance(_complete_linkage(u, threshold, absolute=False))
    return torch.as_tensor(labels, dtype=torch.int64, device=norms.device)


def effective_width(weight, bias=None, *, threshold: float = 0.9) -> int:
    """Number of neuron groups of :func:`group_neurons`: the width after condensation."""
    return int(group_neurons(weight, bias, threshold=threshold).max()) + 1


# --------------------------------------------------------------------------------------------
# Merging: the inverse of the splitting embedding


def activation_symmetries(activation, *, dtype=torch.float64) -> tuple[bool, bool]:
    """``(positively_homogeneous, odd)`` of an elementwise activation, probed numerically.

    Positively homogeneous (degree 1): ``σ(r z) = r σ(z)`` for ``r > 0`` (ReLU, leaky ReLU,
    identity). Odd: ``σ(−z) = −σ(z)`` (tanh, erf, sin, identity). Checked on 241 points of
    [−6, 6] and r ∈ {0.37, 2.9} to 1e-10 relative accuracy in ``dtype``: a numerical probe, so
    pass the properties explicitly to :func:`condense` for an activation that only nearly has
    them.
    """
    z = torch.linspace(-6.0, 6.0, 241, dtype=dtype)
    with torch.no_grad():
        s = activation(z)
        if not isinstance(s, torch.Tensor) or s.shape != z.shape:
            raise TypeError("activation must map a tensor elementwise to a tensor of its shape")

        def close(a, b):
            return bool(torch.all((a - b).abs() <= 1e-10 * (1.0 + b.abs())))

        homogeneous = all(close(activation(r * z), r * s) for r in (0.37, 2.9))
        odd = close(activation(-z), -s)
    return homogeneous, odd


def group_neurons_up_to_sign(weight, bias=None, *, threshold: float = 0.9):
    """Groups of neurons whose directions agree up to sign, and the sign of each neuron.

    For an odd activation ``a σ(θ·x̃) = (−a) σ(−θ·x̃)``, so a neuron and its negation compute
    the same function. Complete linkage on ``1 − |cos|``; each member is then oriented like its
    group's first member (``signs[k] = sign(cos(θ_k, θ_first))``). For ``threshold > 1/2`` every
    oriented pair of a group has ``cos ≥ threshold`` (two angles ≤ arccos t to the first member
    add up to less than π − arccos t), hence the restriction. Returns ``(labels, signs)``.
    """
    threshold = _check_threshold(threshold)
    if threshold <= 0.5:
        raise ValueError(
            f"threshold must be > 0.5 to group neurons up to sign (odd activation), got "
            f"{threshold}; pass odd=False to group them by signed direction"
        )
    directions, norms = neuron_directions(weight, bias)
    u = directions.detach().to("cpu", torch.float64).numpy()
    labels = _first_appearance(_complete_linkage(u, threshold, absolute=True))
    signs = np.ones(len(u))
    for g in range(labels.max() + 1):
        members = np.flatnonzero(labels == g)
        signs[members] = np.where(u[members] @ u[members[0]] < 0, -1.0, 1.0)
    device = norms.device
    return (
        torch.as_tensor(labels, dtype=torch.int64, device=device),
        torch.as_tensor(signs, dtype=directions.dtype, device=device),
    )


def merge_neurons(
    weight, bias, out_weight, labels, *, homogeneous: bool = False, signs=None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Merge each group of a layer's neurons into one: the inverse of the splitting embedding.

    Neuron k has input weights ``θ_k = (w_k, b_k)`` (row k of ``weight``, entry k of ``bias``)
    and output weights ``a_k`` (column k of ``out_weight``, ``(n_out, n_neurons)``). Group G,
    with total output ``A = Σ_G a_k``, becomes one neuron with

    * input weights ``θ_G = Σ_G c_k θ_k``, the *output-weighted mean* ``c_k = a_k·A / ‖A‖²``
      (``a_k / A`` for one output) when every ``c_k ≥ 0`` (the members' outputs point the same
      way, as in a condensed layer); it makes the first-order term of
      ``Σ a_k σ(θ_k·x̃) − A σ(θ_G·x̃)`` in the spread ``θ_k − θ_G`` vanish. Otherwise (outputs
      of mixed sign or cancelling) the amplitude-weighted mean, ``c_k ∝ ρ_k = ‖a_k‖ ‖θ_k‖``
      (uniform if all ρ_k are zero);
    * output weights ``a_G = A`` in general, and ``a_G = Σ_G a_k ‖θ_k‖ / ‖θ_G‖`` for a
      positively homogeneous σ (``homogeneous=True``), which uses ``a σ(r u·x̃) = a r σ(u·x̃)``.

    Both are exact when the members have identical input weights (splitting embedding, Zhang
    et al. 2021, Sec. 3: copies of θ whose output weights sum to a); the homogeneous form is
    also exact for positive multiples ``θ_k = r_k u``. ``signs`` (±1 per neuron, from
    :func:`group_neurons_up_to_sign`) first replaces ``(θ_k, a_k)`` by ``(s_k θ_k, s_k a_k)``,
    exact for an odd σ. Returns ``(weight, bias or None, out_weight)`` of the merged layer.
    """
    w = as_tensor(weight, "weight")
    theta = _augmented(w, bias)
    a = as_tensor(out_weight, "out_weight", dtype=w.dtype, device=w.device)
    if a.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(
            f"out_weight must be (n_out, {w.shape[0]}) to match weight's {w.shape[0]} neurons, "
            f"got shape {tuple(a.shape)}"
        )
    check_finite(a, "out_weight")
    labels = torch.as_tensor(labels, device=w.device)
    if labels.shape != (w.shape[0],) or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be ({w.shape[0]},) integers, got {tuple(labels.shape)}")
    n_groups = int(labels.max()) + 1 if len(labels) else 0
    if int(labels.min()) < 0 or len(torch.unique(labels)) != n_groups:
        raise ValueError("labels must number the groups 0, 1, ..., n_groups - 1 (none empty)")
    if signs is not None:
        s = as_tensor(signs, "signs", dtype=w.dtype, device=w.device)
        if s.shape != labels.shape or not bool(torch.all(s.abs() == 1)):
            raise ValueError(f"signs must be ({w.shape[0]},) entries of +1 or -1")
        theta, a = theta * s[:, None], a * s[None, :]
    r = torch.linalg.vector_norm(theta, dim=1)
    one_hot = torch.nn.functional.one_hot(labels.long(), n_groups).to(w.dtype)  # (n, G)
    total = a @ one_hot  # A per group, (n_out, G)
    # Output weights: c_k = a_k·A / ‖A‖² (sums to 1 over the group).
    proj = (a * total[:, labels]).sum(0)
    norm2 = (total**2).sum(0)
    same_way = (one_hot.T @ (proj < 0).to(w.dtype) == 0) & (
        norm2 > (1e-12 * (one_hot.T @ torch.linalg.vector_norm(a, dim=0))) ** 2
    )
    rho = torch.linalg.vector_norm(a, dim=0) * r
    mass = one_hot.T @ rho
    # Amplitude weights; groups of zero amplitude (outputs or inputs all zero): plain mean.
    amplitude = (
        torch.where(mass[labels] > 0, rho, 1.0)
        / torch.where(mass > 0, mass, one_hot.sum(0))[labels]
    )
    weights = torch.where(same_way[labels], proj / norm2[labels].clamp_min(1e-300), amplitude)
    theta_g = one_hot.T @ (weights[:, None] * theta)  # (G, fan_in [+1])
    if homogeneous:
        norm_g = torch.linalg.vector_norm(theta_g, dim=1)
        scaled = a * r[None, :] @ one_hot  # Σ a_k ‖θ_k‖
        # A zero θ_G (a zero-neuron group) computes σ(0) = 0: its output weight is irrelevant.
        a_g = torch.where(norm_g > 0, scaled / norm_g.clamp_min(1e-300), total)
    else:
        a_g = total
    if bias is None:
        return theta_g, None, a_g
    return theta_g[:, :-1], theta_g[:, -1], a_g


# --------------------------------------------------------------------------------------------
# The condensed network and its agreement with the wide one


def amplitude_cover(out_weight, weight, bias=None, fraction: float = 0.99) -> int:
    """Fewest neurons whose amplitudes ``‖a_k‖ ‖(w_k, b_k)‖`` sum to ``fraction`` of the total.

    On a merged layer: how many groups carry the function. Neurons that never grew from a
    small initialisation keep random directions and form groups of their own that
    :func:`effective_width` counts; this count leaves out the smallest ones. 0 if all are zero.
    """
    fraction = check_real(fraction, "fraction")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    theta = _augmented(weight, bias)
    a = as_tensor(out_weight, "out_weight", dtype=theta.dtype, device=theta.device)
    if a.ndim != 2 or a.shape[1] != theta.shape[0]:
        raise ValueError(f"out_weight must be (n_out, {theta.shape[0]}), got {tuple(a.shape)}")
    amp = torch.linalg.vector_norm(a, dim=0) * torch.linalg.vector_norm(theta, dim=1)
    amp = np.sort(amp.detach().cpu().double().numpy())[::-1]
    total = amp.sum()
    if total == 0:
        return 0
    return int(np.searchsorted(np.cumsum(amp), fraction * total * (1 - 1e-12)) + 1)


@dataclass(frozen=True)
class Agreement:
    """How closely a narrow network reproduces a wide one on points ``x``.

    ``max_abs_difference = max_ij |f_w(x_i)_j − f_n(x_i)_j|``; ``relative_difference =
    ‖f_w − f_n‖_F / ‖f_w‖_F`` (inf if ``f_w ≡ 0`` and ``f_n`` is not; 0 if both are); and
    ``prediction_agreement``, the fraction of points with the same predicted class: argmax
    over outputs for several outputs, sign for one (meaningful for classifiers only).
    """

    max_abs_difference: float
    relative_difference: float
    prediction_agreement: float
    n_points: int


def function_agreement(wide_outputs, narrow_outputs) -> Agreement:
    """:class:`Agreement` of two networks' outputs ``(n, k)`` (or ``(n,)``) on the same points."""
    fw = as_tensor(wide_outputs, "wide_outputs")
    fn = as_tensor(narrow_outputs, "narrow_outputs", dtype=fw.dtype, device=fw.device)
    if fw.ndim == 1:
        fw = fw[:, None]
    if fn.ndim == 1:
        fn = fn[:, None]
    if fw.ndim != 2 or fw.shape != fn.shape or fw.shape[0] == 0:
        raise ValueError(
            "wide_outputs and narrow_outputs must be (n, k) with the same shape and n >= 1, got "
            f"{tuple(as_tensor(wide_outputs, 'wide_outputs').shape)} and "
            f"{tuple(as_tensor(narrow_outputs, 'narrow_outputs').shape)}"
        )
    check_finite(fw, "wide_outputs")
    check_finite(fn, "narrow_outputs")
    diff = torch.linalg.matrix_norm(fw - fn)
    scale = torch.linalg.matrix_norm(fw)
    if float(scale) > 0:
        relative = float(diff / scale)
    else:
        relative = 0.0 if float(diff) == 0 else float("inf")
    if fw.shape[1] > 1:
        same = fw.argmax(1) == fn.argmax(1)
    else:
        same = torch.sign(fw[:, 0]) == torch.sign(fn[:, 0])
    return Agreement(
        max_abs_difference=float((fw - fn).abs().max()),
        relative_difference=relative,
        prediction_agreement=float(same.double().mean()),
        n_points=int(fw.shape[0]),
    )


@dataclass(frozen=True)
class Condensed:
    """The result of :func:`condense`.

    ``model``: the merged narrow :class:`widenet.embedding.FCNet` (``.to_module()`` for an
    ``nn.Sequential``); ``labels[l]``: the group of each neuron of hidden layer l (of the layer
    as merged, i.e. after the layers before it were merged); ``signs[l]``: the orientation used
    (all +1 unless the activation is odd); ``widths`` and ``effective_widths``: hidden widths
    before and after; ``agreement``: on the points given to :func:`condense`, else None.
    """

    model: object
    labels: tuple[torch.Tensor, ...]
    signs: tuple[torch.Tensor, ...]
    widths: tuple[int, ...]
    effective_widths: tuple[int, ...]
    threshold: float
    homogeneous: bool
    odd: bool
    agreement: Agreement | None


def condense(
    model, x=None, *, threshold: float = 0.9, homogeneous: bool | None = None, odd=None
) -> Condensed:
    """Merge every hidden layer of a fully-connected network into its effective width.

    ``model``: a :class:`widenet.embedding.FCNet`, a ``wn.mlp(...).network(...)`` or an
    ``nn.Sequential`` of ``nn.Linear`` + activation. Layer by layer from the input, the
    neurons are grouped by direction (:func:`group_neurons`; up to sign when the activation is
    odd, :func:`group_neurons_up_to_sign`) with cosine ≥ ``threshold``, and each group is
    merged by :func:`merge_neurons` — positive homogeneity (ReLU, leaky ReLU) makes scaled
    copies merge exactly. ``homogeneous`` / ``odd`` default to :func:`activation_symmetries`.
    With ``x`` (``(n, in_dim)``), the merged network's :class:`Agreement` with the wide one.

    This inverts the splitting embedding of Zhang et al. (2021): a network obtained from a
    narrow one by splitting neurons (identical input weights, output weights summing to the
    original) merges back to it exactly at any threshold ≤ 1.
    """
    from widenet.networks import as_fcnet

    net = as_fcnet(model)
    threshold = _check_threshold(threshold)
    auto_h, auto_o = activation_symmetries(net.activation, dtype=net.dtype)
    homogeneous = auto_h if homogeneous is None else bool(homogeneous)
    odd = auto_o if odd is None else bool(odd)
    if x is not None:
        x = check_inputs(x, "x", dtype=net.dtype, device=net.device)
        if x.shape[1] != net.in_dim:
            raise ValueError(f"x must be (n, {net.in_dim}), got shape {tuple(x.shape)}")
    weights, biases = list(net.weights), list(net.biases)
    all_labels, all_signs = [], []
    for l in range(len(weights) - 1):
        w, b = weights[l], biases[l]
        if odd:
            labels, signs = group_neurons_up_to_sign(w, b, threshold=threshold)
        else:
            labels = group_neurons(w, b, threshold=threshold)
            signs = torch.ones(len(labels), dtype=w.dtype, device=w.device)
        weights[l], biases[l], weights[l + 1] = merge_neurons(
            w, b, weights[l + 1], labels, homogeneous=homogeneous, signs=signs
        )
        all_labels.append(labels)
        all_signs.append(signs)
    merged = net.replace(weights, biases)
    agreement = None
    if x is not None:
        with torch.no_grad():
            agreement = function_agreement(net(x), merged(x))
    return Condensed(
        model=merged,
        labels=tuple(all_labels),
        signs=tuple(all_signs),
        widths=tuple(net.widths),
        effective_widths=tuple(merged.widths),
        threshold=threshold,
        homogeneous=homogeneous,
        odd=odd,
        agreement=agreement,
    )
