"""NTK estimators against scikit-learn's kernel machines: fit and predict on digits.

    python benchmarks/bench_estimators.py [--quick]

Workload: scikit-learn's digits (n = 1797, d = 64, 10 classes; ``--quick``: the first 600),
standardised, split 1347 train / 450 test (seed 0). Timed, best of ``repeats`` after a warm-up:

- ``NTKClassifier().fit`` (depth-3 ReLU NTK, t = ∞: one kernel and one Cholesky solve) against
  ``sklearn.svm.SVC()`` (RBF, C = 1) ``.fit``; ``predict`` of each on the test points;
- ``NTKRegressor().fit`` on the one-hot targets against ``KernelRidge(alpha=1e-6 * mean diag,
  kernel="rbf")`` ``.fit``, the same linear algebra with the RBF kernel;
- ``NTKClassifier(t=100).fit`` (the eigendecomposition path) and ``NTKClassifier(probability=
  True).fit`` as information.

Goals (issue 20 §1): fit within 3x of SVC(rbf) and of KernelRidge, i.e. sklearn / widenet >=
0.33; predict likewise. The accuracies are printed too (a fast wrong estimator is no result).
Part of ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1 / 3


def _best(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(quick: bool = False, repeats: int = 5) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from widenet.estimators import NTKClassifier, NTKRegressor

    x, y = load_digits(return_X_y=True)
    if quick:
        x, y = x[:600], y[:600]
    x = StandardScaler().fit_transform(x)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    onehot = np.eye(10)[ytr]
    NTKClassifier().fit(xtr[:50], ytr[:50])  # warm-up (imports, thread pools)
    t = {}
    t["svc_fit"], svc = _best(lambda: SVC().fit(xtr, ytr), repeats)
    t["ntk_fit"], ntk = _best(lambda: NTKClassifier().fit(xtr, ytr), repeats)
    t["svc_predict"], p_svc = _best(lambda: svc.predict(xte), repeats)
    t["ntk_predict"], p_ntk = _best(lambda: ntk.predict(xte), repeats)
    t["reg_fit"], _ = _best(lambda: NTKRegressor().fit(xtr, onehot), repeats)
    t["kr_fit"], _ = _best(lambda: KernelRidge(alpha=1e-6, kernel="rbf").fit(xtr, onehot), repeats)
    t["ntk_fit_t100"], _ = _best(lambda: NTKClassifier(t=100.0).fit(xtr, ytr), 2)
    t["ntk_fit_proba"], _ = _best(lambda: NTKClassifier(probability=True).fit(xtr, ytr), 2)
    result = {
        "config": {"n_train": len(xtr), "n_test": len(xte), "d": x.shape[1]},
        "times_s": t,
        "accuracy": {"ntk": float(np.mean(p_ntk == yte)), "svc": float(np.mean(p_svc == yte))},
        "ratios": {
            "fit: SVC / NTKClassifier": t["svc_fit"] / t["ntk_fit"],
            "predict: SVC / NTKClassifier": t["svc_predict"] / t["ntk_predict"],
            "fit: KernelRidge / NTKRegressor": t["kr_fit"] / t["reg_fit"],
        },
        "goal": GOAL,
    }
    for what, secs in t.items():
        print(f"  {what:<16s} {secs:8.3f} s")
    print(f"  accuracy: ntk {result['accuracy']['ntk']:.3f}, svc {result['accuracy']['svc']:.3f}")
    for what, r in result["ratios"].items():
        print(f"  {what:<34s} {r:6.2f}x (goal >= {GOAL:.2f})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_estimators.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 points (seconds)")
    main(quick=parser.parse_args().quick)
