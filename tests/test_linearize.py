"""``widenet.linearize`` against an explicit float64 first-order Taylor expansion.

The linearized output is f(θ0) + J(θ0)(θ − θ0): computed here from an explicit Jacobian
(torch.autograd.functional.jacobian), the two differ only by summation order (~1e-15), so 1e-10
is far above rounding and far below a wrong term (O(|θ − θ0|) relative). The finite-difference
check is f(θ0 + hδ) − f(θ0) − h J δ = O(h²): the Taylor remainder shrinks by ~4x per halving.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import widenet as wn

F64 = torch.float64


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)


def perturb(lin, scale, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_equals_model_at_theta0_any_output_shape():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Unflatten(1, (2, 3)))
    lin = wn.linearize(net)
    x = torch.randn(7, 4)
    assert lin(x).shape == (7, 2, 3)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=0)


def test_matches_explicit_taylor_expansion():
    net = tiny()
    x = torch.randn(4, 3, dtype=F64)
    lin = wn.linearize(net)
    perturb(lin, 0.3)
    names = list(lin.names)
    theta0 = [p.detach().clone() for p in net.parameters()]
    theta = [lin.theta()[n].detach() for n in names]

    def f(*ps):
        return functional_call(net, dict(zip(names, ps, strict=True)), (x,))

    jac = torch.autograd.functional.jacobian(f, tuple(theta0))  # each (4, 2, *p.shape)
    expected = f(*theta0) + sum(
        (j.reshape(8, -1) @ (t - t0).reshape(-1)).reshape(4, 2)
        for j, t, t0 in zip(jac, theta, theta0, strict=True)
    )
    torch.testing.assert_close(lin(x), expected, rtol=1e-10, atol=1e-12)
    # ... and it is the first-order expansion of f: the remainder is O(h^2).
    delta = [t - t0 for t, t0 in zip(theta, theta0, strict=True)]
    remainders = []
    for h in (1e-2, 5e-3):
        lin_h = wn.linearize(net)
        with torch.no_grad():
            for n, d in zip(names, delta, strict=True):
                lin_h.theta()[n].add_(h * d)
        f_h = f(*[t0 + h * d for t0, d in zip(theta0, delta, strict=True)])
        remainders.append(float((f_h - lin_h(x)).detach().abs().max()))
    assert 3.0 < remainders[0] / remainders[1] < 5.0


def test_gradients_optimizer_and_frozen_buffers():
    net = tiny()
    reference = copy.deepcopy(net)
    lin = wn.linearize(net)
    x, y = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    names = {n for n, _ in lin.named_parameters()}
    assert names == {"0__weight", "0__bias", "2__weight", "2__bias"}
    buffers_before = {n: b.clone() for n, b in lin.named_buffers()}
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((lin(x) - y) ** 2).mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lin.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    for n, b in lin.named_buffers():
        torch.testing.assert_close(b, buffers_before[n], rtol=0, atol=0)
    # The model itself is untouched.
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # The gradient of the linear model is J(θ0)ᵀ r, independent of θ: check against the net's.
    lin.zero_grad()
    net.zero_grad()
    r = torch.randn(5, 2, dtype=F64)
    (lin(x) * r).sum().backward()
    (net(x) * r).sum().backward()
    for name, safe in lin.names.items():
        torch.testing.assert_close(
            getattr(lin, safe).grad, dict(net.named_parameters())[name].grad, rtol=1e-12, atol=0
        )


def test_frozen_parameters_and_eval_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).to(F64)
    net.train()
    net(torch.randn(16, 3, dtype=F64))  # non-trivial running statistics
    net.eval()
    net[0].bias.requires_grad_(False)
    lin = wn.linearize(net)
    assert "0__bias" not in dict(lin.named_parameters())
    x = torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-15)
    net.train()  # switched back after linearization: refused at call time
    with pytest.raises(ValueError, match="training mode"):
        lin(x)


@pytest.mark.parametrize(
    "module", [nn.BatchNorm1d(4), nn.Dropout(0.5)], ids=["batchnorm", "dropout"]
)
def test_refuses_training_mode_batch_coupling(module):
    net = nn.Sequential(nn.Linear(3, 4), module, nn.Linear(4, 1))
    net.train()
    with pytest.raises(ValueError, match=r"module '1'.*training mode"):
        wn.linearize(net)
    net.eval()
    wn.linearize(net)


def test_bad_inputs():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        wn.linearize(lambda x: x)
    net = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        wn.linearize(net)


def test_widenet_mlp_and_device_dtype_move():
    net = wn.mlp(2, "relu", w_std=1.4, b_std=0.1).network(3, 16, seed=0)
    lin = wn.linearize(net).double()
    x = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(lin(x), net.double()(x), rtol=1e-6, atol=1e-6)
