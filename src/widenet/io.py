"""File formats, in one place: what widenet reads and writes, and how.

Every command of the ``widenet`` command line reads and writes through these functions, and a
Python user can call them too. The rules they enforce:

* **Data only, never code.** Arrays come from ``.npy`` (``np.load(allow_pickle=False)``),
  ``.npz`` (the same, per key) or ``.csv`` (numbers, one optional header line); model weights from
  ``.safetensors`` or a ``torch.save`` state dict read with ``torch.load(weights_only=True)``;
  JSON with :mod:`json`. A pickled object (``torch.save(model)``, an object array) is refused
  with an error naming the option and the file — :func:`load_pickled_module` is the one
  exception, for callers that asked for it explicitly (the CLI's ``--trust-pickle``).
* **Nothing overwritten silently.** :func:`check_new_outputs` refuses an existing output file
  unless ``overwrite`` is true; :func:`run_folder` accepts only a new or empty folder.
* **One JSON policy.** :func:`write_json` writes strict JSON: a non-finite float (NaN, ±inf)
  becomes ``null`` (there is no NaN in JSON), never the non-standard ``NaN`` token.
* **Errors name the argument.** Every function takes ``option`` (``"--data"``, ``"--model"``)
  and puts it, with the file, into its ``ValueError``.

Inputs are ``(n_samples, n_features)`` (rows are points); a bundled data set name (``digits``,
``iris``, ``wine``, ``breast_cancer``, ``sphere``; :func:`widenet.data.load_dataset`) may stand
where a file is expected.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DTYPES",
    "OutputExistsError",
    "check_new_outputs",
    "check_suffix",
    "decode_labels",
    "encode_labels",
    "is_bundled",
    "json_ready",
    "load_array",
    "load_inputs",
    "load_json",
    "load_pickled_module",
    "load_state_dict",
    "load_targets",
    "load_train_test",
    "load_weights",
    "run_folder",
    "save_arrays",
    "torch_dtype",
    "write_json",
]

DTYPES = ("float32", "float64")
ARRAY_SUFFIXES = (".npy", ".csv")


class OutputExistsError(FileExistsError):
    """An output file exists and ``overwrite`` was not given."""


# ---- small helpers ------------------------------------------------------------------------------


def torch_dtype(name: str, option: str = "--dtype"):
    """``"float32"``/``"float64"`` -> the torch dtype."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"{option} must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def is_bundled(name: str) -> bool:
    """True when ``name`` is a bundled data set (flat, or the images/sequences of
    ``digits-images``/``mnist1d``) and not an existing file of that name."""
    from widenet.data import ALL_DATASETS

    return name in ALL_DATASETS and not Path(name).exists()


def check_suffix(path: Path, suffixes: Iterable[str], option: str = "--out") -> Path:
    """``path`` if its suffix is one of ``suffixes`` (case-insensitive), else ``ValueError``."""
    path = Path(path)
    suffixes = tuple(suffixes)
    if path.suffix.lower() not in suffixes:
        allowed = " or ".join(suffixes)
        raise ValueError(f"{option} must end in {allowed}, got {path.name!r}")
    return path


def check_new_outputs(paths: Iterable[Path], overwrite: bool, option: str = "--out") -> None:
    """Refuse (:class:`OutputExistsError`) to replace an existing file unless ``overwrite``.

    A directory in the way is always refused: ``overwrite`` replaces files, never folders.
    """
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise OutputExistsError(f"{option}: {path} is a folder, expected a file name")
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"{option}: {path} exists; pass --overwrite to replace it (nothing was written)"
            )


def _refuse_pickle(path: Path, option: str, what: str) -> ValueError:
    return ValueError(
        f"{option}: {path} holds {what}; widenet reads data only (no pickled objects, which "
        "could run code when loaded)"
    )


def _existing_file(path, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option}: file {path} does not exist")
    return path


def _read_csv(path: Path, ndmin: int) -> np.ndarray:
    try:
        return np.loadtxt(path, delimiter=",", ndmin=ndmin)
    except ValueError:  # a header line
        try:
            return np.loadtxt(path, delimiter=",", ndmin=ndmin, skiprows=1)
        except ValueError as err:
            raise ValueError(f"cannot read {path} as comma-separated numbers: {err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (CSV) file") from None


def _read_npy(path: Path, option: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise _refuse_pickle(path, option, "pickled objects (an object array)") from None
        raise ValueError(f"{option}: cannot read {path} as a .npy array: {err}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{option}: cannot read {path} as a .npy array: {err}") from None


def _numeric(x: np.ndarray, path: Path, option: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{option}: {path} must hold real numbers, got dtype {x.dtype}")
    return x


# ---- arrays -------------------------------------------------------------------------------------


def load_array(path, option: str) -> np.ndarray:
    """A float64 array of any shape from a ``.npy`` or ``.csv`` file."""
    path = _existing_file(path, option)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _numeric(_read_npy(path, option), path, option).astype(np.float64)
    if suffix == ".csv":
        try:
            return _read_csv(path, ndmin=1)
        except ValueError as err:
            raise ValueError(f"{option}: {err}") from None
    raise ValueError(f"{option} must be a .npy or .csv file, got {path.name!r}")


def _check_n(n, option: str, available: int | None = None, what: str = "") -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{option} must be an integer >= 1, got {n!r}")
    if available is not None and n > available:
        raise ValueError(f"{option} {n} exceeds the {available} points of {what}")


def load_inputs(
    data: str,
    n: int | None = None,
    *,
    seed: int = 0,
    standardize: bool | None = None,
    dtype=None,
    option: str = "--data",
    n_option: str = "--n",
    at_most: int | None = None,
):
    """Inputs ``(n, d)`` as a torch tensor: a bundled set's name or a ``.npy``/``.csv`` file.

    ``n`` (``1 <= n <=`` the number of points): a file's first ``n`` rows (files are taken as
    given), a seeded random subset of a bundled set. ``standardize`` z-scores the features
    (default: on for bundled sets, off for files). ``at_most`` (with ``n=None``): a default
    size, ``n = at_most`` when the data has that many points, else all of them.
    """
    if n is None and at_most is not None:
        x = load_inputs(
            data, seed=seed, standardize=standardize, dtype=dtype, option=option, n_option=n_option
        )
        if len(x) <= at_most:
            return x
        n = at_most
    import torch

    from widenet.data import ALL_DATASETS, load_dataset

    dtype = torch.float64 if dtype is None else dtype
    path = Path(data)
    if path.suffix.lower() in ARRAY_SUFFIXES or path.exists():
        if not path.is_file():
            raise ValueError(f"{option}: data file {path} does not exist")
        if path.suffix.lower() not in ARRAY_SUFFIXES:
            raise ValueError(f"{option}: data file {path} must be .npy or .csv")
        _check_n(n, n_option)
        x = load_array(path, option)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(
                f"{option}: data in {path} must be 2-D (n_samples, n_features), got {x.shape}"
            )
        _check_n(n, n_option, len(x), str(path))
        if n is not None:
            x = x[:n]  # the first n rows: files are taken as given
        if standardize:
            std = x.std(axis=0)
            x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return torch.as_tensor(x, dtype=dtype)
    if data not in ALL_DATASETS:
        raise ValueError(f"{option} must be a .npy/.csv file or one of: {', '.join(ALL_DATASETS)}")
    _check_n(n, n_option)
    std = True if standardize is None else standardize
    try:
        x, _ = load_dataset(data, n=n, seed=seed, standardize=std, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"{n_option if 'n=' in str(err) else option}: {err}") from None
    # images and sequences as flat rows, like every other input; natural_shape(data) restores them
    return x.reshape(len(x), -1)


def natural_shape(data: str) -> str | None:
    """``"C,H,W"``/``"C,L"`` of a bundled image or sequence set (``digits-images``: ``"1,8,8"``,
    ``mnist1d``: ``"1,40"``), the ``--in-shape`` a convolutional ``--arch`` needs; None for
    files and flat sets."""
    from widenet.data import MNIST1D_LENGTH, STRUCTURED_DATASETS

    if data not in STRUCTURED_DATASETS or Path(data).exists():
        return None
    return {"digits-images": "1,8,8", "mnist1d": f"1,{MNIST1D_LENGTH}"}[data]


def load_targets(path, option: str, n_rows: int) -> np.ndarray:
    """Targets for ``n_rows`` points from a ``.npy``/``.csv`` file: ``(n, k)`` float64, or
    ``(n,)`` integer class labels (returned 1-D, for :func:`encode_labels`). Extra rows are
    dropped (the first ``n_rows`` are used); fewer rows is an error."""
    path = Path(path)
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise ValueError(f"{option} must be a .npy or .csv file, got {str(path)!r}")
    path = _existing_file(path, option)
    if path.suffix.lower() == ".npy":
        y = _read_npy(path, option)
    else:
        try:
            y = _read_csv(path, ndmin=1)
        except ValueError as err:
            raise ValueError(f"{option}: {err}") from None
    if y.ndim not in (1, 2):
        raise ValueError(f"{option}: targets must be 1-D or 2-D, got shape {y.shape}")
    if y.shape[0] < n_rows:
        raise ValueError(f"{option}: {y.shape[0]} rows for {n_rows} points")
    y = y[:n_rows]
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return y  # class labels, encoded by the caller
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{option}: targets must be real numbers, got dtype {y.dtype}")
    y = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"{option}: targets must be finite")
    return y[:, None] if y.ndim == 1 else y


def load_weights(path, option: str, n_rows: int) -> np.ndarray:
    """Per-example weights ``(n,)``: a ``.npy``/``.csv`` file, or the ``weights`` of a ``.npz``
    (as ``widenet covariate-weights`` writes it)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        path = _existing_file(path, option)
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "weights" not in archive:
                    raise ValueError(f"{option}: {path} has no 'weights' array")
                w = archive["weights"]
        except ValueError as err:
            if "pickle" in str(err).lower():
                raise _refuse_pickle(path, option, "pickled objects") from None
            raise ValueError(f"{option}: {err}") from None
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{option}: cannot read {path} as .npz: {err}") from None
        return np.asarray(_numeric(w, path, option), dtype=np.float64)
    w = load_targets(path, option, n_rows)
    return w.reshape(len(w), -1)[:, 0] if w.ndim == 2 and w.shape[1] == 1 else w


def load_json(path, option: str) -> Any:
    """A JSON document (``json.loads``: data only)."""
    path = _existing_file(path, option)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{option}: {path} is not a JSON file: {err}") from None


# ---- labels -------------------------------------------------------------------------------------


def encode_labels(train_labels, test_labels=None):
    """Integer labels -> one-hot targets (±1 in one column for two classes), one class list.

    Returns ``(train_targets, test_targets or None, classes)``.
    """
    parts = [train_labels] + ([] if test_labels is None else [test_labels])
    classes = np.unique(np.concatenate(parts))

    def encode(labels):
        if labels is None:
            return None
        idx = np.searchsorted(classes, labels)
        if len(classes) == 2:
            return np.where(idx == 1, 1.0, -1.0)[:, None]
        out = np.zeros((len(labels), len(classes)))
        out[np.arange(len(labels)), idx] = 1.0
        return out

    return encode(train_labels), encode(test_labels), classes


def decode_labels(y: np.ndarray) -> np.ndarray:
    """One-hot rows or one ±1 column (as :func:`encode_labels` writes them) -> class indices."""
    return (y[:, 0] > 0).astype(int) if y.shape[1] == 1 else np.argmax(y, axis=1)


def _f64():
    import torch

    return torch.float64


def load_train_test(
    train: str,
    test: str,
    n_train: int | None,
    n_test: int | None,
    targets: str,
    train_targets: str | None,
    test_targets: str | None,
    standardize: bool | None,
    seed: int,
):
    """A train/test problem as float64 numpy arrays: ``(x_train, y_train, x_test, y_test or
    None, description)``.

    One bundled set named twice is split into disjoint parts (seeded permutation; the synthetic
    ``sphere`` regresses on its first coordinate, the others' labels are one-hot, ±1 for two
    classes). Two files need their targets as files (``train_targets``, optionally
    ``test_targets``; ``targets`` other than ``"onehot"`` is another name for the train
    targets); files are standardized, if asked, with the training set's statistics.
    """
    from widenet.data import ALL_DATASETS, load_dataset

    if targets not in ("onehot",):
        if train_targets is not None:
            raise ValueError("give the train targets once: --targets FILE or --train-targets")
        train_targets, targets = targets, "onehot"
    if is_bundled(train):
        if test != train:
            raise ValueError(
                f"--test must name the same bundled set as --train ({train!r}; they are split "
                f"into disjoint parts) or both must be files, got {test!r}"
            )
        if train_targets is not None or test_targets is not None:
            raise ValueError(
                "--targets FILE, --train-targets and --test-targets are for data files, not "
                "bundled sets"
            )
        for name, value in (("--n-train", n_train), ("--n-test", n_test)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if train == "sphere":
            if n_train is None or n_test is None:
                raise ValueError("the synthetic 'sphere' set needs --n-train and --n-test")
            x, y = load_dataset("sphere", n=n_train + n_test, seed=seed, dtype=_f64())
            x, y = x.numpy(), y.numpy()
            perm = np.arange(len(x))  # already a random draw
        else:
            std = True if standardize is None else standardize
            x, y = load_dataset(train, standardize=std, dtype=_f64())
            # images/sequences as flat rows (natural_shape(train) restores them); MNIST-1D's
            # 4000/1000 split is pooled and split at random like every other set
            x, y = x.reshape(len(x), -1).numpy(), y.numpy()
            perm = np.random.default_rng(seed).permutation(len(x))
        total = len(x)
        if n_test is None:
            n_test = max(1, round(0.2 * total)) if n_train is None else total - n_train
        if n_train is None:
            n_train = total - n_test
        if n_train < 1 or n_test < 1 or n_train + n_test > total:
            raise ValueError(
                f"--n-train {n_train} + --n-test {n_test} must fit in the {total} points of "
                f"{train!r} (the two parts are disjoint)"
            )
        i_train, i_test = np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_test])
        if train == "sphere":  # regression on the first coordinate
            y_train, y_test = y[i_train][:, None], y[i_test][:, None]
        else:
            y_train, y_test, _ = encode_labels(y[i_train], y[i_test])
        what = f"{train}: {n_train} train / {n_test} test points (disjoint, --data-seed {seed})"
        return x[i_train], y_train, x[i_test], y_test, what
    # files
    if is_bundled(test):
        raise ValueError(f"--test {test!r} is a bundled set but --train is a file: give two files")
    for option, value in (("--train", train), ("--test", test)):
        if Path(value).suffix.lower() not in ARRAY_SUFFIXES:
            raise ValueError(
                f"{option} must be a .npy/.csv file or a bundled set "
                f"({', '.join(ALL_DATASETS)}), got {value!r}"
            )
    if train_targets is None:
        raise ValueError("--train is a file: give its targets with --train-targets FILE")
    x_train = load_inputs(
        train, n_train, standardize=False, option="--train", n_option="--n-train"
    ).numpy()
    x_test = load_inputs(
        test, n_test, standardize=False, option="--test", n_option="--n-test"
    ).numpy()
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"--train has {x_train.shape[1]} features but --test has {x_test.shape[1]}"
        )
    if standardize:  # with the training set's statistics, for both
        mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd
    y_train = load_targets(train_targets, "--train-targets", len(x_train))
    y_test = None
    if test_targets is not None:
        y_test = load_targets(test_targets, "--test-targets", len(x_test))
    if y_train.ndim == 1 or (y_test is not None and y_test.ndim == 1):
        if y_train.ndim != 1 or (y_test is not None and y_test.ndim != 1):
            raise ValueError("--train-targets and --test-targets: both labels or both targets")
        y_train, y_test, _ = encode_labels(y_train, y_test)
    if y_test is not None and y_test.shape[1] != y_train.shape[1]:
        raise ValueError(
            f"--test-targets has {y_test.shape[1]} columns but --train-targets {y_train.shape[1]}"
        )
    what = f"{train} ({len(x_train)} points) -> {test} ({len(x_test)} points)"
    return x_train, y_train, x_test, y_test, what


# ---- model weights ------------------------------------------------------------------------------


def load_state_dict(path, option: str = "--model") -> dict:
    """A state dict (``{name: tensor}``) from a model-weights file, read as data only.

    ``.safetensors`` files are read with :func:`safetensors.torch.load_file`; any other file
    with ``torch.load(weights_only=True)``, which unpickles only tensors and plain containers
    and refuses everything else (a pickled ``nn.Module`` or any object whose unpickling would
    run code). A ``{"state_dict": {...}}`` checkpoint is unwrapped. Every failure is a
    ``ValueError`` naming ``option`` and the file.
    """
    import torch

    path = _existing_file(path, option)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{option}: {path} is not a valid .safetensors file ({err}); save weights with "
                "safetensors.torch.save_file(model.state_dict(), path)"
            ) from None
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of files it refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ...: the message says
        raise ValueError(
            f"{option}: {path} is not a weights file (a torch.save state dict, loadable with "
            f"weights_only=True, or .safetensors): {str(err).splitlines()[0]}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{option}: {path} must hold a state dict (a dict of tensors), got {type(state)}"
        )
    return state


def load_pickled_module(path, option: str = "--model"):
    """A full ``torch.save(model)`` file: **runs the pickle's code**; only for trusted files.

    Callers must ask for it explicitly (the CLI's ``--trust-pickle``); everything else in
    widenet reads weights with :func:`load_state_dict`.
    """
    import torch

    path = _existing_file(path, option)
    model = torch.load(path, weights_only=False, map_location="cpu")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{option} must hold a torch.nn.Module, got {type(model).__name__}")
    return model


# ---- outputs ------------------------------------------------------------------------------------


def json_ready(value):
    """Non-finite floats -> ``None`` (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json(path, payload, *, overwrite: bool = False, option: str = "--out") -> Path:
    """Write ``payload`` as indented strict JSON (non-finite floats as ``null``)."""
    path = Path(path)
    check_new_outputs([path], overwrite, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_ready(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def save_arrays(
    path,
    arrays: Mapping[str, Any],
    which: str | None = None,
    *,
    overwrite: bool = False,
    option: str = "--out",
) -> Path:
    """``.npz`` (every array) or ``.npy`` (``arrays[which]``), refusing an existing file unless
    ``overwrite``."""
    path = check_suffix(path, (".npy", ".npz"), option)
    check_new_outputs([path], overwrite, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npz":
        np.savez(path, **arrays)
    else:
        if which is None:
            raise ValueError(f"{option}: a .npy file holds one array; use .npz")
        np.save(path, arrays[which])
    return path


def run_folder(path, option: str = "--out") -> Path:
    """Create ``path`` as a run folder; it must be new or empty (nothing is overwritten)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{option} {path} exists and is not an empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return path
