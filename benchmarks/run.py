"""Run every benchmark and summarise the measured ratios against the goals.

    python benchmarks/run.py [--quick] [--contention] [--with-nt] [--nt-python PATH]
                             [--with-scale [--scale-n N]] [--with-models] [--with-cnn]

- ``bench_kernels``: closed-form FC ReLU depth-3 NNGP + NTK vs plain eager PyTorch (goal >= 4x);
- ``bench_empirical_ntk`` (when importable): empirical NTK vs the torch.func tutorial recipe
  (goal >= 100x) and vs the GEMM floor;
- ``nt_compare`` (only with ``--with-nt``): widenet vs neural-tangents (goal >= 2.5x);
- ``bench_dynamics`` (only with ``--with-nt``): closed-form gradient-flow predictions against
  neural-tangents' ``predict.gradient_descent_mse`` (goal >= 1.5x quiet, >= 1x under
  contention, same values to 1e-6);
- ``bench_empirical_ntk_models`` (only with ``--with-models``; ``--quick``: ResNet-18 width 16
  n = 32 and the transformer n = 64): the empirical NTK of a CIFAR ResNet-18, a transformer
  encoder and the MLP against the torch.func recipe (goal >= 3x), the flop floor (goal <= 3x)
  and widenet's single implementations (auto within 10 %);
- ``bench_phases``: the phase diagram's networks trained all at once vs one autograd loop per
  network (goal >= 3x on the 8 x 5 grid at the quick widths; the full-width line, 15 nets, is
  information);
- ``bench_scale`` (only with ``--with-scale``: n = 50 000 writes 20 GB stores in turn for minutes;
  ``--scale-n`` picks a smaller n): NNGP + NTK to a Zarr store, tile throughput against the
  in-memory engine (goal >= 0.8), peak RSS (goal <= 2 GiB), Dask 1 -> 2 workers (goal >= 1.7x);
- ``bench_estimators``: NTKClassifier/NTKRegressor fit and predict on digits vs scikit-learn's
  SVC(rbf) and KernelRidge (goal: within 3x, i.e. sklearn / widenet >= 0.33);
- ``bench_landscape``: Hessian extreme eigenvalues and find_critical_point vs the plain
  double-backward + eigsh and scipy trust-exact recipes (goal >= 1x);
- ``bench_train_to_tolerance``: ``phases.train_to_tolerance`` at the phase-diagram experiment's
  full size vs one autograd loop per network (goal >= 1x);
- ``bench_quadrature``: the tanh kernel's Hermite-series duals vs the direct 2-D quadrature
  rule at n = 1000 (goal >= 20x);
- ``bench_cnn_kernels`` (only with ``--with-cnn``: tens of minutes on 2 cores): CNN-GAP, CNN-Vec
  and Myrtle-5 kernels against neural-tangents (with ``--with-nt``; goals >= 10x, 3x, 5x), the
  Myrtle-5 kernel of all 1797 digits, cost exponents in n and H*W, peak memory at n = 2000.

``--contention`` runs every selected benchmark while one busy process per core spins
(``contention.busy_cores``: started before each benchmark, stopped after it, each bounded to
30 min), so both sides of every ratio are measured under the same load, in the same run.

Each benchmark writes its own JSON under benchmarks/results/; this prints one summary table.
The exit status is 0 whatever the goals' outcome (a benchmark is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contention import busy_cores  # noqa: E402

# Set by main(): the number of busy processes each benchmark runs beside (0: none).
_BUSY = {"n": 0}


def _run(name: str, **kwargs):
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        print(f"{name}: not available ({e})")
        return None
    busy = _BUSY["n"]
    print(f"\n=== {name}" + (f" (beside {busy} busy processes)" if busy else "") + " ===")
    sys.stdout.flush()
    try:
        with busy_cores(busy) if busy else contextlib.nullcontext():
            return module.main(**kwargs)
    except Exception:  # report and go on with the other benchmarks
        traceback.print_exc()
        return None


# Goals against neural-tangents and the torch.func recipe, quiet and with one busy process per
# core (issue 19: the recipe; issue 20: neural-tangents' closed-form kernel, empirical NTK at
# n = 2000 and dynamics). Other workloads keep the original 2.5x.
GOALS_QUIET = dict(
    models=3.0,
    nt={("closed_form", 4000): 5.0, ("empirical", 2000): 2.5},
    dynamics=1.5,
)
GOALS_CONTENTION = dict(
    models=1.5,
    nt={("closed_form", 4000): 2.5, ("empirical", 2000): 1.5},
    dynamics=1.0,
)


def summary_rows(
    kernels,
    empirical,
    nt,
    dynamics=None,
    scale=None,
    phases=None,
    extra=None,
    models=None,
    contention: bool = False,
) -> list[tuple[str, float | None, str, float]]:
    """(what, measured ratio, goal text, goal) rows; ratio None when not measured.

    ``extra``: {benchmark name: its result} for the benchmarks whose result carries
    ``ratios`` (or ``speedup`` / ``speedup_full``) and ``goal``. ``contention``: the goals
    that issues 19 and 20 set for a machine with one busy process per core (lower than the
    quiet ones) apply.
    """
    goal = GOALS_CONTENTION if contention else GOALS_QUIET
    rows = []
    if models is not None:
        for r in models["rows"]:
            what = f"eNTK {r['model']}{'' if r['model'] != 'resnet18' else ' w' + str(r['width'])}"
            what += f" n={r['n']} {r['mode']}"
            if "recipe_over_widenet" in r:
                est = " (recipe estimated)" if r.get("recipe_estimated") else ""
                rows.append(
                    (
                        f"{what}: recipe / widenet{est}",
                        r["recipe_over_widenet"],
                        ">=",
                        goal["models"],
                    )
                )
            if r["model"] == "resnet18" and r["width"] == 64 and r["n"] == 128:
                # A ceiling: shown as goal / measured so that >= 1 passes.
                peak = r["auto_peak_rss_gib"]
                rows.append((f"{what}: 4 GiB / peak RSS ({peak:.2f} GiB)", 4 / peak, ">=", 1))
            if "widenet_over_floor" in r:
                # A ceiling: shown as goal / measured so that >= 1 passes.
                rows.append(
                    (f"{what}: 3 / (widenet / floor)", 3 / r["widenet_over_floor"], ">=", 1)
                )
            if "widenet_over_model_rate_floor" in r:
                rows.append(
                    (
                        f"{what}: widenet / floor at the model's forward speed",
                        r["widenet_over_model_rate_floor"],
                        "info",
                        0.0,
                    )
                )
            if "auto_over_best_single" in r:
                rows.append(
                    (
                        f"{what}: 1.1 / (auto / best single)",
                        1.1 / r["auto_over_best_single"],
                        ">=",
                        1,
                    )
                )
    if phases is not None:
        grid, line = phases["quick_widths_grid"], phases["full_widths_line"]
        rows.append(
            (f"phase grid ({grid['networks']} nets): loop / widenet", grid["speedup"], ">=", 3)
        )
        rows.append(
            (f"phase line ({line['networks']} nets): loop / widenet", line["speedup"], "info", 0.0)
        )
    if kernels is not None:
        n = kernels["config"]["n"]
        rows.append(
            (f"closed form n={n}: eager / widenet (x2=None)", kernels["speedup_vs_eager"], ">=", 4)
        )
        rows.append(
            (
                f"closed form n={n}: eager / widenet (x2=x)",
                kernels["ratios"]["float32"]["eager / widenet x2=x"],
                "info",
                0.0,
            )
        )
        rows.append(
            (
                f"closed form n={n}: widenet / floor (GEMM + 1 pass)",
                kernels["widenet_over_floor"],
                "info",
                0.0,
            )
        )
    if empirical is not None:
        rows.append(
            ("empirical NTK: tutorial / widenet", empirical["speedup_vs_tutorial"], ">=", 100)
        )
        rows.append(
            ("empirical NTK: widenet / GEMM floor", empirical["auto_over_gemm_floor"], "info", 0.0)
        )
    if nt is not None and not nt.get("skipped"):
        for c in nt["comparisons"]:
            rows.append(
                (
                    f"{c['workload']} n={c['n']}: neural-tangents / widenet",
                    c["speedup"],
                    ">=",
                    goal["nt"].get((c["workload"], c["n"]), 2.5),
                )
            )
    if dynamics is not None and not dynamics["nt"].get("skipped"):
        n = dynamics["config"]["n_train"]
        rows.append(
            (
                f"dynamics n={n}: neural-tangents / widenet",
                dynamics["nt"]["speedup"],
                ">=",
                goal["dynamics"],
            )
        )
    if scale is not None:
        n, goals = scale["config"]["n"], scale["goals"]
        rows.append(
            (
                f"zarr store n={n}: tile throughput store / in-memory",
                scale["tile_throughput_vs_memory"],
                ">=",
                goals["tile_throughput"],
            )
        )
        if scale["dask_speedup_1_to_2"] is not None:
            rows.append(
                (
                    f"zarr store n={scale['config']['dask_n']}: Dask 1 -> 2 workers",
                    scale["dask_speedup_1_to_2"],
                    ">=",
                    goals["dask_speedup"],
                )
            )
        # A ceiling, not a floor: shown as goal / measured so that >= 1 passes.
        rows.append(
            (
                f"zarr store n={n}: 2 GiB / peak RSS ({scale['peak_rss_gib']:.2f} GiB)",
                goals["peak_rss_gib"] / scale["peak_rss_gib"],
                ">=",
                1,
            )
        )
    for name, res in (extra or {}).items():
        if res is None:
            continue
        if "ratios" in res:
            for what, ratio in res["ratios"].items():
                rows.append((f"{name}: {what}", ratio, ">=", res["goal"]))
        elif "speedup_full" in res:
            n = res["config"]["n"]
            rows.append((f"{name} n={n}: direct rule / series", res["speedup_full"], ">=", 20))
        elif "speedup" in res:
            rows.append((f"{name}: loop / widenet", res["speedup"], ">=", res["goal"]))
    return rows


def cnn_rows(cnn) -> list[tuple[str, float | None, str, float]]:
    """Summary rows of ``bench_cnn_kernels`` (its neural-tangents ratios and the memory
    ceiling, shown as bound / measured so that >= 1 passes)."""
    rows = []
    if cnn is None:
        return rows
    for r in cnn.get("nt", {}).get("rows", []):
        what = f"{r['workload']} kernel n={r['n']}: neural-tangents / widenet"
        rows.append((what, r["speedup"], ">=", r["goal"]))
    mem = cnn.get("peak_memory")
    if mem is not None and "rise" in mem:
        what = f"cnn-gap n={mem['n']}: (2 x output + workspace) / peak RSS rise"
        rows.append((what, mem["bound"] / max(mem["rise"], 1), ">=", 1))
    return rows


def main(
    quick: bool = False,
    with_nt: bool = False,
    nt_python: str | None = None,
    with_scale: bool = False,
    scale_n: int | None = None,
    with_models: bool = False,
    with_cnn: bool = False,
    contention: bool = False,
) -> dict:
    _BUSY["n"] = (os.cpu_count() or 1) if contention else 0
    kernels = _run("bench_kernels", quick=quick)
    empirical = _run("bench_empirical_ntk", quick=quick)
    nt = _run("nt_compare", quick=quick, nt_python=nt_python) if with_nt else None
    dynamics = _run("bench_dynamics", quick=quick, nt_python=nt_python) if with_nt else None
    models = _run("bench_empirical_ntk_models", quick=quick) if with_models else None
    phases = _run("bench_phases", quick=quick)
    scale = _run("bench_scale", quick=quick, n=scale_n) if with_scale else None
    names = ("bench_estimators", "bench_landscape", "bench_train_to_tolerance", "bench_quadrature")
    extra = {name: _run(name, quick=quick) for name in names}
    rows = summary_rows(
        kernels, empirical, nt, dynamics, scale, phases, extra, models, contention=contention
    )
    cnn = None
    if with_cnn:
        cnn = _run("bench_cnn_kernels", quick=quick, nt_python=nt_python, with_nt=with_nt)
        rows += cnn_rows(cnn)
    head = "\n=== summary" + (" (--quick: small sizes, not the goals' workloads)" if quick else "")
    if contention:
        head += f" (under contention: {_BUSY['n']} busy processes, one per core)"
    print(head)
    for what, ratio, kind, goal in rows:
        if kind == "info":
            verdict = ""
        else:
            verdict = f"goal >= {goal:g}x  {'PASS' if ratio >= goal else 'FAIL'}"
        print(f"  {what:<58s} {ratio:9.2f}x  {verdict}")
    if with_nt and (nt is None or nt.get("skipped")):
        why = "failed" if nt is None else nt["reason"]
        print(f"  neural-tangents comparison: skipped ({why})")
    return dict(
        kernels=kernels,
        empirical=empirical,
        nt=nt,
        dynamics=dynamics,
        scale=scale,
        phases=phases,
        models=models,
        cnn=cnn,
        **extra,
        rows=rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--with-nt", action="store_true", help="also compare with neural-tangents")
    parser.add_argument("--nt-python", default=None, help="python of a neural-tangents venv")
    parser.add_argument(
        "--with-scale", action="store_true", help="also the Zarr/Dask benchmark (20 GB at n=50000)"
    )
    parser.add_argument("--scale-n", type=int, default=None, help="n of the Zarr/Dask benchmark")
    parser.add_argument(
        "--with-models", action="store_true", help="also the empirical NTK of ResNet-18 etc."
    )
    parser.add_argument(
        "--with-cnn", action="store_true", help="also the CNN-kernel benchmark (tens of minutes)"
    )
    parser.add_argument(
        "--contention", action="store_true", help="run beside one busy process per core"
    )
    args = parser.parse_args()
    main(
        quick=args.quick,
        with_nt=args.with_nt,
        nt_python=args.nt_python,
        with_scale=args.with_scale,
        scale_n=args.scale_n,
        with_models=args.with_models,
        with_cnn=args.with_cnn,
        contention=args.contention,
    )
