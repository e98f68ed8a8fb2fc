"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (or $PRUNECAL_SHARED_DATA)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("PRUNECAL_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real data folder; the test is skipped where it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data not found (set PRUNECAL_SHARED_DATA)")
    return d


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
