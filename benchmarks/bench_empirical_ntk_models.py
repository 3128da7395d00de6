"""Benchmark: the empirical NTK of real networks (issue 19) against the torch.func recipe.

Models (float32, eval mode, 10 outputs):
- ``resnet18``: a CIFAR-style ResNet-18 (3x3 stem, 4 stages of 2 BasicBlocks with BatchNorm in
  eval mode, channel widths w-2w-4w-8w, global average pooling, Linear(8w, 10)) on n random
  3x32x32 inputs; w = 16 (700k parameters) or 64 (11.2M parameters);
- ``transformer``: ``nn.TransformerEncoder`` (4 layers, d_model 128, 4 heads, feed-forward 256,
  LayerNorm, softmax attention, dropout off) on float inputs (n, 32, 128), mean over the sequence,
  Linear(128, 10);
- ``mlp``: the MLP of ``bench_empirical_ntk.py`` (d = 100, width 1024, depth 2, 1 output).

For each model and mode: ``wn.empirical_ntk`` (``implementation="auto"`` and each single
implementation), the plain torch.func recipe (``vmap(jacrev(f))`` per-sample Jacobians in blocks
of samples, concatenated, contracted with einsum; the block is the largest that fits the memory
limit) and the floor: the flops of the per-sample, per-output backward passes plus the Jacobian
contraction (counted by ``torch.utils.flop_counter``) at this machine's GEMM rate measured in
the same run. ``uptime``'s load average is recorded with every figure: the machine is shared.

Usage:
    python benchmarks/bench_empirical_ntk_models.py                 # the issue's sizes (long)
    python benchmarks/bench_empirical_ntk_models.py --quick    # ResNet w16 n32, transformer n64
    python benchmarks/bench_empirical_ntk_models.py --model resnet18 --width 16 --n 32
Writes benchmarks/results/empirical_ntk_models.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_cnn_kernels import release_free_heap, reset_peak_rss, status_kib
from torch import nn
from torch.func import functional_call, jacrev, vmap

from widenet import empirical_ntk

RESULTS = Path(__file__).resolve().parent / "results" / "empirical_ntk_models.json"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """He et al. 2016's BasicBlock: conv-BN-ReLU-conv-BN plus the (projected) input."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: widths w, 2w, 4w, 8w; two BasicBlocks per stage."""

    def __init__(self, width: int = 64, classes: int = 10, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c = [], width
        for i, nb in enumerate(blocks):
            c_out = width * 2**i
            for j in range(nb):
                layers.append(BasicBlock(c, c_out, 2 if (i > 0 and j == 0) else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(c, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, as after training."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.weight.data.copy_(1 + 0.1 * torch.randn(c, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))


def make_resnet18(width: int, seed: int = 0, blocks=(2, 2, 2, 2)) -> nn.Module:
    torch.manual_seed(seed)
    model = ResNet18(width, blocks=blocks)
    randomize_batchnorm(model, seed)
    return model.eval()


class TransformerClassifier(nn.Module):
    """nn.TransformerEncoder on (n, L, d_model) float inputs, mean over L, Linear readout."""

    def __init__(self, d_model=128, heads=4, layers=4, ff=256, classes=10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout=0.0, batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.readout = nn.Linear(d_model, classes)

    def forward(self, x):
        return self.readout(self.encoder(x).mean(1))


def make_transformer(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return TransformerClassifier(**kw).eval()


def make_mlp(d: int = 100, width: int = 1024, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    ).eval()


# --------------------------------------------------------------------------------------------
# The recipe and the floor
# --------------------------------------------------------------------------------------------


def recipe_jacobian(model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    """The recipe's per-sample Jacobians (b, k, P): vmap(jacrev(f)), concatenated."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    js = vmap(jacrev(f), (None, 0))(params, xb)
    return torch.cat([j.flatten(2) for j in js.values()], dim=2)


def recipe_contract(ja: torch.Tensor, jb: torch.Tensor, mode: str) -> torch.Tensor:
    """One einsum per pair of blocks; trace mode divides by k like widenet."""
    if mode == "trace":
        return torch.einsum("ikp,jkp->ij", ja, jb) / ja.shape[1]
    if mode == "diagonal":
        return torch.einsum("ikp,jkp->ijk", ja, jb)
    return torch.einsum("icp,jdp->ijcd", ja, jb)


def recipe_calls(n: int, block: int) -> tuple[int, int]:
    """(Jacobian calls, contractions) of recipe_ntk: each row block once, then every block
    right of the diagonal again for each row block."""
    m = -(-n // block)
    return m + m * (m - 1) // 2, m * (m + 1) // 2


def recipe_ntk(model: nn.Module, x: torch.Tensor, mode: str, block: int) -> torch.Tensor:
    """The plain torch.func recipe in blocks of ``block`` samples, symmetric blocks once.

    Per block: vmap(jacrev(f)) per-sample Jacobians (b, k, P) concatenated over parameters;
    per pair of blocks one einsum. Trace mode divides by k like widenet.
    """
    n = x.shape[0]
    out = None
    starts = list(range(0, n, block))
    for a, i0 in enumerate(starts):
        ja = recipe_jacobian(model, x[i0 : i0 + block])
        for j0 in starts[a:]:
            jb = ja if j0 == i0 else recipe_jacobian(model, x[j0 : j0 + block])
            t = recipe_contract(ja, jb, mode)
            if out is None:
                out = t.new_empty((n, n, *t.shape[2:]))
            out[i0 : i0 + block, j0 : j0 + block] = t
            if j0 != i0:
                tt = t.transpose(0, 1)
                out[j0 : j0 + block, i0 : i0 + block] = tt.transpose(2, 3) if mode == "full" else tt
            del jb
        del ja
    return out


def recipe_block(model: nn.Module, k: int, limit_bytes: int, n: int) -> int:
    """The largest sample block whose two Jacobians (2 b k P floats) fit the memory limit."""
    p = sum(q.numel() for q in model.parameters())
    return max(1, min(n, int(limit_bytes // (2 * k * p * 4))))


def gemm_rate(seconds: float = 1.0) -> float:
    """Measured float32 GEMM rate (flop/s): best of repeated 1024^3 products."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, t_end = math.inf, time.perf_counter() + seconds
    a @ b
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best


def floor_flops(model: nn.Module, x: torch.Tensor, k: int, mode: str) -> float:
    """Per-sample per-output backward passes (2x the forward, weight and input gradients)
    plus the forward, plus the contraction of the (n, k, P) Jacobian: 2 n² k P (trace,
    diagonal) or 2 n² k² P (full), halved for the symmetric kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    # nn.TransformerEncoderLayer's fused inference path (taken under no_grad) is invisible to
    # the counter: 2.6 kFLOP counted of the benchmark transformer's 33.6 MFLOP per sample.
    # The backward passes the floor stands for run the unfused layers, so count those.
    mha = getattr(torch.backends, "mha", None)
    fast = mha is not None and mha.get_fastpath_enabled()
    try:
        if fast:
            mha.set_fastpath_enabled(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x[:1])
    finally:
        if fast:
            mha.set_fastpath_enabled(True)
    fp = float(counter.get_total_flops())
    n = x.shape[0]
    p = sum(q.numel() for q in model.parameters())
    kk = k * k if mode == "full" else k
    return n * fp + n * k * 2 * fp + n * n * kk * p  # 2 n² kk P / 2 by symmetry


def model_rate_floor(model: nn.Module, x: torch.Tensor, k: int, mode: str, rate: float) -> float:
    """The floor at the model's own measured speed: (1 + 2k) times the timed forward of all
    n samples (best of 3; a backward is ~2 forwards) plus the contraction at the GEMM rate.
    Small convolutions run far below the GEMM rate, so this is what the flop floor cannot
    reach on such models."""
    with torch.no_grad():
        model(x[:2])
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    n = x.shape[0]
    p = sum(q.numel() for q in model.parameters())
    kk = k * k if mode == "full" else k
    return (1 + 2 * k) * best + n * n * kk * p / rate


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def peak_rss_gib() -> float:
    """This process's peak resident set size since the last reset_peak_rss (GiB)."""
    hwm = status_kib("VmHWM")
    if hwm is None:  # no /proc: the lifetime peak, an upper bound
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return hwm / 2**20


def estimate_recipe(model, x, mode, block) -> float:
    """Seconds recipe_ntk would take, from one timed Jacobian block and one contraction
    (when running it would exceed the time budget)."""
    xb = x[:block]
    recipe_jacobian(model, xb[:1])
    t0 = time.perf_counter()
    ja = recipe_jacobian(model, xb)
    t_jac = time.perf_counter() - t0
    t0 = time.perf_counter()
    recipe_contract(ja, ja, mode)
    t_con = time.perf_counter() - t0
    calls, pairs = recipe_calls(x.shape[0], block)
    return calls * t_jac + pairs * t_con


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def build(model_name: str, width: int, n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    if model_name == "resnet18":
        return make_resnet18(width), torch.randn(n, 3, 32, 32, generator=gen), 10
    if model_name == "transformer":
        return make_transformer(), torch.randn(n, 32, 128, generator=gen), 10
    if model_name == "mlp":
        return make_mlp(), torch.randn(n, 100, generator=gen), 1
    raise ValueError(f"unknown model {model_name!r}")


def bench_one(
    model_name,
    width,
    n,
    mode,
    *,
    repeats,
    impls,
    recipe=True,
    limit_bytes,
    rate,
    progress=False,
    recipe_budget_s=600.0,
):
    model, x, k = build(model_name, width, n)
    n_params = sum(p.numel() for p in model.parameters())
    row = dict(model=model_name, width=width, n=n, mode=mode, parameters=n_params, times={})
    print(
        f"{model_name} width={width} n={n} mode={mode} ({n_params:,} parameters), "
        f"load {load_average():.2f}",
        flush=True,
    )
    # Warm-up on two samples: torch's first-call costs (decompositions, kernels) are not timed.
    for impl in impls:
        empirical_ntk(model, x[:2], mode=mode, implementation=impl)
    if recipe:
        recipe_ntk(model, x[:2], mode, 2)
    # Round-robin: every method once per round, best of the rounds, so that a change of the
    # machine's load during the run hits all methods alike.
    methods = {
        f"widenet {impl}": (
            lambda impl=impl: empirical_ntk(
                model, x, mode=mode, implementation=impl, memory_limit_bytes=limit_bytes
            )
        )
        for impl in impls
    }
    estimated = None
    if recipe:
        block = recipe_block(model, k, limit_bytes, n)
        estimated = estimate_recipe(model, x, mode, block)
        if estimated <= recipe_budget_s:
            methods["recipe"] = lambda: recipe_ntk(model, x, mode, block)
            estimated = None
    best = {name: math.inf for name in methods}
    loads = {name: [] for name in methods}
    peaks = {name: 0.0 for name in methods}
    starts = {name: 0.0 for name in methods}
    ref, diffs = None, {}
    for _ in range(repeats):
        for name, fn in methods.items():
            gc.collect()
            # The peak mark starts from live data: the heap an earlier method freed (the
            # recipe's Jacobians: hundreds of MB glibc may keep) is handed back first.
            release_free_heap()
            loads[name].append(round(load_average(), 2))
            reset_peak_rss()
            starts[name] = max(starts[name], (status_kib("VmRSS") or 0) / 2**20)
            t0 = time.perf_counter()
            out = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            peaks[name] = max(peaks[name], peak_rss_gib())
            ref = out if ref is None else ref
            diffs[name] = rel(out, ref)
            del out
    for name in methods:
        row["times"][name] = dict(
            seconds=best[name],
            load=loads[name],
            rel_diff=diffs[name],
            peak_rss_gib=peaks[name],
            start_rss_gib=starts[name],
        )
        if name == "recipe":
            row["times"][name]["block"] = block
        print(
            f"  {name:<20s} {best[name]:9.3f} s  load {loads[name]}  rel.diff {diffs[name]:.1e}"
            f"  peak RSS {peaks[name]:.2f} GiB (from {starts[name]:.2f})",
            flush=True,
        )
    if estimated is not None:
        calls, pairs = recipe_calls(n, block)
        row["times"]["recipe"] = dict(
            seconds=estimated, estimated=True, block=block, load=[round(load_average(), 2)]
        )
        print(
            f"  {'recipe':<20s} {estimated:9.1f} s  ESTIMATED from one block of {block} "
            f"({calls} Jacobian blocks, {pairs} contractions; over the {recipe_budget_s:.0f} s "
            "budget, not run)",
            flush=True,
        )
    flops = floor_flops(model, x, k, mode)
    row["floor_flops"] = flops
    row["floor_seconds"] = flops / rate
    row["model_rate_floor_seconds"] = model_rate_floor(model, x, k, mode, rate)
    t_auto = row["times"].get("widenet auto", {}).get("seconds")
    if t_auto is not None:
        singles = [
            v["seconds"]
            for kk, v in row["times"].items()
            if kk.startswith("widenet ") and kk != "widenet auto"
        ]
        if singles:
            row["auto_over_best_single"] = t_auto / min(singles)
        if "recipe" in row["times"]:
            row["recipe_over_widenet"] = row["times"]["recipe"]["seconds"] / t_auto
            row["recipe_estimated"] = bool(row["times"]["recipe"].get("estimated", False))
        row["auto_peak_rss_gib"] = row["times"]["widenet auto"]["peak_rss_gib"]
        row["widenet_over_floor"] = t_auto / row["floor_seconds"]
        row["widenet_over_model_rate_floor"] = t_auto / row["model_rate_floor_seconds"]
        print(
            f"  floor {row['floor_seconds']:.3f} s ({flops / 1e9:.1f} GFLOP); "
            + ", ".join(
                f"{key} {row[key]:.2f}"
                for key in (
                    "recipe_over_widenet",
                    "widenet_over_floor",
                    "widenet_over_model_rate_floor",
                    "auto_over_best_single",
                )
                if key in row
            ),
            flush=True,
        )
    return row


def main(
    quick: bool = False,
    models=None,
    width: int | None = None,
    n: int | None = None,
    modes=("trace",),
    impls=("auto", "jacobian"),
    repeats: int = 2,
    recipe: bool = True,
    limit_gib: float = 4.0,
    recipe_budget_s: float = 600.0,
) -> dict:
    torch.manual_seed(0)
    limit_bytes = int(limit_gib * 2**30)
    rate = gemm_rate()
    print(f"GEMM rate {rate / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads", flush=True)
    if models is None:
        models = ["resnet18", "transformer", "mlp"]
    configs = []
    for m in models:
        if m == "resnet18":
            if width is not None or n is not None:
                configs.append((m, width or 16, n or 32))
            elif quick:
                configs.append((m, 16, 32))
            else:
                configs += [(m, 16, 32), (m, 16, 128), (m, 64, 32), (m, 64, 128)]
        elif m == "transformer":
            configs.append((m, 0, n or 64))
        else:
            configs.append((m, 1024, n or (256 if quick else 500)))
    rows = []
    for m, w, nn_ in configs:
        for mode in modes:
            rows.append(
                bench_one(
                    m,
                    w,
                    nn_,
                    mode,
                    repeats=repeats,
                    impls=impls,
                    recipe=recipe,
                    limit_bytes=limit_bytes,
                    rate=rate,
                    recipe_budget_s=recipe_budget_s,
                )
            )
            gc.collect()
    results = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        platform=platform.platform(),
        gemm_gflops=rate / 1e9,
        memory_limit_gib=limit_gib,
        rows=rows,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", action="append", choices=("resnet18", "transformer", "mlp"))
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--mode", action="append", choices=("trace", "full", "diagonal"))
    parser.add_argument(
        "--impl", action="append", choices=("auto", "structured", "jacobian", "ntvp")
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-recipe", action="store_true")
    parser.add_argument("--limit-gib", type=float, default=4.0)
    parser.add_argument(
        "--recipe-budget-s",
        type=float,
        default=600.0,
        help="estimate the recipe from one block instead of running it when it would take longer",
    )
    parser.add_argument(
        "--contention",
        action="store_true",
        help="run beside one busy process per core (benchmarks/contention.py)",
    )
    args = parser.parse_args()
    busy = contextlib.nullcontext()
    if args.contention:
        from contention import busy_cores

        busy = busy_cores()
    with busy:
        main(
            quick=args.quick,
            models=args.model,
            width=args.width,
            n=args.n,
            modes=tuple(args.mode or ("trace",)),
            # "structured" forces the Gram route on every conv: ~S² = 10⁶ per pair of samples on
            # ResNet's 32×32 maps (minutes); add it with --impl structured.
            impls=tuple(args.impl or ("auto", "jacobian")),
            repeats=args.repeats,
            recipe=not args.no_recipe,
            limit_gib=args.limit_gib,
            recipe_budget_s=args.recipe_budget_s,
        )
