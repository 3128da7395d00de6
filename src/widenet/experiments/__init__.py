"""The built-in experiments; importing this package registers each of them with the lab.

Add an experiment by writing a module here that calls :func:`widenet.lab.register`, and
importing it below.
"""

import widenet.experiments.cnn_kernels  # noqa: F401  (registers cnn-kernels)
import widenet.experiments.condensation  # noqa: F401  (registers condensation)
import widenet.experiments.condensation_pruning  # noqa: F401  (registers condensation-pruning)
import widenet.experiments.distribution_shift  # noqa: F401  (registers distribution-shift)
import widenet.experiments.du_convergence  # noqa: F401  (registers du-convergence)
import widenet.experiments.du_theory  # noqa: F401  (registers du-theory-vs-practice)
import widenet.experiments.embedding_hessian  # noqa: F401  (registers embedding-hessian)
import widenet.experiments.embedding_plateaus  # noqa: F401  (registers embedding-plateaus)
import widenet.experiments.frequency_principle  # noqa: F401  (registers frequency-principle)
import widenet.experiments.gp_vs_ensemble  # noqa: F401  (registers gp-vs-ensemble)
import widenet.experiments.init_stability  # noqa: F401  (registers init-stability)
import widenet.experiments.linear_vs_network  # noqa: F401  (registers linear-vs-network)
import widenet.experiments.phase_diagram  # noqa: F401  (registers phase-diagram)
from widenet.experiments import kernel_convergence

__all__ = ["kernel_convergence"]
import widenet.experiments.double_descent  # noqa: F401  (registers double-descent)
import widenet.experiments.small_data  # noqa: F401  (registers small-data)
