"""Shared pytest configuration.

Tests marked ``cuda`` are skipped when no CUDA device is present. Under pytest-xdist (one worker
per core, ``make test``) each worker runs torch on one thread: the workers already fill the cores,
and more threads than cores would only contend.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
