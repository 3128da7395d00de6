"""Vectorised training of the phase diagram's networks vs one autograd loop per network.

    python benchmarks/bench_phases.py [--quick]

Workload: the γ′ = 0 line of the phase-diagram experiment (γ = 0.5, 1, 1.75) at the full
widths 1000, 5000, 10000, 20000, 40000 (15 ASI networks, 228 000 neurons in all) on the 1-D
problem ``wn.phases.PAPER_DATA``, float64, ``steps`` gradient-descent steps.
``wn.phases.train_to_tolerance`` (networks of similar width batched in cache-sized blocks,
closed-form gradients, a few batched products and in-place passes per step) against the plain
baseline: for each network in turn, the loss ``wn.phases.loss`` through autograd and the same
step rule min(1, 0.5 n / tr Θ). Both must give the same parameters (checked to 1e-9) before
timing. A second workload is the 8 x 5 (γ, γ′) grid at the quick widths 500-4000 (160
networks), where batching saves the per-network overhead. Goal: baseline / widenet ≥ 3 on the
grid; the line (few, large networks) is information. Figures: ``benchmarks/README.md``. Part of
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


def _nets(widths, points):
    nets = []
    for p, (g, gp) in enumerate(points):
        for i, m in enumerate(widths):
            gen = torch.Generator().manual_seed(1000 * p + i)
            a, w = wn.phases.init_params(wn.phases.scaling(g, gp, m), 1, generator=gen)
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


def _workload(name, widths, points, steps):
    x, y = wn.phases.PAPER_DATA
    nets = _nets(widths, points)
    ref, got = baseline(nets, x, y, 3), widenet(nets, x, y, 3)
    for (a0, w0), (a1, w1) in zip(ref, got, strict=True):
        assert torch.allclose(a0, a1, rtol=1e-9, atol=1e-12)
        assert torch.allclose(w0, w1, rtol=1e-9, atol=1e-12)
    t_base = best_of(lambda: baseline(nets, x, y, steps), 2)
    t_wn = best_of(lambda: widenet(nets, x, y, steps), 3)
    print(
        f"{name}: {len(nets)} networks, {steps} steps: autograd loop {t_base:.3f} s, widenet "
        f"{t_wn:.3f} s -> {t_base / t_wn:.1f}x"
    )
    return {
        "widths": widths,
        "networks": len(nets),
        "steps": steps,
        "baseline_s": t_base,
        "widenet_s": t_wn,
        "speedup": t_base / t_wn,
    }


def main(quick: bool = False) -> dict:
    line = [(g, 0.0) for g in (0.5, 1.0, 1.75)]
    grid = [(g, gp) for gp in (-0.5, 0.0, 0.5, 1.0, 1.5) for g in np.arange(0.25, 2.01, 0.25)]
    full = [100, 500, 1000] if quick else [1000, 5000, 10000, 20000, 40000]
    small = [50, 100] if quick else [500, 1000, 2000, 4000]
    steps = 10 if quick else 100
    result = {
        "full_widths_line": _workload("gamma'=0 line, full widths", full, line, steps),
        "quick_widths_grid": _workload("8x5 grid, quick widths", small, grid, steps),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_phases.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(**vars(parser.parse_args()))
