"""neural-tangents side of ``bench_dynamics.py``: run with the neural-tangents venv's python only.

Usage: <nt python> _nt_dynamics_worker.py CONFIG.json
CONFIG names the .npy inputs (kernels, targets, initial outputs, times), the learning rate and the
repeats. Times ``nt.predict.gradient_descent_mse(k_train_train, y_train, ...)`` followed by
``predict_fn(t=ts, fx_train_0=..., fx_test_0=..., k_test_train=...)`` in float64 (x64 enabled),
eagerly (as documented) and under ``jax.jit``; a fresh ``predict_fn`` per call, so its cached
eigendecomposition is part of every timing. Writes the timings to ``config["out"]`` (JSON) and
the predictions of the fastest variant to ``config["pred_out"]`` (.npz). widenet itself never
imports jax or neural_tangents; this file is not part of the package.
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from _nt_worker import best_of  # noqa: E402


def main(path):
    cfg = json.loads(open(path).read())
    arrays = {k: jnp.asarray(np.load(p)) for k, p in cfg["inputs"].items()}
    for name, a in arrays.items():
        assert a.dtype == jnp.float64, (name, a.dtype)
    lr, reg = cfg["learning_rate"], cfg["diag_reg"]

    def predict(k_tt, y, ts, f0, f0t, k_xt):
        fn = nt.predict.gradient_descent_mse(
            k_tt, y, learning_rate=lr, diag_reg=reg, diag_reg_absolute_scale=True
        )
        return fn(t=ts, fx_train_0=f0, fx_test_0=f0t, k_test_train=k_xt)

    args = [arrays[k] for k in ("k_train_train", "y_train", "t", "f0_train", "f0_test")]
    args.append(arrays["k_test_train"])
    out = dict(jax=jax.__version__, neural_tangents=nt.__version__, rows=[])
    best = None
    variants = [("eager", lambda: predict(*args))]
    if cfg.get("jit", True):
        jitted = jax.jit(predict)
        variants.append(("jit", lambda: jitted(*args)))
    for name, fn in variants:
        try:
            sec, (train, test) = best_of(fn, cfg["repeats"])
        except Exception as e:  # report and go on with the other variant
            print(f"  nt gradient_descent_mse ({name}): failed: {e!r}"[:300], flush=True)
            out["rows"].append(dict(method=name, seconds=None, error=repr(e)[:300]))
            continue
        print(f"  nt gradient_descent_mse + predict_fn ({name}): {sec:.4f} s", flush=True)
        out["rows"].append(dict(method=name, seconds=sec))
        if best is None or sec < best[0]:
            best = (sec, name)
            np.savez(cfg["pred_out"], train=np.asarray(train), test=np.asarray(test))
        del train, test
    out["best"] = None if best is None else best[1]
    with open(cfg["out"], "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
