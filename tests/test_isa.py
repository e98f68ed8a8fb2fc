"""The ISA path, chosen once per process (PRUNECAL_ISA=avx512|avx2|generic, csrc/common.h
isa_config): each path forced in turn in its own process and checked against torch's own conv on
random shapes and on a whole ResNet-20 plan; the AVX2 generated kernels bit for bit against the
fixed AVX2 tiles; a bad or unsupported PRUNECAL_ISA refuses to load with a clear ImportError."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("native")  # a missing _C fails (conftest.require_native)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
HAS_AVX2 = {"avx2", "fma"} <= FLAGS
HAS_AVX512 = HAS_AVX2 and "avx512f" in FLAGS
PATHS = ["generic"] + (["avx2"] if HAS_AVX2 else []) + (["avx512"] if HAS_AVX512 else [])


def test_config_is_reported():
    from prunecal import _C

    c = _C.isa_config()
    assert set(c) == {"isa", "jit", "requested", "kernels"}
    assert c["isa"] == _C.isa_path() in ("avx512", "avx2", "generic")
    assert c["jit"] in ("avx512", "avx2", "none") and c["kernels"] == _C.isa()
    assert _C.jit_available() == (c["jit"] != "none")
    assert _C.plan_avx512_active() == (c["isa"] == "avx512")
    if c["requested"] == "auto" and not os.environ.get("PRUNECAL_NO_AVX512"):
        assert c["isa"] == ("avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else "generic")


# A random-shape suite against torch in a process whose path is forced: stride 1 / 2, padding
# 0..2, kernels 1 / 3 / 5, sparsity 0..0.99, batch 1 and 8, 1 and 2 threads, widths whose output
# rows are whole 8-lane runs (generated kernels) and others (fixed kernels), 32x32 planes (the
# AVX2 generated kernels), inputs too wide for L1 (the AVX2 tiles' input-channel bands: 16x16,
# 8x8, stride 2); then a whole pruned ResNet-20 plan in every run mode.
_SUITE = r"""
import json, sys, numpy as np, torch, torch.nn.functional as F
from prunecal import _C, models
from prunecal.prune import prune
from prunecal.sparse.formats import CSRWeight, BSRWeight
from prunecal.sparse.ops import sparse_conv2d
from prunecal.sparse.plan import compile_plan
rng = np.random.default_rng(0)
torch.manual_seed(0)
worst, jit_used, outs = 0.0, 0, {}
cases = [(16, 16, 32, 1, 1, 3), (16, 32, 32, 2, 1, 3), (32, 32, 16, 1, 1, 3), (64, 64, 8, 1, 1, 3),
         (128, 24, 16, 1, 1, 3), (160, 8, 8, 1, 1, 3), (96, 16, 16, 2, 1, 3),  # (+ input-channel bands)
         (128, 300, 8, 1, 1, 3)]  # (bands over more than one chunk of 256 output rows)
for _ in range(14):
    k = int(rng.choice([1, 3, 5])); s = int(rng.choice([1, 2])); p = int(rng.integers(0, k // 2 + 2))
    cases.append((int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.choice([7, 12, 16, 32])), s, p, k))
for i, (cin, cout, h, s, p, k) in enumerate(cases):
    for sp in (0.0, 0.5, 0.9, 0.99):
        w = torch.randn(cout, cin, k, k); w[torch.rand_like(w) < sp] = 0
        b = torch.randn(cout)
        for n in (1, 8):
            x = torch.randn(n, cin, h, h)
            ref = F.relu(F.conv2d(x, w, b, s, p))
            for fmt in (CSRWeight, BSRWeight):
                pw = fmt.from_dense(w)
                for threads in (1, 2):
                    y = sparse_conv2d(x, pw, b, s, p, relu=True, threads=threads)
                    worst = max(worst, float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6)))
            if sp == 0.9 and n == 8:
                outs[f"conv{i}"] = sparse_conv2d(x, CSRWeight.from_dense(w), b, s, p, relu=True, threads=1).numpy()
        if fmt is BSRWeight and sp == 0.9:
            jit_used += CSRWeight.from_dense(w).packed().jit_kernels(h, h, s, p, 1)[0] > 0
# a residual block wide enough for the AVX2 tiles' input-channel bands (96 x 16x16), as a plan
# called twice: the second call's output buffers hold the first call's values
class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
        self.c2, self.b2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + x)
wide = torch.nn.Sequential(torch.nn.Conv2d(3, 96, 3, padding=1), torch.nn.BatchNorm2d(96), torch.nn.ReLU(), Block(96))
with torch.no_grad():
    for mod in wide.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.weight.mul_((torch.rand_like(mod.weight) > 0.6).float())
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2); mod.running_var.uniform_(0.5, 2.0)
    wide.eval()
    for threads in (1, 2):
        pw = compile_plan(wide, "csr", threads=threads, input_size=(3, 16, 16))
        for call in range(2):
            xw = torch.randn(4, 3, 16, 16)
            yw, rw = pw(xw), wide(xw)
            worst = max(worst, float((yw - rw).norm() / rw.norm()))
        outs[f"wide_plan_{threads}"] = yw.numpy()
m = prune(models.create("resnet20"), "global_magnitude", 0.9, keep_first_conv=True).eval()
x = torch.randn(9, 3, 32, 32)
with torch.no_grad():
    ref = m(x)
    for threads, mode in ((1, "auto"), (2, "op"), (2, "image")):
        pm = compile_plan(m, "csr", threads=threads, mode=mode)
        for n in (1, 9):
            y = pm(x[:n])
            worst = max(worst, float((y - ref[:n]).norm() / ref[:n].norm()))
        outs[f"plan_{threads}{mode}"] = pm(x).numpy()
np.savez(sys.argv[1], **outs)
print(json.dumps(dict(config=_C.isa_config(), worst=worst, jit_used=int(jit_used))))
"""


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory):
    """{name: (result dict, outputs)} for each forced path (and AVX2 without generated kernels)."""
    import prunecal

    if os.environ.get("PRUNECAL_MUTATION_RUN") == "1":
        pytest.skip("a new process cannot import mutmut's trampolined package (mutation run)")
    tmp = tmp_path_factory.mktemp("isa")
    root = os.path.dirname(os.path.dirname(prunecal.__file__))
    runs = {}
    variants = [(p, {"PRUNECAL_ISA": p}) for p in PATHS]
    if HAS_AVX2:
        variants.append(("avx2-fixed", {"PRUNECAL_ISA": "avx2", "PRUNECAL_NO_JIT": "1"}))
        variants.append(("avx2-unbanded", {"PRUNECAL_ISA": "avx2", "PRUNECAL_BAND_KB": "0"}))
    for name, env in variants:
        full = {k: v for k, v in os.environ.items() if not k.startswith("PRUNECAL_")}
        full.update(PYTHONPATH=root, **env)
        out = tmp / f"{name}.npz"
        done = subprocess.run([sys.executable, "-c", _SUITE, str(out)], env=full, cwd=tmp, timeout=600,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        runs[name] = (json.loads(done.stdout.strip().splitlines()[-1]), dict(np.load(out)))
    return runs


@pytest.mark.parametrize("path", PATHS + (["avx2-fixed", "avx2-unbanded"] if HAS_AVX2 else []))
def test_each_path_matches_torch(suite_runs, path):
    res, _ = suite_runs[path]
    want = path.split("-")[0]
    assert res["config"]["isa"] == want and res["config"]["requested"] == want
    assert res["config"]["jit"] == ("none" if path in ("generic", "avx2-fixed") else want)
    assert res["worst"] <= 1e-4, res
    if path in ("avx2", "avx512"):
        assert res["jit_used"] > 0  # the generated kernels ran on this path


@pytest.mark.skipif(not HAS_AVX2, reason="CPU without AVX2+FMA")
@pytest.mark.parametrize("other", [
    "avx2-fixed",     # the generated AVX2 kernels give the fixed tiles' bits
    "avx2-unbanded",  # the tiles' input-channel bands resume each sum from memory: the same FMA chain
])
def test_avx2_variants_bitwise_equal(suite_runs, other):
    _, avx2 = suite_runs["avx2"]
    _, variant = suite_runs[other]
    assert set(avx2) == set(variant)
    for k in avx2:
        assert np.array_equal(avx2[k], variant[k]), k


def test_generated_kernel_choice_per_path():
    """Which generator makes which kernels, per path (in this process: whatever it runs)."""
    import torch

    from prunecal import _C
    from prunecal.sparse.formats import CSRWeight

    w = torch.randn(64, 16, 3, 3)
    w[torch.rand_like(w) < 0.9] = 0
    pw = CSRWeight.from_dense(w).packed()
    big, small = pw.jit_kernels(32, 32, 1, 1, 1), pw.jit_kernels(8, 8, 1, 1, 1)
    jit = _C.isa_config()["jit"]
    if jit == "avx512":
        assert big == (3, 16) and small == (3, 16)  # 31 channels a group
    elif jit == "avx2":
        assert big == (11, 16) and small == (0, 0)  # 6 channels a group; none for small planes
    else:
        assert big == small == (0, 0)


def _import_with(env: dict[str, str]) -> subprocess.CompletedProcess:
    import prunecal

    full = {k: v for k, v in os.environ.items() if not k.startswith("PRUNECAL_")}
    full.update(PYTHONPATH=os.path.dirname(os.path.dirname(prunecal.__file__)), **env)
    return subprocess.run([sys.executable, "-c", "from prunecal import _C; print(_C.isa_path())"], env=full,
                          timeout=120, capture_output=True, text=True, cwd=os.path.dirname(prunecal.__file__) + "/..")


@pytest.mark.parametrize("value", ["avx1024", "AVX2", "sse"])
def test_unknown_isa_refuses_to_load(value):
    done = _import_with({"PRUNECAL_ISA": value})
    assert done.returncode != 0 and "ImportError" in done.stderr
    assert "PRUNECAL_ISA: expected auto, avx512, avx2, neon or generic" in done.stderr


@pytest.mark.skipif(HAS_AVX512, reason="this CPU has AVX-512F")
def test_unsupported_isa_refuses_to_load():
    done = _import_with({"PRUNECAL_ISA": "avx512"})
    assert done.returncode != 0 and "no AVX-512F" in done.stderr


def test_no_avx512_caps_auto_and_empty_means_auto():
    done = _import_with({"PRUNECAL_NO_AVX512": "1", "PRUNECAL_ISA": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("avx2" if HAS_AVX2 else "generic")
