"""widenet: the theory of over-parameterized neural networks, computable in PyTorch."""

from widenet import (
    activations,
    condensation,
    convergence,
    dynamics,
    embedding,
    frequency,
    init,
    landscape,
    phases,
    random_features,
    regime,
    scale,
    shift,
    signal,
)
from widenet._version import __version__
from widenet.architectures import MLP, mlp
from widenet.data import load_dataset
from widenet.empirical import empirical_nngp, empirical_ntk
from widenet.kernels import Kernel, KernelTile, h_infinity
from widenet.layers import Dense, Elementwise
from widenet.linearize import LinearizedModel, linearize
from widenet.signal import signal_propagation

__all__ = [
    "__version__",
    "activations",
    "condensation",
    "convergence",
    "dynamics",
    "embedding",
    "frequency",
    "init",
    "landscape",
    "phases",
    "random_features",
    "regime",
    "scale",
    "shift",
    "signal",
    "Dense",
    "Elementwise",
    "Kernel",
    "KernelTile",
    "LinearizedModel",
    "MLP",
    "empirical_nngp",
    "empirical_ntk",
    "h_infinity",
    "linearize",
    "load_dataset",
    "mlp",
    "signal_propagation",
]
