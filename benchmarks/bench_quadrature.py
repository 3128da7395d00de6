"""Quadrature-activation kernels: the Hermite-series duals against the direct 2-D rule.

    python benchmarks/bench_quadrature.py [--quick]

Workload: NNGP + NTK of ``wn.mlp(3, "tanh")`` (w_std = 1, b_std = 0, NTK parameterization) on
n = 1000 Gaussian inputs, d = 10, float64, x2=None (symmetric). widenet's default duals
(``rule="series"``, :func:`widenet.activations.hermite_series_dual`) against the previous
default, the direct trapezoid rule (``wn.activations.quadrature(torch.tanh, rule="trapezoid")``).
The direct rule costs the same per kernel entry whatever the tile, so it is timed on a strip
x × x[:m] (m = 50) and scaled by the number of entries the symmetric kernel computes (the tiles
on and above the diagonal); the series is also timed on the same strip, a ratio with no
scaling. Both kernels on the strip must agree to the direct rule's documented accuracy (checked
to 1e-8 relative) before timing counts. Goal (issue 21): full kernel >= 20x faster at n = 1000.
Part of ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import widenet as wn
from widenet.architectures import DEFAULT_TILE
from widenet.kernels import tile_grid

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 20.0


def _best(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(quick: bool = False, n: int | None = None, strip: int | None = None) -> dict:
    n = n or (200 if quick else 1000)
    m = strip or (20 if quick else 50)
    x = torch.randn(n, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    series = wn.mlp(3, "tanh", w_std=1.0, b_std=0.0)
    direct = wn.mlp(3, wn.activations.quadrature(torch.tanh, rule="trapezoid"), 1.0, 0.0)
    series.kernel(x[:20])  # warm-up: the cached Hermite table, thread pools
    t_full, _ = _best(lambda: series.kernel(x), 1 if not quick else 2)
    t_strip_series, k_series = _best(lambda: series.kernel(x, x[:m]), 2)
    t_strip_direct, k_direct = _best(lambda: direct.kernel(x, x[:m]), 1)
    diff = max(
        float((a - b).abs().max() / b.abs().max())
        for a, b in ((k_series.nngp, k_direct.nngp), (k_series.ntk, k_direct.ntk))
    )
    if diff > 1e-8:
        raise AssertionError(f"series and direct kernels differ by {diff:.2e} (> 1e-8)")
    tile = DEFAULT_TILE
    entries = sum(
        (r.stop - r.start) * (c.stop - c.start) for r, c in tile_grid(n, n, tile, symmetric=True)
    )
    t_direct_full = t_strip_direct * entries / (n * m)
    result = {
        "config": {"n": n, "strip": m, "d": 10, "depth": 3, "activation": "tanh", "tile": tile},
        "series_full_s": t_full,
        "direct_full_s_scaled": t_direct_full,
        "series_strip_s": t_strip_series,
        "direct_strip_s": t_strip_direct,
        "speedup_full": t_direct_full / t_full,
        "speedup_strip": t_strip_direct / t_strip_series,
        "max_rel_diff": diff,
        "goal": GOAL,
    }
    print(
        f"tanh depth 3, n = {n}: series {t_full:.2f} s; direct rule {t_direct_full:.1f} s "
        f"(from a {n} x {m} strip, {t_strip_direct:.2f} s) -> {result['speedup_full']:.1f}x "
        f"(goal >= {GOAL:g}x); same strip: {result['speedup_strip']:.1f}x; "
        f"max rel. diff {diff:.1e}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_quadrature.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 200 (seconds)")
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args()
    main(quick=args.quick, n=args.n)
