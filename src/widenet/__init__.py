"""widenet: the theory of over-parameterized neural networks, computable in PyTorch."""

from widenet._version import __version__
from widenet.layers import Dense, Elementwise

__all__ = ["__version__", "Dense", "Elementwise"]
