"""Loss-landscape tools against the plain recipes: extreme Hessian eigenvalues, critical points.

    python benchmarks/bench_landscape.py [--quick]

1. ``wn.landscape.hessian_extreme_eigenvalues`` (forward-over-reverse Hessian-vector products
   of the flat-parameter loss, ``scipy.sparse.linalg.eigsh``) against the textbook recipe: the
   gradient built once with ``create_graph=True`` and each product by double backward
   (``torch.autograd.grad(g, params, v, retain_graph=True)``) inside the same ``eigsh`` calls
   (k = 6 largest and smallest, tol 1e-8, same start vector). Model: ``wn.mlp(2, "tanh")``
   10-64-64-1 (4 993 parameters; ``--quick``: width 24), 256 Gaussian inputs, targets
   sin(x_0), float64. The eigenvalues must agree to 1e-6 relative before timing counts.
2. ``wn.landscape.find_critical_point(method="lbfgs", tol=1e-9)`` against
   ``scipy.optimize.minimize(method="trust-exact")`` with the exact gradient and Hessian from
   ``torch.func`` (the usual way to get a certified minimum), from the same start: the
   embedding experiments' setting, ``wn.mlp(1, "tanh")`` on sin(πx) at 20 points, width 1 (the
   width where both converge from every start; at widths 2-8 most starts drift along valleys
   to infinity, see ``find_critical_point``), three starts (seeds 0-2) summed. Both must reach
   ‖∇L‖ <= 1e-9 at the same loss (1e-8).

Goals (issue 20 §4): widenet no slower than each recipe (recipe / widenet >= 1). Part of
``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import widenet as wn

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.0


def _best(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def eigsh_double_backward(model, x, y, k, tol, seed):
    """The plain recipe: double-backward Hessian-vector products inside eigsh."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = list(model.parameters())
    loss = (model(x) - y).square().sum() / (2 * x.shape[0])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    p = sum(q.numel() for q in params)

    def matvec(v):
        v = torch.as_tensor(np.asarray(v).reshape(-1), dtype=x.dtype)
        chunks = torch.split(v, [q.numel() for q in params])
        vs = [c.view_as(q) for c, q in zip(chunks, params, strict=True)]
        hv = torch.autograd.grad(grads, params, vs, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).detach().numpy()

    op = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(p)
    return [np.sort(eigsh(op, k=k, which=w, tol=tol, v0=v0)[0]) for w in ("LA", "SA")]


def trust_exact(model, x, y, tol):
    """scipy's trust-region Newton with exact torch.func gradient and Hessian."""
    from scipy.optimize import minimize

    loss, theta0 = wn.landscape.loss_function(model, x, y)
    g, h = torch.func.grad(loss), torch.func.hessian(loss)

    def as_t(v):
        return torch.as_tensor(v, dtype=torch.float64)

    res = minimize(
        lambda v: float(loss(as_t(v))),
        theta0.numpy(),
        jac=lambda v: g(as_t(v)).numpy(),
        hess=lambda v: h(as_t(v)).numpy(),
        method="trust-exact",
        options={"gtol": tol / 10, "maxiter": 2000},
    )
    return float(np.linalg.norm(g(as_t(res.x)).numpy())), float(res.fun)


def main(quick: bool = False) -> dict:
    width = 24 if quick else 64
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, :1])
    model = wn.mlp(2, "tanh").network(10, width, seed=0, dtype=torch.float64)
    p = sum(q.numel() for q in model.parameters())
    t_wn, ev = _best(lambda: wn.landscape.hessian_extreme_eigenvalues(model, x, y, tol=1e-8), 2)
    t_ref, (la, sa) = _best(lambda: eigsh_double_backward(model, x, y, 6, 1e-8, 0), 2)
    scale = float(np.abs(la).max())
    diff = max(
        float(np.abs(ev.largest.numpy() - la).max()), float(np.abs(ev.smallest.numpy() - sa).max())
    )
    if diff > 1e-6 * scale:
        raise AssertionError(f"eigenvalues differ by {diff:.2e} (scale {scale:.2e})")

    xs = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
    ys = torch.sin(torch.pi * xs)
    starts = [wn.mlp(1, "tanh").network(1, 1, seed=s, dtype=torch.float64) for s in range(3)]
    trust_exact(starts[0], xs, ys, 1e-9)  # warm-up (torch.func transforms)
    wn.landscape.find_critical_point(starts[0], xs, ys, method="lbfgs", tol=1e-9)
    t_cp = t_te = 0.0
    cps, tes = [], []
    for start in starts:
        t, cp = _best(
            lambda s=start: wn.landscape.find_critical_point(s, xs, ys, method="lbfgs", tol=1e-9),
            2,
        )
        t_cp, cps = t_cp + t, [*cps, (cp.grad_norm, cp.loss)]
        t, te = _best(lambda s=start: trust_exact(s, xs, ys, 1e-9), 2)
        t_te, tes = t_te + t, [*tes, te]
    for (g1, f1), (g2, f2) in zip(cps, tes, strict=True):
        if max(g1, g2) > 1e-9 or abs(f1 - f2) > 1e-8:
            raise AssertionError(f"not the same certified minimum: {(g1, f1)} vs {(g2, f2)}")
    result = {
        "config": {"eig_parameters": p, "eig_n": 256, "cp_width": 1, "cp_n": 20, "cp_starts": 3},
        "eig": {"widenet_s": t_wn, "double_backward_s": t_ref, "max_abs_diff": diff},
        "critical_point": {
            "widenet_s": t_cp,
            "trust_exact_s": t_te,
            "widenet_grad_norm_loss": cps,
            "trust_exact_grad_norm_loss": tes,
        },
        "ratios": {
            "Hessian eigsh: double backward / widenet": t_ref / t_wn,
            "critical point: trust-exact / widenet": t_te / t_cp,
        },
        "goal": GOAL,
    }
    print(
        f"  extreme eigenvalues, P = {p}: widenet {t_wn:.2f} s, double backward {t_ref:.2f} s "
        f"(max diff {diff:.1e})"
    )
    print(
        f"  critical point 1-1-1, 3 starts: widenet lbfgs {t_cp:.2f} s, trust-exact {t_te:.2f} s "
        f"(same minima, |grad| <= 1e-9)"
    )
    for what, r in result["ratios"].items():
        print(f"  {what:<44s} {r:6.2f}x (goal >= {GOAL:g})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_landscape.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model (seconds)")
    main(quick=parser.parse_args().quick)
