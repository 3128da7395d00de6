"""neural-tangents side of ``nt_compare.py``: run with the neural-tangents venv's python only.

Usage: <nt python> _nt_worker.py CONFIG.json
CONFIG holds the .npy input paths, the architecture and the repeats; the timings are written to
``config["out"]`` (JSON) and the closed-form kernels to ``config["kernel_out"]`` (.npz). widenet
itself never imports jax or neural_tangents; this file is not part of the package.
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
    """Warm up (jit compile), then the best wall time of ``repeats`` blocking calls."""
    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), out


def mlp(depth, width, w_std, b_std):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=w_std, b_std=b_std), stax.Relu()]
    layers.append(stax.Dense(1, W_std=w_std, b_std=b_std))
    return stax.serial(*layers)


def main(path):
    cfg = json.loads(open(path).read())
    repeats = cfg["repeats"]
    out = dict(jax=jax.__version__, neural_tangents=nt.__version__, rows=[])
    ck = cfg.get("closed_form")
    if ck is not None:
        closed_form(ck, cfg, repeats, out)
    em = cfg.get("empirical")
    if em is not None:
        empirical(em, repeats, out)
    with open(cfg["out"], "w") as f:
        json.dump(out, f, indent=2)


def closed_form(ck, cfg, repeats, out):
    """Closed form: jit(kernel_fn) with ``get`` static, x2=None."""
    x = np.load(ck["x"])
    _, _, kernel_fn = mlp(ck["depth"], 512, ck["w_std"], ck["b_std"])
    kfn = jax.jit(kernel_fn, static_argnames="get")
    sec, k = best_of(lambda: kfn(x, None, get=("nngp", "ntk")), repeats)
    out["rows"].append(
        dict(workload="closed_form", n=int(x.shape[0]), method="jit(kernel_fn)", seconds=sec)
    )
    np.savez(cfg["kernel_out"], nngp=np.asarray(k.nngp), ntk=np.asarray(k.ntk))
    print(f"  nt closed form n={x.shape[0]}: {sec:.4f} s", flush=True)
    del k


def empirical(em, repeats, out):
    """Empirical NTK, scalar output, trace over the output axis."""
    init_fn, apply_fn, _ = mlp(em["depth"], em["width"], em["w_std"], em["b_std"])
    _, params = init_fn(jax.random.PRNGKey(0), (-1, em["d"]))
    for n, xpath, impls in em["inputs"]:
        xe = np.load(xpath)
        for impl in impls:
            fn = jax.jit(
                nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=impl)
            )
            try:
                sec, _ = best_of(lambda fn=fn, xe=xe: fn(xe, None, params), repeats)
            except Exception as e:  # e.g. out of memory for the Jacobian contraction
                sec = None
                print(f"  nt empirical n={n} implementation={impl}: failed: {e!r}"[:300])
            out["rows"].append(
                dict(
                    workload="empirical",
                    n=n,
                    method=f"empirical_ntk_fn implementation={impl}",
                    implementation=impl,
                    seconds=sec,
                )
            )
            if sec is not None:
                print(f"  nt empirical n={n} implementation={impl}: {sec:.4f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
