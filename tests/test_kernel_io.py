"""Kernel.save / Kernel.load / Kernel.numpy, and the package's py.typed marker."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import widenet as wn


def _kernel(get=("nngp", "ntk"), dtype=torch.float64):
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return wn.mlp(2, "relu").kernel(x, x[:5], get=get)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("get", [("nngp", "ntk"), "ntk", "nngp"])
def test_save_load_round_trip_is_exact(tmp_path, suffix, get):
    k = _kernel(get)
    path = tmp_path / f"k{suffix}"
    k.save(path)
    back = wn.Kernel.load(path)
    for name in ("nngp", "ntk"):
        a, b = getattr(k, name), getattr(back, name)
        assert (a is None) == (b is None)
        if a is not None:  # bitwise: both formats store raw float64
            assert b.dtype == torch.float64 and torch.equal(a, b)
    assert back.shape == (7, 5)


def test_float32_and_numpy(tmp_path):
    k = _kernel(dtype=torch.float32)
    k.save(tmp_path / "k.safetensors")
    assert wn.Kernel.load(tmp_path / "k.safetensors").ntk.dtype == torch.float32
    arrays = k.numpy()
    assert set(arrays) == {"nngp", "ntk"}
    assert isinstance(arrays["ntk"], np.ndarray) and arrays["ntk"].dtype == np.float32
    np.testing.assert_array_equal(arrays["nngp"], k.nngp.numpy())
    assert set(_kernel("ntk").numpy()) == {"ntk"}


def test_load_refuses_what_is_not_a_kernel(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        wn.Kernel.load(tmp_path / "missing.safetensors")
    np.savez(tmp_path / "other.npz", weights=np.ones((2, 2)))
    with pytest.raises(ValueError, match="'nngp' and/or 'ntk'"):
        wn.Kernel.load(tmp_path / "other.npz")
    np.savez(tmp_path / "mixed.npz", nngp=np.ones((2, 2)), ntk=np.ones((2, 3)))
    with pytest.raises(ValueError, match="one shape"):
        wn.Kernel.load(tmp_path / "mixed.npz")
    # Object arrays need pickle, which load refuses (files are data only).
    np.savez(tmp_path / "obj.npz", ntk=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        wn.Kernel.load(tmp_path / "obj.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        wn.Kernel.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="nothing to save"):
        wn.Kernel(None, None).save(tmp_path / "empty.safetensors")


def test_py_typed_marker_is_shipped():
    # PEP 561: the marker sits in the package and pyproject ships it as package data.
    assert resources.files("widenet").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["widenet"]
