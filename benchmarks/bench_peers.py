"""Peer runtimes (ONNX Runtime, DeepSparse) on the pruned CIFAR ResNet-56, beside torch eager.

Optional: each peer is benchmarked where it is installed and skipped otherwise
(``pip install 'prunecal[peers]'`` for onnxruntime; ``scripts/setup_peers.sh`` for the
DeepSparse venv, or ``PRUNECAL_DEEPSPARSE_PYTHON``). Setup: see ``benchmarks/peers.py``.

- ``torch`` and ``onnxruntime`` run in this process and are timed by pytest-benchmark
  (``pedantic``, about ``PRUNECAL_BENCH_SECONDS`` of rounds, default 1). ORT's output is first
  checked against torch's.
- ``deepsparse`` runs in another process (its own venv), so pytest-benchmark cannot time its
  calls: the runner times them itself with the same loop as ``benchmarks/run_peers.py`` and
  the test stores that in ``extra_info`` (``images_per_s``, ``median_s``, ``rounds``,
  ``max_abs_diff``). Its pytest-benchmark row is ONE round of the whole subprocess (export,
  start-up, compile and the timing loop): read ``extra_info``, never that row, for speed.

Run and tabulate::

    python -m pytest benchmarks/bench_peers.py --benchmark-only -q --benchmark-json=peers.json
    python benchmarks/bench_peers.py peers.json          # markdown table (images/s)

For the side-by-side table of docs/performance.md use ``benchmarks/run_peers.py``, which
times every runtime with one loop in one run. ``scripts/as_avx2_machine.sh`` before either
command holds every runtime (torch, DeepSparse, prunecal) to AVX2, as on an AVX2-only CPU.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

NET = "resnet56"
TARGET_S = float(os.environ.get("PRUNECAL_BENCH_SECONDS", "1.0"))
# (runtime, sparsity): torch eager dense is the baseline; ORT does not exploit zeros.
CASES = [("torch", 0.0), ("onnxruntime", 0.0), ("onnxruntime", 0.9),
         ("deepsparse", 0.0), ("deepsparse", 0.9), ("deepsparse", 0.95)]
CONFIGS = [(1, 2), (64, 2), (1, 1)]  # (batch, threads)


def _skip_if_absent(runtime: str) -> None:
    if runtime == "onnxruntime" and not peers.onnxruntime_available():
        pytest.skip("onnxruntime not installed (pip install 'prunecal[peers]')")
    if runtime == "deepsparse" and peers.deepsparse_python() is None:
        pytest.skip("DeepSparse venv not found (scripts/setup_peers.sh or PRUNECAL_DEEPSPARSE_PYTHON)")


def _rounds(fn) -> int:
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    fn()
    return max(5, min(500, math.ceil(TARGET_S / max(time.perf_counter() - t0, 1e-6))))


@pytest.mark.parametrize("batch,threads", CONFIGS, ids=[f"b{b}-t{t}" for b, t in CONFIGS])
@pytest.mark.parametrize("runtime,sparsity", CASES, ids=[f"{r}-s{int(s * 100)}" for r, s in CASES])
def test_peer(benchmark, runtime, sparsity, batch, threads):
    _skip_if_absent(runtime)
    model = peers.pruned_model(NET, sparsity)
    info = dict(net=NET, runtime=runtime, sparsity=sparsity, batch=batch, threads=threads,
                conv_sparsity=peers.conv_sparsity(model))
    if runtime == "deepsparse":
        res = benchmark.pedantic(peers.run_deepsparse, args=(model, batch, threads, TARGET_S),
                                 rounds=1, iterations=1)
        benchmark.extra_info.update(info, timed_by="runner", **{
            k: res[k] for k in ("images_per_s", "median_s", "min_s", "rounds", "max_abs_diff",
                                "compile_s", "version")})
        return
    x = peers.sample_input(batch)
    if runtime == "torch":
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                benchmark.extra_info.update(info, timed_by="pytest-benchmark", version=torch.__version__)
                benchmark.pedantic(model, args=(x,), rounds=_rounds(lambda: model(x)),
                                   iterations=1, warmup_rounds=1)
        finally:
            torch.set_num_threads(old)
        return
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        sess = peers.ort_session(peers.export_onnx(model, Path(d) / "m.onnx", batch), threads)
    feed = {"input": x.numpy()}
    diff = peers.check_close(sess.run(None, feed)[0], peers.torch_reference(model, x), "onnxruntime")
    benchmark.extra_info.update(info, timed_by="pytest-benchmark", max_abs_diff=diff, version=ort.__version__)
    benchmark.pedantic(sess.run, args=(None, feed), rounds=_rounds(lambda: sess.run(None, feed)),
                       iterations=1, warmup_rounds=1)


def table(json_path: str) -> str:
    """Markdown table of images/s (x torch eager dense at the same batch and threads)."""
    data = json.loads(Path(json_path).read_text())
    rows: dict[tuple, dict[tuple, float]] = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        ips = e["images_per_s"] if e.get("timed_by") == "runner" else e["batch"] / b["stats"]["median"]
        rows.setdefault((e["batch"], e["threads"]), {})[(e["runtime"], e["sparsity"])] = ips
    cols = [c for c in CASES if any(c in r for r in rows.values())]
    out = ["| batch | threads | " + " | ".join(f"{r} {int(s * 100)} %" for r, s in cols) + " |",
           "|---|---|" + "---|" * len(cols)]
    for key in sorted(rows, key=lambda k: CONFIGS.index(k) if k in CONFIGS else 99):
        r = rows[key]
        base = r.get(("torch", 0.0))
        cells = ["-" if c not in r else (f"{r[c]:,.0f}" if base is None or c == ("torch", 0.0)
                                         else f"{r[c]:,.0f} ({r[c] / base:.2f}x)") for c in cols]
        out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/bench_peers.py BENCH.json")
    print(table(sys.argv[1]))


# ---- quick checks of the helpers (run without --benchmark-only; skipped with it) ----------
def test_measure_reports_median_rate():
    calls = []
    res = peers.measure(lambda: calls.append(time.sleep(0.002)), batch=8, seconds=0.05)
    assert res["rounds"] >= 5 and len(calls) >= res["rounds"] + 1
    assert res["images_per_s"] == pytest.approx(8 / res["median_s"])
    assert res["min_s"] <= res["median_s"] and res["min_s"] >= 0.002
    with pytest.raises(ValueError, match="batch"):
        peers.measure(lambda: None, batch=0)


def test_prune_convs_keeps_stem_and_classifier_dense():
    model = peers.build_model("resnet20")[0]
    p = peers.prune_convs(model, 0.9)
    assert peers.conv_sparsity(p) == pytest.approx(0.9, abs=1e-3)
    assert bool((p.conv1.weight != 0).all()) and bool((p.linear.weight != 0).all())
    assert peers.conv_sparsity(model) < 0.01  # the input model is untouched
    with pytest.raises(ValueError, match="sparsity"):
        peers.prune_convs(model, 1.0)


def test_onnx_export_matches_torch(tmp_path):
    _skip_if_absent("onnxruntime")
    model = peers.prune_convs(peers.build_model("resnet20")[0], 0.9)
    sess = peers.ort_session(peers.export_onnx(model, tmp_path / "m.onnx", 3), threads=1)
    x = peers.sample_input(3, seed=1)
    peers.check_close(sess.run(None, {"input": x.numpy()})[0], peers.torch_reference(model, x), "ort")
    with pytest.raises(AssertionError, match="ort"):
        peers.check_close(sess.run(None, {"input": x.numpy()})[0] + 1.0,
                          peers.torch_reference(model, x), "ort")


def test_runner_errors_are_clear(tmp_path):
    import subprocess

    run = lambda *a: subprocess.run([sys.executable, str(peers.RUNNER), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    p = run(str(tmp_path / "missing.onnx"), "--batch", "1", "--threads", "1")
    assert p.returncode == 2 and "model file not found" in p.stderr
    p = run(str(tmp_path), "--batch", "0", "--threads", "1")
    assert p.returncode == 2 and "--batch" in p.stderr
    with pytest.raises(peers.PeerUnavailable, match="setup_peers"):
        peers.run_deepsparse(torch.nn.Identity(), 1, 1, python=tmp_path / "no-python")
    import importlib.util

    if importlib.util.find_spec("deepsparse") is None:  # this interpreter cannot run the engine
        model = peers.build_model("resnet20")[0]
        with pytest.raises(RuntimeError, match="cannot import deepsparse"):
            peers.run_deepsparse(model, 1, 1, python=sys.executable, workdir=tmp_path)


def test_deepsparse_compiles_for_the_isa_asked(tmp_path):
    """``--isa avx2`` on an AVX-512 CPU: the engine's banner says it compiled AVX2 code and it
    still has both cores (the brief ``arch.bin`` summary as NM_ARCH_FILE left it one);
    ``native``: what the engine detects."""
    if peers.deepsparse_python() is None:
        pytest.skip("DeepSparse venv not found (scripts/setup_peers.sh)")
    threads = min(2, os.cpu_count() or 1)
    model = peers.prune_convs(peers.build_model("resnet20")[0], 0.9)
    native = peers.run_deepsparse(model, 2, threads, 0.2, isa="native", workdir=tmp_path)
    if not (native["engine_isa"] or "").startswith("avx512"):
        pytest.skip(f"DeepSparse compiles {native['engine_isa']} here: nothing to force down")
    forced = peers.run_deepsparse(model, 2, threads, 0.2, isa="avx2", workdir=tmp_path)
    assert forced["engine_isa"] == "avx2" and forced["isa_asked"] == "avx2"
    assert forced["engine_cores"] == threads


def _stub_python(tmp_path, stdout: str):
    """An executable that stands in for the venv's python: prints ``stdout`` whatever it is given."""
    stub = tmp_path / "python"
    stub.write_text("#!/bin/sh\ncat <<'EOF'\n" + stdout + "\nEOF\n")
    stub.chmod(0o755)
    return stub


_STUB_JSON = '{"runtime": "deepsparse", "images_per_s": 1.0, "max_abs_diff": 0.0, "engine_cores": 2}'


@pytest.mark.parametrize("banner, isa, error", [
    ("DeepSparse ... (system=avx2, binary=avx2)", "avx2", None),
    ("DeepSparse ... (system=avx512_vnni, binary=avx2)", "avx2", "compiled for 'avx512_vnni'"),
    ("no banner", "avx2", "compiled for None"),
    ("DeepSparse ... (system=avx512_vnni, binary=avx512)", "native", None),
    ("Warning: There are only 1 cores available in the calling process' cpu affinity set\n"
     "DeepSparse ... (system=avx2, binary=avx2)", "avx2", "fewer cores"),
])
def test_run_deepsparse_reads_the_engine_banner(tmp_path, banner, isa, error):
    stub = _stub_python(tmp_path, banner + "\n" + _STUB_JSON)
    model = peers.prune_convs(peers.build_model("resnet20")[0], 0.9)
    if error is None:
        res = peers.run_deepsparse(model, 1, 2, python=stub, workdir=tmp_path, isa=isa)
        assert res["engine_isa"] == banner.split("system=")[1].split(",")[0]
    else:
        with pytest.raises(RuntimeError, match=error.replace("(", r"\(")):
            peers.run_deepsparse(model, 1, 2, python=stub, workdir=tmp_path, isa=isa)


def test_deepsparse_isa_follows_prunecal_isa(monkeypatch):
    monkeypatch.delenv("PRUNECAL_DEEPSPARSE_ISA", raising=False)
    monkeypatch.setenv("PRUNECAL_ISA", "avx2")
    assert peers.deepsparse_isa() == "avx2"
    monkeypatch.setenv("PRUNECAL_ISA", "auto")
    assert peers.deepsparse_isa() == "native"
    monkeypatch.setenv("PRUNECAL_DEEPSPARSE_ISA", "avx512")
    assert peers.deepsparse_isa() == "avx512"
    monkeypatch.setenv("PRUNECAL_DEEPSPARSE_ISA", "avx-2")
    with pytest.raises(ValueError, match="PRUNECAL_DEEPSPARSE_ISA"):
        peers.deepsparse_isa()


def test_runner_rejects_an_unknown_isa(tmp_path):
    import subprocess

    p = subprocess.run([sys.executable, str(peers.RUNNER), str(tmp_path), "--batch", "1", "--threads", "1",
                        "--isa", "sse2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--isa" in p.stderr
