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
  dimension is the number of free α's, ``Σ_l (m'_l − m_l)`` less the null neurons, plus the
  free incoming weights of null neurons (see :func:`embedding_family`).

References
----------
Zhang, Zhang, Luo, Xu (2021). Embedding Principle of Loss Landscape of Deep Neural Networks.
NeurIPS. arXiv:2105.14573.
Zhang, Zhang, Luo, Xu (2022). Embedding Principle: a hierarchical structure of loss landscape
of deep neural networks. J. Mach. Learn. 1(1). arXiv:2111.15527.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from widenet._checks import as_tensor, check_finite, check_int, check_real
from widenet.layers import Dense, Elementwise

__all__ = [
    "FCNet",
    "Null",
    "Split",
    "as_fcnet",
    "compose",
    "null_embedding",
    "split_neuron",
]


@dataclass(frozen=True)
class FCNet:
    """A fully-connected network as plain tensors: ``f(x) = W_L σ(… σ(W_1 x + b_1) …) + b_L``.

    ``weights[l]`` is ``(out, in)`` (``nn.Linear``'s layout) and holds the *effective* weight
    (an NTK-parameterized :class:`widenet.Dense` contributes ``weight_scale · W``);
    ``biases[l]`` is ``(out,)`` or None; ``activation`` is applied after every layer but the
    last. ``activation_module`` (optional) is the module that :meth:`to_module` copies.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor | None]
    activation: Callable[[torch.Tensor], torch.Tensor]
    activation_module: nn.Module | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        weights = [as_tensor(w, f"weights[{i}]") for i, w in enumerate(self.weights)]
        if not weights:
            raise ValueError("weights must hold at least one (out, in) matrix, got none")
        if len(self.biases) != len(weights):
            raise ValueError(
                f"biases must have one entry (tensor or None) per layer: {len(weights)} "
                f"weights but {len(self.biases)} biases"
            )
        biases = []
        for i, (w, b) in enumerate(zip(weights, self.biases, strict=True)):
            if w.ndim != 2:
                raise ValueError(f"weights[{i}] must be (out, in), got shape {tuple(w.shape)}")
            if i and w.shape[1] != weights[i - 1].shape[0]:
                raise ValueError(
                    f"weights[{i}] takes {w.shape[1]} inputs but layer {i - 1} has "
                    f"{weights[i - 1].shape[0]} outputs"
                )
            if w.dtype != weights[0].dtype or w.device != weights[0].device:
                raise TypeError("all weights must share one dtype and device")
            check_finite(w, f"weights[{i}]")
            if b is not None:
                b = as_tensor(b, f"biases[{i}]", dtype=w.dtype, device=w.device)
                if b.shape != (w.shape[0],):
                    raise ValueError(
                        f"biases[{i}] must have shape ({w.shape[0]},), got {tuple(b.shape)}"
                    )
                check_finite(b, f"biases[{i}]")
            biases.append(b)
        if not callable(self.activation):
            raise TypeError(f"activation must be callable, got {self.activation!r}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "biases", biases)

    # -- views ---------------------------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        """Hidden widths ``[m_1, …, m_{L-1}]``."""
        return [w.shape[0] for w in self.weights[:-1]]

    @property
    def in_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def out_dim(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    @property
    def num_parameters(self) -> int:
        return sum(w.numel() + (0 if b is None else b.numel()) for w, b in self.layers())

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return list(zip(self.weights, self.biases, strict=True))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = as_tensor(x, "x", dtype=self.dtype, device=self.device)
        if h.ndim != 2 or h.shape[1] != self.in_dim:
            raise ValueError(f"x must be (n, {self.in_dim}), got shape {tuple(h.shape)}")
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(self.layers()):
            h = F.linear(h, w, b)
            if i < last:
                h = self.activation(h)
        return h

    def replace(self, weights, biases) -> FCNet:
        """The same architecture family (activation) with new weights and biases."""
        return FCNet(list(weights), list(biases), self.activation, self.activation_module)

    def to(self, *args, **kwargs) -> FCNet:
        """Move / cast every tensor (``torch.Tensor.to`` arguments)."""
        return self.replace(
            [w.to(*args, **kwargs) for w in self.weights],
            [None if b is None else b.to(*args, **kwargs) for b in self.biases],
        )

    # -- conversions ---------------------------------------------------------------------------
    @classmethod
    def from_module(cls, model: nn.Module) -> FCNet:
        """Read a ``Linear, act, Linear, act, …, Linear`` ``nn.Sequential`` (nesting flattened).

        Accepts widenet's ``mlp(...).network(...)`` (NTK-parameterized :class:`widenet.Dense`,
        whose scales are folded into the effective weights) and plain ``nn.Linear`` layers with
        any parameter-free activation module (``nn.Tanh()``, ``nn.ReLU()``, ``Elementwise``…);
        every hidden layer must use the same activation.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        mods = list(_flatten(model))
        linears, acts = mods[0::2], mods[1::2]
        if not mods or not all(isinstance(m, nn.Linear) for m in linears) or len(mods) % 2 == 0:
            raise ValueError(
                "model must be an nn.Sequential alternating nn.Linear and activation modules, "
                f"starting and ending with nn.Linear; got {[type(m).__name__ for m in mods]}"
            )
        for m in acts:
            if isinstance(m, nn.Linear) or any(True for _ in m.parameters()):
                raise ValueError(
                    f"model: expected a parameter-free activation between linear layers, got "
                    f"{type(m).__name__}"
                )
            if _act_key(m) != _act_key(acts[0]):
                raise ValueError(
                    "model: every hidden layer must use the same activation, got "
                    f"{acts[0]!r} and {m!r}"
                )
        weights, biases = [], []
        with torch.no_grad():
            for lin in linears:
                w_scale = getattr(lin, "weight_scale", 1.0) if isinstance(lin, Dense) else 1.0
                b_scale = getattr(lin, "bias_scale", 1.0) if isinstance(lin, Dense) else 1.0
                weights.append(lin.weight.detach().clone() * w_scale)
                biases.append(None if lin.bias is None else lin.bias.detach().clone() * b_scale)
        act = acts[0] if acts else nn.Identity()
        fn = act.fn if isinstance(act, Elementwise) else act
        return cls(weights, biases, fn, act)

    def to_module(self) -> nn.Sequential:
        """An equivalent ``nn.Sequential`` of ``nn.Linear`` + activation (standard param.)."""
        act = self.activation_module
        if act is None:
            act = Elementwise(self.activation, getattr(self.activation, "__name__", "activation"))
        layers: list[nn.Module] = []
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(self.layers()):
            lin = nn.Linear(
                w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device
            )
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            layers.append(lin)
            if i < last:
                layers.append(copy.deepcopy(act))
        return nn.Sequential(*layers)


def _flatten(model: nn.Module):
    if isinstance(model, nn.Sequential):
        for m in model:
            yield from _flatten(m)
    else:
        yield model


def _act_key(m: nn.Module):
    return (type(m), getattr(m, "fn", None), repr(m))


def as_fcnet(model) -> FCNet:
    """``model`` itself if it is an :class:`FCNet`, else :meth:`FCNet.from_module`."""
    return model if isinstance(model, FCNet) else FCNet.from_module(model)


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
