"""Helpers shared by the Monte-Carlo checks of the closed-form kernels (``test_networks.py``,
``test_stax_networks.py``): the empirical NTK computed from scratch with ``torch.func``, so that
the check is independent of ``widenet.empirical``, and the statistics of a stack of samples."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, jacrev


def empirical_ntk(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J J^T with J the Jacobian of output 0 wrt every parameter (float64, torch.func)."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x,))[:, 0])(params)
    n = x.shape[0]
    return sum(j.reshape(n, -1) @ j.reshape(n, -1).T for j in jac.values())


def mc_stats(samples: torch.Tensor, target: torch.Tensor):
    """(relative error of the mean, its Monte-Carlo standard error, rms per-seed deviation)."""
    s = samples.shape[0]
    scale = torch.linalg.norm(target)
    err = float(torch.linalg.norm(samples.mean(0) - target) / scale)
    se = float(torch.linalg.norm(samples.std(0)) / math.sqrt(s) / scale)
    rms = float(((samples - target) ** 2).sum((1, 2)).mean().sqrt() / scale)
    return err, se, rms
