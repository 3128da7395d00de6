"""Small offline data sets for experiments and the command line.

Only scikit-learn's *bundled* loaders are used (``load_digits`` and friends ship with the
package), never the ``fetch_*`` ones: widenet never touches the network. Synthetic sets are
drawn from a seeded NumPy generator.

Two families:

* **Flat** sets (:data:`DATASETS`): ``X`` is ``(n, d)``. Preprocessing (``standardize=True``,
  the default, for the scikit-learn sets): every feature is shifted to mean 0 and scaled to
  variance 1 over the whole data set *before* the subset is drawn; constant features (e.g. the
  always-blank corner pixels of digits) become 0 rather than NaN. Each input then has squared
  norm about ``n_features``, which is what the ``w_std / sqrt(fan_in)`` scaling of the first
  layer expects. The synthetic ``"sphere"`` set is already normalised (points uniform on the
  unit sphere) and is returned as drawn.
* **Structured** sets (:data:`STRUCTURED_DATASETS`), channels-first as the convolutional
  architectures expect (``wn.Conv``, neural-tangents' ``stax`` with the channel axis first):

  - ``"digits-images"``: scikit-learn's 1797 handwritten digits as ``(n, 1, 8, 8)`` images
    (pixel values 0-16 before preprocessing), labels 0-9.
  - ``"mnist1d"``: MNIST-1D (Greydanus 2020, "Scaling down deep learning",
    arXiv:2011.14439) as ``(n, 1, 40)`` sequences, labels 0-9. It is *generated locally* by
    the ``mnist1d`` package's ``make_dataset`` with its default arguments
    (``get_dataset_args()``: 5000 samples, seed 42, final length 40, 80 % / 20 % split, so
    4000 train / 1000 test points) -- the package's ``get_dataset`` is never called, because
    it downloads a pickle and writes a cache file in the working directory. ``make_dataset``
    seeds NumPy's and Python's *global* generators; the loader restores both afterwards.

  Preprocessing (``standardize=True``): every channel is shifted to mean 0 and scaled to
  variance 1 over all positions and all points of the whole set (train and test together,
  before any subset is drawn) -- one scalar shift and scale per channel, so the spatial
  structure that a convolution sees is untouched (a per-pixel z-score, as for the flat
  ``"digits"``, would blow up the nearly blank border pixels). Each input then has squared
  norm about ``C * H * W``. MNIST-1D already comes standardised this way from its generator,
  so there the step changes nothing beyond rounding.

  ``split`` selects MNIST-1D's fixed train / test parts (the ones its published baselines
  use); the other sets have no fixed split, and callers split them (as ``widenet predict``
  does).
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
SYNTHETIC_DATASETS = ("sphere",)
DATASETS = SKLEARN_DATASETS + SYNTHETIC_DATASETS
"""The flat sets: ``X`` is ``(n, d)``."""
STRUCTURED_DATASETS = ("digits-images", "mnist1d")
"""The channels-first sets: ``X`` is ``(n, C, H, W)`` images or ``(n, C, L)`` sequences."""
ALL_DATASETS = DATASETS + STRUCTURED_DATASETS
SPLITS = ("train", "test")

MNIST1D_N_TRAIN = 4000
MNIST1D_N_TEST = 1000
MNIST1D_LENGTH = 40


def load_dataset(
    name: str,
    n: int | None = None,
    seed: int = 0,
    standardize: bool = True,
    *,
    dim: int = 8,
    split: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a bundled (or locally generated) data set as ``(X, y)`` tensors.

    Parameters
    ----------
    name : one of ``"digits"``, ``"iris"``, ``"wine"``, ``"breast_cancer"`` (scikit-learn's
        bundled sets; ``y`` holds the integer class labels), ``"sphere"`` (``n`` points
        uniform on the unit sphere in ``dim`` dimensions; ``y`` is the first coordinate),
        ``"digits-images"`` (digits as ``(n, 1, 8, 8)`` images) or ``"mnist1d"`` (MNIST-1D as
        ``(n, 1, 40)`` sequences, generated locally; see the module docstring).
    n : number of points; ``None`` takes the whole set (or the whole ``split``; required for
        ``"sphere"``). The subset is a uniformly random one drawn with ``seed``, in the set's
        order.
    seed : seed of the subset draw (and of the synthetic points). MNIST-1D itself is always
        the one generated with the package's seed 42.
    standardize : z-score every feature (flat sets) or every channel (structured sets) over
        the full set; see the module docstring.
    dim : dimension of the synthetic sets.
    split : ``"train"`` (4000 points) or ``"test"`` (1000 points) for ``"mnist1d"``; ``None``
        gives all 5000, train first. The other sets have no fixed split.
    dtype : floating dtype of ``X``.

    Returns
    -------
    X : (n, d), (n, C, H, W) or (n, C, L) float tensor; y : (n,) tensor (int64 labels or
    float targets).
    """
    if name not in ALL_DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(ALL_DATASETS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if split is not None:
        if name != "mnist1d":
            raise ValueError(
                f"split is only defined for 'mnist1d' (its fixed train/test parts); {name!r} "
                f"has none: give split=None and split it yourself, got split={split!r}"
            )
        if split not in SPLITS:
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    rng = np.random.default_rng(seed)

    if name == "sphere":
        if n is None:
            raise ValueError("n is required for the synthetic 'sphere' data set")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        x = rng.standard_normal((int(n), dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return torch.as_tensor(x, dtype=dtype), torch.as_tensor(x[:, 0].copy(), dtype=dtype)

    if name in STRUCTURED_DATASETS:
        if name == "digits-images":
            from sklearn import datasets

            bunch = datasets.load_digits()
            x = np.asarray(bunch.images, dtype=np.float64)[:, None]
            y = np.asarray(bunch.target)
        else:
            x, y = (a.copy() for a in mnist1d_arrays())
        if standardize:  # one shift and scale per channel, over points and positions
            axes = (0,) + tuple(range(2, x.ndim))
            std = x.std(axis=axes, keepdims=True)
            x = (x - x.mean(axis=axes, keepdims=True)) / np.where(std > 0, std, 1.0)
        if split == "train":
            x, y = x[:MNIST1D_N_TRAIN], y[:MNIST1D_N_TRAIN]
        elif split == "test":
            x, y = x[MNIST1D_N_TRAIN:], y[MNIST1D_N_TRAIN:]
    else:
        # Imported here so that `import widenet` does not pay for scikit-learn.
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        x = np.asarray(bunch.data, dtype=np.float64)
        y = np.asarray(bunch.target)
        if standardize:
            std = x.std(axis=0)
            x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if n is not None:
        if n > len(x):
            part = f"the {split!r} part of " if split is not None else ""
            raise ValueError(f"n={n} exceeds the {len(x)} points of {part}the {name!r} data set")
        idx = np.sort(rng.choice(len(x), size=int(n), replace=False))
        x, y = x[idx], y[idx]
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=torch.int64)


@functools.cache
def mnist1d_arrays() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D as generated by ``mnist1d.data.make_dataset`` with its default arguments.

    Returns ``(x, y)``: ``x`` of shape ``(5000, 1, 40)`` (float64, the generator's own global
    standardisation), ``y`` of shape ``(5000,)`` (int64 labels), the package's 4000 training
    points first, then its 1000 test points. Generated once per process (about a second) and
    cached; the arrays are read-only. No network access and no files: ``make_dataset`` only
    draws from NumPy's global generator, seeded with the package's default 42. That global
    state (and Python's ``random`` state, which it also seeds) is restored afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the 'mnist1d' data set needs the mnist1d package (pip install mnist1d)"
        ) from err
    args = get_dataset_args()  # num_samples 5000, train_split 0.8, final_seq_length 40, seed 42
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002 (the state make_dataset seeds)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    if x.shape != (MNIST1D_N_TRAIN + MNIST1D_N_TEST, 1, MNIST1D_LENGTH):  # pragma: no cover
        raise RuntimeError(f"mnist1d generated an unexpected shape {x.shape}")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def parity_targets(labels: torch.Tensor) -> torch.Tensor:
    """Integer class labels -> ±1 regression targets by parity (+1 even, −1 odd); real
    targets -> standardized (mean 0, variance 1). Returns (n,) float64.

    The binary problem every width-sweep experiment (and ``widenet du-bounds --labels true``)
    trains on: digits' parity is a balanced ±1 task a scalar-output network can fit.
    """
    if labels.dtype not in (torch.int64, torch.int32):
        y = labels.to(torch.float64)
        return (y - y.mean()) / y.std().clamp_min(1e-12)
    return 1.0 - 2.0 * (labels % 2).to(torch.float64)
