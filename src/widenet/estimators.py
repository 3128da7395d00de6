r"""scikit-learn estimators whose model is an infinitely wide network: NTK/NNGP kernel predictors.

An infinitely wide MLP (``wn.mlp(depth, activation, w_std, b_std)``, NTK parameterization)
trained by gradient flow on the mean squared error from f_0 = 0 (the mean over initialisations)
predicts, at training time t (Lee et al. 2019, eqs. 8–11; :func:`wn.dynamics.gradient_flow_mse`)

    f_t(x) = Θ(x, X) Θ̃⁻¹ (I − e^{−η Θ̃ t / N}) y,      Θ̃ = Θ(X, X) + λ · mean(diag Θ(X, X)) · I,

and at t = ∞ the kernel ridge(less) regression f(x) = Θ(x, X) Θ̃⁻¹ y (Jacot et al. 2018). Θ is
the NTK (``kernel="ntk"``: every layer trained) or the NNGP (``kernel="nngp"``: the readout
only, i.e. the posterior mean of the NNGP with noise λ·mean(diag K)). λ = ``ridge`` is relative to
the kernel's mean diagonal, so one grid of ridges fits every depth; N = y.size (loss "mean").
A finite ``t`` is an early-stopped wide network. ``architecture=`` replaces the MLP by any
architecture (``wn.serial(...)``, a preset such as ``"myrtle5"``; ``in_shape=(1, 8, 8)`` turns
scikit-learn's flat rows into images), e.g. the CNTK of Arora et al. (2019).

* :class:`NTKRegressor`: the above with real targets (n,) or (n, k).
* :class:`NTKClassifier`: kernel regression on one-hot targets, predicting the argmax (Arora,
  Du, Li, Salakhutdinov, Wang & Yu 2020, "Harnessing the power of infinitely wide deep nets on
  small-data tasks", ICLR; Arora et al. 2019, "On exact computation with an infinitely wide
  neural net", NeurIPS).
* :class:`NTKSVC`: a support-vector machine on the precomputed NTK/NNGP Gram matrix
  (``sklearn.svm.SVC(kernel="precomputed")``), the classifier of Arora et al. 2020's UCI study.

Kernels are ``wn.mlp(...).kernel`` in float64; the dual coefficients Θ̃⁻¹(I − e^{−ηΘ̃t/N}) y are
stored, so ``predict`` costs one kernel between the new and the training points. At t = ∞ they
come from a Cholesky solve (:func:`kernel_ridge_solve`, n³/3 flops, as scikit-learn's
``KernelRidge``); a finite t needs the eigendecomposition of Θ̃
(``wn.dynamics.gradient_flow_dual``), computed once for all requested times. Inputs are validated by
``sklearn.utils.validation`` exactly as scikit-learn's own estimators; inputs are used as given
(standardize them first, e.g. ``make_pipeline(StandardScaler(), NTKClassifier())``: the first
layer scales by 1/√d, expecting features of unit variance).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from widenet import dynamics
from widenet._checks import all_finite, check_device, check_int, check_real
from widenet.threads import single_threaded

__all__ = [
    "KERNELS",
    "NTKClassifier",
    "NTKRegressor",
    "NTKSVC",
    "dual_coefficients",
    "infinite_width_gram",
    "kernel_ridge_solve",
]

KERNELS = ("ntk", "nngp")
_F64 = torch.float64


MLP_DEFAULTS = {"depth": 3, "activation": "relu", "w_std": 2**0.5, "b_std": 0.1}


def resolve_architecture(architecture, in_shape, **mlp_params):
    """The architecture of an estimator: ``wn.mlp(**mlp_params)``, or ``architecture``.

    ``architecture`` is anything :func:`widenet.architectures.from_spec` takes (a
    ``wn.serial(...)``/preset object, a preset name such as ``"myrtle5"``, or a parsed YAML
    description). With it, the MLP hyper-parameters must keep their defaults (they describe a
    different network and would be ignored): a changed one is refused. ``in_shape`` (C, L) or
    (C, H, W) reshapes scikit-learn's flat (n, d) inputs to images/sequences for the architecture.
    """
    from widenet.architectures import from_spec, mlp

    if in_shape is not None:
        shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else None
        if (
            shape is None
            or len(shape) not in (2, 3)
            or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in shape)
        ):
            raise ValueError(
                f"in_shape must be (C, L) or (C, H, W) of positive integers, got {in_shape!r}"
            )
    if architecture is None:
        if in_shape is not None:
            raise ValueError("in_shape applies only with architecture= (an MLP takes flat inputs)")
        return mlp(**mlp_params)
    changed = sorted(
        k
        for k, v in mlp_params.items()
        if not (v is MLP_DEFAULTS[k] or (isinstance(v, (int, float, str)) and v == MLP_DEFAULTS[k]))
    )
    if changed:
        raise ValueError(
            f"{', '.join(changed)} describe the default MLP and would be ignored with "
            "architecture=; leave them at their defaults or put them into the architecture"
        )
    return from_spec(architecture)


def infinite_width_gram(
    x1,
    x2=None,
    *,
    depth=3,
    activation="relu",
    w_std=2**0.5,
    b_std=0.1,
    kernel="ntk",
    device=None,
    architecture=None,
    in_shape=None,
) -> torch.Tensor:
    """The float64 NTK or NNGP (``kernel``) of ``wn.mlp(depth, activation, w_std, b_std)``.

    With ``architecture`` (see :func:`resolve_architecture`) the kernel is that architecture's,
    the flat inputs reshaped to ``(n, *in_shape)`` when ``in_shape`` is given.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    device = None if device is None else check_device(device)
    arch = resolve_architecture(
        architecture, in_shape, depth=depth, activation=activation, w_std=w_std, b_std=b_std
    )
    # A copy: scikit-learn may hand over read-only arrays, which torch will not wrap.
    x1 = torch.tensor(np.asarray(x1, dtype=np.float64), device=device)
    x2 = None if x2 is None else torch.tensor(np.asarray(x2, dtype=np.float64), device=device)
    if in_shape is not None:
        size = int(np.prod(in_shape))
        for name, x in (("X", x1), ("X", x2)):
            if x is not None and x.shape[1] != size:
                raise ValueError(
                    f"{name} has {x.shape[1]} features; in_shape {tuple(in_shape)} needs {size}"
                )
        x1 = x1.reshape(len(x1), *in_shape)
        x2 = None if x2 is None else x2.reshape(len(x2), *in_shape)
    return getattr(arch.kernel(x1, x2, get=kernel), kernel)


def _square_kernel(k_train) -> torch.Tensor:
    k = torch.as_tensor(k_train, dtype=_F64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"k_train must be a square (n, n) kernel, got shape {tuple(k.shape)}")
    if not all_finite(k):
        raise ValueError("k_train contains NaN or infinite values; expected a finite kernel")
    lo, hi = torch.aminmax(k)  # max |k| without an n² temporary
    scale = max(float(hi), -float(lo))
    if float((k - k.T).abs().max()) > math.sqrt(torch.finfo(_F64).eps) * max(scale, 1e-300):
        raise ValueError("k_train is not symmetric; a training kernel K(X, X) must be symmetric")
    return k


def kernel_ridge_solve(
    k_train, y, *, ridge: float = 0.0, overwrite: bool = False, check: bool = True
) -> torch.Tensor:
    """α = (K + ridge · mean(diag K) · I)⁻¹ y by Cholesky: the t = ∞ dual coefficients.

    K̃ = K + λI is factored as L Lᵀ (``torch.linalg.cholesky_ex``, LAPACK ``dpotrf`` on the CPU;
    n³/3 flops, about a tenth of a symmetric eigendecomposition) and α by the two triangular
    solves of ``torch.cholesky_solve`` (scipy's ``cho_factor``/``cho_solve`` are the same LAPACK
    calls, but their BLAS threads ignore ``torch.set_num_threads``: 0.68 s against 0.03 s at
    n = 450 on a loaded 2-core machine). One triangle of K is read. No jitter
    is added: a failed factorisation, or a pivot L_ii² <= n · eps · max(diag K̃) (then
    λ_min(K̃) <= L_ii² is numerically zero, e.g. duplicated training points with ridge = 0),
    raises a ValueError asking for ``ridge > 0``. ``overwrite=True`` lets the factor replace
    ``k_train`` (saves an n × n copy). ``check=False`` skips the finiteness and symmetry
    checks of ``k_train`` (three passes over it, ~10 % of a fit at n = 1347), for a Gram matrix
    known to be finite and symmetric (the estimators' own, mirrored and checked by the kernel
    engine); its shape is still checked. Returns (n, k) float64 (y of shape (n,) as (n, 1)).
    """
    if check:
        k = _square_kernel(k_train)
    else:
        k = torch.as_tensor(k_train, dtype=_F64)
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
            raise ValueError(f"k_train must be a square (n, n) kernel, got shape {tuple(k.shape)}")
    ridge = check_real(ridge, "ridge", minimum=0.0)
    y = torch.as_tensor(y, dtype=_F64, device=k.device)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != k.shape[0]:
        raise ValueError(f"y must have shape ({k.shape[0]},) or ({k.shape[0]}, k), got {y.shape}")
    n = k.shape[0]
    diag = torch.diagonal(k)
    lam = ridge * max(float(diag.mean()), 0.0)
    a = k if overwrite else k.clone()
    torch.diagonal(a).add_(lam)
    tol = n * torch.finfo(_F64).eps * max(float(torch.diagonal(a).max()), 1e-300)
    hint = (
        f"the training kernel K + ridge · mean(diag K) · I (ridge = {ridge:g}) is singular or not "
        "positive definite to working precision ({}); pass ridge > 0 (e.g. 1e-6) or remove "
        "duplicated training points"
    )
    # LAPACK works on column-major matrices: a row-major K̃ is symmetric, so its transpose (a
    # view) is K̃ in column-major order, factored in place without the two transposing
    # n x n copies (in and out) that the row-major argument costs (~25 ms at n = 1347).
    low = a.mT
    low, info = torch.linalg.cholesky_ex(low, out=(low, torch.empty((), dtype=torch.int32)))
    if int(info) != 0:
        raise ValueError(hint.format(f"Cholesky failed at leading minor {int(info)}"))
    small = float(torch.diagonal(low).min()) ** 2
    if small <= tol:
        raise ValueError(hint.format(f"smallest Cholesky pivot² {small:.3g} <= {tol:.3g}"))
    return torch.cholesky_solve(y, low)


def dual_coefficients(
    k_train, y, *, ridge: float = 0.0, t=math.inf, learning_rate: float = 1.0
) -> torch.Tensor:
    """α with f_t(x) = K(x, X) α for the flow of the module docstring: (n, k) float64.

    α = K̃⁻¹(I − e^{−ηK̃t/N}) y, K̃ = K + ridge · mean(diag K) · I, N = y.numel(). At t = ∞
    (α = K̃⁻¹ y) by Cholesky (:func:`kernel_ridge_solve`); finite times from one
    eigendecomposition of K̃ shared by all of them (``wn.dynamics.gradient_flow_dual``).
    ``t`` is a time or a 1-D array of them; an array gives (T, n, k).
    """
    k = _square_kernel(k_train)
    ridge = check_real(ridge, "ridge", minimum=0.0)
    learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    times = np.asarray(t, dtype=np.float64)
    if times.ndim > 1 or times.size == 0 or np.any(np.isnan(times)) or np.any(times < 0):
        raise ValueError(f"t must be a time >= 0 (or inf) or a 1-D array of them, got {t!r}")
    flat = times.reshape(-1)
    y = torch.as_tensor(y, dtype=_F64, device=k.device)
    y = y[:, None] if y.ndim == 1 else y
    out = torch.empty((flat.size, *y.shape), dtype=_F64, device=k.device)
    finite = np.isfinite(flat)
    if finite.any():
        lam = ridge * max(float(torch.diagonal(k).mean()), 0.0)
        out[torch.as_tensor(finite)] = dynamics.gradient_flow_dual(
            k, y, flat[finite], learning_rate=learning_rate, loss="mean", diag_reg=lam
        ).to(out.device)
    if not finite.all():
        out[torch.as_tensor(~finite)] = kernel_ridge_solve(k, y, ridge=ridge).to(out.device)
    return out[0] if times.ndim == 0 else out


# Small problems (train x train and test x train Gram matrices of at most SMALL_SOLVE^2
# entries) run with one torch thread on the CPU (widenet.threads): the kernel, checks,
# Cholesky and solves are a few hundred operations of at most ~0.1 s, whose intra-op
# barriers cost more than their parallelism on a loaded machine (digits, n = 1347, load ~10:
# the solve 0.30 s with 2 threads against 0.09 s with one, the kernel's checks 0.16 s
# against 0.014 s). Larger problems keep the configured threads (the kernel's tiles then run
# in a pool, and a large Cholesky is a long GEMM-bound call).
SMALL_SOLVE = 2048


def _small_single_threaded(n1: int, n2: int, device):
    if n1 * n2 <= SMALL_SOLVE * SMALL_SOLVE:
        return single_threaded("cpu" if device is None else check_device(device))
    return contextlib.nullcontext()


class _InfiniteWidth(BaseEstimator):
    """Shared hyper-parameters, their validation and the kernel of the architecture."""

    def _check_params(self) -> None:
        check_int(self.depth, "depth", minimum=1)
        check_real(self.w_std, "w_std", minimum=0.0, strict=True)
        check_real(self.b_std, "b_std", minimum=0.0)
        resolve_architecture(
            self.architecture,
            self.in_shape,
            depth=self.depth,
            activation=self.activation,
            w_std=self.w_std,
            b_std=self.b_std,
        )
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")

    def _gram(self, x1, x2=None) -> torch.Tensor:
        return infinite_width_gram(
            x1,
            x2,
            depth=self.depth,
            activation=self.activation,
            w_std=self.w_std,
            b_std=self.b_std,
            kernel=self.kernel,
            device=self.device,
            architecture=self.architecture,
            in_shape=self.in_shape,
        )


class _KernelRegression(_InfiniteWidth):
    """Fit/predict of the flow of the module docstring on (n, k) float targets."""

    # One signature for both estimators (scikit-learn reads the parameters from __init__).
    def __init__(
        self,
        depth=3,
        activation="relu",
        w_std=2**0.5,
        b_std=0.1,
        kernel="ntk",
        ridge=1e-6,
        t=math.inf,
        learning_rate=1.0,
        device=None,
        architecture=None,
        in_shape=None,
    ):
        self.depth = depth
        self.activation = activation
        self.w_std = w_std
        self.b_std = b_std
        self.kernel = kernel
        self.ridge = ridge
        self.t = t
        self.learning_rate = learning_rate
        self.device = device
        self.architecture = architecture
        self.in_shape = in_shape

    def _check_flow_params(self) -> None:
        self._check_params()
        check_real(self.ridge, "ridge", minimum=0.0)
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        t = self.t
        if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not t >= 0:
            raise ValueError(f"t must be a number >= 0 or math.inf, got {t!r}")

    def _fit_targets(self, x: np.ndarray, targets: np.ndarray, *, keep_gram: bool = False):
        """Fit α on (x, targets); returns a copy of K(X, X) when ``keep_gram`` (else None)."""
        self._check_flow_params()
        with _small_single_threaded(len(x), len(x), self.device):
            k = self._gram(x)
            kept = k.clone() if keep_gram else None
            self.dual_coef_ = self._solve(k, targets, overwrite=True).cpu().numpy()
        self.X_fit_ = x
        return kept

    def _solve(self, k: torch.Tensor, targets, *, overwrite: bool = False) -> torch.Tensor:
        if math.isinf(self.t):
            # overwrite: the Gram matrix is ours, the Cholesky factor may replace it.
            # check=False: k is the engine's Gram matrix (mirrored, checked finite).
            return kernel_ridge_solve(
                k, targets, ridge=self.ridge, overwrite=overwrite, check=False
            )
        return dual_coefficients(
            k, targets, ridge=self.ridge, t=float(self.t), learning_rate=self.learning_rate
        )

    def _outputs(self, x) -> np.ndarray:
        check_is_fitted(self)
        x = validate_data(self, x, reset=False, dtype=np.float64)
        with _small_single_threaded(len(x), len(self.X_fit_), self.device):
            k = self._gram(x, self.X_fit_)
            return (k @ torch.as_tensor(self.dual_coef_, device=k.device)).cpu().numpy()


_DOC_PARAMS = """
    Parameters
    ----------
    depth : int, number of hidden layers of the infinitely wide MLP (>= 1).
    activation : str or ``wn.activations.Activation``, as in ``wn.mlp``.
    w_std, b_std : weight and bias standard deviations (NTK parameterization).
    kernel : "ntk" (all layers trained) or "nngp" (readout only).
    ridge : λ >= 0, added to the diagonal as λ · mean(diag K) (relative to the kernel's scale).
    t : training time >= 0 of gradient flow on the MSE; ``math.inf`` (default) is the converged
        kernel regression. Time in the units of ``wn.dynamics.gradient_flow_mse(loss="mean")``.
    learning_rate : η > 0, the flow's learning rate (only t·η matters).
    device : torch device of the kernel computation (default: CPU).
    architecture : None (the MLP above) or any architecture: ``wn.serial(...)``, a preset name
        (``"cnn"``, ``"myrtle5"``, ...) or a parsed YAML description
        (``wn.architectures.from_spec``); the MLP parameters then keep their defaults.
    in_shape : (C, L) or (C, H, W): with ``architecture``, the flat (n, d) inputs are reshaped
        to (n, *in_shape), e.g. (1, 8, 8) for scikit-learn's digits.
"""


class NTKRegressor(RegressorMixin, _KernelRegression):
    __doc__ = (
        "Kernel regression with the infinite-width NTK/NNGP: the converged (t = ∞) or "
        "early-stopped (finite t) infinitely wide network on the MSE.\n"
        + _DOC_PARAMS
        + """
    Attributes
    ----------
    X_fit_ : (n, d) float64 training inputs. dual_coef_ : (n, k) α, f(x) = K(x, X_fit_) α.
    n_features_in_ : d.
    """
    )

    def fit(self, X, y):
        x, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        self._y_ndim = y.ndim
        self._fit_targets(x, y.reshape(len(y), -1).astype(np.float64))
        return self

    def predict(self, X):
        out = self._outputs(X)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class NTKClassifier(ClassifierMixin, _KernelRegression):
    __doc__ = (
        "Classifier by kernel regression on one-hot targets with the infinite-width NTK/NNGP "
        "(Arora et al. 2019, 2020); predicts the argmax of the k outputs.\n"
        + _DOC_PARAMS
        + """    probability : bool, default False. Fit a temperature for :meth:`predict_proba`.
    calibration_folds : int >= 2, default 5. Folds of the cross-validated outputs the
        temperature is fitted on (fewer when a class has fewer members; at least 2 per class).

    Probabilities (``probability=True``)
    ------------------------------------
    The outputs f(x) ∈ R^k regress one-hot targets, so they are not probabilities; on the
    training points they nearly interpolate the targets (ridge ~ 0), so a scale fitted there
    would be overconfident. ``fit`` therefore computes out-of-fold outputs on the training data
    (stratified ``calibration_folds``-fold cross-validation, unshuffled hence deterministic, each
    fold solved on a slice of the one training Gram matrix) and fits one temperature T > 0 by
    minimising their multinomial log-loss; ``predict_proba(x) = softmax(f(x) / T)``. This is
    temperature scaling (Guo, Pleiss, Sun & Weinberger 2017, "On calibration of modern neural
    networks", ICML): one parameter, so it cannot overfit the calibration set, and it keeps the
    argmax, so ``predict`` and ``predict_proba`` agree (Platt's two parameters per class with
    ``sklearn.calibration.CalibratedClassifierCV`` can be wrapped around the estimator instead).
    The log-loss is convex in 1/T, found by bounded Brent search on 1/T ∈ [0, 1e4]. Costs
    ``calibration_folds`` extra solves of size ~(1 − 1/folds) n.

    Attributes
    ----------
    classes_ : the class labels (sorted). X_fit_, dual_coef_ : as in NTKRegressor (k columns,
    one per class). n_features_in_ : d. temperature_ : T (``probability=True`` only).
    """
    )

    def __init__(
        self,
        depth=3,
        activation="relu",
        w_std=2**0.5,
        b_std=0.1,
        kernel="ntk",
        ridge=1e-6,
        t=math.inf,
        learning_rate=1.0,
        device=None,
        architecture=None,
        in_shape=None,
        probability=False,
        calibration_folds=5,
    ):
        super().__init__(
            depth=depth,
            activation=activation,
            w_std=w_std,
            b_std=b_std,
            kernel=kernel,
            ridge=ridge,
            t=t,
            learning_rate=learning_rate,
            device=device,
            architecture=architecture,
            in_shape=in_shape,
        )
        self.probability = probability
        self.calibration_folds = calibration_folds

    def fit(self, X, y):
        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        if not isinstance(self.probability, (bool, np.bool_)):
            raise ValueError(f"probability must be True or False, got {self.probability!r}")
        check_int(self.calibration_folds, "calibration_folds", minimum=2)
        self.classes_, idx = np.unique(y, return_inverse=True)
        onehot = np.zeros((len(y), len(self.classes_)))
        onehot[np.arange(len(y)), idx] = 1.0
        if self.probability and np.bincount(idx).min() < 2:
            raise ValueError(
                "probability=True needs at least 2 training points of every class (the "
                f"temperature is fitted out of fold); got a class with {np.bincount(idx).min()} "
                f"sample(s), class counts {np.bincount(idx).tolist()}"
            )
        gram = self._fit_targets(x, onehot, keep_gram=bool(self.probability))
        if self.probability:
            with _small_single_threaded(len(x), len(x), self.device):
                self.temperature_ = self._fit_temperature(gram, onehot, idx)
        elif hasattr(self, "temperature_"):
            del self.temperature_
        return self

    def _fit_temperature(self, gram: torch.Tensor, onehot: np.ndarray, idx: np.ndarray):
        from scipy.optimize import minimize_scalar
        from scipy.special import log_softmax
        from sklearn.model_selection import StratifiedKFold

        folds = min(int(self.calibration_folds), int(np.bincount(idx).min()))
        if len(self.classes_) < 2:
            return 1.0
        out = np.empty_like(onehot)
        for tr, te in StratifiedKFold(folds).split(onehot, idx):
            tr_, te_ = torch.as_tensor(tr), torch.as_tensor(te)
            alpha = self._solve(gram[tr_][:, tr_], onehot[tr], overwrite=True)
            out[te] = (gram[te_][:, tr_] @ alpha.to(gram.device)).cpu().numpy()

        def nll(beta):
            return -float(np.mean(log_softmax(beta * out, axis=1)[np.arange(len(idx)), idx]))

        beta = minimize_scalar(nll, bounds=(0.0, 1e4), method="bounded", options={"xatol": 1e-6})
        return 1.0 / max(float(beta.x), 1e-12)

    def decision_function(self, X):
        """Outputs f(x): (m, k) for k > 2 classes, f_1 − f_0 (m,) for two (sklearn's convention)."""
        out = self._outputs(X)
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def predict(self, X):
        outputs = self._outputs(X)
        return self.classes_[np.argmax(outputs, axis=1)]

    @available_if(lambda self: self.probability)
    def predict_proba(self, X):
        """softmax(f(x) / temperature_): (m, k) class probabilities, columns as ``classes_``."""
        from scipy.special import softmax

        check_is_fitted(self, "temperature_")
        return softmax(self._outputs(X) / self.temperature_, axis=1)

    @available_if(lambda self: self.probability)
    def predict_log_proba(self, X):
        """log of :meth:`predict_proba`, computed stably (log-softmax)."""
        from scipy.special import log_softmax

        check_is_fitted(self, "temperature_")
        return log_softmax(self._outputs(X) / self.temperature_, axis=1)


class NTKSVC(ClassifierMixin, _InfiniteWidth):
    """Support-vector classifier on the infinite-width NTK/NNGP Gram matrix.

    ``sklearn.svm.SVC(kernel="precomputed", C=C, class_weight=class_weight)`` fitted on
    K(X, X) and applied to K(x, X) (Arora et al. 2020 select C by cross-validation).

    Parameters
    ----------
    depth, activation, w_std, b_std, kernel, device, architecture, in_shape : as in
        :class:`NTKRegressor`.
    C : float > 0, the SVM's inverse regularisation.
    class_weight : passed to ``SVC``.

    Attributes
    ----------
    svc_ : the fitted ``SVC``; classes_, X_fit_, n_features_in_.
    """

    def __init__(
        self,
        depth=3,
        activation="relu",
        w_std=2**0.5,
        b_std=0.1,
        kernel="ntk",
        C=1.0,
        class_weight=None,
        device=None,
        architecture=None,
        in_shape=None,
    ):
        self.depth = depth
        self.activation = activation
        self.w_std = w_std
        self.b_std = b_std
        self.kernel = kernel
        self.C = C
        self.class_weight = class_weight
        self.device = device
        self.architecture = architecture
        self.in_shape = in_shape

    def fit(self, X, y):
        from sklearn.svm import SVC

        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self._check_params()
        check_real(self.C, "C", minimum=0.0, strict=True)
        k = self._gram(x).cpu().numpy()
        self.svc_ = SVC(kernel="precomputed", C=self.C, class_weight=self.class_weight).fit(k, y)
        self.classes_ = self.svc_.classes_
        self.X_fit_ = x
        return self

    def _test_gram(self, X) -> np.ndarray:
        check_is_fitted(self)
        x = validate_data(self, X, reset=False, dtype=np.float64)
        return self._gram(x, self.X_fit_).cpu().numpy()

    def decision_function(self, X):
        k = self._test_gram(X)
        return self.svc_.decision_function(k)

    def predict(self, X):
        k = self._test_gram(X)
        return self.svc_.predict(k)
