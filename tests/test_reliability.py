"""Reliability of the library (issue 16, items 4 and 5): duplicate inputs, contradictory labels,
non-overlapping domains, wrongly shaped or sized arguments, devices, overflow advice.

The kernel-store items (2, 3, 6 and the fault injection of 7) are in test_reliability_store.py.
"""

from __future__ import annotations

import functools
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import widenet as wn
from widenet import convergence, dynamics, landscape, shift
from widenet._checks import as_tensor, check_device

DEEP_RELU = wn.mlp(10, "relu", math.sqrt(2.0), 0.0)


def _dup_inputs(seed, dtype, n=6, d=500):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[3] = x[0]
    return x


# ---- item 4: duplicate inputs -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicate_inputs_give_bit_identical_kernel_rows(dtype):
    # The case: ReLU depth 10, d = 500, x3 = x0. Before the fix 9 of these 8 seeds x
    # 2 kernels had rows differing (up to 1.5e-3 relative in float32, 4.7e-8 in float64): the
    # GEMM's c(x0, x3) is not the self-covariance q(x0) bit for bit, and arccos amplifies it.
    for seed in range(8):
        x = _dup_inputs(seed, dtype)
        k = DEEP_RELU.kernel(x)
        for kern in (k.nngp, k.ntk):
            assert torch.equal(kern[0], kern[3]) and torch.equal(kern[:, 0], kern[:, 3])
            # The duplicate pair's entry is the diagonal's (rho = 1 exactly).
            assert kern[0, 3] == kern[0, 0] == kern[3, 3]
            # PSD to rounding: the negative eigenvalue of the issue (float32) is gone.
            ev = torch.linalg.eigvalsh(kern.double())
            assert ev.min() >= -6 * torch.finfo(dtype).eps * ev.max()
    # Across a cross kernel: a test point equal to a training point has the training row.
    x = _dup_inputs(0, torch.float32)
    xt = torch.cat([x[2:3], torch.randn(2, 500)])
    kx = DEEP_RELU.kernel(xt, x)
    assert torch.equal(kx.ntk[0], DEEP_RELU.kernel(x).ntk[2])
    # Distinct inputs take no part: same kernel as the tile-by-tile engine without duplicates.
    x = torch.randn(6, 500, generator=torch.Generator().manual_seed(9))
    assert torch.equal(DEEP_RELU.kernel(x).ntk, DEEP_RELU.kernel(x, tile=2).ntk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contradictory_labels_on_identical_inputs_refused_at_t_inf(dtype):
    x = _dup_inputs(1, dtype)
    k = DEEP_RELU.kernel(x).ntk
    y = torch.arange(6, dtype=dtype)  # y0 = 0, y3 = 3 for one and the same input
    with pytest.raises(ValueError, match="training points 0 and 3 are identical.*different"):
        dynamics.gradient_flow_mse(k, y, math.inf)
    # A kernel computed elsewhere, whose duplicate rows differ at its rounding level (the
    # issue's float64 1.7e-8 relative): refused too, not answered with f(x0) != f(x3).
    kk = k.double().clone()
    kk[3] *= 1 + 1e-8
    kk[:, 3] = kk[3]
    kk[3, 3] = kk[0, 0] * (1 + 2e-8)
    with pytest.raises(ValueError, match="identical to the kernel's rounding level"):
        dynamics.gradient_flow_mse(kk, y.double(), math.inf)
    with pytest.raises(ValueError, match="training points 0 and 3"):
        dynamics.gp_ensemble_mse(k, k, k[:2], k[:2], k[:2, :2], y, math.inf)
    with pytest.raises(ValueError, match="steps must be finite integers"):
        dynamics.gradient_descent_mse(k, y, math.inf)
    # Finite times are well defined; with diag_reg > 0 (kernel ridge regression) the output
    # at the duplicated input is one number, the average 1.5 of its targets (to O(diag_reg):
    # 1.5 + 8e-7 measured with diag_reg = 1e-6 lambda_max, in both dtypes).
    assert dynamics.gradient_flow_mse(k, y, 10.0).train.isfinite().all()
    lmax = float(torch.linalg.eigvalsh(k.double()).max())
    flow = dynamics.gradient_flow_mse(
        k, y, math.inf, ntk_test_train=k[[0, 3]], diag_reg=1e-6 * lmax
    )
    f0, f3 = flow.test[0, :, 0].tolist()
    assert f0 == f3 and f0 == pytest.approx(1.5, abs=1e-5)
    # Consistent labels on duplicates: not contradictory, only singular (the eigenvalue test).
    y_ok = y.clone()
    y_ok[3] = y_ok[0]
    with pytest.raises(ValueError, match="is singular"):
        dynamics.gradient_flow_mse(k, y_ok, math.inf)
    assert dynamics.coinciding_pairs(k).tolist() == [[0, 3]]


# ---- item 5: silent wrong results and unclear errors ------------------------------------------


def test_covariate_shift_weights_refuse_non_overlapping_domains():
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(200, 2))
    # P(target | x) = 0 everywhere: all-NaN weights before; now a clear error.
    never = DummyClassifier(strategy="constant", constant=0)
    with pytest.raises(ValueError, match="domains do not overlap"):
        shift.covariate_shift_weights(xs, rng.normal(size=(100, 2)), never)
    # Far-apart domains: raw weights ~1e-5 that normalisation would turn into ~1: a warning.
    xt = rng.normal(size=(100, 2)) + 6.0
    with pytest.warns(RuntimeWarning, match="barely overlap"):
        cw = shift.covariate_shift_weights(xs, xt, LogisticRegression(C=0.1))
    assert cw.raw_mean < shift.MIN_RAW_MEAN
    # Overlapping domains: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        shift.covariate_shift_weights(xs, rng.normal(size=(100, 2)) + 0.3)


def test_lambda0_wrongly_shaped_h_inf_detected():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    h = convergence.gram_infinity(x)
    assert convergence.lambda0(x, h_inf=h) == pytest.approx(convergence.lambda0(x), rel=1e-12)
    bad = [
        (h[:7, :7], r"h_inf must be H-infinity of x, shape \(8, 8\).*got \(7, 7\)"),
        (h[0], r"shape \(8, 8\).*got \(8,\)"),
        (torch.cat([h, h]), r"got \(16, 8\)"),
        (h + torch.triu(torch.ones(8, 8), 1), "h_inf must be symmetric"),
        (torch.full((8, 8), math.nan), "h_inf contains 64 NaN"),
    ]
    for h_bad, match in bad:
        with pytest.raises(ValueError, match=match):
            convergence.lambda0(x, h_inf=h_bad)


def test_find_critical_point_wrong_feature_size_named():
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, dtype=torch.float64)
    for fn in (landscape.find_critical_point, landscape.gradient, landscape.loss_function):
        with pytest.raises(ValueError, match="x has 3 features.*first layer expects 2"):
            fn(model, x, y)


def test_device_helper_clear_errors():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'.*'gpu'.*did you mean"):
        check_device("gpu")
    for bad in (1.5, -1, True, None):
        with pytest.raises(ValueError, match="device must be a string or a torch.device"):
            check_device(bad)
    with pytest.raises(ValueError, match="x_device must be"):
        check_device("tpu!", "x_device")
    with pytest.raises(ValueError, match="device='gpu'|'gpu'"):
        as_tensor([1.0], "x", device="gpu")  # every as_tensor(device=...) goes through it
    with pytest.raises(ValueError, match="device"):
        convergence.TwoLayerReLU(2, 4, seed=0, device="gpu")
    if not torch.cuda.is_available():
        for dev in ("cuda", "cuda:1", 0, torch.device("cuda")):
            with pytest.raises(ValueError, match="CUDA is not available on this machine"):
                check_device(dev)
        with pytest.raises(ValueError, match="CUDA is not available"):
            as_tensor([1.0], "x", device="cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


@functools.cache
def _kernel_file() -> Path:
    """A small saved Kernel (one per test session, in a temporary folder)."""
    path = Path(tempfile.mkdtemp(prefix="widenet-test-")) / "k.npz"
    wn.Kernel(torch.eye(2), torch.eye(2)).save(path)
    return path


def _device_entry_points():
    """Every public function or class of widenet that takes ``device=`` (issue 16)."""
    from widenet import estimators, layers, phases
    from widenet import random_features as rf

    return {
        "mlp.network": lambda d: wn.mlp(2).network(3, 8, seed=0, device=d),
        "serial.network": lambda d: wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1)).network(
            3, 8, seed=0, device=d
        ),
        "layers.Dense": lambda d: layers.Dense(3, 2, device=d),
        "relu_features": lambda d: rf.relu_features(3, 4, seed=0, device=d),
        "fourier_features": lambda d: rf.fourier_features(3, 4, seed=0, device=d),
        "phases.init_params": lambda d: phases.init_params(
            phases.Scaling(4, 1.0, 1.0, 1.0), 3, generator=torch.Generator(), device=d
        ),
        "infinite_width_gram": lambda d: estimators.infinite_width_gram(np.eye(3), device=d),
        "TwoLayerReLU": lambda d: convergence.TwoLayerReLU(2, 4, seed=0, device=d),
        "Kernel.load": lambda d: wn.Kernel.load(_kernel_file(), device=d),
    }


@pytest.mark.parametrize("name", sorted(_device_entry_points()))
def test_every_device_argument_goes_through_check_device(name):
    build = _device_entry_points()[name]
    build("cpu")  # a valid device is accepted
    build(torch.device("cpu"))
    # check_device's own message (torch's would be a RuntimeError without the hint).
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'.*did you mean 'cuda'"):
        build("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            build("cuda")


def test_overflow_advice_fits_the_dtype():
    arch = wn.mlp(3, "relu", math.sqrt(2.0), 0.1)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="pass dtype=torch.float64"):
        arch.kernel(x * 1e19)
    with pytest.raises(FloatingPointError, match="overflowed in torch.float64") as err:
        arch.kernel(x.double() * 1e160)
    assert "dtype=torch.float64" not in str(err.value) and "rescale the inputs" in str(err.value)
