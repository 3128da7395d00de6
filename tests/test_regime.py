"""The regime classifier (widenet.regime) on hand-made weights and small trained networks."""

import copy
import math

import pytest
import torch
from torch import nn

import widenet as wn
from widenet import regime
from widenet.experiments._common import gradient_descent


def test_directions_hand_made():
    # Three directions: 5 neurons along (1, 0) (squared norm 20 each: group mass 100), 4 along
    # (0, 1) (mass 4), 1 along (-1, 0) (mass 1): cumulative shares 100/105, 104/105, 1.
    w = torch.tensor(
        [[2.0, 0.0]] * 5 + [[0.0, 1.0]] * 3 + [[-1.0, 0.0]] * 1 + [[0.0, 1.0]] * 1,
        dtype=torch.float64,
    )
    w[:5] *= math.sqrt(5.0)  # each of the 5: squared norm 20 -> group mass 100
    assert regime.directions(w, cosine=0.9, mass=0.95) == (3, 1)  # 0.952 >= 0.95
    assert regime.directions(w, cosine=0.9, mass=0.96) == (3, 2)
    assert regime.directions(w, cosine=0.9, mass=1.0) == (3, 3)
    # keep: only the last five neurons.
    assert regime.directions(w, cosine=0.9, mass=1.0, keep=torch.arange(5, 10)) == (2, 2)


def _train_mlp(net, x, y, lr, steps):
    initial = copy.deepcopy(net.state_dict())
    gradient_descent(net, x, y, lr, steps)
    return initial, net.state_dict()


def test_wide_ntk_network_trained_briefly_is_lazy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=gen)
    y = torch.sign(x[:, :1])
    net = wn.mlp(depth=1, activation="relu", w_std=2**0.5, b_std=0.1).network(4, 2048, seed=0)
    initial, trained = _train_mlp(net, x, y, lr=0.5, steps=30)
    rep = regime.classify(net, initial, trained, x)
    assert rep.regime == "lazy", rep.reason
    # Measured: parameter change 0.01, NTK change 0.01 (both O(width^-1/2)).
    assert rep.parameter_change < 0.05 and rep.ntk_change < 0.05
    assert rep.first_layer == "0" and rep.width == 2048
    # The directions of a lazily trained layer are those at init.
    assert rep.direction_ratio == pytest.approx(1.0, abs=0.05)
    # Independent: the overall relative change from the two state dicts.
    flat0 = torch.cat([v.reshape(-1) for v in initial.values()])
    flat1 = torch.cat([v.reshape(-1) for v in trained.values()])
    assert rep.parameter_change == pytest.approx(float((flat1 - flat0).norm() / flat0.norm()))


def test_small_init_network_trained_long_is_condensed():
    # A plain nn.Sequential (not widenet's), small init (std 1e-3), 2-D inputs, trained by GD
    # to a low loss: the first layer's neurons grow from ~0 onto a few directions.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    y = torch.tanh(2 * x[:, :1]) - 0.5 * torch.relu(x[:, 1:])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 1e-3)
    initial, trained = _train_mlp(net, x, y, lr=0.3, steps=1000)
    rep = regime.classify(net, initial, trained, x)
    assert rep.regime == "condensed", rep.reason
    # Measured: first layer moved by 84x its initial norm; directions 27 -> 3 (loss 0.004).
    assert rep.first_layer_change > 10
    assert rep.directions_trained <= 6 < 20 < rep.directions_initial
    assert rep.ntk_change > 1


def test_intermediate_and_thresholds_are_reported():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 4, generator=gen)
    y = torch.sign(x[:, :1])
    net = wn.mlp(depth=1, activation="relu", w_std=2**0.5).network(4, 32, seed=1)
    initial, trained = _train_mlp(net, x, y, lr=0.5, steps=300)
    strict = regime.Thresholds(lazy_change=0.0, lazy_ntk_change=0.0, condensed_change=1e9)
    rep = regime.classify(net, initial, trained, x, thresholds=strict)
    assert rep.regime == "intermediate" and "not lazy" in rep.reason
    assert rep.thresholds == strict and rep.as_dict()["thresholds"]["condensed_change"] == 1e9
    # Without data, the NTK measure is skipped.
    assert regime.classify(net, initial, trained, None).ntk_change is None


def test_dense_layers_use_their_effective_weights():
    net = wn.mlp(depth=1, activation="relu", w_std=3.0, b_std=0.5).network(4, 8, seed=0)
    name, lin = regime.first_linear(net)
    w, b = regime._effective(lin)
    assert torch.allclose(w, lin.weight * 1.5) and torch.allclose(b, lin.bias * 0.5)


def test_max_neurons_groups_the_largest():
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 50), nn.ReLU(), nn.Linear(50, 1))
    initial = copy.deepcopy(net.state_dict())
    trained = copy.deepcopy(initial)
    trained["0.weight"] = trained["0.weight"] + 0.01 * torch.randn(50, 3, generator=gen)
    rep = regime.classify(net, initial, trained, None, max_neurons=10)
    assert rep.neurons_grouped == 10 and rep.width == 50


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda n, s: regime.classify("net", s, s, None), "nn.Module"),
        (lambda n, s: regime.classify(n, s, {"0.weight": s["0.weight"]}, None), "different"),
        (lambda n, s: regime.classify(n, [1], s, None), "state dict"),
        (lambda n, s: regime.classify(n, s, s, None, layer="1"), "not an nn.Linear"),
        (lambda n, s: regime.classify(n, s, s, torch.zeros(0, 3)), "x must"),
        (lambda n, s: regime.classify(n, s, s, None, thresholds={}), "Thresholds"),
        (lambda n, s: regime.classify(n, s, s, None, ntk_points=0), "ntk_points"),
        (lambda n, s: regime.Thresholds(cosine=2.0), "cosine"),
        (lambda n, s: regime.Thresholds(mass=0.0), "mass"),
        (lambda n, s: regime.first_linear(nn.ReLU()), "no nn.Linear"),
    ],
)
def test_bad_inputs(call, match):
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises((ValueError, TypeError), match=match):
        call(net, net.state_dict())


def test_shape_mismatch_is_reported():
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    other = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1)).state_dict()
    with pytest.raises(ValueError, match="does not fit the model"):
        regime.classify(net, other, other, None)


def test_cli_regime_from_saved_state_dicts(tmp_path):
    import json

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from widenet.cli import app

    x, _ = wn.load_dataset("iris", n=60)
    y = torch.sign(x[:, :1])
    net = wn.mlp(depth=1, activation="relu", w_std=2**0.5, b_std=0.1).network(4, 512, seed=0)
    torch.save(net.state_dict(), tmp_path / "init.pt")
    gradient_descent(net, x, y, 0.5, 20)
    save_file(net.state_dict(), str(tmp_path / "trained.safetensors"))
    args = [
        "regime",
        "--initial",
        tmp_path / "init.pt",
        "--trained",
        tmp_path / "trained.safetensors",
        "--data",
        "iris",
        "--n",
        "60",
    ]
    res = CliRunner().invoke(
        app,
        [
            str(a)
            for a in [
                *args,
                "--parameterization",
                "ntk",
                "--b-std",
                "0.1",
                "-o",
                tmp_path / "r.json",
            ]
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["regime"] == "lazy" and rep["width"] == 512
    # Same verdict as the library on the same states and data.
    lib = regime.classify(net, torch.load(tmp_path / "init.pt"), net.state_dict(), x)
    assert rep["parameter_change"] == pytest.approx(lib.parameter_change, rel=1e-6)
    bad = CliRunner().invoke(app, [str(a) for a in [*args[:-4], "--data", "digits"]])
    assert bad.exit_code == 2 and "features" in bad.output
    missing = CliRunner().invoke(app, ["regime", "--initial", "nope.pt", "--trained", "x.pt"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
