"""The native thread door (csrc/thread_pool.h): tasks run on the OpenMP team torch already loaded
(one set of threads in the process) or on the std::thread pool; PRUNECAL_THREAD_RUNTIME picks
(auto | pool | openmp). Each runtime in its own process: every task runs exactly once, on a
worker in range, on two threads at once; a failing task raises in the caller and the door works
again afterwards; a sparse training layer and a compiled plan give the same bits on both
runtimes and match torch; a forked child still runs threaded calls; bad settings fail clearly."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("native")  # a missing _C fails (conftest.require_native)

LINUX = sys.platform.startswith("linux")


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process importing the prunecal under test (the installed
    package in CI, the checkout in development), from a folder that keeps a checkout off sys.path."""
    import prunecal

    if os.environ.get("PRUNECAL_MUTATION_RUN") == "1":  # set by scripts/mutation.sh only
        pytest.skip("a new process cannot import mutmut's trampolined package (mutation run)")
    full = dict(os.environ)
    full.pop("PRUNECAL_THREAD_RUNTIME", None)
    full.update(env or {})
    full["PYTHONPATH"] = os.path.dirname(os.path.dirname(prunecal.__file__))
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)


DOOR = """
import torch  # loads torch's OpenMP runtime
from prunecal import _C
runs, workers, met = _C._parallel_for_check(2, 200)
assert runs == [1] * 200, runs
assert set(workers) <= {0, 1}, set(workers)
_, workers, met = _C._parallel_for_check(2, 2, rendezvous=True)
assert met, "two tasks never ran at the same time on 2 threads"
assert sorted(workers) == [0, 1], workers  # two threads at once have two worker ids (per-worker buffers)
try:
    _C._parallel_for_check(2, 50, fail_task=7)
except RuntimeError as e:
    assert "task 7 failed" in str(e), e
else:
    raise AssertionError("the failing task did not raise")
runs, _, _ = _C._parallel_for_check(2, 64)  # usable after a failure
assert runs == [1] * 64
assert _C._parallel_for_check(1, 5)[1] == [0] * 5  # one thread: the caller only
print(_C.thread_runtime())
"""


@pytest.mark.parametrize("runtime", ["pool", "openmp", "auto"])
def test_door_runs_every_task_once_and_raises(runtime):
    if runtime == "openmp" and not LINUX:
        pytest.skip("the OpenMP runtime is looked up with dlopen on Linux only")
    r = _run(DOOR, {"PRUNECAL_THREAD_RUNTIME": runtime})
    assert r.returncode == 0, r.stderr
    got = r.stdout.strip()
    if runtime == "pool":
        assert got == "pool"
    elif runtime == "openmp" or LINUX:  # auto: torch's runtime when it is loaded
        assert got.startswith("openmp (") and got.endswith(")"), got


def test_in_process_runtime_follows_torch():
    import torch  # noqa: F401  (conftest imports it too)

    from prunecal import _C

    want = os.environ.get("PRUNECAL_THREAD_RUNTIME", "auto")
    got = _C.thread_runtime()
    if want == "pool" or not LINUX:
        assert got == "pool"
    else:
        assert got.startswith("openmp ("), got


SAME_BITS = """
import sys, numpy as np, torch
import torch.nn as nn
from prunecal.sparse.train import trainable
from prunecal.sparse.plan import compile_plan
from prunecal import _C
torch.manual_seed(0)
conv = nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=False)
with torch.no_grad():
    conv.weight.mul_(torch.rand_like(conv.weight) > 0.8)
ref = nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=False)
ref.load_state_dict(conv.state_dict())
net = trainable(nn.Sequential(conv), threads=2)
x = torch.randn(9, 24, 15, 15)
xs = x.clone().requires_grad_(True); xr = x.clone().requires_grad_(True)
y = net(xs); g = torch.randn_like(y); y.backward(g)
yr = ref(xr); yr.backward(g)
assert torch.allclose(y, yr, atol=1e-5, rtol=1e-4)
assert torch.allclose(xs.grad, xr.grad, atol=1e-5, rtol=1e-4)
vals = [p.grad for p in net.parameters()][0]
m = torch.nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
with torch.no_grad():
    for p in m.parameters():
        p.mul_(torch.rand_like(p) > 0.7)
pm = compile_plan(m, "csr", threads=2)
xi = torch.randn(6, 3, 32, 32)
with torch.no_grad():
    yp = pm(xi)
    assert torch.allclose(yp, m(xi), atol=1e-4, rtol=1e-4)
np.savez(sys.argv[1], y=y.detach().numpy(), gx=xs.grad.numpy(), gv=vals.numpy(), yp=yp.numpy())
print(_C.thread_runtime())
"""


@pytest.mark.skipif(not LINUX, reason="the OpenMP runtime is looked up with dlopen on Linux only")
def test_runtimes_give_the_same_bits(tmp_path):
    out = {}
    for runtime in ("pool", "openmp"):
        path = tmp_path / f"{runtime}.npz"
        code = SAME_BITS.replace("sys.argv[1]", repr(str(path)))
        r = _run(code, {"PRUNECAL_THREAD_RUNTIME": runtime})
        assert r.returncode == 0, r.stderr
        out[runtime] = np.load(path)
    for key in ("y", "gx", "gv", "yp"):
        np.testing.assert_array_equal(out["pool"][key], out["openmp"][key], err_msg=key)


def test_openmp_without_a_loaded_runtime_is_a_clear_error():
    code = """
    import sys
    from prunecal import _C
    assert "torch" not in sys.modules
    assert _C.thread_runtime().startswith("none (openmp asked for"), _C.thread_runtime()
    assert _C._parallel_for_check(1, 3)[0] == [1, 1, 1]  # one thread needs no runtime
    try:
        _C._parallel_for_check(2, 8)
    except RuntimeError as e:
        print(e)
    else:
        raise AssertionError("no error")
    """
    r = _run(code, {"PRUNECAL_THREAD_RUNTIME": "openmp"})
    assert r.returncode == 0, r.stderr
    assert "PRUNECAL_THREAD_RUNTIME=openmp" in r.stdout and "import torch" in r.stdout


def test_auto_without_torch_uses_the_pool():
    code = """
    import sys
    from prunecal import _C
    assert "torch" not in sys.modules
    runs, workers, met = _C._parallel_for_check(2, 2, rendezvous=True)
    assert runs == [1, 1] and met and sorted(workers) == [0, 1], (runs, workers, met)
    print(_C.thread_runtime())
    """
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pool"


@pytest.mark.skipif(not LINUX, reason="the OpenMP runtime is looked up with dlopen on Linux only")
def test_torch_imported_after_a_threaded_call_is_found():
    """The fruitless search is not repeated on every call, but it is once torch is loaded."""
    code = """
    from prunecal import _C
    assert _C._parallel_for_check(2, 8)[0] == [1] * 8 and _C.thread_runtime() == "pool"
    import torch
    assert _C._parallel_for_check(2, 8)[0] == [1] * 8
    print(_C.thread_runtime())
    """
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("openmp ("), r.stdout


def test_malformed_setting_refuses_to_load():
    r = _run("import prunecal._C", {"PRUNECAL_THREAD_RUNTIME": "tbb"})
    assert r.returncode != 0
    assert "PRUNECAL_THREAD_RUNTIME" in r.stderr and "auto, pool or openmp" in r.stderr


FORK = """
import os, torch
from prunecal import _C
torch.set_num_threads(2)
(torch.randn(4_000_000) * 2).sum()  # torch's OpenMP team has run in the parent
if {door_first}:
    assert _C._parallel_for_check(2, 100)[0] == [1] * 100  # and ours on it
pid = os.fork()
if pid == 0:
    runs, workers, met = _C._parallel_for_check(2, 2, rendezvous=True)
    ok = runs == [1, 1] and met and _C.thread_runtime() == "pool (a forked child)"
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert _C._parallel_for_check(2, 100)[0] == [1] * 100
print(_C.thread_runtime())
"""


FORK_AFTER_POOL = """
import os, signal, time
from prunecal import _C
assert _C._parallel_for_check(2, 100)[0] == [1] * 100  # the parent's pool of 2 has worker threads
pid = os.fork()
if pid == 0:
    runs, workers, met = _C._parallel_for_check(2, 2, rendezvous=True)
    os._exit(0 if runs == [1, 1] and met else 3)
deadline = time.time() + 20
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, signal.SIGKILL)
    raise SystemExit("the forked child did not finish its threaded call")
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forked_child_gets_its_own_pool():
    """A child of a process whose pool has threads makes a new pool (the old one's workers do not
    exist in the child: with the parent's pool the child's 2-task rendezvous is never met)."""
    r = _run(FORK_AFTER_POOL, {"PRUNECAL_THREAD_RUNTIME": "pool"}, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("door_first", [True, False])  # False: the child is the first to look the runtime up
def test_forked_child_runs_threaded_calls_on_the_pool(door_first):
    r = _run(FORK.replace("{door_first}", str(door_first)), timeout=60)
    assert r.returncode == 0, r.stderr
    if LINUX:
        assert r.stdout.strip().startswith("openmp ("), r.stdout
