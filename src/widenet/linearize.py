"""The first-order Taylor expansion of a network in its parameters, as a trainable module.

Lee et al. 2019 ("Wide neural networks of any depth evolve as linear models under gradient
descent", NeurIPS), Sec. 2.2: around the initial parameters θ0,

    f_lin(x; θ) = f(x; θ0) + J(x; θ0) (θ − θ0),        J(x; θ0) = ∂f(x; θ)/∂θ |_{θ=θ0}.

Training f_lin by gradient descent on a squared loss gives the closed-form dynamics of
:mod:`widenet.dynamics` with the empirical NTK Θ = J Jᵀ at θ0; for wide networks f and f_lin stay
close throughout training (Lee et al. 2019, Theorem 2.1).

The product J(x; θ0) (θ − θ0) is one Jacobian-vector product (forward-mode AD through
``torch.func.jvp`` over ``torch.func.functional_call``): the Jacobian is never materialised, so a
forward pass costs about three forward passes of the original network.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.utils._pytree import tree_map

from widenet.empirical import check_no_batch_coupling as _check_no_batch_coupling
from widenet.empirical import quiet_jit_deprecation as _quiet_jit_deprecation

__all__ = ["LinearizedModel", "linearize"]


def _safe_name(name: str) -> str:
    # register_parameter / register_buffer refuse dots; module paths use them.
    return name.replace(".", "__")


class LinearizedModel(nn.Module):
    """``f(x; θ0) + J(x; θ0)(θ − θ0)`` for a frozen copy θ0 of a model's parameters.

    Attributes:
        model: the original module, kept only as the function f (not registered as a
            submodule: its own parameter values are never read after linearization, and
            ``parameters()`` of the linearized model are exactly the θ below).
        θ: one ``nn.Parameter`` per trainable parameter of ``model`` (``requires_grad=True``),
            under the parameter's name with dots replaced by ``"__"`` (``"0.weight"`` →
            ``"0__weight"``), initialised to θ0. Any torch optimizer given ``parameters()``
            trains them.
        θ0: buffers ``"init__" + name`` (copies taken at linearization; never trained).
        Parameters of ``model`` with ``requires_grad=False`` and the model's buffers (e.g.
        eval-mode BatchNorm statistics) are copied to buffers ``"frozen__" + name`` and held
        fixed: the expansion is in the trainable parameters only.

    ``names`` maps each original parameter name to its attribute name.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_no_batch_coupling(model)
        # Not a submodule: its parameters must not show up in parameters() or state_dict().
        self.__dict__["model"] = model
        self.names: dict[str, str] = {}
        self._frozen: dict[str, str] = {}
        taken: set[str] = set()
        for name, p in model.named_parameters():
            safe = _safe_name(name)
            if safe in taken:
                raise ValueError(
                    f"model: parameter names {name!r} and another map to the same attribute "
                    f"{safe!r} once dots are replaced by '__'; rename one of them"
                )
            taken.add(safe)
            value = p.detach().clone()
            if p.requires_grad:
                self.names[name] = safe
                self.register_buffer("init__" + safe, value)
                self.register_parameter(safe, nn.Parameter(value.clone()))
            else:
                self._frozen[name] = "frozen__" + safe
                self.register_buffer("frozen__" + safe, value)
        for name, b in model.named_buffers():
            safe = "frozen__" + _safe_name(name)
            if safe in self._buffers:
                raise ValueError(f"model: buffer name {name!r} collides with another name")
            self._frozen[name] = safe
            self.register_buffer(safe, None if b is None else b.detach().clone())
        if not self.names:
            raise ValueError(
                "model has no parameters with requires_grad=True: there is nothing to linearize in"
            )

    def theta0(self) -> dict[str, torch.Tensor]:
        """θ0 under the model's parameter names."""
        return {name: getattr(self, "init__" + safe) for name, safe in self.names.items()}

    def theta(self) -> dict[str, torch.Tensor]:
        """θ (the trainable parameters) under the model's parameter names."""
        return {name: getattr(self, safe) for name, safe in self.names.items()}

    def forward(self, *args, **kwargs):
        # Checked again here: the model may have been switched to train() after linearization.
        _check_no_batch_coupling(self.model)
        frozen = {name: getattr(self, safe) for name, safe in self._frozen.items()}
        theta0 = self.theta0()
        delta = {n: p - theta0[n] for n, p in self.theta().items()}

        def f(params):
            return functional_call(self.model, {**params, **frozen}, args, kwargs)

        with _quiet_jit_deprecation():
            out, tangent = jvp(f, (theta0,), (delta,))
        return tree_map(lambda a, b: a + b, out, tangent)

    def extra_repr(self) -> str:
        n = sum(getattr(self, s).numel() for s in self.names.values())
        return f"model={type(self.model).__name__}, parameters={len(self.names)} tensors / {n}"


def linearize(model: nn.Module) -> LinearizedModel:
    """The linearization of ``model`` around its current parameters (Lee et al. 2019, Sec. 2.2).

        f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0)

    computed as ``f(x; θ0)`` plus one Jacobian-vector product (``torch.func.jvp`` over
    ``functional_call``), never forming J. θ0 are copies of ``model``'s trainable parameters
    taken now (stored as buffers); θ are new ``nn.Parameter`` objects initialised to θ0, with
    the parameters' names (dots → ``"__"``), so ``torch.optim.SGD(lin.parameters(), lr)``
    trains the linear model; at θ = θ0 it returns exactly ``model``'s outputs. Any output
    shape or pytree of tensors is supported, and positional/keyword arguments are passed to
    ``model``'s forward unchanged.

    Training-mode BatchNorm and Dropout are refused (ValueError; call ``model.eval()``): batch
    statistics and random masks make f not a fixed function of θ. Later changes to ``model``'s
    parameters do not affect the result (only its forward code is used).
    """
    return LinearizedModel(model)
