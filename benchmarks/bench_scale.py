"""Benchmark: a kernel too large for memory, written tile by tile to a Zarr store (widenet.scale).

Workload (issue 9): n = 50 000 Gaussian inputs, d = 64, float32, FC ReLU depth 3 (w_std = √2,
b_std = 0.1, NTK parameterization), NNGP + NTK to one Zarr store with tile 4096: 2 × n² × 4 B
= 20 GB on disk (only the 91 upper tiles are computed; each is written with its mirror).

Each phase runs in its own subprocess, so that its peak RSS (``ru_maxrss``) is its own:

- ``memory``: the in-memory engine as a user calls it, ``arch.kernel(x[:m])`` (its default
  tile, 512) with m = min(n, 4 tiles), best of 2; its time per upper 4096-tile of that matrix
  (10, 4 of them diagonal) is the baseline;
- ``store``: ``wn.scale.kernel_to_zarr(arch, x, out=..., tile=4096)`` (threads scheduler: tile
  k+1 is computed while tile k is written; each tile computed in the engine's 512-blocks, so it
  equals ``arch.kernel(x)`` bit for bit); wall time, peak RSS, bytes on disk, seconds per full
  tile (edge tiles of n = 50 000, 848 wide, counted by their area: 91 tiles = 80.5 full);
- ``store-m``: the same on x[:m], the very tiles of ``memory``, best of 2 like ``memory`` (a
  like-for-like ratio);
- ``dask-1`` / ``dask-2``: the store written on a LocalCluster (127.0.0.1, no dashboard) of 1
  and then 2 worker processes, one thread each, torch_threads=1 (n = ``--dask-n``, default n);
  the speed-up is t(1 worker) / t(2 workers), each the best of 2 runs on its cluster; peak RSS
  of the workers.

Ratios against the goals: memory / store seconds per full tile (≥ 0.8), dask t1 / t2 (≥ 1.7),
peak RSS of the store phase (≤ 2 GiB). Stores are deleted after each phase unless --keep.

Usage: python benchmarks/bench_scale.py [--n 50000] [--dask-n N] [--tile 4096] [--quick]
       [--dir DIR] [--keep] [--no-dask]
Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
DEPTH, W_STD, B_STD, D = 3, math.sqrt(2.0), 0.1, 64
GOALS = dict(tile_throughput=0.8, dask_speedup=1.7, peak_rss_gib=2.0, threads_vs_dask1=1.0)


def _inputs(n: int, d: int):
    import torch

    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _arch():
    import widenet as wn

    return wn.mlp(DEPTH, "relu", W_STD, B_STD)


def _tiles(n: int, tile: int) -> int:
    r = -(-n // tile)
    return r * (r + 1) // 2


def _full_tiles(n: int, tile: int) -> float:
    """The upper tiles' entries in units of a full tile: edge tiles (n not a multiple of the
    tile) count by their area, so that seconds per full tile compare across n."""
    sizes = [min(tile, n - s) for s in range(0, n, tile)]
    return sum(a * b for i, a in enumerate(sizes) for b in sizes[i:]) / tile**2


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _du(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def phase(name: str, n: int, d: int, tile: int, out: str) -> dict:
    """One measurement, in this (fresh) process."""
    from widenet import scale

    arch, x = _arch(), _inputs(n, d)

    def stores(repeats: int, **options) -> list[float]:
        """Seconds of ``repeats`` fresh writes of the store (each from an empty directory)."""
        times = []
        for _ in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            st = scale.kernel_to_zarr(arch, x, out=out, tile=tile, **options)
            times.append(time.perf_counter() - t0)
            assert st.complete
        return times

    if name == "memory":
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            k = arch.kernel(x)
            times.append(time.perf_counter() - t0)
            del k
        return dict(seconds=min(times), tiles=_tiles(n, tile), peak_rss_gib=_rss_gib())
    if name in ("store", "store-best-of-2"):
        times = stores(2 if name == "store-best-of-2" else 1, progress=sys.stderr.isatty())
        return dict(
            seconds=min(times), tiles=_tiles(n, tile), peak_rss_gib=_rss_gib(), bytes=_du(out)
        )
    if name.startswith("dask-"):
        import distributed

        workers = int(name.split("-")[1])
        with (
            scale.local_cluster(workers) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            client.run(lambda: __import__("widenet.scale"))  # imports before the clock
            times = stores(2, scheduler=client, torch_threads=1)  # best of 2, like the others
            rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        return dict(
            seconds=min(times),
            all_seconds=times,
            tiles=_tiles(n, tile),
            workers=workers,
            worker_peak_rss_gib=max(rss.values()),
            client_peak_rss_gib=_rss_gib(),
        )
    raise ValueError(f"unknown phase {name!r}")


def _run_phase(name: str, label: str, n: int, tile: int, directory: str, keep: bool) -> dict:
    out = os.path.join(directory, f"{label}.zarr")
    if os.path.exists(out):  # always a fresh store: a complete one would be a no-op
        shutil.rmtree(out)
    cmd = [sys.executable, __file__, "--phase", name, "--n", str(n), "--d", str(D)]
    cmd += ["--tile", str(tile), "--out", out]
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if not keep and os.path.exists(out):
        shutil.rmtree(out)
    res["full_tiles"] = _full_tiles(n, tile)
    res["seconds_per_tile"] = res["seconds"] / res["full_tiles"]
    print(
        f"  {label:<8s} n={n:>6d}: {res['seconds']:8.2f} s, {res['tiles']:4d} tiles "
        f"({res['full_tiles']:.1f} full), {res['seconds_per_tile']:.3f} s/full tile, "
        + ", ".join(f"{k} {v:.3g}" for k, v in res.items() if "rss" in k or k == "bytes"),
        flush=True,
    )
    return res


def main(
    quick: bool = False,
    n: int | None = None,
    dask_n: int | None = None,
    tile: int | None = None,
    directory: str | None = None,
    keep: bool = False,
    dask: bool = True,
) -> dict:
    import torch

    import widenet

    n = n or (3000 if quick else 50_000)
    tile = tile or (512 if quick else 4096)
    dask_n = dask_n or n
    m = min(n, 4 * tile)
    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="widenet-bench-scale-")
        directory = tmp
    print(
        f"scale benchmark: FC ReLU depth {DEPTH} NNGP+NTK, n={n}, d={D}, float32, tile {tile}; "
        f"store {2 * n * n * 4 / 1e9:.2f} GB in {directory}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        res = {
            "memory": _run_phase("memory", "memory", m, tile, directory, keep),
            "store-m": _run_phase("store-best-of-2", "store-m", m, tile, directory, keep),
            "store": _run_phase("store", "store", n, tile, directory, keep),
        }
        if dask:
            for w in (1, 2):
                res[f"dask-{w}"] = _run_phase(
                    f"dask-{w}", f"dask-{w}", dask_n, tile, directory, keep
                )
    finally:
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    throughput = res["memory"]["seconds_per_tile"] / res["store"]["seconds_per_tile"]
    same_tiles = res["memory"]["seconds_per_tile"] / res["store-m"]["seconds_per_tile"]
    speedup = res["dask-1"]["seconds"] / res["dask-2"]["seconds"] if dask else None
    # The threads scheduler against one single-thread Dask worker on the same tiles (issue 20:
    # no slower); comparable only when both phases ran on the same n.
    threads_vs_dask1 = (
        res["dask-1"]["seconds_per_tile"] / res["store"]["seconds_per_tile"]
        if dask and dask_n == n
        else None
    )
    rss = res["store"]["peak_rss_gib"]
    print(
        f"  tile throughput store / in-memory: {throughput:.2f} (same tiles: {same_tiles:.2f}; "
        f"goal >= {GOALS['tile_throughput']}); peak RSS {rss:.2f} GiB (goal <= "
        f"{GOALS['peak_rss_gib']}) for {res['store']['bytes'] / 1e9:.2f} GB on disk"
        + (
            f"; Dask 1 -> 2 workers: {speedup:.2f}x (goal >= {GOALS['dask_speedup']})"
            if dask
            else ""
        )
        + (
            f"; threads store / Dask 1 worker (1 thread): {threads_vs_dask1:.2f}x faster "
            f"(goal >= {GOALS['threads_vs_dask1']})"
            if threads_vs_dask1 is not None
            else ""
        )
    )
    results = dict(
        benchmark="scale",
        date=datetime.date.today().isoformat(),
        quick=quick,
        widenet=widenet.__version__,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        load_average_1min=os.getloadavg()[0],
        config=dict(n=n, dask_n=dask_n, m=m, d=D, tile=tile, depth=DEPTH, w_std=W_STD, b_std=B_STD),
        phases=res,
        tile_throughput_vs_memory=throughput,
        tile_throughput_same_tiles=same_tiles,
        dask_speedup_1_to_2=speedup,
        threads_vs_dask1=threads_vs_dask1,
        peak_rss_gib=rss,
        goals=GOALS,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=3000, tile 512: seconds")
    parser.add_argument("--n", type=int, default=None, help="points (default 50000)")
    parser.add_argument("--dask-n", type=int, default=None, help="points of the Dask phases")
    parser.add_argument("--tile", type=int, default=None, help="tile (default 4096)")
    parser.add_argument("--d", type=int, default=D, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help="where the stores go (default a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask phases")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.n, args.d, args.tile, args.out)))
    else:
        main(
            quick=args.quick,
            n=args.n,
            dask_n=args.dask_n,
            tile=args.tile,
            directory=args.dir,
            keep=args.keep,
            dask=not args.no_dask,
        )
