"""Vectorised training of the phase diagram's networks vs one autograd loop per network.

    python benchmarks/bench_phases.py [--quick]

Workload: the γ′ = 0 line of the phase-diagram experiment (γ = 0.5, 1, 1.75) at the full
widths 1000, 5000, 10000, 20000, 40000 (15 ASI networks, 228 000 neurons in all) on the 1-D
problem ``wn.phases.PAPER_DATA``, float64, ``steps`` gradient-descent steps.
``wn.phases.train_to_tolerance`` (all neurons in one array, closed-form gradients, one step for
every network at once) against the plain baseline: for each network in turn, the loss
``wn.phases.loss`` through autograd and the same step rule min(1, 0.5 n / tr Θ). Both must give
the same parameters (checked to 1e-9) before timing. Goal: baseline / widenet ≥ 3×. Not wired
into ``run.py`` (a shared file); run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import widenet as wn

RESULTS = Path(__file__).resolve().parent / "results"


def _nets(widths):
    nets = []
    for p, g in enumerate((0.5, 1.0, 1.75)):
        for i, m in enumerate(widths):
            gen = torch.Generator().manual_seed(1000 * p + i)
            a, w = wn.phases.init_params(wn.phases.scaling(g, 0.0, m), 1, generator=gen)
            nets.append((a, w, 1.0))
    return nets


def baseline(nets, x, y, steps):
    out = []
    for a, w, alpha in nets:
        a, w = a.clone().requires_grad_(), w.clone().requires_grad_()
        for _ in range(steps):
            ga, gw = torch.autograd.grad(wn.phases.loss(a, w, x, y, alpha), [a, w])
            with torch.no_grad():
                lr = min(1.0, 0.5 * len(y) / float(wn.phases.ntk_trace(a, w, x, alpha)))
                a -= lr * ga
                w -= lr * gw
        out.append((a.detach(), w.detach()))
    return out


def widenet(nets, x, y, steps):
    res = wn.phases.train_to_tolerance(
        nets, x, y, loss_tol=1e-300, max_steps=steps, keep_params=True
    )
    return list(zip(res.a, res.w, strict=True))


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(quick: bool = False) -> dict:
    widths = [100, 500, 1000] if quick else [1000, 5000, 10000, 20000, 40000]
    steps = 20 if quick else 200
    x, y = wn.phases.PAPER_DATA
    nets = _nets(widths)
    ref, got = baseline(nets, x, y, 3), widenet(nets, x, y, 3)
    for (a0, w0), (a1, w1) in zip(ref, got, strict=True):
        assert torch.allclose(a0, a1, rtol=1e-9, atol=1e-12)
        assert torch.allclose(w0, w1, rtol=1e-9, atol=1e-12)
    t_base = best_of(lambda: baseline(nets, x, y, steps), 2)
    t_wn = best_of(lambda: widenet(nets, x, y, steps), 3)
    result = {
        "config": {"widths": widths, "steps": steps, "networks": len(nets)},
        "baseline_s": t_base,
        "widenet_s": t_wn,
        "speedup": t_base / t_wn,
        "goal": 3.0,
    }
    print(
        f"{len(nets)} networks, {steps} steps: autograd loop {t_base:.3f} s, widenet "
        f"{t_wn:.3f} s -> {result['speedup']:.1f}x (goal >= 3x)"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_phases.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(**vars(parser.parse_args()))
