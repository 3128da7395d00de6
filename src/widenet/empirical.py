"""The empirical neural tangent kernel and NNGP kernel of any ``torch.nn.Module``.

For a network f(x; θ) with k outputs per sample, the empirical NTK (Jacot et al. 2018) is

    Θ(x, x') = Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_pᵀ        (a k × k matrix per pair of samples),

a sum over the selected parameters p. Two ways to compute it:

* **Structured** (Novak et al. 2022, "Fast finite width neural tangent kernel", ICML). A dense
  layer y = W x + b contributes, per pair of samples,

      Θ_layer(x, x') = (G Gᵀ) ⊙ (weight_scale² X Xᵀ + bias_scale²),

  where X holds the layer's inputs and G = ∂f/∂y the gradients of the outputs with respect to the
  layer's outputs. Only Gram matrices of activations and output-gradients are formed; the
  per-sample Jacobian (k × #params per sample) never is. A layer applied at several positions s
  (inputs (n, *, fan_in), or a convolution over its patches) gives
  Σ_{s,t} (g_s · g'_t)(x_s · x'_t). Layers are found automatically with forward hooks.
* **General** (torch.func): per-sample Jacobians by ``vmap(jacrev)`` (or ``jacfwd``) contracted
  over parameters ("jacobian"), or NTK-vector products ``jvp ∘ vjp`` ("ntvp"), picked by
  estimated cost as in Novak et al. 2022 and the torch.func NTK tutorial, and computed in blocks
  of samples so that the workspace stays under ``memory_limit_bytes``.

``implementation="auto"`` uses the structured path for every layer it can verify and adds the
general path's kernel for the remaining parameters (the NTK is a sum over parameters, so the two
combine exactly).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacfwd, jacrev, jvp, vjp, vmap

from widenet._checks import as_tensor, check_finite, check_int, check_pair
from widenet.layers import Dense


@contextlib.contextmanager
def _quiet_jit_deprecation():
    """Forward-mode AD (jvp, jacfwd) loads torch's jit-scripted decompositions on first use,
    and torch.jit.script warns that it is deprecated: torch's business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.script.*", DeprecationWarning)
        yield


__all__ = ["empirical_ntk", "empirical_nngp"]

MODES = ("trace", "full", "diagonal")
IMPLEMENTATIONS = ("auto", "structured", "jacobian", "ntvp")

_DEFAULT_CPU_LIMIT = 4 * 2**30


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_x(x, name: str) -> torch.Tensor:
    x = as_tensor(x, name)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (n_samples, *features), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(x.shape)})")
    check_finite(x, name)
    return x


def _check_inputs(model: nn.Module, x1, x2):
    x1 = _check_x(x1, "x1")
    if x2 is not None:
        x2 = _check_x(x2, "x2")
        check_pair(x1, x2)
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    if ref is None:
        ref = next((b for b in model.buffers() if b.is_floating_point()), None)
    if ref is not None:
        if ref.dtype != x1.dtype:
            raise TypeError(
                f"x1 has dtype {x1.dtype} but the model's parameters are {ref.dtype}; convert "
                f"one of them (e.g. model.to({x1.dtype}) or x1.to({ref.dtype}))"
            )
        if ref.device != x1.device:
            raise ValueError(
                f"x1 is on device {x1.device} but the model's parameters are on {ref.device}; "
                "move them to the same device"
            )
    return x1, x2


def _check_no_batch_coupling(model: nn.Module) -> None:
    """The NTK is a function of single samples: refuse modules that mix samples or are random."""
    for name, m in model.named_modules():
        label = name or type(model).__name__
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training:
                raise ValueError(
                    f"module {label!r} ({type(m).__name__}) is in training mode, where batch "
                    "statistics couple the samples and the per-sample NTK is undefined; call "
                    "model.eval() first"
                )
            if not m.track_running_stats:
                raise ValueError(
                    f"module {label!r} ({type(m).__name__}) has track_running_stats=False, so it "
                    "normalises with batch statistics even in eval mode and couples the samples"
                )
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ValueError(
                f"module {label!r} ({type(m).__name__}) is in training mode, so the network is "
                "random and so would be its NTK; call model.eval() first"
            )


def _select_params(model: nn.Module, params) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())  # tied parameters appear once, under their first name
    if params is None:
        selected = {n: p for n, p in named.items() if p.requires_grad}
        if not selected:
            raise ValueError(
                "params: the model has no parameters with requires_grad=True; pass params= "
                "explicitly to choose which ones the NTK differentiates"
            )
        return selected
    canonical = {id(p): n for n, p in named.items()}
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    if isinstance(params, (str, torch.Tensor)) or not isinstance(params, Iterable):
        params = [params]
    selected = {}
    for item in params:
        if isinstance(item, str):
            if item not in aliases:
                some = ", ".join(list(named)[:8])
                raise ValueError(
                    f"params: the model has no parameter named {item!r} (names as in "
                    f"model.named_parameters(), e.g. {some})"
                )
            name = aliases[item]
        elif isinstance(item, torch.Tensor):
            if id(item) not in canonical:
                raise ValueError(
                    f"params: a tensor of shape {tuple(item.shape)} is not a parameter of model"
                )
            name = canonical[id(item)]
        else:
            raise TypeError(
                "params must be an iterable of parameter names (str) or nn.Parameter objects, "
                f"got an element of type {type(item).__name__}"
            )
        selected[name] = named[name]
    if not selected:
        raise ValueError("params is empty; select at least one parameter")
    return selected


def _memory_limit(memory_limit_bytes, device: torch.device) -> int:
    if memory_limit_bytes is not None:
        return check_int(memory_limit_bytes, "memory_limit_bytes", minimum=1)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(min(avail * 0.5, _DEFAULT_CPU_LIMIT))
    except (ValueError, OSError, AttributeError):
        return _DEFAULT_CPU_LIMIT


# --------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------


def _flat_out(out, n: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
    if out.ndim == 0 or out.shape[0] != n:
        raise ValueError(
            f"the model must return one output per sample (shape (n, ...) with n={n}), "
            f"got shape {tuple(out.shape)}"
        )
    return out.reshape(n, -1)


@dataclass
class _Layer:
    """A module whose selected parameters the structured path handles."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "conv"
    weight: bool  # weight selected
    bias: bool  # bias selected
    ws: float = 1.0  # forward uses weight * ws and bias * bs (widenet Dense)
    bs: float = 1.0
    per_sample: bool = False  # contract per-sample weight gradients rather than Grams
    positions: int = 1  # S: positions per sample the layer is applied at
    fan_in: int = 0
    records: list = field(default_factory=list)


def _layer_kind(m: nn.Module) -> str | None:
    # Exact types only: a subclass may override forward in ways the factorisation can't see.
    if type(m) is nn.Linear or (isinstance(m, Dense) and type(m).forward is Dense.forward):
        return "linear"
    if (
        type(m) is nn.Conv2d
        and m.groups == 1
        and m.padding_mode == "zeros"
        and (not isinstance(m.padding, str) or m.padding == "valid")
    ):
        return "conv"
    return None


def _candidate_layers(model: nn.Module, selected: dict) -> list[_Layer]:
    owners: dict[int, set] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(m))
    sel_ids = {id(p) for p in selected.values()}
    layers = []
    for name, m in model.named_modules():
        kind = _layer_kind(m)
        if kind is None:
            continue
        w = id(m.weight) in sel_ids
        b = m.bias is not None and id(m.bias) in sel_ids
        if not (w or b):
            continue
        if any(len(owners[id(p)]) > 1 for p in (m.weight, m.bias) if p is not None):
            continue  # tied to another module: each use would need its own term
        ws = float(getattr(m, "weight_scale", 1.0)) if isinstance(m, Dense) else 1.0
        bs = float(getattr(m, "bias_scale", 1.0)) if isinstance(m, Dense) else 1.0
        layers.append(_Layer(name, m, kind, w, b, ws, bs))
    return layers


def _tap_hook(layer: _Layer):
    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs.get("input")
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
            layer.records.append(None)
            return None
        # Differentiate with respect to `tap` and hand downstream a copy, so that in-place ops
        # after the layer (ReLU(inplace=True)) cannot overwrite the tensor we differentiate.
        tap = output if output.requires_grad else output.detach().requires_grad_(True)
        layer.records.append((x.detach(), tap))
        return tap.clone()

    return hook


def _as_positions(layer: _Layer, x: torch.Tensor, g: torch.Tensor):
    """Inputs (n, S, fan_in) and output-gradients (n, S, ..., fan_out) over S positions."""
    n = x.shape[0]
    m = layer.module
    if layer.kind == "linear":
        return x.reshape(n, -1, x.shape[-1]), g.reshape(n, -1, *g.shape[x.ndim - 1 :])
    pad = 0 if isinstance(m.padding, str) else m.padding
    cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)
    # g: (n, [k,] C_out, H', W') -> (n, L, [k,] C_out)
    g = g.flatten(-2).movedim(-1, 1)
    return cols.transpose(1, 2), g


def _run_structured(model, layers, base, x):
    """One forward with taps, then one backward per output unit: per-layer (X, G)."""
    handles = []
    for layer in layers:
        layer.records = []
        handles.append(layer.module.register_forward_hook(_tap_hook(layer), with_kwargs=True))
    try:
        with torch.enable_grad():
            out = functional_call(model, base, (x,))
    finally:
        for h in handles:
            h.remove()
    return out


def _check_layer_records(layers, n):
    ok = []
    for layer in layers:
        recs = layer.records
        good = len(recs) == 1 and recs[0] is not None
        if good:
            x, tap = recs[0]
            if layer.kind == "linear":
                good = x.ndim >= 2 and x.shape[0] == n and tap.shape[:-1] == x.shape[:-1]
            else:
                good = x.ndim == 4 and tap.ndim == 4 and x.shape[0] == n
        ok.append(good)
    return ok


def _probe(model, selected, layers, xp, base):
    """Verify each candidate layer on a 2-sample batch against autograd; return survivors."""
    n = xp.shape[0]
    leaves = {}
    for layer in layers:
        for pname, use in (("weight", layer.weight), ("bias", layer.bias)):
            if use:
                full = _param_name(selected, getattr(layer.module, pname))
                leaves[full] = base[full].detach().requires_grad_(True)
    out = _run_structured(model, layers, {**base, **leaves}, xp)
    f = _flat_out(out, n)
    ok = _check_layer_records(layers, n)
    layers = [lay for lay, good in zip(layers, ok, strict=True) if good]
    if not layers or not f.requires_grad:
        return layers, f.shape[1]
    # Cotangent on sample 0 only: the layer's rows for other samples must get zero gradient
    # (dim 0 is the batch), and the factorised weight gradient must equal autograd's.
    v = torch.randn(f.shape, generator=torch.Generator().manual_seed(0), dtype=f.dtype)
    v = v.to(f.device)
    v[1:] = 0
    taps = [lay.records[0][1] for lay in layers]
    names = list(leaves)
    grads = torch.autograd.grad(
        (f * v).sum(), taps + [leaves[nm] for nm in names], allow_unused=True
    )
    gtaps, gparams = grads[: len(taps)], dict(zip(names, grads[len(taps) :], strict=True))
    tol = 1e-2 if f.dtype == torch.float32 else 1e-7
    survivors = []
    for layer, gt in zip(layers, gtaps, strict=True):
        x, tap = layer.records[0]
        gt = torch.zeros_like(tap) if gt is None else gt
        if bool((gt[1:] != 0).any()):
            continue
        xs, gs = _as_positions(layer, x, gt)
        good = True
        for pname, use, scale in (
            ("weight", layer.weight, layer.ws),
            ("bias", layer.bias, layer.bs),
        ):
            if not use:
                continue
            ref = gparams[_param_name(selected, getattr(layer.module, pname))]
            p = getattr(layer.module, pname)
            ref = torch.zeros_like(p) if ref is None else ref
            if pname == "weight":
                mine = scale * torch.einsum("nso,nsi->oi", gs, xs).reshape(p.shape)
            else:
                mine = scale * gs.sum((0, 1))
            err = float((mine - ref).norm())
            if err > tol * (float(ref.norm()) + float(mine.norm())) + 1e-30:
                good = False
        if good:
            layer.positions, layer.fan_in = xs.shape[1], xs.shape[2]
            survivors.append(layer)
    for layer in layers:
        layer.records = []
    return survivors, f.shape[1]


def _param_name(selected: dict, p) -> str:
    for n, q in selected.items():
        if q is p:
            return n
    raise KeyError("parameter not selected")


# --------------------------------------------------------------------------------------------
# Contractions. Feature tensors have shape (n, k, P); modes reduce the output-pair axes.
# --------------------------------------------------------------------------------------------


def _contract(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Σ_p a[i,c,p] b[j,d,p] as (n1,n2) summed over c=d, (n1,n2,k) diagonal, or (n1,n2,k,k)."""
    na, k, _ = a.shape
    nb = b.shape[0]
    if mode == "trace":
        return a.reshape(na, -1) @ b.reshape(nb, -1).T
    if mode == "diagonal":
        return torch.bmm(a.transpose(0, 1), b.permute(1, 2, 0)).permute(1, 2, 0)
    return (a.reshape(na * k, -1) @ b.reshape(nb * k, -1).T).view(na, k, nb, k).transpose(1, 2)


def _gram_features(layer: _Layer, x, gs):
    """Features of one layer for one block. gs: (n, *, k, fan_out)-shaped output gradients."""
    xs, g = _as_positions(layer, x, gs)  # (n,S,fi), (n,S,k,fo)
    n, S = xs.shape[:2]
    if layer.per_sample:
        # J[i, c] = [ws Σ_s g_isc x_isᵀ, bs Σ_s g_isc]: (n, k, fo*fi + fo)
        parts = []
        if layer.weight:
            parts.append(layer.ws * torch.einsum("nsco,nsi->ncoi", g, xs).flatten(2))
        if layer.bias:
            parts.append(layer.bs * g.sum(1))
        return ("jac", torch.cat(parts, dim=2))
    return ("gram", xs, g)


def _contract_layer(layer: _Layer, fa, fb, mode: str) -> torch.Tensor:
    if fa[0] == "jac":
        return _contract(fa[1], fb[1], mode)
    _, xa, ga = fa
    _, xb, gb = fb
    na, S = xa.shape[:2]
    nb, T = xb.shape[:2]
    k = ga.shape[2]
    if S == 1 and T == 1:
        kg = _contract(ga[:, 0], gb[:, 0], mode)
        if layer.weight:
            kx = xa[:, 0] @ xb[:, 0].T
            if layer.ws != 1.0:
                kx.mul_(layer.ws**2)
            if layer.bias:
                kx.add_(layer.bs**2)
            return kg.mul_(kx.view(na, nb, *([1] * (kg.ndim - 2))))
        return kg.mul_(layer.bs**2)
    # Several positions: Θ_ij = Σ_{s,t} (g_is·g_jt)(ws² x_is·x_jt + bs²), one output pair at a time.
    kx = torch.zeros((na * S, nb * T), dtype=xa.dtype, device=xa.device)
    if layer.weight:
        kx = kx + layer.ws**2 * (xa.reshape(na * S, -1) @ xb.reshape(nb * T, -1).T)
    if layer.bias:
        kx = kx + layer.bs**2
    kx = kx.view(na, S, nb, T)
    ga2 = ga.reshape(na * S, k, -1)
    gb2 = gb.reshape(nb * T, k, -1)

    def pair(c, d):
        kg = (ga2[:, c] @ gb2[:, d].T).view(na, S, nb, T)
        return (kg * kx).sum((1, 3))

    if mode == "trace":
        return sum(pair(c, c) for c in range(k))
    if mode == "diagonal":
        return torch.stack([pair(c, c) for c in range(k)], dim=2)
    return torch.stack(
        [torch.stack([pair(c, d) for d in range(k)], dim=2) for c in range(k)], dim=2
    )


# --------------------------------------------------------------------------------------------
# The planner and the block loop
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    layers: list
    general: list  # names of parameters for the torch.func path
    general_impl: str  # "jacobian" | "ntvp"
    use_fwd: bool  # jacfwd rather than jacrev
    k: int
    block: int
    loop: bool = False  # per-sample Python loop: vmap could not batch the model
    loop_outputs: bool = False  # one backward per output unit: batched backward failed


def _forward_flops(model, base, x1) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the counter's first import warns about torch.jit
            from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, base, (x1[:1],))
        return float(counter.get_total_flops())
    except Exception:  # counting is only a cost estimate
        return 0.0


def _activation_numel(model, base, x) -> int:
    """Elements of all module outputs for one sample: a proxy for per-sample activation memory."""
    total = [0]

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            functional_call(model, base, (x[:1],))
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1)


def _plan(model, selected, x1, x2, mode, implementation, memory_limit, chunk_size):
    base = {n: p.detach() for n, p in model.named_parameters()}
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    layers = []
    if implementation in ("auto", "structured"):
        cands = _candidate_layers(model, selected)
        xp = x1[:2] if n1 >= 2 else torch.cat([x1[:1], (x1 if x2 is None else x2)[:1]])
        layers, k = _probe(model, selected, cands, xp, base)
    else:
        with torch.no_grad():
            k = _flat_out(functional_call(model, base, (x1[:1],)), 1).shape[1]
    covered = set()
    for layer in layers:
        if layer.weight:
            covered.add(_param_name(selected, layer.module.weight))
        if layer.bias:
            covered.add(_param_name(selected, layer.module.bias))
    general = [n for n in selected if n not in covered]
    if implementation == "structured" and general:
        owners = sorted({n.rpartition(".")[0] or "<root>" for n in general})
        warnings.warn(
            "implementation='structured': no factorisation for the parameters of module(s) "
            f"{owners}; they are handled by the general torch.func path",
            stacklevel=3,
        )
    item = x1.element_size()
    act = _activation_numel(model, base, x1)
    p_gen = sum(selected[n].numel() for n in general)
    kk = k * k if mode == "full" else k

    # Per-sample bytes of block features (a), per-pair bytes of workspace (b).
    a = 3 * act * item  # the retained graph of the structured forward
    b = kk * item
    for layer in layers:
        S, fi, fo = layer.positions, layer.fan_in, layer.module.weight.shape[0]
        # Grams over positions cost ~S²(fi + kk fo) per pair of samples; contracting per-sample
        # weight gradients costs ~kk fo fi (and k fo fi memory per sample).
        layer.per_sample = S > 1 and S * S * (fi + kk * fo) > kk * fo * fi
        a += S * (fi + k * fo) * item
        if layer.per_sample:
            a += k * fo * (fi + 1) * item
        elif S > 1:
            b += 2 * S * S * item
    use_fwd = p_gen < k
    impl = implementation if implementation in ("jacobian", "ntvp") else None
    if general and impl is None:
        # Novak et al. 2022, Table 1: Jacobian contraction ~ N k [FP] + N² k P (k² P in full
        # mode); NTK-vector products ~ N² k [FP]. Constant 3: a backward costs ~2 forwards.
        fp = max(_forward_flops(model, base, x1), 2.0 * sum(p.numel() for p in selected.values()))
        cost_jac = 3 * (n1 + n2) * k * fp + n1 * n2 * kk * p_gen
        cost_ntvp = 3 * n1 * k * (n1 + n2) * fp
        impl = "ntvp" if cost_ntvp < cost_jac else "jacobian"
    if general and impl == "jacobian":
        a += 3 * k * (p_gen + act) * item
    ntvp_pair = 0
    if general and impl == "ntvp":
        a += 3 * k * p_gen * item
        ntvp_pair = 3 * k * act * item
    b += ntvp_pair
    if chunk_size is not None:
        block = check_int(chunk_size, "chunk_size", minimum=1)
    else:
        # 2 a c + b c² <= limit
        disc = (2 * a) ** 2 + 4 * b * memory_limit
        block = int((-2 * a + math.sqrt(disc)) / (2 * b)) if b > 0 else n1
        block = max(1, block)
    block = min(block, max(n1, n2))
    return _Plan(layers, general, impl or "jacobian", use_fwd, k, block), base


def _structured_features(model, plan: _Plan, base, x, mode):
    layers = plan.layers
    n = x.shape[0]
    out = _run_structured(model, layers, base, x)
    f = _flat_out(out, n)
    if not all(_check_layer_records(layers, n)):
        raise RuntimeError(
            "a layer of the model was called differently than on the probe batch; pass "
            "implementation='jacobian'"
        )
    taps = [lay.records[0][1] for lay in layers]
    grads = _output_gradients(f, taps, plan)
    feats = []
    for layer, g in zip(layers, grads, strict=True):
        # Output units as an extra axis: (n, *, k, fo) for Linear, (n, k, C, H, W) for Conv2d,
        # the layouts _as_positions maps to (n, S, k, fo).
        g = g.movedim(0, -2 if layer.kind == "linear" else 1)
        feats.append(_gram_features(layer, layer.records[0][0], g))
        layer.records = []
    return feats


def _output_gradients(f: torch.Tensor, taps: list, plan: _Plan) -> list:
    """∂f_c/∂tap for every output unit c, per tap stacked as (k, *tap.shape).

    Samples are independent, so the gradient of Σ_i f_ic gives each sample's own row.
    """
    n, k = f.shape
    if not f.requires_grad:
        return [t.new_zeros((k, *t.shape)) for t in taps]
    if k > 1 and not plan.loop_outputs:
        basis = torch.eye(k, dtype=f.dtype, device=f.device)[:, None, :].expand(k, n, k)
        try:
            # One vmapped backward for all k units instead of k backward passes.
            grads = torch.autograd.grad(
                f, taps, basis, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
            return [
                t.new_zeros((k, *t.shape)) if g is None else g
                for g, t in zip(grads, taps, strict=True)
            ]
        except RuntimeError:
            plan.loop_outputs = True  # an op without a batching rule: one backward per unit
    per_unit = []
    for c in range(k):
        gs = torch.autograd.grad(f[:, c].sum(), taps, retain_graph=c < k - 1, allow_unused=True)
        per_unit.append(
            [torch.zeros_like(t) if g is None else g for g, t in zip(gs, taps, strict=True)]
        )
    return [torch.stack([unit[i] for unit in per_unit]) for i in range(len(taps))]


def _jacobian_features(model, plan: _Plan, base, x):
    names = plan.general
    gp = {nm: base[nm] for nm in names}
    n = x.shape[0]

    def f1(gp, xi):
        out = functional_call(model, {**base, **gp}, (xi.unsqueeze(0),))
        return out.reshape(-1)

    if not plan.loop:
        jac = (jacfwd if plan.use_fwd else jacrev)(f1)
        try:
            with _quiet_jit_deprecation():
                js = vmap(jac, in_dims=(None, 0))(gp, x)
            return ("jac", torch.cat([js[nm].reshape(n, plan.k, -1) for nm in names], dim=2))
        except RuntimeError as err:
            # e.g. data-dependent control flow or .item() in forward, which vmap cannot batch
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"torch.func.vmap failed on the model ({reason}); computing per-sample "
                "Jacobians in a Python loop instead, which is slower",
                stacklevel=4,
            )
            plan.loop = True
    leaves = {nm: base[nm].detach().requires_grad_(True) for nm in names}
    rows = []
    for i in range(n):
        with torch.enable_grad():
            out = _flat_out(functional_call(model, {**base, **leaves}, (x[i : i + 1],)), 1)[0]
        per_unit = []
        for c in range(out.shape[0]):
            gs = torch.autograd.grad(
                out[c], list(leaves.values()), retain_graph=c < out.shape[0] - 1, allow_unused=True
            )
            per_unit.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for g, p in zip(gs, leaves.values(), strict=True)
                    ]
                )
            )
        rows.append(torch.stack(per_unit))
    return ("jac", torch.stack(rows))


def _ntvp_block(model, plan: _Plan, base, xa, xb, mode):
    names = plan.general
    gp = {nm: base[nm] for nm in names}
    na, nb, k = xa.shape[0], xb.shape[0], plan.k

    def fa(gp):
        return functional_call(model, {**base, **gp}, (xa,)).reshape(na, -1)

    def fb(gp):
        return functional_call(model, {**base, **gp}, (xb,)).reshape(nb, -1)

    _, vjp_fn = vjp(fa, gp)

    def ntk_slice(v):
        (g,) = vjp_fn(v)
        return jvp(fb, (gp,), (g,))[1]

    basis = torch.eye(na * k, dtype=xa.dtype, device=xa.device).view(na * k, na, k)
    full = vmap(ntk_slice)(basis).view(na, k, nb, k).transpose(1, 2)  # (na, nb, k, k)
    if mode == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)  # (na, nb, k)
    return diag.sum(-1) if mode == "trace" else diag


def _features(model, plan: _Plan, base, x, mode):
    feats = _structured_features(model, plan, base, x, mode) if plan.layers else []
    if plan.general and plan.general_impl == "jacobian":
        feats.append(_jacobian_features(model, plan, base, x))
    return feats


def _block_kernel(model, plan, base, xa, xb, fa, fb, mode):
    with _quiet_jit_deprecation():
        return _block_kernel_impl(model, plan, base, xa, xb, fa, fb, mode)


def _block_kernel_impl(model, plan, base, xa, xb, fa, fb, mode):
    out = None
    for i, (ga, gb) in enumerate(zip(fa, fb, strict=True)):
        if i < len(plan.layers):
            term = _contract_layer(plan.layers[i], ga, gb, mode)
        else:
            term = _contract(ga[1], gb[1], mode)
        out = term if out is None else out.add_(term)
    if plan.general and plan.general_impl == "ntvp":
        term = _ntvp_block(model, plan, base, xa, xb, mode)
        out = term if out is None else out.add_(term)
    return out


# Rows per sub-tile of a symmetric block: GEMMs of this size still run at full speed, and only
# tiles on and above the diagonal are computed, halving the work of Θ(x, x).
_SYMMETRIC_TILE = 512


def _slice_features(feats: list, rows: slice) -> list:
    return [tuple(t[rows] if torch.is_tensor(t) else t for t in f) for f in feats]


def _symmetric_block(model, plan, base, x, feats, mode):
    """Θ(x, x) from one block's features, computing only the upper triangle of sub-tiles."""
    n, t = x.shape[0], _SYMMETRIC_TILE
    out = None
    for i0 in range(0, n, t):
        si = slice(i0, i0 + t)
        fi = _slice_features(feats, si)
        for j0 in range(i0, n, t):
            sj = slice(j0, j0 + t)
            fj = fi if j0 == i0 else _slice_features(feats, sj)
            blk = _block_kernel(model, plan, base, x[si], x[sj], fi, fj, mode)
            if out is None:
                out = blk.new_empty((n, n) + tuple(blk.shape[2:]))
            out[si, sj] = blk
            if j0 != i0:
                out[sj, si] = _swap(blk, mode)
    return out


def _swap(t: torch.Tensor, mode: str) -> torch.Tensor:
    """Θ(x2, x1) from Θ(x1, x2): swap the sample axes (and the output axes in full mode)."""
    t = t.transpose(0, 1)
    return t.transpose(2, 3) if mode == "full" else t


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def empirical_ntk(
    model: nn.Module,
    x1,
    x2=None,
    *,
    mode: str = "trace",
    params=None,
    implementation: str = "auto",
    memory_limit_bytes: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The empirical neural tangent kernel of ``model`` between the samples ``x1`` and ``x2``.

    Θ(x, x') = Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_pᵀ  (Jacot et al. 2018), the sum running over the
    selected parameters θ_p, with f(x) the model's output for one sample flattened to k units.

    For ``nn.Linear``, ``nn.Conv2d`` (groups=1) and widenet's ``Dense`` layers the term of the
    layer's weight and bias is computed without per-sample Jacobians, by the factorisation of
    Novak et al. 2022 ("Fast finite width neural tangent kernel", ICML):

        Θ_layer(x, x')_cd = Σ_{s,t} (g_sc(x) · g_td(x')) (ws² x_s · x'_t + bs²),

    i.e. Θ_layer = (G Gᵀ) ⊙ (ws² X Xᵀ + bs²) for a layer applied once per sample, where X are
    the layer's inputs, g_sc = ∂f_c/∂y_s (rows of G) the gradients of output unit c with respect
    to the layer's outputs, s, t the positions the layer is applied at (extra input dims,
    convolution patches) and ws, bs ``Dense.weight_scale`` / ``bias_scale`` (1 for torch
    layers). Each such layer is checked on
    a probe batch against autograd before it is trusted; the remaining parameters (normalisation
    weights, custom modules, weights used more than once) go through torch.func and are added.

    Args:
        model: any module whose forward maps a batch (n, ...) to outputs (n, ...), treating
            samples independently. Training-mode BatchNorm and Dropout are refused.
        x1: inputs, shape (n1, ...), at least 2-D, finite, same dtype/device as the model.
        x2: second inputs (n2, ...) or None for x2 = x1 (the result is then exactly symmetric).
        mode: "trace": (n1, n2), the trace over output units divided by k (neural-tangents'
            ``trace_axes=(-1,)`` convention, so that Θ ⊗ I_k gives Θ); "full": (n1, n2, k, k);
            "diagonal": (n1, n2, k), the output-unit diagonal.
        params: parameters to differentiate, as names (``model.named_parameters()``) or
            ``nn.Parameter`` objects; default every parameter with ``requires_grad``.
        implementation: "auto" (structured where possible, else the cheaper general method),
            "structured" (warns naming modules it cannot factorise), "jacobian" (per-sample
            Jacobians by vmap(jacrev)/jacfwd, contracted) or "ntvp" (NTK-vector products).
        memory_limit_bytes: rough bound on the workspace beyond the model, the inputs and the
            result; samples are processed in blocks to respect it. Default: half the free memory
            on CUDA, min(half the available RAM, 4 GiB) on CPU.
        chunk_size: samples per block, overriding the memory-based choice.

    Returns:
        A tensor on the inputs' device, in their dtype. Parameters, ``.grad`` and the module's
        training flags are left as they were.
    """
    model = _check_model(model)
    _check_choice(mode, "mode", MODES)
    _check_choice(implementation, "implementation", IMPLEMENTATIONS)
    if x2 is x1:  # the same tensor: the symmetric path does half the work
        x2 = None
    x1, x2 = _check_inputs(model, x1, x2)
    _check_no_batch_coupling(model)
    selected = _select_params(model, params)
    for name, p in selected.items():
        if p.dtype != x1.dtype or p.device != x1.device:
            raise TypeError(
                f"parameter {name!r} is {p.dtype} on {p.device} but x1 is {x1.dtype} on "
                f"{x1.device}; the model and the inputs must agree"
            )
    limit = _memory_limit(memory_limit_bytes, x1.device)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", minimum=1)
    plan, base = _plan(model, selected, x1, x2, mode, implementation, limit, chunk_size)
    k = plan.k

    xs2 = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], xs2.shape[0]
    shape = (n1, n2) + {"trace": (), "diagonal": (k,), "full": (k, k)}[mode]
    result = torch.empty(shape, dtype=x1.dtype, device=x1.device)
    c = plan.block
    starts1 = range(0, n1, c)
    for i0 in starts1:
        xa = x1[i0 : i0 + c]
        fa = _features(model, plan, base, xa, mode)
        j_first = i0 if x2 is None else 0
        for j0 in range(j_first, n2, c):
            xb = xs2[j0 : j0 + c]
            same = x2 is None and j0 == i0
            fb = fa if same else _features(model, plan, base, xb, mode)
            if same:
                blk = _symmetric_block(model, plan, base, xa, fa, mode).detach()
            else:
                blk = _block_kernel(model, plan, base, xa, xb, fa, fb, mode).detach()
            result[i0 : i0 + c, j0 : j0 + c] = blk
            if x2 is None and not same:
                result[j0 : j0 + c, i0 : i0 + c] = _swap(blk, mode)
            del fb
        del fa
    if x2 is None:
        result = 0.5 * (result + _swap(result, mode))  # exact symmetry despite rounding
    if mode == "trace":
        result = result / k
    return result


def empirical_nngp(model: nn.Module, x1, x2=None, *, mode: str = "trace", chunk_size=None):
    """The empirical NNGP kernel: the outputs' covariance over output units.

    K(x, x') = f(x) · f(x')ᵀ / k for k output units (neural-tangents' ``empirical_nngp_fn`` with
    ``trace_axes=(-1,)``). At initialisation and infinite width, averaging over random networks
    gives the NNGP kernel of Neal 1996 / Lee et al. 2018; one network gives this Monte-Carlo
    estimate. ``mode="full"`` returns the unaveraged (n1, n2, k, k) products f_c(x) f_d(x'),
    ``"diagonal"`` the (n1, n2, k) products f_c(x) f_c(x').

    Inputs are validated as in :func:`empirical_ntk`; the model is run without gradients, in
    blocks of ``chunk_size`` samples if given.
    """
    model = _check_model(model)
    _check_choice(mode, "mode", MODES)
    x1, x2 = _check_inputs(model, x1, x2)
    _check_no_batch_coupling(model)

    def outputs(x):
        step = x.shape[0] if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)
        with torch.no_grad():
            parts = [
                _flat_out(model(x[i : i + step]), x[i : i + step].shape[0])
                for i in range(0, x.shape[0], step)
            ]
        return torch.cat(parts)

    f1 = outputs(x1)
    f2 = f1 if x2 is None else outputs(x2)
    k = f1.shape[1]
    if mode == "trace":
        return f1 @ f2.T / k
    if mode == "diagonal":
        return f1[:, None, :] * f2[None, :, :]
    return f1[:, None, :, None] * f2[None, :, None, :]


# Public names of the helpers that linearize, landscape and scale share with this module.
check_no_batch_coupling = _check_no_batch_coupling
memory_limit = _memory_limit
quiet_jit_deprecation = _quiet_jit_deprecation
