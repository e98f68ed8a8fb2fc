"""prunecal.eval.store: complete rows only, no duplicates, WAL, disk-full handling; CSV flattening."""
from __future__ import annotations

import csv
import sqlite3

import pytest

from prunecal.eval import export
from prunecal.eval.store import (CHECKSUM_COLUMN, KEY_COLUMNS, SCHEMA_VERSION, UNIT_COLUMNS, Store,
                                 StoreCorruptError, StoreFullError, is_disk_full, unit_key)


def make_row(**over):
    row = dict(
        config_hash="abc", model="resnet20", method="global_magnitude", sparsity=0.5, seed=0,
        finetune_epochs=0, finetune_recipe="none", corruption="fog", severity=3, backend="dense", n_images=10, n_bins=15, binning="width",
        temperature=1.5, accuracy=0.8, ece=0.1, ece_ts=0.05, nll=0.7, nll_ts=0.6,
        metrics_json={"accuracy": 0.8, "ece": 0.1, "nan_metric": float("nan")},
        metrics_ts_json={"accuracy": 0.8, "ece": 0.05}, reliability_json={"raw": {}, "ts": {}},
        ci_json={"accuracy": [0.7, 0.9]}, images_per_s=100.0, eval_seconds=0.1, threads=2,
        batch_size=8, bytes_dense=1000, bytes_sparse=500, sparsity_achieved=0.49,
        started_at="t0", finished_at="t1")
    row.update(over)
    return row


def test_insert_roundtrip_and_duplicate(tmp_path):
    with Store(tmp_path / "r.sqlite") as st:
        assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert st.insert_unit(make_row())
        assert not st.insert_unit(make_row(accuracy=0.1))  # same key: refused, not overwritten
        assert st.insert_unit(make_row(severity=4))
        assert st.insert_unit(make_row(sparsity=0.5000000001, backend="csr"))
        units = st.units()
        assert len(units) == 3 and st.count() == 3 and st.count("abc") == 3 and st.count("zzz") == 0
        u = units[0]
        assert u["accuracy"] == 0.8 and u["ci_json"] == {"accuracy": [0.7, 0.9]}
        assert u["metrics_json"]["nan_metric"] != u["metrics_json"]["nan_metric"]  # NaN survives
        assert unit_key(make_row()) in st.done_keys("abc")
        assert st.done_keys("other") == set()


def test_incomplete_row_rejected(tmp_path):
    with Store(tmp_path / "r.sqlite") as st:
        with pytest.raises(ValueError, match="missing columns.*accuracy"):
            st.insert_unit({k: v for k, v in make_row().items() if k != "accuracy"})
        with pytest.raises(ValueError, match="unknown columns.*bogus"):
            st.insert_unit(make_row(bogus=1))
        assert st.count() == 0


def test_primary_key_is_the_unit_key(tmp_path):
    with Store(tmp_path / "r.sqlite") as st:
        info = st.conn.execute("PRAGMA table_info(units)").fetchall()
        pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0]
        assert tuple(pk) == KEY_COLUMNS
        # even raw SQL cannot add a duplicate key
        st.insert_unit(make_row())
        cols = list(UNIT_COLUMNS)
        with pytest.raises(sqlite3.IntegrityError):
            st.conn.execute(f"INSERT INTO units ({','.join(cols)}) SELECT {','.join(cols)} FROM units")


def test_configs_latest_first(tmp_path):
    with Store(tmp_path / "r.sqlite") as st:
        st.record_config("h1", {"model": "a"})
        st.record_config("h2", {"model": "b"})
        assert st.latest_config_hash() == "h2"
        st.record_config("h1", {"model": "a"})
        assert [c["config_hash"] for c in st.configs()][0] == "h1"


def test_disk_full_rolls_back(tmp_path):
    """A real SQLITE_FULL (page limit reached): StoreFullError, nothing partial stored."""
    st = Store(tmp_path / "r.sqlite")
    st.insert_unit(make_row(severity=1))
    pages = st.conn.execute("PRAGMA page_count").fetchone()[0]
    st.conn.execute(f"PRAGMA max_page_count={pages}")
    big = make_row(severity=2, metrics_json={"blob": "x" * 200_000})
    with pytest.raises(StoreFullError, match="full"):
        st.insert_unit(big)
    st.close()
    with Store(tmp_path / "r.sqlite") as st2:
        assert st2.count() == 1
        assert st2.insert_unit(make_row(severity=2))  # space again: the unit can be stored


def test_is_disk_full():
    import errno

    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))


def test_corrupt_store_file(tmp_path):
    bad = tmp_path / "r.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorruptError, match=r"r\.sqlite is damaged \(file is not a database\).*"
                       "--rebuild-store") as ei:
        Store(bad)
    assert "\n" not in str(ei.value) and isinstance(ei.value, ValueError)


def test_csv_flatten(tmp_path):
    rows = [make_row(), make_row(severity=4, ci_json=None)]
    path = export.write_csv(rows, tmp_path / "r.csv")
    with open(path) as f:
        got = list(csv.DictReader(f))
    assert len(got) == 2
    assert got[0]["raw_accuracy"] == "0.8" and got[0]["ts_ece"] == "0.05"
    assert got[0]["ci_accuracy_lo"] == "0.7" and got[1]["ci_accuracy_lo"] == ""
    assert "reliability_json" not in got[0]


def test_artefact_cache_atomic_and_self_healing(tmp_path, caplog):
    import torch

    from prunecal.eval.cache import ArtefactCache, stage_key

    key = stage_key("base", "prune", method="global_magnitude", sparsity=0.5, seed=0)
    assert key != stage_key("base", "prune", method="global_magnitude", sparsity=0.5, seed=1)
    assert key != stage_key("base2", "prune", method="global_magnitude", sparsity=0.5, seed=0)
    cache = ArtefactCache(tmp_path)
    path = cache.path("pruned", key)
    m = torch.nn.Linear(3, 2)
    cache.save_model(path, m, note="x")
    got, meta, opt = cache.load_model(path, lambda: torch.nn.Linear(3, 2))
    torch.testing.assert_close(got.weight, m.weight)
    assert meta == {"note": "x"} and opt is None
    path.write_bytes(b"truncated")  # e.g. written by a crashed foreign tool
    assert cache.load_model(path, lambda: torch.nn.Linear(3, 2)) is None
    assert not path.exists() and "digest" in caplog.text
    assert not list(path.parent.glob(".tmp_*"))  # no temp file left behind
    jp = cache.path("temperature", key, ".json")
    cache.put_json(jp, {"temperature": 1.5})
    assert cache.get_json(jp) == {"temperature": 1.5} and cache.get_json(tmp_path / "missing") is None


# -- claims: concurrent processes on one output folder -----------------------------------
def _keys(n, config_hash="abc"):
    return [unit_key(make_row(config_hash=config_hash, severity=1 + i % 5, corruption=f"c{i // 5}"))
            for i in range(n)]


def _worker(db, owner, keys, q, barrier):
    """Claim a few units at a time and store them, until nothing is left to claim."""
    import time

    got = []
    with Store(db) as st:
        barrier.wait()
        while True:
            mine = st.claim_units("abc", keys, owner=owner, lease_s=60, limit=2)
            if not mine:
                break
            for k in mine:
                time.sleep(0.002)
                row = make_row(**dict(zip(KEY_COLUMNS, k)))
                assert st.insert_unit(row), (owner, k)  # never stored by the other process
                got.append(k)
            st.renew_claims(owner, 60)
        st.release_claims(owner)
    q.put((owner, got))


def test_two_processes_share_the_units(tmp_path):
    import multiprocessing as mp

    db = tmp_path / "r.sqlite"
    Store(db).close()
    keys = _keys(40)
    ctx = mp.get_context("fork")
    q, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(db, f"w{i}", keys, q, barrier)) for i in range(2)]
    for p in procs:
        p.start()
    res = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    a, b = set(res["w0"]), set(res["w1"])
    assert not a & b  # nothing evaluated twice
    assert a | b == set(keys)  # nothing left out
    assert a and b  # both did work
    with Store(db) as st:
        assert st.done_keys("abc") == set(keys)
        assert st.claims() == []  # stored units dropped their claims; the rest were released


def _claim_and_die(db, keys):
    import os

    st = Store(db)
    assert len(st.claim_units("abc", keys, owner="dead", lease_s=0.5)) == len(keys)
    os._exit(0)  # dies without releasing its claims


def _dead_claimant(db, keys):
    import multiprocessing as mp

    p = mp.get_context("fork").Process(target=_claim_and_die, args=(db, keys))
    p.start()
    p.join(timeout=30)
    assert p.exitcode == 0


def test_expired_lease_of_dead_owner_is_taken_over(tmp_path):
    """A claim of another machine (here: its host column rewritten) is judged by its lease only."""
    import time

    db = tmp_path / "r.sqlite"
    keys = _keys(6)
    _dead_claimant(db, keys)
    with Store(db) as st:
        st.conn.execute("UPDATE claims SET host='another-machine|boot'")
        assert {c["owner"] for c in st.claims("abc")} == {"dead"}
        assert st.claim_units("abc", keys, owner="alive") == []  # lease still running
        time.sleep(0.6)
        assert st.claim_units("abc", keys, owner="alive") == keys  # expired: taken over
        assert {c["owner"] for c in st.claims("abc")} == {"alive"}


def test_dead_local_owner_is_taken_over_at_once(tmp_path):
    """A killed process of this machine: a re-run takes its units without waiting for the lease."""
    db = tmp_path / "r.sqlite"
    keys = _keys(4)
    _dead_claimant(db, keys)
    with Store(db) as st:
        st.conn.execute("UPDATE claims SET expires_at=expires_at+3600")  # a long lease
        assert st.claim_units("abc", keys, owner="rerun") == keys


def _claim_and_wait(db, keys, ready, go):
    with Store(db) as st:
        st.claim_units("abc", keys, owner="live", lease_s=3600)
        ready.set()
        go.wait(30)


def test_live_local_owner_keeps_its_claims(tmp_path):
    import multiprocessing as mp

    db = tmp_path / "r.sqlite"
    Store(db).close()
    keys = _keys(4)
    ctx = mp.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_claim_and_wait, args=(db, keys, ready, go))
    p.start()
    try:
        assert ready.wait(30)
        with Store(db) as st:
            assert st.claim_units("abc", keys, owner="other") == []
    finally:
        go.set()
        p.join(timeout=30)


def test_claim_semantics(tmp_path):
    keys = _keys(5)
    with Store(tmp_path / "r.sqlite") as st:
        st.insert_unit(make_row(**dict(zip(KEY_COLUMNS, keys[1]))))
        # stored keys are skipped, the order of the given keys kept, limit respected
        assert st.claim_units("abc", keys, owner="a", limit=2) == [keys[0], keys[2]]
        assert st.claim_units("abc", keys, owner="b") == [keys[3], keys[4]]
        assert st.claim_units("abc", keys, owner="a") == [keys[0], keys[2]]  # own claims again
        assert st.claim_units("abc", keys, owner="c") == []
        assert st.claim_units("abc", keys, owner="c", limit=0) == []
        # a key with sparsity not rounded yet is the same unit
        k = list(keys[3]); k[KEY_COLUMNS.index("sparsity")] = 0.5000000001
        assert st.claim_units("abc", [tuple(k)], owner="c") == []
        st.insert_unit(make_row(**dict(zip(KEY_COLUMNS, keys[0]))))  # drops a's claim of keys[0]
        assert len(st.claims()) == 3
        assert not st.insert_unit(make_row(**dict(zip(KEY_COLUMNS, keys[0]))))
        st.release_claims("b")
        assert st.claim_units("abc", keys, owner="c") == [keys[3], keys[4]]
        st.renew_claims("c", lease_s=1000)
        import time
        assert all(c["expires_at"] > time.time() + 900 for c in st.claims() if c["owner"] == "c")
        with pytest.raises(ValueError, match="config"):
            st.claim_units("other", keys, owner="a")
        with pytest.raises(ValueError, match="fields"):
            st.claim_units("abc", [("abc", "x")], owner="a")
        with pytest.raises(ValueError, match="owner"):
            st.claim_units("abc", keys, owner="")


# -- damage: byte flips in the file, a changed value in a row -----------------------------
def _filled_store(path, n=40):
    with Store(path) as st:
        st.record_config("abc", {"model": "resnet20"})
        for i in range(n):
            st.insert_unit(make_row(severity=1 + i % 5, corruption=f"c{i // 5}",
                                    accuracy=0.5 + i / 1000))


def _read_everything(path):
    with Store(path) as st:
        st.configs()
        st.done_keys("abc")
        st.units()
        st.check()
        st.claim_units("abc", _keys(3), owner="x")
        st.insert_unit(make_row(corruption="new"))


def test_random_byte_flips_give_store_corrupt_error_only(tmp_path):
    """Random byte flips anywhere in the file: every read either works or raises
    StoreCorruptError (one line, naming the file and --rebuild-store), never a raw sqlite3 error."""
    import random

    clean = tmp_path / "clean.sqlite"
    _filled_store(clean)
    data = clean.read_bytes()
    outcomes = {"ok": 0, "corrupt": 0}
    for trial in range(60):
        rng = random.Random(trial)
        buf = bytearray(data)
        for _ in range(1 + trial % 8):
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        p = tmp_path / f"t{trial}.sqlite"
        p.write_bytes(bytes(buf))
        try:
            _read_everything(p)
            outcomes["ok"] += 1
        except StoreCorruptError as exc:
            msg = str(exc)
            assert "\n" not in msg and str(p) in msg and "--rebuild-store" in msg, msg
            outcomes["corrupt"] += 1
    assert outcomes["corrupt"] > 0, outcomes


def test_header_damage_is_reported(tmp_path):
    p = tmp_path / "r.sqlite"
    _filled_store(p)
    buf = bytearray(p.read_bytes())
    buf[4096 + 1] ^= 0xFF  # first byte of page 2: b-tree page type
    buf[4096] ^= 0xFF
    p.write_bytes(bytes(buf))
    with pytest.raises(StoreCorruptError, match="damaged"):
        _read_everything(p)


def _flip_in_row(path, needle: bytes):
    """Flip one bit inside the stored bytes of a value (found by its text or its encoding)."""
    buf = bytearray(path.read_bytes())
    i = buf.find(needle)
    assert i >= 0, needle
    buf[i + len(needle) - 1] ^= 0x01
    path.write_bytes(bytes(buf))


def test_flipped_bit_in_a_stored_metric_is_detected(tmp_path):
    import struct

    p = tmp_path / "r.sqlite"
    _filled_store(p, n=10)
    _flip_in_row(p, struct.pack(">d", 0.5 + 7 / 1000))  # the accuracy of row 7 (big-endian REAL)
    with Store(p) as st:
        assert st.count() == 10
        bad = st.check()
        assert len(bad) == 1 and "checksum mismatch" in bad[0]["problem"]
        assert bad[0]["key"]["corruption"] == "c1" and bad[0]["key"]["severity"] == 3
        assert "\n" not in bad[0]["line"] and str(p) in bad[0]["line"]
        units = st.units()
        assert len(units) == 9 and all(u["accuracy"] in [0.5 + i / 1000 for i in range(10)]
                                       for u in units)
        key7 = unit_key(make_row(severity=3, corruption="c1"))
        assert key7 not in st.done_keys("abc") and len(st.done_keys("abc")) == 9
        # the damaged unit can be claimed and re-made: the new row replaces the damaged one
        assert st.claim_units("abc", [key7], owner="me") == [key7]
        assert st.insert_unit(make_row(severity=3, corruption="c1", accuracy=0.507))
        assert st.check() == [] and len(st.units()) == 10 and st.claims() == []
        assert not st.insert_unit(make_row(severity=3, corruption="c1"))  # a good row is kept


def test_flipped_byte_in_json_text_is_detected(tmp_path):
    p = tmp_path / "r.sqlite"
    with Store(p) as st:
        st.insert_unit(make_row(metrics_ts_json={"accuracy": 0.8, "marker": "abcdefgh"}))
        st.insert_unit(make_row(severity=4))
    _flip_in_row(p, b"abcdefgh")
    with Store(p) as st:
        assert [b["key"]["severity"] for b in st.check()] == [3]
        assert [u["severity"] for u in st.units()] == [4]


def test_invalid_utf8_in_a_row_is_a_bad_row_not_a_crash(tmp_path):
    p = tmp_path / "r.sqlite"
    with Store(p) as st:
        st.insert_unit(make_row(started_at="zzzzzzzz"))
    buf = bytearray(p.read_bytes())
    i = buf.find(b"zzzzzzzz")
    buf[i] = 0xFF  # not UTF-8
    p.write_bytes(bytes(buf))
    with Store(p) as st:
        assert len(st.check()) == 1 and st.units() == [] and st.done_keys() == set()


def test_checksum_covers_every_column(tmp_path):
    """Each column changed by SQL (as a flipped bit would) fails the row's checksum."""
    p = tmp_path / "r.sqlite"
    for col in UNIT_COLUMNS:
        if col in KEY_COLUMNS:
            continue
        p.unlink(missing_ok=True)
        with Store(p) as st:
            st.insert_unit(make_row(bytes_dense=1000, macs_dense=5.0, logits_path="x",
                                    finetune_json={"a": 1}))
            t = UNIT_COLUMNS[col].split()[0]
            new = {"REAL": 0.123, "INTEGER": 7, "TEXT": '{"z": 1}'}[t]
            st.conn.execute(f"UPDATE units SET {col}=?", (new,))
            assert len(st.check()) == 1, col
            assert st.units() == [], col


def _v1_store(path):
    """A version-1 store as the first release wrote it: no fine-tuning columns, no checksums."""
    cols = {k: t for k, t in UNIT_COLUMNS.items() if k not in ("finetune_epochs", "finetune_recipe",
                                                              "finetune_json")}
    key = [k for k in KEY_COLUMNS if k in cols]
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("CREATE TABLE configs (config_hash TEXT PRIMARY KEY, config_json TEXT NOT NULL, "
                "created_at TEXT NOT NULL, last_run_at TEXT NOT NULL, run_seq INTEGER NOT NULL)")
    con.execute(f"CREATE TABLE units ({', '.join(f'{k} {t}' for k, t in cols.items())}, "
                f"PRIMARY KEY ({', '.join(key)}))")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    import json

    for sev in (1, 2):
        row = {k: v for k, v in make_row(severity=sev).items() if k in cols}
        vals = [json.dumps(row[k]) if k.endswith("_json") and row.get(k) is not None else row.get(k)
                for k in cols]
        con.execute(f"INSERT INTO units ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)
    con.commit()
    con.close()


def test_v1_store_migrates_to_current(tmp_path):
    p = tmp_path / "r.sqlite"
    _v1_store(p)
    with Store(p) as st:
        ver = st.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        assert int(ver) == SCHEMA_VERSION == 3
        units = st.units()
        assert [u["severity"] for u in units] == [1, 2]
        assert all(u["finetune_epochs"] == 0 and u["finetune_recipe"] == "none" for u in units)
        assert units[0]["accuracy"] == 0.8 and units[0]["ci_json"] == {"accuracy": [0.7, 0.9]}
        assert st.check() == []
        assert st.insert_unit(make_row(severity=3)) and not st.insert_unit(make_row(severity=1))
    with Store(p) as st:  # reopening does not migrate again
        assert st.count() == 3 and st.check() == []


def test_v2_store_gets_checksums(tmp_path):
    p = tmp_path / "r.sqlite"
    with Store(p) as st:
        st.insert_unit(make_row())
        st.insert_unit(make_row(severity=4, accuracy=1))
    # turn it into a version-2 store: no checksum column
    con = sqlite3.connect(p)
    cols = ", ".join(UNIT_COLUMNS)
    con.executescript(
        f"CREATE TABLE u2 AS SELECT {cols} FROM units; DROP TABLE units; "
        f"ALTER TABLE u2 RENAME TO units; UPDATE meta SET value='2' WHERE key='schema_version';")
    con.commit()
    con.close()
    with Store(p) as st:
        assert CHECKSUM_COLUMN in {r[1] for r in st.conn.execute("PRAGMA table_info(units)")}
        assert st.check() == [] and len(st.units()) == 2
        st.conn.execute("UPDATE units SET ece=0.99 WHERE severity=4")
        assert len(st.check()) == 1


def test_newer_schema_refused(tmp_path):
    p = tmp_path / "r.sqlite"
    Store(p).close()
    con = sqlite3.connect(p)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="schema 99"):
        Store(p)


def test_negative_zero_and_int_in_real_columns_verify(tmp_path):
    """SQLite keeps -0.0 as 0.0 and an int in a REAL column as a float: rows still verify."""
    with Store(tmp_path / "r.sqlite") as st:
        assert st.insert_unit(make_row(ece_ts=-0.0, accuracy=1, macs_dense=-0.0))
        assert st.check() == [] and len(st.units()) == 1


def test_failures_are_recorded_replaced_and_dropped_when_stored(tmp_path):
    keys = _keys(3)
    rows = [{**dict(zip(KEY_COLUMNS, k)), "error": f"boom {i}"} for i, k in enumerate(keys)]
    with Store(tmp_path / "r.sqlite") as st:
        st.record_failures(rows[:2])
        st.record_failures([{**rows[1], "error": "later"}, rows[2]])  # latest error wins
        got = st.failures("abc")
        assert [tuple(f[k] for k in KEY_COLUMNS) for f in got] == sorted(keys)
        assert {f["error"] for f in got} == {"boom 0", "later", "boom 2"}
        assert st.failures("other") == []
        st.insert_unit(make_row(**dict(zip(KEY_COLUMNS, keys[1]))))
        assert "later" not in {f["error"] for f in st.failures()} and len(st.failures()) == 2
        with pytest.raises(ValueError, match="error"):
            st.record_failures([dict(zip(KEY_COLUMNS, keys[0]))])
    with Store(tmp_path / "r.sqlite") as st:  # persisted
        assert len(st.failures("abc")) == 2
