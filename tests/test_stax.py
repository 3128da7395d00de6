"""Composable architectures (wn.serial and its layers): neural-tangents reference values,
consistency of the tiled engine, errors naming the layer, the finite networks, specs, presets."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import widenet as wn
from widenet import layers as modules
from widenet import stax

F64 = torch.float64
DATA = Path(__file__).parent / "data" / "nt_cnn_kernels.json"
REF = json.loads(DATA.read_text())
KEYS = ("nngp12", "ntk12", "nngp11", "ntk11")


def _layer(spec, parameterization):
    kind = spec[0]
    if kind == "conv":
        _, out, filt, strides, padding, w, b = spec
        return wn.Conv(
            out,
            tuple(filt),
            tuple(strides),
            padding.lower(),
            w,
            b,
            parameterization=parameterization,
        )
    if kind == "dense":
        _, out, w, b = spec
        return wn.Dense(out, w, b, parameterization=parameterization)
    if kind == "avg_pool":
        _, window, strides, padding = spec
        return wn.AvgPool(tuple(window), tuple(strides), padding.lower())
    if kind == "residual":
        return wn.Residual(*(_layer(s, parameterization) for s in spec[1]))
    simple = {
        "relu": wn.Relu,
        "erf": wn.Erf,
        "gelu": wn.Gelu,
        "global_avg_pool": wn.GlobalAvgPool,
        "flatten": wn.Flatten,
        "layer_norm": wn.LayerNorm,
    }
    return simple[kind]()


def _arch(case):
    return wn.serial(*(_layer(s, case["parameterization"]) for s in case["layers"]))


def _inputs(case, dtype):
    inp = REF["inputs"][str(case["dims"])]
    return torch.tensor(inp["x1"], dtype=dtype), torch.tensor(inp["x2"], dtype=dtype)


def _rel(a, b):
    return float(torch.linalg.norm(a.double() - b) / torch.linalg.norm(b))


# --- 1. neural-tangents reference ------------------------------------------------------------


@pytest.mark.parametrize("case", REF["cases"], ids=[c["name"] for c in REF["cases"]])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_matches_neural_tangents(case, dtype):
    x1, x2 = _inputs(case, dtype)
    arch = _arch(case)
    width = case.get("width") if case["parameterization"] == "standard" else None
    k12, k11 = arch.kernel(x1, x2, width=width), arch.kernel(x1, width=width)
    got = dict(zip(KEYS, (k12.nngp, k12.ntk, k11.nngp, k11.ntk), strict=True))
    # float64: measured <= 1e-15 except the NTK of x1 with itself where ReLU meets rho = 1
    # (<= 4e-9: neural-tangents' own rounding of arccos near 1; widenet's diagonal is exact);
    # acceptance bar 1e-6. float32: measured <= 2e-7; bar 1e-4.
    tol = 1e-6 if dtype == F64 else 1e-4
    for key in KEYS:
        assert got[key].dtype == dtype
        ref = torch.tensor(case[key], dtype=F64)
        assert got[key].shape == ref.shape
        err = _rel(got[key], ref)
        assert err <= tol, (key, err)


def test_reference_covers_the_issue_cases():
    names = {c["name"] for c in REF["cases"]}
    assert len(names) == 17
    kinds = {s[0] for c in REF["cases"] for s in c["layers"]}
    assert kinds == {
        "conv",
        "dense",
        "relu",
        "erf",
        "avg_pool",
        "global_avg_pool",
        "flatten",
        "layer_norm",
        "residual",
    }


# --- 2. the tiled engine ---------------------------------------------------------------------


def _images(n, c=2, h=5, w=4, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=dtype)


GAP = wn.serial(
    wn.Conv(kernel_size=3, w_std=1.3, b_std=0.2),
    wn.Relu(),
    wn.AvgPool(2, stride=1, padding="same"),
    wn.Conv(kernel_size=(2, 3), stride=(1, 2), padding="circular", w_std=1.2),
    wn.Erf(),
    wn.GlobalAvgPool(),
    wn.Dense(1, w_std=1.1, b_std=0.3),
)
VEC = wn.serial(wn.Conv(kernel_size=3, w_std=1.4, b_std=0.1), wn.Relu(), wn.Flatten(), wn.Dense(1))


@pytest.mark.parametrize("arch", [GAP, VEC], ids=["gap", "vec"])
def test_workspace_blocks_and_tiles_do_not_change_the_kernel(arch, monkeypatch):
    x1, x2 = _images(11), _images(6, seed=1)
    whole = arch.kernel(x1, x2)
    sym = arch.kernel(x1)
    # A workspace so small that each block holds 3 x 3 pairs, and output tiles of 4.
    plan = arch.plan(x1.shape[1:])
    monkeypatch.setattr(stax, "WORKSPACE_BYTES", plan.largest * 8 * stax.WORKSPACE_TENSORS * 9)
    assert stax.block_side(plan, F64) == 3
    small = arch.kernel(x1, x2, tile=4)
    small_sym = arch.kernel(x1, tile=4)
    for a, b in ((whole, small), (sym, small_sym)):
        # Same arithmetic per entry in a different batch shape: equal to rounding.
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=0)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)
    # The symmetric kernel is the x1-vs-x1 kernel, exactly symmetric. The cross computation
    # meets rho = 1 only up to rounding on its diagonal, where arccos has infinite slope: its
    # error there is up to ~ sqrt(eps) = 1.5e-8 (measured 3e-11 relative).
    cross = arch.kernel(x1, x1.clone())
    torch.testing.assert_close(sym.ntk, cross.ntk, rtol=1e-7, atol=0)
    assert torch.equal(sym.ntk, sym.ntk.T)


@pytest.mark.parametrize("arch", [GAP, VEC], ids=["gap", "vec"])
def test_kernel_diagonal_is_the_kernels_diagonal(arch):
    x = _images(7)
    k = arch.kernel(x)
    d = arch.kernel_diagonal(x)
    assert d.nngp.shape == (7,)
    torch.testing.assert_close(d.nngp, k.nngp.diagonal(), rtol=1e-13, atol=0)
    torch.testing.assert_close(d.ntk, k.ntk.diagonal(), rtol=1e-13, atol=0)
    assert arch.kernel_diagonal(x, get="nngp").ntk is None


def test_kernel_diagonal_of_mlp():
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    arch = wn.mlp(2, "erf", w_std=1.3, b_std=0.2)
    k, d = arch.kernel(x), arch.kernel_diagonal(x)
    torch.testing.assert_close(d.nngp, k.nngp.diagonal(), rtol=1e-14, atol=0)
    torch.testing.assert_close(d.ntk, k.ntk.diagonal(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh", "leaky_relu(0.2)", "sin"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_serial_of_dense_layers_equals_mlp(activation, parameterization):
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64)
    mlp = wn.mlp(2, activation, w_std=1.2, b_std=0.3, parameterization=parameterization)
    arch = wn.serial(*mlp.layers)
    assert arch.fully_connected() == mlp
    width = 50 if parameterization == "standard" else None
    for args in ((x1, x2), (x1,)):
        a = mlp.kernel(*args, width=width)
        # A serial stack of that form takes the fused recursion: the same bits.
        b = arch.kernel(*args, width=width)
        assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
        # The general layer-by-layer engine: the same closed forms (or quadrature rule) in
        # another order of operations.
        c = wn.Architecture.kernel(arch, *args, width=width)
        torch.testing.assert_close(a.nngp, c.nngp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.ntk, c.ntk, rtol=1e-10, atol=1e-12)


def test_fully_connected_recognises_only_mlp_stacks():
    assert wn.serial(wn.Dense(), wn.Relu(), wn.Dense(1)).fully_connected() == wn.mlp(1)
    assert wn.serial(wn.Dense(), wn.Relu(), wn.Dense(1, w_std=2.0)).fully_connected() is None
    assert wn.serial(wn.Dense(), wn.Relu(), wn.Erf(), wn.Dense(1)).fully_connected() is None
    assert (
        wn.serial(wn.Dense(), wn.Relu(), wn.Dense(), wn.Erf(), wn.Dense(1)).fully_connected()
        is None
    )
    assert (
        wn.serial(wn.Dense(b_std=None), wn.Relu(), wn.Dense(1, b_std=None)).fully_connected()
        is None
    )
    assert wn.serial(wn.Dense(), wn.LayerNorm(), wn.Relu(), wn.Dense(1)).fully_connected() is None


def test_get_selects_kernels():
    x = _images(4)
    assert GAP.kernel(x, get="nngp").ntk is None
    k = GAP.kernel(x, get="ntk")
    assert k.nngp is None and k.ntk.shape == (4, 4)
    torch.testing.assert_close(k.ntk, GAP.kernel(x).ntk, rtol=1e-14, atol=0)


def test_kernel_tiles_and_tiler_interface():
    x = _images(9)
    tiles = list(GAP.kernel_tiles(x, tile=4))
    assert [(t.rows.start, t.cols.start) for t in tiles] == [
        (0, 0),
        (0, 4),
        (0, 8),
        (4, 4),
        (4, 8),
        (8, 8),
    ]
    tiler = GAP.kernel_tiler(x)
    assert tiler.symmetric and tiler.shape == (9, 9) and tiler.x2 is None
    full = GAP.kernel(x)
    torch.testing.assert_close(
        tiler(slice(0, 4), slice(4, 9)).ntk, full.ntk[:4, 4:], rtol=1e-13, atol=0
    )


def test_one_dimensional_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 10, generator=g, dtype=F64)
    arch = wn.serial(
        wn.Conv(kernel_size=4, stride=2), wn.Gelu(), wn.AvgPool(2), wn.Flatten(), wn.Dense(1)
    )
    k = arch.kernel(x)
    assert k.ntk.shape == (5, 5)
    assert float(torch.linalg.eigvalsh(k.ntk).min()) > -1e-12


# --- 3. errors naming the layer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "x", "match"),
    [
        (
            wn.serial(
                wn.Dense(), wn.Relu(), wn.Conv(kernel_size=3), wn.GlobalAvgPool(), wn.Dense(1)
            ),
            torch.randn(3, 4),
            r"Conv\(.*spatial layer needs images",
        ),
        (
            wn.serial(
                wn.Conv(kernel_size=5, padding="valid"), wn.Relu(), wn.Flatten(), wn.Dense(1)
            ),
            torch.randn(3, 1, 4, 4),
            r"Conv\(.*window \(5, 5\) is larger than its 'valid'",
        ),
        (
            wn.serial(wn.Conv(kernel_size=3), wn.AvgPool(8), wn.Flatten(), wn.Dense(1)),
            torch.randn(3, 1, 4, 4),
            r"AvgPool\(.*window \(8, 8\) is larger",
        ),
        (
            wn.serial(wn.Relu(), wn.Dense(1)),
            torch.randn(3, 4),
            r"Activation\('relu'\).*centred Gaussian input.*the network input",
        ),
        (
            wn.serial(wn.Dense(), wn.Relu(), wn.Erf(), wn.Dense(1)),
            torch.randn(3, 4),
            r"Activation\('erf'\).*the output of Activation\('relu'\)",
        ),
        (
            wn.serial(wn.Conv(kernel_size=3), wn.Flatten(), wn.Relu(), wn.Dense(1)),
            torch.randn(3, 1, 4, 4),
            r"Activation\('relu'\).*the output of Flatten\(\)",
        ),
        (
            wn.serial(wn.Dense(), wn.Residual(wn.Relu()), wn.Dense(1)),
            torch.randn(3, 4),
            r"Residual\(.*no Dense or Conv layer",
        ),
        (
            wn.serial(wn.Dense(), wn.Residual(wn.Dense(), wn.Relu()), wn.Dense(1)),
            torch.randn(3, 4),
            r"Residual\(.*the branch output is not",
        ),
        (
            wn.serial(wn.Dense(), wn.Relu(), wn.LayerNorm(), wn.Dense(1)),
            torch.randn(3, 4),
            r"LayerNorm\(.*centred Gaussian",
        ),
        (
            wn.serial(wn.Conv(kernel_size=3), wn.Relu()),
            torch.randn(3, 1, 4, 4),
            r"output has feature shape \(inf, 4, 4\).*Flatten\(\) or GlobalAvgPool\(\)",
        ),
        (
            wn.serial(wn.Conv(kernel_size=3), wn.Dense(1)),
            torch.randn(3, 1, 4, 4),
            r"Dense\(.*needs vector inputs.*\(inf, 4, 4\)",
        ),
        (
            # An activation after pooling activations has no closed form (not Gaussian).
            wn.serial(
                wn.Conv(kernel_size=3),
                wn.Relu(),
                wn.AvgPool(2),
                wn.Residual(wn.Relu(), wn.Conv(kernel_size=3)),
                wn.Relu(),
                wn.GlobalAvgPool(),
                wn.Dense(1),
            ),
            torch.randn(3, 1, 8, 8),
            r"Activation\('relu'\).*the output of AvgPool\(.*which is not Gaussian",
        ),
        (
            wn.serial(wn.Conv(kernel_size=(3, 3)), wn.Flatten(), wn.Dense(1)),
            torch.randn(3, 1, 4),
            r"kernel_size must be an int or a tuple of 1 ints",
        ),
    ],
)
def test_errors_name_the_layer(arch, x, match):
    with pytest.raises(stax.ArchitectureError, match=match):
        arch.kernel(x)


def test_more_errors():
    x = _images(3)
    with pytest.raises(ValueError, match="width is required"):
        wn.serial(
            wn.Conv(kernel_size=3, parameterization="standard"), wn.Flatten(), wn.Dense(1)
        ).kernel(x)
    with pytest.raises(ValueError, match="width applies only"):
        VEC.kernel(x, width=10)
    with pytest.raises(ValueError, match="x1 must be vectors"):
        VEC.kernel(torch.randn(2, 1, 1, 3, 3))
    with pytest.raises(ValueError, match="same feature shape"):
        VEC.kernel(x, _images(2, h=4))
    with pytest.raises(ValueError, match="padding must be one of"):
        wn.Conv(kernel_size=3, padding="full")
    with pytest.raises(ValueError, match="kernel_size is required"):
        wn.Conv()
    with pytest.raises(TypeError, match="layer 1 must be a widenet layer"):
        wn.serial(wn.Dense(), torch.nn.ReLU())
    with pytest.raises(ValueError, match="w_std"):
        wn.Dense(w_std=-1.0)


# --- 4. the finite network --------------------------------------------------------------------


def test_network_shapes_and_modules():
    net = GAP.network(in_shape=(2, 5, 4), width=6, seed=0, dtype=F64)
    x = _images(3)
    assert net(x).shape == (3, 1)
    assert isinstance(net[0], modules.Conv) and net[0].weight.shape == (6, 2, 3, 3)
    assert net[3].weight.shape == (6, 6, 2, 3) and net[3].stride == (1, 2)
    assert isinstance(net[-1], modules.Dense) and net[-1].in_features == 6
    same = GAP.network(in_shape=(2, 5, 4), width=6, seed=0, dtype=F64)
    assert torch.equal(same(x), net(x))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(N, 2, 5, 4\)"):
        net(_images(3, h=4))
    with pytest.raises(stax.ArchitectureError, match="spatial layer needs images"):
        GAP.network(in_shape=8, width=4)
    with pytest.raises(ValueError, match="in_shape must be"):
        GAP.network(in_shape=(1, 2, 3, 4), width=4)


def test_conv_module_matches_torch_conv_and_padding_conventions():
    # "same" with an even filter pads (0, 1) (XLA's SAME: the extra pad after); circular wraps.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, generator=g, dtype=F64)
    for padding, mode in (("same", "zeros"), ("circular", "circular")):
        net = wn.serial(
            wn.Conv(4, 2, padding=padding, b_std=0.5), wn.Flatten(), wn.Dense(1)
        ).network(in_shape=(3, 7), width=4, seed=0, dtype=F64)
        conv = net[0]
        assert conv.pads == ((0, 1),)
        ref = torch.nn.functional.conv1d(
            torch.nn.functional.pad(x, (0, 1), mode="constant" if mode == "zeros" else mode),
            conv.weight * conv.weight_scale,
            conv.bias * conv.bias_scale,
        )
        torch.testing.assert_close(conv(x), ref)
        assert conv.weight_scale == pytest.approx(1.0 / (3 * 2) ** 0.5)


def test_no_bias_layers():
    net = wn.serial(
        wn.Conv(kernel_size=3, b_std=None), wn.Relu(), wn.Flatten(), wn.Dense(2, b_std=None)
    ).network(in_shape=(1, 4, 4), width=3)
    assert net[0].bias is None and net[-1].bias is None
    assert net(torch.randn(2, 1, 4, 4)).shape == (2, 2)


# --- 5. a user-defined layer (the protocol's docstring example) --------------------------------


@dataclass(frozen=True)
class Gain(stax.Layer):
    g: float = 2.0

    def kernel_map(self, k):
        s = self.g**2
        return k.replace(nngp=k.nngp * s, ntk=None if k.ntk is None else k.ntk * s)

    def module(self, in_shape, width, generator, dtype):
        return modules.Elementwise(lambda x: self.g * x, f"gain {self.g}")


def test_user_layer():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with_gain = wn.serial(wn.Dense(), wn.Relu(), Gain(3.0), wn.Dense(1, w_std=1.0))
    plain = wn.serial(wn.Dense(), wn.Relu(), wn.Dense(1, w_std=3.0))
    # Gain(3) then Dense(w) has the NNGP of Dense(3 w) but not its NTK (the readout's own
    # term sees the gain, the earlier layers' gradients too): compare the NNGP.
    torch.testing.assert_close(with_gain.kernel(x).nngp, plain.kernel(x).nngp)
    net = with_gain.network(in_shape=3, width=4, seed=0)
    assert net(x.float()).shape == (5, 1)


# --- 6. specs and presets ----------------------------------------------------------------------


def test_from_spec_yaml_round_trip():
    yaml = pytest.importorskip("yaml")
    text = """
    - conv: {kernel_size: 3, w_std: 1.3, b_std: 0.2}
    - avg_pool: {kernel_size: 2, stride: 1, padding: same}
    - residual: [relu, {conv: {kernel_size: [2, 3], stride: [1, 1], padding: circular}}]
    - leaky_relu(0.1)
    - global_avg_pool
    - dense: {out_features: 1, w_std: 1.1}
    """
    arch = wn.from_spec(yaml.safe_load(text))
    assert isinstance(arch.layers[2], wn.Residual)
    assert arch.layers[3].activation.name == "leaky_relu(slope=0.1)"
    again = wn.from_spec(yaml.safe_load(yaml.safe_dump(arch.spec())))
    assert again == arch
    x = _images(3)
    torch.testing.assert_close(again.kernel(x).ntk, arch.kernel(x).ntk, rtol=0, atol=0)


def test_from_spec_errors():
    with pytest.raises(ValueError, match="unknown layer 'convolution'"):
        wn.from_spec([{"convolution": {"kernel_size": 3}}])
    with pytest.raises(ValueError, match="layer 0: conv"):
        wn.from_spec([{"conv": {"kernel": 3}}])
    with pytest.raises(ValueError, match="unknown preset"):
        wn.from_spec("resnet")
    with pytest.raises(ValueError, match="'preset'"):
        wn.from_spec({"depth": 3})


def test_presets():
    cnn = wn.presets.cnn(2, readout="flatten")
    assert [type(layer).__name__ for layer in cnn.layers] == [
        "Conv",
        "Activation",
        "Conv",
        "Activation",
        "Flatten",
        "Dense",
    ]
    assert wn.from_spec("cnn-vec") == wn.presets.cnn(readout="flatten")
    assert wn.from_spec({"preset": "cnn", "depth": 2, "readout": "flatten"}) == cnn
    m5 = wn.presets.myrtle(5)
    convs = sum(isinstance(layer, wn.Conv) for layer in m5.layers)
    pools = sum(isinstance(layer, wn.AvgPool) for layer in m5.layers)
    assert (convs, pools) == (4, 2) and isinstance(m5.layers[-2], wn.GlobalAvgPool)
    assert wn.from_spec("myrtle-10") == wn.presets.myrtle(10)
    assert sum(isinstance(layer, wn.Conv) for layer in wn.presets.myrtle(7).layers) == 6
    assert wn.from_spec("mlp") == wn.mlp(1)
    x = _images(3, c=1, h=8, w=8)
    assert m5.kernel(x).ntk.shape == (3, 3)
    with pytest.raises(ValueError, match="myrtle depth"):
        wn.presets.myrtle(6)


def test_myrtle_gap_equals_three_pools_on_32_pixels():
    # The notebook's three 2x2 pools on an 8x8 map equal one global average (module docstring).
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    head = (wn.Conv(kernel_size=3), wn.Relu())
    gap = wn.serial(*head, wn.GlobalAvgPool(), wn.Dense(1))
    pools = wn.serial(*head, *(wn.AvgPool(2),) * 3, wn.Flatten(), wn.Dense(1))
    torch.testing.assert_close(gap.kernel(x).ntk, pools.kernel(x).ntk, rtol=1e-13, atol=0)


def test_dataclass_replace_keeps_layers_valid():
    conv = wn.Conv(kernel_size=3)
    assert replace(conv, parameterization="standard").parameterization == "standard"
    with pytest.raises(ValueError, match="parameterization"):
        replace(conv, parameterization="mup")


# --- 7. CUDA ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", [GAP, VEC], ids=["gap", "vec"])
def test_cuda_matches_cpu(arch):
    x = _images(6)
    cpu = arch.kernel(x)
    gpu = arch.kernel(x.cuda())
    assert gpu.ntk.device.type == "cuda"
    torch.testing.assert_close(gpu.ntk.cpu(), cpu.ntk, rtol=1e-10, atol=1e-12)
    net = arch.network(in_shape=(2, 5, 4), width=8, seed=0, device="cuda")
    assert net(x.float().cuda()).device.type == "cuda"


# --- 8. every consumer of an architecture takes any architecture ------------------------------


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "cross"])
def test_kernel_to_zarr_of_a_cnn_equals_kernel(tmp_path, symmetric):
    pytest.importorskip("zarr")
    from widenet import scale

    x1 = _images(13, dtype=torch.float32)
    x2 = None if symmetric else _images(6, seed=1, dtype=torch.float32)
    st = scale.kernel_to_zarr(GAP, x1, x2, out=tmp_path / "K.zarr", tile=8, block=4)
    k = GAP.kernel(x1, x2, tile=4)
    # The store is assembled from the same tiler calls as kernel(tile=block): the same bits.
    assert torch.equal(st.load("nngp", dtype=torch.float32), k.nngp)
    assert torch.equal(st.load("ntk", dtype=torch.float32), k.ntk)
    assert st.meta["architecture"]["kind"] == "serial"
    assert st.meta["architecture"]["layers"] == GAP.spec()


# --- 9. duplicate inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("arch", [GAP, VEC], ids=["gap", "vec"])
def test_duplicate_inputs_give_equal_kernel_rows(arch, dtype):
    # As for the MLP (test_reliability.py): a repeated input's pair entry is the diagonal's
    # exactly (its position-diagonal is pinned to the per-input variances, so rho = 1 exactly
    # where ReLU's arccos has infinite slope: without it the rows differ by ~sqrt(eps)), and its
    # row is the original's to rounding (the mirrored half of a symmetric kernel sums the
    # position pairs in the other orientation: measured <= 1 ulp), across blocks and tiles.
    from widenet import dynamics

    eps = torch.finfo(dtype).eps
    x = _images(9, dtype=dtype)
    x[7] = x[1]
    for tile in (512, 4):
        k = arch.kernel(x, tile=tile)
        for kern in (k.nngp, k.ntk):
            assert kern[1, 7] == kern[1, 1] == kern[7, 7]
            torch.testing.assert_close(kern[1], kern[7], rtol=4 * eps, atol=0)
            assert dynamics.coinciding_pairs(kern).tolist() == [[1, 7]]
    # Across a cross kernel: a test point equal to a training point has the training row.
    xt = torch.cat([x[2:3], _images(2, seed=5, dtype=dtype)])
    kx = arch.kernel(xt, x)
    torch.testing.assert_close(kx.ntk[0], arch.kernel(x).ntk[2], rtol=4 * eps, atol=0)


def test_quadrature_activation_in_a_cnn(monkeypatch):
    # The quadrature path (any elementwise callable) on spatial covariances, in chunks (made
    # small here so that several are used): erf by quadrature against the closed-form erf
    # (accuracy of the rule: <= 2e-13 relative, widenet.activations).
    from widenet import activations as A

    monkeypatch.setattr(stax, "_QUADRATURE_CHUNK", 64)
    x = _images(3, c=1, h=3, w=3)
    quad_erf = A.quadrature(
        torch.erf, "erf_quadrature", derivative=lambda t: 2 / math.sqrt(math.pi) * torch.exp(-t * t)
    )

    def stack(act):
        return wn.serial(
            wn.Conv(kernel_size=2, w_std=1.3, b_std=0.2),
            act,
            wn.AvgPool(2, stride=1, padding="same"),
            wn.Conv(kernel_size=2, w_std=1.2),
            act,
            wn.GlobalAvgPool(),
            wn.Dense(1),
        )

    exact = stack(wn.Erf()).kernel(x)
    quad = stack(wn.Activation(quad_erf)).kernel(x)
    torch.testing.assert_close(quad.nngp, exact.nngp, rtol=1e-10, atol=0)
    torch.testing.assert_close(quad.ntk, exact.ntk, rtol=1e-10, atol=0)


def test_workspace_memory_bounded(monkeypatch):
    # Every covariance an activation sees is one workspace block (block^2 pairs x P^2
    # positions) or one chunk of the per-input pass, never the whole n x n x P^2 tensor.
    from widenet import activations as A

    base = A.relu()
    largest = [0]

    def spy(q1, c, q2, need_dot):
        largest[0] = max(largest[0], c.numel())
        return base.dual(q1, c, q2, need_dot)

    act = wn.Activation(A.Activation("relu_spy", torch.relu, spy))
    arch = wn.serial(wn.Conv(kernel_size=3), act, wn.GlobalAvgPool(), wn.Dense(1))
    x = _images(40, c=1, h=4, w=4, dtype=torch.float32)
    plan = arch.plan(x.shape[1:])
    # A workspace of 30 inputs' covariances: blocks of 5 x 5 pairs, chunks of 30 inputs.
    monkeypatch.setattr(stax, "WORKSPACE_BYTES", plan.largest * 4 * stax.WORKSPACE_TENSORS * 30)
    side = stax.block_side(plan, torch.float32)
    p2 = 16 * 16
    per_point = stax.workspace_bytes("cpu") // (plan.largest * 4 * stax.WORKSPACE_TENSORS)
    assert (side, per_point) == (5, 30)
    k = arch.kernel(x)
    assert 0 < largest[0] <= max(side * side, per_point) * p2
    torch.testing.assert_close(
        k.ntk,
        wn.serial(wn.Conv(kernel_size=3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)).kernel(x).ntk,
    )


def test_block_pool_leaves_thread_settings(monkeypatch):
    # On the CPU the workspace blocks run in a pool of single-threaded workers; the caller's
    # intra-op thread count is unchanged and the result equals the one-thread computation.
    monkeypatch.setattr(stax, "WORKSPACE_BYTES", 2**16)
    x = _images(12)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pooled = GAP.kernel(x)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        serial_ = GAP.kernel(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(pooled.ntk, serial_.ntk) and torch.equal(pooled.nngp, serial_.nngp)
