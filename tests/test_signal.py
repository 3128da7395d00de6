"""wn.signal_propagation against wide random networks, autograd and the mean-field theory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import widenet as wn
from widenet import init, signal
from widenet.cli import app


def tanh_net(width, depth, w_var, b_var, seed, d=64):
    """W ~ N(0, w_var / fan_in), b ~ N(0, b_var), drawn here (not by wn.init)."""
    gen = torch.Generator().manual_seed(seed)
    dims = [d] + [width] * depth + [10]
    layers = []
    for i, (fi, fo) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        lin = nn.Linear(fi, fo, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(fo, fi, generator=gen, dtype=torch.float64))
            lin.weight.mul_(math.sqrt(w_var / fi))
            lin.bias.copy_(torch.randn(fo, generator=gen, dtype=torch.float64) * b_var**0.5)
        layers.append(lin)
        if i < depth:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def digits():
    return wn.load_dataset("digits", n=64, seed=0, dtype=torch.float64)[0]


def test_measured_matches_mean_field_in_wide_networks(digits):
    # 4 random networks of width 1000 (tanh, sigma_w^2 = 1.5, sigma_b^2 = 0.05, 5 hidden
    # layers). Each measured quantity fluctuates around the infinite-width value by O(1/sqrt n)
    # per network; the mean over networks must agree with the theory within 4 standard errors
    # of that mean plus 2% for the O(1/n) finite-width bias.
    reports = [
        wn.signal_propagation(tanh_net(1000, 5, 1.5, 0.05, seed), digits, seed=seed)
        for seed in range(4)
    ]
    for field in ("forward_variance", "delta_norm2", "grad_norm"):
        measured = np.array([getattr(r, field) for r in reports])
        theory = np.array([getattr(r.theory, field) for r in reports])
        sem = measured.std(0, ddof=1) / math.sqrt(len(reports))
        err = np.abs(measured.mean(0) - theory.mean(0))
        assert np.all(err < 4 * sem + 0.02 * np.abs(theory.mean(0))), (field, err, sem)


# torch.func.jvp triggers torch-internal torch.jit.script deprecation warnings.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_chi_equals_jacobian_norms_of_random_deep_networks():
    # chi from the duals (quadrature for tanh) against a Monte Carlo over random networks: the
    # squared norm of the input-output Jacobian applied to a random direction grows as
    # prod_l chi_l (Poole et al. 2016; Pennington et al. 2017). Width 800, 8 hidden layers,
    # 6 networks: the log-gain of each has an O(depth / width) spread; the mean must agree
    # within 4 standard errors plus 3% (finite-width bias).
    depth, width, w_var, b_var = 8, 800, 2.0, 0.1
    x = torch.randn(1, width, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    logs = []
    for seed in range(6):
        net = tanh_net(width, depth, w_var, b_var, seed, d=width)
        body = net[1 : 2 * depth - 1]  # from the first pre-activation h_1 to the last, h_depth
        h1 = net[0](x).detach()
        u = torch.randn(h1.shape, generator=torch.Generator().manual_seed(100 + seed))
        u = u.double()
        _, ju = torch.func.jvp(body, (h1,), (u,))
        logs.append(math.log(float(ju.detach().square().sum() / u.square().sum())))
    q1 = w_var * float(x.square().mean()) + b_var
    mf = signal.mean_field("tanh", depth, w_var, b_var, q0=(q1 - b_var) / w_var)
    predicted = sum(math.log(c) for c in mf["chi"][: depth - 1])  # chi(q^1) .. chi(q^(L-1))
    sem = np.std(logs, ddof=1) / math.sqrt(len(logs))
    assert abs(np.mean(logs) - predicted) < 4 * sem + 0.03 * depth, (np.mean(logs), predicted)


def test_chi_and_q_map_monte_carlo():
    # One layer, Monte Carlo over 1e6 Gaussian pre-activations (5 standard errors).
    q, w_var, b_var = 0.7, 1.8, 0.2
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = math.sqrt(q) * z
    for value, sample in (
        (signal.q_map("tanh", q, w_var, b_var), w_var * torch.tanh(h) ** 2 + b_var),
        (signal.chi("tanh", q, w_var), w_var * (1 - torch.tanh(h) ** 2) ** 2),
    ):
        sem = float(sample.std()) / 1000
        assert abs(float(value) - float(sample.mean())) < 5 * sem


def test_mean_field_relu_kaiming_is_flat():
    mf = signal.mean_field("relu", 30, 2.0, 0.0, q0=1.3)
    assert np.allclose(mf["q"], 2.6) and np.allclose(mf["chi"], 1.0)


def test_grad_norms_equal_autograd(digits):
    # The weight-gradient norms computed from the layers' inputs and output gradients equal
    # autograd's .grad with the same Gaussian cotangent (built here from the same seed).
    net = tanh_net(50, 3, 1.0, 0.1, 0)
    report = wn.signal_propagation(net, digits, seed=11)
    assert all(p.grad is None for p in net.parameters())  # the model is left alone
    out = net(digits)
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(11), dtype=out.dtype)
    (out * v).sum().backward()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    np.testing.assert_allclose(
        report.grad_norm, [float(m.weight.grad.norm()) for m in linears], rtol=1e-10
    )
    # In the NTK parameterization the raw gradient is scale * the effective one.
    dense = wn.mlp(2, "tanh", w_std=1.2).network(64, 40, seed=0, dtype=torch.float64)
    rep = wn.signal_propagation(dense, digits, seed=11)
    out = dense(digits)
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(11), dtype=out.dtype)
    (out * v).sum().backward()
    raw = [float(m.weight.grad.norm() / m.weight_scale) for m in dense if hasattr(m, "weight")]
    np.testing.assert_allclose(rep.grad_norm, raw, rtol=1e-10)
    assert rep.theory is not None and rep.theory.activations == ["tanh", "tanh"]


def test_backprop_ratio_is_product_of_backward_ratios(digits):
    report = wn.signal_propagation(tanh_net(80, 4, 1.0, 0.0, 1), digits)
    assert report.backprop_ratio**2 == pytest.approx(np.prod(report.backward_ratio), rel=1e-10)
    assert report.forward_ratio[0] == pytest.approx(
        report.forward_variance[1] / report.forward_variance[0]
    )


def plain(activation, depth, width=256):
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers = [nn.Linear(64, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_verdicts_on_clear_cases(digits):
    x = digits.float()
    # Glorot & Bengio: sigmoid with U[-1/sqrt(n), 1/sqrt(n)]: chi ~ 0.02 per layer.
    vanishing = wn.signal_propagation(init.naive(plain("sigmoid", 20), seed=0), x)
    assert vanishing.verdict == "vanishing" and vanishing.backprop_ratio < 1e-10
    assert "backprop_ratio" in vanishing.reasons[0] and "1/100" in vanishing.reasons[0]
    # He et al.: relu with Kaiming keeps both signals flat.
    healthy = wn.signal_propagation(init.kaiming(plain("relu", 20), seed=0), x)
    assert healthy.verdict == "healthy" and 0.3 < healthy.backprop_ratio < 3
    # tanh deep in the chaotic phase (sigma_w^2 = 9: chi = 1.86 per layer) explodes:
    # 1.86^(30/2) ~ 1e4.
    chaotic = init.kaiming(plain("tanh", 30), gain=3.0, seed=0)
    exploding = wn.signal_propagation(chaotic, x)
    chi = signal.mean_field("tanh", 30, 9.0, 0.0)["chi"][-1]
    assert chi > 1.8 and exploding.verdict == "exploding" and exploding.backprop_ratio > 1e3
    # Non-finite activations are exploding whatever the ratios.
    with torch.no_grad():
        chaotic[0].weight.fill_(float("inf"))
    broken = wn.signal_propagation(chaotic, x)
    assert broken.verdict == "exploding" and "non-finite" in broken.reasons[0]
    assert broken.theory is None and "non-finite" in broken.theory_note


def test_theory_only_for_chains(digits):
    conv = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 62, 1))
    report = wn.signal_propagation(conv, digits.float()[:, None, :])
    assert report.theory is None and "Conv1d" in report.theory_note
    assert len(report.grad_norm) == 2 and all(g > 0 for g in report.grad_norm)


def test_with_targets(digits):
    net = init.kaiming(plain("relu", 3, 32), seed=0).double()
    labels = torch.arange(len(digits)) % 10
    a = wn.signal_propagation(net, digits, y=labels, loss="cross_entropy")
    b = wn.signal_propagation(
        net, digits, y=labels, loss=lambda o, t: nn.functional.cross_entropy(o, t, reduction="sum")
    )
    assert a.grad_norm == b.grad_norm


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 1.0}, "threshold"),
        ({"loss": "hinge"}, "loss"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        wn.signal_propagation(tanh_net(8, 1, 1.0, 0.0, 0), digits, **kwargs)


def test_bad_inputs(digits):
    net = tanh_net(8, 1, 1.0, 0.0, 0)
    with pytest.raises(TypeError, match="dtype"):
        wn.signal_propagation(net, digits.float())
    with pytest.raises(ValueError, match="NaN"):
        wn.signal_propagation(net, digits * float("nan"))
    with pytest.raises(ValueError, match="no nn.Linear"):
        wn.signal_propagation(nn.Sequential(nn.Tanh()), digits)


# --- the command line -----------------------------------------------------------------------

runner = CliRunner()


def test_cli_signal(tmp_path):
    out = tmp_path / "s.json"
    result = runner.invoke(
        app,
        [
            "signal",
            "--activation",
            "sigmoid",
            "--depth",
            "12",
            "--width",
            "64",
            "--init",
            "naive",
            "--n",
            "64",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "vanishing" in result.output
    data = json.loads(out.read_text())
    assert data["verdict"] == "vanishing" and len(data["grad_norm"]) == 13
    assert data["theory"]["activations"] == ["sigmoid"] * 12
    # A saved model.
    path = tmp_path / "m.pt"
    torch.save(init.kaiming(plain("relu", 4, 32), seed=0), path)
    result = runner.invoke(app, ["signal", "--model", str(path), "--trust-pickle", "--n", "32"])
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output
    bad = runner.invoke(app, ["signal", "--init", "he"])
    assert bad.exit_code == 2 and "unknown scheme" in bad.output


def test_cli_critical_init():
    result = runner.invoke(app, ["critical-init", "--activation", "tanh", "--b-var", "0.05"])
    assert result.exit_code == 0, result.output
    point = init.critical_point("tanh", 0.05)
    assert f"{point.w_var:.6g}" in result.output
    bad = runner.invoke(app, ["critical-init", "--activation", "relu", "--b-var", "0.1"])
    assert bad.exit_code == 2 and "homogeneous" in bad.output
