"""Closed-form training dynamics: widenet against neural-tangents, given precomputed kernels.

Workload (float64 on both sides): gradient flow on the MSE loss L = 1/(2N) sum (f - y)^2 with
N = y_train.size, for n = 4000 training and m = 1000 test points, k = 10 outputs, at 100 times;
the kernels Theta(X, X) (n x n), Theta(x, X) (m x n), the targets and the initial outputs are
given. Timed: widenet ``wn.dynamics.gradient_flow_mse(ntk_train_train, y_train, t,
ntk_test_train=..., f0_train=..., f0_test=..., loss="mean")`` against neural-tangents'
``nt.predict.gradient_descent_mse(k_train_train, y_train, learning_rate=..., diag_reg=...)`` then
``predict_fn(t=ts, fx_train_0=..., fx_test_0=..., k_test_train=...)`` (its loss divides by
y_train.size too, so the time scales agree), eagerly and under ``jax.jit``, the faster counting.
Both compute train and test predictions, and both include the eigendecomposition of
Theta(X, X) in every call. The NTK is the closed-form one of ``wn.mlp(3, "relu", sqrt(2), 0.1)``
on Gaussian inputs (d = 100); the targets are one-hot labels, the initial outputs small Gaussian
noise. Goal: neural-tangents / widenet >= 1.5 on a quiet machine (>= 1 beside one busy process
per core: ``run.py --contention`` applies that one) and the predictions equal to 1e-6 (relative
Frobenius difference).

neural-tangents runs in a subprocess with its own venv (``_nt_dynamics_worker.py``; see
``nt_compare.py``); inputs travel as .npy files; widenet is timed right before and after the
worker, keeping its best. Without the venv (or with ``--no-nt``) only widenet is timed.

Usage: python benchmarks/bench_dynamics.py [--quick] [--no-nt] [--nt-python PATH]
Writes benchmarks/results/dynamics.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_empirical_ntk import best_of
from nt_compare import find_nt_python, run_worker

import widenet as wn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "dynamics.json"
WORKER = HERE / "_nt_dynamics_worker.py"
W_STD, B_STD = math.sqrt(2.0), 0.1
GOAL_SPEEDUP = 1.5  # quiet; run.py --contention applies its own (1.0)
GOAL_REL = 1e-6
LEARNING_RATE = 1.0


def make_inputs(n: int, m: int, k: int, n_times: int, d: int = 100, seed: int = 0) -> dict:
    """float64 numpy inputs: the NTK blocks, one-hot targets, initial outputs and the times."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n + m, d)))
    arch = wn.mlp(3, "relu", W_STD, B_STD)
    k_tt = arch.kernel(x[:n], get="ntk").ntk.numpy()
    k_xt = arch.kernel(x[n:], x[:n], get="ntk").ntk.numpy()
    labels = rng.integers(0, k, n)
    y = np.zeros((n, k))
    y[np.arange(n), labels] = 1.0
    # from t = 1 to well past the slowest mode's time scale N / (lr * lambda_min)
    t = np.logspace(0, 7, n_times)
    return dict(
        k_train_train=k_tt,
        k_test_train=k_xt,
        y_train=y,
        f0_train=0.1 * rng.standard_normal((n, k)),
        f0_test=0.1 * rng.standard_normal((m, k)),
        t=t,
    )


def widenet_predict(tensors: dict):
    return wn.dynamics.gradient_flow_mse(
        tensors["k_train_train"],
        tensors["y_train"],
        tensors["t"],
        ntk_test_train=tensors["k_test_train"],
        f0_train=tensors["f0_train"],
        f0_test=tensors["f0_test"],
        learning_rate=LEARNING_RATE,
        loss="mean",
        diag_reg=0.0,
    )


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(
    quick: bool = False,
    with_nt: bool = True,
    nt_python: str | None = None,
    repeats: int | None = None,
) -> dict:
    n, m, k, n_times = (300, 100, 10, 20) if quick else (4000, 1000, 10, 100)
    repeats = repeats or (2 if quick else 3)
    result = dict(benchmark="dynamics", date=datetime.date.today().isoformat(), quick=quick)
    config = dict(
        n_train=n,
        n_test=m,
        outputs=k,
        n_times=n_times,
        d=100,
        arch=f"mlp(3, relu, w_std={W_STD:.4f}, b_std={B_STD})",
        learning_rate=LEARNING_RATE,
        diag_reg=0.0,
        loss="mean (1/(2N), N = y_train.size)",
        dtype="float64",
        repeats=repeats,
    )
    print(f"dynamics: n={n} train, m={m} test, k={k} outputs, {n_times} times (float64)")
    inputs = make_inputs(n, m, k, n_times)
    tensors = {name: torch.from_numpy(a) for name, a in inputs.items()}
    fn = lambda: widenet_predict(tensors)  # noqa: E731

    def time_widenet(best: float) -> float:
        t = best_of(fn, repeats, torch.device("cpu"))[0]
        print(f"  widenet gradient_flow_mse: {t:.4f} s", flush=True)
        return min(best, t)

    wn_seconds = time_widenet(math.inf)
    pred = fn()
    wn_train, wn_test = pred.train.numpy(), pred.test.numpy()
    # t -> large: train predictions reach the targets (a check of the time scale)
    result.update(
        config=config,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        train_residual_last_time=rel(wn_train[-1], inputs["y_train"]),
    )

    nt = dict(skipped=True, reason="--no-nt")
    if with_nt:
        nt_py, why = find_nt_python(nt_python)
        if nt_py is None:
            print(f"neural-tangents comparison skipped: {why}")
            nt = dict(skipped=True, reason=why)
        else:
            nt = run_nt(nt_py, inputs, repeats)
            if not nt["skipped"]:
                wn_seconds = time_widenet(wn_seconds)
    result["widenet_seconds"] = wn_seconds
    if not nt["skipped"]:
        nt_out = nt.pop("predictions")
        agreement = dict(
            test=rel(wn_test, nt_out["test"]),
            train=rel(wn_train, nt_out["train"]),
            test_max_per_time=max(rel(a, b) for a, b in zip(wn_test, nt_out["test"], strict=True)),
        )
        speedup = nt["seconds"] / wn_seconds
        nt.update(
            agreement=agreement,
            speedup=speedup,
            goal_met=bool(speedup >= GOAL_SPEEDUP and max(agreement.values()) <= GOAL_REL),
        )
        print(
            f"  neural-tangents / widenet: {speedup:.2f}x (goal >= {GOAL_SPEEDUP:g}x); rel. "
            f"difference test {agreement['test']:.1e}, train {agreement['train']:.1e}, worst "
            f"time {agreement['test_max_per_time']:.1e} (goal <= {GOAL_REL:g}): "
            f"{'PASS' if nt['goal_met'] else 'FAIL'}"
        )
    result.update(nt=nt, load_average_1min=os.getloadavg()[0])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return result


def run_nt(nt_python: str, inputs: dict, repeats: int) -> dict:
    """Run the neural-tangents worker on the same inputs; its timings and predictions."""
    with tempfile.TemporaryDirectory(prefix="widenet-nt-dyn-") as tmp:
        tmp = Path(tmp)
        paths = {}
        for name, arr in inputs.items():
            paths[name] = str(tmp / f"{name}.npy")
            np.save(paths[name], arr)
        cfg = dict(
            inputs=paths,
            learning_rate=LEARNING_RATE,
            diag_reg=0.0,
            repeats=repeats,
            out=str(tmp / "nt.json"),
            pred_out=str(tmp / "nt_pred.npz"),
        )
        out = run_worker(nt_python, WORKER, cfg, tmp)
        if isinstance(out, str):
            return dict(skipped=True, reason=out)
        if out["best"] is None:
            return dict(skipped=True, reason="every neural-tangents variant failed", **out)
        with np.load(tmp / "nt_pred.npz") as f:
            predictions = dict(train=f["train"], test=f["test"])
    seconds = min(r["seconds"] for r in out["rows"] if r["seconds"] is not None)
    return dict(
        skipped=False,
        jax=out["jax"],
        neural_tangents=out["neural_tangents"],
        rows=out["rows"],
        method=out["best"],
        seconds=seconds,
        predictions=predictions,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds")
    parser.add_argument("--no-nt", action="store_true", help="time widenet only")
    parser.add_argument("--nt-python", default=None, help="python of a neural-tangents venv")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    args = parser.parse_args()
    main(quick=args.quick, with_nt=not args.no_nt, nt_python=args.nt_python, repeats=args.repeats)
