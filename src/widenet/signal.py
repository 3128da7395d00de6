r"""Signal propagation at initialization: measured on a model, predicted by mean-field theory.

:func:`signal_propagation` runs one forward and one backward pass of a model on inputs x and
records, for every weighted layer l = 1..L (``nn.Linear``/``nn.Conv*``, input to output):

    forward_variance[l] = mean over inputs and units of h_l^2   (h_l: the layer's output, the
                          pre-activation; q^l of the mean-field theory)
    delta_norm2[l]      = mean over inputs of ||dL/dh_l(x)||^2  (the back-propagated signal)
    grad_norm[l]        = ||dL/dW_l||_F, W_l the effective weight (NTK scales applied)

with L = sum_x <v_x, f(x)>, v_x ~ N(0, I) independent per input (seeded), unless a loss and
targets are given. Ratios: forward_ratio[l] = q^{l+1}/q^l, backward_ratio[l] = ||delta_l||^2 /
||delta_{l+1}||^2, backprop_ratio = ||delta_first|| / ||delta_last|| (the back-propagated
gradients of Glorot & Bengio 2010, Fig. 7) and grad_ratio = grad_norm[first] / grad_norm[last]
(the weight gradients).

The infinite-width prediction (Poole et al. 2016, Schoenholz et al. 2017, Pennington et al.
2017) for a chain Linear -> phi -> Linear -> ... -> Linear with W_l ~ (0, sigma_{w,l}^2 / fan_in),
b_l ~ (0, sigma_{b,l}^2), per input x with q^0(x) = ||x||^2 / d:

    q^l(x)          = sigma_{w,l}^2 T(q^{l-1}) + sigma_{b,l}^2     (T(q) = E[phi(sqrt(q) z)^2];
                                                                   T = identity for l = 1)
    chi_l(x)        = sigma_{w,l+1}^2 Tdot(q^l)                     (Tdot(q) = E[phi'(sqrt(q) z)^2])
    ||delta_l||^2   = chi_l ||delta_{l+1}||^2                      (||delta_last||^2 as measured)
    ||dL/dW_l||_F^2 = sum_x ||delta_l(x)||^2 ||a_{l-1}(x)||^2,   ||a_{l-1}||^2 = n_{l-1} T(q^{l-1})

(the last line assumes independent output cotangents per input, so that the cross terms vanish in
expectation; ||a_0||^2 = ||x||^2). sigma_{w,l}^2 = fan_in * mean(W_l^2) and sigma_{b,l}^2 =
mean(b_l^2) are read from the model's weights, so the prediction applies to whatever scheme
initialized it. T and Tdot are the activation's dual maps at c = q1 = q2
(:mod:`widenet.activations`). The theory needs to recognise the model: an ``nn.Sequential``
(nested ones are flattened) of ``nn.Linear``/``Dense`` layers and elementwise activations
(``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.GELU``, ``nn.LeakyReLU``, ``nn.ELU``, ``nn.SiLU``,
``nn.Softplus``, ``nn.Identity``, widenet ``Elementwise``); otherwise ``theory`` is None and
``theory_note`` says why.

Verdict. Over L layers the mean-field ratios compound: backprop_ratio^2 = prod chi_l, so a
ratio far from 1 between the first and the last layer is the signature of vanishing/exploding
signals. ``verdict`` is "exploding" if any value is not finite or backprop_ratio > ``threshold``
or q^L/q^1 > ``threshold``, "vanishing" if either is < 1/``threshold``, else "healthy";
``reasons`` gives the numbers that decided it. The default threshold 100 is two orders of
magnitude. The verdict does not use grad_ratio: in a network of positively homogeneous
activations (relu) rescaling every weight matrix by c rescales every weight gradient by the same
c^(L-1), so grad_ratio cannot see a vanishing signal there (the forward signal shrinks as fast
as the backward one: Glorot & Bengio's observation that weight gradients stay comparable across
layers while back-propagated gradients shrink).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from widenet import activations as _act
from widenet._checks import check_inputs, check_int, check_real
from widenet.init import effective_weight, weighted_layers
from widenet.layers import Elementwise

VERDICTS = ("healthy", "vanishing", "exploding")


@dataclass(frozen=True)
class MeanField:
    """The infinite-width prediction, layer by layer (means over the inputs).

    ``chi[l]`` is the factor from layer l+1's delta to layer l's (one per weighted layer but the
    last); ``w_var``/``b_var`` are the sigma^2 read from the weights.
    """

    activations: list[str]
    w_var: list[float]
    b_var: list[float]
    forward_variance: list[float]
    chi: list[float]
    delta_norm2: list[float]
    grad_norm: list[float]
    grad_ratio: float
    backprop_ratio: float


@dataclass(frozen=True)
class SignalReport:
    """What :func:`signal_propagation` measured, its verdict, and the mean-field prediction."""

    layers: list[str]
    widths: list[int]
    forward_variance: list[float]
    delta_norm2: list[float]
    grad_norm: list[float]
    forward_ratio: list[float]
    backward_ratio: list[float]
    grad_ratio: float
    backprop_ratio: float
    verdict: str
    reasons: list[str]
    threshold: float
    theory: MeanField | None
    theory_note: str

    def to_dict(self) -> dict:
        """Plain data (JSON-ready apart from non-finite floats)."""
        return asdict(self)


# --- mean-field theory ----------------------------------------------------------------------


def q_map(activation, q, w_var: float, b_var: float) -> torch.Tensor:
    """One step of the length map: sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2 (Poole et al. 2016)."""
    act = _act.get(activation)
    q = torch.as_tensor(q, dtype=torch.float64)
    t, _ = act.dual(q, q.clone(), q, False)
    return w_var * t + b_var


def chi(activation, q, w_var: float) -> torch.Tensor:
    """chi = sigma_w^2 E[phi'(sqrt(q) z)^2]: the squared-gradient factor of one layer at q."""
    act = _act.get(activation)
    q = torch.as_tensor(q, dtype=torch.float64)
    _, dot = act.dual(q, q.clone(), q, True)
    return w_var * dot


def mean_field(
    activation, depth: int, w_var: float, b_var: float = 0.0, q0: float = 1.0
) -> dict[str, list[float]]:
    """q^l and chi_l, l = 1..depth, of a uniform deep network from input variance ``q0``.

    Returns ``{"q": [q^1..q^depth], "chi": [chi_1..chi_depth]}`` with chi_l = w_var
    Tdot(q^l); the product of chi over layers is the predicted factor of the squared gradient
    norm from the output back to the first hidden layer.
    """
    depth = check_int(depth, "depth", minimum=1)
    w_var = check_real(w_var, "w_var", minimum=0.0)
    b_var = check_real(b_var, "b_var", minimum=0.0)
    q0 = check_real(q0, "q0", minimum=0.0)
    act = _act.get(activation)
    qs, chis = [], []
    q = torch.tensor(w_var * q0 + b_var, dtype=torch.float64)
    for _ in range(depth):
        qs.append(float(q))
        chis.append(float(chi(act, q, w_var)))
        q = q_map(act, q, w_var, b_var)
    return {"q": qs, "chi": chis}


_TORCH_ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.Identity: "identity",
}


def _activation_of(m: nn.Module) -> _act.Activation | None:
    if type(m) in _TORCH_ACTIVATIONS:
        return _act.get(_TORCH_ACTIVATIONS[type(m)])
    if type(m) is nn.LeakyReLU:
        return _act.leaky_relu(m.negative_slope)
    if type(m) is nn.GELU and m.approximate == "none":
        return _act.gelu()
    if type(m) is nn.ELU and m.alpha == 1.0:
        return _act.get("elu")
    if type(m) is nn.Softplus and m.beta == 1.0:
        return _act.get("softplus")
    if isinstance(m, Elementwise):
        try:
            return _act.get(m.name)
        except ValueError:
            return _act.quadrature(m.fn, m.name)
    return None


def _flatten(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _flatten(child)]
    return [model]


def _chain(model: nn.Module) -> tuple[list[nn.Module], list[_act.Activation]] | str:
    """(linear layers, activation between each pair) or the reason the model is not a chain."""
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}, not an nn.Sequential chain"
    linears, acts, pending = [], [], None
    for m in _flatten(model):
        if isinstance(m, nn.Linear):
            if linears:
                acts.append(pending if pending is not None else _act.identity())
            elif pending is not None:
                return "the chain starts with an activation, not a Linear layer"
            linears.append(m)
            pending = None
            continue
        act = _activation_of(m)
        if act is None:
            return f"module {type(m).__name__} is neither a Linear layer nor a known activation"
        if pending is not None:
            return "two activations in a row"
        pending = act
    if pending is not None:
        return "the chain ends with an activation, not a Linear readout"
    return linears, acts


def _theory(linears, acts, x: torch.Tensor, delta_out: torch.Tensor) -> MeanField:
    """The prediction above, per input in float64, then averaged (see the module docstring)."""
    x = x.detach().to(torch.float64).flatten(1)
    d = x.shape[1]
    q = (x * x).sum(1) / d  # q^0 per input
    a_norm2 = [(x * x).sum(1)]  # ||a_{l-1}||^2 per input
    w_vars, b_vars, qs, dots = [], [], [], []
    for i, m in enumerate(linears):
        w, b = effective_weight(m)
        w = w.detach().double()
        w_var = float(w.shape[1] * w.square().mean())
        b_var = 0.0 if b is None else float(b.detach().double().square().mean())
        if not (math.isfinite(w_var) and math.isfinite(b_var)):
            raise FloatingPointError(f"layer {i} has non-finite weights or biases")
        w_vars.append(w_var)
        b_vars.append(b_var)
        if i == 0:
            q = w_var * q + b_var
        else:
            t, dot = acts[i - 1].dual(q, q.clone(), q, True)
            dots.append(dot)
            a_norm2.append(w.shape[1] * t)
            q = w_var * t + b_var
        qs.append(q)
    chis = [w_vars[i + 1] * dots[i] for i in range(len(dots))]
    delta = [delta_out.detach().double()]
    for c in reversed(chis):
        delta.insert(0, c * delta[0])
    grad = [math.sqrt(float((dl * an).sum())) for dl, an in zip(delta, a_norm2, strict=True)]
    return MeanField(
        activations=[a.name for a in acts],
        w_var=w_vars,
        b_var=b_vars,
        forward_variance=[float(v.mean()) for v in qs],
        chi=[float(c.mean()) for c in chis],
        delta_norm2=[float(v.mean()) for v in delta],
        grad_norm=grad,
        grad_ratio=_ratio(grad[0], grad[-1]),
        backprop_ratio=math.sqrt(_ratio(float(delta[0].mean()), float(delta[-1].mean()))),
    )


# --- measurement ----------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _verdict(backprop_ratio: float, fwd: list[float], delta: list[float], threshold: float):
    values = [backprop_ratio, *fwd, *delta]
    q_ratio = _ratio(fwd[-1], fwd[0])
    facts = (
        f"backprop_ratio = ||dL/dh_first|| / ||dL/dh_last|| = {backprop_ratio:.3g}",
        f"forward variance last/first layer = {q_ratio:.3g}",
    )
    bounds = f"healthy range [1/{threshold:g}, {threshold:g}]"
    if not all(math.isfinite(v) for v in values):
        return "exploding", [f"non-finite activations or gradients; {facts[0]}; {facts[1]}"]
    found = []
    for fact, r in zip(facts, (backprop_ratio, q_ratio), strict=True):
        if not math.isfinite(r) or r > threshold:
            found.append(("exploding", f"{fact} > {threshold:g} (exploding; {bounds})"))
        elif r < 1.0 / threshold:
            found.append(("vanishing", f"{fact} < 1/{threshold:g} (vanishing; {bounds})"))
    if not found:
        return "healthy", [f"{facts[0]} and {facts[1]}, both within the {bounds}"]
    kinds = {kind for kind, _ in found}
    return ("exploding" if "exploding" in kinds else "vanishing"), [text for _, text in found]


def _loss(out, y, loss, generator):
    if y is None:
        v = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
        return (out * v).sum()
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum()
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(out, y, reduction="sum")
    return loss(out, y)


def signal_propagation(
    model: nn.Module,
    x,
    *,
    y=None,
    loss="mse",
    seed: int = 0,
    threshold: float = 100.0,
    theory: bool = True,
) -> SignalReport:
    """Forward variance and gradient norms of every weighted layer at the current weights.

    ``x``: inputs (n, ...) in the model's dtype and device. Without ``y`` the output cotangent
    is a standard Gaussian per input and output (``seed``), the setting of the mean-field
    prediction; with ``y`` the backward pass is that of ``loss`` ("mse": 0.5 sum (f - y)^2,
    "cross_entropy" on integer labels, or a callable ``loss(out, y) -> scalar``). The model
    is left as it was (no ``.grad`` is written; modes untouched). See the module docstring.
    """
    layers = weighted_layers(model)
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv* layer to measure")
    threshold = check_real(threshold, "threshold", minimum=1.0, strict=True)
    seed = check_int(seed, "seed")
    if not (loss in ("mse", "cross_entropy") or callable(loss)):
        raise ValueError(f"loss must be 'mse', 'cross_entropy' or a callable, got {loss!r}")
    param = next(model.parameters())
    x = check_inputs(x, "x", ndim=x.ndim if isinstance(x, torch.Tensor) else 2)
    if x.dtype != param.dtype or x.device != param.device:
        raise TypeError(
            f"x must have the model's dtype and device ({param.dtype}, {param.device}), "
            f"got ({x.dtype}, {x.device})"
        )
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(index):
        def fn(module, inputs, output):
            captured[index] = (inputs[0], output)

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    gen = torch.Generator().manual_seed(seed)
    try:
        with parametrize.cached():
            conv_weights = {
                i: m.weight for i, (_, m) in enumerate(layers) if not isinstance(m, nn.Linear)
            }
            out = model(x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"model(x) must return a tensor, got {type(out).__name__}")
            missing = [layers[i][0] for i in range(len(layers)) if i not in captured]
            if missing:
                raise ValueError(f"layers not called in the forward pass: {', '.join(missing)}")
            outputs = [captured[i][1] for i in range(len(layers))]
            if not all(o.requires_grad for o in outputs):
                raise ValueError("the layers' outputs do not require grad (frozen parameters?)")
            if y is not None:
                y = torch.as_tensor(y, device=out.device)
            total = _loss(out, y, loss, gen)
            order = sorted(conv_weights)
            grads = torch.autograd.grad(total, outputs + [conv_weights[i] for i in order])
    finally:
        for h in handles:
            h.remove()
    deltas = grads[: len(layers)]
    conv_grads = dict(zip(order, grads[len(layers) :], strict=True))
    fwd, delta2, gnorm, widths = [], [], [], []
    for i in range(len(layers)):
        inp, h = captured[i]
        dl = deltas[i]
        widths.append(int(h.shape[1]) if h.ndim > 1 else 1)
        fwd.append(float(h.detach().double().square().mean()))
        delta2.append(float(dl.double().square().sum() / dl.shape[0]))
        if i in conv_grads:
            gnorm.append(float(conv_grads[i].double().norm()))
        else:  # dL/dW = sum over inputs (and leading dims) of delta a^T, with any scale applied
            a = inp.detach().double().reshape(-1, inp.shape[-1])
            g = dl.double().reshape(-1, dl.shape[-1]).T @ a
            gnorm.append(float(g.norm()))
    backprop_ratio = math.sqrt(_ratio(delta2[0], delta2[-1]))
    verdict, reasons = _verdict(backprop_ratio, fwd, delta2, threshold)
    prediction, note = None, "theory=False"
    if theory:
        chain = _chain(model)
        if isinstance(chain, str):
            note = f"no mean-field prediction: {chain}"
        else:
            delta_out = deltas[-1].detach().double().reshape(x.shape[0], -1).square().sum(1)
            try:
                prediction = _theory(*chain, x, delta_out)
                note = "mean-field prediction for the chain " + " -> ".join(
                    ["Linear"] + [f"{a} -> Linear" for a in prediction.activations]
                )
            except FloatingPointError as err:
                note = f"no mean-field prediction: {err}"

    return SignalReport(
        layers=[name for name, _ in layers],
        widths=widths,
        forward_variance=fwd,
        delta_norm2=delta2,
        grad_norm=gnorm,
        forward_ratio=[_ratio(fwd[i + 1], fwd[i]) for i in range(len(fwd) - 1)],
        backward_ratio=[_ratio(delta2[i], delta2[i + 1]) for i in range(len(delta2) - 1)],
        grad_ratio=_ratio(gnorm[0], gnorm[-1]),
        backprop_ratio=backprop_ratio,
        verdict=verdict,
        reasons=reasons,
        threshold=threshold,
        theory=prediction,
        theory_note=note,
    )


__all__ = [
    "MeanField",
    "SignalReport",
    "VERDICTS",
    "chi",
    "mean_field",
    "q_map",
    "signal_propagation",
]
