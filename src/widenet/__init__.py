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
    "covariance",
    "dynamics",
    "embedding",
    "frequency",
    "init",
    "io",
    "landscape",
    "layers",
    "networks",
    "phases",
    "presets",
    "random_features",
    "regime",
    "scale",
    "shift",
    "signal",
    "stax",
)
# name -> the module that defines it
_ATTRIBUTES = {
    "Architecture": "architectures",
    "MLP": "architectures",
    "from_spec": "architectures",
    "mlp": "architectures",
    "serial": "architectures",
    "load_dataset": "data",
    "empirical_nngp": "empirical",
    "empirical_ntk": "empirical",
    "Kernel": "kernels",
    "KernelTile": "kernels",
    "h_infinity": "kernels",
    "Elementwise": "layers",
    "LinearizedModel": "linearize",
    "linearize": "linearize",
    "FCNet": "networks",
    "signal_propagation": "signal",
    # the layer algebra (neural-tangents' stax): each layer knows its module and its kernel map
    "Activation": "stax",
    "AvgPool": "stax",
    "Conv": "stax",
    "Dense": "stax",
    "Erf": "stax",
    "Flatten": "stax",
    "Gelu": "stax",
    "GlobalAvgPool": "stax",
    "LayerNorm": "stax",
    "LeakyRelu": "stax",
    "Relu": "stax",
    "Residual": "stax",
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
