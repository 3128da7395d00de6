"""Infinite-width CNN kernels: widenet against neural-tangents, cost exponents, peak memory.

Workloads (NNGP + NTK together, float32 on both sides, x2=None; inputs are the standardised
digits as 1x8x8 images, ``wn.load_dataset("digits-images")``, a seeded subset):

- ``cnn-gap``: ``wn.presets.cnn(3, readout="gap", w_std=sqrt(2), b_std=0.1)`` = 3 x [Conv 3x3
  "same", ReLU], GlobalAvgPool, Dense; n = 100 (goal nt / widenet >= 10x);
- ``cnn-vec``: the same with a Flatten readout, n = 1000 (goal >= 3x);
- ``myrtle5``: ``wn.presets.myrtle(5)`` (b_std = 0) on 8x8 inputs, n = 100 (goal >= 5x);

against neural-tangents 0.6.5 ``jax.jit(kernel_fn, static_argnames="get")(x, None,
get=("nngp", "ntk"))`` on the same inputs (NHWC there) and the same ``stax`` layers
(``_nt_cnn_worker.py``, run with the neural-tangents venv's python in a subprocess; widenet
never imports jax). widenet is timed right before and right after the neural-tangents worker
of each workload (best of the repeats after a warm-up; neural-tangents: best of its repeats
after the jit compile), and the kernels are compared (Frobenius-relative difference).

Also, widenet alone:

- the Myrtle-5 kernel of all 1797 digits (one call; seconds);
- cost exponents: the fitted slope of log(time) against log(n) (8x8 inputs) and against
  log(H*W) (square random images at fixed n) for CNN-GAP (expected 2 in n and 2 in H*W: it needs
  the full position-pair covariance) and CNN-Vec (2 in n, 1 in H*W);
- peak memory of the CNN-GAP kernel at n = 2000 (8x8 inputs), in a fresh subprocess: the rise
  of the peak resident set size over the call (the peak mark VmHWM reset through
  /proc/self/clear_refs right before it, minus VmRSS then),
  against 2 x the output's bytes (NNGP + NTK, n x n each) plus one tile's workspace
  (``widenet.stax.workspace_bytes``).

The machine is shared: every figure is stored with the load average (``uptime``) around it.
Rerun everything with one command, preferably on a quiet machine:

    nice -n 10 .venv/bin/python benchmarks/bench_cnn_kernels.py [--quick] [--no-nt]
        [--nt-python PATH] [--no-memory] [--memory-n N] [--no-myrtle-all] [--threads K]

The neural-tangents comparisons time widenet at torch's default thread count (the headline
ratio) and at 1 thread; ``--threads`` sets the threads of the widenet-only parts.

Writes benchmarks/results/bench_cnn_kernels.json.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import widenet as wn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_cnn_kernels.json"
WORKER = HERE / "_nt_cnn_worker.py"
W_STD, B_STD = math.sqrt(2.0), 0.1
GOALS = {"cnn-gap": 10.0, "cnn-vec": 3.0, "myrtle5": 5.0}


def uptime() -> str:
    """The ``uptime`` line (load averages over 1, 5, 15 minutes), or the load averages."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def architecture(name: str, depth: int = 3):
    """The benchmark's architectures (the neural-tangents worker builds the same in stax)."""
    if name == "cnn-gap":
        return wn.presets.cnn(depth, readout="gap", w_std=W_STD, b_std=B_STD)
    if name == "cnn-vec":
        return wn.presets.cnn(depth, readout="flatten", w_std=W_STD, b_std=B_STD)
    if name == "myrtle5":
        return wn.presets.myrtle(5)
    raise ValueError(f"unknown architecture {name!r}")


def digits(n: int | None, seed: int = 0) -> torch.Tensor:
    return wn.load_dataset("digits-images", n=n, seed=seed, dtype=torch.float32)[0]


def best_of(fn, repeats: int, warmup: bool = True):
    """(best wall time of ``repeats`` calls after an optional warm-up call, last result)."""
    out = fn() if warmup else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def slope(xs, ts) -> float:
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


# --------------------------------------------------------------------------------------------
# widenet against neural-tangents


class threads:
    """``with threads(k):`` torch's intra-op threads set to k (None: unchanged), then restored."""

    def __init__(self, k: int | None):
        self.k, self.saved = k, torch.get_num_threads()

    def __enter__(self):
        if self.k is not None:
            torch.set_num_threads(self.k)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def time_widenet(arch, x, repeats, warmup=True) -> tuple[dict, object]:
    """Best times at torch's default thread count and at 1 thread (the two can differ by 20x on
    an oversubscribed machine, where every parallel region waits for descheduled threads)."""
    t_default, k = best_of(lambda: arch.kernel(x), repeats, warmup)
    with threads(1):
        t_one, _ = best_of(lambda: arch.kernel(x), repeats, warmup)
    return {"default": t_default, "1": t_one}, k


def compare_with_nt(workloads, repeats, nt_python) -> dict:
    """One neural-tangents worker per workload, widenet timed right before and after it."""
    from nt_compare import run_worker

    rows = []
    with tempfile.TemporaryDirectory(prefix="widenet-nt-cnn-") as tmp:
        tmp = Path(tmp)
        for name, n, nt_repeats in workloads:
            x = digits(n)
            np.save(tmp / "x.npy", x.numpy())
            arch = architecture(name)
            load_before = uptime()
            t_wn, k = time_widenet(arch, x, repeats)
            print(f"  widenet {name} n={n}: {t_wn} s (default threads, 1 thread)", flush=True)
            cfg = dict(
                out=str(tmp / "nt.json"),
                w_std=W_STD,
                b_std=B_STD,
                workloads=[
                    dict(
                        name=name,
                        arch=name,
                        depth=3,
                        x=str(tmp / "x.npy"),
                        repeats=nt_repeats,
                        kernel_out=str(tmp / "k.npz"),
                    )
                ],
            )
            nt_out = run_worker(nt_python, WORKER, cfg, tmp)
            if isinstance(nt_out, str):
                return dict(skipped=True, reason=nt_out, rows=rows)
            t_wn2, _ = time_widenet(arch, x, repeats, warmup=False)
            print(f"  widenet {name} n={n} (after): {t_wn2} s", flush=True)
            t_wn = {key: min(t_wn[key], t_wn2[key]) for key in t_wn}
            nt_k = np.load(tmp / "k.npz")
            t_nt = nt_out["rows"][0]["seconds"]
            rows.append(
                dict(
                    workload=name,
                    n=n,
                    widenet_seconds=t_wn["default"],
                    widenet_seconds_1_thread=t_wn["1"],
                    nt_seconds=t_nt,
                    nt_wall_with_compile=nt_out["rows"][0]["wall"],
                    speedup=t_nt / t_wn["default"],
                    speedup_1_thread=t_nt / t_wn["1"],
                    goal=GOALS[name],
                    goal_met=t_nt / t_wn["default"] >= GOALS[name],
                    rel_diff_nngp=rel(k.nngp, nt_k["nngp"]),
                    rel_diff_ntk=rel(k.ntk, nt_k["ntk"]),
                    load_before=load_before,
                    load_after=uptime(),
                    jax=nt_out["jax"],
                    neural_tangents=nt_out["neural_tangents"],
                )
            )
            (tmp / "nt.json").unlink()
    return dict(skipped=False, rows=rows)


# --------------------------------------------------------------------------------------------
# Cost exponents


def exponents(quick: bool, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    plan = {
        "cnn-gap": dict(ns=[4, 8] if quick else [32, 64, 128], n_hw=4 if quick else 32),
        "cnn-vec": dict(ns=[8, 16] if quick else [250, 500, 1000], n_hw=8 if quick else 100),
    }
    sides = {
        "cnn-gap": [3, 4] if quick else [4, 6, 8, 12],
        "cnn-vec": [4, 8] if quick else [8, 16, 32],
    }
    out = {}
    for name, p in plan.items():
        arch = architecture(name)
        t_n = []
        for n in p["ns"]:
            x = digits(n)
            t_n.append(best_of(lambda arch=arch, x=x: arch.kernel(x), repeats)[0])
        t_hw = []
        for s in sides[name]:
            x = torch.randn(p["n_hw"], 1, s, s, generator=gen)
            t_hw.append(best_of(lambda arch=arch, x=x: arch.kernel(x), repeats)[0])
        hw = [s * s for s in sides[name]]
        out[name] = dict(
            n=p["ns"],
            seconds_vs_n=t_n,
            exponent_n=slope(p["ns"], t_n),
            hw=hw,
            n_for_hw=p["n_hw"],
            seconds_vs_hw=t_hw,
            exponent_hw=slope(hw, t_hw),
            load=uptime(),
        )
        print(
            f"  {name}: time ~ n^{out[name]['exponent_n']:.2f} (n = {p['ns']}), "
            f"~ (HW)^{out[name]['exponent_hw']:.2f} (HW = {hw}, n = {p['n_hw']})",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# Peak memory (in a fresh process, so that the peak RSS belongs to this kernel alone)


def status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in KiB (None where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``), so that the
    resident size, and a peak mark reset after it, count live data only, not what an earlier
    call freed but the allocator kept. False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process: ``5`` to /proc/self/clear_refs
    (Linux >= 4.0). False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_probe(n: int) -> dict:
    """Run inside the subprocess: CNN-GAP NNGP + NTK at n, float32; peak RSS rise in bytes.

    The peak mark is reset right before the call, so the rise is VmHWM after minus VmRSS
    before: what the kernel call itself added at its peak (imports and the data loading before
    it, whose own peak may be higher, do not mask it). Without /proc/self/clear_refs it falls
    back to ``ru_maxrss`` (a lower bound then)."""
    from widenet import stax

    arch = architecture("cnn-gap")
    arch.kernel(digits(4))  # load every code path before the baseline
    x = digits(n) if n <= 1797 else torch.randn(n, 1, 8, 8, generator=torch.Generator())
    exact = reset_peak_rss() and status_kib("VmHWM") is not None
    if exact:
        before = status_kib("VmRSS") * 1024
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    t0 = time.perf_counter()
    k = arch.kernel(x)
    seconds = time.perf_counter() - t0
    if exact:
        peak = status_kib("VmHWM") * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    output = k.nngp.numel() * k.nngp.element_size() + k.ntk.numel() * k.ntk.element_size()
    return dict(
        n=n,
        seconds=seconds,
        method="VmHWM after reset - VmRSS before" if exact else "ru_maxrss rise (lower bound)",
        rss_before=before,
        peak_rss=peak,
        rise=peak - before,
        output_bytes=output,
        workspace_bytes=stax.workspace_bytes(x.device),
        bound=2 * output + stax.workspace_bytes(x.device),
    )


def peak_memory(n: int, n_threads: int | None = None) -> dict:
    load_before = uptime()
    extra = [] if n_threads is None else ["--threads", str(n_threads)]
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-probe", str(n), *extra],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return dict(n=n, error=f"probe failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(goal_met=res["rise"] <= res["bound"], load_before=load_before, load_after=uptime())
    mib = 2**20
    print(
        f"  CNN-GAP n={n}: peak RSS rise {res['rise'] / mib:.0f} MiB, bound 2 x output "
        f"({res['output_bytes'] / mib:.0f} MiB) + workspace ({res['workspace_bytes'] / mib:.0f} "
        f"MiB) = {res['bound'] / mib:.0f} MiB: {'PASS' if res['goal_met'] else 'FAIL'} "
        f"({res['seconds']:.1f} s)",
        flush=True,
    )
    return res


# --------------------------------------------------------------------------------------------


def main(
    quick: bool = False,
    nt_python: str | None = None,
    with_nt: bool = True,
    memory: bool = True,
    repeats: int | None = None,
    solo_threads: int | None = None,
    myrtle_all: bool = True,
    memory_n: int | None = None,
) -> dict:
    repeats = repeats or (1 if quick else 2)
    result = dict(
        benchmark="bench_cnn_kernels",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        quick=quick,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        niceness=os.nice(0),
        cpus=os.cpu_count(),
        load_start=uptime(),
        config=dict(
            w_std=W_STD,
            b_std=B_STD,
            dtype="float32",
            repeats=repeats,
            solo_threads=solo_threads or torch.get_num_threads(),
        ),
    )
    print(f"bench_cnn_kernels: {result['load_start']}", flush=True)
    workloads = (
        [("cnn-gap", 20, 1), ("cnn-vec", 100, 1), ("myrtle5", 20, 1)]
        if quick
        else [("cnn-gap", 100, 1), ("cnn-vec", 1000, 2), ("myrtle5", 100, 1)]
    )
    if with_nt:
        from nt_compare import find_nt_python

        nt_python, why = find_nt_python(nt_python)
        if nt_python is None:
            print(f"neural-tangents comparison skipped: {why}")
            result["nt"] = dict(skipped=True, reason=why)
        else:
            result["nt"] = compare_with_nt(workloads, repeats, nt_python)
    else:
        result["nt"] = dict(skipped=True, reason="--no-nt")

    # widenet alone, at solo_threads (default: torch's)
    with threads(solo_threads):
        if myrtle_all:
            x = digits(10 if quick else None)
            arch = architecture("myrtle5")
            load_before = uptime()
            t0 = time.perf_counter()
            arch.kernel(x)
            result["myrtle5_all_digits"] = dict(
                n=len(x),
                seconds=time.perf_counter() - t0,
                threads=torch.get_num_threads(),
                load_before=load_before,
                load_after=uptime(),
            )
            secs = result["myrtle5_all_digits"]["seconds"]
            print(f"  Myrtle-5 kernel of {len(x)} digits: {secs:.1f} s", flush=True)
        result["exponents"] = exponents(quick, repeats)
    if memory:
        n_mem = memory_n or (20 if quick else 2000)
        result["peak_memory"] = peak_memory(n_mem, solo_threads)
    result["load_end"] = uptime()

    print("\n  workload            n   widenet s     nt s   nt/widenet  goal")
    for r in result["nt"].get("rows", []):
        print(
            f"  {r['workload']:<12s} {r['n']:6d} {r['widenet_seconds']:10.4f} "
            f"{r['nt_seconds']:9.3f} {r['speedup']:9.1f}x  >= {r['goal']:g}x "
            f"(1 thread: {r['speedup_1_thread']:.1f}x) "
            f"{'PASS' if r['goal_met'] else 'FAIL'}  (rel. diff NNGP {r['rel_diff_nngp']:.1e}, "
            f"NTK {r['rel_diff_ntk']:.1e})"
        )
    print(f"  load at the end: {result['load_end']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    parser.add_argument("--nt-python", default=None, help="python of a neural-tangents venv")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the widenet-only parts (default: torch's)",
    )
    parser.add_argument(
        "--no-myrtle-all", action="store_true", help="skip the Myrtle-5 kernel of all digits"
    )
    parser.add_argument("--memory-n", type=int, default=None, help="n of the memory probe")
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe is not None:
        with threads(args.threads):
            print(json.dumps(memory_probe(args.memory_probe)))
    else:
        main(
            quick=args.quick,
            nt_python=args.nt_python,
            with_nt=not args.no_nt,
            memory=not args.no_memory,
            repeats=args.repeats,
            solo_threads=args.threads,
            myrtle_all=not args.no_myrtle_all,
            memory_n=args.memory_n,
        )
