"""Small offline data sets for experiments and the command line.

Only scikit-learn's *bundled* loaders are used (``load_digits`` and friends ship with the
package), never the ``fetch_*`` ones: widenet never touches the network. Synthetic sets are
drawn from a seeded NumPy generator.

Preprocessing (``standardize=True``, the default, for the scikit-learn sets): every feature is
shifted to mean 0 and scaled to variance 1 over the whole data set *before* the subset is drawn;
constant features (e.g. the always-blank corner pixels of digits) become 0 rather than NaN.
Each input then has squared norm about ``n_features``, which is what the ``w_std / sqrt(fan_in)``
scaling of the first layer expects. The synthetic ``"sphere"`` set is already normalised (points
uniform on the unit sphere) and is returned as drawn.
"""

from __future__ import annotations

import numpy as np
import torch

SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
SYNTHETIC_DATASETS = ("sphere",)
DATASETS = SKLEARN_DATASETS + SYNTHETIC_DATASETS


def load_dataset(
    name: str,
    n: int | None = None,
    seed: int = 0,
    standardize: bool = True,
    *,
    dim: int = 8,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a bundled data set as ``(X, y)`` tensors.

    Parameters
    ----------
    name : one of ``"digits"``, ``"iris"``, ``"wine"``, ``"breast_cancer"`` (scikit-learn's
        bundled sets; ``y`` holds the integer class labels) or ``"sphere"`` (``n`` points
        uniform on the unit sphere in ``dim`` dimensions; ``y`` is the first coordinate).
    n : number of points; ``None`` takes the whole set (required for ``"sphere"``). The subset
        is a uniformly random one drawn with ``seed``.
    seed : seed of the subset draw (and of the synthetic points).
    standardize : z-score every feature over the full set (scikit-learn sets only).
    dim : dimension of the synthetic sets.
    dtype : floating dtype of ``X``.

    Returns
    -------
    X : (n, d) float tensor, y : (n,) tensor (int64 labels or float targets).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    rng = np.random.default_rng(seed)

    if name == "sphere":
        if n is None:
            raise ValueError("n is required for the synthetic 'sphere' data set")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        x = rng.standard_normal((int(n), dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return torch.as_tensor(x, dtype=dtype), torch.as_tensor(x[:, 0].copy(), dtype=dtype)

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
            raise ValueError(f"n={n} exceeds the {len(x)} points of the {name!r} data set")
        idx = np.sort(rng.choice(len(x), size=int(n), replace=False))
        x, y = x[idx], y[idx]
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=torch.int64)


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
