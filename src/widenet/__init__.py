"""widenet: the theory of over-parameterized neural networks, computable in PyTorch.

The submodules and the names below are imported on first use (PEP 562 ``__getattr__``), so that
``import widenet`` (and ``widenet --help``) does not pay for torch, scipy and scikit-learn until
they are needed; ``wn.mlp``, ``wn.dynamics`` etc. behave as plain attributes.
"""

from __future__ import annotations

import importlib

from widenet._version import __version__

_SUBMODULES = (
    "activations",
    "condensation",
    "convergence",
    "dynamics",
    "embedding",
    "frequency",
    "init",
    "io",
    "landscape",
    "networks",
    "phases",
    "random_features",
    "regime",
    "scale",
    "shift",
    "signal",
)
# name -> the module that defines it
_ATTRIBUTES = {
    "MLP": "architectures",
    "mlp": "architectures",
    "load_dataset": "data",
    "empirical_nngp": "empirical",
    "empirical_ntk": "empirical",
    "Kernel": "kernels",
    "KernelTile": "kernels",
    "h_infinity": "kernels",
    "Dense": "layers",
    "Elementwise": "layers",
    "LinearizedModel": "linearize",
    "linearize": "linearize",
    "FCNet": "networks",
    "signal_propagation": "signal",
}

__all__ = ["__version__", *_SUBMODULES, *_ATTRIBUTES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"widenet.{name}")
    elif name in _ATTRIBUTES:
        module = getattr(importlib.import_module(f"widenet.{_ATTRIBUTES[name]}"), name)
    else:
        raise AttributeError(f"module 'widenet' has no attribute {name!r}")
    globals()[name] = module  # cache: later look-ups are plain attribute reads
    return module


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
