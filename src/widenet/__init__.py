"""widenet: the theory of over-parameterized neural networks, computable in PyTorch."""

from widenet import (
    activations,
    dynamics,
    random_features,  # issue 7
)
from widenet._version import __version__
from widenet.architectures import MLP, mlp
from widenet.data import load_dataset
from widenet.empirical import empirical_nngp, empirical_ntk
from widenet.kernels import Kernel, KernelTile, h_infinity
from widenet.layers import Dense, Elementwise
from widenet.linearize import LinearizedModel, linearize

__all__ = [
    "__version__",
    "activations",
    "dynamics",
    "random_features",
    "Dense",
    "Elementwise",
    "empirical_nngp",
    "empirical_ntk",
    "Kernel",
    "KernelTile",
    "LinearizedModel",
    "MLP",
    "h_infinity",
    "linearize",
    "load_dataset",
    "mlp",
]
