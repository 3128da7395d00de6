"""``wn.phases.train_to_tolerance`` at the phase-diagram experiment's full size.

    python benchmarks/bench_train_to_tolerance.py [--quick] [--steps N]

Workload: the experiment's default (full) configuration, ``PhaseDiagramConfig()``: the 8 x 5
(γ, γ′) grid at widths 1000, 5000, 10000, 20000, 40000 (200 two-layer ReLU networks, 76 000
neurons per grid point, 3.04 million in all), float64, on ``wn.phases.PAPER_DATA``, for
``steps`` gradient-descent steps (loss_tol = 1e-300 so that no network stops early; the
experiment runs up to 300 000 steps, so the per-step time is what matters). Against the plain
recipe: for each network in turn, the loss ``wn.phases.loss`` through autograd and the same
step rule min(lr_max, lr_scale n / tr Θ). Both must give the same parameters (1e-9) after 3
steps before timing. ``--quick``: widths 100-400, 10 steps.

Goal (issue 20 §4): loop / widenet >= 1 at the experiment's size (the vectorised trainer must
not lose to the loop where the networks are large; ``bench_phases`` has the 3x goal at the
quick widths). Also printed: the projected time of 1000 steps. Part of ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import widenet as wn
from widenet.experiments.phase_diagram import PhaseDiagramConfig

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.0


def networks(config, widths):
    nets = []
    for p, (g, gp) in enumerate((g, gp) for g in config.gammas for gp in config.gamma_primes):
        for i, m in enumerate(widths):
            gen = torch.Generator().manual_seed(1000 * p + i)
            s = wn.phases.scaling(g, gp, m)
            a, w = wn.phases.init_params(s, 1, asi=config.asi, generator=gen)
            nets.append((a, w, 1.0))
    return nets


def loop(nets, x, y, steps, config):
    out = []
    for a, w, alpha in nets:
        a, w = a.clone().requires_grad_(), w.clone().requires_grad_()
        for _ in range(steps):
            ga, gw = torch.autograd.grad(wn.phases.loss(a, w, x, y, alpha), [a, w])
            with torch.no_grad():
                tr = float(wn.phases.ntk_trace(a, w, x, alpha))
                lr = min(config.lr_max, config.lr_scale * len(y) / tr)
                a -= lr * ga
                w -= lr * gw
        out.append((a.detach(), w.detach()))
    return out


def vectorised(nets, x, y, steps, config):
    res = wn.phases.train_to_tolerance(
        nets,
        x,
        y,
        loss_tol=1e-300,
        max_steps=steps,
        lr_scale=config.lr_scale,
        lr_max=config.lr_max,
        keep_params=True,
    )
    return list(zip(res.a, res.w, strict=True))


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(quick: bool = False, steps: int | None = None) -> dict:
    config = PhaseDiagramConfig()
    widths = [100, 200, 400] if quick else list(config.widths)
    steps = steps or (10 if quick else 50)
    x, y = wn.phases.PAPER_DATA
    nets = networks(config, widths)
    for (a0, w0), (a1, w1) in zip(
        loop(nets, x, y, 3, config), vectorised(nets, x, y, 3, config), strict=True
    ):
        assert torch.allclose(a0, a1, rtol=1e-9, atol=1e-12)
        assert torch.allclose(w0, w1, rtol=1e-9, atol=1e-12)
    t_loop = _best(lambda: loop(nets, x, y, steps, config), 1)
    t_wn = _best(lambda: vectorised(nets, x, y, steps, config), 2)
    result = {
        "config": {"networks": len(nets), "widths": widths, "steps": steps},
        "loop_s": t_loop,
        "widenet_s": t_wn,
        "speedup": t_loop / t_wn,
        "widenet_s_per_1000_steps": 1000 * t_wn / steps,
        "goal": GOAL,
    }
    print(
        f"  {len(nets)} networks, widths {widths}, {steps} steps: loop {t_loop:.2f} s, "
        f"widenet {t_wn:.2f} s -> {result['speedup']:.2f}x (goal >= {GOAL:g}); widenet "
        f"{result['widenet_s_per_1000_steps']:.1f} s per 1000 steps"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_train_to_tolerance.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    main(**vars(parser.parse_args()))
