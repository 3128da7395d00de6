"""neural-tangents side of ``bench_cnn_kernels.py``: run with the neural-tangents venv's python.

Usage: <nt python> _nt_cnn_worker.py CONFIG.json
CONFIG: {"out": path.json, "workloads": [{"name", "arch", "depth", "x" (.npy, NCHW float32),
"repeats", "kernel_out" (.npz) or null}], "w_std", "b_std"}. The architectures are the
benchmark's, written in ``stax`` (NHWC, so the inputs are transposed here): "cnn-gap" and
"cnn-vec" (depth x [Conv 3x3 SAME, Relu], GlobalAvgPool or Flatten, Dense(1), all with
``w_std``, ``b_std``) and "myrtle5" ([Conv, Relu] x 2, AvgPool 2/2, Conv, Relu, AvgPool 2/2,
Conv, Relu, GlobalAvgPool, Dense(1); w_std sqrt(2), no bias). Each workload: ``jax.jit(kernel_fn,
static_argnames="get")(x, None, get=("nngp", "ntk"))``, one warm-up call (the compile), then the
best of ``repeats`` blocking calls. widenet never imports jax; this file is not part of the
package.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import neural_tangents as nt
import numpy as np
from neural_tangents import stax


def best_of(fn, repeats):
    out = jax.block_until_ready(fn())  # warm-up: the jit compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), out


def architecture(name, depth, w_std, b_std):
    """As widenet's presets: ``cnn(depth, readout, w_std, b_std)`` and ``myrtle(5)`` (w_std
    sqrt(2) and b_std 0 on every layer), readout Dense(1) with the same w_std and b_std."""

    def conv(b):
        return [stax.Conv(1, (3, 3), padding="SAME", W_std=w_std, b_std=b), stax.Relu()]

    if name in ("cnn-gap", "cnn-vec"):
        pool = stax.GlobalAvgPool() if name == "cnn-gap" else stax.Flatten()
        layers = sum((conv(b_std) for _ in range(depth)), [])
        return stax.serial(*layers, pool, stax.Dense(1, W_std=w_std, b_std=b_std))
    if name == "myrtle5":
        pool = stax.AvgPool((2, 2), strides=(2, 2))
        return stax.serial(
            *conv(0.0),
            *conv(0.0),
            pool,
            *conv(0.0),
            pool,
            *conv(0.0),
            stax.GlobalAvgPool(),
            stax.Dense(1, W_std=2**0.5, b_std=0.0),
        )
    raise ValueError(f"unknown architecture {name!r}")


def main(path):
    cfg = json.loads(open(path).read())
    out = dict(jax=jax.__version__, neural_tangents=nt.__version__, rows=[])
    for w in cfg["workloads"]:
        x = np.load(w["x"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
        _, _, kernel_fn = architecture(w["arch"], w["depth"], cfg["w_std"], cfg["b_std"])
        kfn = jax.jit(kernel_fn, static_argnames="get")
        t0 = time.perf_counter()
        sec, k = best_of(lambda kfn=kfn, x=x: kfn(x, None, get=("nngp", "ntk")), w["repeats"])
        total = time.perf_counter() - t0
        out["rows"].append(dict(name=w["name"], n=int(x.shape[0]), seconds=sec, wall=total))
        if w.get("kernel_out"):
            np.savez(w["kernel_out"], nngp=np.asarray(k.nngp), ntk=np.asarray(k.ntk))
        print(
            f"  nt {w['name']} n={x.shape[0]}: {sec:.3f} s (with compile {total:.1f} s)", flush=True
        )
        del k
    with open(cfg["out"], "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
