"""Shared benchmark settings: torch thread count per benchmark and machine info.

Run with ``python -m pytest benchmarks/... --benchmark-only`` (``benchmarks/`` is outside the
test suite's ``testpaths``, so ``pytest`` alone never runs it).
"""
from __future__ import annotations

import pytest
import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        from prunecal._native import cpu_features

        from prunecal import _C

        machine_info["prunecal_native"] = dict(cpu_features(), **_C.isa_config())
    except ImportError:  # pragma: no cover
        machine_info["prunecal_native"] = None
    machine_info["torch"] = torch.__version__


@pytest.fixture
def torch_threads(request):
    """Set ``torch.set_num_threads(n)`` for one benchmark (indirect parametrisation), restore after."""
    n = request.param
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(old)
