"""The built-in experiments; importing this package registers each of them with the lab.

Add an experiment by writing a module here that calls :func:`widenet.lab.register`, and
importing it below.
"""

import widenet.experiments.gp_vs_ensemble  # noqa: F401  (registers gp-vs-ensemble)
import widenet.experiments.linear_vs_network  # noqa: F401  (registers linear-vs-network)
from widenet.experiments import kernel_convergence

__all__ = ["kernel_convergence"]
import widenet.experiments.double_descent  # noqa: F401  (registers double-descent)
import widenet.experiments.small_data  # noqa: F401  (registers small-data)
