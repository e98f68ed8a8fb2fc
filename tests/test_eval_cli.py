"""prunecal-eval as a process: clear one-line errors (exit 2), resume after SIGKILL without
duplicates, Ctrl-C (exit 130), disk full (non-zero, nothing partial)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--limit", "24", "--methods", "global_magnitude", "--sparsities", "0,0.5", "--corruptions",
        "fog,contrast,pixelate", "--severities", "1-3", "--sparse-backend", "dense",
        "--batch-size", "8", "--n-bootstrap", "10", "--threads", "1", "--quiet"]
TINY_UNITS = 2 * (1 + 3 * 3)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "prunecal.eval.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def _default_sigint() -> None:
    # a background job of a non-interactive shell (`.ci/run &`) starts with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child the default disposition
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "prunecal.eval.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, preexec_fn=_default_sigint)


def count_units(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def wait_for_units(proc: subprocess.Popen, db: Path, n: int, timeout: float = 120) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        c = count_units(db)
        if c >= n or proc.poll() is not None:
            return c
        time.sleep(0.05)
    raise AssertionError("no unit stored in time")


@pytest.mark.parametrize("args,needle", [
    (["--model", "nonet"], "unknown model 'nonet'; available: resnet20"),
    (["--methods", "global_magnitude,chainsaw"], "unknown pruning method 'chainsaw'; available:"),
    (["--corruptions", "fog,lava"], "unknown corruption 'lava'; available:"),
    (["--sparse-backend", "gpu"], "unknown sparse backend 'gpu'; available: dense"),
    (["--weights", "/nonexistent/w.th"], "weights not found: /nonexistent/w.th"),
    (["--data", "/nonexistent/data"], "data not found: /nonexistent/data"),
    (["--config", "/nonexistent/s.toml"], "config file not found"),
    (["--severities", "0-9"], "severities must lie in 1..5"),
    (["--sparsities", "0,1.5"], "sparsities must lie in [0, 1)"),
])
def test_bad_arguments_exit_2_one_line(tmp_path, capsys, args, needle):
    from prunecal.eval.cli import run

    assert run(["--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_bad_name_in_a_real_process(tmp_path):
    r = cli("--out", str(tmp_path / "o"), "--model", "nonet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("prunecal-eval: error: unknown model 'nonet'; available: "
                                + ", ".join(__import__("prunecal.models").models.available()))


def test_corrupt_weights_and_data_exit_2(tmp_path, capsys):
    from prunecal.eval.cli import run

    bad = tmp_path / "w.th"
    bad.write_bytes(b"\x00garbage" * 50)
    assert run(["--out", str(tmp_path / "o"), "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and len(err.strip().splitlines()) == 1
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"PK\x03\x04 truncated")
    assert run(["--out", str(tmp_path / "o"), "--data", str(npz)]) == 2
    err = capsys.readouterr().err
    assert str(npz) in err and len(err.strip().splitlines()) == 1


def test_help_states_defaults():
    r = cli("--help")
    assert r.returncode == 0
    text_out = " ".join(r.stdout.split())
    for text in ("--sparse-backend", "--calib-fraction", "(default: 0.2)", "--cifar10c", "--keep-logits",
                 "(default: global_magnitude,l1_filter,bn_channel)"):
        assert text in text_out


def test_sigkill_then_resume_completes_without_duplicates(tmp_path):
    out = tmp_path / "o"
    db = out / "results.sqlite"
    proc = popen("--out", str(out), "--no-report", *TINY)
    n = wait_for_units(proc, db, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert 1 <= n
    killed_at = count_units(db)
    assert killed_at < TINY_UNITS, "the run finished before it could be killed"
    r = cli("--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    assert f"{killed_at} already stored, {TINY_UNITS - killed_at} to run" in r.stderr
    con = sqlite3.connect(db)
    rows = con.execute("SELECT method, sparsity, corruption, severity, backend FROM units").fetchall()
    assert len(rows) == len(set(rows)) == TINY_UNITS
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert (out / "report.html").is_file()
    # every stored value (metrics, TS metrics, reliability bins, CIs, sizes) equals an uninterrupted run
    ref = tmp_path / "ref"
    r = cli("--out", str(ref), "--no-report", *TINY)
    assert r.returncode == 0, r.stderr
    got, want = stored_units(db), stored_units(ref / "results.sqlite")
    assert set(got) == set(want) and len(want) == TINY_UNITS
    for key, row in want.items():
        assert set(got[key]) == set(row)
        for col, value in row.items():
            if col not in TIMING_COLUMNS:
                assert_same_value(got[key][col], value, f"{key} {col}")


TIMING_COLUMNS = {"images_per_s", "eval_seconds", "started_at", "finished_at"}


def stored_units(db: Path) -> dict:
    from prunecal.eval.store import Store, unit_key

    with Store(db) as st:
        return {unit_key(u): u for u in st.units()}


def assert_same_value(got, want, where: str) -> None:
    """Equal up to float rounding, recursively through the decoded JSON columns (NaN == NaN)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            assert_same_value(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_value(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9, nan_ok=True), where
    else:
        assert got == want, where


def test_ctrl_c_exit_130_and_message(tmp_path):
    # a run of 5 x (1 + 5 x 5) = 130 units of 200 images (about 18 s in all): SIGINT after the
    # first lands long before the last. (It used to skip when the run finished first: that hid
    # a child started with SIGINT ignored, see _default_sigint, which ran to the end.)
    longer = [a for a in TINY]
    longer[longer.index("--limit") + 1] = "200"
    longer[longer.index("--sparsities") + 1] = "0,0.3,0.5,0.7,0.9"
    longer[longer.index("--corruptions") + 1] = "fog,contrast,pixelate,brightness,jpeg_compression"
    longer[longer.index("--severities") + 1] = "1-5"
    out = tmp_path / "o"
    proc = popen("--out", str(out), "--no-report", *longer)
    wait_for_units(proc, out / "results.sqlite", 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert count_units(out / "results.sqlite") < 5 * (1 + 5 * 5), "the run finished before SIGINT arrived"
    assert proc.returncode == 130
    assert "interrupted; re-run the same command to resume" in err
    assert "Traceback" not in err


def test_disk_full_clear_error_nothing_partial(tmp_path, monkeypatch, capsys):
    """SQLite reports a full disk after the first unit: exit 1, one clear line, store intact."""
    from prunecal.eval import store as S
    from prunecal.eval.cli import run

    real = S.Store.insert_unit
    calls = {"n": 0}

    def insert(self, row):
        calls["n"] += 1
        if calls["n"] == 2:  # a real SQLITE_FULL: cap the file at its current size
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
            self.conn.execute(f"PRAGMA max_page_count={pages}")
            row = {**row, "metrics_json": {**row["metrics_json"], "pad": "x" * 300_000}}
        return real(self, row)

    monkeypatch.setattr(S.Store, "insert_unit", insert)
    out = tmp_path / "o"
    code = run(["--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert code == 1
    assert "database or disk is full" in err and "re-run the same command" in err
    monkeypatch.setattr(S.Store, "insert_unit", real)
    with S.Store(out / "results.sqlite") as st:
        assert st.count() == 1
        assert st.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_enospc_from_cache_is_reported(tmp_path, monkeypatch, capsys):
    import errno

    from prunecal.eval import cache
    from prunecal.eval.cli import run

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "atomic_write", full)
    code = run(["--out", str(tmp_path / "o"), *TINY])
    assert code == 1
    assert "disk full" in capsys.readouterr().err


def test_rich_progress_runs_headless():
    from prunecal.eval.progress import LogProgress, RichProgress, make_progress
    from prunecal.eval.sweep import Unit

    assert isinstance(make_progress(True), LogProgress)
    row = dict(accuracy=0.5, ece=0.1, ece_ts=0.05)
    for p in (RichProgress(), LogProgress()):
        p.start(2, 20)
        if hasattr(p, "unit_start"):
            p.unit_start(Unit("global_magnitude", 0.5, 0, 0, "fog", 3, "csr"))
        p.advance_images(10)
        p.unit_done(Unit("global_magnitude", 0.5, 0, 0, "fog", 3, "csr"), row)
        p.stop()


def test_unwritable_out_is_one_line(tmp_path, capsys):
    from prunecal.eval.cli import run

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = run(["--out", str(blocker / "o"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and len(err.splitlines()) == 1 and str(blocker) in err


# -- settings: wrong types / ranges -> one line naming the key, exit 2, nothing written -------
def _nothing_written(out: Path) -> bool:
    return not (out / "results.sqlite").exists() and not (out / "config.resolved.toml").exists() \
        and not (out / "cache").exists()


@pytest.mark.parametrize("toml,needle", [
    ('threads = "two"', "threads must be an integer, got a string ('two')"),
    ("batch_size = 1.5", "batch_size must be an integer, got a number (1.5)"),
    ("threads = true", "threads must be an integer, got a boolean (True)"),
    ('n_bootstrap = "x"', "n_bootstrap must be an integer, got a string ('x')"),
    ('keep_logits = "false"', "keep_logits must be true or false"),
    ('quiet = "no"', "quiet must be true or false"),
    ("seed = -1", "seed must be an integer between 0 and 4294967295, got -1"),
    ("threads = 100000", "threads must be an integer between 1 and"),
])
def test_bad_config_values_exit_2_nothing_written(tmp_path, capsys, toml, needle):
    from prunecal.eval.cli import run

    f = tmp_path / "s.toml"
    f.write_text("[study]\n" + toml + "\n")
    out = tmp_path / "o"
    assert run(["--config", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert _nothing_written(out) and not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--threads", "1000"], "--threads must be an integer between 1 and"),
    (["--threads", "two"], "--threads must be an integer, got 'two'"),
    (["--n-bootstrap", "-1"], "--n-bootstrap must be an integer between 0 and"),
    (["--seed", "-1"], "--seed must be an integer between 0 and 4294967295, got -1"),
    (["--batch-size", "1.5"], "--batch-size must be an integer, got '1.5'"),
    (["--binning", "x"], "--binning must be one of width, mass"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flag_values_exit_2_nothing_written(tmp_path, capsys, args, needle):
    from prunecal.eval.cli import run

    out = tmp_path / "o"
    with pytest.raises(SystemExit) if args == ["--no-such-flag"] else _no_exit() as ei:
        code = run(["--out", str(out), *args])
    if args == ["--no-such-flag"]:
        code = ei.value.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_out_is_a_file_and_cache_dir_under_a_file_exit_2(tmp_path, capsys):
    from prunecal.eval.cli import run

    f = tmp_path / "file"
    f.write_text("x")
    assert run(["--out", str(f), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert f"out: {f} is an existing file, not a folder" in err and len(err.splitlines()) == 1
    out = tmp_path / "o"
    assert run(["--out", str(out), "--cache-dir", str(f / "cache"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cache_dir: cannot create folder {f / 'cache'}: {f} is a file" in err
    assert not out.exists()
    assert f.read_text() == "x"
