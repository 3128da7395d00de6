r"""scikit-learn estimators whose model is an infinitely wide network: NTK/NNGP kernel predictors.

An infinitely wide MLP (``wn.mlp(depth, activation, w_std, b_std)``, NTK parameterization)
trained by gradient flow on the mean squared error from f_0 = 0 (the mean over initialisations)
predicts, at training time t (Lee et al. 2019, eqs. 8–11; :func:`wn.dynamics.gradient_flow_mse`)

    f_t(x) = Θ(x, X) Θ̃⁻¹ (I − e^{−η Θ̃ t / N}) y,      Θ̃ = Θ(X, X) + λ · mean(diag Θ(X, X)) · I,

and at t = ∞ the kernel ridge(less) regression f(x) = Θ(x, X) Θ̃⁻¹ y (Jacot et al. 2018). Θ is
the NTK (``kernel="ntk"``: every layer trained) or the NNGP (``kernel="nngp"``: the readout
only, i.e. the posterior mean of the NNGP with noise λ·mean(diag K)). λ = ``ridge`` is relative to
the kernel's mean diagonal, so one grid of ridges fits every depth; N = y.size (loss "mean").
A finite ``t`` is an early-stopped wide network.

* :class:`NTKRegressor`: the above with real targets (n,) or (n, k).
* :class:`NTKClassifier`: kernel regression on one-hot targets, predicting the argmax (Arora,
  Du, Li, Salakhutdinov, Wang & Yu 2020, "Harnessing the power of infinitely wide deep nets on
  small-data tasks", ICLR; Arora et al. 2019, "On exact computation with an infinitely wide
  neural net", NeurIPS).
* :class:`NTKSVC`: a support-vector machine on the precomputed NTK/NNGP Gram matrix
  (``sklearn.svm.SVC(kernel="precomputed")``), the classifier of Arora et al. 2020's UCI study.

Kernels are ``wn.mlp(...).kernel`` in float64; the dual coefficients Θ̃⁻¹(I − e^{−ηΘ̃t/N}) y come
from ``wn.dynamics.gradient_flow_mse`` (one eigendecomposition) and are stored, so ``predict``
costs one kernel between the new and the training points. Inputs are validated by
``sklearn.utils.validation`` exactly as scikit-learn's own estimators; inputs are used as given
(standardize them first, e.g. ``make_pipeline(StandardScaler(), NTKClassifier())``: the first
layer scales by 1/√d, expecting features of unit variance).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from widenet import dynamics
from widenet._checks import check_device, check_int, check_real

__all__ = [
    "KERNELS",
    "NTKClassifier",
    "NTKRegressor",
    "NTKSVC",
    "dual_coefficients",
    "infinite_width_gram",
]

KERNELS = ("ntk", "nngp")
_F64 = torch.float64


def infinite_width_gram(
    x1, x2=None, *, depth=3, activation="relu", w_std=2**0.5, b_std=0.1, kernel="ntk", device=None
) -> torch.Tensor:
    """The float64 NTK or NNGP (``kernel``) of ``wn.mlp(depth, activation, w_std, b_std)``."""
    import widenet as wn

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    device = None if device is None else check_device(device)
    arch = wn.mlp(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
    # A copy: scikit-learn may hand over read-only arrays, which torch will not wrap.
    x1 = torch.tensor(np.asarray(x1, dtype=np.float64), device=device)
    x2 = None if x2 is None else torch.tensor(np.asarray(x2, dtype=np.float64), device=device)
    return getattr(arch.kernel(x1, x2, get=kernel), kernel)


def dual_coefficients(
    k_train, y, *, ridge: float = 0.0, t: float = math.inf, learning_rate: float = 1.0
) -> torch.Tensor:
    """α with f_t(x) = K(x, X) α for the flow of the module docstring: (n, k) float64.

    α = K̃⁻¹(I − e^{−ηK̃t/N}) y, K̃ = K + ridge · mean(diag K) · I, N = y.numel(). Obtained from
    ``wn.dynamics.gradient_flow_mse`` with the identity as test kernel (then its test output is
    α itself), so the eigen-solve and its singular-kernel errors are the dynamics module's.
    """
    k = torch.as_tensor(k_train, dtype=_F64)
    ridge = check_real(ridge, "ridge", minimum=0.0)
    scale = float(torch.diagonal(k).mean()) if k.ndim == 2 and k.shape[0] == k.shape[1] else 1.0
    eye = torch.eye(k.shape[0], dtype=_F64, device=k.device)
    flow = dynamics.gradient_flow_mse(
        k,
        y,
        t,
        ntk_test_train=eye,
        learning_rate=learning_rate,
        loss="mean",
        diag_reg=ridge * max(scale, 0.0),
    )
    return flow.test[0]


class _InfiniteWidth(BaseEstimator):
    """Shared hyper-parameters, their validation and the kernel of the architecture."""

    def _check_params(self) -> None:
        check_int(self.depth, "depth", minimum=1)
        check_real(self.w_std, "w_std", minimum=0.0, strict=True)
        check_real(self.b_std, "b_std", minimum=0.0)
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

    def _check_flow_params(self) -> None:
        self._check_params()
        check_real(self.ridge, "ridge", minimum=0.0)
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        t = self.t
        if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not t >= 0:
            raise ValueError(f"t must be a number >= 0 or math.inf, got {t!r}")

    def _fit_targets(self, x: np.ndarray, targets: np.ndarray) -> None:
        self._check_flow_params()
        k = self._gram(x)
        alpha = dual_coefficients(
            k, targets, ridge=self.ridge, t=float(self.t), learning_rate=self.learning_rate
        )
        self.X_fit_ = x
        self.dual_coef_ = alpha.cpu().numpy()

    def _outputs(self, x) -> np.ndarray:
        check_is_fitted(self)
        x = validate_data(self, x, reset=False, dtype=np.float64)
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
        + """
    Attributes
    ----------
    classes_ : the class labels (sorted). X_fit_, dual_coef_ : as in NTKRegressor (k columns,
    one per class). n_features_in_ : d.
    """
    )

    def fit(self, X, y):
        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        onehot = np.zeros((len(y), len(self.classes_)))
        onehot[np.arange(len(y)), idx] = 1.0
        self._fit_targets(x, onehot)
        return self

    def decision_function(self, X):
        """Outputs f(x): (m, k) for k > 2 classes, f_1 − f_0 (m,) for two (sklearn's convention)."""
        out = self._outputs(X)
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def predict(self, X):
        outputs = self._outputs(X)
        return self.classes_[np.argmax(outputs, axis=1)]


class NTKSVC(ClassifierMixin, _InfiniteWidth):
    """Support-vector classifier on the infinite-width NTK/NNGP Gram matrix.

    ``sklearn.svm.SVC(kernel="precomputed", C=C, class_weight=class_weight)`` fitted on
    K(X, X) and applied to K(x, X) (Arora et al. 2020 select C by cross-validation).

    Parameters
    ----------
    depth, activation, w_std, b_std, kernel, device : as in :class:`NTKRegressor`.
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
    ):
        self.depth = depth
        self.activation = activation
        self.w_std = w_std
        self.b_std = b_std
        self.kernel = kernel
        self.C = C
        self.class_weight = class_weight
        self.device = device

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
