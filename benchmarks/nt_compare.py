"""Optional comparison with neural-tangents (JAX, CPU) on the same inputs, in the same run.

Workloads (float32, JAX's default):

- closed form: FC ReLU depth 3 NNGP + NTK (w_std = sqrt(2), b_std = 0.1, NTK parameterization),
  n = 4000, d = 100: widenet ``wn.mlp(3, "relu", sqrt(2), 0.1).kernel(x)`` against
  ``jax.jit(kernel_fn, static_argnames="get")(x, None, get=("nngp", "ntk"))``; the two kernels
  are also compared numerically (Frobenius-relative difference);
- empirical NTK: MLP d = 100, width 1024, depth 2, scalar output, at n = 500 and n = 2000:
  widenet ``empirical_ntk(wn.mlp(2, "relu", sqrt(2), 0.1).network(100, 1024), x)`` against
  ``jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=k))`` on
  ``stax.serial(Dense(1024), Relu, Dense(1024), Relu, Dense(1))`` (NTK-parameterized, as
  widenet's ``network``). The initialisations differ, so only the times are compared. nt's
  implementation 3 (structured derivatives) is its fastest; ``--all-implementations`` also times
  1 (Jacobian contraction) and 2 (NTK-vector products) at n = 500 (about 13 s and 27 s per call
  on 2 cores, against 0.15 s for 3). The fastest measured one is the reference.

neural-tangents runs in a subprocess with its own virtual environment (``--nt-python``; by
default ``../shared/tools/neural-tangents-venv.sh`` builds or finds it); widenet never imports
jax. Inputs travel as .npy files. Each side is timed after a warm-up (the JAX compile is
excluded; ``block_until_ready``) as the best of the repeats; one worker runs per workload and
widenet is timed right before and after it, keeping its best time. Without the venv the
comparison is skipped cleanly.

Usage: python benchmarks/nt_compare.py [--quick] [--nt-python PATH]
Writes benchmarks/results/nt_compare.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_empirical_ntk import best_of

import widenet as wn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "nt_compare.json"
WORKER = HERE / "_nt_worker.py"
VENV_SCRIPTS = (
    HERE.parent.parent / "shared" / "tools" / "neural-tangents-venv.sh",
    Path("/work/shared/tools/neural-tangents-venv.sh"),
)
W_STD, B_STD = math.sqrt(2.0), 0.1
GOAL = 2.5


def find_nt_python(nt_python: str | None = None) -> tuple[str | None, str]:
    """The neural-tangents venv's python, or (None, why not)."""
    if nt_python is None:
        script = next((s for s in VENV_SCRIPTS if s.is_file()), None)
        if script is None:
            return None, "no --nt-python given and no shared/tools/neural-tangents-venv.sh found"
        print(f"neural-tangents venv: running {script} (builds it once, ~1.5 min)", flush=True)
        try:
            proc = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired:
            return None, f"{script} timed out"
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            return None, f"{script} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
        nt_python = lines[-1].strip()
    check = subprocess.run(
        [nt_python, "-c", "import neural_tangents, jax"], capture_output=True, check=False
    )
    if check.returncode != 0:
        return None, f"{nt_python} cannot import neural_tangents and jax"
    return nt_python, ""


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_worker(nt_python: str, worker: Path, cfg: dict, tmp: Path) -> dict | str:
    """Run ``worker`` with the neural-tangents python on ``cfg`` (which names ``out``).

    Returns the worker's JSON output, or the reason it failed (also printed).
    """
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [nt_python, str(worker), str(tmp / "cfg.json")], env=env, check=False, text=True
    )
    out = Path(cfg["out"])
    if proc.returncode != 0 or not out.is_file():
        why = f"the neural-tangents worker failed (exit {proc.returncode})"
        print(f"neural-tangents comparison skipped: {why}")
        return why
    return json.loads(out.read_text())


def main(
    quick: bool = False,
    nt_python: str | None = None,
    repeats: int | None = None,
    all_implementations: bool = False,
    only: str | None = None,
) -> dict:
    n_ck, d = (300, 100) if quick else (4000, 100)
    n_a, n_b = (64, 128) if quick else (500, 2000)
    width = 256 if quick else 1024
    repeats = repeats or (2 if quick else 3)
    result = dict(benchmark="nt_compare", date=datetime.date.today().isoformat(), quick=quick)
    nt_python, why = find_nt_python(nt_python)
    if nt_python is None:
        print(f"neural-tangents comparison skipped: {why}")
        result.update(skipped=True, reason=why)
        return result

    rng = np.random.default_rng(0)
    x_ck = rng.standard_normal((n_ck, d)).astype(np.float32)
    x_a = rng.standard_normal((n_a, d)).astype(np.float32)
    x_b = rng.standard_normal((n_b, d)).astype(np.float32)
    arch3 = wn.mlp(3, "relu", W_STD, B_STD)
    model = wn.mlp(2, "relu", W_STD, B_STD).network(d, width, seed=0).eval()
    t_ck, t_a, t_b = torch.from_numpy(x_ck), torch.from_numpy(x_a), torch.from_numpy(x_b)
    wn_fns = {
        ("closed_form", n_ck): lambda: arch3.kernel(t_ck),
        ("empirical", n_a): lambda: wn.empirical_ntk(model, t_a),
        ("empirical", n_b): lambda: wn.empirical_ntk(model, t_b),
    }
    print(
        f"neural-tangents comparison: torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads) vs {nt_python}",
        flush=True,
    )

    def time_widenet(times, key):
        # cheap; more repeats ride out load bursts
        t = best_of(wn_fns[key], max(repeats, 5), torch.device("cpu"))[0]
        times[key] = min(t, times.get(key, math.inf))
        print(f"  widenet {key[0]} n={key[1]}: {t:.4f} s", flush=True)

    wn_times: dict = {}
    nt_rows: list = []
    versions: dict = {}
    agreement: dict = {}
    impls_a = [1, 2, 3] if all_implementations else [3]
    workloads = (
        ("closed_form", n_ck, None),
        ("empirical", n_a, impls_a),
        ("empirical", n_b, [3]),
    )
    if only is not None:
        workloads = tuple(w for w in workloads if w[0] == only)
    with tempfile.TemporaryDirectory(prefix="widenet-nt-") as tmp:
        tmp = Path(tmp)
        for name, arr in (("x_ck", x_ck), ("x_a", x_a), ("x_b", x_b)):
            np.save(tmp / f"{name}.npy", arr)
        paths = {n_ck: str(tmp / "x_ck.npy"), n_a: str(tmp / "x_a.npy"), n_b: str(tmp / "x_b.npy")}
        # One worker per workload, widenet timed right before and after it: the load from other
        # processes drifts, and this keeps the two sides of each ratio close together in time.
        for workload, n, impls in workloads:
            key = (workload, n)
            time_widenet(wn_times, key)
            cfg = dict(repeats=repeats, out=str(tmp / "nt.json"))
            if workload == "closed_form":
                cfg["kernel_out"] = str(tmp / "nt_kernel.npz")
                cfg["closed_form"] = dict(x=paths[n], depth=3, w_std=W_STD, b_std=B_STD)
            else:
                cfg["empirical"] = dict(
                    depth=2,
                    width=width,
                    d=d,
                    w_std=W_STD,
                    b_std=B_STD,
                    inputs=[[n, paths[n], impls]],
                )
            nt_out = run_worker(nt_python, WORKER, cfg, tmp)
            if isinstance(nt_out, str):
                result.update(skipped=True, reason=nt_out)
                return result
            (tmp / "nt.json").unlink()
            nt_rows += nt_out["rows"]
            versions = dict(jax=nt_out["jax"], neural_tangents=nt_out["neural_tangents"])
            time_widenet(wn_times, key)
            if workload == "closed_form":
                nt_k = np.load(tmp / "nt_kernel.npz")
                wk = arch3.kernel(t_ck)
                agreement = dict(nngp=rel(wk.nngp, nt_k["nngp"]), ntk=rel(wk.ntk, nt_k["ntk"]))
                del wk, nt_k

    comparisons = []
    for (workload, n), t_wn in wn_times.items():
        rows = [
            r
            for r in nt_rows
            if r["workload"] == workload and r["n"] == n and r["seconds"] is not None
        ]
        best = min(rows, key=lambda r: r["seconds"])
        speedup = best["seconds"] / t_wn
        comparisons.append(
            dict(
                workload=workload,
                n=n,
                widenet_seconds=t_wn,
                nt_seconds=best["seconds"],
                nt_method=best["method"],
                speedup=speedup,
                goal_met=speedup >= GOAL,
            )
        )
    if "nngp" in agreement:  # the closed-form workload ran (not --only empirical)
        print(
            f"  closed-form kernels, widenet vs neural-tangents (float32): rel. difference "
            f"NNGP {agreement['nngp']:.1e}, NTK {agreement['ntk']:.1e}"
        )
    print(f"  {'workload':<12s} {'n':>5s} {'widenet s':>10s} {'nt s':>10s} {'nt/widenet':>10s}")
    for c in comparisons:
        print(
            f"  {c['workload']:<12s} {c['n']:5d} {c['widenet_seconds']:10.4f} "
            f"{c['nt_seconds']:10.4f} {c['speedup']:9.2f}x  "
            f"(goal >= {GOAL:g}x: {'PASS' if c['goal_met'] else 'FAIL'}; nt: {c['nt_method']})"
        )
    result.update(
        skipped=False,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        **versions,
        load_average_1min=os.getloadavg()[0],
        config=dict(d=d, width=width, repeats=repeats, w_std=W_STD, b_std=B_STD, dtype="float32"),
        closed_form_agreement=agreement,
        nt_rows=nt_rows,
        widenet_seconds={f"{w} n={n}": t for (w, n), t in wn_times.items()},
        comparisons=comparisons,
        goal=GOAL,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    parser.add_argument("--nt-python", default=None, help="python of a neural-tangents venv")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    parser.add_argument(
        "--all-implementations",
        action="store_true",
        help="also time nt implementations 1 and 2 at n=500 (minutes; 3 is the fastest)",
    )
    parser.add_argument(
        "--only",
        choices=("closed_form", "empirical"),
        default=None,
        help="run one workload kind only",
    )
    args = parser.parse_args()
    main(
        only=args.only,
        quick=args.quick,
        nt_python=args.nt_python,
        repeats=args.repeats,
        all_implementations=args.all_implementations,
    )
