"""widenet.embedding: output- and criticality-preserving embeddings (Zhang et al. 2021/2022)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import widenet as wn
from widenet import embedding as E
from widenet import landscape as L
from widenet.cli import app

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _random_net(depth, width, activation="tanh", in_dim=3, out_dim=2, seed=0):
    return wn.mlp(depth, activation, b_std=0.5, out_dim=out_dim).network(
        in_dim, width, seed=seed, dtype=F64
    )


def _x(n=50, d=3, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _close(a, b, rel=1e3):
    # Outputs of the narrow and the embedded net differ only by rounding: the wide sums have a
    # few more O(1) terms, so their difference is a few hundred eps of the output scale.
    a, b = a.detach(), b.detach()
    scale = float(a.abs().max()) + 1.0
    return float((a - b).abs().max()) <= rel * EPS * scale


@pytest.fixture(scope="module")
def sin_minimum():
    """A strict minimum (‖∇L‖ ≤ 1e-10, Hessian > 0) of a width-2 tanh net on sin(πx)."""
    x = torch.linspace(-1, 1, 12, dtype=F64)[:, None]
    y = torch.sin(torch.pi * x)
    start = wn.mlp(1, "tanh", b_std=1.0).network(1, 2, seed=0, dtype=F64)
    cp = L.find_critical_point(start, x, y, method="lbfgs", max_iter=500)
    assert cp.converged and cp.grad_norm <= 1e-10
    return E.FCNet.from_module(cp.model), x, y


# -- FCNet -----------------------------------------------------------------------------------
def test_fcnet_matches_widenet_and_plain_modules():
    net = _random_net(2, 4, "relu")
    x = _x()
    f = E.FCNet.from_module(net)
    assert f.widths == [4, 4] and f.in_dim == 3 and f.out_dim == 2
    # NTK scaling folded into the weights: identical up to one rounding per product.
    assert _close(f(x), net(x), rel=10)
    assert _close(f.to_module()(x), net(x), rel=10)
    assert f.num_parameters == sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(f.flat(), L.parameter_vector(f.to_module()), rtol=0, atol=0)
    plain = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2, bias=False)).double()
    g = E.FCNet.from_module(plain)
    assert g.biases[1] is None and g.widths == [6]
    torch.testing.assert_close(g(x), plain(x), rtol=0, atol=0)
    assert isinstance(g.to_module()[1], nn.Tanh)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Linear(2, 3), nn.Tanh()), "ending with nn.Linear"),
        (
            nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)),
            "same activation",
        ),
        (nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1)), "parameter-free"),
        (nn.Conv1d(1, 1, 1), "alternating"),
    ],
)
def test_fcnet_rejects_other_modules(model, match):
    with pytest.raises(ValueError, match=match):
        E.FCNet.from_module(model)


def test_fcnet_checks_shapes():
    with pytest.raises(ValueError, match="takes 4 inputs"):
        E.FCNet([torch.ones(3, 2), torch.ones(1, 4)], [None, None], torch.tanh)
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape"):
        E.FCNet([torch.ones(3, 2), torch.ones(1, 3)], [torch.ones(2), None], torch.tanh)
    with pytest.raises(ValueError, match="NaN"):
        E.FCNet([torch.full((3, 2), float("nan"))], [None], torch.tanh)


# -- one-step embeddings: output preservation --------------------------------------------------
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
def test_splitting_preserves_output(activation):
    net = E.FCNet.from_module(_random_net(2, 3, activation))
    x = _x()
    wide = E.compose(net, [E.Split(0, 1, 0.3), E.Split(1, 2, -0.7), E.Split(0, 3, 2.5), E.Null(1)])
    assert wide.widths == [5, 5]
    assert _close(wide(x), net(x))
    # the copy has the same incoming weights and the shares sum to the old outgoing weights
    one = E.split_neuron(net, 0, 1, 0.3)
    torch.testing.assert_close(one.weights[0][3], net.weights[0][1], rtol=0, atol=0)
    torch.testing.assert_close(one.weights[1][:, 1], 0.3 * net.weights[1][:, 1])
    torch.testing.assert_close(one.weights[1][:, 1] + one.weights[1][:, 3], net.weights[1][:, 1])


def test_null_embedding_preserves_output_for_any_incoming_weights():
    net = E.FCNet.from_module(_random_net(2, 3))
    x = _x()
    g = torch.Generator().manual_seed(5)
    wide = E.null_embedding(net, 0, torch.randn(3, generator=g, dtype=F64), bias=0.7)
    torch.testing.assert_close(wide(x), net(x), rtol=0, atol=0)  # the new column is exactly 0
    assert float(wide.biases[0][-1]) == 0.7
    with pytest.raises(ValueError, match=r"incoming must have shape \(3,\)"):
        E.null_embedding(net, 0, torch.ones(4))
    with pytest.raises(ValueError, match="0 ≤ layer < 2"):
        E.split_neuron(net, 2, 0)
    with pytest.raises(ValueError, match="neuron must be < width 3"):
        E.split_neuron(net, 0, 3)


# -- general compatible embedding --------------------------------------------------------------
def test_compatible_embedding_equals_the_composition_of_splits():
    net = E.FCNet.from_module(_random_net(2, 2))
    # layer 0: copies of 0 at positions 0, 2 (shares 0.3, 0.7); layer 1: copy of 1 at 2.
    general = E.compatible_embedding(
        net, [[0, 1, 0], [0, 1, 1]], [[0.3, 1.0, 0.7], [1.0, -0.5, 1.5]]
    )
    steps = E.compose(net, [E.Split(0, 0, 0.3), E.Split(1, 1, -0.5)])
    for a, b in zip(general.weights + general.biases, steps.weights + steps.biases, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0)


def test_compatible_embedding_with_null_neurons():
    net = E.FCNet.from_module(_random_net(2, 2))
    x = _x()
    incoming = torch.tensor([[0.5, 0.0, -1.0]], dtype=F64)  # null neuron of layer 1
    wide = E.compatible_embedding(net, [[1, None, 0], [None, 0, 1]], null_incoming=[None, incoming])
    assert wide.widths == [3, 3]
    assert _close(wide(x), net(x))
    assert float(wide.weights[1][:, 1].abs().max()) == 0.0  # null neuron of layer 0: no output
    with pytest.raises(ValueError, match="must be 0 on the columns of the null neurons"):
        E.compatible_embedding(
            net,
            [[1, None, 0], [None, 0, 1]],
            null_incoming=[None, torch.ones(1, 3, dtype=F64)],
        )


@pytest.mark.parametrize(
    ("maps", "alphas", "match"),
    [
        ([[0, 0, 1]], None, "one map per hidden layer"),
        ([[0, 0, 0], [0, 1]], None, r"not onto: neurons \[1\]"),
        ([[0, 2, 1], [0, 1]], None, "must map onto neurons 0..1"),
        ([[0, 1, 0], [0, 1]], [[0.5, 1.0, 0.6], [1.0, 1.0]], "must sum to 1"),
        ([[0, 1, 0], [0, 1]], [[0.5, 1.0], [1.0, 1.0]], "one entry per wide neuron"),
    ],
)
def test_compatibility_conditions(maps, alphas, match):
    net = E.FCNet.from_module(_random_net(2, 2))
    with pytest.raises(ValueError, match=match):
        E.compatible_embedding(net, maps, alphas)


# -- criticality, inertia and the embedded family ----------------------------------------------
def test_splitting_preserves_criticality(sin_minimum):
    net, x, y = sin_minimum
    g0 = float(L.gradient(net.to_module(), x, y).norm())
    wide = E.compose(net, [E.Split(0, 0, 0.3), E.Split(0, 1, 1.7), E.Split(0, 2, 0.5)])
    g1 = float(L.gradient(wide.to_module(), x, y).norm())
    # Same order as the narrow certificate (the gradient of a copy is its share times the
    # narrow one), plus rounding of the wider sums.
    assert g0 <= 1e-10 and g1 <= 10 * g0 + 1e-14


def test_null_embedding_criticality_depends_on_the_incoming_weights(sin_minimum):
    net, x, y = sin_minimum
    zero_in = E.null_embedding(net, 0)  # tanh(0) = 0: critical
    assert float(L.gradient(zero_in.to_module(), x, y).norm()) <= 1e-10
    # An arbitrary neuron picks up a nonzero output-weight gradient (1/n) Σ r_i tanh(w x_i + b).
    w = torch.tensor([1.3], dtype=F64)
    moved = E.null_embedding(net, 0, w, bias=0.2)
    r = (net(x) - y).reshape(-1)
    expected = float((r * torch.tanh(1.3 * x.reshape(-1) + 0.2)).mean())
    grad = L.gradient(moved.to_module(), x, y)
    a_index = 3 * 3  # W1 (3), b1 (3), then W2's row (3 entries): the last one is the new neuron
    assert abs(float(grad[a_index - 1]) - expected) <= 1e-12 and abs(expected) > 1e-4


def test_inertia_never_decreases_and_a_minimum_becomes_a_saddle(sin_minimum):
    net, x, y = sin_minimum
    before = L.inertia(L.hessian(net.to_module(), x, y))
    assert (before.negative, before.zero, before.positive) == (0, 0, 7)  # strict minimum
    for alpha in (0.3, 0.5, 1.4):
        prev, cur = before, net
        for s in (0, 1, 0):
            lam_s = torch.linalg.eigvalsh(E.splitting_matrix(cur, x, y, 0, s))
            block = L.inertia(alpha * (1 - alpha) * lam_s, tol=0.0)
            cur = E.split_neuron(cur, 0, s, alpha)
            now = L.inertia(L.hessian(cur.to_module(), x, y))
            # Theorem 6.2 of Zhang et al. (2022): no count decreases.
            assert now.negative >= prev.negative
            assert now.zero >= prev.zero and now.positive >= prev.positive
            # Sylvester: exactly one new zero (the share) + the inertia of α(1-α)S_s.
            assert (now.negative, now.zero, now.positive) == (
                prev.negative + block.negative,
                prev.zero + 1 + block.zero,
                prev.positive + block.positive,
            )
            # clean separation around the tolerance (~1e-10 here): the zeros are rounding
            # (~1e-16), the smallest nonzero eigenvalues ~2e-7
            assert now.gap[0] < 1e-4 * now.tol and now.gap[1] > 1e3 * now.tol
            prev = now
        assert prev.negative >= 1  # the width-2 minimum is a saddle of the width-5 network


def test_splitting_matrix_is_the_hessian_along_the_weight_difference(sin_minimum):
    net, x, y = sin_minimum
    alpha, s = 0.3, 1
    wide = E.split_neuron(net, 0, s, alpha)
    module = wide.to_module()
    loss, theta = L.loss_function(module, x, y)
    # direction: copy s gets (1-α)δ, the new copy (index 2) gets -αδ, δ = (δ_w, δ_b)
    delta = torch.tensor([0.8, -0.6], dtype=F64)
    v = torch.zeros_like(theta)
    v[s], v[3 + s] = (1 - alpha) * delta  # W1 rows are entries 0..2, b1 entries 3..5
    v[2], v[5] = -alpha * delta
    second = torch.func.jvp(lambda t: torch.func.jvp(loss, (t,), (v,))[1], (theta,), (v,))[1]
    S = E.splitting_matrix(net, x, y, 0, s)
    expected = alpha * (1 - alpha) * delta @ S @ delta
    # two independent float64 computations of an O(1e-4) number: agree to 1e-10 relative
    assert abs(float(second) - float(expected)) <= 1e-10 * float(S.abs().max())


def test_deep_split_preserves_output_criticality_and_inertia_order():
    x = _x(40, 2, seed=3)
    y = torch.sin(3 * x.sum(1, keepdim=True))
    start = wn.mlp(2, "tanh", b_std=0.5).network(2, 2, seed=2, dtype=F64)
    # Deep tanh nets have near-flat valleys: L-BFGS + Newton stops at ‖∇L‖ ≈ 1e-7 here (400
    # iterations); enough to see the gradient carried over at the same order.
    cp = L.find_critical_point(start, x, y, method="lbfgs", max_iter=400)
    assert cp.grad_norm <= 1e-6
    net = E.FCNet.from_module(cp.model)
    before = L.inertia(L.hessian(net.to_module(), x, y))
    wide = E.compose(net, [E.Split(0, 1, 0.4), E.Split(1, 0, 0.8)])
    assert _close(wide(x), net(x))
    assert float(L.gradient(wide.to_module(), x, y).norm()) <= 10 * cp.grad_norm + 1e-14
    after = L.inertia(L.hessian(wide.to_module(), x, y))
    assert after.negative >= before.negative and after.positive >= before.positive
    assert after.zero >= before.zero + 2  # one share direction per split


def test_embedded_family_dimension_is_its_rank(sin_minimum):
    net, x, y = sin_minimum
    fam = E.embedding_family(net, [[0, 1, 0, 1, 0, None]])
    # the paper's count: Σ_l (m'_l − m_l − #null_l) = 6 − 2 − 1 = 3 free splitting shares
    assert fam.dimension == 3
    basis = fam.basis()
    assert torch.linalg.matrix_rank(basis).item() == 3
    z = torch.tensor([0.4, -1.2, 2.0], dtype=F64)
    member = fam.point(z)
    assert _close(member(x), net(x))
    assert float(L.gradient(member.to_module(), x, y).norm()) <= 1e-9
    # affine: the member is the base point plus the basis times z
    torch.testing.assert_close(member.flat(), fam.point().flat() + basis @ z, rtol=0, atol=1e-13)
    # every family direction is a zero-curvature direction of the wide Hessian
    h = L.hessian(fam.point().to_module(), x, y)
    assert float((h @ basis).abs().max()) <= 1e-8 * float(h.abs().max())
    # a neuron with zero outgoing weights: its shares do not move the point (rank drops)
    dead = net.replace(net.weights[:1] + [net.weights[1] * torch.tensor([[0.0, 1.0]])], net.biases)
    assert torch.linalg.matrix_rank(E.embedding_family(dead, [[0, 1, 0]]).basis()).item() == 0


# -- files and CLI -----------------------------------------------------------------------------
def test_state_dict_round_trip(tmp_path):
    net = _random_net(1, 3, "tanh", in_dim=2, out_dim=1)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    f = E.FCNet.from_state_dict(
        E.load_state_dict(tmp_path / "net.pt"), "tanh", parameterization="ntk", b_std=0.5
    )
    x = _x(10, 2)
    assert _close(f(x), net(x), rel=10)
    f.save(tmp_path / "net.safetensors")
    g = E.FCNet.from_state_dict(E.load_state_dict(tmp_path / "net.safetensors"), "tanh")
    torch.testing.assert_close(g(x), f(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not match the stored sizes"):
        E.FCNet.from_state_dict(net.state_dict(), "tanh", layers=[2, 4, 1])
    torch.save(net, tmp_path / "module.pt")  # a pickled module: refused by weights_only
    with pytest.raises(ValueError, match="weights_only=True"):
        E.load_state_dict(tmp_path / "module.pt")


def test_cli_embed_and_hessian(tmp_path, sin_minimum):
    net, x, y = sin_minimum
    net.save(tmp_path / "min.safetensors")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    runner = CliRunner()

    def cli(line: str):
        return runner.invoke(app, line.split())  # tmp_path has no spaces

    model, xs, ys = tmp_path / "min.safetensors", tmp_path / "x.npy", tmp_path / "y.npy"
    res = cli(
        f"embed {model} --activation tanh --to-widths 4 --alpha 0.3 --data {xs} "
        f"--out {tmp_path / 'emb'}"
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "emb" / "embedding.json").read_text())
    assert info["widths_after"] == [4] and info["max_output_difference"] <= 1e-14
    assert info["family_dimension"] == 2
    res = cli(
        f"hessian {tmp_path / 'emb' / 'model.safetensors'} --activation tanh --data {xs} "
        f"--targets {ys} --slice 3 --out {tmp_path / 'hes'}"
    )
    assert res.exit_code == 0, res.output
    h = json.loads((tmp_path / "hes" / "hessian.json").read_text())
    # width 2 -> 4 with two splits: two zeros and (S indefinite) two negative eigenvalues
    assert (h["inertia"]["negative"], h["inertia"]["zero"]) == (2, 2) and h["grad_norm"] < 1e-10
    assert np.load(tmp_path / "hes" / "eigenvalues.npy").shape == (13,)
    plane = np.load(tmp_path / "hes" / "slice_2d.npz")
    assert plane["loss"].shape == (3, 3) and plane["loss"][1, 1] == pytest.approx(h["loss"])
    res = cli(
        f"hessian {model} --activation tanh --data {xs} --targets {ys} --lanczos 2 "
        f"--out {tmp_path / 'lanczos'}"
    )
    assert res.exit_code == 0, res.output
    ext = json.loads((tmp_path / "lanczos" / "hessian.json").read_text())
    assert len(ext["largest"]) == 2 and ext["smallest"][0] > 0  # the strict minimum
    # bad input: a clear message, exit code 2
    res = cli(f"embed {model} --step split:3:0 --out {tmp_path / 'bad'}")
    assert res.exit_code == 2 and "layer must index a hidden layer" in res.output
    res = cli(
        f"hessian {model} --activation tanh --data {xs} --targets {ys} --toward "
        f"{tmp_path / 'emb' / 'model.safetensors'} --out {tmp_path / 'bad2'}"
    )
    assert res.exit_code == 2 and "other layer sizes" in res.output
    res = cli(f"embed {model} --out {tmp_path / 'emb'} --to-widths 3")
    assert res.exit_code == 2 and "not an empty folder" in res.output


def test_null_embedding_of_a_critical_point_keeps_the_inertia_order(sin_minimum):
    net, x, y = sin_minimum
    before = L.inertia(L.hessian(net.to_module(), x, y))
    wide = E.null_embedding(net, 0)  # zero in and out weights: critical (tanh(0) = 0)
    after = L.inertia(L.hessian(wide.to_module(), x, y))
    assert float(L.gradient(wide.to_module(), x, y).norm()) <= 1e-10
    # Theorem 6.2 holds for every critical embedding: no count decreases. Here the new
    # neuron's (a, w, b) block is [[0, g], [g, 0]] with g = (1/n) Σ r_i tanh'(0) x̃_i ≠ 0:
    # it adds 1 negative and 1 positive eigenvalue, and the residual direction a zero.
    assert after.negative >= before.negative + 1
    assert after.zero >= before.zero and after.positive >= before.positive
    assert after.negative + after.zero + after.positive == before.eigenvalues.numel() + 3
