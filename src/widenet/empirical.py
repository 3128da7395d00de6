"""The empirical neural tangent kernel and NNGP kernel of any ``torch.nn.Module``.

For a network f(x; θ) with k outputs per sample, the empirical NTK (Jacot et al. 2018) is

    Θ(x, x') = Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_pᵀ        (a k × k matrix per pair of samples),

a sum over the selected parameters p, hence a sum over the modules that own them. widenet
computes every module's term from **one forward and one backward pass** per block of samples:
forward hooks record each module's inputs, and one (output-batched) backward gives the
gradients g = ∂f/∂y of the k outputs with respect to every module's output y. Per module, the
cheaper of two exact routes is chosen by a cost model (flops and memory, per layer):

* **Structured** (Novak et al. 2022, "Fast finite width neural tangent kernel", ICML). A linear
  map y_s = W x_s + b applied at positions s (a Linear on extra dims, a convolution over its
  patches, per group) contributes

      Θ_layer(x, x')_cd = Σ_{s,t} (g_sc · g'_td)(ws² x_s · x'_t + bs²),

  only Gram matrices of inputs and output-gradients: (G Gᵀ) ⊙ (ws² X Xᵀ + bs²) for S = 1.
  Its cost grows with S², so it wins for dense layers and small feature maps.
* **Jacobian contraction**: the per-sample weight gradients J_c = Σ_s g_sc x_sᵀ (one GEMM per
  sample and output) contracted, Θ_cd = J_c · J'_d. Its cost grows with S, so it wins for
  convolutions over large feature maps. BatchNorm (eval) and LayerNorm are affine maps of
  their normalised input: Σ g ⊙ x̂ and Σ g in closed form. ``nn.MultiheadAttention``'s four
  projections are linear maps around its softmax core: an unmasked call is recomputed with
  its q, k and v projections tapped, so the same backward gives their output-gradients (a
  masked call: one backward per output through the core alone). Any other module called
  once per forward (embeddings, custom modules) gets its per-sample parameter gradients by
  ``torch.func.vmap`` of the module's own vector-Jacobian product over the samples, from the
  same recorded inputs and output-gradients: only that module is differentiated again.

Parameters no module call can account for (used by several modules, or directly in a
``forward``) go through torch.func over the whole model: per-sample Jacobians
``vmap(jacrev)`` contracted ("jacobian"), or NTK-vector products ``jvp ∘ vjp`` ("ntvp"), the
cheaper by the estimate of Novak et al. 2022 (Table 1). An NTK-vector product restricted to one
tapped layer would form the same per-sample gradient as the contraction and then apply it to
every x', so per layer it never beats the contraction and the cost model does not offer it.

Samples are processed in blocks and outputs in groups (a trace or diagonal needs only the
matching output of both samples) so that the workspace stays under ``memory_limit_bytes``;
weight gradients are formed a slice of output channels at a time.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from widenet._checks import as_tensor, check_finite, check_int, check_pair
from widenet.layers import Conv as ScaledConv
from widenet.layers import Dense, pad_spatial
from widenet.threads import busy_threads


@contextlib.contextmanager
def _quiet_jit_deprecation():
    """Forward-mode AD (jvp, jacfwd) loads torch's jit-scripted decompositions on first use,
    and torch.jit.script warns that it is deprecated: torch's business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.script.*", DeprecationWarning)
        yield


__all__ = ["empirical_ntk", "empirical_nngp", "empirical_ntk_tiles", "EmpiricalNTKTiles"]

MODES = ("trace", "full", "diagonal")
IMPLEMENTATIONS = ("auto", "structured", "jacobian", "ntvp")

_DEFAULT_CPU_LIMIT = 4 * 2**30
# Seconds of estimated work above which a progress bar is shown (progress=None).
_PROGRESS_AFTER_S = 3.0


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


def _is_index_input(x) -> bool:
    """Integer (token-id) inputs, e.g. for nn.Embedding: passed to the model as they are."""
    if isinstance(x, torch.Tensor):
        return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "iu"
    return False


def _check_x(x, name: str) -> torch.Tensor:
    if _is_index_input(x):
        x = torch.as_tensor(x)  # integer ids stay integers: casting would break nn.Embedding
    else:
        x = as_tensor(x, name)
    if x.ndim < 2 and x.is_floating_point():
        raise ValueError(
            f"{name} must have at least 2 dimensions (n_samples, *features), "
            f"got shape {tuple(x.shape)}"
        )
    if x.ndim < 1:
        raise ValueError(f"{name} must have a sample dimension, got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(x.shape)})")
    if x.is_floating_point():
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
        if x1.is_floating_point() and ref.dtype != x1.dtype:
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
        if isinstance(m, nn.MultiheadAttention) and m.training and m.dropout > 0:
            raise ValueError(
                f"module {label!r} (MultiheadAttention) is in training mode with dropout "
                f"{m.dropout}, so the network is random; call model.eval() first"
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


def _flat_out(out, n: int, output_fn: Callable | None = None) -> torch.Tensor:
    if output_fn is not None:
        out = output_fn(out)
    if not isinstance(out, torch.Tensor):
        hint = "" if output_fn is not None else "; pass output_fn= to pick a tensor from it"
        raise TypeError(f"the model must return a tensor, got {type(out).__name__}{hint}")
    if out.ndim == 0 or out.shape[0] != n:
        raise ValueError(
            f"the model must return one output per sample (shape (n, ...) with n={n}), "
            f"got shape {tuple(out.shape)}"
        )
    return out.reshape(n, -1)


def _call_model(model, params, x, output_fn, n):
    """The model's flattened outputs (n, k), with a clear error for a wrong input size."""
    stack: list = []

    def pre(module, args):
        stack.append((module, args))

    def post(module, args, output):
        if stack:
            stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        out = functional_call(model, params, (x,))
    except RuntimeError as err:
        explained = _explain_shape_error(model, stack, x)
        if explained is None:
            raise
        raise ValueError(explained) from err
    finally:
        for h in handles:
            h.remove()
    return _flat_out(out, n, output_fn)


def _explain_shape_error(model, stack, x) -> str | None:
    """A message naming the inputs' wrong size when the innermost failing module says so."""
    if not stack:
        return None
    module, args = stack[-1]
    name = next((nm for nm, m in model.named_modules() if m is module), "?") or "<model>"
    inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if inp is None:
        return None
    what = f"x1 with features of shape {tuple(x.shape[1:])}"
    if isinstance(module, nn.Linear) and inp.shape[-1] != module.in_features:
        return (
            f"{what} does not fit the model: its layer {name!r} (Linear) expects "
            f"in_features={module.in_features} in the last dimension, got {inp.shape[-1]}"
        )
    if isinstance(module, nn.modules.conv._ConvNd) and (
        inp.ndim < 2 or inp.shape[-module.weight.ndim + 1] != module.in_channels
    ):
        return (
            f"{what} does not fit the model: its layer {name!r} ({type(module).__name__}) "
            f"expects {module.in_channels} input channels in (n, C, ...) inputs, got input "
            f"of shape {tuple(inp.shape)}"
        )
    return None


# --------------------------------------------------------------------------------------------
# Units: the modules whose parameters' per-sample gradients come from the shared backward
# --------------------------------------------------------------------------------------------


def _linear_like(m: nn.Module) -> bool:
    # Subclasses count only when they keep Linear's forward (e.g. MultiheadAttention's
    # NonDynamicallyQuantizableLinear): an overridden forward may compute something else.
    if isinstance(m, Dense):
        return type(m).forward is Dense.forward
    return isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward


def _conv_like(m: nn.Module) -> bool:
    if isinstance(m, ScaledConv):  # widenet's NTK-parameterised convolution (arch.network)
        return type(m).forward is ScaledConv.forward
    return (isinstance(m, nn.Conv1d) and type(m).forward is nn.Conv1d.forward) or (
        isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward
    )


def _attention_like(m: nn.Module) -> bool:
    """nn.MultiheadAttention with packed projections, no extra key/value biases, no dropout."""
    return (
        type(m) is nn.MultiheadAttention
        and m._qkv_same_embed_dim
        and m.bias_k is None
        and m.bias_v is None
        and not m.add_zero_attn
        and (not m.training or m.dropout == 0.0)
    )


_ATTENTION_PARAMS = {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}


def _affine_like(m: nn.Module) -> bool:
    """BatchNorm (eval, running statistics) and LayerNorm: y = x̂ ⊙ weight + bias."""
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return m.affine and m.track_running_stats and not m.training
    return type(m) is nn.LayerNorm and m.elementwise_affine


@dataclass
class _Unit:
    """A module called once per forward whose selected parameters we differentiate locally."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "conv" (factorisable), "affine" (norms), "attention", "generic"
    params: dict  # local parameter name -> selected (model-level) name
    ws: float = 1.0  # forward uses weight * ws and bias * bs (widenet Dense)
    bs: float = 1.0
    route: str = "jac"  # "gram" (structured) | "jac" (per-sample gradients, contracted)
    in_dims: list = field(default_factory=list)  # batch dim per flattened (args, kwargs) leaf
    out_dims: list = field(default_factory=list)  # batch dim per tapped output leaf
    in_shapes: list = field(default_factory=list)  # per-sample shapes seen by the probe
    groups: int = 1
    positions: int = 1  # S
    fan_in: int = 0  # per group, bias excluded
    fan_out: int = 0  # per group
    n_params: int = 0
    flops: float = 0.0  # forward flops per sample (generic units)
    # attention: whether its calls are recomputed from tapped q, k, v (_attention_hook); None
    # until the probe's call decides it, then every call follows the probe's
    fused: bool | None = None
    records: list = field(default_factory=list)

    @property
    def weight(self) -> bool:
        return "weight" in self.params

    @property
    def bias(self) -> bool:
        return "bias" in self.params


def _tap_hook(unit: _Unit):
    def hook(module, args, kwargs, output):
        leaves, spec = tree_flatten(output)
        taps, new = [], []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                # Differentiate with respect to `tap` and hand downstream a copy, so that
                # in-place ops after the module (ReLU(inplace=True)) cannot overwrite it.
                tap = leaf if leaf.requires_grad else leaf.detach().requires_grad_(True)
                taps.append(tap)
                new.append(tap.clone())
            else:
                new.append(leaf)
        inputs = tree_flatten((args, kwargs))
        detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in inputs[0]]
        unit.records.append((detached, inputs[1], taps))
        return tree_unflatten(new, spec)

    return hook


def _plain_attention_call(m: nn.Module, args, kwargs):
    """(query, key, value) of a call of nn.MultiheadAttention that :func:`_attention_hook`
    reproduces: batched 3-d inputs, no masks, no attention weights returned; else None."""
    try:
        bound = inspect.signature(m.forward).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    a = bound.arguments
    if (
        a["key_padding_mask"] is not None
        or a["attn_mask"] is not None
        or a["need_weights"]
        or a.get("is_causal", False)
    ):
        return None
    qkv = (a["query"], a["key"], a["value"])
    if not all(isinstance(t, torch.Tensor) and t.dim() == 3 and not t.is_nested for t in qkv):
        return None
    return qkv


def _attention_projections(m: nn.Module, query, key, value) -> list:
    """q, k, v = W_q x_q + b_q, W_k x_k + b_k, W_v x_v + b_v (the row blocks of
    in_proj_weight), each (n, L, E) whatever the module's batch_first."""
    E = m.embed_dim
    W, b = m.in_proj_weight, m.in_proj_bias
    ins = (query, key, value) if m.batch_first else (t.transpose(0, 1) for t in (query, key, value))
    return [
        F.linear(t, W[i * E : (i + 1) * E], None if b is None else b[i * E : (i + 1) * E])
        for i, t in enumerate(ins)
    ]


def _attention_core(m: nn.Module, q, k, v) -> torch.Tensor:
    """softmax(q_h k_hᵀ / √d_h) v_h per head h, heads concatenated: (n, L, E)."""
    n, L, E = q.shape
    h = m.num_heads

    def heads(t):
        return t.reshape(n, t.shape[1], h, E // h).transpose(1, 2)

    a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    return a.transpose(1, 2).reshape(n, L, E)


def _global_forward_hooks() -> int:
    """How many forward hooks torch runs for every module (before the module's own)."""
    return len(getattr(torch.nn.modules.module, "_global_forward_hooks", {}))


def _hooks_before(module: nn.Module, own) -> bool:
    """Whether forward hooks that run before the hook ``own`` may have changed the module's
    output: torch's global ones or the module's own registered earlier."""
    if _global_forward_hooks():
        return True
    return next(iter(module._forward_hooks.values()), own) is not own


def _attention_hook(unit: _Unit):
    """The tap hook of an attention unit: a plain call's output is recomputed from its q, k
    and v projections, which are tapped beside the output y (taps [y, q, k, v]). The one
    backward per output then gives their output-gradients along with every other unit's,
    and the softmax core is not differentiated a second time. The core's output a, which
    the out-projection's per-sample gradients need, is kept as the record's fourth item
    (n·L·E values per call, counted with the taps; None when out_proj.weight is not
    selected). Other calls, calls after a probe whose call was not plain, and calls whose
    output other forward hooks may have changed (global ones, or the module's registered
    before widenet's: the recomputation would drop that change, which the probe checks an
    unfused unit against): _tap_hook."""
    plain = _tap_hook(unit)

    def hook(module, args, kwargs, output):
        qkv = None
        if unit.fused is not False and not _hooks_before(module, hook):
            qkv = _plain_attention_call(module, args, kwargs)
        if qkv is None:
            return plain(module, args, kwargs, output)
        proj = [
            p if p.requires_grad else p.detach().requires_grad_(True)
            for p in _attention_projections(module, *qkv)
        ]
        a = _attention_core(module, *proj)
        y = F.linear(a, module.out_proj.weight, module.out_proj.bias)
        if not module.batch_first:
            y = y.transpose(0, 1)
        inputs = tree_flatten((args, kwargs))
        detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in inputs[0]]
        core = a.detach() if "out_proj.weight" in unit.params else None
        unit.records.append((detached, inputs[1], [y, *proj], core))
        return (y.clone(), None)

    return hook


@contextlib.contextmanager
def _hooked(units):
    handles = []
    for u in units:
        u.records = []
        make = _attention_hook if u.kind == "attention" else _tap_hook
        handles.append(u.module.register_forward_hook(make(u), with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _batch_dim(shape, n: int, alt=None, m: int = 0):
    """The one dim of size n (and of size m on the batch of m samples, shape alt), None for
    none, "?" when ambiguous."""
    if alt is not None and len(alt) != len(shape):
        return "?"
    dims = [i for i, s in enumerate(shape) if s == n and (alt is None or alt[i] == m)]
    return dims[0] if len(dims) == 1 else (None if not dims else "?")


def _find_units(model, selected, xq, base, output_fn) -> tuple[list, list, dict]:
    """Assign each selected parameter to the innermost module called exactly once.

    Also returns, per module name, the shapes of its input and output leaves on the batch xq
    (compared with the probe batch's to find batch dims) and xq's size.
    """
    calls: dict[int, int] = {}
    shapes: dict[int, tuple] = {}

    def count(module, args, kwargs, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        ins = [
            t.shape if isinstance(t, torch.Tensor) else None
            for t in tree_flatten((args, kwargs))[0]
        ]
        outs = [
            t.shape
            for t in tree_flatten(output)[0]
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        ]
        shapes[id(module)] = ((ins, outs), xq.shape[0])

    handles = [m.register_forward_hook(count, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            _call_model(model, base, xq, output_fn, xq.shape[0])
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    owners: dict[int, set] = {}
    for mname, m in modules.items():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(mname)
    units: dict[str, _Unit] = {}
    general = []
    for full, p in selected.items():
        if len(owners.get(id(p), ())) != 1:
            general.append(full)  # tied to several modules: each use would need its own term
            continue
        path = full.split(".")
        unit_name = None
        for depth in range(len(path) - 1, 0, -1):  # the owner, then its ancestors; not the root
            mname = ".".join(path[:depth])
            c = calls.get(id(modules[mname]), 0)
            if c == 0:
                continue
            unit_name = mname if c == 1 else None
            break
        if unit_name is None:
            general.append(full)
            continue
        m = modules[unit_name]
        local = full[len(unit_name) + 1 :]
        if unit_name not in units:
            if _linear_like(m):
                kind = "linear"
            elif _conv_like(m):
                kind = "conv"
            elif _affine_like(m):
                kind = "affine"
            elif _attention_like(m):
                kind = "attention"
            else:
                kind = "generic"
            scaled = isinstance(m, (Dense, ScaledConv))
            ws = float(getattr(m, "weight_scale", 1.0)) if scaled else 1.0
            bs = float(getattr(m, "bias_scale", 1.0)) if scaled else 1.0
            units[unit_name] = _Unit(unit_name, m, kind, {}, ws, bs)
        units[unit_name].params[local] = full
    out = list(units.values())
    for u in out:
        allowed = _ATTENTION_PARAMS if u.kind == "attention" else {"weight", "bias"}
        if u.kind != "generic" and not set(u.params) <= allowed:
            u.kind = "generic"
    alt = {u.name: shapes[id(u.module)] for u in out if calls.get(id(u.module)) == 1}
    return out, general, alt


def _record_dims(unit: _Unit, n: int, probe: bool, alt=None) -> bool:
    """Find (probe: the dims of size n that have size m on a batch of m samples, alt = (shapes,
    m)) or check the batch dims of the unit's inputs and tapped outputs."""
    if len(unit.records) != 1:
        return False
    leaves, taps = unit.records[0][0], unit.records[0][2]
    if not taps:
        return False
    if probe:
        if alt is None:
            return False
        (ins, outs), m = alt
        # _attention_hook's taps: the module's output y, then q, k, v (n, L, E)
        fused = unit.kind == "attention" and len(taps) == 4
        unit.fused = fused  # later calls follow this one (_attention_hook)
        own = taps[:1] if fused else taps
        if len(ins) != len(leaves) or len(outs) != len(own):
            return False
        unit.in_dims = [
            _batch_dim(t.shape, n, a, m) if isinstance(t, torch.Tensor) else None
            for t, a in zip(leaves, ins, strict=True)
        ]
        unit.out_dims = [_batch_dim(t.shape, n, a, m) for t, a in zip(own, outs, strict=True)]
        unit.out_dims += [0, 0, 0] if fused else []
        unit.in_shapes = [
            tuple(s for i, s in enumerate(t.shape) if i != d)
            if isinstance(t, torch.Tensor)
            else None
            for t, d in zip(leaves, unit.in_dims, strict=True)
        ]
        if "?" in unit.in_dims or "?" in unit.out_dims or None in unit.out_dims:
            return False
        if all(d is None for d in unit.in_dims):
            return False
        if unit.kind in ("linear", "conv"):
            x = leaves[0]
            if not isinstance(x, torch.Tensor) or unit.in_dims[0] is None or len(taps) != 1:
                return False
            if unit.kind == "conv" and (unit.in_dims[0] != 0 or unit.out_dims[0] != 0):
                return False
            if unit.kind == "linear" and (
                unit.in_dims[0] != unit.out_dims[0] or unit.in_dims[0] == x.ndim - 1
            ):
                return False
        if unit.kind == "attention" and not fused and len(taps) != 1:
            unit.kind = "generic"  # it returned its attention weights too: its own vjp
        if unit.kind == "affine":
            x = leaves[0]
            m = unit.module
            if not isinstance(x, torch.Tensor) or len(taps) != 1:
                return False
            if unit.in_dims[0] != unit.out_dims[0]:
                return False
            if isinstance(m, nn.LayerNorm):
                if unit.in_dims[0] >= x.ndim - len(m.normalized_shape):
                    return False
            elif unit.in_dims[0] != 0 or x.ndim < 2:
                return False
        return True
    for t, d, s in zip(leaves, unit.in_dims, unit.in_shapes, strict=True):
        if isinstance(t, torch.Tensor):
            if d is not None and t.shape[d] != n:
                return False
            if tuple(z for i, z in enumerate(t.shape) if i != d) != s:
                return False
    if len(taps) != len(unit.out_dims):  # e.g. an attention call unlike the probe's
        return False
    return all(t.shape[d] == n for t, d in zip(taps, unit.out_dims, strict=True))


# --------------------------------------------------------------------------------------------
# Per-unit features: inputs and output-gradients over positions, per-sample gradients
# --------------------------------------------------------------------------------------------


def _stacked(g) -> torch.Tensor:
    """One tap's output-gradients as one (kg, *tap.shape) tensor.

    _output_grads hands them out on the CPU as a list of kg tensors, one per output, and the
    consumers that can take them one output at a time do. A stacked copy of every tap's
    gradients, most of it page faults of fresh memory, cost ResNet-18 w16 (n = 32) 0.61-0.65 s
    -> 0.44-0.48 s per call and the transformer encoder (n = 64) 0.65-0.69 -> 0.61-0.63 s
    (benchmarks/README.md)."""
    if not isinstance(g, list):
        return g
    return g[0].unsqueeze(0) if len(g) == 1 else torch.stack(g)


def _positions(unit: _Unit, leaves, g):
    """Inputs (n, G, S, fi) and output-gradients (n, G, S, kg, fo) of a linear or conv unit.

    g: (kg, *tap.shape), or a list of kg tensors (_stacked).
    """
    m = unit.module
    x = leaves[0]
    g = _stacked(g)
    if unit.kind == "linear":
        bd = unit.in_dims[0]
        x = x.movedim(bd, 0)
        n = x.shape[0]
        xs = x.reshape(n, 1, -1, x.shape[-1])
        g = g.movedim(1 + bd, 1)  # (kg, n, *pos, fo)
        kg = g.shape[0]
        gs = g.reshape(kg, n, -1, g.shape[-1]).permute(1, 2, 0, 3).unsqueeze(1)
        return xs, gs
    n = x.shape[0]
    x, g, ks, st, dil = _conv_operands(m, x, g)
    cols = F.unfold(x, ks, dilation=dil, stride=st)  # (n, C_in·kh·kw, L)
    G = getattr(m, "groups", 1)
    xs = cols.view(n, G, -1, cols.shape[-1]).transpose(2, 3)  # (n, G, S, fi)
    kg = g.shape[0]
    gs = g.reshape(kg, n, G, -1, cols.shape[-1]).permute(1, 2, 4, 0, 3)  # (n, G, S, kg, fo)
    return xs, gs


def _conv_operands(m, x, g):
    """The padded input as a 2-D batch (n, C, H, W), g as (kg, n, C_out, H', W') (None: None),
    and the kernel size, stride and dilation as pairs (a Conv1d is a Conv2d of height 1)."""
    if isinstance(m, ScaledConv):
        ks, st, dil = m.kernel_size, m.stride, (1,) * len(m.kernel_size)
        x = pad_spatial(x, m.pads, m.padding_mode)
    else:
        ks, st, dil = m.kernel_size, m.stride, m.dilation
        pad = m._reversed_padding_repeated_twice  # what forward pads with ("same" included)
        if any(pad):
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, pad, mode=mode)
    if x.ndim == 3:
        x, g = x.unsqueeze(2), None if g is None else g.unsqueeze(3)
        ks, st, dil = (1, ks[0]), (1, st[0]), (1, dil[0])
    return x, g, tuple(ks), tuple(st), tuple(dil)


# Per-sample convolution weight gradients: from this many inputs per output channel (C_in/G ·
# kernel area) one batched GEMM against the unfolded patches; below, one grouped
# weight-gradient convolution. Measured on one CPU thread (2-vCPU Xeon with AVX-512, load ~7,
# n = 32, 10 outputs, 3x3 kernels, best of 3): 144 inputs (16 channels, 32x32) 56 ms
# convolution vs 66 ms GEMM; 288 (32 channels, 16x16) 52 vs 40 ms; 576 (64, 8x8) 144 vs 83 ms;
# 1152 (128, 4x4) 475 vs 203 ms.
_UNFOLD_MIN_FAN_IN = 256


def _jac_conv(unit: _Unit, x, g, o0: int, o1: int | None, split: bool = False):
    """Per-sample gradients (n, kg, P_slice) of a convolution's output channels o0:o1 (per
    group): a batched GEMM of output-gradients and unfolded patches for wide inputs, else one
    grouped weight-gradient convolution (the samples and groups as groups, the kg outputs as
    extra output channels). Same columns as _jac_linear."""
    m = unit.module
    x, _, ks, st, dil = _conv_operands(m, x, None)
    n, c_in = x.shape[:2]
    kg = len(g)
    G = getattr(m, "groups", 1)
    fo = g[0].shape[1] // G
    o1 = fo if o1 is None else o1
    oc = o1 - o0
    spatial = g[0].shape[2:] if g[0].ndim == 4 else (1, g[0].shape[2])  # (H', W')
    # (n, G, kg, oc, H', W'): the layout both routes take, one copy from g's kg outputs
    go = torch.stack([gc.reshape(n, G, fo, *spatial)[:, :, o0:o1] for gc in g], dim=2)
    parts = []
    if unit.weight and c_in // G * math.prod(ks) >= _UNFOLD_MIN_FAN_IN:
        # Σ_s g_s x_sᵀ as one batched GEMM over (sample, group) of the output-gradients and
        # the unfolded input patches (n, G, fi, S).
        cols = F.unfold(x, ks, dilation=dil, stride=st)
        fi, S = cols.shape[1] // G, cols.shape[2]
        w = torch.bmm(go.view(n * G, kg * oc, S), cols.view(n * G, fi, S).transpose(1, 2))
        w = w.view(n, G, kg, -1).transpose(1, 2).reshape(n, kg, -1)
        parts.append(w if unit.ws == 1.0 else w.mul_(unit.ws))
    elif unit.weight:
        grad_out = go.view(1, n * G * kg * oc, *spatial)
        shape = (n * G * kg * oc, c_in // G, *ks)
        _, w, _ = torch.ops.aten.convolution_backward(
            grad_out,
            x.reshape(1, n * c_in, *x.shape[2:]),
            x.new_empty(shape),
            None,
            list(st),
            [0, 0],
            list(dil),
            False,
            [0, 0],
            n * G,
            [False, True, False],
        )
        w = w.view(n, G, kg, -1).transpose(1, 2).reshape(n, kg, -1)
        parts.append(w if unit.ws == 1.0 else w * unit.ws)
    if unit.bias:
        b = go.sum((4, 5)).transpose(1, 2).reshape(n, kg, -1)
        parts.append(b if unit.bs == 1.0 else b * unit.bs)
    return _joined(parts, split)


def _joined(parts: list, split: bool):
    """The per-sample gradient blocks (n, kg, P_i) as a list (split: each is contracted on
    its own, no copy into one tensor) or concatenated along the parameters."""
    if split:
        return parts
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


_BUFFERS = threading.local()


@contextlib.contextmanager
def _reused_buffers():
    """Within this context, :func:`_buffer` hands out this thread's reusable buffers.

    The per-sample gradients of one linear or attention unit are tens to hundreds of MB,
    formed and contracted once per unit, block and output group. Fresh, they cost a page
    fault per 4 KiB page (glibc maps every allocation above its threshold anew and unmaps it
    when freed): on the development machine up to 0.17 s of kernel time for 80 MB, more than
    the GEMM that fills them. Reused, they cost nothing after the first unit. The buffers are
    dropped when the context ends (they are never larger than the largest unit's, which the
    memory model counts)."""
    previous = getattr(_BUFFERS, "slots", None)
    _BUFFERS.slots = {}
    try:
        yield
    finally:
        _BUFFERS.slots = previous


def _buffer(slot, shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (dtype and device of ``like``): a view of the
    buffer ``slot`` inside :func:`_reused_buffers` (valid until the next request of the same
    slot; grown when too small), else a fresh tensor."""
    slots = getattr(_BUFFERS, "slots", None)
    if slot is None or slots is None:
        return like.new_empty(shape)
    numel = math.prod(shape)
    key = (slot, like.dtype, like.device)
    buf = slots.get(key)
    if buf is None or buf.numel() < numel:
        slots.pop(key, None)
        del buf  # freed before its successor is allocated
        buf = slots[key] = like.new_empty(numel)
    return buf[:numel].view(shape)


def _linear_operands(unit: _Unit, leaves, g) -> tuple:
    """A linear unit's inputs (n, S, fi) and, per output, its output-gradients (n, S, fo):
    views, one per output of g ((kg, *tap.shape) or a list of kg tensors)."""
    bd = unit.in_dims[0]
    x = leaves[0].movedim(bd, 0)
    n = x.shape[0]
    per = [gc.movedim(bd, 0) for gc in g]
    return x.reshape(n, -1, x.shape[-1]), [gc.reshape(n, -1, gc.shape[-1]) for gc in per]


def _jac_linear(unit: _Unit, x, gs: list, o0: int, o1: int, split: bool = False, slot=None):
    """Per-sample gradients (n, kg, P_slice) of output channels o0:o1 from x (n, S, fi) and
    gs (kg × (n, S, fo), _linear_operands); the weights' block output-major (see
    _output_major), in the buffer ``slot`` (_buffer)."""
    n, kg = x.shape[0], len(gs)
    go = [gc[..., o0:o1] for gc in gs]
    parts = []
    if unit.weight:
        # One batched GEMM (samples as the batch) per output, straight from the strided
        # output-gradients into an output-major buffer (kg, n, oc, fi): no copy of g.
        w = _buffer(slot, (kg, n, o1 - o0, x.shape[-1]), x)
        for c in range(kg):
            torch.bmm(go[c].transpose(1, 2), x, out=w[c])
        if unit.ws != 1.0:
            w.mul_(unit.ws)
        parts.append(w.view(kg, n, -1).transpose(0, 1))
    if unit.bias:
        b = torch.stack([gc.sum(1) for gc in go], dim=1)  # (n, kg, oc)
        parts.append(b if unit.bs == 1.0 else b.mul_(unit.bs))
    return _joined(parts, split)


def _generic_fn(unit: _Unit, spec):
    """f(params, *per-sample tensor leaves) -> per-sample tapped outputs, for vmap."""
    m = unit.module

    def f(params, leaves):
        full = [
            t.unsqueeze(d) if isinstance(t, torch.Tensor) and d is not None else t
            for t, d in zip(leaves, unit.in_dims, strict=True)
        ]
        args, kwargs = tree_unflatten(full, spec)
        out = functional_call(m, params, args, kwargs, strict=False)
        outs = [
            leaf
            for leaf in tree_flatten(out)[0]
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
        ]
        return tuple(o.squeeze(d) for o, d in zip(outs, unit.out_dims, strict=True))

    return f


def _jac_generic(unit: _Unit, record, gs: list) -> torch.Tensor:
    """Per-sample gradients (n, kg, P) of a generic unit by vmap of its vjp over the samples.

    gs: one (kg, *tap.shape) output-gradient per tapped output.
    """
    leaves, spec, _ = record
    f = _generic_fn(unit, spec)
    params = {loc: _getattr_path(unit.module, loc).detach() for loc in unit.params}
    names = list(unit.params)

    def one(sample_leaves, sample_gs):
        _, vjp_fn = vjp(lambda p: f(p, sample_leaves), params)
        (grads,) = vmap(vjp_fn)(tuple(sample_gs))  # over the kg outputs
        return torch.cat([grads[nm].flatten(1) for nm in names], dim=1)

    in_dims = (list(unit.in_dims), [1 + d for d in unit.out_dims])
    with _math_attention():
        return vmap(one, in_dims=in_dims)(list(leaves), [_stacked(g) for g in gs])


@contextlib.contextmanager
def _math_attention():
    """Attention as matmul and softmax: scaled_dot_product_attention's fused CPU kernels have
    no vmap batching rule (torch falls back to a loop over the batch) and no forward AD, nor
    has the fused inference path of nn.TransformerEncoderLayer / nn.MultiheadAttention
    (taken when no input requires grad, as under torch.func), which is switched off."""
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: nothing to choose
        sdpa_kernel = None
    try:
        if fast:
            mha.set_fastpath_enabled(False)
        with sdpa_kernel([SDPBackend.MATH]) if sdpa_kernel else contextlib.nullcontext():
            yield
    finally:
        if fast:
            mha.set_fastpath_enabled(True)


def _getattr_path(m: nn.Module, path: str):
    for part in path.split("."):
        m = getattr(m, part)
    return m


# --------------------------------------------------------------------------------------------
# The probe: verify each unit against autograd on a small batch
# --------------------------------------------------------------------------------------------


def _probe_size(x: torch.Tensor) -> int:
    """A probe batch size unlikely to equal another dim, so that batch dims are unambiguous."""
    for n in (5, 7, 11, 13, 17):
        if n not in x.shape[1:]:
            return n
    return 19


def _probe_batch(x1, x2, n_p):
    pool = x1 if x2 is None else torch.cat([x1[:n_p], x2[:n_p]])
    idx = torch.arange(n_p, device=pool.device) % pool.shape[0]
    return pool[idx]


def _saved_bytes(fn) -> tuple:
    """Run fn, returning (its result, bytes of tensors autograd saved for the backward)."""
    seen: dict = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _jac_affine(unit: _Unit, record, gs: list) -> torch.Tensor:
    """Per-sample gradients (n, kg, P) of y = x̂ ⊙ weight + bias: Σ g ⊙ x̂ and Σ g over the
    positions the affine map is shared by (BatchNorm: spatial; LayerNorm: leading dims)."""
    m = unit.module
    x = record[0][0]
    d = unit.in_dims[0]
    x = x.movedim(d, 0)
    if isinstance(m, nn.LayerNorm):
        xhat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        keep = len(m.normalized_shape)
        sum_dims = tuple(range(1, x.ndim - keep))
        flat = lambda t: t.flatten(1)  # noqa: E731
    else:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        var = m.running_var.view(shape) + m.eps
        xhat = (x - m.running_mean.view(shape)) * var.rsqrt()
        sum_dims = tuple(range(2, x.ndim))
        flat = lambda t: t  # noqa: E731
    rows = []
    for gc in gs[0]:  # one output at a time: (n, ...) each
        gc = gc.movedim(d, 0)
        parts = []
        if unit.weight:
            w = gc * xhat
            parts.append(flat(w.sum(sum_dims) if sum_dims else w))
        if unit.bias:
            parts.append(flat(gc.sum(sum_dims) if sum_dims else gc))
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return torch.stack(rows, dim=1)


def _jac_attention(unit: _Unit, record, gs: list, split: bool = False, slot=None):
    """Per-sample gradients (n, kg, P) of nn.MultiheadAttention's projections.

    With q_s = W_q x_s + b_q (likewise k, v from the key and value inputs; W_q, W_k, W_v the
    row blocks of in_proj_weight), a = Attention(q, k, v) and y_s = W_o a_s + b_o, the
    per-sample gradients are Σ_s g^q_s x_sᵀ (and k, v), Σ_s g^q_s, Σ_s g_s a_sᵀ and Σ_s g_s,
    where g = ∂f/∂y and g^q, g^k, g^v = ∂f/∂q, ∂f/∂k, ∂f/∂v. Each projection is a linear unit
    around the softmax core. A plain call (:func:`_attention_hook`) tapped q, k and v, so gs
    holds all four output-gradients and a is recomputed from the inputs. Any other call
    tapped y alone: g^q, g^k, g^v then come from one backward per output through the core
    alone (torch's own F.multi_head_attention_forward with identity projections, so that
    masks and causality mean what they mean in the module). The weights' blocks are
    output-major (see _output_major), in the buffers (``slot``, i) (_buffer).
    """
    m = unit.module
    leaves, spec = record[0], record[1]
    args, kwargs = tree_unflatten(list(leaves), spec)
    E = m.embed_dim
    W_o = m.out_proj.weight.detach()
    if len(gs) == 4:  # taps [y, q, k, v]
        qkv = _plain_attention_call(m, args, kwargs)
        inputs = [t.transpose(0, 1) for t in qkv] if not m.batch_first else list(qkv)
        g = [gc.transpose(0, 1) for gc in gs[0]] if unit.out_dims[0] == 1 else gs[0]
        g_proj = gs[1:]  # per output (n, L, E), as g
        core = record[3] if len(record) > 3 else None  # kept by the hook, else None
        if core is None and "out_proj.weight" in unit.params:  # records rebuilt by _resident
            with torch.no_grad():
                core = _attention_core(m, *_attention_projections(m, *qkv))
    else:
        g = _stacked(gs[0])
        g_proj, core = _attention_core_grads(unit, args, kwargs, g, W_o)
        bd = unit.in_dims[0]  # the batch dim of query (1 when seq-first, 0 when batch_first)
        bound = inspect.signature(m.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        inputs = [a[nm] if bd == 0 else a[nm].transpose(0, 1) for nm in ("query", "key", "value")]
        g = g.transpose(1, 2) if unit.out_dims[0] == 1 else g  # (kg, n, L, E)
    kg, n = len(g), g[0].shape[0]

    def weight(i, gp, t):
        # Σ_l gp[c, n, l] t[n, l]ᵀ: one batched GEMM (samples as the batch) per output.
        w = _buffer(None if slot is None else (slot, i), (kg, n, E, t.shape[-1]), t)
        for c in range(kg):
            torch.bmm(gp[c].transpose(1, 2), t, out=w[c])
        return w.view(kg, n, -1).transpose(0, 1)

    parts = {}
    if "in_proj_weight" in unit.params:  # the q, k and v row blocks
        parts["in_proj_weight"] = [weight(i, g_proj[i], inputs[i]) for i in range(3)]
    if "in_proj_bias" in unit.params:
        parts["in_proj_bias"] = [torch.stack([gc.sum(1) for gc in gp], 1) for gp in g_proj]
    if "out_proj.weight" in unit.params:
        parts["out_proj.weight"] = [weight(3, g, core)]
    if "out_proj.bias" in unit.params:
        parts["out_proj.bias"] = [torch.stack([gc.sum(1) for gc in g], 1)]
    return _joined([p for loc in unit.params for p in parts[loc]], split)


def _attention_core_grads(unit: _Unit, args, kwargs, g, W_o) -> tuple:
    """(∂f/∂q, ∂f/∂k, ∂f/∂v as 3 × (kg, n, L, E), the core's output a (n, L, E)) of a call
    tapped at its output alone, g = ∂f/∂y (kg, *y.shape): one backward per output through
    the attention core, with the call's own masks and causality."""
    m = unit.module
    bound = inspect.signature(m.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    bd = unit.in_dims[0]
    # (L, n, E) layout of F.multi_head_attention_forward
    to_seq = (lambda t: t.transpose(0, 1)) if bd == 0 else (lambda t: t)  # noqa: E731
    q_in, k_in, v_in = to_seq(a["query"]), to_seq(a["key"]), to_seq(a["value"])
    E = m.embed_dim
    W, b = m.in_proj_weight.detach(), m.in_proj_bias
    b = None if b is None else b.detach()
    eye = torch.eye(E, dtype=W.dtype, device=W.device)
    with torch.enable_grad():
        proj = []
        for i, t in enumerate((q_in, k_in, v_in)):
            p = F.linear(t, W[i * E : (i + 1) * E], None if b is None else b[i * E : (i + 1) * E])
            proj.append(p.detach().requires_grad_(True))
        core, _ = F.multi_head_attention_forward(
            *proj,
            E,
            m.num_heads,
            None,
            None,
            None,
            None,
            False,
            0.0,
            eye,
            None,
            training=False,
            key_padding_mask=a["key_padding_mask"],
            need_weights=False,
            attn_mask=a["attn_mask"],
            use_separate_proj_weight=True,
            q_proj_weight=eye,
            k_proj_weight=eye,
            v_proj_weight=eye,
            is_causal=a.get("is_causal", False),
        )
        g = g.transpose(1, 2) if unit.out_dims[0] == 0 else g  # (kg, L, n, E)
        g_core = g @ W_o  # ∂f/∂a
        kg = g.shape[0]
        g_proj = [[], [], []]
        for c in range(kg):
            got = torch.autograd.grad(core, proj, g_core[c], retain_graph=c < kg - 1)
            for i in range(3):
                g_proj[i].append(got[i])
    # 3 × (kg, n, L, E) views of (kg, L, n, E); a as (n, L, E)
    return [torch.stack(v).transpose(1, 2) for v in g_proj], core.detach().transpose(0, 1)


def _unit_jac(unit: _Unit, record, gs: list) -> torch.Tensor:
    if unit.kind == "generic":
        return _jac_generic(unit, record, gs)
    if unit.kind == "attention":
        return _jac_attention(unit, record, gs)
    if unit.kind == "affine":
        return _jac_affine(unit, record, gs)
    if unit.kind == "conv":
        return _jac_conv(unit, record[0][0], gs[0], 0, None)
    x, g = _linear_operands(unit, record[0], gs[0])
    return _jac_linear(unit, x, g, 0, g[0].shape[-1])


def _probe(model, selected, units, xp, alt, base, output_fn):
    """Keep the units whose per-sample gradients match autograd; measure memory per sample."""
    n = xp.shape[0]
    leaves = {}
    for u in units:
        for full in u.params.values():
            leaves[full] = base[full].detach().requires_grad_(True)
    params = {**base, **leaves}

    def run():
        with torch.enable_grad(), _hooked(units):
            return _call_model(model, params, xp, output_fn, n)

    f, saved = _saved_bytes(run)
    ok = [_record_dims(u, n, probe=True, alt=alt.get(u.name)) for u in units]
    units = [u for u, good in zip(units, ok, strict=True) if good]
    taps_bytes = sum(  # with the attention cores _attention_hook keeps
        t.numel() * t.element_size()
        for u in units
        for t in [*u.records[0][2], *u.records[0][3:]]
        if t is not None
    )
    leaves_bytes = sum(  # the units' batched inputs, kept for all samples by _resident
        t.numel() * t.element_size()
        for u in units
        for t, d in zip(u.records[0][0], u.in_dims, strict=True)
        if isinstance(t, torch.Tensor) and d is not None
    )
    stats = dict(k=f.shape[1], saved=saved / n, taps=taps_bytes / n, leaves=leaves_bytes / n)
    if not units or not f.requires_grad:
        for u in units:
            u.records = []
        return units, stats
    # Cotangent on sample 0 only: the units' outputs for other samples must get zero gradient
    # (the batch dim is what we think it is), and the per-sample gradients summed over the
    # samples must equal autograd's parameter gradients.
    v = torch.randn(f.shape, generator=torch.Generator().manual_seed(0), dtype=f.dtype)
    v = v.to(f.device)
    v[1:] = 0
    taps = [t for u in units for t in u.records[0][2]]
    names = list(leaves)
    grads = torch.autograd.grad(
        (f * v).sum(), taps + [leaves[nm] for nm in names], allow_unused=True
    )
    gtaps, gparams = grads[: len(taps)], dict(zip(names, grads[len(taps) :], strict=True))
    tol = 1e-3 if f.dtype == torch.float32 else 1e-9
    survivors = []
    pos = 0
    for u in units:
        nt = len(u.records[0][2])
        gts = [
            torch.zeros_like(t) if gt is None else gt
            for gt, t in zip(gtaps[pos : pos + nt], u.records[0][2], strict=True)
        ]
        pos += nt
        good = True
        for gt, d in zip(gts, u.out_dims, strict=True):
            rest = gt.narrow(d, 1, n - 1)
            if bool((rest != 0).any()):
                good = False
        # An attention module called in a way _jac_attention does not reproduce falls back
        # to its own vjp.
        kinds = (u.kind, "generic") if u.kind == "attention" else (u.kind,)
        for kind in kinds if good else ():
            u.kind = kind
            if kind == "generic" and len(gts) == 4:  # _attention_hook's taps: y alone
                gts, u.out_dims, u.fused = gts[:1], u.out_dims[:1], False
                u.records = [(r[0], r[1], r[2][:1]) for r in u.records]
            good = _probe_unit(u, gts, gparams, base, tol)
            if good:
                break
        if good:
            _geometry(u, xp)
            survivors.append(u)
    for u in units:
        u.records = []
    return survivors, stats


def _probe_unit(u: _Unit, gts: list, gparams: dict, base: dict, tol: float) -> bool:
    """Whether u's per-sample gradients, summed, equal autograd's parameter gradients."""
    try:
        with _quiet_jit_deprecation():
            jac = _unit_jac(u, u.records[0], [gt.unsqueeze(0) for gt in gts])
    except Exception:  # no batching rule, data-dependent control flow, ...
        return False
    mine = jac.sum((0, 1))
    ref = torch.cat(
        [
            (torch.zeros_like(base[full]) if gparams[full] is None else gparams[full]).reshape(-1)
            for full in _param_order(u)
        ]
    )
    err = float((mine - ref).norm())
    return err <= tol * (float(ref.norm()) + float(mine.norm())) + 1e-30


def _param_order(u: _Unit) -> list:
    """Selected names in the order of the unit's per-sample gradient columns."""
    if u.kind in ("generic", "attention"):
        return list(u.params.values())
    # Column order of _jac_linear: weight (group, out, in) then bias (group, out) — that is the
    # parameters' own memory order when one slice covers every output channel.
    return [u.params[p] for p in ("weight", "bias") if p in u.params]


def _geometry(u: _Unit, xp):
    u.n_params = sum(_getattr_path(u.module, loc).numel() for loc in u.params)
    if u.kind in ("generic", "attention"):
        u.flops = _module_flops(u)
        return
    if u.kind == "affine":
        return
    leaves, _, taps = u.records[0]
    x, y, m = leaves[0], taps[0], u.module
    if u.kind == "linear":
        d = u.in_dims[0]
        u.positions = x.numel() // (x.shape[d] * x.shape[-1])
        u.fan_in, u.fan_out = x.shape[-1], y.shape[-1]
    else:
        u.groups = getattr(m, "groups", 1)
        u.positions = math.prod(y.shape[2:])
        u.fan_in = m.in_channels // u.groups * math.prod(m.kernel_size)
        u.fan_out = m.out_channels // u.groups


def _module_flops(u: _Unit) -> float:
    leaves, spec = u.records[0][0], u.records[0][1]
    n = next(t.shape[d] for t, d in zip(leaves, u.in_dims, strict=True) if d is not None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.flop_counter import FlopCounterMode

        args, kwargs = tree_unflatten(list(leaves), spec)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            u.module(*args, **kwargs)
        return float(counter.get_total_flops()) / n
    except Exception:  # only an estimate
        return 2.0 * u.n_params * 8


# --------------------------------------------------------------------------------------------
# Contractions. Per-sample gradients have shape (n, kg, P); modes reduce the output axes.
# --------------------------------------------------------------------------------------------


def _output_major(t: torch.Tensor) -> bool:
    """Whether per-sample gradients (n, k, P) are stored output-major: (k, n, P) contiguous."""
    return t.shape[1] > 1 and t.transpose(0, 1).is_contiguous() and not t.is_contiguous()


def _contract(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Σ_p a[i,c,p] b[j,d,p] as (n1,n2) summed over c=d, (n1,n2,k) diagonal, or (n1,n2,k,k).

    a and b are (n, k, P), stored sample-major or output-major (see _output_major)."""
    na, k, _ = a.shape
    nb = b.shape[0]
    if _output_major(a) and _output_major(b):
        at, bt = a.transpose(0, 1), b.transpose(0, 1)  # (k, n, P), contiguous
        if mode == "trace":
            out = at[0] @ bt[0].T
            for c in range(1, k):
                out.addmm_(at[c], bt[c].T)
            return out
        if mode == "diagonal":
            return torch.bmm(at, bt.mT).permute(1, 2, 0)
        full = at.reshape(k * na, -1) @ bt.reshape(k * nb, -1).T
        return full.view(k, na, k, nb).permute(1, 3, 0, 2)
    if mode == "trace":
        return a.reshape(na, -1) @ b.reshape(nb, -1).T
    if mode == "diagonal":
        return torch.bmm(a.transpose(0, 1), b.permute(1, 2, 0)).permute(1, 2, 0)
    return (a.reshape(na * k, -1) @ b.reshape(nb * k, -1).T).view(na, k, nb, k).transpose(1, 2)


# Elementwise work, in GEMM-flop equivalents per element: the cost model's one constant for
# memory-bound passes (a GEMM does ~50 Gflop/s here, an elementwise pass ~5 G elements/s).
_EW = 8.0


def _gram_tile(u: _Unit, xa, ga, xb, gb, rows: slice, cols: slice, mode: str):
    """One (rows, cols) tile of Σ_grp Σ_{s,t} (g_sc·g'_td)(ws² x_s·x'_t + bs²), a fresh tensor.

    x: (n, G, S, fi), g: (n, G, S, kg, fo).
    """
    G, S, T, kg = xa.shape[1], xa.shape[2], xb.shape[2], ga.shape[3]
    xi, xj = xa[rows], xb[cols]
    ta, tb = xi.shape[0], xj.shape[0]
    gi, gj = ga[rows], gb[cols]
    if G == 1 and S == 1 and T == 1 and mode == "trace":
        # A dense layer: (G Gᵀ) ⊙ (ws² X Xᵀ + bs²), two GEMMs and one fused pass.
        kgr = gi.reshape(ta, -1) @ gj.reshape(tb, -1).T
        if not u.weight:
            return kgr.mul_(u.bs**2)
        xi2, xj2 = xi.reshape(ta, -1), xj.reshape(tb, -1)
        if u.bias:
            bias = xi2.new_tensor(u.bs**2)
            kx = torch.addmm(bias, xi2, xj2.T, alpha=u.ws**2)
        else:
            kx = xi2 @ xj2.T
            if u.ws != 1.0:
                kx.mul_(u.ws**2)
        return kgr.mul_(kx)
    xi = xi.transpose(0, 1).reshape(G, -1, xa.shape[3])
    gi = gi.transpose(0, 1)  # (G, ta, S, kg, fo)
    if u.weight:
        kx = torch.bmm(xi, xj.transpose(0, 1).reshape(G, -1, xb.shape[3]).mT)
        if u.ws != 1.0:
            kx.mul_(u.ws**2)
        if u.bias:
            kx.add_(u.bs**2)
    else:
        kx = xa.new_full((G, ta * S, tb * T), u.bs**2)
    gj = gj.transpose(0, 1)
    if mode == "trace":
        kgr = torch.bmm(gi.reshape(G, ta * S, -1), gj.reshape(G, tb * T, -1).mT)
        return kgr.mul_(kx).view(G, ta, S, tb, T).sum((0, 2, 4))
    if mode == "diagonal":
        a = gi.permute(0, 3, 1, 2, 4).reshape(G * kg, ta * S, -1)
        b = gj.permute(0, 3, 1, 2, 4).reshape(G * kg, tb * T, -1)
        kgr = torch.bmm(a, b.mT).view(G, kg, ta * S, tb * T).mul_(kx.unsqueeze(1))
        return kgr.view(G, kg, ta, S, tb, T).sum((0, 3, 5)).permute(1, 2, 0)
    a = gi.reshape(G, ta * S * kg, -1)
    b = gj.reshape(G, tb * T * kg, -1)
    kgr = torch.bmm(a, b.mT).view(G, ta * S, kg, tb * T, kg)
    kgr.mul_(kx.view(G, ta * S, 1, tb * T, 1))
    return kgr.view(G, ta, S, kg, tb, T, kg).sum((0, 2, 5)).permute(0, 2, 1, 3)


def _gram_terms(items: list, out: torch.Tensor, mode: str, tile: int, same: bool) -> None:
    """Add Σ_units Σ_grp Σ_{s,t} (g_sc·g'_td)(ws² x_s·x'_t + bs²) into ``out`` tile by tile.

    items: (unit, xa, ga, xb, gb) per structured unit. All units are summed per tile before
    the one write into ``out`` (no n×n intermediate per layer). same: xb, gb are xa, ga, and
    only the tiles on and above the diagonal are computed (the others are their mirror
    images), which saves work when the tiles' GEMMs run nearly as fast as the whole one.
    """
    na, nb = items[0][1].shape[0], items[0][3].shape[0]
    for i0 in range(0, na, tile):
        i1 = min(na, i0 + tile)
        rows = slice(i0, i1)
        # Symmetric: one panel, rows i0:i1 against columns i0:n (fewer, larger GEMMs than
        # square tiles); its part right of the diagonal block is mirrored below it.
        col_tile = nb if same else tile
        for j0 in range(i0 if same else 0, nb, col_tile):
            cols = slice(j0, min(nb, j0 + col_tile))
            acc = None
            for u, xa, ga, xb, gb in items:
                t = _gram_tile(u, xa, ga, xb, gb, rows, cols, mode)
                acc = t if acc is None else acc.add_(t)
            out[rows, cols] += acc
            if same and i1 < nb:
                out[i1:nb, rows] += _swap(acc[:, i1 - i0 :], mode)


# Measured seconds of the panel GEMMs of a symmetric n×n Gram split into m row panels, per
# (device, dtype, n, m); inner dimension _GEMM_INNER.
_PANEL_SECONDS: dict = {}
_GEMM_INNER = 256
# Below this many samples a symmetric kernel is never split into panels (the measurement
# would cost more than it can save).
_TILE_MIN_N = 1024


def _panel_seconds(n: int, ms: list, device: torch.device, dtype: torch.dtype) -> dict:
    """Seconds of the GEMMs Σ_i (rows of panel i) × (columns i0:n) for n rows in m panels, for
    each m, measured once per (device, dtype, n): three rounds over the candidates,
    interleaved so that a burst of load elsewhere hits them alike; the median per candidate."""
    if len(_PANEL_SECONDS) > 256:
        _PANEL_SECONDS.clear()
    todo = [m for m in ms if (device.type, device.index, dtype, n, m) not in _PANEL_SECONDS]
    if todo:
        a = torch.ones((n, _GEMM_INNER), dtype=dtype, device=device)
        a[:64] @ a[:64].T  # warm the BLAS thread pool

        def run(m):
            t = -(-n // m)
            for i0 in range(0, n, t):
                a[i0 : i0 + t] @ a[i0:].T

        times: dict = {m: [] for m in todo}
        for _ in range(3):
            for m in todo:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                run(m)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[m].append(time.perf_counter() - t0)
        for m, v in times.items():
            _PANEL_SECONDS[(device.type, device.index, dtype, n, m)] = sorted(v)[1]
    return {m: _PANEL_SECONDS[(device.type, device.index, dtype, n, m)] for m in ms}


def _symmetric_tile(n: int, cap: int, device: torch.device, dtype: torch.dtype) -> int:
    """Rows per panel of a symmetric n×n Gram, chosen by measured GEMM time.

    m panels of t = ⌈n/m⌉ rows, each against the columns from its first row on, do a fraction
    (m+1)/2m of the flops of the whole product, but in smaller GEMMs that run below its rate
    (and each call costs a thread-pool barrier): the m with the least measured time wins
    (measured once per n, device and dtype, then cached; m = 1, the whole product, unless a
    split is 10 % faster). A panel holds t·n elements, at most cap².
    """
    if n <= cap and n < _TILE_MIN_N:
        return n
    ms = [m for m in (1, 2, 4, 8) if -(-n // m) * n <= cap * cap][:3]
    if not ms:
        return max(1, cap * cap // n)
    seconds = _panel_seconds(n, ms, device, dtype)
    best = min(ms, key=lambda m: seconds[m] * (0.9 if m == 1 else 1.0))
    return -(-n // best)


# --------------------------------------------------------------------------------------------
# The plan: units, routes, the general path, block and output-group sizes
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    units: list
    general: list  # names of parameters for the torch.func path
    general_impl: str  # "jacobian" | "ntvp"
    use_fwd: bool  # jacfwd rather than jacrev
    k: int
    stats: dict
    output_fn: Callable | None = None
    mode: str = "trace"
    limit: int = 2**30
    block: int = 1  # samples per block
    group: int = 1  # output units per backward
    tile: int = 512  # sample rows per Gram tile
    loop: bool = False  # per-sample Python loop: vmap could not batch the model
    loop_outputs: bool = False  # one backward per output unit: batched backward failed
    resident: bool = False  # every sample's unit inputs kept, blocks streamed (_resident)
    fp: float = 0.0  # forward flops per sample
    forced_chunk: int | None = None


def _forward_flops(model, base, x1, output_fn) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the counter's first import warns about torch.jit
            from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _call_model(model, base, x1[:1], output_fn, 1)
        return float(counter.get_total_flops())
    except Exception:  # counting is only a cost estimate
        return 0.0


def _route_costs(u: _Unit, na: int, nb: int, same: bool, k: int, mode: str) -> dict:
    """Estimated work (GEMM-flop equivalents) of each exact route for one block pair."""
    kk = k * k if mode == "full" else k
    pairs = na * nb / (2 if same else 1)
    sides = na + (0 if same else nb)
    if u.kind == "affine":
        return {"jac": pairs * 2 * kk * u.n_params}
    if u.kind in ("generic", "attention"):
        build = sides * k * 3 * max(u.flops, 2 * u.n_params)
        return {"jac": build + pairs * 2 * kk * u.n_params + _EW * sides * k * u.n_params}
    S, G, fi, fo = u.positions, u.groups, u.fan_in, u.fan_out
    per_out = fo * (fi * u.weight + u.bias)  # parameters per group and output unit
    gram = pairs * G * S * S * (2 * fi * u.weight + 2 * kk * fo + _EW * (kk + 1))
    build = sides * k * G * max(2 * S * fi * fo * u.weight, _EW * per_out)
    jac = build + pairs * 2 * kk * G * per_out + _EW * sides * k * G * per_out
    return {"gram": gram, "jac": jac}


def _plan(model, selected, x1, x2, mode, implementation, memory_limit, chunk_size, output_fn=None):
    base = {n: p.detach() for n, p in model.named_parameters()}
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    n_p = _probe_size(x1)
    xp = _probe_batch(x1, x2, n_p)
    units, general = [], list(selected)
    if implementation != "ntvp":
        xq = _probe_batch(x1, x2, n_p + 1)
        cands, general, alt = _find_units(model, selected, xq, base, output_fn)
        units, stats = _probe(model, selected, cands, xp, alt, base, output_fn)
        covered = {full for u in units for full in u.params.values()}
        general = [nm for nm in selected if nm not in covered]
    else:
        with torch.no_grad():
            f = _call_model(model, base, xp, output_fn, n_p)
        stats = dict(k=f.shape[1], saved=0.0, taps=0.0, leaves=0.0)
    k = stats["k"]
    stats["cpu"] = x1.device.type == "cpu"
    if implementation == "structured" and general:
        owners = sorted({n.rpartition(".")[0] or "<root>" for n in general})
        warnings.warn(
            "implementation='structured': no factorisation for the parameters of module(s) "
            f"{owners}; they are handled by the general torch.func path",
            stacklevel=3,
        )
    p_gen = sum(selected[n].numel() for n in general)
    impl = implementation if implementation in ("jacobian", "ntvp") else None
    fp = 0.0
    if general and impl is None:
        fp = max(
            _forward_flops(model, base, x1, output_fn),
            2.0 * sum(p.numel() for p in selected.values()),
        )
        # Novak et al. 2022, Table 1: Jacobian contraction ~ N k [FP] + N² k P (k² P in full
        # mode); NTK-vector products ~ N² k [FP]. Constant 3: a backward costs ~2 forwards.
        kk = k * k if mode == "full" else k
        cost_jac = 3 * (n1 + n2) * k * fp + n1 * n2 * kk * p_gen
        cost_ntvp = 3 * n1 * k * (n1 + n2) * fp
        impl = "ntvp" if cost_ntvp < cost_jac else "jacobian"
    plan = _Plan(
        units, general, impl or "jacobian", p_gen < k, k, stats, output_fn, mode, memory_limit
    )
    plan.fp = fp  # 0 when no general path needs it
    plan.forced_chunk = chunk_size
    for u in units:
        if u.kind in ("generic", "affine", "attention"):
            u.route = "jac"
        elif implementation == "structured":
            u.route = "gram"
        elif implementation == "jacobian":
            u.route = "jac"
        else:
            costs = _route_costs(u, n1, n2, x2 is None, k, mode)
            u.route = min(costs, key=costs.get)
    _size(plan, n1, n2, x2 is None, x1.element_size())
    return plan, base


# Plans of recent calls: the probe and the cost model run once for repeated calls with the
# same model (object, modules, parameters, hooks), selection, input shapes and options.
_PLANS: collections.OrderedDict = collections.OrderedDict()
_PLANS_KEPT = 4  # plans hold references to their modules: keep only a few


def _plan_key(model, selected, x1, x2, options) -> tuple:
    modules = tuple(
        (name, id(m), type(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules(remove_duplicate=False)
    )
    params = tuple(
        (name, id(p), tuple(p.shape), p.dtype, p.device, p.requires_grad)
        for name, p in model.named_parameters(remove_duplicate=False)
    )
    chosen = tuple((name, id(p)) for name, p in selected.items())
    inputs = tuple(
        None if x is None else (tuple(x.shape), x.dtype, x.device, x.is_floating_point())
        for x in (x1, x2)
    )
    hooks = _global_forward_hooks()  # they decide whether attention is fused (_attention_hook)
    return (threading.get_ident(), id(model), modules, params, chosen, inputs, options, hooks)


def _cached_plan(model, selected, x1, x2, mode, implementation, limit, chunk_size, output_fn):
    """_plan, reused from an earlier call with the same key (see _plan_key); the parameters'
    current values are taken on every call."""
    options = (mode, implementation, limit, chunk_size, id(output_fn))
    key = _plan_key(model, selected, x1, x2, options)
    hit = _PLANS.get(key)
    if hit is not None and hit[0]() is model and hit[1].output_fn is output_fn:
        _PLANS.move_to_end(key)
        return hit[1], {n: p.detach() for n, p in model.named_parameters()}
    plan, base = _plan(model, selected, x1, x2, mode, implementation, limit, chunk_size, output_fn)
    _finish_plan(plan, selected, next(iter(selected.values())).dtype)
    _PLANS[key] = (weakref.ref(model), plan)
    while len(_PLANS) > _PLANS_KEPT:
        _PLANS.popitem(last=False)
    return plan, base


def _size(plan: _Plan, n1: int, n2: int, symmetric: bool, item: int) -> None:
    """Samples per block and outputs per backward so that the workspace fits plan.limit."""
    k, limit, st = plan.k, plan.limit, plan.stats
    kk = k * k if plan.mode == "full" else k
    p_gen = 0
    gen_sel = plan.general
    if gen_sel:
        p_gen = plan.stats.get("p_general", 0)
    fixed = st["saved"] + st["taps"]  # per sample: the retained graph and the taps' copies
    per_out = 2 * st["taps"]  # per sample and output: gradients and backward transients
    unfold = max(
        [u.positions * u.groups * u.fan_in * item for u in plan.units if u.kind == "conv"],
        default=0,
    )
    gen = 3 * k * (p_gen + 0) * item if plan.general_impl == "jacobian" else 0
    budget = 0.75 * limit  # the rest for Gram tiles and gradient slices

    def mem(c, kg, sides):
        return sides * c * (fixed + kg * per_out + unfold + gen) + kk * item * c * c

    n = max(n1, n2)
    full = plan.mode == "full"
    if plan.forced_chunk is not None:
        c = plan.forced_chunk
    else:
        sides1 = 1 if symmetric else 2
        if mem(n, k if full else 1, sides1) <= budget:
            c = n
        else:
            c = n
            while c > 1 and mem(c, k if full else 1, 2) > budget:
                c = max(1, c // 2)
    sides = 1 if (symmetric and c >= n) else 2
    kg = k
    if not full:
        while kg > 1 and mem(c, kg, sides) > budget:
            kg = (kg + 1) // 2
    plan.block, plan.group = max(1, min(c, n)), kg
    if not full and c >= n and _one_output_at_a_time(plan, n1, n2, symmetric):
        # One block holds every sample (no partner block redoes a group's backward passes)
        # and every unit takes the outputs one at a time: groups of one output do the same
        # work with 1/k of the gradients and per-sample gradients in memory. Transformer
        # encoder, n = 64, each call from a trimmed heap: 0.70-0.72 s -> 0.63-0.66 s
        # (benchmarks/README.md).
        plan.group = 1
    plan.resident = False
    if c < n and plan.forced_chunk is None and plan.units and not gen_sel:
        # The samples do not fit one block. Pairs of blocks would redo each block's forward,
        # backward and weight gradients once per partner block; instead keep every sample's
        # unit inputs and one output group's gradients (not the autograd graph) and stream
        # the samples through forward and backward once per output group.
        n_all = n1 + (0 if symmetric else n2)

        def kept(kg):
            return n_all * (st["leaves"] + kg * st["taps"])

        # Beside what is kept, the terms of the units need gradient slices (limit / 8 a side,
        # _unit_term), Gram tiles (limit / 4, below) and the unfolded patches of all samples.
        terms = 0.375 * limit + n_all * unfold
        kg = k
        while True:
            # The rest of the budget streams blocks: at least 8 samples (or all) per block.
            rest, c = budget - kept(kg), n
            while c > 1 and c * (fixed + kg * per_out) > rest:
                c = max(1, c // 2)
            if kept(kg) + terms <= budget and c >= min(n, 8):
                plan.resident, plan.block, plan.group = True, c, kg
                break
            if full or kg == 1:
                break
            kg = (kg + 1) // 2
    # Gram tiles: G·(t S)²·(2 + kk) elements at most a quarter of the limit.
    worst = max(
        [
            u.groups * u.positions**2 * (2 + (plan.group**2 if full else plan.group))
            for u in plan.units
            if u.route == "gram"
        ],
        default=1,
    )
    plan.tile = max(1, min(_SYMMETRIC_TILE, int(math.sqrt(0.25 * limit / (worst * item)))))


def _one_output_at_a_time(plan: _Plan, n1: int, n2: int, symmetric: bool) -> bool:
    """Whether no unit gains from several outputs at once, on the CPU (one backward per output
    there, see _output_grads) and with no parameter on the torch.func path. Per-sample-gradient
    linear units, fused attention and affine units loop over the outputs anyway; convolutions
    (one GEMM over outputs × channels), generic units (vmap over the outputs) and unfused
    attention (its core recomputed once per group, _attention_core_grads) gain from a group.
    A Gram-route unit redoes its input Gram X Xᵀ once per group: allowed while the k - 1
    extra ones are under 1 % of the units' estimated work (_route_costs)."""
    if not plan.units or plan.general or not plan.stats.get("cpu", False):
        return False
    k, pairs = plan.k, n1 * n2 / (2 if symmetric else 1)
    total = extra = 0.0
    for u in plan.units:
        if u.kind in ("conv", "generic") or (u.kind == "attention" and not u.fused):
            return False
        total += _route_costs(u, n1, n2, symmetric, k, plan.mode)[u.route]
        if u.route == "gram" and u.weight:
            extra += (k - 1) * pairs * u.groups * u.positions**2 * 2 * u.fan_in
    return extra <= 0.01 * total


# An upper bound on the rows per Gram tile (besides memory); tests lower it to force tiling.
_SYMMETRIC_TILE = 1 << 30


# --------------------------------------------------------------------------------------------
# The general torch.func path (parameters no unit accounts for)
# --------------------------------------------------------------------------------------------


def _jacobian_features(model, plan: _Plan, base, x) -> torch.Tensor:
    names = plan.general
    gp = {nm: base[nm] for nm in names}
    n = x.shape[0]
    ofn = plan.output_fn

    def f1(gp, xi):
        out = functional_call(model, {**base, **gp}, (xi.unsqueeze(0),))
        return _flat_out(out, 1, ofn).reshape(-1)

    if not plan.loop:
        jac = (jacfwd if plan.use_fwd else jacrev)(f1)
        try:
            with _quiet_jit_deprecation():
                js = vmap(jac, in_dims=(None, 0))(gp, x)
            return torch.cat([js[nm].reshape(n, plan.k, -1) for nm in names], dim=2)
        except RuntimeError as err:
            # e.g. data-dependent control flow or .item() in forward, which vmap cannot batch
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"torch.func.vmap failed on the model ({reason}); computing per-sample "
                "Jacobians in a Python loop instead, which is slower",
                stacklevel=5,
            )
            plan.loop = True
    leaves = {nm: base[nm].detach().requires_grad_(True) for nm in names}
    rows = []
    for i in range(n):
        with torch.enable_grad():
            out = _flat_out(functional_call(model, {**base, **leaves}, (x[i : i + 1],)), 1, ofn)[0]
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
    return torch.stack(rows)


def _ntvp_block(model, plan: _Plan, base, xa, xb, mode):
    names = plan.general
    gp = {nm: base[nm] for nm in names}
    na, nb, k = xa.shape[0], xb.shape[0], plan.k
    ofn = plan.output_fn

    def fa(gp):
        return _flat_out(functional_call(model, {**base, **gp}, (xa,)), na, ofn)

    def fb(gp):
        return _flat_out(functional_call(model, {**base, **gp}, (xb,)), nb, ofn)

    _, vjp_fn = vjp(fa, gp)

    def ntk_slice(v):
        (g,) = vjp_fn(v)
        return jvp(fb, (gp,), (g,))[1]

    basis = torch.eye(na * k, dtype=base[names[0]].dtype, device=base[names[0]].device)
    full = vmap(ntk_slice)(basis.view(na * k, na, k)).view(na, k, nb, k).transpose(1, 2)
    if mode == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)  # (na, nb, k)
    return diag.sum(-1) if mode == "trace" else diag


# --------------------------------------------------------------------------------------------
# The block loop: one forward per block, one backward per output group, every unit's term
# --------------------------------------------------------------------------------------------


@dataclass
class _Side:
    x: torch.Tensor
    f: torch.Tensor | None
    records: list
    general: torch.Tensor | None
    grads: dict = field(default_factory=dict)  # (c0, c1) -> per-unit gradients


def _forward(model, plan: _Plan, base, x) -> _Side:
    n = x.shape[0]
    f, records = None, []
    if plan.units:
        with torch.enable_grad(), _hooked(plan.units):
            f = _call_model(model, base, x, plan.output_fn, n)
        bad = [u.name for u in plan.units if not _record_dims(u, n, probe=False)]
        records = [u.records[0] if u.records else None for u in plan.units]
        for u in plan.units:
            u.records = []
        if bad:
            raise RuntimeError(
                f"module(s) {bad} were called differently than on the probe batch; pass "
                "implementation='ntvp' (the model is then differentiated as a whole)"
            )
    gen = None
    if plan.general and plan.general_impl == "jacobian":
        with _quiet_jit_deprecation():
            with _math_attention():
                gen = _jacobian_features(model, plan, base, x)
    return _Side(x, f, records, gen)


def _output_grads(plan: _Plan, side: _Side, c0: int, c1: int) -> list:
    """∂f_c/∂tap for c in c0:c1, per unit a list of (kg, *tap.shape) tensors.

    Samples are independent, so the gradient of Σ_i f_ic gives each sample's own row. On the
    CPU the kg outputs go through one backward each (the graph retained): torch's batching
    rules for convolution and batch-norm backward loop over the batched dim and then
    concatenate, so one batched backward (is_grads_batched) was 1.1-1.8x slower than the loop
    on every model measured (ResNet-18, transformer encoder, MLPs; benchmarks/README.md). On
    other devices one batched backward saves kg - 1 rounds of kernel launches, and is used
    when every op allows it.
    """
    key = (c0, c1)
    if key in side.grads:
        return side.grads[key]
    f = side.f
    taps = [t for rec in side.records for t in rec[2]]
    kg = c1 - c0
    n = f.shape[0]
    if not f.requires_grad:
        flat = [t.new_zeros((kg, *t.shape)) for t in taps]
    else:
        flat = None
        if kg > 1 and not plan.loop_outputs and f.device.type != "cpu":
            basis = f.new_zeros((kg, n, f.shape[1]))
            basis[torch.arange(kg), :, torch.arange(c0, c1)] = 1
            try:
                gs = torch.autograd.grad(
                    f, taps, basis, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
                flat = [
                    t.new_zeros((kg, *t.shape)) if g is None else g
                    for g, t in zip(gs, taps, strict=True)
                ]
            except RuntimeError:
                plan.loop_outputs = True  # an op without a batching rule: one backward per unit
        if flat is None:
            # Per tap a list of kg gradients, not a stacked copy (see _stacked).
            flat = [[] for _ in taps]
            for c in range(c0, c1):
                gs = torch.autograd.grad(f[:, c].sum(), taps, retain_graph=True, allow_unused=True)
                for dst, g, t in zip(flat, gs, taps, strict=True):
                    dst.append(torch.zeros_like(t) if g is None else g)
    out, pos = [], 0
    for rec in side.records:
        nt = len(rec[2])
        out.append(flat[pos : pos + nt])
        pos += nt
    if plan.group == plan.k:
        side.grads[key] = out  # one group: reused for every block paired with this one
    return out


def _contract_parts(pa: list, pb: list, mode: str, out=None):
    """Σ over the parameter blocks of _contract, each block on its own (no concatenation)."""
    for a, b in zip(pa, pb, strict=True):
        t = _contract(a, b, mode)
        out = t if out is None else out.add_(t)
    return out


def _unit_term(plan: _Plan, u: _Unit, ra, ga, rb, gb, mode: str, same: bool):
    if u.kind == "attention":
        pa = _jac_attention(u, ra, ga, split=True, slot="a")
        pb = pa if same else _jac_attention(u, rb, gb, split=True, slot="b")
        return _contract_parts(pa, pb, mode)
    if u.kind in ("generic", "affine"):
        ja = _unit_jac(u, ra, ga)
        jb = ja if same else _unit_jac(u, rb, gb)
        return _contract(ja, jb, mode)
    na, nb = ra[2][0].shape[u.out_dims[0]], rb[2][0].shape[u.out_dims[0]]
    kg, G, fi, fo = len(ga[0]), u.groups, u.fan_in, u.fan_out
    per = (na + (0 if same else nb)) * kg * G * (fi + 1) * plan.stats["item"]
    oc = max(1, min(fo, int(plan.limit / 8 / per)))
    if u.kind == "conv":
        # Per-sample weight gradients by grouped convolution or unfolded patches. Fresh, not
        # in reused buffers: a kept buffer the size of the widest unit's gradients would sit
        # beside the next unit's unfolded patches (ResNet-18 w64, n = 128: peak RSS 3.43 ->
        # 4.04 GiB), and the convolutions gained nothing from it.
        def jac(r, g, o0, slot):
            return _jac_conv(u, r[0][0], g[0], o0, min(fo, o0 + oc), split=True)
    else:
        xa, gA = _linear_operands(u, ra[0], ga[0])
        xb, gB = (xa, gA) if same else _linear_operands(u, rb[0], gb[0])
        sides = {id(ra): (xa, gA), id(rb): (xb, gB)}

        def jac(r, g, o0, slot):
            xs, gs = sides[id(r)]
            return _jac_linear(u, xs, gs, o0, min(fo, o0 + oc), split=True, slot=slot)

    out = None
    for o0 in range(0, fo, oc):
        ja = jac(ra, ga, o0, "a")
        jb = ja if same else jac(rb, gb, o0, "b")
        out = _contract_parts(ja, jb, mode, out)
        del ja, jb
    return out


def _block(model, plan: _Plan, base, sa: _Side, sb: _Side, same: bool, groups, step):
    mode, k = plan.mode, plan.k
    na, nb = sa.x.shape[0], sb.x.shape[0]
    shape = (na, nb) + {"trace": (), "diagonal": (k,), "full": (k, k)}[mode]
    blk = sa.x.new_zeros(shape, dtype=plan.stats["dtype"]) if plan.units or plan.general else None
    for c0, c1 in groups:
        if plan.units:
            ga = _output_grads(plan, sa, c0, c1)
            gb = ga if same else _output_grads(plan, sb, c0, c1)
            target = blk[..., c0:c1] if mode == "diagonal" else blk
            grams = []
            # The units' per-sample gradients reuse their buffers from unit to unit; the
            # buffers are dropped before the Gram tiles and the next backward.
            with _reused_buffers():
                for i, u in enumerate(plan.units):
                    ra, rb = sa.records[i], sb.records[i]
                    if u.route == "gram":
                        xa, gA = _positions(u, ra[0], ga[i][0])
                        xb, gB = (xa, gA) if same else _positions(u, rb[0], gb[i][0])
                        grams.append((u, xa, gA, xb, gB))
                    else:
                        target += _unit_term(plan, u, ra, ga[i], rb, gb[i], mode, same)
            if grams:
                tile = plan.tile
                if same:
                    tile = _symmetric_tile(na, tile, blk.device, blk.dtype)
                _gram_terms(grams, target, mode, tile, same)
        step()
    if plan.general:
        if plan.general_impl == "jacobian":
            blk += _contract(sa.general, sb.general, mode)
        else:
            with _quiet_jit_deprecation():
                with _math_attention():  # forward AD and vmap need the math attention
                    blk += _ntvp_block(model, plan, base, sa.x, sb.x, mode)
    return blk.detach()


def _swap(t: torch.Tensor, mode: str) -> torch.Tensor:
    """Θ(x2, x1) from Θ(x1, x2): swap the sample axes (and the output axes in full mode)."""
    t = t.transpose(0, 1)
    return t.transpose(2, 3) if mode == "full" else t


@contextlib.contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[], None]]:
    """A rich progress bar over the (block pair, output group) steps.

    enabled=None shows it once the first steps project more than _PROGRESS_AFTER_S seconds.
    """
    state = dict(done=0, bar=None, task=None, t0=time.perf_counter())

    def start():
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("empirical NTK"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} chunks"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        bar.start()
        state["bar"], state["task"] = bar, bar.add_task("ntk", total=total, completed=state["done"])

    if enabled:
        start()

    def step():
        state["done"] += 1
        if state["bar"] is not None:
            state["bar"].update(state["task"], completed=state["done"])
        elif enabled is None and state["done"] < total:
            elapsed = time.perf_counter() - state["t0"]
            if elapsed / state["done"] * total > _PROGRESS_AFTER_S:
                start()

    try:
        yield step
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


def _resident(model, plan: _Plan, base, x, c0: int, c1: int, kept=None) -> _Side:
    """A side holding every sample of x: the units' inputs (kept: those of an earlier output
    group, reused) and their output-gradients for outputs c0:c1, from one forward and one
    backward per block of plan.block samples; each block's graph is freed after its
    backward."""
    n, c = x.shape[0], plan.block
    records = None if kept is None else [list(r) for r in kept]
    grads = None
    for i0 in range(0, n, c):
        i1 = min(n, i0 + c)
        side = _forward(model, plan, base, x[i0:i1])
        gs = _output_grads(plan, side, c0, c1)
        if grads is None:
            grads = [
                [
                    g[0].new_empty((len(g), *g[0].shape[:d], n, *g[0].shape[d + 1 :]))
                    for g, d in zip(gu, u.out_dims, strict=True)
                ]
                for gu, u in zip(gs, plan.units, strict=True)
            ]
        for gu, full, u in zip(gs, grads, plan.units, strict=True):
            for g, dst, d in zip(gu, full, u.out_dims, strict=True):
                for out_c, gc in enumerate(g):
                    dst[out_c].narrow(d, i0, i1 - i0).copy_(gc)
        if kept is None:
            if records is None:
                records = [
                    [
                        [
                            t.new_empty(t.shape[:d] + (n,) + t.shape[d + 1 :])
                            if isinstance(t, torch.Tensor) and d is not None
                            else t
                            for t, d in zip(r[0], u.in_dims, strict=True)
                        ],
                        r[1],
                    ]
                    for r, u in zip(side.records, plan.units, strict=True)
                ]
            for r, full, u in zip(side.records, records, plan.units, strict=True):
                for t, dst, d in zip(r[0], full[0], u.in_dims, strict=True):
                    if isinstance(t, torch.Tensor) and d is not None:
                        dst.narrow(d, i0, i1 - i0).copy_(t)
        del side, gs
    # The taps only give shapes from here on: the first output's gradient has them.
    recs = [(r[0], r[1], [g[0] for g in gu]) for r, gu in zip(records, grads, strict=True)]
    out = _Side(x, None, recs, None)
    out.grads[(c0, c1)] = grads
    return out


def _compute(model, plan: _Plan, base, x1, x2, progress) -> torch.Tensor:
    """Θ(x1, x2) (x2 None: Θ(x1, x1), exactly symmetric) in blocks and output groups."""
    mode, k = plan.mode, plan.k
    xs2 = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], xs2.shape[0]
    _size(plan, n1, n2, x2 is None, plan.stats["item"])
    c, kg = plan.block, plan.group
    groups = [(c0, min(k, c0 + kg)) for c0 in range(0, k, kg)] if plan.units else [(0, k)]
    if plan.resident:
        result, kept = None, {}
        with _progress(len(groups), progress) as step:
            for c0, c1 in groups:
                sides = []
                for name, x in (("a", x1), ("b", x2)):
                    if x is not None:
                        side = _resident(model, plan, base, x, c0, c1, kept.get(name))
                        kept[name] = [r[:2] for r in side.records]
                        sides.append(side)
                sa, sb = sides[0], sides[-1]
                blk = _block(model, plan, base, sa, sb, x2 is None, [(c0, c1)], step)
                result = blk if result is None else result.add_(blk)
                del sides, sa, sb
        return _finish(result, mode, k, x2 is None)
    starts1 = list(range(0, n1, c))
    pairs = sum(len(range(i0 if x2 is None else 0, n2, c)) for i0 in starts1)
    shape = (n1, n2) + {"trace": (), "diagonal": (k,), "full": (k, k)}[mode]
    result = torch.empty(shape, dtype=plan.stats["dtype"], device=x1.device)
    with _progress(pairs * len(groups), progress) as step:
        for i0 in starts1:
            sa = _forward(model, plan, base, x1[i0 : i0 + c])
            for j0 in range(i0 if x2 is None else 0, n2, c):
                same = x2 is None and j0 == i0
                sb = sa if same else _forward(model, plan, base, xs2[j0 : j0 + c])
                blk = _block(model, plan, base, sa, sb, same, groups, step)
                if blk.shape == result.shape:  # one block: it is the result
                    result = blk
                    continue
                result[i0 : i0 + c, j0 : j0 + c] = blk
                if x2 is None and not same:
                    result[j0 : j0 + c, i0 : i0 + c] = _swap(blk, mode)
                del sb
            del sa
    return _finish(result, mode, k, x2 is None)


def _finish(result: torch.Tensor, mode: str, k: int, symmetric: bool) -> torch.Tensor:
    """The trace mode's 1/k, and the exact symmetry of Θ(x1, x1)."""
    scale = 1.0 / k if mode == "trace" else 1.0
    if symmetric:  # exact symmetry despite rounding
        return torch.add(result, _swap(result, mode)).mul_(0.5 * scale)
    return result.mul_(scale) if scale != 1.0 else result


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _prepare(model, x1, x2, mode, params, implementation, memory_limit_bytes, chunk_size):
    model = _check_model(model)
    _check_choice(mode, "mode", MODES)
    _check_choice(implementation, "implementation", IMPLEMENTATIONS)
    if x2 is x1:  # the same tensor: the symmetric path does half the work
        x2 = None
    x1, x2 = _check_inputs(model, x1, x2)
    _check_no_batch_coupling(model)
    selected = _select_params(model, params)
    dtype = next(iter(selected.values())).dtype
    for name, p in selected.items():
        float_ok = not x1.is_floating_point() or p.dtype == x1.dtype
        if not p.is_floating_point() or not float_ok or p.device != x1.device or p.dtype != dtype:
            raise TypeError(
                f"parameter {name!r} is {p.dtype} on {p.device} but x1 is {x1.dtype} on "
                f"{x1.device}; the model and the inputs must agree"
            )
    limit = _memory_limit(memory_limit_bytes, x1.device)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", minimum=1)
    return model, x1, x2, selected, limit


def _finish_plan(plan: _Plan, selected, dtype) -> None:
    plan.stats["dtype"] = dtype
    plan.stats["item"] = torch.empty((), dtype=dtype).element_size()
    plan.stats["p_general"] = sum(selected[n].numel() for n in plan.general)


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
    output_fn: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """The empirical neural tangent kernel of ``model`` between the samples ``x1`` and ``x2``.

    Θ(x, x') = Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_pᵀ  (Jacot et al. 2018), the sum running over the
    selected parameters θ_p, with f(x) the model's output for one sample flattened to k units.

    Every module called once per forward contributes the term of its own parameters, from one
    forward and one backward pass per block of samples (see the module docstring). For
    ``nn.Linear`` (and subclasses keeping its forward), ``nn.Conv1d``/``nn.Conv2d`` (any
    stride, dilation, groups, padding and padding_mode) and widenet's ``Dense`` the term is
    computed either by the factorisation of Novak et al. 2022 ("Fast finite width neural
    tangent kernel", ICML),

        Θ_layer(x, x')_cd = Σ_{s,t} (g_sc(x) · g_td(x')) (ws² x_s · x'_t + bs²),

    with x_s the layer's inputs (patches) at position s, g_sc = ∂f_c/∂y_s the output-gradients
    and ws, bs ``Dense.weight_scale`` / ``bias_scale`` (1 for torch layers), or by contracting
    the per-sample weight gradients Σ_s g_sc x_sᵀ, whichever a flop and memory estimate finds
    cheaper for that layer. BatchNorm in eval mode and LayerNorm get theirs in closed form,
    ``nn.MultiheadAttention``'s projections as linear maps around its softmax core, other
    modules (embeddings, custom modules) from ``vmap`` of their own vector-Jacobian
    product. Every module's route is checked on a probe batch against autograd
    before it is trusted; parameters used outside a single module call go through torch.func
    over the whole model (per-sample Jacobians or NTK-vector products).

    Args:
        model: any module whose forward maps a batch (n, ...) to outputs (n, ...), treating
            samples independently. Training-mode BatchNorm and Dropout are refused.
        x1: inputs, shape (n1, ...), float (same dtype/device as the model, at least 2-D,
            finite) or integer token ids (e.g. for ``nn.Embedding``; passed on uncast).
        x2: second inputs (n2, ...) or None for x2 = x1 (the result is then exactly symmetric).
        mode: "trace": (n1, n2), the trace over output units divided by k (neural-tangents'
            ``trace_axes=(-1,)`` convention, so that Θ ⊗ I_k gives Θ); "full": (n1, n2, k, k);
            "diagonal": (n1, n2, k), the output-unit diagonal.
        params: parameters to differentiate, as names (``model.named_parameters()``) or
            ``nn.Parameter`` objects; default every parameter with ``requires_grad``.
        implementation: "auto" (per layer the cheaper exact route, by estimated cost),
            "structured" (the factorisation for every Linear/Conv layer; warns naming modules
            no unit covers), "jacobian" (per-sample gradients contracted, for every layer; the
            parameters no module call covers by vmap(jacrev)) or "ntvp" (NTK-vector products
            through the whole model).
        memory_limit_bytes: bound on the workspace beyond the model, the inputs and the
            result: samples are processed in blocks, outputs in groups and weight gradients in
            slices of output channels to respect it. Default: half the free memory on CUDA,
            min(half the available RAM, 4 GiB) on CPU.
        chunk_size: samples per block, overriding the memory-based choice.
        output_fn: applied to the model's output to get the (n, ...) tensor differentiated,
            e.g. ``lambda out: out["logits"]`` or ``lambda out: out[0]`` for models returning
            dicts or tuples.
        progress: a progress bar over the chunks on stderr: True always, False never, None
            (default) when the call is projected to take more than a few seconds.

    Returns:
        A tensor on the inputs' device, in the parameters' dtype. Parameters, ``.grad`` and the
        module's training flags are left as they were.
    """
    model, x1, x2, selected, limit = _prepare(
        model, x1, x2, mode, params, implementation, memory_limit_bytes, chunk_size
    )
    plan, base = _cached_plan(
        model, selected, x1, x2, mode, implementation, limit, chunk_size, output_fn
    )
    with busy_threads(x1.device):
        return _compute(model, plan, base, x1, x2, progress)


class EmpiricalNTKTiles:
    """Tiles Θ(x1[rows], x2[cols]) of an empirical NTK (``mode="trace"``), planned once.

    The probe, the routes and the cost model of :func:`empirical_ntk` are set up on the first
    tile and reused; every tile is computed with the same sample blocks, output groups and
    memory bound. A diagonal tile of Θ(x1, x1) (rows == cols, x2 None) takes the symmetric
    path and is exactly symmetric. ``widenet.scale.kernel_to_zarr(model, x, get="ntk")``
    writes its stores with these tiles; the object pickles (for Dask workers) without its
    plan, which each process rebuilds on its first tile.
    """

    def __init__(
        self,
        model: nn.Module,
        x1,
        x2=None,
        *,
        params=None,
        implementation: str = "auto",
        memory_limit_bytes: int | None = None,
        chunk_size: int | None = None,
        output_fn: Callable | None = None,
        progress: bool | None = False,
    ):
        model, x1, x2, selected, limit = _prepare(
            model, x1, x2, "trace", params, implementation, memory_limit_bytes, chunk_size
        )
        self.model, self.x1, self.x2 = model, x1, x2
        self.options = dict(
            params=params,
            implementation=implementation,
            limit=limit,
            chunk_size=chunk_size,
            output_fn=output_fn,
            progress=progress,
        )
        self._state = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_state"] = None
        return d

    def _planned(self, xa, xb):
        if self._state is None:
            o = self.options
            selected = _select_params(self.model, o["params"])
            plan, base = _plan(
                self.model,
                selected,
                xa,
                xb,
                "trace",
                o["implementation"],
                o["limit"],
                o["chunk_size"],
                o["output_fn"],
            )
            _finish_plan(plan, selected, next(iter(selected.values())).dtype)
            self._state = (plan, base)
        return self._state

    def __call__(self, rows: slice, cols: slice) -> torch.Tensor:
        xb_all = self.x1 if self.x2 is None else self.x2
        xa = self.x1[rows]
        xb = None if (self.x2 is None and rows == cols) else xb_all[cols]
        plan, base = self._planned(xa, xb)
        with busy_threads(xa.device):
            return _compute(self.model, plan, base, xa, xb, self.options["progress"])


def empirical_ntk_tiles(model: nn.Module, x1, x2=None, **options) -> EmpiricalNTKTiles:
    """``EmpiricalNTKTiles(model, x1, x2, **options)``: a callable (rows, cols) -> tile."""
    return EmpiricalNTKTiles(model, x1, x2, **options)


def empirical_nngp(
    model: nn.Module,
    x1,
    x2=None,
    *,
    mode: str = "trace",
    chunk_size=None,
    output_fn: Callable | None = None,
):
    """The empirical NNGP kernel: the outputs' covariance over output units.

    K(x, x') = f(x) · f(x')ᵀ / k for k output units (neural-tangents' ``empirical_nngp_fn`` with
    ``trace_axes=(-1,)``). At initialisation and infinite width, averaging over random networks
    gives the NNGP kernel of Neal 1996 / Lee et al. 2018; one network gives this Monte-Carlo
    estimate. ``mode="full"`` returns the unaveraged (n1, n2, k, k) products f_c(x) f_d(x'),
    ``"diagonal"`` the (n1, n2, k) products f_c(x) f_c(x').

    Inputs are validated as in :func:`empirical_ntk` (``output_fn`` as there); the model is run
    without gradients, in blocks of ``chunk_size`` samples if given.
    """
    model = _check_model(model)
    _check_choice(mode, "mode", MODES)
    x1, x2 = _check_inputs(model, x1, x2)
    _check_no_batch_coupling(model)
    base = dict(model.named_parameters())

    def outputs(x):
        step = x.shape[0] if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)
        with torch.no_grad():
            parts = [
                _call_model(model, base, x[i : i + step], output_fn, x[i : i + step].shape[0])
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
