"""The embedding principle: output- and criticality-preserving maps from narrow to wide networks.

A fully-connected network with hidden widths ``m_1, …, m_{L-1}`` computes

    h_0 = x,   h_l = σ(W_l h_{l-1} + b_l)  (l < L),   f(x; θ) = W_L h_{L-1} + b_L.

Zhang, Zhang, Luo and Xu (2021) call a map ``T`` from the narrow parameters θ to wide parameters
θ' an *embedding* when it is linear (affine for null neurons) and output preserving,
``f(·; Tθ) = f(·; θ)``; it is *critical* when it also maps every critical point of the narrow
loss to a critical point of the wide one. Their building blocks, implemented here on
:class:`FCNet` (a plain view of weights, biases and one activation):

* **one-step splitting embedding** ``T^α_{l,s}`` (:func:`split_neuron`): neuron ``s`` of hidden
  layer ``l`` is duplicated (same incoming weights and bias); its outgoing weights are split,
  ``α·W_{l+1}[:, s]`` stay on the old neuron and ``(1 − α)·W_{l+1}[:, s]`` go to the new one.
  It is linear, output preserving and critical (their Theorem 4.1 / Lemma 4.3).
* **one-step null embedding** (:func:`null_embedding`): a neuron with zero outgoing weights and
  arbitrary incoming weights. It is output preserving; it preserves criticality only when the
  new neuron's gradient ``∂L/∂W_{l+1}[:, new] = (1/n) Σ_i r_i σ(w·h_{l-1}(x_i) + b)ᵀ`` also
  vanishes, e.g. when its incoming weights are zero and ``σ(0) = 0`` (tanh, relu, …; not erf's
  translates, sigmoid or softplus) — :func:`null_embedding` takes the incoming weights as given.
* **composition** (:func:`compose`, :class:`Split`, :class:`Null`) and the **general compatible
  embedding** (:func:`compatible_embedding`): for every hidden layer an index map
  ``π_l : [m'_l] → [m_l] ∪ {null}`` onto ``[m_l]`` with splitting factors ``α_l`` whose sum over
  each original neuron's copies is 1; the wide weights are

      W'_l[k, k'] = α_{l-1}[k'] · W_l[π_l(k), π_{l-1}(k')]     (π_l(k), π_{l-1}(k') not null),
      b'_l[k] = b_l[π_l(k)],

  with ``α_0 ≡ 1``, ``π_0 = π_L = id`` (inputs and outputs are not split), zero columns for
  null neurons' outgoing weights and given (or zero) incoming weights for null neurons.
* the **embedded critical manifold** (:func:`embedding_family`): the set of all compatible
  embeddings of θ with a fixed index map — the α's range over the affine space
  ``{α : Σ_{π(k)=j} α_k = 1}`` — is an affine family of wide points with the same output; its
  dimension is the number of free α's, ``Σ_l (m'_l − m_l)`` less the null neurons (see
  :func:`embedding_family`); null neurons' incoming weights stay as given, since varying them
  keeps the output but in general not criticality.

References
----------
Zhang, Zhang, Luo, Xu (2021). Embedding Principle of Loss Landscape of Deep Neural Networks.
NeurIPS. arXiv:2105.14573.
Zhang, Zhang, Luo, Xu (2022). Embedding Principle: a hierarchical structure of loss landscape
of deep neural networks. J. Mach. Learn. 1(1). arXiv:2111.15527.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from widenet._checks import as_tensor, check_finite, check_int, check_real
from widenet.networks import FCNet, as_fcnet, load_state_dict  # noqa: F401 (re-exported)

__all__ = [
    "FCNet",
    "Null",
    "EmbeddingFamily",
    "Split",
    "as_fcnet",
    "compatible_embedding",
    "load_state_dict",
    "compose",
    "embedding_family",
    "splitting_matrix",
    "null_embedding",
    "split_neuron",
]


# -- one-step embeddings -------------------------------------------------------------------------
def _check_layer(net: FCNet, layer) -> int:
    n_hidden = len(net.weights) - 1
    if n_hidden == 0:
        raise ValueError("the network has no hidden layer to embed into")
    layer = check_int(layer, "layer", minimum=0)
    if layer >= n_hidden:
        raise ValueError(
            f"layer must index a hidden layer, 0 ≤ layer < {n_hidden} (0 = first hidden layer), "
            f"got {layer}"
        )
    return layer


def split_neuron(net, layer: int, neuron: int, alpha: float = 0.5) -> FCNet:
    """One-step splitting embedding ``T^α_{l,s}`` (Zhang et al. 2021, Definition 3.2).

    Neuron ``s = neuron`` of hidden layer ``l = layer`` (0-based: 0 is the first hidden layer)
    gets a copy, appended as the last neuron of the layer, with the same incoming weights and
    bias; the outgoing weights ``W_{l+1}[:, s]`` become ``α·W_{l+1}[:, s]`` (old neuron) and
    ``(1 − α)·W_{l+1}[:, s]`` (copy). Any real ``α`` is allowed (negative ones too, as in the
    paper). Returns a new :class:`FCNet` of width ``m_l + 1``.
    """
    net = as_fcnet(net)
    layer = _check_layer(net, layer)
    width = net.widths[layer]
    neuron = check_int(neuron, "neuron", minimum=0)
    if neuron >= width:
        raise ValueError(f"neuron must be < width {width} of hidden layer {layer}, got {neuron}")
    alpha = check_real(alpha, "alpha")
    weights, biases = list(net.weights), list(net.biases)
    w_in, b_in, w_out = weights[layer], biases[layer], weights[layer + 1]
    weights[layer] = torch.cat([w_in, w_in[neuron : neuron + 1]], dim=0)
    if b_in is not None:
        biases[layer] = torch.cat([b_in, b_in[neuron : neuron + 1]])
    col = w_out[:, neuron : neuron + 1]
    w_out = torch.cat([w_out, (1.0 - alpha) * col], dim=1)
    w_out[:, neuron : neuron + 1] = alpha * col
    weights[layer + 1] = w_out
    return net.replace(weights, biases)


def null_embedding(net, layer: int, incoming=None, bias=None) -> FCNet:
    """One-step null embedding: append a neuron with zero outgoing weights to hidden ``layer``.

    ``incoming`` (``(fan_in,)``, default zeros) and ``bias`` (default 0; ignored if the layer
    has no bias) are the new neuron's arbitrary incoming weights. The output is unchanged for
    any of them; the embedding is *critical* only if the new outgoing weights' gradient
    ``(1/n) Σ_i r_i σ(incoming·h(x_i) + bias)`` vanishes too (always for zero incoming weights
    and ``σ(0) = 0``).
    """
    net = as_fcnet(net)
    layer = _check_layer(net, layer)
    w_in, b_in, w_out = net.weights[layer], net.biases[layer], net.weights[layer + 1]
    fan_in = w_in.shape[1]
    if incoming is None:
        incoming = torch.zeros(fan_in, dtype=net.dtype, device=net.device)
    incoming = as_tensor(incoming, "incoming", dtype=net.dtype, device=net.device)
    if incoming.shape != (fan_in,):
        raise ValueError(f"incoming must have shape ({fan_in},), got {tuple(incoming.shape)}")
    check_finite(incoming, "incoming")
    weights, biases = list(net.weights), list(net.biases)
    weights[layer] = torch.cat([w_in, incoming[None]], dim=0)
    if b_in is not None:
        b = 0.0 if bias is None else check_real(bias, "bias")
        biases[layer] = torch.cat([b_in, b_in.new_full((1,), b)])
    weights[layer + 1] = torch.cat([w_out, w_out.new_zeros(w_out.shape[0], 1)], dim=1)
    return net.replace(weights, biases)


@dataclass(frozen=True)
class Split:
    """A one-step splitting embedding ``T^α_{l,s}`` as a composable step."""

    layer: int
    neuron: int
    alpha: float = 0.5

    def __call__(self, net) -> FCNet:
        return split_neuron(net, self.layer, self.neuron, self.alpha)


@dataclass(frozen=True)
class Null:
    """A one-step null embedding as a composable step (``incoming`` None means zeros)."""

    layer: int
    incoming: torch.Tensor | None = None
    bias: float | None = None

    def __call__(self, net) -> FCNet:
        return null_embedding(net, self.layer, self.incoming, self.bias)


def compose(net, steps: Sequence[Callable[[FCNet], FCNet]]) -> FCNet:
    """Apply one-step embeddings in order: ``T_k ∘ … ∘ T_1 (θ)`` (a composition is again an
    embedding, critical if every step is)."""
    out = as_fcnet(net)
    for step in steps:
        out = step(out)
    return out


# -- general compatible embedding ----------------------------------------------------------------
def _check_maps(net: FCNet, index_maps, alphas, null_incoming):
    widths = net.widths
    if len(index_maps) != len(widths):
        raise ValueError(
            f"index_maps must have one map per hidden layer ({len(widths)}), got {len(index_maps)}"
        )
    maps, alphas_out = [], []
    for l, (m, pi) in enumerate(zip(widths, index_maps, strict=True)):
        pi = [
            None if k is None else check_int(k, f"index_maps[{l}][{i}]") for i, k in enumerate(pi)
        ]
        bad = [k for k in pi if k is not None and not 0 <= k < m]
        if bad:
            raise ValueError(
                f"index_maps[{l}] must map onto neurons 0..{m - 1} of hidden layer {l} (or None "
                f"for a null neuron), got {bad}"
            )
        missing = sorted(set(range(m)) - {k for k in pi if k is not None})
        if missing:
            raise ValueError(
                f"index_maps[{l}] is not onto: neurons {missing} of hidden layer {l} have no copy "
                "(an embedding must keep every neuron of the narrow network)"
            )
        counts = torch.bincount(torch.tensor([k for k in pi if k is not None]), minlength=m)
        if alphas is None:
            a = [0.0 if k is None else 1.0 / int(counts[k]) for k in pi]
        else:
            a = list(alphas[l])
            if len(a) != len(pi):
                raise ValueError(
                    f"alphas[{l}] must have one entry per wide neuron ({len(pi)}), got {len(a)}"
                )
            a = [
                0.0 if k is None else check_real(v, f"alphas[{l}][{i}]")
                for i, (k, v) in enumerate(zip(pi, a, strict=True))
            ]
            sums = [0.0] * m
            for k, v in zip(pi, a, strict=True):
                if k is not None:
                    sums[k] += v
            off = [(j, s) for j, s in enumerate(sums) if abs(s - 1.0) > 1e-9]
            if off:
                j, s = off[0]
                raise ValueError(
                    f"alphas[{l}]: the splitting factors of the copies of neuron {j} must sum to 1 "
                    f"(compatibility condition of the embedding), got {s!r}"
                    + (f" ({len(off)} neurons violate it)" if len(off) > 1 else "")
                )
        maps.append(pi)
        alphas_out.append(a)
    nulls = [[i for i, k in enumerate(pi) if k is None] for pi in maps]
    incoming = []
    for l in range(len(maps)):
        fan_in = net.in_dim if l == 0 else len(maps[l - 1])
        given = None if null_incoming is None else null_incoming[l]
        n_null = len(nulls[l])
        if given is None:
            w = torch.zeros(n_null, fan_in, dtype=net.dtype, device=net.device)
        else:
            w = as_tensor(given, f"null_incoming[{l}]", dtype=net.dtype, device=net.device)
            if w.shape != (n_null, fan_in):
                raise ValueError(
                    f"null_incoming[{l}] must be (n_null={n_null}, wide fan_in={fan_in}), got "
                    f"{tuple(w.shape)}"
                )
            check_finite(w, f"null_incoming[{l}]")
            if l and n_null and bool(w[:, nulls[l - 1]].ne(0).any()):
                raise ValueError(
                    f"null_incoming[{l}] must be 0 on the columns of the null neurons "
                    f"{nulls[l - 1]} of layer {l - 1} (their outgoing weights are zero)"
                )
        incoming.append(w)
    return maps, alphas_out, incoming


def compatible_embedding(net, index_maps, alphas=None, null_incoming=None) -> FCNet:
    """The general compatible embedding of Zhang et al. (2021, §4; 2022, §5).

    ``index_maps[l]`` lists, for every neuron ``k`` of the wide hidden layer ``l``, the narrow
    neuron ``π_l(k)`` it copies, or None for a *null* neuron. ``alphas[l][k]`` is the share of
    ``π_l(k)``'s outgoing weights that copy ``k`` carries (default: equal shares ``1/#copies``).
    The wide network is

        W'_l[k, k'] = α_{l-1}[k'] · W_l[π_l(k), π_{l-1}(k')],   b'_l[k] = b_l[π_l(k)],

    with ``α_0 ≡ 1`` and identity maps at the input and output; the columns of null neurons are
    zero and their rows are ``null_incoming[l]`` (``(n_null, m'_{l-1})``, default 0; their bias is
    0). Compatibility conditions, checked with an error naming the violation: every ``π_l`` is
    onto ``[m_l]`` and the shares of each neuron's copies sum to one,
    ``Σ_{k: π_l(k) = j} α_l[k] = 1``. Equivalent to a composition of :func:`split_neuron` and
    :func:`null_embedding` steps followed by a permutation of neurons; critical whenever its null
    neurons are (see :func:`null_embedding`).
    """
    net = as_fcnet(net)
    if len(net.weights) == 1:
        raise ValueError("the network has no hidden layer to embed into")
    maps, alphas, incoming = _check_maps(net, index_maps, alphas, null_incoming)
    opts = {"dtype": net.dtype, "device": net.device}
    weights, biases = [], []
    n_layers = len(net.weights)
    for l, (w, b) in enumerate(net.layers()):
        rows = maps[l] if l < n_layers - 1 else list(range(net.out_dim))
        cols = maps[l - 1] if l else list(range(net.in_dim))
        scale = torch.tensor(alphas[l - 1], **opts) if l else torch.ones(len(cols), **opts)
        real_r = [i for i, k in enumerate(rows) if k is not None]
        real_c = [i for i, k in enumerate(cols) if k is not None]
        new_w = torch.zeros(len(rows), len(cols), **opts)
        block = w[[rows[i] for i in real_r]][:, [cols[i] for i in real_c]] * scale[real_c]
        new_w[torch.tensor(real_r, dtype=torch.long)[:, None], torch.tensor(real_c)] = block
        null_r = [i for i, k in enumerate(rows) if k is None]
        if null_r:
            new_w[null_r] = incoming[l]
        weights.append(new_w)
        if b is None:
            biases.append(None)
        else:
            new_b = torch.zeros(len(rows), **opts)
            new_b[real_r] = b[[rows[i] for i in real_r]]
            biases.append(new_b)
    return net.replace(weights, biases)


@dataclass(frozen=True)
class EmbeddingFamily:
    """The affine family ``{T_α θ}`` of compatible embeddings of one narrow point with a fixed
    index map: the splitting shares range over ``Σ_{π(k)=j} α_k = 1`` (:func:`embedding_family`).

    ``point(z)`` is the wide network at free coordinates ``z`` (``dimension`` numbers: for each
    narrow neuron with ``c`` copies, the shares of its first ``c − 1`` copies, offset from the
    base shares; the last copy takes the rest); ``basis()`` the ``(P', dimension)`` matrix of the
    family's directions in :meth:`FCNet.flat` order (exact: ``θ'`` is affine in the shares).
    """

    net: FCNet
    index_maps: list
    alphas: list
    null_incoming: list
    free: list  # (layer, copy index, last copy index) per free coordinate

    @property
    def dimension(self) -> int:
        """Σ_l (m'_l − m_l − #null_l): the number of free splitting shares (the count of Zhang et
        al. 2021 for the critical affine subspace; it is the rank of :meth:`basis` unless a narrow
        neuron's outgoing weights vanish)."""
        return len(self.free)

    def point(self, z=None) -> FCNet:
        alphas = [list(a) for a in self.alphas]
        if z is not None:
            z = as_tensor(z, "z", dtype=torch.float64).reshape(-1)
            if z.numel() != self.dimension:
                raise ValueError(f"z must have {self.dimension} entries, got {z.numel()}")
            for (l, k, last), t in zip(self.free, z.tolist(), strict=True):
                alphas[l][k] += t
                alphas[l][last] -= t
        return compatible_embedding(self.net, self.index_maps, alphas, self.null_incoming)

    def basis(self) -> torch.Tensor:
        base = self.point().flat()
        eye = torch.eye(self.dimension, dtype=torch.float64)
        cols = [self.point(e).flat() - base for e in eye]
        return torch.stack(cols, dim=1) if cols else base.new_zeros(base.numel(), 0)


def embedding_family(net, index_maps, alphas=None, null_incoming=None) -> EmbeddingFamily:
    """The embedded critical manifold through :func:`compatible_embedding` ``(net, …)``.

    Every member computes the same function as ``net``; if ``net`` is a critical point (and the
    null neurons are critical, e.g. zero incoming weights), every member is a critical point of
    the wide loss with the same loss value — an affine subspace of critical points of dimension
    ``Σ_l (m'_l − m_l − #null_l)`` (Zhang et al. 2021, §4: each extra copy adds one free share).
    """
    net = as_fcnet(net)
    maps, alphas, incoming = _check_maps(net, index_maps, alphas, null_incoming)
    free = []
    for l, pi in enumerate(maps):
        groups: dict[int, list[int]] = {}
        for k, j in enumerate(pi):
            if j is not None:
                groups.setdefault(j, []).append(k)
        for copies in groups.values():
            free += [(l, k, copies[-1]) for k in copies[:-1]]
    return EmbeddingFamily(net, maps, alphas, incoming, free)


# -- Hessian of a split neuron -------------------------------------------------------------------
def splitting_matrix(net, x, y, layer: int, neuron: int) -> torch.Tensor:
    """``S = (1/n) Σ_i g_i σ''(z_i) h̃_i h̃_iᵀ`` for neuron ``s`` of hidden ``layer``.

    ``z_i`` is the neuron's pre-activation on sample ``i``, ``h̃_i`` its input (with a trailing 1
    when the layer has a bias) and ``g_i = ∂(½‖f(x_i) − y_i‖²)/∂σ(z_i)`` the back-propagated
    residual. After the split ``T^α_{l,s}``, the loss Hessian along the incoming-weight difference
    ``(w_1, w_2) = (w + (1 − α)δ, w − αδ)`` is ``α(1 − α) δᵀSδ`` (the "splitting matrix" of
    Liu et al. 2019; Zhang et al. 2022 §6). For a one-hidden-layer, single-output network at a
    critical point with ``a_s ≠ 0`` this block, one zero (the share direction) and the narrow
    Hessian are congruent to the wide Hessian, so by Sylvester's law of inertia

        inertia(wide) = inertia(narrow) + (0, 1, 0) + inertia(α(1 − α) S).
    """
    net = as_fcnet(net)
    layer = _check_layer(net, layer)
    neuron = check_int(neuron, "neuron", minimum=0)
    if neuron >= net.widths[layer]:
        raise ValueError(f"neuron must be < width {net.widths[layer]}, got {neuron}")
    x = as_tensor(x, "x", dtype=net.dtype, device=net.device)
    y = as_tensor(y, "y", dtype=net.dtype, device=net.device)
    if y.ndim == 1:
        y = y[:, None]
    h = x
    for w, b in net.layers()[:layer]:
        h = net.activation(F.linear(h, w, b))
    w, b = net.layers()[layer]
    z = F.linear(h, w, b).detach().requires_grad_(True)
    post = net.activation(z)
    rest = net.replace(net.weights[layer + 1 :], net.biases[layer + 1 :])
    if len(rest.weights) == 1:
        out = F.linear(post, rest.weights[0], rest.biases[0])
    else:
        out = rest(post)
    if out.shape != y.shape:
        raise ValueError(f"y must have shape {tuple(out.shape)}, got {tuple(y.shape)}")
    (g,) = torch.autograd.grad(0.5 * (out - y).square().sum(), post)
    zs = z[:, neuron].detach().requires_grad_(True)
    (d1,) = torch.autograd.grad(net.activation(zs).sum(), zs, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), zs)
    ht = h.detach() if b is None else torch.cat([h.detach(), h.new_ones(h.shape[0], 1)], dim=1)
    weight = g[:, neuron] * d2 / x.shape[0]
    return (ht * weight[:, None]).T @ ht
