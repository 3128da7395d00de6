"""Fully-connected networks as plain tensors (:class:`FCNet`), and reading them from files.

``FCNet`` is the network type shared by :mod:`widenet.embedding`, :mod:`widenet.landscape`,
:mod:`widenet.condensation` and the command line: ``f(x) = W_L σ(… σ(W_1 x + b_1) …) + b_L`` with
*effective* weights (what multiplies the inputs), whatever parameterization produced them.

Parameterization names are the same everywhere in widenet
(:data:`widenet.layers.PARAMETERIZATIONS`):

* ``"standard"`` — the stored tensors are the effective weights (``nn.Linear``, or a
  :class:`widenet.Dense` in the standard parameterization: the same forward function);
* ``"ntk"`` — the stored tensors are widenet's NTK-parameterized ones (``wn.mlp(...).network``),
  effective weights ``w_std/sqrt(fan_in)·W`` and ``b_std·b`` (Jacot et al. 2018).

Model files are read as data only (:func:`widenet.io.load_state_dict`: safetensors, or
``torch.load(weights_only=True)``); the architecture comes from the caller (activation,
parameterization, optionally the layer sizes), never from pickled code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from widenet._checks import as_tensor, check_finite, check_real
from widenet.layers import Dense, Elementwise

__all__ = [
    "FCNet",
    "PARAMETERIZATION_ALIASES",
    "as_fcnet",
    "canonical_parameterization",
    "load_state_dict",
    "mlp_from_state_dict",
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

    def flat(self) -> torch.Tensor:
        """All parameters as one vector, in ``to_module().parameters()`` order (W_1, b_1, …)."""
        return torch.cat(
            [t.reshape(-1) for w, b in self.layers() for t in ((w,) if b is None else (w, b))]
        )

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

    @classmethod
    def from_state_dict(
        cls,
        state: dict,
        activation="relu",
        *,
        parameterization: str = "standard",
        w_std: float = 1.0,
        b_std: float = 1.0,
        layers: Sequence[int] | None = None,
    ) -> FCNet:
        """Read the state dict of a ``Linear, act, …, Linear`` ``nn.Sequential``.

        Layers are the 2-D ``<prefix>.weight`` entries in numeric prefix order (``0.weight``,
        ``2.weight``, …) with their ``<prefix>.bias``; ``activation`` is a name for
        :func:`widenet.activations.get`. With ``parameterization="ntk"`` the stored parameters
        are widenet's NTK-parameterized ones (``wn.mlp(..., w_std, b_std).network``) and are
        scaled to effective weights ``w_std/sqrt(fan_in)·W``, ``b_std·b``. ``layers`` (``[in,
        hidden…, out]``), when given, must match the stored shapes.
        """
        from widenet import activations
        from widenet.layers import PARAMETERIZATIONS

        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
            )
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise TypeError("state must be a dict of tensors (a state dict)")
        prefixes = [k[: -len(".weight")] for k, v in state.items() if k.endswith(".weight")]
        if not prefixes:
            raise ValueError(f"state has no '<layer>.weight' entries; keys: {sorted(state)}")

        def order(prefix):
            parts = prefix.split(".")
            return [int(p) if p.isdigit() else p for p in parts]

        prefixes.sort(key=order)
        unknown = set(state) - {f"{p}.{n}" for p in prefixes for n in ("weight", "bias")}
        if unknown:
            raise ValueError(f"state has entries that are not Linear parameters: {sorted(unknown)}")
        weights, biases = [], []
        for p in prefixes:
            w = as_tensor(state[f"{p}.weight"], f"{p}.weight")
            if w.ndim != 2:
                raise ValueError(f"{p}.weight must be 2-D (out, in), got {tuple(w.shape)}")
            b = state.get(f"{p}.bias")
            if parameterization == "ntk":
                w = w * (check_real(w_std, "w_std") / w.shape[1] ** 0.5)
                b = None if b is None else b * check_real(b_std, "b_std")
            weights.append(w)
            biases.append(b)
        if layers is not None:
            stored = [weights[0].shape[1], *(w.shape[0] for w in weights)]
            if list(layers) != stored:
                raise ValueError(f"layers {list(layers)} do not match the stored sizes {stored}")
        act = activations.get(activation)
        return cls(weights, biases, act.fn, Elementwise(act.fn, act.name))

    def save(self, path) -> None:
        """Write :meth:`to_module`'s state dict (standard parameterization) to ``path``:
        safetensors for a ``.safetensors`` suffix, else ``torch.save``."""
        from pathlib import Path

        path = Path(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.to_module().state_dict().items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(path))
        else:
            torch.save(state, path)


def load_state_dict(path, option: str = "model file") -> dict:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file read with
    ``weights_only=True`` (no pickled code is executed); see :func:`widenet.io.load_state_dict`."""
    from widenet import io

    return io.load_state_dict(path, option)


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


# Accepted spellings of the parameterization names (older command lines said "plain").
PARAMETERIZATION_ALIASES = {"plain": "standard", "standard": "standard", "ntk": "ntk"}


def canonical_parameterization(name: str, option: str = "parameterization") -> str:
    """``"standard"`` or ``"ntk"`` (``"plain"`` is an alias of ``"standard"``)."""
    if name not in PARAMETERIZATION_ALIASES:
        raise ValueError(f"{option} must be standard or ntk, got {name!r}")
    return PARAMETERIZATION_ALIASES[name]


def mlp_from_state_dict(
    state: dict,
    activation: str = "relu",
    *,
    parameterization: str = "standard",
    w_std: float = 1.0,
    b_std: float = 0.0,
) -> nn.Sequential:
    """An ``nn.Sequential`` (Linear/Dense, activation, …, Linear) whose ``state_dict`` keys are
    ``state``'s (``0.weight``, ``0.bias``, ``2.weight``, …), with the tensors loaded.

    Unlike :class:`FCNet` this keeps the stored parameters as they are (for measures that compare
    two states of one network, :func:`widenet.regime.classify`): ``"standard"`` gives
    ``nn.Linear`` layers, ``"ntk"`` NTK-parameterized :class:`widenet.Dense` layers with
    ``w_std``/``b_std``.
    """
    import re

    from widenet import activations

    parameterization = canonical_parameterization(parameterization)
    idx = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"(\d+)\.weight", k))})
    if not idx or any(not re.fullmatch(r"\d+\.(weight|bias)", k) for k in state):
        raise ValueError(
            "the state dict must be an nn.Sequential MLP ('0.weight', '0.bias', '2.weight', ...)"
        )
    act = activations.get(activation)
    layers: list[nn.Module] = []
    for j, i in enumerate(idx):
        w = state[f"{i}.weight"]
        if w.ndim != 2:
            raise ValueError(f"{i}.weight must be a matrix, got shape {tuple(w.shape)}")
        while len(layers) < i:
            layers.append(Elementwise(act.fn, act.name))
        bias = f"{i}.bias" in state
        if parameterization == "standard":
            layers.append(nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype))
        else:
            if not bias:
                raise ValueError(f"widenet Dense layers have a bias; {i}.bias is missing")
            layers.append(Dense(w.shape[1], w.shape[0], w_std=w_std, b_std=b_std, dtype=w.dtype))
        if j < len(idx) - 1 and idx[j + 1] != i + 2:
            raise ValueError("expected exactly one activation between consecutive linear layers")
    model = nn.Sequential(*layers)
    model.load_state_dict(state)
    return model
