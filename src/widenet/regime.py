"""Which regime did a trained network train in? Lazy (NTK), intermediate, or condensed.

Given any ``torch.nn.Module`` (its architecture), its initial and trained states and some
inputs, three families of measures are computed:

* **relative parameter change** ``‖θ_T − θ_0‖ / ‖θ_0‖`` over all parameters, per parameter
  tensor, and for the first layer's input weights (the order parameter RD of Luo et al. 2021,
  bias included);
* **empirical-NTK change** ``‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F`` on (up to ``ntk_points`` of) the inputs,
  Θ from :func:`widenet.empirical_ntk` (trace over outputs): the kernel is frozen in the lazy
  regime (Jacot et al. 2018; Chizat, Oyallon, Bach 2019);
* **condensation of the first layer** (Luo et al. 2021; Zhou et al. 2022): neurons are grouped by
  the direction of their input weights (w_k, b_k) with :func:`widenet.condensation.group_neurons`
  (complete linkage, cosine ≥ ``cosine``); the *number of directions* of a state is the least
  number of groups that hold a share ``mass`` of the layer's squared amplitude Σ_k ‖(w_k, b_k)‖²
  (small neurons that never grew do not count). ``direction_ratio`` = directions after / before
  training. For widenet's ``Dense`` layers the effective weights (scale × parameter) are used.

Summary (thresholds in :class:`Thresholds`, all reported):

* ``"lazy"``: parameter change ≤ ``lazy_change`` and NTK change ≤ ``lazy_ntk_change``;
* ``"condensed"``: first-layer change ≥ ``condensed_change`` and direction ratio ≤
  ``condensed_ratio`` (the input weights moved far *and* onto fewer directions);
* ``"intermediate"``: anything else (features move, kernel changes, no condensation).

References
----------
Luo, Xu, Ma, Zhang (2021). Phase diagram for two-layer ReLU neural networks at infinite-width
limit. JMLR 22(71). Chizat, Oyallon, Bach (2019). On Lazy Training in Differentiable
Programming. NeurIPS. Zhou, Zhou, Luo, Zhang, Xu (2022). Towards understanding the condensation
of neural networks at initial training. NeurIPS.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from widenet._checks import as_tensor, check_finite, check_int, check_real
from widenet.condensation import group_neurons

__all__ = ["REGIMES", "RegimeReport", "Thresholds", "classify", "directions", "first_linear"]

REGIMES = ("lazy", "intermediate", "condensed")


@dataclass(frozen=True)
class Thresholds:
    """The cut-offs of :func:`classify` (see the module docstring)."""

    lazy_change: float = 0.1
    lazy_ntk_change: float = 0.1
    condensed_change: float = 1.0
    condensed_ratio: float = 0.5
    cosine: float = 0.9
    mass: float = 0.9

    def __post_init__(self):
        for name in ("lazy_change", "lazy_ntk_change", "condensed_change", "condensed_ratio"):
            check_real(getattr(self, name), name, minimum=0.0)
        cosine = check_real(self.cosine, "cosine")
        if not -1.0 <= cosine <= 1.0:
            raise ValueError(f"cosine must be in [-1, 1], got {cosine}")
        mass = check_real(self.mass, "mass", minimum=0.0, strict=True)
        if mass > 1.0:
            raise ValueError(f"mass must be in (0, 1], got {mass}")


@dataclass
class RegimeReport:
    """The verdict and every number behind it."""

    regime: str
    reason: str
    parameter_change: float
    first_layer: str
    first_layer_change: float
    ntk_change: float | None
    width: int
    neurons_grouped: int
    groups_initial: int
    groups_trained: int
    directions_initial: int
    directions_trained: int
    direction_ratio: float
    layer_changes: dict[str, float | None] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def as_dict(self) -> dict:
        return asdict(self)


def first_linear(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """The first ``nn.Linear`` of ``model`` (module order) or the one named ``layer``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules or not isinstance(modules[layer], nn.Linear):
            names = [k for k, m in modules.items() if isinstance(m, nn.Linear)]
            raise ValueError(f"layer {layer!r} is not an nn.Linear of the model; linear: {names}")
        return layer, modules[layer]
    for name, m in modules.items():
        if isinstance(m, nn.Linear):
            return name, m
    raise ValueError("model has no nn.Linear layer whose neurons could be grouped")


def _effective(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    # widenet's Dense computes weight_scale * W x + bias_scale * b.
    w = lin.weight.detach() * getattr(lin, "weight_scale", 1.0)
    b = None if lin.bias is None else lin.bias.detach() * getattr(lin, "bias_scale", 1.0)
    return w, b


def directions(weight, bias=None, *, cosine: float = 0.9, mass: float = 0.9, keep=None):
    """(number of groups, least number of groups holding ``mass`` of Σ‖(w_k, b_k)‖²).

    ``keep``: indices of the neurons to group (default all).
    """
    w = as_tensor(weight, "weight").detach()
    b = None if bias is None else as_tensor(bias, "bias", dtype=w.dtype, device=w.device)
    if keep is not None:
        w = w[keep]
        b = None if b is None else b[keep]
    labels = group_neurons(w, b, threshold=cosine)
    amp2 = (w**2).sum(1) + (0.0 if b is None else b**2)
    group_mass = torch.zeros(int(labels.max()) + 1, dtype=amp2.dtype, device=amp2.device)
    group_mass.index_add_(0, labels, amp2)
    sorted_mass = torch.sort(group_mass, descending=True).values
    cum = torch.cumsum(sorted_mass, 0) / sorted_mass.sum().clamp_min(1e-300)
    # 1e-12: a share exactly at `mass` counts as reached despite rounding in the sum.
    count = int(torch.searchsorted(cum, torch.tensor(mass - 1e-12, dtype=cum.dtype)).item()) + 1
    return len(group_mass), min(count, len(group_mass))


def _state(state, name: str) -> dict[str, torch.Tensor]:
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a state dict or an nn.Module, got {type(state).__name__}")
    return {k: v.detach() for k, v in state.items()}


def _with_state(model: nn.Module, state: dict, name: str) -> nn.Module:
    m = copy.deepcopy(model)
    try:
        m.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{name} does not fit the model: {err}") from None
    return m.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a.detach(), b.detach()
    na = float(torch.linalg.vector_norm(a.double()))
    if na == 0.0:
        return None
    return float(torch.linalg.vector_norm(b.double() - a.double())) / na


def classify(
    model: nn.Module,
    initial,
    trained,
    x,
    *,
    thresholds: Thresholds | None = None,
    layer: str | None = None,
    ntk_points: int = 128,
    max_neurons: int = 2000,
) -> RegimeReport:
    """Classify the training of ``model`` from ``initial`` to ``trained`` on inputs ``x``.

    Parameters
    ----------
    model : the architecture (its own parameter values are not used; copies are loaded).
    initial, trained : state dicts (or modules) of the same architecture.
    x : inputs (n, *features) for the empirical NTK (the first ``ntk_points`` rows); ``None``
        skips the NTK measure (then only the parameter change decides "lazy").
    layer : name of the ``nn.Linear`` whose neurons are grouped (default the first).
    max_neurons : group at most this many neurons (the largest after training; grouping is
        O(width²) in memory), reported as ``neurons_grouped``.
    """
    import widenet as wn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    th = Thresholds() if thresholds is None else thresholds
    if not isinstance(th, Thresholds):
        raise TypeError(f"thresholds must be a regime.Thresholds, got {type(th).__name__}")
    ntk_points = check_int(ntk_points, "ntk_points", minimum=1)
    max_neurons = check_int(max_neurons, "max_neurons", minimum=2)
    s0, s1 = _state(initial, "initial"), _state(trained, "trained")
    if s0.keys() != s1.keys():
        raise ValueError("initial and trained have different parameter names")
    m0, m1 = _with_state(model, s0, "initial"), _with_state(model, s1, "trained")
    params0 = dict(m0.named_parameters())
    params1 = dict(m1.named_parameters())
    layer_changes = {k: _rel(params0[k], params1[k]) for k in params0}
    flat0 = torch.cat([p.detach().double().reshape(-1).cpu() for p in params0.values()])
    flat1 = torch.cat([params1[k].detach().double().reshape(-1).cpu() for k in params0])
    change = _rel(flat0, flat1)
    if change is None:
        raise ValueError("the initial parameters are all zero: relative change undefined")

    name, lin0 = first_linear(m0, layer)
    _, lin1 = first_linear(m1, name)
    w0, b0 = _effective(lin0)
    w1, b1 = _effective(lin1)
    first0 = w0 if b0 is None else torch.cat([w0, b0[:, None]], 1)
    first1 = w1 if b1 is None else torch.cat([w1, b1[:, None]], 1)
    first_change = _rel(first0, first1)
    if first_change is None:  # a zero first layer at init: any motion is infinite relative change
        first_change = 0.0 if bool((first1 == 0).all()) else float("inf")
    width = w0.shape[0]
    keep = None
    if width > max_neurons:
        keep = torch.argsort((first1**2).sum(1), descending=True)[:max_neurons]
    g0, d0 = directions(w0, b0, cosine=th.cosine, mass=th.mass, keep=keep)
    g1, d1 = directions(w1, b1, cosine=th.cosine, mass=th.mass, keep=keep)
    ratio = d1 / d0

    ntk_change = None
    if x is not None:
        xs = as_tensor(x, "x")
        if xs.ndim < 2 or xs.shape[0] == 0:
            raise ValueError(f"x must be (n_samples, *features), got shape {tuple(xs.shape)}")
        check_finite(xs, "x")
        p = next(iter(params0.values()))
        xs = xs[:ntk_points].to(dtype=p.dtype, device=p.device)
        k0 = wn.empirical_ntk(m0, xs).detach()
        k1 = wn.empirical_ntk(m1, xs).detach()
        ntk_change = _rel(k0, k1)

    lazy = change <= th.lazy_change and (ntk_change is None or ntk_change <= th.lazy_ntk_change)
    condensed = first_change >= th.condensed_change and ratio <= th.condensed_ratio
    ntk_txt = "n/a" if ntk_change is None else f"{ntk_change:.3g}"
    if lazy:
        verdict = "lazy"
        reason = (
            f"parameters moved by {change:.3g} <= {th.lazy_change} and the NTK by {ntk_txt} "
            f"<= {th.lazy_ntk_change}"
        )
    elif condensed:
        verdict = "condensed"
        reason = (
            f"first-layer weights moved by {first_change:.3g} >= {th.condensed_change} and "
            f"onto {d1} directions from {d0} (ratio {ratio:.3g} <= {th.condensed_ratio})"
        )
    else:
        verdict = "intermediate"
        reason = (
            f"not lazy (parameter change {change:.3g}, NTK change {ntk_txt}) and not condensed "
            f"(first-layer change {first_change:.3g}, direction ratio {ratio:.3g})"
        )
    return RegimeReport(
        regime=verdict,
        reason=reason,
        parameter_change=change,
        first_layer=name,
        first_layer_change=float(first_change),
        ntk_change=ntk_change,
        width=int(width),
        neurons_grouped=int(width if keep is None else len(keep)),
        groups_initial=g0,
        groups_trained=g1,
        directions_initial=d0,
        directions_trained=d1,
        direction_ratio=float(ratio),
        layer_changes=layer_changes,
        thresholds=th,
    )
