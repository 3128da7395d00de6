"""widenet: the theory of over-parameterized neural networks, computable in PyTorch."""

from widenet import activations
from widenet._version import __version__
from widenet.architectures import MLP, mlp
from widenet.kernels import Kernel, KernelTile, h_infinity
from widenet.layers import Dense, Elementwise

__all__ = [
    "__version__",
    "activations",
    "Dense",
    "Elementwise",
    "Kernel",
    "KernelTile",
    "MLP",
    "h_infinity",
    "mlp",
]
