"""Two ``prunecal-eval`` processes on one ``--out``: they share the units through claims in the
store (nothing evaluated twice, nothing missing), fine-tune each network once, and a claim of a
killed process expires so its units are finished by the next run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prunecal.eval.store import Store

from _eval_data import write_split


@pytest.fixture(scope="module")
def split_npz(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("data") / "split.npz", slice(0, 200), slice(400, 480))


def _cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "prunecal.eval.cli", "--data", str(data), "--finetune-data",
            str(data), "--finetune-epochs", "0,1", "--methods", "global_magnitude,l1_filter",
            "--sparsities", "0,0.5", "--corruptions", "gaussian_noise,fog,contrast",
            "--severities", "1,3,5", "--sparse-backend", "csr", "--finetune-lr", "0.01",
            "--finetune-batch-size", "32", "--n-bootstrap", "0", "--threads", "1", "--quiet",
            "--no-report", "--out", str(out)]


UNIT_LINE = re.compile(r"\] (\S+@\S+ \S+/\d+) \[(\w+)\]")


def test_two_processes_share_one_folder(split_npz, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(_cmd(split_npz, out), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(2)]
    logs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    with Store(out / "results.sqlite") as st:
        units = st.units()
        assert not st.claims()  # every claim released at the end
    # 1 unpruned + 2 methods x (one-shot + fine-tuned) = 5 networks x (clean + 9 conditions)
    assert len(units) == 50
    # each process logged the units it evaluated: together all of them, none twice
    ran = [re.findall(r"\[\d+/\d+\] (\S+) (\S+) \[", log) for log in logs]
    assert all(len(r) > 0 for r in ran), "one process did all the work"
    assert sum(len(r) for r in ran) == 50
    # each fine-tuning ran in one process only
    tuned = [len(re.findall(r"fine-tune .* epoch 1/1", log)) for log in logs]
    assert sum(tuned) == 2, tuned


def test_dead_owners_claims_expire(tmp_path):
    """A claim whose lease ran out (its process died) is taken over by the next claimant."""
    from prunecal.eval.store import KEY_COLUMNS

    key = ("h", "resnet20", "m", 0.5, 0, 0, "none", "clean", 0, "csr")
    assert len(key) == len(KEY_COLUMNS)
    with Store(tmp_path / "r.sqlite") as st:
        assert st.claim_units("h", [key], owner="dead", lease_s=0.01) == [key]
        assert st.claim_units("h", [key], owner="alive", lease_s=60) in ([], [key])
        import time

        time.sleep(0.05)
        assert st.claim_units("h", [key], owner="alive", lease_s=60) == [key]
        assert st.claim_units("h", [key], owner="third", lease_s=60) == []
