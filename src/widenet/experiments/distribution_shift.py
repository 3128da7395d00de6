"""distribution-shift: correcting covariate shift and label shift on digits.

What it measures
----------------
Two induced shifts of scikit-learn's digits (standardized features, 10 classes), each over
several shift sizes and ``trials`` random repetitions (data splits, samples and networks drawn
from the run's seed):

* **Label shift** (``wn.shift.bbse``, Lipton, Wang, Smola 2018). The data set is split at
  random into a source pool (``n_train`` training + ``n_holdout`` held-out points) and a target
  pool; ``n_target`` target points are drawn from the target pool with class prior q (classes
  by multinomial counts, points with replacement). q is either *tweak-one* (one random class
  has probability rho, the other nine share 1 - rho; rho = 0.1 is no shift) or drawn from
  *Dirichlet(alpha)* (small alpha: large shift). The black box is a one-hidden-layer ReLU
  network ``wn.mlp(depth=1, out_dim=10).network(64, width)`` trained by Adam on the
  cross-entropy of the source training set (``wn.shift.fit_weighted``). Its confusion matrix on
  the held-out source points and its mean prediction on the (unlabelled) target give w_hat =
  C_hat^{-1} mu_hat; the corrected classifier is the same network retrained on the source
  training set by weighted ERM with weights max(w_hat(y_i), 0) (the paper's correction).
  Also reported: the no-retraining correction q(y|x) ~ w_hat(y) p(y|x) (Saerens et al. 2002),
  the same with the true w (oracle), and the chi-square two-sample test on predicted labels
  (``wn.shift.label_shift_test``): its rejection rate at level 0.05.
* **Covariate shift** (``wn.shift.covariate_shift_weights``). The data set is split in two
  halves; a point of the first is kept in the source with probability sigmoid(-beta z), one of
  the second in the target with probability sigmoid(beta z), z the standardized first principal
  component (``wn.shift.feature_shift``; beta = 0 is no shift). p(y|x) is untouched, and the
  true weight is w(x) = exp(beta z) E[sigmoid(-beta z)] / E[sigmoid(beta z)]. The weights are
  estimated by a logistic-regression domain classifier (C = ``domain_c``) and used to refit a
  multinomial logistic regression by weighted ERM (``sample_weight``); the oracle uses the true
  weights.

Accuracies are on the target sample; ``weight_error`` is, for label shift, the mean squared
error (1/k) sum_y (w_hat(y) - w(y))^2 (the quantity of Lipton et al.'s Fig. 2), for covariate
shift the relative error ||w_hat - w|| / ||w|| of the weights at the source points, both
normalised to mean 1. Every number is the mean over the trials.

Theory
------
Under label shift with an invertible confusion matrix C, w = C^{-1} mu exactly, and BBSE's
error is O(1/sqrt(n)) (Lipton et al., Thm. 3); reweighting the training loss by w(y) makes the
source risk unbiased for the target risk. The gain is largest for large shifts, where the
source-trained classifier's implicit prior is most wrong (a classifier at 97% accuracy has
little to gain, so the improvements are a few points). Under covariate shift the Bayes
classifier does not change, but a finite, regularised model fitted on the source spends its
capacity where the source has mass; importance weighting moves it to the target region at the
price of a smaller effective sample size (reported as ``ess_fraction``). The domain
classifier's log-odds are linear in z, so logistic regression is well specified (its error is
estimation noise: 64 features and ~450 + 450 points).

Measured (seed 0). Quick (2 trials; 12 s of CPU, 20-45 s wall on a shared 2-core machine):
label shift, tweak-one rho = 0.9: target accuracy 0.864 uncorrected -> 0.917 by BBSE +
weighted ERM (0.939 by posterior correction, 0.960 with the true w), weight MSE 0.23; rho =
0.1 (no shift): 0.944 / 0.943, MSE 0.03, never detected; every shifted setting detected in
both trials. Covariate shift beta = 3: 0.775 -> 0.818 (true weights 0.815), weight error 0.61,
ESS/n 0.19 (0.91 at beta = 0).

Full size (10 trials; 48 s of CPU, 5 min wall on the same busy machine):

=====================  =====  ===========  =========  =========  ======  ==========  ========
label shift            TV     uncorrected  weighted   posterior  oracle  weight MSE  detected
=====================  =====  ===========  =========  =========  ======  ==========  ========
tweak-one rho = 0.1    0.03   0.946        0.945      0.946      0.947   0.038       0.0
tweak-one rho = 0.3    0.20   0.949        0.951      0.954      0.956   0.047       1.0
tweak-one rho = 0.5    0.40   0.942        0.952      0.956      0.957   0.087       1.0
tweak-one rho = 0.7    0.60   0.943        0.958      0.959      0.965   0.098       1.0
tweak-one rho = 0.9    0.80   0.965        0.969      0.973      0.979   0.197       1.0
Dirichlet alpha = 100  0.05   0.951        0.947      0.946      0.949   0.040       0.1
Dirichlet alpha = 10   0.11   0.950        0.948      0.946      0.950   0.042       0.7
Dirichlet alpha = 1    0.34   0.952        0.954      0.952      0.956   0.059       1.0
Dirichlet alpha = 0.1  0.76   0.938        0.969      0.977      0.981   0.149       1.0
=====================  =====  ===========  =========  =========  ======  ==========  ========

Covariate shift, beta = 0, 0.5, ..., 3: uncorrected 0.946 0.944 0.936 0.923 0.892 0.849 0.821;
corrected 0.947 0.948 0.942 0.934 0.909 0.877 0.862; true weights 0.946 0.945 0.942 0.936
0.912 0.879 0.861; weight error 0.30 0.29 0.30 0.36 0.44 0.50 0.57; ESS/n 0.92 0.75 0.50
0.34 0.25 0.20 0.16. The corrections gain little for small shifts (a 95% classifier has little
to gain, and for a small shift the weights' variance costs as much as their bias removes) and
1-4 points for large ones; the estimated covariate weights do as well as the true ones. The
domain classifier's ridge (C = 0.01, chosen for the smallest weight error at beta = 0 to 3
among 0.1, 0.03, 0.01) compresses the weights' range (slope < 1 in the scatter of
``covariate_shift.png``), which is most of the weight error at large beta.

Metrics (``metrics.json``)
--------------------------
``label_shift`` and ``covariate_shift``: lists of objects ``{shift, accuracy_uncorrected,
accuracy_corrected, weight_error, ...}`` (one per shift size; the extra keys are listed in
METRICS below), and ``source_accuracy``, ``trials``, ``n_train``, ``n_holdout``, ``n_target``.

References
----------
Lipton, Wang, Smola (2018). Detecting and correcting for label shift with black box predictors.
ICML. arXiv:1802.03916.
Shimodaira (2000). Improving predictive inference under covariate shift by weighting the
log-likelihood function. J. Stat. Plan. Inference 90.
Bickel, Brueckner, Scheffer (2009). Discriminative learning under covariate shift. JMLR 10.
Saerens, Latinne, Decaestecker (2002). Adjusting the outputs of a classifier to new a priori
probabilities. Neural Computation 14.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch

from widenet import lab, shift
from widenet.data import SKLEARN_DATASETS, load_dataset

METRICS = {
    "label_shift": "list over shift sizes of {family ('tweak-one' or 'dirichlet'), shift (rho or "
    "alpha), tv_distance (mean total-variation distance of q from p), accuracy_uncorrected (the "
    "source-trained network on the target), accuracy_corrected (retrained by weighted ERM with "
    "max(w_hat, 0)), accuracy_posterior (q(y|x) ~ w_hat(y) p(y|x), no retraining), "
    "accuracy_oracle (the same with the true w), weight_error (mean over classes of (w_hat - "
    "w)^2), detection_rate (fraction of trials where the chi-square test on predicted labels "
    "rejects at 0.05), p_value (median)}, means over the trials",
    "covariate_shift": "list over beta of {shift (beta), accuracy_uncorrected (logistic "
    "regression fitted on the source), accuracy_corrected (refitted with the estimated "
    "weights), accuracy_oracle (with the true weights), weight_error (||w_hat - w|| / ||w||, "
    "both normalised to mean 1), ess_fraction (ESS / n_source of w_hat), n_source, n_target}, "
    "means over the trials",
    "source_accuracy": "mean accuracy of the label-shift black box on the held-out source data",
    "trials": "random repetitions per shift size",
    "n_train": "label shift: source training points",
    "n_holdout": "label shift: held-out source points (confusion matrix)",
    "n_target": "label shift: target points",
}


class DistributionShiftConfig(lab.Config):
    """Full size by default (10 trials, 9 label and 7 covariate shifts); ``QUICK``: 2 trials."""

    dataset: Literal[SKLEARN_DATASETS] = "digits"  # type: ignore[valid-type]
    trials: int = pydantic.Field(10, ge=1)
    tweak_one: list[float] = [0.1, 0.3, 0.5, 0.7, 0.9]
    dirichlet: list[pydantic.PositiveFloat] = [100.0, 10.0, 1.0, 0.1]
    betas: list[float] = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    n_train: int = pydantic.Field(600, ge=10)
    n_holdout: int = pydantic.Field(400, ge=10)
    n_target: int = pydantic.Field(500, ge=10)
    width: int = pydantic.Field(64, ge=1)
    steps: int = pydantic.Field(200, ge=1)
    lr: float = pydantic.Field(0.01, gt=0)
    domain_c: float = pydantic.Field(0.01, gt=0)
    regularization: float = pydantic.Field(0.0, ge=0)  # ridge of the BBSE solve (0: exact)
    feature: int | Literal["pc1"] = "pc1"

    QUICK: ClassVar[dict] = {
        "trials": 2,
        "tweak_one": [0.1, 0.5, 0.9],
        "dirichlet": [10.0, 0.1],
        "betas": [0.0, 1.5, 3.0],
    }

    @pydantic.field_validator("tweak_one")
    @classmethod
    def _probabilities(cls, rhos):
        if any(not 0 <= r <= 1 for r in rhos):
            raise ValueError("tweak_one values are probabilities in [0, 1]")
        return rhos


@lab.register(
    "distribution-shift",
    summary="Covariate shift (domain-classifier weights) and label shift (BBSE) on digits: "
    "target accuracy without/with correction and weight error vs shift size.",
    config=DistributionShiftConfig,
    metrics=METRICS,
    key="source_accuracy",
)
def run(config: DistributionShiftConfig, ctx: lab.RunContext) -> dict:
    x, y = load_dataset(config.dataset, dtype=torch.float64)
    x, y = x.numpy(), y.numpy()
    k = int(y.max()) + 1
    if config.n_train + config.n_holdout >= len(x):
        raise ValueError(f"n_train + n_holdout must leave target points in {len(x)}")
    seeds = [int(s) for s in ctx.rng.integers(0, 2**31, size=config.trials)]
    label_runs = []
    for seed in ctx.progress(seeds, description="label shift"):
        label_runs.append(_label_trial(config, ctx, x, y, k, seed))
    cov_runs = []
    for seed in ctx.progress(seeds, description="covariate shift"):
        cov_runs.append([_covariate_trial(config, x, y, beta, seed) for beta in config.betas])
    label_rows = _mean_rows([r["rows"] for r in label_runs])
    cov_rows = _mean_rows(cov_runs)
    _plot_label(ctx, label_rows)
    _plot_covariate(ctx, cov_rows, cov_runs[0][-1])
    return {
        "label_shift": label_rows,
        "covariate_shift": cov_rows,
        "source_accuracy": float(np.mean([r["source_accuracy"] for r in label_runs])),
        "trials": config.trials,
        "n_train": config.n_train,
        "n_holdout": config.n_holdout,
        "n_target": config.n_target,
    }


def _network(config, in_dim, k, seed, device):
    import widenet as wn

    arch = wn.mlp(depth=1, activation="relu", out_dim=k)
    return arch.network(in_dim, config.width, seed, dtype=torch.float64, device=device)


def _proba(net, x, device) -> np.ndarray:
    with torch.no_grad():
        out = net(torch.as_tensor(x, device=device))
        return torch.softmax(out, 1).cpu().numpy()


def _label_trial(config, ctx, x, y, k, seed) -> dict:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_src = config.n_train + config.n_holdout
    tr, ho, pool = perm[: config.n_train], perm[config.n_train : n_src], perm[n_src:]
    p = np.bincount(y[perm[:n_src]], minlength=k) / n_src  # the source prior
    device = ctx.device
    net_seed = int(rng.integers(2**31))

    def train(weights):
        net = _network(config, x.shape[1], k, net_seed, device)
        fit = dict(steps=config.steps, lr=config.lr, seed=net_seed)
        shift.fit_weighted(net, x[tr], y[tr], weights, **fit)
        return net

    net = train(None)
    pred_ho = _proba(net, x[ho], device).argmax(1)
    shifts = [("tweak-one", r) for r in config.tweak_one]
    shifts += [("dirichlet", a) for a in config.dirichlet]
    rows = []
    for family, value in shifts:
        sub = int(rng.integers(2**31))
        if family == "tweak-one":
            q = shift.tweak_one_prior(k, int(rng.integers(k)), value)
        else:
            q = shift.dirichlet_prior(k, value, seed=sub)
        target = pool[shift.sample_with_prior(y[pool], q, config.n_target, seed=sub)]
        proba_t = _proba(net, x[target], device)
        pred_t = proba_t.argmax(1)
        # BBSE and the chi-square test of Lipton et al. (2018): the library's procedure.
        analysis = shift.analyze_label_shift(
            pred_ho, y[ho], pred_t, classes=np.arange(k), regularization=config.regularization
        )
        est, test = analysis.estimate, analysis.test
        corrected = train(est.sample_weights(y[tr]))
        w = q / p
        yt = y[target]
        rows.append(
            {
                "family": family,
                "shift": value,
                "tv_distance": float(0.5 * np.abs(q - p).sum()),
                "accuracy_uncorrected": _acc(pred_t, yt),
                "accuracy_corrected": _acc(_proba(corrected, x[target], device).argmax(1), yt),
                "accuracy_posterior": _acc(_adjusted(proba_t, est.weights), yt),
                "accuracy_oracle": _acc(_adjusted(proba_t, w), yt),
                "weight_error": float(np.mean((est.weights - w) ** 2)),
                "detection_rate": float(test.reject(0.05)),
                "p_value": test.p_value,
            }
        )
    return {"rows": rows, "source_accuracy": _acc(pred_ho, y[ho])}


def _adjusted(proba, weights) -> np.ndarray:
    return shift.correct_probabilities(proba, np.maximum(weights, 0.0)).argmax(1)


def _acc(pred, y) -> float:
    return float(np.mean(pred == y))


def _covariate_trial(config, x, y, beta, seed) -> dict:
    from sklearn.linear_model import LogisticRegression

    src, tgt, w_true = shift.feature_shift(x, beta, feature=config.feature, seed=seed)
    domain = LogisticRegression(C=config.domain_c, max_iter=2000)
    est = shift.covariate_shift_weights(x[src], x[tgt], domain, normalize=True, seed=seed)
    w_true = w_true / w_true.mean()
    task = LogisticRegression(C=1.0, max_iter=2000)

    def accuracy(weights):
        fitted = shift.fit_weighted_sklearn(task, x[src], y[src], weights)
        return float(fitted.score(x[tgt], y[tgt]))

    return {
        "shift": beta,
        "accuracy_uncorrected": accuracy(np.ones(len(src))),
        "accuracy_corrected": accuracy(est.weights),
        "accuracy_oracle": accuracy(w_true),
        "weight_error": float(np.linalg.norm(est.weights - w_true) / np.linalg.norm(w_true)),
        "ess_fraction": est.ess_fraction,
        "n_source": len(src),
        "n_target": len(tgt),
        # for the scatter plot; dropped from the metrics by _mean_rows
        "_weights": (w_true, est.weights),
    }


def _mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Per shift size, the mean over trials of every number (median for p-values)."""
    rows = []
    for i, first in enumerate(runs[0]):
        row = {}
        for key, value in first.items():
            if key.startswith("_"):
                continue
            values = [run[i][key] for run in runs]
            if isinstance(value, str) or key == "shift":
                row[key] = value
            elif key == "p_value":
                row[key] = float(np.median(values))
            else:
                row[key] = float(np.mean(values))
        rows.append(row)
    return rows


def _plot_label(ctx, rows):
    fig = ctx.figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    families = [
        ("tweak-one", r"tweak-one $\rho$", False),
        ("dirichlet", r"Dirichlet $\alpha$", True),
    ]
    for ax, (family, label, log) in zip(axes[:2], families, strict=True):
        sel = [r for r in rows if r["family"] == family]
        if not sel:
            ax.set_visible(False)
            continue
        s = [r["shift"] for r in sel]
        for key, style, name in (
            ("accuracy_uncorrected", "o-", "uncorrected"),
            ("accuracy_corrected", "s-", "BBSE + weighted ERM"),
            ("accuracy_posterior", "^--", "BBSE + posterior correction"),
            ("accuracy_oracle", "kx:", "true w, posterior correction"),
        ):
            ax.plot(s, [r[key] for r in sel], style, label=name)
        if log:
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.set_xlabel(label + " (shift grows →)")
        ax.set_ylabel("target accuracy")
        ax.set_title(f"Label shift, {family}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    tv = [r["tv_distance"] for r in rows]
    err = [r["weight_error"] for r in rows]
    for family, marker in (("tweak-one", "o"), ("dirichlet", "s")):
        idx = [i for i, r in enumerate(rows) if r["family"] == family]
        ax.plot([tv[i] for i in idx], [err[i] for i in idx], marker, label=family)
    ax.set_xlabel("total-variation distance between q(y) and p(y)")
    ax.set_ylabel(r"BBSE weight MSE $\frac{1}{k}\|\hat w - w\|^2$")
    ax.set_title("Weight estimation error", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "label_shift")


def _plot_covariate(ctx, rows, largest):
    fig = ctx.figure(figsize=(13, 4))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    b = [r["shift"] for r in rows]
    for key, style, name in (
        ("accuracy_uncorrected", "o-", "unweighted"),
        ("accuracy_corrected", "s-", "estimated weights"),
        ("accuracy_oracle", "kx:", "true weights"),
    ):
        ax1.plot(b, [r[key] for r in rows], style, label=name)
    ax1.set_xlabel(r"selection strength $\beta$")
    ax1.set_ylabel("target accuracy")
    ax1.set_title("Covariate shift: logistic regression", fontsize=10)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(b, [r["weight_error"] for r in rows], "o-", label=r"$\|\hat w - w\| / \|w\|$")
    ax2.plot(b, [r["ess_fraction"] for r in rows], "s--", label="ESS / n (estimated weights)")
    ax2.set_xlabel(r"selection strength $\beta$")
    ax2.set_title("Weight error and effective sample size", fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    w_true, w_hat = largest["_weights"]
    ax3.loglog(w_true, w_hat, ".", ms=3, alpha=0.6)
    lo, hi = float(min(w_true.min(), w_hat.min())), float(max(w_true.max(), w_hat.max()))
    ax3.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax3.set_xlabel("true weight w(x)")
    ax3.set_ylabel(r"estimated $\hat w(x)$")
    ax3.set_title(rf"Weights at the source points, $\beta$ = {largest['shift']:g}", fontsize=10)
    ax3.grid(True, which="both", alpha=0.3)
    ax3.legend(fontsize=8)
    ctx.save_figure(fig, "covariate_shift")
