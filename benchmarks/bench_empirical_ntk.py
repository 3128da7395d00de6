"""Benchmark: widenet.empirical_ntk against the torch.func tutorial recipe and its own paths.

Model: MLP d=100, width 1024, depth 2 (Linear(100,1024), ReLU, Linear(1024,1024), ReLU,
Linear(1024,1)), scalar output, float32.

(a) n=500: widenet ``implementation="auto"`` vs the torch.func "neural tangent kernels" tutorial
    recipe (vmap(jacrev) per-sample Jacobians of functional_call, einsum over all parameters).
(b) n=2000: widenet auto vs widenet's general paths ("jacobian", "ntvp") and the GEMM floor, the
    matrix products the structured path cannot avoid (per layer the n×n Grams X Xᵀ and G Gᵀ and
    their elementwise product). A general path whose time, extrapolated from a smaller n with the
    n² scaling of its contraction, exceeds ``--max-seconds`` is skipped and its estimate reported.

Usage: python benchmarks/bench_empirical_ntk.py [--quick]
Writes benchmarks/results/empirical_ntk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from widenet import empirical_ntk

RESULTS = Path(__file__).resolve().parent / "results" / "empirical_ntk.json"


def make_mlp(d: int, width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


def tutorial_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """The torch.func tutorial's Jacobian contraction, as published (x2 Jacobians recomputed)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    result = torch.stack(
        [torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]
    )
    return result.sum(0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int, device: torch.device, warmup: bool = True):
    """Best wall time of ``repeats`` calls after a warm-up call; returns (seconds, last result)."""
    out = None
    if warmup:
        out = fn()
        _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), out


def gemm_floor(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Time of the per-layer Grams X Xᵀ, G Gᵀ and their elementwise product, on random data.

    Full n x n Grams: widenet forms only the sub-tiles on and above the diagonal of a symmetric
    kernel, so it can run below this floor.
    """
    n = x.shape[0]
    gen = torch.Generator(device=x.device).manual_seed(0)
    mats = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            kw = dict(generator=gen, dtype=x.dtype, device=x.device)
            mats.append((torch.randn(n, m.in_features, **kw), torch.randn(n, m.out_features, **kw)))

    def run():
        total = None
        for a, g in mats:
            term = (a @ a.T).mul_(g @ g.T)
            total = term if total is None else total.add_(term)
        return total

    return best_of(run, repeats, x.device)[0]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(
    quick: bool = False,
    max_seconds: float = 120.0,
    device: str | None = None,
    threads: int | None = None,
) -> dict:
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d, width = 100, (128 if quick else 1024)
    n_a, n_b = (32, 64) if quick else (500, 2000)
    repeats = 2 if quick else 5
    model = make_mlp(d, width).to(dev).eval()
    gen = torch.Generator().manual_seed(1)
    xa = torch.randn(n_a, d, generator=gen).to(dev)
    xb = torch.randn(n_b, d, generator=gen).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []

    def record(part, n, method, seconds, note=""):
        rows.append(dict(part=part, n=n, method=method, seconds=seconds, note=note))
        shown = "skipped" if seconds is None else f"{seconds:10.4f} s"
        print(f"  ({part}) n={n:<5d} {method:<28s} {shown:>14s}  {note}", flush=True)

    print(
        f"empirical NTK benchmark on {dev} ({torch.get_num_threads()} threads), "
        f"MLP {d}-{width}-{width}-1, {n_params:,} parameters"
    )

    # (a) widenet auto vs the tutorial recipe.
    t_auto_a, k_auto = best_of(lambda: empirical_ntk(model, xa), repeats, dev)
    record("a", n_a, "widenet auto", t_auto_a)
    tutorial_warm = lambda: tutorial_ntk(model, xa[:16], xa[:16])  # noqa: E731
    tutorial_warm()
    t_tut, k_tut = best_of(lambda: tutorial_ntk(model, xa, xa), 2, dev, warmup=False)
    k_tut = k_tut[..., 0, 0]
    err = rel(k_auto, k_tut)
    speedup = t_tut / t_auto_a
    record("a", n_a, "torch.func tutorial recipe", t_tut, f"rel. diff {err:.1e}")
    print(f"  (a) speed-up of widenet auto over the tutorial recipe: {speedup:.0f}x")
    del k_tut

    # (b) widenet auto vs its general paths and the GEMM floor.
    t_auto_b, k_auto_b = best_of(lambda: empirical_ntk(model, xb), repeats, dev)
    record("b", n_b, "widenet auto", t_auto_b)
    t_floor = gemm_floor(model, xb, repeats)
    record("b", n_b, "GEMM floor", t_floor, f"auto / floor = {t_auto_b / t_floor:.2f}")
    n_probe = min(n_b, 250)
    for impl in ("jacobian", "ntvp"):
        t_small = best_of(
            lambda impl=impl: empirical_ntk(model, xb[:n_probe], implementation=impl), 1, dev
        )[0]
        estimate = t_small * (n_b / n_probe) ** 2
        if estimate > max_seconds:
            record(
                "b",
                n_b,
                f"widenet {impl}",
                None,
                f"estimated {estimate:.0f} s from {t_small:.2f} s at n={n_probe} "
                f"(> {max_seconds:.0f} s)",
            )
            continue
        t_impl, k_impl = best_of(
            lambda impl=impl: empirical_ntk(model, xb, implementation=impl), 1, dev, warmup=False
        )
        record(
            "b", n_b, f"widenet {impl}", t_impl, f"rel. diff to auto {rel(k_impl, k_auto_b):.1e}"
        )

    results = dict(
        device=str(dev),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        platform=platform.platform(),
        quick=quick,
        load_average_1min=os.getloadavg()[0],  # other processes on the machine skew timings
        model=dict(d=d, width=width, depth=2, outputs=1, parameters=n_params, dtype="float32"),
        speedup_vs_tutorial=speedup,
        auto_over_gemm_floor=t_auto_b / t_floor,
        tutorial_rel_diff=err,
        rows=rows,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small n and width: seconds")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="skip general paths estimated slower"
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy host)"
    )
    args = parser.parse_args()
    main(quick=args.quick, max_seconds=args.max_seconds, device=args.device, threads=args.threads)
