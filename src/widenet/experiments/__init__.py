"""The built-in experiments; importing this package registers each of them with the lab.

Add an experiment by writing a module here that calls :func:`widenet.lab.register`, and
importing it below.
"""

from widenet.experiments import kernel_convergence

__all__ = ["kernel_convergence"]
