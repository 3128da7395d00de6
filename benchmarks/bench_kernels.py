"""Benchmark: widenet's closed-form FC ReLU NNGP + NTK against plain eager PyTorch and a floor.

Workload: fully-connected ReLU network, depth 3 (three hidden Dense + ReLU, then a Dense readout),
NTK parameterization, w_std = sqrt(2), b_std = 0.1, both kernels (NNGP and NTK) of n = 4000
inputs of dimension d = 100, float32 (and float64).

Compared, in the same run and interleaved (every repeat times every method once, so that load
from other processes hits them alike; the best of the repeats is reported):

- ``widenet x2=None``: ``wn.mlp(3, "relu", sqrt(2), 0.1).kernel(x)`` (symmetric: the tiles on and
  above the diagonal, mirrored);
- ``widenet x2=x``: the same with a copy of ``x`` passed as ``x2`` (every tile computed; passing
  the very tensor ``x`` would take the symmetric path);
- ``eager``: :func:`eager_fc_relu_kernels`, the same recursion written the obvious way in eager
  PyTorch on full n x n tensors (no tiling, no symmetry, no in-place tricks);
- ``floor``: one n x n x d GEMM (``x @ x.T``) plus one elementwise pass over n x n
  (``torch.arccos``), the least any implementation of the recursion must do;
- widenet ``x2=None`` with ``tile=T`` for T in 128 ... 2048.

Before timing, the eager reference and widenet must agree (Frobenius-relative) to 1e-5 for
``x2=None``. With ``x2=x`` widenet does not know that the two sets are one: on the diagonal
rho = c / sqrt(q1 q2) is 1 only up to rounding (c from the GEMM, q from the squared norms), and
arccos(1 - eps) ~ sqrt(2 eps) turns that into ~1e-4 relative error on the float32 NTK diagonal
(~1e-5 over the matrix); for that form the bar is the library's float32 tolerance, 1e-4.

Usage: python benchmarks/bench_kernels.py [--quick]
Writes benchmarks/results/kernels.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import widenet as wn
from widenet import architectures

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
DEPTH, W_STD, B_STD = 3, math.sqrt(2.0), 0.1
TILES = (128, 256, 512, 1024, 2048)
AGREE_TOL = {"x2=None": 1e-5, "x2=x": 1e-4}
GOAL_VS_EAGER = 4.0


def eager_fc_relu_kernels(x: torch.Tensor, depth: int, w_std: float, b_std: float):
    """NNGP and NTK of a depth-``depth`` ReLU MLP (NTK parameterization), eager reference.

    The recursion of Jacot et al. (2018) / Arora et al. (2019) with the ReLU arc-cosine duals
    (Cho & Saul 2009), written plainly on full n x n tensors:

        K^0 = x x^T / d,   K^1 = w^2 K^0 + b^2,   Theta^1 = K^1
        for each hidden layer: rho = K / sqrt(diag K diag K^T), theta = arccos rho
            K     <- w^2 sqrt(q q^T) (sin theta + (pi - theta) cos theta) / (2 pi) + b^2
            Theta <- K + w^2 (pi - theta) / (2 pi) * Theta
    """
    w_var, b_var = w_std**2, b_std**2
    k = x @ x.T / x.shape[1]
    k = w_var * k + b_var
    ntk = k
    for _ in range(depth):
        q = torch.diagonal(k)
        norm = torch.sqrt(q[:, None] * q[None, :])
        rho = torch.clamp(k / norm, -1.0, 1.0)
        theta = torch.arccos(rho)
        nngp_relu = norm * (torch.sqrt(1.0 - rho * rho) + (math.pi - theta) * rho) / (2 * math.pi)
        dot_relu = (math.pi - theta) / (2 * math.pi)
        k = w_var * nngp_relu + b_var
        ntk = k + w_var * dot_relu * ntk
    return k, ntk


def floor_inputs(x: torch.Tensor):
    """Inputs for the floor: rows scaled to norm < 1, so that arccos(x x^T) is defined."""
    return x / (x.norm(dim=1, keepdim=True) * 1.001)


def floor_gemm_arccos(xs: torch.Tensor) -> torch.Tensor:
    """One n x n x d GEMM plus one elementwise pass over the n x n result."""
    return torch.arccos(xs @ xs.T)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def timed_interleaved(fns: dict, repeats: int) -> dict:
    """Warm every function up, then time each once per repeat, round-robin; best and median."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {
        name: dict(best=min(ts), median=sorted(ts)[len(ts) // 2], all=ts)
        for name, ts in times.items()
    }


def main(quick: bool = False, repeats: int | None = None) -> dict:
    n, d = (300, 20) if quick else (4000, 100)
    repeats = repeats or (2 if quick else 5)
    tiles = (64, 128, 256) if quick else TILES
    arch = wn.mlp(DEPTH, "relu", W_STD, B_STD)
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    print(
        f"closed-form kernel benchmark: FC ReLU depth {DEPTH} NNGP+NTK, n={n}, d={d}, "
        f"w_std=sqrt(2), b_std={B_STD}, NTK parameterization; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, default tile {architectures.DEFAULT_TILE}, "
        f"best of {repeats}",
        flush=True,
    )

    agreement, times, ratios = {}, {}, {}
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        x = x64.to(dtype)
        xs = floor_inputs(x)
        # Correctness first: widenet (both forms) must agree with the reference recursion,
        # computed in float64 (the float32 eager run is only timed: on the development machine
        # torch's first out-of-place sqrt over the 4000 x 4000 norms came out 3e-4 wrong in the
        # main thread's half in about half of fresh processes, 2026-12-07).
        ref_nngp, ref_ntk = eager_fc_relu_kernels(x64, DEPTH, W_STD, B_STD)
        errs = {}
        xc = x.clone()  # a copy: kernel(x, x) with the same tensor takes the symmetric path
        for form, k in (("x2=None", arch.kernel(x)), ("x2=x", arch.kernel(x, xc))):
            errs[f"nngp {form}"] = rel(k.nngp, ref_nngp)
            errs[f"ntk {form}"] = rel(k.ntk, ref_ntk)
        del ref_nngp, ref_ntk, k
        bad = {k: e for k, e in errs.items() if not e <= AGREE_TOL[k.split()[1]]}
        if bad:
            raise AssertionError(f"eager reference and widenet disagree in {name}: {bad}")
        agreement[name] = errs
        shown = ", ".join(f"{k} {e:.1e}" for k, e in errs.items())
        print(f"  {name}: rel. difference to the float64 reference: {shown}", flush=True)

        fns = {
            "widenet x2=None": lambda x=x: arch.kernel(x),
            "widenet x2=x": lambda x=x, xc=xc: arch.kernel(x, xc),
            "eager": lambda x=x: eager_fc_relu_kernels(x, DEPTH, W_STD, B_STD),
            "gemm": lambda xs=xs: xs @ xs.T,
            "floor": lambda xs=xs: floor_gemm_arccos(xs),
        }
        if dtype == torch.float32:
            for t in tiles:
                fns[f"widenet x2=None tile={t}"] = lambda x=x, t=t: arch.kernel(x, tile=t)
        res = timed_interleaved(fns, repeats)
        times[name] = {k: v["best"] for k, v in res.items()}
        times[name + " median"] = {k: v["median"] for k, v in res.items()}
        best = times[name]
        ratios[name] = {
            "eager / widenet x2=None": best["eager"] / best["widenet x2=None"],
            "eager / widenet x2=x": best["eager"] / best["widenet x2=x"],
            "widenet x2=None / floor": best["widenet x2=None"] / best["floor"],
            "widenet x2=x / floor": best["widenet x2=x"] / best["floor"],
            "eager / floor": best["eager"] / best["floor"],
        }
        print(f"  {name}:")
        base = best["floor"]
        for method, sec in best.items():
            print(f"    {method:<28s} {sec:9.4f} s   {sec / base:6.2f}x floor")
        for what, r in ratios[name].items():
            print(f"    {what:<28s} {r:9.2f}")

    tile_times = {int(k.rsplit("=", 1)[1]): v for k, v in times["float32"].items() if "tile=" in k}
    best_tile = min(tile_times, key=tile_times.get)
    speedup = ratios["float32"]["eager / widenet x2=None"]
    print(
        f"  fastest tile (float32, x2=None): {best_tile}; speed-up over eager (float32, x2=None) "
        f"{speedup:.1f}x (goal >= {GOAL_VS_EAGER:g}x: {'PASS' if speedup >= 4 else 'FAIL'})"
    )
    results = dict(
        benchmark="kernels",
        date=datetime.date.today().isoformat(),
        quick=quick,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        load_average_1min=os.getloadavg()[0],  # other processes on the machine skew timings
        config=dict(
            n=n,
            d=d,
            depth=DEPTH,
            activation="relu",
            w_std=W_STD,
            b_std=B_STD,
            parameterization="ntk",
            repeats=repeats,
            default_tile=architectures.DEFAULT_TILE,
        ),
        agreement=agreement,
        seconds=times,
        tile_seconds_float32=tile_times,
        best_tile=best_tile,
        ratios=ratios,
        speedup_vs_eager=speedup,
        widenet_over_floor=ratios["float32"]["widenet x2=None / floor"],
        goal_vs_eager=GOAL_VS_EAGER,
        goal_met=speedup >= GOAL_VS_EAGER,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small n: seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    args = parser.parse_args()
    main(quick=args.quick, repeats=args.repeats)
