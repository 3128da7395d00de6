"""Empirical NTK / NNGP against a float64 brute-force Jacobian contraction.

Tolerances: in float64 every path differs from the reference only by summation order, ~1e-16
relative, so 1e-9 is far above rounding and far below any formula error (an omitted or
mis-scaled term changes the kernel by O(1) relative). float32 paths are held to 1e-4, the
acceptance bar; their rounding is ~1e-6 on these small models.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import widenet as wn
from widenet.empirical import _plan, _select_params, empirical_nngp, empirical_ntk
from widenet.layers import Dense

TOL64 = 1e-9
TOL32 = 1e-4
IMPLS = ("auto", "structured", "jacobian", "ntvp")


def reference_ntk(model, x1, x2=None, params=None):
    """(n1, n2, k, k) from per-sample float64 Jacobians built with torch.autograd.grad."""
    m = copy.deepcopy(model).double()
    named = dict(m.named_parameters())
    names = list(named) if params is None else list(params)

    def jacobian(x):
        rows = []
        for i in range(x.shape[0]):
            out = m(x[i : i + 1].double()).reshape(-1)
            per_out = []
            for c in range(out.shape[0]):
                gs = torch.autograd.grad(
                    out[c], [named[n] for n in names], retain_graph=True, allow_unused=True
                )
                per_out.append(
                    torch.cat(
                        [
                            (torch.zeros_like(named[n]) if g is None else g).reshape(-1)
                            for g, n in zip(gs, names, strict=True)
                        ]
                    )
                )
            rows.append(torch.stack(per_out))
        return torch.stack(rows)

    j1 = jacobian(x1)
    j2 = j1 if x2 is None else jacobian(x2)
    return torch.einsum("icp,jdp->ijcd", j1, j2)


def reduce(full, mode):
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return {"full": full, "diagonal": diag, "trace": diag.mean(-1)}[mode]


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def ntk_quiet(*args, **kwargs):
    """empirical_ntk without the expected 'structured' fallback warning (tested separately)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="implementation='structured'")
        return empirical_ntk(*args, **kwargs)


def plan_of(model, x, mode="trace", implementation="auto", params=None):
    selected = _select_params(model, params)
    plan, _ = _plan(model, selected, x, None, mode, implementation, 2**30, None)
    return plan


def mlp(k=3, act=nn.Tanh, d=5, width=12, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, width),
        nn.ReLU(inplace=True),  # in-place after a tapped layer must not corrupt its gradient
        nn.Linear(width, width),
        act(),
        nn.Linear(width, k),
    ).double()


def data(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------
# Correctness of every path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("mode", ["trace", "full", "diagonal"])
def test_mlp_multi_output_all_modes(implementation, mode):
    model = mlp(k=3)
    x1, x2 = data(6, 5), data(4, 5, seed=2)
    ref = reduce(reference_ntk(model, x1, x2), mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a Linear MLP is fully structured
        got = empirical_ntk(model, x1, x2, mode=mode, implementation=implementation)
    assert got.shape == ref.shape
    assert got.dtype == torch.float64
    assert rel_err(got, ref) < TOL64


def test_auto_uses_fast_path_for_linear_and_dense():
    plan = plan_of(mlp(), data(4, 5))
    assert [u.name for u in plan.units] == ["0", "2", "4"] and plan.general == []
    assert all(u.kind == "linear" and u.route == "gram" for u in plan.units)
    dense = nn.Sequential(Dense(5, 8, b_std=0.5), nn.ReLU(), Dense(8, 2, w_std=1.3, b_std=0.2))
    plan = plan_of(dense.double(), data(4, 5))
    assert len(plan.units) == 2 and plan.general == []


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_dense_scales(parameterization):
    # weight_scale != 1 and bias_scale != 1 must enter as ws² X Xᵀ + bs².
    torch.manual_seed(0)
    kw = dict(parameterization=parameterization, dtype=torch.float64)
    model = nn.Sequential(
        Dense(5, 8, w_std=1.4, b_std=0.3, **kw), nn.Tanh(), Dense(8, 2, w_std=0.9, b_std=0.7, **kw)
    )
    x1, x2 = data(5, 5), data(3, 5, seed=2)
    got = empirical_ntk(model, x1, x2, mode="full")
    assert rel_err(got, reference_ntk(model, x1, x2)) < TOL64


@pytest.mark.parametrize("by", ["name", "object"])
def test_parameter_subset_first_layer(by):
    model = mlp(k=2)
    x = data(5, 5)
    names = ["0.weight", "0.bias"]
    params = names if by == "name" else [model[0].weight, model[0].bias]
    ref = reference_ntk(model, x, params=names)
    for impl in IMPLS:
        got = empirical_ntk(model, x, mode="full", params=params, implementation=impl)
        assert rel_err(got, ref) < TOL64, impl
    # The subset kernel is genuinely different from the full one.
    assert rel_err(reference_ntk(model, x), ref) > 0.1


class LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 10)
        self.norm = nn.LayerNorm(10)
        self.out = nn.Linear(10, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.inp(x))))


def test_layernorm_is_a_unit_beside_the_structured_layers():
    torch.manual_seed(0)
    model = LayerNormNet().double()
    with torch.no_grad():  # non-trivial affine parameters
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    x1, x2 = data(5, 4), data(3, 4, seed=2)
    plan = plan_of(model, x1)
    # LayerNorm's per-sample gradients (Σ g ⊙ x̂, Σ g) come from the same backward.
    assert [(u.name, u.kind) for u in plan.units] == [
        ("inp", "linear"),
        ("norm", "affine"),
        ("out", "linear"),
    ]
    assert plan.general == []
    ref = reference_ntk(model, x1, x2)
    assert rel_err(empirical_ntk(model, x1, x2, mode="full"), ref) < TOL64
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every parameter has a unit: no warning
        got = empirical_ntk(model, x1, x2, mode="full", implementation="structured")
    assert rel_err(got, ref) < TOL64


def test_structured_warns_naming_parameters_without_a_unit():
    torch.manual_seed(0)
    model = ScaleNet().double()  # `gain` is used directly in the root module's forward
    x1 = data(5, 4)
    with pytest.warns(UserWarning, match="root"):
        got = empirical_ntk(model, x1, mode="full", implementation="structured")
    assert rel_err(got, reference_ntk(model, x1)) < TOL64


def small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # 36 positions: contracted by per-sample gradients
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 16, 3, stride=2),  # 4 positions, fan-in 36: contracted by Grams
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(64, 2),
    ).double()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_()
    return model.eval()


@pytest.mark.parametrize("mode", ["trace", "full", "diagonal"])
def test_cnn_with_batchnorm_eval(mode):
    model = small_cnn()
    x1, x2 = data(4, 2, 6, 6), data(3, 2, 6, 6, seed=2)
    ref = reduce(reference_ntk(model, x1, x2), mode)
    for impl in ("auto", "jacobian"):
        got = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
        assert rel_err(got, ref) < TOL64, impl


def test_cnn_plan_exercises_both_position_contractions():
    plan = plan_of(small_cnn(), data(4, 2, 6, 6), mode="full")
    by_name = {u.name: u for u in plan.units}
    assert by_name["0"].kind == "conv" and by_name["0"].route == "jac"
    assert by_name["3"].kind == "conv" and by_name["3"].route == "gram"
    assert by_name["1"].kind == "affine"  # BatchNorm (eval): Σ g ⊙ x̂ per sample
    assert plan.general == []


class PositionsNet(nn.Module):
    """Linear layers on (n, S, features): Θ_ij = Σ_{s,t} (g_is·g_jt)(x_is·x_jt) per layer."""

    def __init__(self, width):
        super().__init__()
        self.a = nn.Linear(16, width)
        self.b = nn.Linear(width, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))).sum(1)


@pytest.mark.parametrize("width", [16, 1])
@pytest.mark.parametrize("implementation, route", [("structured", "gram"), ("jacobian", "jac")])
def test_linear_on_extra_dims(width, implementation, route):
    torch.manual_seed(0)
    model = PositionsNet(width).double()
    x1, x2 = data(4, 2, 16), data(3, 2, 16, seed=2)
    plan = plan_of(model, x1, mode="full", implementation=implementation)
    assert [u.name for u in plan.units] == ["a", "b"]
    assert [u.route for u in plan.units] == [route, route]
    got = empirical_ntk(model, x1, x2, mode="full", implementation=implementation)
    assert rel_err(got, reference_ntk(model, x1, x2)) < TOL64


class SharedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


class TiedNet(nn.Module):
    """A Linear's weight also used outside the layer: the probe must reject the fast path."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x)) + torch.sin(x @ self.lin.weight.T))


class FlippedNet(nn.Module):
    """A Linear whose row i belongs to sample n-1-i: the probe must see dim 0 is not the batch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x.flip(0))).flip(0))


class ScaleNet(nn.Module):
    """A custom module with a non-Linear parameter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x) * self.gain))


@pytest.mark.parametrize(
    "cls, general",
    [
        (SharedNet, ["shared.weight", "shared.bias"]),
        (TiedNet, ["lin.weight", "lin.bias"]),
        (FlippedNet, ["lin.weight", "lin.bias"]),
        (ScaleNet, ["gain"]),
    ],
)
def test_models_needing_the_general_path(cls, general):
    torch.manual_seed(0)
    model = cls().double()
    x1, x2 = data(5, 4), data(3, 4, seed=2)
    assert plan_of(model, x1).general == general
    ref = reference_ntk(model, x1, x2)
    for impl in ("auto", "jacobian", "ntvp"):
        got = empirical_ntk(model, x1, x2, mode="full", implementation=impl)
        assert rel_err(got, ref) < TOL64, impl


class BranchyNet(nn.Module):
    """Python control flow on a sample's values: vmap cannot batch it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.gain = nn.Parameter(torch.tensor([0.7, 1.3]))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        rows = [
            h[i] * (self.gain[0] if h[i].detach().sum().item() > 0 else self.gain[1])
            for i in range(len(h))
        ]
        return self.out(torch.stack(rows))


def test_vmap_failure_falls_back_to_a_loop():
    torch.manual_seed(0)
    model = BranchyNet().double()
    x1, x2 = data(5, 3), data(3, 3, seed=2)
    with pytest.warns(UserWarning, match="vmap failed"):
        got = empirical_ntk(model, x1, x2, mode="full", chunk_size=2)
    assert rel_err(got, reference_ntk(model, x1, x2)) < TOL64


@pytest.mark.parametrize("mode", ["trace", "full", "diagonal"])
def test_x2_none_is_symmetric_and_equals_x2_x1(mode):
    model = LayerNormNet().double()
    x = data(6, 4)
    got = empirical_ntk(model, x, mode=mode)
    assert torch.equal(got, empirical_ntk(model, x, x, mode=mode).mul(0).add(got))  # shape/dtype
    assert rel_err(got, empirical_ntk(model, x, x.clone(), mode=mode)) < TOL64
    swapped = got.transpose(0, 1)
    if mode == "full":
        swapped = swapped.transpose(2, 3)
    assert torch.equal(got, swapped)
    assert rel_err(got, reduce(reference_ntk(model, x), mode)) < TOL64


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("mode", ["trace", "full", "diagonal"])
def test_symmetric_block_subtiles(monkeypatch, implementation, mode):
    # Θ(x, x) of one block is computed in upper-triangle sub-tiles and mirrored; with tiles of 3
    # rows on 7 samples every branch (diagonal, off-diagonal, ragged last tile) runs.
    import widenet.empirical as E

    model = LayerNormNet().double()
    x = data(7, 4)
    monkeypatch.setattr(E, "_SYMMETRIC_TILE", 3)
    got = ntk_quiet(model, x, mode=mode, implementation=implementation)
    assert rel_err(got, reduce(reference_ntk(model, x), mode)) < TOL64


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_chunking_by_memory_limit_gives_same_answer(implementation, symmetric):
    model = LayerNormNet().double()
    x1 = data(7, 4)
    x2 = None if symmetric else data(5, 4, seed=2)
    whole = ntk_quiet(model, x1, x2, mode="full", implementation=implementation)
    selected = _select_params(model, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="implementation='structured'")
        plan, _ = _plan(model, selected, x1, x2, "full", implementation, 2000, None)
    assert plan.block < 5  # the tiny limit really forces several blocks
    chunked = ntk_quiet(
        model, x1, x2, mode="full", implementation=implementation, memory_limit_bytes=2000
    )
    assert rel_err(chunked, whole) < TOL64
    by_size = ntk_quiet(model, x1, x2, mode="full", implementation=implementation, chunk_size=3)
    assert rel_err(by_size, whole) < TOL64


@pytest.mark.parametrize("implementation", IMPLS)
def test_float32_follows_inputs_and_agrees(implementation):
    model64 = small_cnn()
    model32 = copy.deepcopy(model64).float()
    x = data(4, 2, 6, 6)
    ref = reduce(reference_ntk(model64, x), "trace")
    got = ntk_quiet(model32, x.float(), implementation=implementation)
    assert got.dtype == torch.float32
    assert rel_err(got, ref) < TOL32


def test_per_unit_backward_fallback(monkeypatch):
    # The k output-gradients come from one batched backward; if an op has no batching rule,
    # one backward per output unit must give the same kernel.
    model = small_cnn()
    x = data(4, 2, 6, 6)
    batched = empirical_ntk(model, x, mode="full")
    grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    assert rel_err(empirical_ntk(model, x, mode="full"), batched) < TOL64


def test_trace_is_mean_of_output_diagonal():
    model = mlp(k=3)
    x = data(4, 5)
    full = empirical_ntk(model, x, mode="full")
    trace = empirical_ntk(model, x, mode="trace")
    assert torch.allclose(trace, torch.diagonal(full, dim1=2, dim2=3).mean(-1), rtol=1e-12)


def test_scalar_output_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0)).double()
    x = data(5, 3)
    got = empirical_ntk(model, x)
    assert got.shape == (5, 5)
    assert rel_err(got, reduce(reference_ntk(model, x), "trace")) < TOL64


# --------------------------------------------------------------------------------------------
# The model is left untouched
# --------------------------------------------------------------------------------------------


def snapshot(model):
    return (
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def no_hooks(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


@pytest.mark.parametrize("implementation", IMPLS)
def test_model_state_is_preserved(implementation):
    model = small_cnn()
    model[6].train()  # a Linear in training mode is fine and must stay so
    model[1].weight.requires_grad_(False)
    before = snapshot(model)
    ntk_quiet(model, data(3, 2, 6, 6), implementation=implementation)
    after = snapshot(model)
    assert all(torch.equal(before[0][n], after[0][n]) for n in before[0])
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks(model)


class FailsOnBigBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        y = self.lin(x)
        if x.shape[0] > 2:  # the 2-sample probe passes, the real batch fails mid-forward
            raise RuntimeError("boom")
        return y


def test_hooks_removed_on_error():
    model = FailsOnBigBatch().double()
    with pytest.raises(RuntimeError, match="boom"):
        empirical_ntk(model, data(5, 3))
    assert no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_training_batchnorm_and_dropout_are_refused():
    model = small_cnn().train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        empirical_ntk(model, data(3, 2, 6, 6))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        empirical_nngp(model, data(3, 2, 6, 6))
    drop = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="Dropout.*eval"):
        empirical_ntk(drop, data(3, 3))
    assert empirical_ntk(drop.eval(), data(3, 3)).shape == (3, 3)
    stats_free = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats"):
        empirical_ntk(stats_free.double().eval(), data(3, 3))


def test_bad_inputs_name_the_argument():
    model = mlp(k=2)
    x = data(4, 5)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x1 contains 1 NaN"):
        empirical_ntk(model, bad)
    with pytest.raises(ValueError, match="x2 contains 1 NaN"):
        empirical_ntk(model, x, bad)
    with pytest.raises(ValueError, match="x1 must have at least 2 dimensions"):
        empirical_ntk(model, x[0])
    with pytest.raises(ValueError, match="x2 must have at least 2 dimensions"):
        empirical_ntk(model, x, x[0])
    with pytest.raises(ValueError, match="feature shape"):
        empirical_ntk(model, x, data(3, 4))
    with pytest.raises(TypeError, match="x1 and x2 must have the same dtype"):
        empirical_ntk(model, x, x.float())
    with pytest.raises(TypeError, match="x1 has dtype torch.float32 but the model"):
        empirical_ntk(model, x.float())
    with pytest.raises(ValueError, match="mode must be one of"):
        empirical_ntk(model, x, mode="sum")
    with pytest.raises(ValueError, match="implementation must be one of"):
        empirical_ntk(model, x, implementation="fast")
    with pytest.raises(ValueError, match="params is empty"):
        empirical_ntk(model, x, params=[])
    with pytest.raises(ValueError, match="no parameter named '9.weight'"):
        empirical_ntk(model, x, params=["9.weight"])
    with pytest.raises(ValueError, match="not a parameter of model"):
        empirical_ntk(model, x, params=[torch.zeros(3)])
    with pytest.raises(ValueError, match="memory_limit_bytes"):
        empirical_ntk(model, x, memory_limit_bytes=0)
    with pytest.raises(ValueError, match="chunk_size"):
        empirical_ntk(model, x, chunk_size=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        empirical_ntk(lambda t: t, x)
    frozen = mlp(k=2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        empirical_ntk(frozen, x)
    # An explicit selection of frozen parameters is honoured.
    assert empirical_ntk(frozen, x, params=["4.weight"]).shape == (4, 4)


def test_device_mismatch():
    model = mlp(k=2).to("meta")
    with pytest.raises(ValueError, match="device"):
        empirical_ntk(model, data(4, 5))


# --------------------------------------------------------------------------------------------
# NNGP
# --------------------------------------------------------------------------------------------


def test_empirical_nngp():
    model = mlp(k=3)
    x1, x2 = data(5, 5), data(4, 5, seed=2)
    with torch.no_grad():
        f1, f2 = model(x1), model(x2)
    got = empirical_nngp(model, x1, x2)
    assert rel_err(got, f1 @ f2.T / 3) < TOL64
    full = empirical_nngp(model, x1, x2, mode="full")
    assert rel_err(full, torch.einsum("ic,jd->ijcd", f1, f2)) < TOL64
    diag = empirical_nngp(model, x1, x2, mode="diagonal", chunk_size=2)
    assert rel_err(diag, f1[:, None, :] * f2[None, :, :]) < TOL64
    sym = empirical_nngp(model, x1)
    assert torch.equal(sym, sym.T) and sym.shape == (5, 5)
    with pytest.raises(ValueError, match="x1 contains"):
        empirical_nngp(model, torch.full((2, 5), float("inf"), dtype=torch.float64))


def test_exported():
    assert wn.empirical_ntk is empirical_ntk and wn.empirical_nngp is empirical_nngp


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = small_cnn()
    x = data(4, 2, 6, 6)
    cpu = empirical_ntk(model, x, mode="full")
    gpu = empirical_ntk(copy.deepcopy(model).cuda(), x.cuda(), mode="full")
    assert gpu.device.type == "cuda"
    assert rel_err(gpu.cpu(), cpu) < TOL64
