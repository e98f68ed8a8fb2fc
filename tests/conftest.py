"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (or $PRUNECAL_SHARED_DATA)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# scripts/mutation.sh runs the tests with HYPOTHESIS_PROFILE=mutation: a failing example is
# reported as found (no shrinking, which can take minutes per mutant), nothing is stored
from hypothesis import Phase, settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    _hyp_settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


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


@pytest.fixture
def run_python(tmp_path):
    """``run(script, *args, **env)``: ``python -c script args`` in a fresh process with the extra
    environment variables ``env`` (e.g. PRUNECAL_NO_JIT="1", read once per process), importing the
    prunecal under test, run in ``tmp_path`` (keeps a checkout off ``sys.path``); fails the test
    with the script's stderr if it exits non-zero. Returns the CompletedProcess (text output)."""
    import prunecal

    if os.environ.get("PRUNECAL_MUTATION_RUN") == "1":  # set by scripts/mutation.sh only
        pytest.skip("a new process cannot import mutmut's trampolined package (mutation run)")

    def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        full = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(prunecal.__file__)), **env)
        done = subprocess.run([sys.executable, "-c", script, *args], env=full, timeout=300, cwd=tmp_path,
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"script exited with {done.returncode}:\n{done.stderr}")
        return done

    return run


def native_core():
    """``prunecal._C`` or ``None`` (with the ImportError) when it is missing or does not load."""
    try:
        from prunecal import _C
    except ImportError as e:  # a missing or broken build (undefined symbol, wrong ABI...)
        return None, e
    return _C, None


def require_native():
    """``prunecal._C``; a missing or broken native core FAILS the test (CI builds it, so a green run
    must never hide it). Only ``PRUNECAL_ALLOW_NO_NATIVE=1`` (pure-Python work without a compiler)
    turns that into a skip."""
    mod, err = native_core()
    if mod is not None:
        return mod
    if os.environ.get("PRUNECAL_ALLOW_NO_NATIVE") == "1":
        pytest.skip(f"prunecal._C not built ({err}); allowed by PRUNECAL_ALLOW_NO_NATIVE=1")
    pytest.fail(f"prunecal._C (the native core) is missing or broken: {err!r}. Build it "
                "(pip install . or scripts/dev_build.sh) or set PRUNECAL_ALLOW_NO_NATIVE=1 to skip "
                "the native tests", pytrace=False)


@pytest.fixture
def native():
    """The native core module for tests that need it (``pytestmark = pytest.mark.usefixtures("native")``
    for a whole file); see :func:`require_native`."""
    return require_native()


def pytest_configure(config):
    config.addinivalue_line("markers", "native: needs the native core prunecal._C; a missing or broken "
                            "build fails the test (PRUNECAL_ALLOW_NO_NATIVE=1: skipped)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("native") is not None:  # also on pytest.param(..., marks=pytest.mark.native)
        require_native()
