"""wn.shift against independent computations: analytic density ratios, known priors, Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures

from widenet import shift

# --------------------------------------------------------------------------------------------
# Covariate shift


def _gaussians(n_s, n_t, mu, seed):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n_s, len(mu)))
    xt = rng.standard_normal((n_t, len(mu))) + mu
    return xs, xt


def _log_rmse(w, true):
    return float(np.sqrt(np.mean((np.log(w) - np.log(true)) ** 2)))


def test_covariate_weights_approach_the_gaussian_density_ratio():
    # Source N(0, I), target N(mu, I): w(x) = exp(mu.x - |mu|^2/2), log-linear in x, so
    # logistic regression is well specified and the weights are consistent. Unequal sample
    # sizes (n_t = n_s / 2) check the prior-ratio correction n_s / n_t (a factor 2 otherwise).
    mu = np.array([0.5, -0.3])
    errors = {}
    for n in (2000, 20000):
        errs = []
        for seed in range(3):
            xs, xt = _gaussians(n, n // 2, mu, seed)
            cw = shift.covariate_shift_weights(xs, xt, normalize=False)
            assert cw.prior_ratio == 2.0 and cw.n_clipped == 0 and cw.scale == 1.0
            errs.append(_log_rmse(cw.weights, np.exp(xs @ mu - mu @ mu / 2)))
        errors[n] = np.mean(errs)
    # The error is the fitted (intercept, slope) error, std ~ sqrt(1 / (N p (1-p) Var x)) ~
    # sqrt(4.5 / N) per coefficient for N = 1.5 n: ~0.012 at n = 20000, times ~1.7 for the
    # spread of x. Measured 0.020 (n = 20000) and 0.080 (n = 2000), mean of 3 seeds; the bound is
    # ~2.5x the measurement.
    assert errors[20000] < 0.05
    # O(1/sqrt(n)): a factor sqrt(10) = 3.2 expected between the two sizes.
    assert 2.0 < errors[2000] / errors[20000] < 5.0


def test_covariate_weights_diagnostics_match_the_analytic_ratio():
    mu = np.array([0.5, -0.3])
    xs, xt = _gaussians(20000, 20000, mu, 7)
    cw = shift.covariate_shift_weights(xs, xt, normalize=False)
    # E_p[w] = 1 and E_p[w^2] = exp(|mu|^2), so ESS / n -> exp(-|mu|^2) = 0.712. The sample
    # mean of w has std sqrt((e^0.34 - 1) / n) = 0.0045 and that of w^2 sqrt((e^(6 * 0.34) -
    # e^0.68) / n) = 0.019, so ESS / n has std ~0.01: 0.03 is 3 std (measured 0.708, raw mean
    # 0.997).
    assert abs(cw.raw_mean - 1.0) < 0.02
    assert abs(cw.ess_fraction - np.exp(-mu @ mu)) < 0.03
    # New points go through the same fitted classifier: equal to the source weights there.
    np.testing.assert_allclose(cw(xs[:50]), cw.raw_weights[:50], rtol=1e-12)
    assert cw.summary()["ess"] == pytest.approx(cw.ess)


def test_any_sklearn_classifier_variance_shift():
    # Source N(0, 1), target N(0, s^2): log w = -log s + x^2 (1 - 1/s^2) / 2 is quadratic, so a
    # logistic regression on (x, x^2) is well specified (a plain one is not). In the bulk
    # |x| < 2 the log-weights are recovered to ~0.05 (coefficient std ~0.01 at N = 30000, the
    # x^2 term multiplied by up to 4); measured 0.006, and 0.26 for the plain (linear) one.
    rng = np.random.default_rng(3)
    s = 1.4
    xs, xt = rng.standard_normal((20000, 1)), s * rng.standard_normal((10000, 1))
    clf = make_pipeline(PolynomialFeatures(2), LogisticRegression(C=100.0, max_iter=2000))
    cw = shift.covariate_shift_weights(xs, xt, clf, normalize=False)
    true = np.exp(-np.log(s) + xs[:, 0] ** 2 * (1 - 1 / s**2) / 2)
    bulk = np.abs(xs[:, 0]) < 2
    assert _log_rmse(cw.weights[bulk], true[bulk]) < 0.06
    linear = shift.covariate_shift_weights(xs, xt, normalize=False)
    assert _log_rmse(linear.weights[bulk], true[bulk]) > 0.1  # misspecified: visibly worse


def test_clipping_normalisation_and_folds_are_reported():
    xs, xt = _gaussians(3000, 1000, np.array([1.5, 0.0]), 1)
    base = shift.covariate_shift_weights(xs, xt, normalize=False)
    cw = shift.covariate_shift_weights(xs, xt, clip=2.0, normalize=True)
    np.testing.assert_allclose(cw.raw_weights, base.raw_weights)
    assert cw.n_clipped == int((base.raw_weights > 2.0).sum()) > 0
    clipped = np.minimum(base.raw_weights, 2.0)
    assert cw.scale == pytest.approx(1 / clipped.mean())
    np.testing.assert_allclose(cw.weights, clipped / clipped.mean())
    assert cw.weights.mean() == pytest.approx(1.0)
    ess = clipped.sum() ** 2 / (clipped**2).sum()
    assert cw.ess == pytest.approx(ess) and cw.ess_fraction == pytest.approx(ess / 3000)
    # Out-of-fold probabilities of the same well-specified model: nearly the in-sample ones.
    folded = shift.covariate_shift_weights(xs, xt, folds=5, normalize=False)
    assert folded.folds == 5
    assert np.corrcoef(np.log(folded.weights), np.log(base.weights))[0, 1] > 0.99


def test_effective_sample_size_against_the_weighted_mean_variance():
    # Direct computation: for fixed weights and i.i.d. N(0, 1) values, the variance of the
    # self-normalised weighted mean is sum w^2 / (sum w)^2 = 1 / ESS. 20000 Monte Carlo draws
    # estimate a variance to relative std sqrt(2 / 20000) = 0.01; 0.05 is 5 std.
    rng = np.random.default_rng(0)
    w = rng.lognormal(0.0, 1.0, size=200)
    v = rng.standard_normal((20000, 200))
    means = v @ w / w.sum()
    assert 1 / means.var() == pytest.approx(shift.effective_sample_size(w), rel=0.05)
    assert shift.effective_sample_size(np.ones(17)) == pytest.approx(17)
    assert shift.effective_sample_size([0, 0, 3.0, 0]) == pytest.approx(1)
    assert shift.effective_sample_size(torch.tensor([1.0, 1.0])) == pytest.approx(2)


def test_feature_shift_true_weights():
    # The true weights reweight the source onto the target: the weighted mean of any function
    # over the source equals its target mean up to sampling error (~ sd / sqrt(ESS)).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40000, 3))
    src, tgt, w = shift.feature_shift(x, 1.0, feature=0, seed=2)
    assert len(np.intersect1d(src, tgt)) == 0
    z = x[:, 0]
    assert z[src].mean() < -0.3 < 0.3 < z[tgt].mean()  # the selection moved the feature
    ess = shift.effective_sample_size(w)
    for f in (z, z**2, x[:, 1]):
        se = np.sqrt(f[src].var() / ess + f[tgt].var() / len(tgt))
        assert abs(np.average(f[src], weights=w) - f[tgt].mean()) < 4 * se
    # E_p[w] = 1 for the true ratio (relative std of the mean ~ sqrt(1/ESS)).
    assert abs(w.mean() - 1) < 4 / np.sqrt(ess)
    src2, _, _ = shift.feature_shift(x[:2000], 1.0, feature="pc1", seed=0)
    assert len(src2) > 0


# --------------------------------------------------------------------------------------------
# Label shift


def _draw_predictions(labels, confusion, rng):
    """f(x) | y ~ column y of P(f = i | y)."""
    cum = np.cumsum(confusion[:, labels].T, axis=1)
    return (rng.random(len(labels))[:, None] > cum).sum(1)


P_PRED = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7]])  # P(f = i | y = j)


def _bbse_mse(n, p, q, seeds):
    errs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ys, yt = rng.choice(3, n, p=p), rng.choice(3, n, p=q)
        est = shift.bbse(_draw_predictions(ys, P_PRED, rng), ys, _draw_predictions(yt, P_PRED, rng))
        errs.append(np.sum((est.weights - q / p) ** 2))
    return float(np.mean(errs))


def test_bbse_recovers_known_weights_at_rate_one_over_sqrt_n():
    p, q = np.array([0.3, 0.3, 0.4]), np.array([0.6, 0.3, 0.1])
    sizes = (1000, 10000, 100000)
    mse = [_bbse_mse(n, p, q, range(20)) for n in sizes]
    # Lipton et al. Thm. 3: ||w_hat - w||^2 = O(1/n), i.e. an error O(1/sqrt(n)): the log-log
    # slope of the MSE is -1 (20 seeds each: the MSE's relative std is ~0.3, so the slope over
    # two decades is within -1 +- 0.15).
    slope = np.polyfit(np.log(sizes), np.log(mse), 1)[0]
    assert -1.2 < slope < -0.8, mse
    assert mse[-1] < 1e-3  # measured 4e-4 (n * MSE ~ 41-46 at every n)


def test_bbse_fields_and_soft_predictions():
    rng = np.random.default_rng(0)
    p, q = np.array([0.3, 0.3, 0.4]), np.array([0.6, 0.3, 0.1])
    ys, yt = rng.choice(3, 50000, p=p), rng.choice(3, 50000, p=q)
    # Labels given as 10, 20, 30: classes are sorted labels, not indices.
    classes = np.array([10, 20, 30])
    ps, pt = _draw_predictions(ys, P_PRED, rng), _draw_predictions(yt, P_PRED, rng)
    est = shift.bbse(classes[ps], classes[ys], classes[pt])
    assert est.classes.tolist() == [10, 20, 30]
    # C_hat is the empirical joint: compare with a brute-force count.
    brute = np.array([[np.mean((ps == i) & (ys == j)) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(est.confusion, brute)
    np.testing.assert_allclose(est.source_prior, np.bincount(ys) / len(ys))
    np.testing.assert_allclose(est.target_prediction_mean, np.bincount(pt) / len(pt))
    np.testing.assert_allclose(est.weights, np.linalg.solve(brute, est.target_prediction_mean))
    # q_hat = w_hat p_hat; sampling error of q ~ 0.01 at n = 50000 (n * MSE ~ 38 above).
    np.testing.assert_allclose(est.target_prior, q, atol=0.02)
    np.testing.assert_allclose(est.sample_weights([30, 10]), est.weights[[2, 0]])
    # Soft BBSE: a calibrated soft predictor f(x) = column of P_PRED for x's class.
    soft_s, soft_t = P_PRED[:, ys].T, P_PRED[:, yt].T
    soft = shift.bbse(soft_s, ys, soft_t)
    np.testing.assert_allclose(soft.weights, q / p, atol=0.05)


def test_bbse_regularised_and_singular():
    rng = np.random.default_rng(1)
    ys, yt = rng.choice(3, 5000), rng.choice(3, 5000, p=[0.5, 0.3, 0.2])
    ps, pt = _draw_predictions(ys, P_PRED, rng), _draw_predictions(yt, P_PRED, rng)
    exact = shift.bbse(ps, ys, pt)
    # The ridge solution tends to the exact one as lambda -> 0, to "no shift" as lambda -> inf.
    np.testing.assert_allclose(shift.bbse(ps, ys, pt, regularization=1e-12).weights, exact.weights)
    np.testing.assert_allclose(shift.bbse(ps, ys, pt, regularization=1e6).weights, 1, atol=1e-4)
    # A predictor that never outputs class 2: C_hat has a zero row, singular.
    collapsed = np.minimum(ps, 1)
    with pytest.raises(np.linalg.LinAlgError, match=r"singular.*never predicted.*\[2\]"):
        shift.bbse(collapsed, ys, np.minimum(pt, 1), classes=[0, 1, 2])
    reg = shift.bbse(collapsed, ys, np.minimum(pt, 1), classes=[0, 1, 2], regularization=1e-3)
    assert np.isfinite(reg.weights).all() and reg.condition_number == float("inf")


def test_correct_probabilities_is_bayes_with_the_target_prior():
    # Two 1-D Gaussian classes: p_s(y|x) from priors p, the target posterior from priors q by
    # Bayes' rule directly; the correction with w = q/p must give the latter.
    x = np.linspace(-3, 3, 13)
    like = np.stack([np.exp(-((x + 1) ** 2) / 2), np.exp(-((x - 1) ** 2) / 2)], 1)
    p, q = np.array([0.7, 0.3]), np.array([0.2, 0.8])
    post_s = like * p / (like * p).sum(1, keepdims=True)
    post_t = like * q / (like * q).sum(1, keepdims=True)
    np.testing.assert_allclose(shift.correct_probabilities(post_s, q / p), post_t, rtol=1e-12)


def test_priors_and_sampling():
    np.testing.assert_allclose(shift.tweak_one_prior(4, 2, 0.7), [0.1, 0.1, 0.7, 0.1])
    d = shift.dirichlet_prior(10, 0.1, seed=3)
    assert d.shape == (10,) and d.sum() == pytest.approx(1)
    assert (shift.dirichlet_prior(10, 0.1, seed=3) == d).all()
    labels = np.repeat(np.arange(3), [50, 30, 20])
    prior = np.array([0.1, 0.2, 0.7])
    idx = shift.sample_with_prior(labels, prior, 20000, seed=0)
    # Multinomial counts: std of a frequency <= sqrt(0.25 / 20000) = 0.0035.
    np.testing.assert_allclose(np.bincount(labels[idx]) / 20000, prior, atol=0.015)


def test_two_sample_test_level_and_power():
    # Monte Carlo over seeds: under no shift the chi-square test rejects at alpha = 0.05 with
    # probability ~0.05 (400 seeds: std 0.011, bounds ~2.5 std); under a tweak-one shift
    # of 0.2 -> 0.4 on one class, with 500 + 500 predictions, nearly always (power ~1).
    p = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    q = shift.tweak_one_prior(5, 0, 0.4)
    null, power = [], []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        null.append(shift.label_shift_test(rng.choice(5, 300, p=p), rng.choice(5, 300, p=p)))
        if seed < 50:
            alt = shift.label_shift_test(rng.choice(5, 500, p=p), rng.choice(5, 500, p=q))
            power.append(alt.reject(0.05))
    rate = np.mean([t.reject(0.05) for t in null])
    assert 0.025 <= rate <= 0.08, rate
    assert np.mean(power) >= 0.9
    # The p-values are uniform under the null: a KS distance ~ 1/sqrt(400) = 0.05.
    pv = np.sort([t.p_value for t in null])
    assert np.max(np.abs(pv - (np.arange(400) + 0.5) / 400)) < 0.1


def test_permutation_and_g_tests():
    # Small samples (where the asymptotic chi-square is doubtful): the permutation test keeps
    # its level (200 seeds: std 0.015; p-values on a grid of 1/201).
    rates = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        t = shift.label_shift_test(
            rng.choice(4, 30), rng.choice(4, 30), method="permutation", n_permutations=200, seed=1
        )
        rates.append(t.reject(0.05))
    assert 0.01 <= np.mean(rates) <= 0.1
    rng = np.random.default_rng(0)
    s, t = rng.choice(4, 2000), rng.choice(4, 2000, p=[0.3, 0.3, 0.2, 0.2])
    chi2 = shift.label_shift_test(s, t)
    g = shift.label_shift_test(s, t, method="g")
    perm = shift.label_shift_test(s, t, method="permutation", n_permutations=500)
    # Asymptotically equivalent statistics at n = 4000 (3 degrees of freedom).
    assert chi2.dof == g.dof == perm.dof == 3
    assert g.statistic == pytest.approx(chi2.statistic, rel=0.05)
    assert perm.statistic == pytest.approx(chi2.statistic)
    # Probabilities are tested through their argmax; identical samples never reject.
    probs = np.eye(4)[s]
    assert shift.label_shift_test(probs, t).statistic == pytest.approx(chi2.statistic)
    assert shift.label_shift_test([1, 1, 1], [1, 1]).p_value == 1.0


# --------------------------------------------------------------------------------------------
# Weighted ERM


def test_weighted_loss_is_the_brute_force_weighted_mean():
    losses, w = torch.rand(7, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    brute = sum(float(w[i] * losses[i]) for i in range(7)) / sum(float(v) for v in w)
    assert float(shift.weighted_loss(losses, w)) == pytest.approx(brute, rel=1e-14)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_fit_weighted_equals_training_on_duplicated_data(loss):
    # Integer weights: the weighted risk is the mean over a data set where point i appears w_i
    # times, so full-batch training gives the same parameters (float64: up to rounding).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3))
    y = rng.integers(0, 3, 20) if loss == "cross_entropy" else rng.standard_normal((20, 3))
    w = rng.integers(0, 4, 20).astype(float)
    w[0] = 1.0
    rep = np.repeat(np.arange(20), w.astype(int))

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        ).double()

    a, b = net(), net()
    ha = shift.fit_weighted(a, x, y, w, loss=loss, steps=30, lr=0.05)
    hb = shift.fit_weighted(b, x[rep], y[rep], None, loss=loss, steps=30, lr=0.05)
    np.testing.assert_allclose(ha, hb, rtol=1e-10)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-12)
    assert ha[-1] < ha[0]
    # Minibatches and a custom optimizer run and are reproducible with the seed.
    c, d = net(), net()
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    hc = shift.fit_weighted(c, x, y, w, loss=loss, steps=10, batch_size=8, optimizer=sgd)
    hd = shift.fit_weighted(d, x, y, w, loss=loss, steps=10, batch_size=8, optimizer=sgd)
    assert hc == hd


def test_default_optimizer_is_adam_with_lr_and_weight_decay():
    # The default optimizer against an explicit torch.optim.Adam: lr and weight_decay must be
    # passed through (the same float64 trajectory up to rounding).
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 4)), rng.integers(0, 2, 30)
    w = rng.random(30)

    def net():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))

    a, b = net().double(), net().double()
    shift.fit_weighted(a, x, y, w, steps=25, lr=0.03, weight_decay=0.01)
    adam = lambda params: torch.optim.Adam(params, lr=0.03, weight_decay=0.01)  # noqa: E731
    shift.fit_weighted(b, x, y, w, steps=25, optimizer=adam)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


def test_fit_weighted_sklearn_equals_duplicated_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    y = (x[:, 0] + 0.5 * rng.standard_normal(60) > 0).astype(int)
    w = rng.integers(1, 4, 60).astype(float)
    rep = np.repeat(np.arange(60), w.astype(int))
    est = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)
    weighted = shift.fit_weighted_sklearn(est, x, y, w)
    # sklearn's penalty is C-scaled against the *sum* of sample weights, as for duplicated rows.
    dup = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(x[rep], y[rep])
    np.testing.assert_allclose(weighted.coef_, dup.coef_, rtol=1e-5)
    assert not hasattr(est, "coef_")  # cloned, the argument untouched
    pipe = make_pipeline(PolynomialFeatures(1), LogisticRegression(tol=1e-10, max_iter=10000))
    assert shift.fit_weighted_sklearn(pipe, x, y, w).score(x, y) > 0.7
    with pytest.raises(TypeError, match="sample_weight"):
        shift.fit_weighted_sklearn(KNeighborsClassifier(), x, y, w)


def test_importance_weighting_corrects_a_misspecified_regression():
    # Shimodaira (2000)'s example: y = -x + x^3 + noise, source x ~ N(0.5, 0.5^2), target
    # N(0, 0.3^2), a straight-line fit. Unweighted least squares fits the source region; the
    # weighted fit (true weights, and weights from the domain classifier on (x, x^2)) fits the
    # target region: its target MSE is several times smaller (measured 0.003 vs 0.17).
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(0.5, 0.5, (2000, 1)), rng.normal(0.0, 0.3, (2000, 1))
    f = lambda x: -x[:, 0] + x[:, 0] ** 3  # noqa: E731
    ys = f(xs) + 0.1 * rng.standard_normal(2000)
    gauss = lambda x, m, s: np.exp(-((x[:, 0] - m) ** 2) / (2 * s**2)) / s  # noqa: E731
    w_true = gauss(xs, 0.0, 0.3) / gauss(xs, 0.5, 0.5)
    clf = make_pipeline(PolynomialFeatures(2), LogisticRegression(C=100.0, max_iter=2000))
    w_hat = shift.covariate_shift_weights(xs, xt, clf).weights

    def target_mse(weights):
        model = shift.fit_weighted_sklearn(LinearRegression(), xs, ys, weights)
        return float(np.mean((model.predict(xt) - f(xt)) ** 2))

    plain = target_mse(np.ones(2000))
    assert target_mse(w_true) < plain / 3
    assert target_mse(w_hat) < plain / 3


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs():
    rng = np.random.default_rng(0)
    xs, xt = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    with pytest.raises(ValueError, match="same number of features"):
        shift.covariate_shift_weights(xs, xt[:, :2])
    bad = xs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x_source contains 1 NaN"):
        shift.covariate_shift_weights(bad, xt)
    with pytest.raises(ValueError, match="clip must be > 0"):
        shift.covariate_shift_weights(xs, xt, clip=0.0)
    with pytest.raises(TypeError, match="predict_proba"):
        shift.covariate_shift_weights(xs, xt, LinearRegression())
    ys = rng.integers(0, 3, 20)
    with pytest.raises(ValueError, match=r"labels not in classes \[0, 1, 2\]: \[7\]"):
        shift.bbse(ys, ys, np.r_[ys[:-1], 7], classes=[0, 1, 2])
    with pytest.raises(ValueError, match="source_pred has 19 labels for 20 points"):
        shift.bbse(ys[:-1], ys, ys)
    with pytest.raises(ValueError, match="integer class labels"):
        shift.bbse(ys + 0.5, ys, ys)
    with pytest.raises(ValueError, match="sum to 1"):
        shift.bbse(np.full((20, 3), 0.5), ys, np.full((20, 3), 1 / 3))
    with pytest.raises(ValueError, match="must both be labels or both probabilities"):
        shift.bbse(ys, ys, np.full((20, 3), 1 / 3))
    with pytest.raises(ValueError, match="regularization must be >= 0"):
        shift.bbse(ys, ys, ys, regularization=-1.0)
    with pytest.raises(ValueError, match="weights must be >= 0, got 1 negative"):
        shift.fit_weighted_sklearn(LogisticRegression(), xs, ys, np.r_[-1.0, np.ones(19)])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        shift.effective_sample_size([1.0, -0.5])
    with pytest.raises(ValueError, match="weights contains NaN"):
        shift.effective_sample_size([1.0, np.nan])
    with pytest.raises(ValueError, match=r"weights must have shape \(20,\)"):
        shift.fit_weighted(torch.nn.Linear(3, 3), xs, ys, np.ones(5))
    with pytest.raises(ValueError, match="y has 19 labels for 20 points"):
        shift.fit_weighted(torch.nn.Linear(3, 3), xs, ys[:-1])
    with pytest.raises(ValueError, match="loss must be one of"):
        shift.fit_weighted(torch.nn.Linear(3, 3), xs, ys, loss="hinge")
    with pytest.raises(ValueError, match="method must be"):
        shift.label_shift_test(ys, ys, method="mmd")
    with pytest.raises(ValueError, match="prior must be >= 0 and sum to 1"):
        shift.sample_with_prior(ys, [0.5, 0.6, -0.1], 10)
    with pytest.raises(ValueError, match="rho must be in"):
        shift.tweak_one_prior(3, 0, 1.5)
    with pytest.raises(ValueError, match="feature 0 is constant|is constant"):
        shift.feature_shift(np.c_[np.ones(20), xs], 1.0, feature=0)
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0"):
        shift.correct_probabilities(np.full((2, 2), 0.5), [1.0, -1.0])


def test_infinite_weights_are_an_error_not_a_clip():
    # A source point inside a region held only by target points: its out-of-fold probability
    # from a decision tree is exactly 1, an infinite weight, which must not be clipped silently.
    from sklearn.tree import DecisionTreeClassifier

    xs = np.r_[np.zeros(10) - 1.0, [5.0]][:, None]
    xt = np.full((10, 1), 5.0)
    with pytest.raises(ValueError, match="P\\(target \\| x\\) = 1 at 1 point.*infinite weights"):
        shift.covariate_shift_weights(xs, xt, DecisionTreeClassifier(), folds=2)


@pytest.mark.cuda
def test_fit_weighted_on_cuda_matches_cpu():
    # The same float64 training on the GPU: equal to the CPU run up to reduction-order rounding.
    rng = np.random.default_rng(0)
    x, y, w = rng.standard_normal((40, 5)), rng.integers(0, 3, 40), rng.random(40)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    cpu, gpu = net().double(), net().double().cuda()
    shift.fit_weighted(cpu, x, y, w, steps=20)
    shift.fit_weighted(gpu, torch.as_tensor(x, device="cuda"), y, w, steps=20)
    for a, b in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-8, atol=1e-10)
