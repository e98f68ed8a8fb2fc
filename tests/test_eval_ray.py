"""``prunecal-eval --executor ray``: same results as the local executor, unit for unit; a task
that raises is recorded as failed while the rest finishes; a killed worker is retried; a re-run
finishes only what is missing. Skipped when Ray is not installed (CI installs the extra)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from prunecal.eval.cli import run
from prunecal.eval.store import Store

from _eval_data import write_split

KEY = ("method", "sparsity", "seed", "finetune_epochs", "corruption", "severity", "backend")
TIMING = {"images_per_s", "eval_seconds", "started_at", "finished_at", "finetune_json", "row_checksum"}


@pytest.fixture(scope="module")
def split_npz(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("data") / "split.npz", slice(0, 200), slice(400, 480))


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--finetune-data", str(data), "--finetune-epochs", "0,1",
            "--methods", "global_magnitude", "--sparsities", "0,0.7", "--corruptions",
            "gaussian_noise,fog", "--severities", "1,5", "--sparse-backend", "csr,dense",
            "--finetune-lr", "0.01", "--finetune-batch-size", "32", "--n-bootstrap", "0",
            "--threads", "1", "--quiet", "--no-report", "--out", str(out), *extra]


def _rows(out: Path) -> dict[tuple, dict]:
    with Store(out / "results.sqlite") as st:
        return {tuple(u[k] for k in KEY): u for u in st.units()}


def _same_results(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        for col, v in a[k].items():
            if col not in TIMING:
                assert b[k][col] == v, (k, col)
        if a[k]["finetune_json"] is not None:  # the same training, wall time aside
            assert a[k]["finetune_json"]["history"] == b[k]["finetune_json"]["history"]


@pytest.fixture(scope="module")
def local_run(split_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    assert run(_args(split_npz, out)) == 0
    return out


def test_without_ray_says_how_to_install(split_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert run(_args(split_npz, tmp_path / "o", "--executor", "ray")) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'prunecal[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_task_groups_share_one_compile_per_network():
    from prunecal.eval.ray_executor import task_groups
    from prunecal.eval.sweep import Unit

    us = [Unit("m", 0.5, 0, 0, "clean", 0, "csr"), Unit("m", 0.5, 0, 0, "clean", 0, "dense")]
    us += [Unit("m", 0.5, 0, 0, f"c{i % 3}", 1 + i // 3, "csr") for i in range(9)]
    us += [Unit("n", 0.5, 0, 0, "clean", 0, "csr")]
    groups = task_groups(us)
    assert [len(g) for _, g in groups] == [2, 3, 3, 3, 1]
    assert [n.method for n, _ in groups] == ["m", "m", "m", "m", "n"]
    assert all(len({u.corruption for u in g}) == 1 for _, g in groups)
    flat = [u for _, g in groups for u in g]
    assert len(flat) == len(us) and set(flat) == set(us)  # every unit exactly once


ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'prunecal[ray]')")


def test_ray_equals_local_unit_for_unit(split_npz, local_run, tmp_path, monkeypatch):
    # run from a folder holding another "prunecal" (a source checkout without its _C, as in a CI
    # clone): Ray puts the driver's cwd on the workers' path, and they must not import it
    shadow = tmp_path / "checkout"
    (shadow / "prunecal").mkdir(parents=True)
    (shadow / "prunecal" / "__init__.py").write_text("raise ImportError('the shadowing checkout')\n")
    monkeypatch.chdir(shadow)
    out = tmp_path / "ray"
    assert run(_args(split_npz, out, "--executor", "ray")) == 0
    _same_results(_rows(local_run), _rows(out))
    # a re-run has nothing left to do
    before = _rows(out)
    assert run(_args(split_npz, out, "--executor", "ray")) == 0
    assert {k: r["finished_at"] for k, r in _rows(out).items()} == \
        {k: r["finished_at"] for k, r in before.items()}


def test_failing_task_is_recorded_and_the_rest_finishes(split_npz, tmp_path):
    """One corruption's official file is damaged: its units fail (after Ray's retries), are
    recorded with their error in the store's failures table, every other unit is stored, and the
    report lists them."""
    from prunecal.corruptions.export import write_cifar10c

    z = np.load(split_npz)
    c10c = tmp_path / "c10c"
    write_cifar10c(z["x_test"], z["y_test"], c10c, ["gaussian_noise", "fog"], seed=0)
    (c10c / "fog.npy").write_bytes(b"not an npy file")
    out = tmp_path / "out"
    args = _args(split_npz, out, "--executor", "ray", "--cifar10c", str(c10c), "--split", "test")
    assert run(args) == 0
    rows = _rows(out)
    with Store(out / "results.sqlite") as st:
        failed = st.failures()
    assert {(f["corruption"], f["severity"]) for f in failed} == {("fog", 1), ("fog", 5)}
    assert all("fog.npy" in f["error"] for f in failed)
    assert not any(k[4] == "fog" for k in rows)
    assert {k[4] for k in rows} == {"clean", "gaussian_noise"}
    assert len(rows) == 18 - len(failed)
    from prunecal.eval.report import build_report

    md = Path(build_report(out)["md"]).read_text()  # the report lists the failures
    assert "## Failed units" in md and md.count("fog.npy") == len(failed)
    # the file repaired is other data, so another study (config hash): it runs complete, its
    # report lists no failures, and the first study's failures stay under its own hash
    write_cifar10c(z["x_test"], z["y_test"], c10c, ["fog"], seed=0)
    assert run(args) == 0
    with Store(out / "results.sqlite") as st:
        new = st.latest_config_hash()
        assert new != failed[0]["config_hash"] and st.count(new) == 18
        assert st.failures(new) == [] and len(st.failures(failed[0]["config_hash"])) == len(failed)
    assert "## Failed units" not in Path(build_report(out)["md"]).read_text()


def test_killed_worker_is_retried_and_rerun_completes(split_npz, local_run, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PRUNECAL_RAY_TEST_SLOW": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "prunecal.eval.cli",
                             *_args(split_npz, out, "--executor", "ray")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    killed = False
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not killed:
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        for line in ps.splitlines():
            if "ray::evaluate_body" in line and "ps -eo" not in line:
                os.kill(int(line.split()[0]), signal.SIGKILL)
                killed = True
                break
        time.sleep(0.2)
    assert proc.wait(timeout=600) == 0, "".join(err_lines)[-3000:]
    assert killed
    rows = _rows(out)
    if len(rows) < 18:  # the retries ran out: the re-run finishes the missing units
        assert run(_args(split_npz, out, "--executor", "ray")) == 0
        rows = _rows(out)
    _same_results(_rows(local_run), rows)
