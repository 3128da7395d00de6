"""Distribution shift: importance weights for covariate shift, BBSE for label shift, weighted ERM.

A model is trained on a source distribution p(x, y) and deployed on a target q(x, y). Two kinds
of shift can be corrected from unlabelled target data:

Covariate shift (Shimodaira 2000): q(y | x) = p(y | x) and only the inputs move. The target
risk is the source risk reweighted by the density ratio,

    E_q[l(f(x), y)] = E_p[w(x) l(f(x), y)],   w(x) = q(x) / p(x),

and w is estimated without densities by a probabilistic classifier c(x) = P(target | x) trained
to separate n_s source from n_t target points (Bickel, Brueckner, Scheffer 2007/2009): by Bayes,

    w(x) = (n_s / n_t) * c(x) / (1 - c(x)),

the prior ratio n_s / n_t undoing the sample sizes' share of the classifier's odds.
:func:`covariate_shift_weights` does this with any scikit-learn classifier that has
``predict_proba`` (logistic regression by default: exact when log w is linear in x, e.g. two
Gaussians with a shared covariance), reports clipping and normalisation, and the effective
sample size ESS = (sum w)^2 / sum w^2 (Kish 1965): the size of an unweighted sample whose
mean has the variance of the weighted one.

Label shift (Lipton, Wang, Smola 2018, "Detecting and Correcting for Label Shift with Black Box
Predictors", ICML): q(x | y) = p(x | y) and only the class priors move, w(y) = q(y) / p(y). For
any fixed predictor f, the predicted-label marginal on the target is mu(i) = q(f(x) = i) =
sum_j C[i, j] w(j), with C[i, j] = p(f(x) = i, y = j) the joint confusion matrix on the source.
Black-box shift estimation (BBSE, their eq. 3) estimates C on held-out labelled source data and
mu on unlabelled target data and solves

    w_hat = C_hat^{-1} mu_hat,     q_hat(y) = w_hat(y) p_hat(y),

with error O(1/sqrt(n)) when C is invertible (their Theorem 3). :func:`bbse` also offers a
regularised solve in the spirit of Azizzadenesheli et al. (2019, RLLS: estimate theta = w - 1
with a penalty on its norm; here a ridge penalty lambda ||theta||^2 rather than RLLS's
data-dependent one), and refuses a singular C_hat with a clear error otherwise. Under label shift
with C invertible, q(y) = p(y) iff q(f(x)) = p(f(x)), so shift is detected by a two-sample test
on the predicted labels (Lipton et al. Sec. 5): :func:`label_shift_test`.

Weighted empirical risk minimisation (ERM): :func:`weighted_loss` and :func:`fit_weighted` for
torch models, :func:`fit_weighted_sklearn` for scikit-learn estimators (``sample_weight``).

Arrays come back as NumPy float64 (scikit-learn works on NumPy); inputs may be tensors (on any
device) or arrays. Nothing is clipped or dropped silently: every clipping is an option and its
effect is reported in the result.

References
----------
Shimodaira (2000). Improving predictive inference under covariate shift by weighting the
log-likelihood function. J. Stat. Plan. Inference 90.
Bickel, Brueckner, Scheffer (2009). Discriminative learning under covariate shift. JMLR 10.
Kish (1965). Survey Sampling. Wiley.
Lipton, Wang, Smola (2018). Detecting and correcting for label shift with black box predictors.
ICML. arXiv:1802.03916.
Azizzadenesheli, Liu, Yang, Anandkumar (2019). Regularized learning for domain adaptation under
label shifts. ICLR. arXiv:1903.09734.
Saerens, Latinne, Decaestecker (2002). Adjusting the outputs of a classifier to new a priori
probabilities. Neural Computation 14.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from widenet._checks import as_tensor, check_finite, check_inputs, check_int, check_real

__all__ = [
    "CovariateWeights",
    "LabelShiftEstimate",
    "ShiftTest",
    "bbse",
    "confusion_matrix",
    "correct_probabilities",
    "covariate_shift_weights",
    "dirichlet_prior",
    "effective_sample_size",
    "feature_shift",
    "fit_weighted",
    "fit_weighted_sklearn",
    "LabelShiftAnalysis",
    "analyze_label_shift",
    "label_shift_from_classifier",
    "label_shift_test",
    "sample_with_prior",
    "tweak_one_prior",
    "weighted_loss",
]


# --------------------------------------------------------------------------------------------
# Validation helpers


def _features(x, name: str) -> np.ndarray:
    """(n, d) finite float64 NumPy array (tensors on any device accepted)."""
    return check_inputs(x, name, dtype=torch.float64).cpu().numpy()


def _labels(y, name: str, n: int | None = None) -> np.ndarray:
    """1-D integer class labels (floats that are whole numbers accepted)."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class labels, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{name} has no labels")
    if n is not None and len(y) != n:
        raise ValueError(f"{name} has {len(y)} labels for {n} points")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or infinite labels")
        if not np.all(y == np.round(y)):
            raise ValueError(f"{name} must be integer class labels, got non-integer floats")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64)


# The public name (the command line validates label files with it).
class_labels = _labels


def _classes(classes, *label_sets) -> np.ndarray:
    if classes is None:
        return np.unique(np.concatenate(label_sets))
    classes = _labels(classes, "classes")
    if len(np.unique(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes.tolist()}")
    return np.sort(classes)


def _index(y: np.ndarray, classes: np.ndarray, name: str) -> np.ndarray:
    """Position of every label in ``classes``; labels outside ``classes`` are an error."""
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    bad = classes[idx] != y
    if bad.any():
        raise ValueError(
            f"{name} has labels not in classes {classes.tolist()}: "
            f"{np.unique(y[bad]).tolist()[:10]}"
        )
    return idx


def _predictions(pred, name: str, classes: np.ndarray | None, n: int | None = None):
    """Hard labels (1-D) or class probabilities (2-D, rows summing to 1)."""
    if isinstance(pred, torch.Tensor):
        pred = pred.detach().cpu().numpy()
    pred = np.asarray(pred)
    if pred.ndim == 2:
        probs = _features(pred, name)
        if n is not None and len(probs) != n:
            raise ValueError(f"{name} has {len(probs)} rows for {n} points")
        if classes is not None and probs.shape[1] != len(classes):
            raise ValueError(
                f"{name} has {probs.shape[1]} probability columns for {len(classes)} classes"
            )
        if (probs < 0).any() or not np.allclose(probs.sum(1), 1.0, atol=1e-6):
            raise ValueError(f"{name}: probability rows must be >= 0 and sum to 1")
        return probs
    return _labels(pred, name, n)


def _sample_weights(weights, name: str, n: int | None) -> np.ndarray:
    """(n,) finite weights >= 0, not all zero (``n=None``: any length)."""
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (n is not None and len(w) != n):
        raise ValueError(f"{name} must have shape ({'n' if n is None else n},), got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (w < 0).any():
        raise ValueError(f"{name} must be >= 0, got {int((w < 0).sum())} negative weight(s)")
    if not w.sum() > 0:
        raise ValueError(f"{name} are all zero")
    return w


def effective_sample_size(weights) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of importance weights ``w >= 0``.

    For fixed weights and i.i.d. values of variance s^2, the self-normalised weighted mean
    sum w_i v_i / sum w_i has variance s^2 / ESS; ESS = n for equal weights, 1 when one weight
    carries everything (Kish 1965).
    """
    w = _sample_weights(weights, "weights", None)
    return float(w.sum() ** 2 / (w**2).sum())


# --------------------------------------------------------------------------------------------
# Covariate shift


@dataclass(frozen=True)
class CovariateWeights:
    """Importance weights w(x) = q(x)/p(x) at the source points, and how they were made.

    Attributes
    ----------
    weights : (n_source,) the weights to use (after ``clip`` and ``normalize``).
    raw_weights : (n_source,) (n_s / n_t) c(x) / (1 - c(x)) before clipping/normalisation.
    target_probability : (n_source,) c(x) = P(target | x) from the domain classifier.
    prior_ratio : n_s / n_t.
    clip : the upper bound applied to the raw weights (None: none).
    n_clipped : how many weights the clip changed.
    normalized : whether the weights were rescaled to mean 1 over the source points.
    scale : the factor applied by the normalisation (1.0 when off).
    raw_mean : mean of the raw weights; E_p[w] = 1 for the true ratio, so far from 1 means a
        poorly estimated ratio (or little overlap).
    ess : Kish's effective sample size of ``weights``; ``ess_fraction`` = ess / n_source.
    classifier : the domain classifier fitted on all source and target points; ``__call__``
        evaluates (raw, unclipped) weights at new inputs with it.
    folds : cross-fitting folds used for the source weights (None: in-sample).
    """

    weights: np.ndarray
    raw_weights: np.ndarray
    target_probability: np.ndarray
    prior_ratio: float
    clip: float | None
    n_clipped: int
    normalized: bool
    scale: float
    raw_mean: float
    ess: float
    ess_fraction: float
    n_source: int
    n_target: int
    folds: int | None
    classifier: Any = field(repr=False)

    def __call__(self, x) -> np.ndarray:
        """Raw weights (n_s/n_t) c(x)/(1 - c(x)) at new inputs ``x`` (no clip or scaling)."""
        x = _features(x, "x")
        return _odds_to_weights(self.classifier.predict_proba(x)[:, 1], self.prior_ratio, "x")

    def summary(self) -> dict:
        """The scalar diagnostics as a JSON-ready dict."""
        return {
            "n_source": self.n_source,
            "n_target": self.n_target,
            "prior_ratio": self.prior_ratio,
            "clip": self.clip,
            "n_clipped": self.n_clipped,
            "normalized": self.normalized,
            "scale": self.scale,
            "raw_mean": self.raw_mean,
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "max_weight": float(self.weights.max()),
            "folds": self.folds,
        }


def _odds_to_weights(p: np.ndarray, prior_ratio: float, name: str) -> np.ndarray:
    if (p >= 1).any():
        raise ValueError(
            f"the domain classifier gives P(target | x) = 1 at {int((p >= 1).sum())} point(s) of "
            f"{name}: infinite weights (source and target do not overlap there); use a "
            "regularised classifier, or clip= to bound the weights"
        )
    return prior_ratio * p / (1.0 - p)


# E_p[w] = E_p[q/p] = 1 for the true weights; a mean of the raw weights below this says the
# source sample carries almost none of the target's mass (the domains barely overlap).
MIN_RAW_MEAN = 0.05


def _check_overlap(raw: np.ndarray, p: np.ndarray) -> None:
    """Refuse weights that say the domains do not overlap; warn when they barely do."""
    if not np.all(np.isfinite(raw)) or not raw.any():
        raise ValueError(
            "the domain classifier gives P(target | x) = 0 at every source point (max "
            f"{float(np.max(p)):.3g}): the source and target domains do not overlap, so the "
            "importance weights q(x)/p(x) are zero or undefined everywhere on the source and "
            "no reweighting of it can represent the target. Check that x_source and x_target "
            "describe the same features (same scaling), or use a less confident classifier"
        )
    mean = float(raw.mean())
    if mean < MIN_RAW_MEAN:
        warnings.warn(
            f"the raw importance weights have mean {mean:.3g} over the source points, where "
            f"E_p[q/p] = 1 (below {MIN_RAW_MEAN}): the source and target domains barely "
            "overlap, and normalised weights near 1 would hide it; the reweighted estimates "
            "are not reliable",
            RuntimeWarning,
            stacklevel=3,
        )


def covariate_shift_weights(
    x_source,
    x_target,
    classifier=None,
    *,
    clip: float | None = None,
    normalize: bool = True,
    folds: int | None = None,
    seed: int = 0,
) -> CovariateWeights:
    """Importance weights w(x) = q(x)/p(x) at the source points from a domain classifier.

    w(x) = (n_s / n_t) c(x) / (1 - c(x)) with c(x) = P(target | x) estimated by ``classifier``
    (Bickel et al. 2009), trained on the source points (label 0) and target points (label 1).

    Parameters
    ----------
    x_source : (n_s, d) source inputs (where the weights are wanted).
    x_target : (n_t, d) unlabelled target inputs.
    classifier : an unfitted scikit-learn classifier with ``predict_proba`` (cloned before
        fitting); default ``LogisticRegression(C=1.0, max_iter=1000)``. It must estimate
        P(target | x) under the sample proportions (no ``class_weight="balanced"``): the prior
        ratio n_s / n_t assumes so.
    clip : upper bound on the raw weights, or None. Reported in ``n_clipped``.
    normalize : rescale the (clipped) weights to mean 1 over the source points (the
        self-normalised estimator). The factor is reported in ``scale``.
    folds : cross-fitting: source weights from ``folds``-fold out-of-fold probabilities (for
        flexible classifiers, whose in-sample probabilities overfit); None = in-sample.
    seed : seed of the folds and of ``classifier`` when it has a ``random_state``.
    """
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression

    xs = _features(x_source, "x_source")
    xt = _features(x_target, "x_target")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"x_source and x_target must have the same number of features, got {xs.shape[1]} "
            f"and {xt.shape[1]}"
        )
    if clip is not None:
        clip = check_real(clip, "clip", minimum=0.0, strict=True)
    if folds is not None:
        folds = check_int(folds, "folds", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    if classifier is None:
        classifier = LogisticRegression(C=1.0, max_iter=1000)
    if not hasattr(classifier, "predict_proba"):
        raise TypeError(
            f"classifier must have predict_proba (a probabilistic scikit-learn classifier), got "
            f"{type(classifier).__name__}"
        )
    model = clone(classifier)
    if "random_state" in model.get_params():
        model.set_params(random_state=seed)
    x = np.concatenate([xs, xt])
    d = np.concatenate([np.zeros(len(xs), np.int64), np.ones(len(xt), np.int64)])
    model.fit(x, d)
    if list(model.classes_) != [0, 1]:
        raise ValueError(f"domain classifier has classes {list(model.classes_)}; expected [0, 1]")
    if folds is None:
        p = model.predict_proba(xs)[:, 1]
    else:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        p = cross_val_predict(clone(model), x, d, cv=cv, method="predict_proba")[: len(xs), 1]
    prior_ratio = len(xs) / len(xt)
    raw = _odds_to_weights(p, prior_ratio, "x_source")
    _check_overlap(raw, p)
    w = raw if clip is None else np.minimum(raw, clip)
    n_clipped = 0 if clip is None else int((raw > clip).sum())
    scale = 1.0 / w.mean() if normalize else 1.0
    w = w * scale
    ess = float(w.sum() ** 2 / (w**2).sum())
    return CovariateWeights(
        weights=w,
        raw_weights=raw,
        target_probability=p,
        prior_ratio=prior_ratio,
        clip=clip,
        n_clipped=n_clipped,
        normalized=bool(normalize),
        scale=float(scale),
        raw_mean=float(raw.mean()),
        ess=ess,
        ess_fraction=ess / len(xs),
        n_source=len(xs),
        n_target=len(xt),
        folds=folds,
        classifier=model,
    )


def feature_shift(
    x, beta: float, *, feature: int | str = "pc1", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An induced covariate shift on a data set: selection depending on one feature.

    The points are split at random into two halves; a point of the first is kept in the source
    with probability sigmoid(-beta z), a point of the second in the target with probability
    sigmoid(beta z), where z is the standardized ``feature`` (a column index, or ``"pc1"``: the
    first principal component). Relative to the data set's distribution, p(x) is proportional
    to sigmoid(-beta z) and q(x) to sigmoid(beta z), so the true weight is

        w(x) = q(x)/p(x) = exp(beta z) * E[sigmoid(-beta z)] / E[sigmoid(beta z)]

    (means over the whole data set); q(y | x) = p(y | x) holds by construction.

    Returns ``(source_index, target_index, true_weights_at_source)``.
    """
    x = _features(x, "x")
    beta = check_real(beta, "beta")
    z = _feature_values(x, feature)
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    perm = rng.permutation(len(x))
    half = len(x) // 2
    a, b = perm[:half], perm[half:]
    sig = lambda t: 0.5 * (1.0 + np.tanh(0.5 * t))  # noqa: E731  (overflow-free sigmoid)
    src = np.sort(a[rng.random(len(a)) < sig(-beta * z[a])])
    tgt = np.sort(b[rng.random(len(b)) < sig(beta * z[b])])
    if len(src) < 2 or len(tgt) < 2:
        raise ValueError(f"beta={beta} leaves fewer than 2 source or target points")
    ratio = sig(-beta * z).mean() / sig(beta * z).mean()
    return src, tgt, np.exp(beta * z[src]) * ratio


def _feature_values(x: np.ndarray, feature) -> np.ndarray:
    if isinstance(feature, str):
        if feature != "pc1":
            raise ValueError(f"feature must be a column index or 'pc1', got {feature!r}")
        xc = x - x.mean(0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        z = xc @ vt[0]
        z = z * np.sign(vt[0][np.argmax(np.abs(vt[0]))])  # a deterministic sign
    else:
        j = check_int(feature, "feature", minimum=0)
        if j >= x.shape[1]:
            raise ValueError(f"feature={j} but x has {x.shape[1]} columns")
        z = x[:, j].copy()
    sd = z.std()
    if sd == 0:
        raise ValueError(f"feature {feature!r} is constant: no shift can depend on it")
    return (z - z.mean()) / sd


# --------------------------------------------------------------------------------------------
# Label shift


@dataclass(frozen=True)
class LabelShiftEstimate:
    """The result of black-box shift estimation (Lipton et al. 2018).

    Attributes
    ----------
    classes : (k,) the class labels, in the order of every array below.
    weights : (k,) w_hat = q_hat(y)/p_hat(y), the (regularised) solution of C_hat w = mu_hat,
        as solved: entries may be negative (estimation noise) and are then listed in
        ``negative``.
    target_prior : (k,) q_hat(y) = max(w_hat, 0) p_hat(y), renormalised to sum to 1 (the
        projection is reported through ``negative``; ``target_prior_raw`` is w_hat p_hat).
    source_prior : (k,) p_hat(y), class frequencies of the held-out source labels.
    confusion : (k, k) C_hat[i, j] = p_hat(f(x) = i, y = j) (soft: the mean probability).
    source_prediction_mean : (k,) C_hat 1 = p_hat(f(x) = i).
    target_prediction_mean : (k,) mu_hat(i) = q_hat(f(x) = i).
    condition_number : sigma_max / sigma_min of C_hat (inf when singular).
    regularization : the ridge strength used (0: the exact solve).
    """

    classes: np.ndarray
    weights: np.ndarray
    target_prior: np.ndarray
    target_prior_raw: np.ndarray
    source_prior: np.ndarray
    confusion: np.ndarray
    source_prediction_mean: np.ndarray
    target_prediction_mean: np.ndarray
    condition_number: float
    regularization: float
    negative: list
    n_source: int
    n_target: int

    def sample_weights(self, labels) -> np.ndarray:
        """Per-example weights max(w_hat(y_i), 0) of source labels (for weighted ERM)."""
        idx = _index(_labels(labels, "labels"), self.classes, "labels")
        return np.maximum(self.weights, 0.0)[idx]

    def summary(self) -> dict:
        return {
            "classes": self.classes.tolist(),
            "weights": self.weights.tolist(),
            "target_prior": self.target_prior.tolist(),
            "source_prior": self.source_prior.tolist(),
            "condition_number": self.condition_number,
            "regularization": self.regularization,
            "negative": list(self.negative),
            "n_source": self.n_source,
            "n_target": self.n_target,
        }


def confusion_matrix(pred, labels, classes=None) -> np.ndarray:
    """Joint confusion matrix C[i, j] = (1/n) #{f(x) = class i, y = class j}.

    ``pred`` is either hard predicted labels (n,) or predicted probabilities (n, k) (then C[i,
    j] = (1/n) sum over points of class j of f_i(x): the soft confusion matrix of BBSE-soft).
    """
    y = _labels(labels, "labels")
    classes = _classes(classes, y, *([] if np.asarray(pred).ndim == 2 else [_labels(pred, "pred")]))
    pred = _predictions(pred, "pred", classes, len(y))
    j = _index(y, classes, "labels")
    k = len(classes)
    if pred.ndim == 2:
        onehot = np.zeros((len(y), k))
        onehot[np.arange(len(y)), j] = 1.0
        return pred.T @ onehot / len(y)
    i = _index(pred, classes, "pred")
    return np.bincount(i * k + j, minlength=k * k).reshape(k, k) / len(y)


def _prediction_mean(pred, classes, name: str) -> np.ndarray:
    pred = _predictions(pred, name, classes)
    if pred.ndim == 2:
        return pred.mean(0)
    return np.bincount(_index(pred, classes, name), minlength=len(classes)) / len(pred)


def bbse(
    source_pred,
    source_labels,
    target_pred,
    *,
    classes=None,
    regularization: float = 0.0,
    rcond: float = 1e-10,
) -> LabelShiftEstimate:
    """Black-box shift estimation: w_hat = C_hat^{-1} mu_hat (Lipton, Wang, Smola 2018, eq. 3).

    Parameters
    ----------
    source_pred : predictions of a fixed black-box model on held-out labelled source data:
        hard labels (n_s,) or class probabilities (n_s, k) (BBSE-soft).
    source_labels : (n_s,) the true labels of those points.
    target_pred : the same model's predictions on unlabelled target data: (n_t,) or (n_t, k).
    classes : the class labels (default: every label seen); predictions outside them are an
        error.
    regularization : lambda >= 0. With lambda > 0, w solves a ridge problem centred at no
        shift, as RLLS (Azizzadenesheli et al. 2019) centres its estimate at theta = w - 1:

            min_w ||C_hat w - mu_hat||^2 + lambda ||w - 1||^2,
            w = 1 + (C^T C + lambda I)^{-1} C^T (mu_hat - C_hat 1),

        which is defined for any C_hat and shrinks towards w = 1 where the data say little.
        With lambda = 0 the exact solve, refused when C_hat is singular.
    rcond : C_hat counts as singular when sigma_min <= rcond * sigma_max.
    """
    y = _labels(source_labels, "source_labels")
    hard = [p for p in (source_pred, target_pred) if np.asarray(p).ndim == 1]
    classes = _classes(classes, y, *[_labels(p, "predictions") for p in hard])
    regularization = check_real(regularization, "regularization", minimum=0.0)
    rcond = check_real(rcond, "rcond", minimum=0.0)
    src = _predictions(source_pred, "source_pred", classes, len(y))
    tgt = _predictions(target_pred, "target_pred", classes)
    if src.ndim != tgt.ndim:
        raise ValueError("source_pred and target_pred must both be labels or both probabilities")
    c = confusion_matrix(src, y, classes)
    mu = _prediction_mean(tgt, classes, "target_pred")
    p_y = c.sum(0)
    p_pred = c.sum(1)
    sv = np.linalg.svd(c, compute_uv=False)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    if regularization == 0.0:
        if not sv[-1] > rcond * sv[0]:
            missing = classes[p_y == 0].tolist()
            unpredicted = classes[p_pred == 0].tolist()
            raise np.linalg.LinAlgError(
                f"the confusion matrix C_hat ({len(classes)}x{len(classes)}) is singular: "
                f"smallest singular value {sv[-1]:.3g} <= rcond * largest ({rcond:g} * "
                f"{sv[0]:.3g}); classes absent from source_labels: {missing}, classes never "
                f"predicted on the source: {unpredicted}. BBSE needs an invertible C "
                "(a predictor that separates every class); pass regularization > 0 or drop "
                "or merge classes"
            )
        w = np.linalg.solve(c, mu)
    else:
        k = len(classes)
        w = 1.0 + np.linalg.solve(c.T @ c + regularization * np.eye(k), c.T @ (mu - p_pred))
    q_raw = w * p_y
    q = np.maximum(q_raw, 0.0)
    if not q.sum() > 0:
        raise ValueError("every estimated target class probability is <= 0; no prior to report")
    return LabelShiftEstimate(
        classes=classes,
        weights=w,
        target_prior=q / q.sum(),
        target_prior_raw=q_raw,
        source_prior=p_y,
        confusion=c,
        source_prediction_mean=p_pred,
        target_prediction_mean=mu,
        condition_number=cond,
        regularization=regularization,
        negative=classes[w < 0].tolist(),
        n_source=len(y),
        n_target=len(tgt),
    )


@dataclass(frozen=True)
class ShiftTest:
    """A two-sample test of p(f(x)) = q(f(x)) on predicted labels."""

    statistic: float
    p_value: float
    dof: int
    method: str
    classes: np.ndarray
    source_counts: np.ndarray
    target_counts: np.ndarray

    def reject(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def label_shift_test(
    source_pred,
    target_pred,
    *,
    classes=None,
    method: str = "chi2",
    n_permutations: int = 2000,
    seed: int = 0,
) -> ShiftTest:
    """Detect label shift: a two-sample test on the predicted labels (Lipton et al. 2018, Sec. 5).

    Under label shift with an invertible confusion matrix, q(y) = p(y) iff q(f(x)) = p(f(x)),
    so a test of homogeneity of the 2 x k table of predicted-label counts (source row, target
    row) tests for shift. Probabilities (n, k) are turned into labels by argmax.

    method : ``"chi2"`` (Pearson's chi-square, asymptotic), ``"g"`` (likelihood-ratio
        G-test, asymptotic), or ``"permutation"`` (Pearson's statistic, p-value from
        ``n_permutations`` random relabellings of the pooled sample: exact in level for small
        counts; the p-value is (1 + #{T* >= T}) / (1 + n_permutations)).
    Classes predicted in neither sample carry no information and are left out of the degrees
    of freedom (``dof`` = number of observed classes - 1).
    """
    from scipy import stats

    if method not in ("chi2", "g", "permutation"):
        raise ValueError(f"method must be 'chi2', 'g' or 'permutation', got {method!r}")
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    s = _hard_labels(source_pred, "source_pred", classes)
    t = _hard_labels(target_pred, "target_pred", classes)
    classes = _classes(classes, s, t)
    ks = np.bincount(_index(s, classes, "source_pred"), minlength=len(classes))
    kt = np.bincount(_index(t, classes, "target_pred"), minlength=len(classes))
    seen = (ks + kt) > 0
    table = np.stack([ks[seen], kt[seen]])
    dof = int(seen.sum()) - 1
    if dof == 0:  # every prediction is the same class in both samples: no evidence of shift
        return ShiftTest(0.0, 1.0, 0, method, classes, ks, kt)
    if method == "permutation":
        stat = _pearson(table)
        rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
        pooled = np.concatenate([s, t])
        codes = _index(pooled, classes[seen], "predictions")
        hits = 0
        for _ in range(n_permutations):
            perm = rng.permutation(codes)
            a = np.bincount(perm[: len(s)], minlength=dof + 1)
            b = np.bincount(perm[len(s) :], minlength=dof + 1)
            hits += _pearson(np.stack([a, b])) >= stat - 1e-12
        p_value = (1 + hits) / (1 + n_permutations)
    else:
        lam = "pearson" if method == "chi2" else "log-likelihood"
        stat, p_value, _, _ = stats.chi2_contingency(table, correction=False, lambda_=lam)
    return ShiftTest(float(stat), float(p_value), dof, method, classes, ks, kt)


def _hard_labels(pred, name: str, classes) -> np.ndarray:
    """Predicted labels; probabilities (n, k) -> the argmax class (classes default 0..k-1)."""
    if np.ndim(pred) != 2:
        return _labels(pred, name)
    probs = _predictions(pred, name, None if classes is None else _classes(classes))
    labels = np.arange(probs.shape[1]) if classes is None else _classes(classes)
    return labels[probs.argmax(1)]


def _pearson(table: np.ndarray) -> float:
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def correct_probabilities(proba, weights) -> np.ndarray:
    """Adjust source posteriors to the target prior: q(y | x) proportional to w(y) p(y | x).

    Exact under label shift with the true w and calibrated p(y | x) (Saerens et al. 2002); the
    no-retraining alternative to weighted ERM. Negative weights are refused (clip them first).
    """
    p = _features(proba, "proba")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (p.shape[1],):
        raise ValueError(f"weights must have shape ({p.shape[1]},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0 (clip negative BBSE weights first)")
    q = p * w
    z = q.sum(1, keepdims=True)
    if (z <= 0).any():
        raise ValueError(f"{int((z <= 0).sum())} row(s) have zero probability after reweighting")
    return q / z


def tweak_one_prior(k: int, cls: int, rho: float) -> np.ndarray:
    """The tweak-one shift of Lipton et al. (2018): class ``cls`` has probability rho, the other
    k - 1 share 1 - rho equally."""
    k = check_int(k, "k", minimum=2)
    cls = check_int(cls, "cls", minimum=0)
    if cls >= k:
        raise ValueError(f"cls must be < k={k}, got {cls}")
    rho = check_real(rho, "rho", minimum=0.0)
    if rho > 1:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    prior = np.full(k, (1.0 - rho) / (k - 1))
    prior[cls] = rho
    return prior


def dirichlet_prior(k: int, alpha: float, seed: int = 0) -> np.ndarray:
    """A random class prior q ~ Dirichlet(alpha, ..., alpha) (Lipton et al. 2018): small alpha,
    large shift."""
    k = check_int(k, "k", minimum=2)
    alpha = check_real(alpha, "alpha", minimum=0.0, strict=True)
    return np.random.default_rng(check_int(seed, "seed", minimum=0)).dirichlet(np.full(k, alpha))


def sample_with_prior(labels, prior, n: int, *, classes=None, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` points drawn with class prior ``prior``: class counts ~ Multinomial(n,
    prior), then points uniformly with replacement within each class."""
    y = _labels(labels, "labels")
    classes = _classes(classes, y)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (len(classes),):
        raise ValueError(f"prior must have shape ({len(classes)},), got {prior.shape}")
    if not np.isfinite(prior).all() or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
        raise ValueError(f"prior must be >= 0 and sum to 1, got {prior.tolist()}")
    n = check_int(n, "n", minimum=1)
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    counts = rng.multinomial(n, prior)
    idx = _index(y, classes, "labels")
    out = []
    for c, m in enumerate(counts):
        members = np.flatnonzero(idx == c)
        if m and not len(members):
            raise ValueError(f"class {classes[c]} has prior {prior[c]:.3g} but no points")
        out.append(rng.choice(members, size=m, replace=True))
    return rng.permutation(np.concatenate(out))


# --------------------------------------------------------------------------------------------
# Weighted empirical risk minimisation


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The importance-weighted empirical risk sum_i w_i l_i / sum_i w_i.

    Self-normalised: invariant to rescaling w, and equal to the plain mean over a data set in
    which point i appears w_i times (integer weights).
    """
    if losses.shape != weights.shape or losses.ndim != 1:
        raise ValueError(
            f"losses and weights must be 1-D of the same length, got {tuple(losses.shape)} and "
            f"{tuple(weights.shape)}"
        )
    return (weights * losses).sum() / weights.sum()


_LOSSES = {
    "cross_entropy": lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none"),
    "mse": lambda out, y: 0.5 * ((out - y) ** 2).reshape(len(out), -1).sum(1),
}


def fit_weighted(
    model: torch.nn.Module,
    x,
    y,
    weights=None,
    *,
    loss: str | Callable = "cross_entropy",
    steps: int = 500,
    lr: float = 1e-2,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    optimizer: Callable | None = None,
    seed: int = 0,
    progress: Callable | None = None,
) -> list[float]:
    """Train a torch model by importance-weighted ERM (:func:`weighted_loss`), in place.

    Parameters
    ----------
    model : the network; trained on its own device and dtype (``x`` and ``y`` are moved there).
    x : (n, ...) inputs; y : (n,) integer labels for ``"cross_entropy"``, (n, k) or (n,) targets
        for ``"mse"`` (0.5 * squared error summed over outputs).
    weights : (n,) per-example weights >= 0 (None: all 1, i.e. plain ERM).
    loss : "cross_entropy", "mse", or a callable ``(output, y) -> (n,) per-example losses``.
    steps : optimizer steps; lr, weight_decay : those of the default torch.optim.Adam;
        batch_size : None = full batch, else minibatches drawn without replacement with ``seed``.
    optimizer : ``params -> torch.optim.Optimizer`` (anything with zero_grad and step) to
        replace Adam.
    progress : an optional wrapper of the step range (e.g. the lab's ``ctx.progress``).

    Returns the weighted loss at every step.
    """
    param = next(iter(model.parameters()), None)
    if param is None:
        raise ValueError("model has no parameters to train")
    device, dtype = param.device, param.dtype
    xt = as_tensor(x, "x", dtype=dtype, device=device)
    if xt.ndim < 2 or len(xt) == 0:
        raise ValueError(f"x must be a batch (n, ...) of inputs, got shape {tuple(xt.shape)}")
    check_finite(xt, "x")
    n = len(xt)
    loss_fn = _LOSSES.get(loss) if isinstance(loss, str) else loss
    if loss_fn is None:
        raise ValueError(f"loss must be one of {', '.join(_LOSSES)} or a callable, got {loss!r}")
    if loss == "cross_entropy":
        yt = torch.as_tensor(_labels(y, "y", n), device=device)
    else:
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        yt = yt.to(device=device, dtype=dtype if yt.is_floating_point() else yt.dtype)
        if len(yt) != n:
            raise ValueError(f"y has {len(yt)} rows for {n} points")
        if yt.is_floating_point():
            check_finite(yt, "y")
    w = np.ones(n) if weights is None else _sample_weights(weights, "weights", n)
    wt = torch.as_tensor(w, device=device, dtype=dtype)
    steps = check_int(steps, "steps", minimum=1)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    if batch_size is not None:
        batch_size = min(check_int(batch_size, "batch_size", minimum=1), n)
    gen = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    params = [p for p in model.parameters() if p.requires_grad]
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    if optimizer is None:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = optimizer(params)
    history = []
    order, pos = torch.randperm(n, generator=gen), 0
    model.train()
    for _ in progress(range(steps)) if progress is not None else range(steps):
        if batch_size is None:
            idx = slice(None)
        else:
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + batch_size].to(device)
            pos += batch_size
        opt.zero_grad()
        value = weighted_loss(loss_fn(model(xt[idx]), yt[idx]), wt[idx])
        value.backward()
        opt.step()
        history.append(float(value.detach()))
    if not np.isfinite(history[-1]):
        raise FloatingPointError(f"training diverged (loss {history[-1]}); lower lr")
    model.eval()
    return history


def fit_weighted_sklearn(estimator, x, y, weights, *, clone: bool = True):
    """Fit a scikit-learn estimator by weighted ERM: ``fit(x, y, sample_weight=weights)``.

    A ``Pipeline`` passes the weights to its last step. Estimators whose ``fit`` takes no
    ``sample_weight`` are refused (rather than fitted unweighted). Returns the fitted estimator
    (a clone unless ``clone=False``).
    """
    from sklearn.base import clone as sk_clone
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import has_fit_parameter

    xs = _features(x, "x")
    w = _sample_weights(weights, "weights", len(xs))
    y = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y)
    if len(y) != len(xs):
        raise ValueError(f"y has {len(y)} rows for {len(xs)} points")
    model = sk_clone(estimator) if clone else estimator
    if isinstance(model, Pipeline):
        name, last = model.steps[-1]
        if not has_fit_parameter(last, "sample_weight"):
            raise TypeError(f"the pipeline's last step {name!r} does not accept sample_weight")
        return model.fit(xs, y, **{f"{name}__sample_weight": w})
    if not has_fit_parameter(model, "sample_weight"):
        raise TypeError(f"{type(model).__name__}.fit does not accept sample_weight")
    return model.fit(xs, y, sample_weight=w)


@dataclass(frozen=True)
class LabelShiftAnalysis:
    """:func:`analyze_label_shift`'s result: the BBSE estimate and the shift test."""

    estimate: LabelShiftEstimate
    test: ShiftTest

    def summary(self) -> dict:
        """A JSON-ready dict: the estimate's summary, the confusion matrix and the test."""
        out = dict(self.estimate.summary())
        out["confusion"] = self.estimate.confusion.tolist()
        out["test"] = {
            "method": self.test.method,
            "statistic": self.test.statistic,
            "p_value": self.test.p_value,
            "dof": self.test.dof,
        }
        return out


def analyze_label_shift(
    source_pred,
    source_labels,
    target_pred,
    *,
    classes=None,
    regularization: float = 0.0,
    test: str = "chi2",
    seed: int = 0,
) -> LabelShiftAnalysis:
    """Black-box shift estimation and detection from a model's predictions.

    :func:`bbse` on the predictions (hard labels or probabilities) and
    :func:`label_shift_test` of p(f(x)) = q(f(x)) on the hard predictions (the argmax of
    probabilities), with ``test`` = ``"chi2"``, ``"g"`` or ``"permutation"`` (Lipton, Wang,
    Smola 2018, sections 3 and 5).
    """
    est = bbse(
        source_pred, source_labels, target_pred, classes=classes, regularization=regularization
    )
    hard = [
        np.asarray(p) if np.asarray(p).ndim == 1 else est.classes[np.asarray(p).argmax(1)]
        for p in (source_pred, target_pred)
    ]
    result = label_shift_test(*hard, classes=est.classes, method=test, seed=seed)
    return LabelShiftAnalysis(est, result)


def label_shift_from_classifier(
    classifier,
    x_source,
    y_source,
    x_target,
    *,
    holdout: float = 0.4,
    soft: bool = False,
    regularization: float = 0.0,
    test: str = "chi2",
    seed: int = 0,
    rng: np.random.Generator | None = None,
) -> LabelShiftAnalysis:
    """BBSE with a black box fitted here: ``classifier`` (a scikit-learn estimator with
    ``predict``/``predict_proba``) is fitted on a seeded random ``1 − holdout`` share of the
    labelled source, and its predictions on the held-out source and on the target go to
    :func:`analyze_label_shift` (probabilities with ``soft``). Lipton et al. (2018) require the
    confusion matrix from data the model was not fitted on: hence the split. The split is
    drawn from ``rng`` (default ``np.random.default_rng(seed)``); ``seed`` also seeds the
    permutation test.
    """
    xs = _features(x_source, "x_source")
    xt = _features(x_target, "x_target")
    ys = _labels(y_source, "y_source", len(xs))
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"x_source has {xs.shape[1]} features but x_target has {xt.shape[1]}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    perm = (np.random.default_rng(seed) if rng is None else rng).permutation(len(xs))
    n_ho = int(round(holdout * len(xs)))
    if n_ho < 1 or n_ho >= len(xs):
        raise ValueError(f"holdout (--holdout) {holdout} leaves no training or held-out points")
    tr, ho = perm[n_ho:], perm[:n_ho]
    model = classifier.fit(xs[tr], ys[tr])
    classes = model.classes_
    if soft:
        ps, pt = model.predict_proba(xs[ho]), model.predict_proba(xt)
        if len(classes) != len(np.unique(ys[ho])):
            raise ValueError("soft (--soft): every class must appear in the held-out source labels")
    else:
        ps, pt = model.predict(xs[ho]), model.predict(xt)
    return analyze_label_shift(
        ps, ys[ho], pt, classes=classes, regularization=regularization, test=test, seed=seed
    )
