"""Empirical NTK of real architectures (issue 19) against float64 autograd.

The reference is the brute-force contraction of per-sample, per-output float64 Jacobians built
with torch.autograd.grad (``reference_ntk`` of test_empirical.py). In float64 every exact route
differs from it only by summation order (~1e-16 relative, ~1e-15 through the deeper networks),
so TOL64 = 1e-9 is far above rounding and far below any formula error (a missing or mis-scaled
term changes the kernel by O(1e-2) or more relative on these models); it is also far inside the
issue's 1e-5 bar. float32 runs are held to 1e-4 (their rounding, ~1e-6, accumulates over depth).
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_empirical import data, reduce, reference_ntk, rel_err
from torch import nn
from torch.utils._pytree import tree_unflatten

from widenet.empirical import (
    EmpiricalNTKTiles,
    _plan,
    _select_params,
    _size,
    empirical_nngp,
    empirical_ntk,
    empirical_ntk_tiles,
)

TOL64 = 1e-9
TOL32 = 1e-4
MODES = ("trace", "full", "diagonal")


def plan_of(model, x, mode="trace", implementation="auto", params=None, limit=2**30):
    plan, _ = _plan(
        model, _select_params(model, params), x, None, mode, implementation, limit, None
    )
    return plan


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class Block(nn.Module):
    """He et al. 2016's BasicBlock (conv-BN-ReLU-conv-BN + shortcut, then ReLU)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet with one BasicBlock per stage (widths w, 2w, 4w)."""

    def __init__(self, width=3, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(
            Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2)
        )
        self.linear = nn.Linear(4 * width, classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def small_resnet(dtype=torch.float64):
    torch.manual_seed(0)
    model = SmallResNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # statistics and affine parameters as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
    return model.eval().to(dtype)


class Encoder(nn.Module):
    def __init__(self, batch_first=True, norm_first=False):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            8, 2, 12, dropout=0.0, batch_first=batch_first, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.readout = nn.Linear(8, 2)
        self.batch_first = batch_first

    def forward(self, x):  # x: (n, L, d) either way
        h = self.encoder(x if self.batch_first else x.transpose(0, 1))
        h = h if self.batch_first else h.transpose(0, 1)
        return self.readout(h.mean(1))


def encoder(batch_first=True, norm_first=False):
    torch.manual_seed(0)
    return Encoder(batch_first, norm_first).double().eval()


# --------------------------------------------------------------------------------------------
# ResNet: BatchNorm (eval), residual additions, strided 3x3 and 1x1 convolutions
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_ref():
    model = small_resnet()
    x1, x2 = data(3, 3, 8, 8), data(2, 3, 8, 8, seed=2)
    return model, x1, x2, reference_ntk(model, x1, x2), reference_ntk(model, x1)


@pytest.mark.parametrize("implementation", ["auto", "structured", "jacobian"])
@pytest.mark.parametrize("mode", MODES)
def test_resnet_matches_float64_autograd(resnet_ref, implementation, mode):
    model, x1, x2, ref12, ref11 = resnet_ref
    got = empirical_ntk(model, x1, x2, mode=mode, implementation=implementation)
    assert rel_err(got, reduce(ref12, mode)) < TOL64
    sym = empirical_ntk(model, x1, mode=mode, implementation=implementation)
    assert rel_err(sym, reduce(ref11, mode)) < TOL64


def test_resnet_ntvp(resnet_ref):
    model, x1, x2, ref12, _ = resnet_ref
    got = empirical_ntk(model, x1, x2, mode="full", implementation="ntvp")
    assert rel_err(got, ref12) < TOL64


def test_resnet_every_parameter_has_a_unit_and_routes_follow_cost(resnet_ref):
    model, x1, *_ = resnet_ref
    plan = plan_of(model, x1)
    assert plan.general == []
    kinds = {u.name: (u.kind, u.route) for u in plan.units}
    assert kinds["bn"] == ("affine", "jac")  # BatchNorm: Σ g ⊙ x̂ per sample
    assert kinds["linear"] == ("linear", "gram")  # one position: Grams always win
    # The stem sees 64 positions: S² (fi + k fo) = 4096·36 per pair against k fo fi = 243
    # for the per-sample gradients.
    assert kinds["stem"] == ("conv", "jac")
    assert all(
        u.route == "gram"
        for u in plan_of(model, x1, implementation="structured").units
        if u.kind in ("conv", "linear")
    )


def test_resnet_float32(resnet_ref):
    model, x1, x2, ref12, _ = resnet_ref
    got = empirical_ntk(copy.deepcopy(model).float(), x1.float(), x2.float(), mode="full")
    assert got.dtype == torch.float32
    assert rel_err(got, ref12) < TOL32


def test_resnet_parameter_subset(resnet_ref):
    model, x1, x2, *_ = resnet_ref
    names = [
        "blocks.1.conv2.weight",
        "blocks.1.bn2.weight",
        "blocks.1.shortcut.0.weight",
        "linear.bias",
    ]
    ref = reference_ntk(model, x1, x2, params=names)
    for impl in ("auto", "structured", "jacobian", "ntvp"):
        got = empirical_ntk(model, x1, x2, mode="full", params=names, implementation=impl)
        assert rel_err(got, ref) < TOL64, impl
    plan = plan_of(model, x1, params=names)
    assert sorted(u.name for u in plan.units) == [
        "blocks.1.bn2",
        "blocks.1.conv2",
        "blocks.1.shortcut.0",
        "linear",
    ]
    assert [u.params for u in plan.units if u.name == "linear"] == [{"bias": "linear.bias"}]


def test_resnet_memory_limit_splits_samples_and_outputs(resnet_ref):
    from widenet.empirical import _finish_plan, _size

    model, x1, x2, ref12, ref11 = resnet_ref
    # One sample's retained graph and taps take ~37 kB here: 200 kB forces blocks of one sample
    # and one output per backward, 400 kB all samples with one output per backward.
    for limit, block in ((200_000, 1), (400_000, 3)):
        plan = plan_of(model, x1, limit=limit)
        _finish_plan(plan, _select_params(model, None), torch.float64)
        _size(plan, 3, 3, True, 8)
        assert (plan.block, plan.group) == (block, 1)
        for mode in MODES:
            got = empirical_ntk(model, x1, mode=mode, memory_limit_bytes=limit)
            assert rel_err(got, reduce(ref11, mode)) < TOL64, (limit, mode)
    got = empirical_ntk(model, x1, x2, mode="diagonal", memory_limit_bytes=200_000)
    assert rel_err(got, reduce(ref12, "diagonal")) < TOL64


def test_output_major_contraction_equals_sample_major():
    """Per-sample gradients stored output-major ((k, n, P) contiguous, as the linear and
    attention units write them) contract to the same kernel as sample-major ones."""
    from widenet.empirical import _contract, _output_major

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)  # (k, n1, P)
    b = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    ao, bo = a.transpose(0, 1), b.transpose(0, 1)  # (n, k, P) views, output-major
    assert _output_major(ao) and not _output_major(ao.contiguous())
    for mode in MODES:
        want = _contract(ao.contiguous(), bo.contiguous(), mode)
        assert torch.allclose(_contract(ao, bo, mode), want, rtol=1e-14, atol=0), mode
        assert torch.allclose(_contract(ao, bo.contiguous(), mode), want, rtol=1e-14), mode
    # the trace by hand: Σ_c Σ_p a[c, i, p] b[c, j, p]
    assert torch.allclose(_contract(ao, bo, "trace"), torch.einsum("cip,cjp->ij", a, b))


def test_buffers_are_reused_only_inside_the_context():
    from widenet.empirical import _buffer, _reused_buffers

    like = torch.zeros(1, dtype=torch.float64)
    outside = _buffer("a", (4, 5), like)
    assert _buffer("a", (4, 5), like).data_ptr() != outside.data_ptr()
    with _reused_buffers():
        first = _buffer("a", (4, 5), like)
        smaller = _buffer("a", (2, 3), like)
        assert smaller.data_ptr() == first.data_ptr() and smaller.shape == (2, 3)
        other = _buffer("b", (4, 5), like)
        assert other.data_ptr() != first.data_ptr()
        grown = _buffer("a", (10, 10), like)
        assert grown.shape == (10, 10) and grown.dtype == torch.float64
        assert _buffer("a", (10, 10), like).data_ptr() == grown.data_ptr()
        assert _buffer(None, (10, 10), like).data_ptr() != grown.data_ptr()
        assert _buffer("a", (10, 10), like.float()).dtype == torch.float32  # per dtype
    assert _buffer("a", (10, 10), like).data_ptr() != grown.data_ptr()


def test_resident_streaming_matches_float64_autograd(monkeypatch):
    """Samples that do not fit one block: every sample's unit inputs and one output group's
    gradients are kept and the samples streamed through forward and backward once per output
    group (plan.resident) instead of once per pair of blocks. Same kernel as float64 autograd
    (symmetric and with x2, trace and diagonal) in blocks of 5 samples and groups of 3
    outputs; the memory model picks the path by itself where it fits and one block does not."""
    import widenet.empirical as E
    from widenet.empirical import _finish_plan

    model = small_resnet()
    x1, x2 = data(12, 3, 8, 8, seed=3), data(5, 3, 8, 8, seed=4)
    ref11, ref12 = reference_ntk(model, x1), reference_ntk(model, x1, x2)
    size = E._size

    def forced(plan, *args):
        size(plan, *args)
        plan.resident, plan.block, plan.group = True, 5, 3

    monkeypatch.setattr(E, "_size", forced)
    for xb, ref in ((None, ref11), (x2, ref12)):
        for mode in ("trace", "diagonal"):
            got = empirical_ntk(model, x1, xb, mode=mode)
            assert rel_err(got, reduce(ref, mode)) < TOL64, (xb is None, mode)
    monkeypatch.undo()
    # Per sample here: graph 21 kB, taps 16 kB, unit inputs 19 kB. At 7 MB, 48 samples
    # against 5 would need blocks of 24 (twice the forward and backward of x2's block), and
    # the inputs of all 53 fit beside the units' workspace.
    x48 = data(48, 3, 8, 8, seed=5)
    plan = plan_of(model, x48, limit=7_000_000)
    _finish_plan(plan, _select_params(model, None), torch.float64)
    E._size(plan, 48, 5, False, 8)
    assert plan.resident and (plan.block, plan.group) == (48, 1)
    got = empirical_ntk(model, x48, x2, memory_limit_bytes=7_000_000)
    assert rel_err(got, reduce(reference_ntk(model, x48, x2), "trace")) < TOL64
    # Full mode needs every output at once: blocks of pairs as before, same kernel.
    got = empirical_ntk(model, x1, mode="full", memory_limit_bytes=1_600_000)
    assert rel_err(got, ref11) < TOL64


# --------------------------------------------------------------------------------------------
# Transformer: LayerNorm, softmax attention, residual additions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first, norm_first", [(True, False), (False, True)])
def test_transformer_encoder_matches_float64_autograd(batch_first, norm_first):
    model = encoder(batch_first, norm_first)
    x1, x2 = data(3, 5, 8), data(2, 5, 8, seed=2)
    ref12, ref11 = reference_ntk(model, x1, x2), reference_ntk(model, x1)
    # "ntvp" differentiates the whole model forward-mode: the fused inference path of the
    # encoder layer (no forward AD) is switched off for the call, and back on after it.
    for impl in ("auto", "structured", "jacobian", "ntvp"):
        for mode in MODES:
            got = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
            assert rel_err(got, reduce(ref12, mode)) < TOL64, (impl, mode)
        assert (
            rel_err(empirical_ntk(model, x1, implementation=impl), reduce(ref11, "trace")) < TOL64
        )
        assert torch.backends.mha.get_fastpath_enabled()
    plan = plan_of(model, x1)
    assert plan.general == []
    kinds = {u.name.split(".")[-1]: u.kind for u in plan.units}
    assert kinds["self_attn"] == "attention" and kinds["norm1"] == "affine"
    assert kinds["linear1"] == "linear"  # batch dim 1 when batch_first=False: found by the probe


def test_outputs_one_at_a_time_when_no_unit_batches_them():
    """With only per-sample-gradient linear, attention and affine units in one block, the plan
    takes the outputs one per backward (the same work in 1/k of the memory), with the same
    kernel as float64 autograd; convolutions, full mode and several blocks keep the groups."""
    model = encoder()
    x1, x2 = data(3, 5, 8), data(2, 5, 8, seed=2)
    plan = plan_of(model, x1, implementation="jacobian")
    assert plan.k == 2 and plan.group == 1 and plan.block == 3
    assert {u.kind for u in plan.units} == {"linear", "attention", "affine"}
    ref12 = reference_ntk(model, x1, x2)
    for mode in ("trace", "diagonal"):
        got = empirical_ntk(model, x1, x2, mode=mode, implementation="jacobian")
        assert rel_err(got, reduce(ref12, mode)) < TOL64, mode
    assert plan_of(model, x1, mode="full", implementation="jacobian").group == 2
    resnet = small_resnet()
    assert plan_of(resnet, data(4, 3, 8, 8)).group == 3  # convolutions: one GEMM per group
    # Blocks of 2 of the 3 samples: a partner block would redo a group's backward passes
    plan, _ = _plan(model, _select_params(model, None), x1, None, "trace", "jacobian", 2**30, 2)
    _size(plan, 3, 3, True, 8)
    assert plan.block == 2 and plan.group == 2


class CrossAttention(nn.Module):
    """Attention with a separate key/value sequence, masks, and optionally its weights."""

    def __init__(self, need_weights=False, bias=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2, bias=bias, batch_first=True)
        self.readout = nn.Linear(6, 3)
        self.need_weights = need_weights
        self.masks = True

    def forward(self, x):  # x: (n, 7, 6); queries from the first 3 positions
        q, kv = x[:, :3], x[:, 3:]
        causal = torch.triu(torch.ones(3, 4, dtype=torch.bool), 1)
        pad = torch.zeros(x.shape[0], 4, dtype=torch.bool)
        pad[:, -1] = True  # the last key position is padding
        if not self.masks:
            causal = pad = None
        y, w = self.attn(
            q, kv, kv, attn_mask=causal, key_padding_mask=pad, need_weights=self.need_weights
        )
        out = self.readout(y.mean(1))
        return out if w is None else out + w.sum((1, 2))[:, None]


@pytest.mark.parametrize("need_weights, bias", [(False, True), (False, False), (True, True)])
def test_attention_projections_with_masks_and_cross_attention(need_weights, bias):
    """nn.MultiheadAttention's projections as linear maps around its softmax core (kind
    "attention"): with a causal mask, key padding and keys/values other than the queries, the
    same kernel as float64 autograd; a module returning its attention weights keeps its own
    vjp (kind "generic")."""
    torch.manual_seed(0)
    model = CrossAttention(need_weights, bias).double().eval()
    x1, x2 = data(4, 7, 6), data(3, 7, 6, seed=2)
    ref12 = reference_ntk(model, x1, x2)
    for mode in MODES:
        got = empirical_ntk(model, x1, x2, mode=mode)
        assert rel_err(got, reduce(ref12, mode)) < TOL64, mode
    units = {u.name: u for u in plan_of(model, x1).units}
    assert units["attn"].kind == ("generic" if need_weights else "attention")
    # Masked calls are tapped at the output(s) alone (the core differentiated per output)
    assert len(units["attn"].out_dims) == (2 if need_weights else 1)


def test_attention_calls_follow_the_probe_and_earlier_hooks():
    """Whether an attention unit's calls are recomputed from tapped q, k, v is the probe's
    call's decision: a unit probed masked stays unfused when a later call with the cached
    plan is plain, and keeps groups of outputs (its core is recomputed once per group). A
    plain call whose output an earlier forward hook changes is not recomputed, which would
    drop the change. Every kernel is float64 autograd's."""
    torch.manual_seed(0)
    model = CrossAttention().double().eval()
    x1, x2 = data(4, 7, 6), data(3, 7, 6, seed=2)
    for masks in (True, False):  # the second call reuses the first call's plan
        model.masks = masks
        ref = reference_ntk(model, x1, x2)
        assert rel_err(empirical_ntk(model, x1, x2, mode="full"), ref) < TOL64, masks
    model.masks = True
    plan = plan_of(model, x1)
    assert plan.units[0].name == "attn" and plan.units[0].fused is False
    assert plan.group == plan.k == 3
    model.masks = False
    plan = plan_of(model, x1)
    assert plan.units[0].fused is True and plan.group == 1
    for scale in (2.0, 1.0):  # a hook that changes the output, and one that observes it
        torch.manual_seed(0)
        plain = PlainAttention(True, True, True).double().eval()
        plain.attn.register_forward_hook(lambda m, a, out, s=scale: (s * out[0], out[1]))
        ref = reference_ntk(plain, x1, x2)
        assert rel_err(empirical_ntk(plain, x1, x2, mode="full"), ref) < TOL64, scale
        assert plan_of(plain, x1).units[0].fused is False


class PlainAttention(nn.Module):
    """Unmasked self- or cross-attention (keys and values 4 positions, queries 3), the call
    that _attention_hook re-expresses with its q, k and v tapped."""

    def __init__(self, batch_first, bias, cross):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 3, bias=bias, batch_first=batch_first)
        self.readout = nn.Linear(6, 3)
        self.batch_first, self.cross = batch_first, cross

    def forward(self, x):  # x: (n, 7, 6)
        x = x if self.batch_first else x.transpose(0, 1)
        ax = 1 if self.batch_first else 0
        q = x.narrow(ax, 0, 3) if self.cross else x
        kv = x.narrow(ax, 3, 4) if self.cross else x
        y, w = self.attn(torch.tanh(q), kv, kv * 0.5, need_weights=False)
        return self.readout(y.mean(ax))


@pytest.mark.parametrize(
    "batch_first, bias, cross", [(True, True, False), (False, True, True), (True, False, True)]
)
def test_plain_attention_taps_its_projections(batch_first, bias, cross, monkeypatch):
    """An unmasked call is recomputed from its q, k and v projections, tapped beside its
    output (four taps): the one backward per output gives ∂f/∂q, ∂f/∂k, ∂f/∂v, and the
    kernel is float64 autograd's, for every mode and for parameter subsets. The hook keeps
    the core's output for the out-projection; the resident path's rebuilt records, which
    do not have it, recompute it: same kernel."""
    import widenet.empirical as E
    from widenet.empirical import _attention_core, _attention_projections, _hooked

    torch.manual_seed(0)
    model = PlainAttention(batch_first, bias, cross).double().eval()
    x1, x2 = data(4, 7, 6), data(3, 7, 6, seed=2)
    ref12 = reference_ntk(model, x1, x2)
    for mode in MODES:
        got = empirical_ntk(model, x1, x2, mode=mode)
        assert rel_err(got, reduce(ref12, mode)) < TOL64, mode
    unit = {u.name: u for u in plan_of(model, x1).units}["attn"]
    assert unit.kind == "attention" and len(unit.out_dims) == 4
    with _hooked([unit]):
        model(x1)
    (record,) = unit.records
    qkv = E._plain_attention_call(unit.module, *tree_unflatten(list(record[0]), record[1]))
    with torch.no_grad():
        core = _attention_core(unit.module, *_attention_projections(unit.module, *qkv))
    assert len(record) == 4 and torch.equal(record[3], core)
    unit.records = []
    size = E._size

    def forced(plan, *args):
        size(plan, *args)
        plan.resident, plan.block, plan.group = True, 3, 1

    with monkeypatch.context() as mp:
        mp.setattr(E, "_size", forced)
        got = empirical_ntk(model, x1, x2, mode="trace")
    assert rel_err(got, reduce(ref12, "trace")) < TOL64
    subsets = [["attn.in_proj_weight"], ["attn.out_proj.weight", "readout.bias"]]
    subsets += [["attn.in_proj_bias", "attn.out_proj.bias"]] if bias else []
    for params in subsets:
        ref = reference_ntk(model, x1, x2, params=params)
        got = empirical_ntk(model, x1, x2, mode="full", params=params)
        assert rel_err(got, ref) < TOL64, params


class Gain(nn.Module):
    """A custom module: its parameters get per-sample gradients by vmap of its own vjp."""

    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.shift = nn.Parameter(torch.linspace(-0.3, 0.3, c))

    def forward(self, x):
        return torch.tanh(
            x * self.gain.view(-1, *([1] * (x.ndim - 2)))
            + self.shift.view(-1, *([1] * (x.ndim - 2)))
        )


def norms_net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.BatchNorm1d(4),  # on (n, C, L)
        Gain(4),
        nn.Flatten(),
        nn.Linear(24, 5),
        nn.BatchNorm1d(5),  # on (n, C)
        nn.LayerNorm(5, bias=False),
        nn.Tanh(),
        nn.Linear(5, 2),
    ).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
            if isinstance(m, nn.BatchNorm1d):
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
    return model.eval()


def test_norms_and_custom_modules():
    model = norms_net()
    x1, x2 = data(3, 2, 6), data(2, 2, 6, seed=2)
    plan = plan_of(model, x1)
    assert [u.kind for u in plan.units] == [
        "conv",
        "affine",
        "generic",
        "linear",
        "affine",
        "affine",
        "linear",
    ]
    assert plan.general == []
    ref = reference_ntk(model, x1, x2)
    for impl in ("auto", "structured", "jacobian"):
        for mode in MODES:
            got = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
            assert rel_err(got, reduce(ref, mode)) < TOL64, (impl, mode)


# --------------------------------------------------------------------------------------------
# Convolutions the architecture layer builds: Conv1d, Conv2d, stride, padding, groups
# --------------------------------------------------------------------------------------------


def conv_net(conv, in_shape, k=2):
    torch.manual_seed(0)
    with torch.no_grad():
        feat = conv(torch.zeros(1, *in_shape)).numel()
    return nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(feat, k)).double()


CONVS = {
    "conv2d stride 2 padding 1": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 7, 7)),
    "conv2d circular": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
    "conv2d reflect, stride (1, 2)": (
        lambda: nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 1), padding_mode="reflect"),
        (2, 5, 6),
    ),
    "conv2d same, even kernel": (lambda: nn.Conv2d(2, 3, 4, padding="same"), (2, 5, 5)),
    "conv2d dilation 2 valid": (lambda: nn.Conv2d(2, 3, 3, dilation=2), (2, 7, 7)),
    "conv2d groups 2": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (4, 4, 4)),
    "conv2d depthwise, no bias": (
        lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False),
        (3, 4, 4),
    ),
    "conv1d stride 2": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 9)),
    "conv1d circular": (lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular"), (2, 6)),
    "conv1d groups, same": (lambda: nn.Conv1d(4, 4, 3, padding="same", groups=2), (4, 7)),
}


@pytest.mark.parametrize("weight_gradients", ["unfolded GEMM", "grouped convolution"])
@pytest.mark.parametrize("case", list(CONVS))
def test_convolutions_every_route(case, weight_gradients, monkeypatch):
    # Per-sample weight gradients by either method (chosen by fan-in; forced both ways here).
    threshold = 1 if weight_gradients == "unfolded GEMM" else 10**9
    monkeypatch.setattr("widenet.empirical._UNFOLD_MIN_FAN_IN", threshold)
    make, in_shape = CONVS[case]
    model = conv_net(make(), in_shape)
    x1, x2 = data(3, *in_shape), data(2, *in_shape, seed=2)
    ref = reference_ntk(model, x1, x2)
    for impl, route in (("structured", "gram"), ("jacobian", "jac")):
        plan = plan_of(model, x1, implementation=impl)
        assert [u.route for u in plan.units] == [route, route] and plan.general == [], impl
        for mode in MODES:
            got = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
            assert rel_err(got, reduce(ref, mode)) < TOL64, (impl, mode)


def stax_networks():
    """Networks built by widenet's layer algebra (NTK-parameterised widenet.layers.Conv)."""
    import widenet as wn

    conv2d = wn.serial(
        wn.Conv(kernel_size=3, padding="same", w_std=1.5, b_std=0.3),
        wn.Relu(),
        wn.Conv(kernel_size=(2, 3), stride=(2, 1), padding="circular", w_std=1.3, b_std=0.2),
        wn.Residual(wn.Relu(), wn.Conv(kernel_size=3, padding="same", w_std=1.2)),
        wn.Relu(),
        wn.Conv(kernel_size=2, stride=2, padding="valid", w_std=1.1, b_std=0.1),
        wn.GlobalAvgPool(),
        wn.Dense(out_features=2, w_std=1.0, b_std=0.1),
    )
    conv1d = wn.serial(
        wn.Conv(kernel_size=3, stride=2, padding="circular", w_std=1.4, b_std=0.2),
        wn.Relu(),
        wn.Conv(kernel_size=2, padding="same", w_std=1.2, b_std=0.1, parameterization="standard"),
        wn.Flatten(),
        wn.Dense(out_features=2, w_std=1.0),
    )
    return {
        "conv2d": (
            conv2d.network(in_shape=(2, 6, 6), width=3, seed=0, dtype=torch.float64),
            (2, 6, 6),
        ),
        "conv1d": (conv1d.network(in_shape=(2, 7), width=3, seed=0, dtype=torch.float64), (2, 7)),
    }


@pytest.mark.parametrize("name", ["conv2d", "conv1d"])
def test_widenet_scaled_convolutions(name):
    from widenet.layers import Conv as ScaledConv

    model, in_shape = stax_networks()[name]
    x1, x2 = data(3, *in_shape), data(2, *in_shape, seed=2)
    ref = reference_ntk(model, x1, x2)
    for impl, route in (("structured", "gram"), ("jacobian", "jac"), ("auto", None)):
        plan = plan_of(model, x1, implementation=impl)
        assert plan.general == [], impl
        convs = [u for u in plan.units if isinstance(u.module, ScaledConv)]
        assert convs and all(u.kind == "conv" for u in convs)
        assert route is None or all(u.route == route for u in convs)
        for mode in MODES:
            got = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
            assert rel_err(got, reduce(ref, mode)) < TOL64, (impl, mode)


# --------------------------------------------------------------------------------------------
# Outputs that are not tensors; integer inputs; bad inputs
# --------------------------------------------------------------------------------------------


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return {"logits": self.head(h), "hidden": h}


def test_output_fn_for_dict_and_tuple_outputs():
    torch.manual_seed(0)
    model = DictNet().double()
    x1, x2 = data(4, 4), data(3, 4, seed=2)
    plain = nn.Sequential(model.lin, nn.Tanh(), model.head)
    ref = reference_ntk(plain, x1, x2)
    for impl in ("auto", "jacobian", "ntvp"):
        got = empirical_ntk(
            model, x1, x2, mode="full", implementation=impl, output_fn=lambda o: o["logits"]
        )
        assert rel_err(got, ref) < TOL64, impl
    tupled = nn.Sequential(plain, TupleOut())
    got = empirical_ntk(tupled, x1, x2, mode="full", output_fn=lambda o: o[0])
    assert rel_err(got, ref) < TOL64
    nngp = empirical_nngp(model, x1, x2, output_fn=lambda o: o["logits"])
    with torch.no_grad():
        assert rel_err(nngp, plain(x1) @ plain(x2).T / 2) < TOL64
    with pytest.raises(TypeError, match="output_fn"):
        empirical_ntk(model, x1)


class TupleOut(nn.Module):
    def forward(self, x):
        return x, x.detach().sum(-1)


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lin = nn.Linear(6, 3)

    def forward(self, ids):
        return self.lin(torch.tanh(self.emb(ids)).mean(1))


def test_integer_inputs_for_embeddings():
    torch.manual_seed(0)
    model = TokenNet().double()
    gen = torch.Generator().manual_seed(3)
    ids1 = torch.randint(0, 11, (4, 5), generator=gen)
    ids2 = torch.randint(0, 11, (3, 5), generator=gen)
    ref = reference_ntk_ids(model, ids1, ids2)
    for impl in ("auto", "structured", "jacobian", "ntvp"):
        got = empirical_ntk(model, ids1, ids2, mode="full", implementation=impl)
        assert got.dtype == torch.float64
        assert rel_err(got, ref) < TOL64, impl
    sym = empirical_ntk(model, ids1.numpy())  # NumPy integer ids stay integers
    assert rel_err(sym, reduce(reference_ntk_ids(model, ids1, ids1), "trace")) < TOL64


def reference_ntk_ids(model, ids1, ids2):
    """reference_ntk for integer inputs (which it would cast to float64)."""
    named = dict(model.named_parameters())

    def jac(ids):
        rows = []
        for i in range(ids.shape[0]):
            out = model(ids[i : i + 1]).reshape(-1)
            rows.append(
                torch.stack(
                    [
                        torch.cat(
                            [
                                g.reshape(-1)
                                for g in torch.autograd.grad(
                                    out[c], list(named.values()), retain_graph=True
                                )
                            ]
                        )
                        for c in range(out.shape[0])
                    ]
                )
            )
        return torch.stack(rows)

    return torch.einsum("icp,jdp->ijcd", jac(ids1), jac(ids2))


def test_wrong_feature_size_names_the_argument_and_the_expected_size():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with pytest.raises(
        ValueError, match=r"x1 with features of shape \(7,\).*'0' \(Linear\) expects in_features=5"
    ):
        empirical_ntk(model, data(3, 7))
    cnn = conv_net(nn.Conv2d(2, 3, 3), (2, 5, 5))
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\) expects 2 input channels"):
        empirical_ntk(cnn, data(3, 4, 5, 5))


# --------------------------------------------------------------------------------------------
# Tiles (kernel_to_zarr), progress
# --------------------------------------------------------------------------------------------


def test_tiles_equal_the_whole_kernel(resnet_ref):
    model, x1, x2, ref12, ref11 = resnet_ref
    x = torch.cat([x1, x2])
    whole = empirical_ntk(model, x)
    tiles = empirical_ntk_tiles(model, x)
    assert isinstance(tiles, EmpiricalNTKTiles)
    a, b = slice(0, 3), slice(3, 5)
    assert rel_err(tiles(a, a), whole[a, a]) < TOL64
    assert torch.equal(tiles(a, a), tiles(a, a).T)
    assert rel_err(tiles(a, b), whole[a, b]) < TOL64
    clone = pickle.loads(pickle.dumps(tiles))  # what a Dask worker receives: no plan
    assert clone._state is None
    assert rel_err(clone(b, a), whole[b, a]) < TOL64


def test_progress_bar_does_not_change_the_result(capsys):
    model = encoder()
    x = data(3, 5, 8)
    quiet = empirical_ntk(model, x, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shown = empirical_ntk(model, x, progress=True, memory_limit_bytes=200_000)
    assert rel_err(shown, quiet) < TOL64


def test_busy_machine_runs_single_threaded_with_the_same_kernel(resnet_ref, monkeypatch):
    """On a busy CPU (widenet.threads.machine_busy) the call runs on one torch thread, and
    gives the same kernel; the thread setting is restored afterwards."""
    import widenet.empirical as E

    model, x1, _, _, ref11 = resnet_ref
    seen = []
    compute = E._compute

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return compute(*args, **kwargs)

    monkeypatch.setattr(E, "_compute", spy)
    threads = torch.get_num_threads()
    for busy in (False, True):
        monkeypatch.setattr("widenet.threads.machine_busy", lambda busy=busy: busy)
        got = empirical_ntk(model, x1)
        assert rel_err(got, reduce(ref11, "trace")) < TOL64
        assert torch.get_num_threads() == threads
    assert seen == [threads, 1]
