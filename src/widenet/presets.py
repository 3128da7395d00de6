"""Named architectures, each with its source.

- :func:`widenet.architectures.mlp` — the fully-connected network (re-exported here).
- :func:`cnn` — ``depth`` x [Conv 3x3 "same", ReLU] then a global-average-pooling ("gap") or a
  flatten ("flatten") readout and a Dense layer: the CNN-GAP and CNN-Vec architectures of
  Novak et al. 2019 ("Bayesian deep convolutional networks with many channels are Gaussian
  processes") and Arora et al. 2019 ("On exact computation with an infinitely wide neural net",
  CNTK-GAP / CNTK-V), whose infinite-width kernels neural-tangents computes as
  ``stax.serial(*[stax.Conv(C, (3, 3), padding="SAME"), stax.Relu()] * depth,
  stax.GlobalAvgPool() | stax.Flatten(), stax.Dense(1))``.
- :func:`myrtle` — the Myrtle networks of Shankar et al. 2020 ("Neural kernels without
  tangents", ICML; after David Page's "myrtle.ai" ResNet), as neural-tangents' Myrtle notebook
  builds them (``MyrtleNetwork(depth, W_std=sqrt(2), b_std=0)``): with (a, b, c) = (2, 1, 1),
  (2, 2, 2), (3, 3, 3) for depth 5, 7, 10,
  a x [Conv 3x3, ReLU], AvgPool 2, b x [Conv, ReLU], AvgPool 2, c x [Conv, ReLU], pooling to
  1 x 1, Flatten, Dense. The last pooling is a ``GlobalAvgPool`` here: on the 32 x 32 CIFAR-10
  images of the paper the feature map is 8 x 8 there and the notebook's three 2 x 2 average
  pools equal one global average; ``GlobalAvgPool`` also serves smaller images (8 x 8 digits,
  where three 2 x 2 pools would not fit).
"""

from __future__ import annotations

from widenet import stax
from widenet._checks import check_int
from widenet.architectures import MLP, Serial, mlp, serial

__all__ = ["cnn", "get", "mlp", "myrtle", "NAMES"]

_SQRT2 = 2.0**0.5


def cnn(
    depth: int = 3,
    readout: str = "gap",
    *,
    kernel_size=3,
    activation="relu",
    w_std: float = _SQRT2,
    b_std: float = 0.0,
    out_features: int = 1,
    parameterization: str = "ntk",
) -> Serial:
    """``depth`` x [Conv(kernel_size, "same"), activation], then GlobalAvgPool ("gap", CNN-GAP)
    or Flatten ("flatten", CNN-Vec), then Dense(out_features). Every layer uses ``w_std``,
    ``b_std`` (default sqrt(2), 0: He scaling for ReLU, as the CNTK of Arora et al. 2019)."""
    depth = check_int(depth, "depth", minimum=1)
    if readout not in ("gap", "flatten"):
        raise ValueError(f"readout must be 'gap' or 'flatten', got {readout!r}")
    conv = stax.Conv(
        None,
        kernel_size,
        padding="same",
        w_std=w_std,
        b_std=b_std,
        parameterization=parameterization,
    )
    act = stax.Activation(activation)
    pool = stax.GlobalAvgPool() if readout == "gap" else stax.Flatten()
    dense = stax.Dense(out_features, w_std, b_std, parameterization=parameterization)
    return serial(*((conv, act) * depth), pool, dense)


_MYRTLE = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def myrtle(
    depth: int = 5,
    *,
    w_std: float = _SQRT2,
    b_std: float = 0.0,
    out_features: int = 1,
    parameterization: str = "ntk",
) -> Serial:
    """The Myrtle-``depth`` network (depth 5, 7 or 10) of Shankar et al. 2020; see the module
    docstring for its layers and source."""
    if depth not in _MYRTLE:
        raise ValueError(f"myrtle depth must be one of {sorted(_MYRTLE)}, got {depth!r}")
    a, b, c = _MYRTLE[depth]
    conv = stax.Conv(
        None, 3, padding="same", w_std=w_std, b_std=b_std, parameterization=parameterization
    )
    block = (conv, stax.Relu())
    pool = stax.AvgPool(2, 2)
    layers = (
        block * a
        + (pool,)
        + block * b
        + (pool,)
        + block * c
        + (
            stax.GlobalAvgPool(),
            stax.Dense(out_features, w_std, b_std, parameterization=parameterization),
        )
    )
    return serial(*layers)


NAMES = ("mlp", "cnn", "cnn-gap", "cnn-vec", "myrtle5", "myrtle7", "myrtle10")


def get(name: str, **kwargs) -> Serial | MLP:
    """A preset by name (see ``NAMES``); keyword arguments go to the preset's function.

    ``"cnn"`` and ``"cnn-gap"`` are ``cnn(readout="gap")``, ``"cnn-vec"`` is
    ``cnn(readout="flatten")``, ``"myrtle5"`` (or ``"myrtle-5"``) is ``myrtle(5)``; ``"mlp"``
    is ``mlp(depth=1)`` unless ``depth`` is given.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key == "mlp":
        kwargs.setdefault("depth", 1)
        return mlp(**kwargs)
    if key in ("cnn", "cnn-gap"):
        return cnn(**{"readout": "gap", **kwargs})
    if key == "cnn-vec":
        return cnn(**{"readout": "flatten", **kwargs})
    if key.startswith("myrtle"):
        rest = key.removeprefix("myrtle").lstrip("-")
        if rest:
            if not rest.isdigit():
                raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(NAMES)}")
            kwargs["depth"] = int(rest)
        return myrtle(**kwargs)
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(NAMES)}")
