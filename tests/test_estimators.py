"""NTK estimators: scikit-learn's estimator checks and predictions against independent solves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

import widenet as wn
from widenet.estimators import (
    NTKSVC,
    NTKClassifier,
    NTKRegressor,
    dual_coefficients,
    kernel_ridge_solve,
)


# Every applicable check passes. Skipped by scikit-learn itself (SkipTest, not by us):
# check_array_api_input (needs SCIPY_ARRAY_API and an array-API library) and
# check_*_data_not_an_array (needs pandas, not installed).
@parametrize_with_checks(
    [NTKRegressor(), NTKClassifier(), NTKClassifier(probability=True, ridge=1e-3), NTKSVC()]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _regression_data(n=40, m=15, d=4, k=None, seed=0):
    rng = np.random.default_rng(seed)
    x, xt = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    w = rng.standard_normal((d,) if k is None else (d, k))
    return x, np.sin(x @ w), xt


def _gram(x1, x2=None, depth=3, kernel="ntk", w_std=2**0.5, b_std=0.1):
    arch = wn.mlp(depth, "relu", w_std=w_std, b_std=b_std)
    x2 = None if x2 is None else torch.as_tensor(x2)
    return getattr(arch.kernel(torch.as_tensor(x1), x2), kernel).numpy()


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
@pytest.mark.parametrize("k", [None, 3])
def test_regressor_equals_kernel_ridge(kernel, k):
    x, y, xt = _regression_data(k=k)
    ridge = 1e-3
    est = NTKRegressor(depth=2, kernel=kernel, ridge=ridge).fit(x, y)
    pred = est.predict(xt)
    assert pred.shape == y[:15].shape
    kxx, ktx = _gram(x, depth=2, kernel=kernel), _gram(xt, x, depth=2, kernel=kernel)
    lam = ridge * np.mean(np.diag(kxx))
    # Independent float64 solve of (K + lam I) alpha = y.
    ref = ktx @ np.linalg.solve(kxx + lam * np.eye(len(x)), y)
    np.testing.assert_allclose(pred, ref, rtol=1e-9, atol=1e-10)
    kr = KernelRidge(alpha=lam, kernel="precomputed").fit(kxx, y)
    np.testing.assert_allclose(pred, kr.predict(ktx), rtol=1e-8, atol=1e-10)
    # Ridgeless limit: interpolation of the training targets (both kernels are strictly PD on
    # distinct points; 1e-8 of the mean diagonal moves the fit by ~1e-8 * cond, measured < 1e-4).
    fit = NTKRegressor(depth=2, kernel=kernel, ridge=1e-8).fit(x, y).predict(x)
    np.testing.assert_allclose(fit, y, rtol=0, atol=1e-3)


def test_finite_time_equals_the_dynamics():
    x, y, xt = _regression_data()
    times = [0.5, 10.0, 1e3]
    kxx, ktx = _gram(x), _gram(xt, x)
    flow = wn.dynamics.gradient_flow_mse(
        torch.as_tensor(kxx), torch.as_tensor(y), times, ntk_test_train=torch.as_tensor(ktx)
    )
    for i, t in enumerate(times):
        pred = NTKRegressor(t=t, ridge=0.0).fit(x, y).predict(xt)
        np.testing.assert_allclose(pred, flow.test[i, :, 0].numpy(), rtol=1e-9, atol=1e-12)
    # Early stopping fits less: the training error falls with t (the flow is monotone).
    errs = [np.mean((NTKRegressor(t=t).fit(x, y).predict(x) - y) ** 2) for t in times]
    assert errs[0] > errs[1] > errs[2]
    # t = 0 is the initial (mean) output 0; t and learning_rate enter only as their product.
    np.testing.assert_array_equal(NTKRegressor(t=0.0).fit(x, y).predict(xt), 0.0)
    a = NTKRegressor(t=10.0, learning_rate=0.5).fit(x, y).predict(xt)
    b = NTKRegressor(t=5.0, learning_rate=1.0).fit(x, y).predict(xt)
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_dual_coefficients_without_sklearn():
    x, y, xt = _regression_data()
    k = torch.as_tensor(_gram(x))
    alpha = dual_coefficients(k, torch.as_tensor(y), ridge=0.1)
    lam = 0.1 * float(torch.diagonal(k).mean())
    ref = torch.linalg.solve(k + lam * torch.eye(len(x), dtype=torch.float64), torch.as_tensor(y))
    torch.testing.assert_close(alpha[:, 0], ref, rtol=1e-10, atol=1e-12)


def test_dual_coefficients_at_many_times_share_one_eigendecomposition():
    x, y, xt = _regression_data(k=2)
    kxx, ktx = torch.as_tensor(_gram(x)), torch.as_tensor(_gram(xt, x))
    times = np.array([0.0, 0.5, 10.0, math.inf, 1e3])
    alpha = dual_coefficients(kxx, y, ridge=1e-3, t=times, learning_rate=0.7)
    assert alpha.shape == (5, 40, 2)
    lam = 1e-3 * float(torch.diagonal(kxx).mean())
    # Independent reference: the dynamics' test outputs with the test kernel itself (its
    # eigen-solve), and the converged solution by a general LU solve.
    flow = wn.dynamics.gradient_flow_mse(
        kxx, y, times[[0, 1, 2, 4]], ntk_test_train=ktx, learning_rate=0.7, diag_reg=lam
    )
    torch.testing.assert_close(ktx @ alpha[[0, 1, 2, 4]], flow.test, rtol=1e-9, atol=1e-11)
    ref = torch.linalg.solve(kxx + lam * torch.eye(40, dtype=torch.float64), torch.as_tensor(y))
    torch.testing.assert_close(alpha[3], ref, rtol=1e-9, atol=1e-11)
    # The dynamics' own dual coefficients: f_t(x) = f_0(x) + K(x, X) α_t, with f_0 ≠ 0.
    f0 = np.random.default_rng(3).standard_normal(y.shape)
    a = wn.dynamics.gradient_flow_dual(kxx, y, [2.0, math.inf], f0_train=f0, diag_reg=lam)
    flow = wn.dynamics.gradient_flow_mse(
        kxx, y, [2.0, math.inf], ntk_test_train=kxx, f0_train=f0, f0_test=f0, diag_reg=lam
    )
    torch.testing.assert_close(torch.as_tensor(f0) + kxx @ a, flow.test, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="t must be"):
        dual_coefficients(kxx, y, t=[-1.0])


def test_kernel_ridge_solve_cholesky_and_its_errors():
    x, y, _ = _regression_data()
    k = torch.as_tensor(_gram(x))
    kept = k.clone()
    alpha = kernel_ridge_solve(k, y, ridge=1e-4)
    torch.testing.assert_close(k, kept, rtol=0, atol=0)  # not overwritten unless asked
    lam = 1e-4 * float(torch.diagonal(k).mean())
    ref = np.linalg.solve(kept.numpy() + lam * np.eye(40), y)
    np.testing.assert_allclose(alpha[:, 0].numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(kernel_ridge_solve(k, y, ridge=1e-4, overwrite=True), alpha)
    # Not positive definite: LAPACK's failure becomes an error naming ridge.
    with pytest.raises(ValueError, match="ridge > 0"):
        kernel_ridge_solve(-kept, y)
    with pytest.raises(ValueError, match="symmetric"):
        kernel_ridge_solve(kept + torch.triu(torch.ones(40, 40, dtype=torch.float64), 1), y)
    with pytest.raises(ValueError, match="shape"):
        kernel_ridge_solve(kept, y[:5])
    for bad in (math.nan, math.inf, -math.inf):
        broken = kept.clone()
        broken[3, 7] = broken[7, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            kernel_ridge_solve(broken, y)


def test_classifier_is_one_hot_kernel_regression():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 3))
    labels = np.array(["a", "b", "c"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)]
    xt = rng.standard_normal((20, 3))
    clf = NTKClassifier(depth=2, ridge=1e-2).fit(x, labels)
    np.testing.assert_array_equal(clf.classes_, ["a", "b", "c"])
    kxx, ktx = _gram(x, depth=2), _gram(xt, x, depth=2)
    onehot = (labels[:, None] == clf.classes_[None]).astype(float)
    lam = 1e-2 * np.mean(np.diag(kxx))
    out = ktx @ np.linalg.solve(kxx + lam * np.eye(60), onehot)
    np.testing.assert_allclose(clf.decision_function(xt), out, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(clf.predict(xt), clf.classes_[out.argmax(1)])
    assert clf.score(x, labels) == 1.0  # near-interpolation of the training labels


def _ece(proba, labels, bins=10):
    """Expected calibration error of the top-class confidence (Guo et al. 2017, eq. 3)."""
    conf, hit = proba.max(1), proba.argmax(1) == labels
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return sum(abs(conf[b == i].mean() - hit[b == i].mean()) * np.mean(b == i) for i in set(b))


def test_predict_proba_is_calibrated():
    from scipy.special import softmax
    from sklearn.metrics import log_loss

    # Labels drawn from known class probabilities p*(x) = softmax(x W): the Bayes log-loss and
    # the true probabilities are the references.
    rng = np.random.default_rng(0)
    w = 1.5 * np.array([[2.0, 0.0, -1.0], [0.0, 2.0, 1.0]])

    def draw(n):
        x = rng.standard_normal((n, 2))
        p = softmax(x @ w, axis=1)
        return x, (rng.random((n, 1)) > p.cumsum(1)).sum(1), p

    (x, y, _), (xt, yt, pt) = draw(400), draw(3000)
    clf = NTKClassifier(depth=2, ridge=0.1, probability=True).fit(x, y)
    proba = clf.predict_proba(xt)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(proba.argmax(1), clf.predict(xt))
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(xt)), proba, rtol=1e-10)
    raw = softmax(clf.decision_function(xt), axis=1)
    # Measured (seed 0): ECE 0.027 (untempered softmax: far overconfident-low, log-loss 0.81),
    # mean |p - p*| 0.056, log-loss 0.554 vs Bayes 0.500. Bounds leave ~2x room for the
    # sampling error of 3000 test points (ECE's is ~0.01) while a wrong temperature (T = 1
    # here, or the in-sample fit, T ~ 0) fails every one of them.
    assert _ece(proba, yt) < 0.06
    assert np.abs(proba - pt).mean() < 0.1
    assert log_loss(yt, proba) < log_loss(yt, pt) + 0.1
    assert log_loss(yt, proba) < log_loss(yt, raw) - 0.15
    assert 0.0 < clf.temperature_ < 1.0
    # Off by default (like SVC): no predict_proba attribute, so sklearn will not call it.
    assert not hasattr(NTKClassifier().fit(x, y), "predict_proba")
    with pytest.raises(ValueError, match="at least 2 training points"):
        NTKClassifier(probability=True).fit(x[:4], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="calibration_folds"):
        NTKClassifier(probability=True, calibration_folds=1).fit(x, y)


def test_binary_decision_function_and_svc_path():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3))
    y = (x[:, 0] + 0.3 * x[:, 2] > 0).astype(int)
    xt = rng.standard_normal((30, 3))
    clf = NTKClassifier(depth=1).fit(x, y)
    dec = clf.decision_function(xt)
    assert dec.shape == (30,)
    np.testing.assert_array_equal(clf.predict(xt), (dec > 0).astype(int))
    # The SVM path is SVC on the precomputed Gram matrix, computed independently here.
    svc = NTKSVC(depth=1, kernel="nngp", C=3.0).fit(x, y)
    ref = SVC(kernel="precomputed", C=3.0).fit(_gram(x, depth=1, kernel="nngp"), y)
    ktx = _gram(xt, x, depth=1, kernel="nngp")
    np.testing.assert_allclose(svc.decision_function(xt), ref.decision_function(ktx), rtol=1e-8)
    np.testing.assert_array_equal(svc.predict(xt), ref.predict(ktx))
    assert svc.score(xt, (xt[:, 0] + 0.3 * xt[:, 2] > 0).astype(int)) > 0.8


def test_pipeline_grid_search_and_cross_val_score():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), NTKClassifier())
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, x, y, cv=cv)
    # Iris: kernel methods reach 0.93-0.98; a broken estimator would be near 1/3.
    assert scores.mean() > 0.9, scores
    grid = GridSearchCV(
        pipe, {"ntkclassifier__depth": [1, 3], "ntkclassifier__ridge": [1e-4, 1e-1]}, cv=cv
    ).fit(x, y)
    assert grid.best_params_["ntkclassifier__depth"] in (1, 3)
    assert grid.best_score_ > 0.9
    svc = GridSearchCV(make_pipeline(StandardScaler(), NTKSVC()), {"ntksvc__C": [0.1, 10]}, cv=cv)
    assert svc.fit(x, y).best_score_ > 0.9
    est = NTKRegressor(depth=5, kernel="nngp", t=3.0)
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    assert copy.set_params(depth=2).depth == 2


@pytest.mark.parametrize(
    "params, match",
    [
        ({"depth": 0}, "depth"),
        ({"depth": 1.5}, "depth"),
        ({"kernel": "rbf"}, "kernel"),
        ({"ridge": -1.0}, "ridge"),
        ({"t": -1.0}, "t must be"),
        ({"t": float("nan")}, "t must be"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"w_std": 0.0}, "w_std"),
    ],
)
def test_bad_hyper_parameters(params, match):
    x, y, _ = _regression_data(n=10)
    with pytest.raises(ValueError, match=match):
        NTKRegressor(**params).fit(x, y)


def test_bad_inputs():
    x, y, xt = _regression_data(n=10)
    with pytest.raises(ValueError, match="NaN"):
        NTKRegressor().fit(np.where(x > 1, np.nan, x), y)
    est = NTKRegressor().fit(x, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(xt[:, :2])
    with pytest.raises(ValueError, match="C"):
        NTKSVC(C=0.0).fit(x, y > 0)
    with pytest.raises(ValueError, match="Unknown label type"):
        NTKClassifier().fit(x, y)
    # Duplicated points with ridge = 0 make the kernel singular: the Cholesky solve says so.
    with pytest.raises(ValueError, match="singular"):
        NTKRegressor(ridge=0.0).fit(np.vstack([x, x]), np.concatenate([y, y]))
    # ... while a finite time needs no inverse.
    NTKRegressor(ridge=0.0, t=5.0).fit(np.vstack([x, x]), np.concatenate([y, y]))
    assert math.isinf(NTKRegressor().t)


# ---- the command line: widenet fit-predict ----


def _invoke(*args):
    from typer.testing import CliRunner

    from widenet.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_cli_fit_predict_files_equal_the_library(tmp_path):
    import json

    x, y, xt = _regression_data(n=30, m=10)
    yt = np.sin(xt.sum(1))
    for name, arr in (("x", x), ("y", y), ("xt", xt), ("yt", yt)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "p.npz"
    args = ["--train", tmp_path / "x.npy", "--test", tmp_path / "xt.npy", "--out", out]
    args += ["--train-targets", tmp_path / "y.npy", "--test-targets", tmp_path / "yt.npy"]
    result = _invoke("fit-predict", *args, "--model", "regressor", "--depth", "2", "--time", "5")
    assert result.exit_code == 0, result.output
    # The CLI's σ_w, σ_b are every command's defaults (√2, 0; issue 17), not the estimators'.
    ref = NTKRegressor(depth=2, t=5.0, b_std=0.0).fit(x, y).predict(xt)
    np.testing.assert_allclose(np.load(out)["predictions"], ref, rtol=1e-12)
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["params"]["depth"] == 2 and metrics["params"]["t"] == 5.0
    assert "test_mse" in metrics


def test_cli_fit_predict_grid_search_and_svc(tmp_path):
    import json

    out = tmp_path / "c.npz"
    base = ["--train", "iris", "--test", "iris", "--n-test", "50", "--out", out]
    result = _invoke("fit-predict", *base, "--depth", "1", "--depth", "3", "--ridge", "0.1")
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["params"]["depth"] in (1, 3) and "cv_score" in metrics
    assert metrics["test_accuracy"] > 0.8  # iris; chance 1/3
    result = _invoke(
        "fit-predict", *base, "--model", "svc", "--C", "0.5", "--C", "5", "--overwrite"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["params"]["C"] in (0.5, 5.0)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model", "tree"], "--model"),
        (["--time", "-1"], "--time"),
        (["--depth", "0"], "depth"),
        (["--kernel", "rbf"], "kernel"),
    ],
)
def test_cli_fit_predict_bad_options(tmp_path, args, match):
    result = _invoke(
        "fit-predict", "--train", "iris", "--test", "iris", "--out", tmp_path / "o.npz", *args
    )
    assert result.exit_code == 2 and match in result.output, result.output


def test_kernel_ridge_solve_unchecked_equals_checked_and_still_checks_the_shape():
    # check=False skips only the finiteness/symmetry passes: the same LAPACK calls follow,
    # so the coefficients are bit-identical.
    from widenet.estimators import kernel_ridge_solve

    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    k = a @ a.T + 30 * torch.eye(30, dtype=torch.float64)
    y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    assert torch.equal(kernel_ridge_solve(k, y, check=False), kernel_ridge_solve(k, y))
    with pytest.raises(ValueError, match="square"):
        kernel_ridge_solve(k[:, :5], y, check=False)


# -- any architecture (issue 18: the estimators take wn.serial descriptions and presets) --------


def _digit_images(n=60):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x[:n] - x[:n].mean(0)) / (x[:n].std(0) + 1.0)
    return x, y[:n]


def test_estimator_with_architecture_equals_kernel_regression_by_hand():
    """NTKRegressor(architecture=cnn, in_shape) = K(x, X) K(X, X)⁻¹ y with the CNN's kernel."""
    x, y = _digit_images(40)
    arch = wn.presets.cnn(2, readout="gap")
    est = NTKRegressor(architecture=arch, in_shape=(1, 8, 8), ridge=0.0).fit(x[:30], y[:30])
    xi = torch.tensor(x, dtype=torch.float64).reshape(-1, 1, 8, 8)
    k_tr = arch.kernel(xi[:30]).ntk
    k_te = arch.kernel(xi[30:], xi[:30]).ntk
    expected = (k_te @ torch.linalg.solve(k_tr, torch.tensor(y[:30], dtype=torch.float64))).numpy()
    # Cholesky vs LU solve of the same well-conditioned system: agreement to ~1e-9 relative.
    np.testing.assert_allclose(est.predict(x[30:]), expected, rtol=1e-7, atol=1e-7)


def test_estimator_architecture_by_name_and_spec_and_clone():
    x, y = _digit_images(60)
    a = NTKClassifier(architecture="cnn-vec", in_shape=(1, 8, 8)).fit(x[:40], y[:40])
    spec = {"preset": "cnn", "readout": "flatten"}
    b = clone(NTKClassifier(architecture=spec, in_shape=(1, 8, 8))).fit(x[:40], y[:40])
    assert a.predict(x[40:]).shape == (20,)
    np.testing.assert_array_equal(a.predict(x[40:]), b.predict(x[40:]))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"architecture": "cnn", "in_shape": (1, 8)}, "in_shape .* has 64 features|needs 8"),
        ({"architecture": "cnn", "in_shape": (0, 8, 8)}, "in_shape must be"),
        ({"in_shape": (1, 8, 8)}, "in_shape applies only with architecture"),
        ({"architecture": "cnn", "in_shape": (1, 8, 8), "depth": 5}, "depth .*ignored"),
        ({"architecture": "no-such-preset", "in_shape": (1, 8, 8)}, "no-such-preset"),
    ],
)
def test_estimator_architecture_bad_input(params, match):
    x, y = _digit_images(20)
    with pytest.raises(ValueError, match=match):
        NTKRegressor(**params).fit(x, y)
