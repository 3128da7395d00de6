"""Kernels on data: ``widenet kernel`` (NNGP/NTK), ``ntk`` (empirical), ``h-infinity``.

``kernel`` is ``wn.mlp(...).kernel(X)``, ``ntk`` is ``wn.empirical_ntk(wn.mlp(...).network(...),
X)``, ``h-infinity`` is ``wn.h_infinity(X)``; with ``--out K.zarr`` the first two write a
resumable kernel store (:mod:`widenet.cli.stores`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from widenet.cli._common import (
    B_STD,
    DTYPE,
    KERNELS,
    W_STD,
    ActivationOpt,
    ArchOpt,
    BStdOpt,
    DataOpt,
    DataSeedOpt,
    DepthOpt,
    DtypeOpt,
    InShapeOpt,
    NOpt,
    OverwriteOpt,
    StandardizeOpt,
    WStdOpt,
    architecture,
    err,
    fail,
    flag,
    out,
    saved,
    shape_inputs,
    topic,
)
from widenet.cli.stores import (
    BufferedIoOpt,
    SchedulerOpt,
    StoreOverwriteOpt,
    WorkersOpt,
    write_kernel_store,
)

app, command = topic(KERNELS)

TileOpt = Annotated[
    int | None,
    typer.Option(
        "--tile",
        help="Tile size, memory O(tile^2) (default 512 in memory, widenet.architectures."
        "DEFAULT_TILE; 4096 for a .zarr store, its chunk tile widenet.scale.STORE_TILE).",
    ),
]
X2Opt = Annotated[
    str | None,
    typer.Option("--x2", help="Columns' inputs (a .npy/.csv file) for a .zarr store K(data, x2)."),
]


@command()
def kernel(
    ctx: typer.Context,
    out_: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output .npz (nngp and ntk), .npy, or a .zarr store (on disk)."
        ),
    ],
    data: DataOpt = "digits",
    n: NOpt = None,
    depth: DepthOpt = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    tile: TileOpt = None,
    dtype: DtypeOpt = DTYPE,
    get: Annotated[str, typer.Option("--get", help="Which kernel a .npy output holds.")] = "ntk",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    parameterization: Annotated[
        str, typer.Option("--parameterization", help="ntk (default) or standard.")
    ] = "ntk",
    width: Annotated[
        int | None,
        typer.Option("--width", help="Hidden width; only for --parameterization standard."),
    ] = None,
    x2: X2Opt = None,
    scheduler: SchedulerOpt = "threads",
    workers: WorkersOpt = None,
    overwrite: StoreOverwriteOpt = False,
    buffered_io: BufferedIoOpt = False,
    arch: ArchOpt = None,
    in_shape: InShapeOpt = None,
) -> None:
    """Infinite-width NNGP and NTK of an MLP (or any --arch) on data; saved as .npz (both) or
    .npy (--get).

    --arch takes a preset (cnn, cnn-vec, myrtle5, ...) or a YAML file of layers; --in-shape
    1,8,8 reshapes flat inputs into images for it (e.g. --data digits); --data digits-images
    and --data mnist1d come in their own shapes (1,8,8 and 1,40).

    With --out K.zarr the kernel is written tile by tile into a Zarr store (default tile 4096;
    symmetric: only the upper tiles are computed); running the same command again completes an
    interrupted store. --scheduler threads|processes|tcp://host:port.
    """
    import numpy as np

    from widenet import io

    mlp_options = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
    mlp_options.update(parameterization=parameterization)
    try:
        architecture_, arch_name = architecture(ctx, arch, **mlp_options)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    if in_shape is None and arch is not None:
        in_shape = io.natural_shape(data)  # digits-images, mnist1d: their own shape
    if out_.suffix.lower() == ".zarr":
        arch_options = mlp_options if arch is None else architecture_
        data_options = dict(data=data, n=n, data_seed=data_seed, standardize=standardize)
        write_kernel_store(
            out_,
            arch_options,
            data_options,
            x2,
            tile,
            dtype,
            scheduler,
            workers,
            overwrite,
            width,
            direct_io=not buffered_io,
            in_shape=in_shape,
        )
        return
    try:
        if x2 is not None:
            raise ValueError("--x2 is for a .zarr --out (a kernel store)")
        if scheduler != "threads" or workers is not None:
            raise ValueError("--scheduler and --workers are for a .zarr --out (a kernel store)")
        if get not in ("ntk", "nngp"):
            raise ValueError(f"--get must be ntk or nngp, got {get!r}")
        io.check_suffix(out_, (".npy", ".npz"))
        x = io.load_inputs(
            data, n, seed=data_seed, standardize=standardize, dtype=io.torch_dtype(dtype)
        )
        x = shape_inputs(x, in_shape)
        t0 = time.perf_counter()
        k = architecture_.kernel(x, tile=tile, width=width, progress=err().is_terminal)
        seconds = time.perf_counter() - t0
        arrays = {"nngp": k.nngp.cpu().numpy(), "ntk": k.ntk.cpu().numpy()}
        io.save_arrays(out_, arrays, get, overwrite=overwrite)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    shape = "x".join(map(str, arrays["ntk"].shape))
    what = "nngp, ntk" if out_.suffix.lower() == ".npz" else get
    network = f"a depth-{depth} {activation} MLP" if arch is None else f"--arch {arch_name}"
    out().print(
        f"{what} ({shape}, {dtype}) of {network} on {x.shape[0]} points "
        f"in {seconds:.2f} s; ntk diagonal mean {float(np.mean(np.diag(arrays['ntk']))):.4g}",
        soft_wrap=True,
    )
    saved(out_)


@command()
def ntk(
    out_: Annotated[Path, typer.Option("--out", "-o", help="Output .npy or .npz (key 'ntk').")],
    width: Annotated[int, typer.Option("--width", help="Hidden width.")] = 1024,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network's initialisation.")] = 0,
    mode: Annotated[
        str, typer.Option("--mode", help="Empirical NTK mode (see wn.empirical_ntk).")
    ] = "trace",
    data: DataOpt = "digits",
    n: NOpt = None,
    depth: DepthOpt = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    dtype: DtypeOpt = DTYPE,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    tile: TileOpt = None,
    scheduler: SchedulerOpt = "threads",
    workers: WorkersOpt = None,
    overwrite: StoreOverwriteOpt = False,
    buffered_io: BufferedIoOpt = False,
) -> None:
    """Empirical NTK of a finite-width widenet MLP at initialisation on data.

    --out T.zarr writes it tile by tile into a resumable Zarr store (mode trace).
    """
    import widenet as wn
    from widenet import io

    if out_.suffix.lower() == ".zarr":
        arch_options = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
        data_options = dict(data=data, n=n, data_seed=data_seed, standardize=standardize)
        network = dict(width=width, seed=seed, mode=mode)
        write_kernel_store(
            out_,
            arch_options,
            data_options,
            None,
            tile,
            dtype,
            scheduler,
            workers,
            overwrite,
            None,
            network=network,
            direct_io=not buffered_io,
        )
        return
    try:
        if tile is not None:
            raise ValueError("--tile is for a .zarr --out (the empirical NTK is not tiled)")
        if scheduler != "threads" or workers is not None:
            raise ValueError("--scheduler and --workers are for a .zarr --out (a kernel store)")
        io.check_suffix(out_, (".npy", ".npz"))
        torch_dtype = io.torch_dtype(dtype)
        x = io.load_inputs(data, n, seed=data_seed, standardize=standardize, dtype=torch_dtype)
        arch = wn.mlp(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
        net = arch.network(in_dim=x.shape[1], width=width, seed=seed, dtype=torch_dtype)
        t0 = time.perf_counter()
        theta = wn.empirical_ntk(net, x, mode=mode)
        seconds = time.perf_counter() - t0
        arrays = {"ntk": theta.detach().cpu().numpy()}
        io.save_arrays(out_, arrays, "ntk", overwrite=overwrite)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    shape = "x".join(map(str, arrays["ntk"].shape))
    out().print(
        f"empirical ntk ({shape}, mode={mode}) of a width-{width} depth-{depth} {activation} "
        f"MLP (seed {seed}) on {x.shape[0]} points in {seconds:.2f} s",
        soft_wrap=True,
    )
    saved(out_)


@command("h-infinity")
def h_infinity(
    out_: Annotated[Path, typer.Option("--out", "-o", help="Output .npy (or .npz, key 'h').")],
    data: DataOpt = "digits",
    n: NOpt = None,
    normalize: Annotated[
        bool, flag("--normalize/--no-normalize", help="Scale rows to unit norm, as Du et al.")
    ] = True,
    dtype: DtypeOpt = DTYPE,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Du et al. (2018) Gram matrix H-infinity of a two-layer ReLU net on data, and its lambda_0."""
    import torch

    import widenet as wn
    from widenet import io

    try:
        io.check_suffix(out_, (".npy", ".npz"))
        x = io.load_inputs(
            data, n, seed=data_seed, standardize=standardize, dtype=io.torch_dtype(dtype)
        )
        if normalize:
            norms = x.norm(dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise ValueError("--normalize: the data has rows of zero norm")
            x = x / norms
        h = wn.h_infinity(x)
        io.save_arrays(out_, {"h": h.cpu().numpy()}, "h", overwrite=overwrite)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    lam0 = float(torch.linalg.eigvalsh(h.double()).min())
    out().print(
        f"H-infinity ({h.shape[0]}x{h.shape[1]}, {dtype}) on {x.shape[0]} points; "
        f"lambda_0 = lambda_min(H-infinity) = {lam0:.6g}",
        soft_wrap=True,
    )
    saved(out_)
