"""Issue 16, the store: a damaged results.sqlite gives one line (file, problem, what to do) and
exit 2 from prunecal-eval and prunecal-report, --rebuild-store starts afresh; a changed value in
a stored row fails its checksum: prunecal-report names it and leaves it out, --check lists it
(exit 1), and re-running the study re-makes it."""
from __future__ import annotations

import csv
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from prunecal.eval.cli import report_run, run
from prunecal.eval.store import Store

REPO = Path(__file__).resolve().parents[1]
TINY = ["--limit", "24", "--methods", "global_magnitude", "--sparsities", "0,0.5", "--corruptions",
        "fog", "--severities", "1", "--sparse-backend", "dense", "--batch-size", "8",
        "--n-bootstrap", "10", "--threads", "1", "--quiet"]
N_UNITS = 4
METRICS = ("accuracy", "ece", "ece_ts", "nll", "nll_ts", "temperature")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "o"
    assert run(["--out", str(out), *TINY]) == 0
    con = sqlite3.connect(out / "results.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return out


@pytest.fixture
def out(study, tmp_path):
    dst = tmp_path / "o"
    shutil.copytree(study, dst)
    return dst


def metrics(db: Path) -> dict:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(f"SELECT method, sparsity, corruption, {', '.join(METRICS)} FROM units")
        return {r[:3]: r[3:] for r in rows}
    finally:
        con.close()


def proc(module_fn: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = f"import sys; from prunecal.eval.cli import {module_fn}; {module_fn}(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def damage_page(db: Path, page: int = 2) -> None:
    """Garble a b-tree page header: SQLite reports the file as malformed."""
    buf = bytearray(db.read_bytes())
    size = struct.unpack(">H", buf[16:18])[0] or 65536
    for i in range(8):
        buf[(page - 1) * size + i] ^= 0xA5
    db.write_bytes(bytes(buf))


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_damaged_store_real_processes_exit_2_one_line(out):
    db = out / "results.sqlite"
    damage_page(db)
    r = proc("report_main", str(out))
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert str(db) in line and "damaged" in line and "--rebuild-store" in line
    r = proc("main", "--out", str(out), *TINY)
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert line.startswith("prunecal-eval: error: result store ") and str(db) in line
    assert "--rebuild-store" in line and "move results.sqlite out of" in line


def test_random_byte_flips_both_commands(out, capsys):
    """Byte flips at random places: each command exits 0 (the flip hit nothing read, or a row
    whose checksum then fails) or 2 with one line; never a traceback."""
    db = out / "results.sqlite"
    clean = db.read_bytes()
    for trial in range(6):
        rng = random.Random(trial)
        buf = bytearray(clean)
        for _ in range(4):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        db.write_bytes(bytes(buf))
        for f in (out / "results.sqlite-wal", out / "results.sqlite-shm"):
            f.unlink(missing_ok=True)
        code = report_run([str(out)])
        err = capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            line = one_line(err)
            assert str(db) in line and "--rebuild-store" in line
        else:  # damaged rows, if any, one line each
            assert all(l.startswith("prunecal-report: warning: ") for l in err.strip().splitlines())
        code = report_run([str(out), "--check"])
        captured = capsys.readouterr()
        assert code in (0, 1, 2) and "Traceback" not in captured.err


def test_rebuild_store_moves_the_damaged_file_and_remakes_the_results(out, capsys):
    db = out / "results.sqlite"
    before = metrics(db)
    assert len(before) == N_UNITS
    damage_page(db)
    assert run(["--out", str(out), *TINY]) == 2
    assert "--rebuild-store" in one_line(capsys.readouterr().err)
    assert run(["--out", str(out), *TINY, "--rebuild-store"]) == 0
    moved = sorted(out.glob("results.sqlite.damaged-*"))
    assert len(moved) == 1 and not moved[0].name.endswith(("-wal", "-shm"))
    after = metrics(db)
    assert after == before  # the same numbers: evaluations are deterministic, the cache was kept
    assert report_run([str(out), "--check"]) == 0
    # an intact store is kept as it is
    assert run(["--out", str(out), *TINY, "--rebuild-store"]) == 0
    assert len(list(out.glob("results.sqlite.damaged-*"))) == 1 and metrics(db) == before


def flip_metric(db: Path, method: str, sparsity: float, column: str = "ece") -> float:
    con = sqlite3.connect(db)
    v = con.execute(f"SELECT {column} FROM units WHERE method=? AND sparsity=? AND corruption='clean'",
                    (method, sparsity)).fetchone()[0]
    con.close()
    buf = bytearray(db.read_bytes())
    needle = struct.pack(">d", v)
    assert buf.count(needle) == 1
    i = buf.find(needle)
    buf[i + 7] ^= 0x01  # the lowest bit of the mantissa: a plausible value
    db.write_bytes(bytes(buf))
    return v


def test_flipped_metric_excluded_from_report_and_listed_by_check(out, capsys):
    db = out / "results.sqlite"
    before = metrics(db)
    flip_metric(db, "global_magnitude", 0.5)
    capsys.readouterr()
    assert report_run([str(out)]) == 0
    cap = capsys.readouterr()
    warn = one_line(cap.err)
    assert warn.startswith(f"prunecal-report: warning: {db}: damaged unit row (checksum mismatch")
    assert "method='global_magnitude' sparsity=0.5" in warn and "corruption='clean'" in warn
    assert "re-run prunecal-eval with the same settings" in warn
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_UNITS - 1
    assert not any(r["method"] == "global_magnitude" and float(r["sparsity"]) == 0.5
                   and r["corruption"] == "clean" for r in rows)
    # --check lists every damaged row, exit 1
    flip_metric(db, "none", 0.0, "nll")
    assert report_run([str(out), "--check"]) == 1
    cap = capsys.readouterr()
    listed = cap.out.strip().splitlines()
    assert len(listed) == 2 and all("damaged unit row" in l for l in listed)
    assert "2 of 4 unit rows" in cap.err
    # the same study re-run re-makes exactly the damaged units, with the clean run's numbers
    assert run(["--out", str(out), *TINY]) == 0
    assert report_run([str(out), "--check"]) == 0
    assert "every row checksum verifies" in capsys.readouterr().out
    assert metrics(db) == before


def test_check_on_intact_and_missing_store(out, tmp_path, capsys):
    assert report_run([str(out), "--check"]) == 0
    assert f"{N_UNITS} unit rows in 1 studies" in capsys.readouterr().out
    assert report_run([str(tmp_path / "nothing"), "--check"]) == 2
    assert "no result store" in capsys.readouterr().err


def test_list_on_damaged_store(out, capsys):
    damage_page(out / "results.sqlite")
    assert report_run([str(out), "--list"]) == 2
    assert "--rebuild-store" in one_line(capsys.readouterr().err)
