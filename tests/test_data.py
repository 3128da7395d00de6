"""The structured (channels-first) data sets: digits as 1x8x8 images and MNIST-1D.

The flat sets are covered in test_lab.py.
"""

from __future__ import annotations

import random
import socket
import urllib.request

import numpy as np
import pytest
import torch

import widenet as wn
from widenet import data


def test_digits_images_are_the_digits_pixels_in_row_major_order():
    # Independent of our reshaping: scikit-learn's flat `data` rows are the 8x8 `images`
    # flattened row by row, and the flat "digits" set is that `data`.
    x, y = wn.load_dataset("digits-images", standardize=False, dtype=torch.float64)
    flat, labels = wn.load_dataset("digits", standardize=False, dtype=torch.float64)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float64 and y.dtype == torch.int64
    assert torch.equal(x.reshape(1797, 64), flat) and torch.equal(y, labels)
    assert x.min() == 0 and x.max() == 16  # the raw 0-16 grey levels


def test_digits_images_are_standardised_per_channel_not_per_pixel():
    x, _ = wn.load_dataset("digits-images", dtype=torch.float64)
    raw, _ = wn.load_dataset("digits-images", standardize=False, dtype=torch.float64)
    # one scalar shift and scale: the standardised image is an affine map of the raw one
    a = (raw.mean() / raw.std(correction=0)).item()
    assert torch.allclose(x, raw / raw.std(correction=0) - a, atol=1e-12)
    assert abs(x.mean().item()) < 1e-12 and abs(x.std(correction=0).item() - 1) < 1e-12
    # so the blank corner pixel stays one constant value, the set's "zero ink" level
    assert torch.all(x[:, 0, 0, 0] == x[0, 0, 0, 0])
    # the squared norm the first layer's 1/sqrt(fan_in) scaling expects: C*H*W on average
    assert (x**2).sum(dim=(1, 2, 3)).mean().item() == pytest.approx(64, rel=1e-9)


def test_digits_images_subset_is_seeded():
    x, y = wn.load_dataset("digits-images", n=50, seed=3)
    assert x.shape == (50, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (50,)
    x2, y2 = wn.load_dataset("digits-images", n=50, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = wn.load_dataset("digits-images", n=50, seed=4)
    assert not torch.equal(x, x3)


def test_mnist1d_shapes_split_and_labels():
    x, y = wn.load_dataset("mnist1d", split="train")
    xt, yt = wn.load_dataset("mnist1d", split="test")
    xa, ya = wn.load_dataset("mnist1d")
    assert x.shape == (4000, 1, 40) and xt.shape == (1000, 1, 40) and xa.shape == (5000, 1, 40)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(torch.cat([x, xt]), xa) and torch.equal(torch.cat([y, yt]), ya)
    # the generator makes num_samples // 10 = 500 of each digit, then shuffles and splits
    assert torch.equal(torch.bincount(ya), torch.full((10,), 500))
    # shuffled: the test part holds every class, none with fewer than 50 of the 1000
    assert torch.bincount(yt, minlength=10).min() >= 50
    xs, ys = wn.load_dataset("mnist1d", n=100, seed=1, split="test")
    assert xs.shape == (100, 1, 40) and ys.shape == (100,)
    rows = {tuple(r) for r in xt.reshape(1000, 40).tolist()}
    assert all(tuple(r) in rows for r in xs.reshape(100, 40).tolist())  # drawn from the test part


def test_mnist1d_is_the_packages_default_generation():
    # The package's generator with its default arguments, called here directly; the loader
    # must give the same numbers (its standardisation is the generator's own, up to rounding).
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    assert (args.num_samples, args.seed, args.final_seq_length, args.train_split) == (
        5000,
        42,
        40,
        0.8,
    )
    ref = make_dataset(args)
    x, y = wn.load_dataset("mnist1d", split="train", standardize=False, dtype=torch.float64)
    assert np.array_equal(x[:, 0].numpy(), ref["x"]) and np.array_equal(y.numpy(), ref["y"])
    xs, _ = wn.load_dataset("mnist1d", split="train", dtype=torch.float64)
    # the generator already z-scores the whole set; doing it again moves nothing beyond rounding
    assert torch.allclose(xs, x, atol=1e-12, rtol=0)


def test_mnist1d_is_deterministic_and_leaves_global_random_state_alone():
    data.mnist1d_arrays.cache_clear()  # really regenerate
    np.random.seed(123)  # noqa: NPY002 (the legacy global state that mnist1d seeds)
    random.seed(123)
    np_before, py_before = np.random.random(), random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002 (the legacy global state that mnist1d seeds)
    random.seed(123)
    x1, y1 = wn.load_dataset("mnist1d", dtype=torch.float64)
    # make_dataset seeds both global generators with 42; the loader restores them
    assert np.random.random() == np_before and random.random() == py_before  # noqa: NPY002
    data.mnist1d_arrays.cache_clear()
    x2, y2 = wn.load_dataset("mnist1d", dtype=torch.float64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    cached, _ = data.mnist1d_arrays()
    assert not cached.flags.writeable  # the cache cannot be modified through a caller


def test_mnist1d_never_touches_the_network_or_the_disk(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    requests = pytest.importorskip("requests")  # mnist1d imports it (for its download helper)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.chdir(tmp_path)  # get_dataset would write ./mnist1d_data.pkl here
    data.mnist1d_arrays.cache_clear()
    x, _ = wn.load_dataset("mnist1d", split="test")
    assert x.shape == (1000, 1, 40)
    assert list(tmp_path.iterdir()) == []


def test_mnist1d_matches_the_published_logistic_regression_baseline():
    # The MNIST-1D README reports 32 % test accuracy for logistic regression on the published
    # split. Our locally generated set gives 32.9 %; a 1000-point test set has a binomial
    # standard error of sqrt(.32 * .68 / 1000) = 1.5 points, so +-5 points (over 3 SE) leaves room
    # for solver and regularisation differences, yet a set generated without the random
    # translations that make MNIST-1D hard fails it (measured: 99.8 % with max_translation=1).
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = wn.load_dataset("mnist1d", split="train", dtype=torch.float64)
    xt, yt = wn.load_dataset("mnist1d", split="test", dtype=torch.float64)
    # one BLAS thread: on the shared 2-core machine the threaded fit was 100x slower (16 s)
    with threadpool_limits(1):
        model = LogisticRegression(max_iter=2000).fit(x.reshape(4000, 40).numpy(), y.numpy())
    accuracy = model.score(xt.reshape(1000, 40).numpy(), yt.numpy())
    assert 0.27 <= accuracy <= 0.37


def test_structured_data_errors():
    with pytest.raises(ValueError, match="split is only defined for 'mnist1d'"):
        wn.load_dataset("digits-images", split="train")
    with pytest.raises(ValueError, match="split must be 'train', 'test' or None"):
        wn.load_dataset("mnist1d", split="validation")
    with pytest.raises(ValueError, match="exceeds the 1000 points of the 'test' part"):
        wn.load_dataset("mnist1d", n=1001, split="test")
    with pytest.raises(ValueError, match="digits-images"):  # listed among the available sets
        wn.load_dataset("mnist")
    # the flat sets used by the command line and the mlp experiments stay flat
    assert "mnist1d" not in data.DATASETS and "mnist1d" in data.ALL_DATASETS
