"""SQLite (WAL) result store: one row per finished unit, written in one transaction.

A *unit* is one evaluation: ``(config_hash, model, method, sparsity, seed, finetune_epochs,
finetune_recipe, corruption, severity, backend)``; ``finetune_epochs = 0`` with
``finetune_recipe = 'none'`` for a one-shot (not fine-tuned) network; ``corruption = 'clean'`` with ``severity = 0`` for clean data and
``config_hash`` (see :func:`prunecal.eval.config.results_hash`) covers everything else that
changes the numbers. The key is the table's primary key, so a unit can never be stored
twice, and a row is inserted complete or not at all (one transaction), so killing the
process at any moment leaves only whole units behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("prunecal.eval.store")

SCHEMA_VERSION = 3
"""2: fine-tuning in the key (``finetune_epochs``, ``finetune_recipe``); version-1 stores are
migrated on open (their rows are one-shot: epochs 0, recipe ``none``).
3: ``row_sha256``, a checksum of each unit row's values; version-2 rows get the digest of their
values at migration. Claims (the ``claims`` table) and failures (``failures``: units an executor
gave up on, with their error) are created in stores of any version."""

KEY_COLUMNS = ("config_hash", "model", "method", "sparsity", "seed", "finetune_epochs",
               "finetune_recipe", "corruption", "severity", "backend")

# name -> SQL type; JSON columns hold dicts/lists.
UNIT_COLUMNS: dict[str, str] = {
    "config_hash": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "method": "TEXT NOT NULL",
    "sparsity": "REAL NOT NULL",
    "seed": "INTEGER NOT NULL",
    "finetune_epochs": "INTEGER NOT NULL",  # 0 = one-shot (no fine-tuning)
    "finetune_recipe": "TEXT NOT NULL",  # short key of the fine-tuning recipe; 'none' for 0 epochs
    "corruption": "TEXT NOT NULL",
    "severity": "INTEGER NOT NULL",
    "backend": "TEXT NOT NULL",
    "n_images": "INTEGER NOT NULL",
    "n_bins": "INTEGER NOT NULL",
    "binning": "TEXT NOT NULL",
    "temperature": "REAL NOT NULL",
    "accuracy": "REAL NOT NULL",
    "ece": "REAL NOT NULL",
    "ece_ts": "REAL NOT NULL",
    "nll": "REAL NOT NULL",
    "nll_ts": "REAL NOT NULL",
    "metrics_json": "TEXT NOT NULL",  # summary() without temperature
    "metrics_ts_json": "TEXT NOT NULL",  # summary() after temperature scaling
    "reliability_json": "TEXT NOT NULL",  # {"raw": bins, "ts": bins}
    "ci_json": "TEXT",  # bootstrap CIs (clean units): {"accuracy": [lo, hi], "ece": [lo, hi], ...}
    "images_per_s": "REAL NOT NULL",
    "eval_seconds": "REAL NOT NULL",
    "threads": "INTEGER NOT NULL",
    "batch_size": "INTEGER NOT NULL",
    "bytes_dense": "INTEGER",
    "bytes_sparse": "INTEGER",
    "sparsity_achieved": "REAL",
    "params_total": "INTEGER",
    "params_nonzero": "INTEGER",
    "macs_dense": "REAL",  # multiply-accumulates per image, dense
    "macs_effective": "REAL",  # MACs x weight density
    "logits_path": "TEXT",
    "started_at": "TEXT NOT NULL",
    "finished_at": "TEXT NOT NULL",
    "finetune_json": "TEXT",  # the recipe in full and the fine-tuning history (loss, accuracy, seconds)
}
JSON_COLUMNS = ("metrics_json", "metrics_ts_json", "reliability_json", "ci_json", "finetune_json")


CHECKSUM_COLUMN = "row_sha256"
"""sha256 of a unit row's values (:func:`row_checksum`), stored beside them."""


class StoreFullError(RuntimeError):
    """The disk (or the database's page limit) is full; nothing partial was stored."""


class StoreCorruptError(ValueError):
    """SQLite cannot read the store file (not a database, a malformed page or schema).

    The message is one line naming the file, the problem and what to do: its results can be
    re-made (``prunecal-eval ... --rebuild-store`` moves it aside and starts a fresh store;
    the artefact cache is kept, so only the evaluations run again).
    """

    def __init__(self, path: str | Path, problem: Any) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split()) or type(problem).__name__
        super().__init__(
            f"result store {self.path} is damaged ({self.problem}); its results can be re-made: "
            f"re-run prunecal-eval with the same settings and --rebuild-store (moves the damaged "
            f"file aside and starts a fresh store), or move {self.path.name} out of "
            f"{self.path.parent} yourself")


_CORRUPTION_WORDS = ("malformed", "not a database", "corrupt", "no such table", "no such column",
                     "database disk image", "unsupported file format", "encrypted")


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite errors that mean the file is damaged (not a lock, not a full disk)."""
    if not isinstance(exc, sqlite3.DatabaseError) or is_disk_full(exc):
        return False
    msg = str(exc).lower()
    if any(w in msg for w in _CORRUPTION_WORDS):
        return True
    # a plain DatabaseError (not Operational / Integrity / Programming ...) is SQLite's
    # SQLITE_CORRUPT / SQLITE_NOTADB family
    return type(exc) is sqlite3.DatabaseError


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


HOST = f"{socket.gethostname()}|{_boot_id()}"
"""This machine (host name and boot id) as recorded with each claim."""


def _owner_dead(host: str, pid: int) -> bool:
    """True when a claim's process ran on this machine and no longer runs (or is a zombie).
    Claims of other machines are never judged: their leases expire."""
    if host != HOST or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: a process of another user runs under that id
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except (OSError, IndexError):
        return False


def _sql_type(column: str) -> str:
    return UNIT_COLUMNS[column].split()[0]


def _normalise(column: str, value: Any) -> Any:
    """The value as SQLite stores it in ``column`` (so a row reads back exactly as hashed)."""
    if value is None:
        return None
    if column in JSON_COLUMNS:
        return value if isinstance(value, str) else json.dumps(value, allow_nan=True)
    t = _sql_type(column)
    if t == "REAL":
        v = round(float(value), 6) if column == "sparsity" else float(value)
        # SQLite stores NaN as NULL and -0.0 as 0.0: normalise both before hashing
        return None if v != v else v + 0.0
    if t == "INTEGER":
        if isinstance(value, float) and value != value:
            return None
        return int(value)
    return str(value)


def row_checksum(values: Sequence[Any]) -> str:
    """sha256 (hex) of a unit row's normalised values, in :data:`UNIT_COLUMNS` order."""
    text = json.dumps(list(values), allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _row_problem(raw: Sequence[Any], stored: Any) -> str | None:
    """None when a raw row (UNIT_COLUMNS order) matches its stored checksum, else why not."""
    try:
        vals = [_normalise(c, v) for c, v in zip(UNIT_COLUMNS, raw)]
        if any(isinstance(v, bytes) for v in vals):
            return "a value changed type (unreadable)"
        if row_checksum(vals) != stored:
            return ("checksum mismatch: a value changed after it was written" if stored
                    else "no checksum")
        for c, v in zip(UNIT_COLUMNS, vals):
            if c in JSON_COLUMNS and v is not None:
                json.loads(v)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"unreadable value ({type(exc).__name__})"
    return None


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full" and for OSError ENOSPC / EDQUOT."""
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc).lower()
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    return False


def now_iso() -> str:
    """UTC timestamp, ISO 8601 with milliseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def unit_key(row: dict[str, Any]) -> tuple:
    """The primary-key tuple of a unit dict (sparsity rounded to 6 decimals)."""
    return tuple(round(float(row[k]), 6) if k == "sparsity" else row[k] for k in KEY_COLUMNS)


class Store:
    """The study's SQLite database (``out/results.sqlite``), WAL mode.

    Every unit row carries ``row_sha256``, a digest of its values (:func:`row_checksum`),
    verified on every read: :meth:`units` and :meth:`done_keys` leave out a row that fails it
    (logged once per store, one line), :meth:`check` lists them, and :meth:`insert_unit`
    replaces such a row, so re-running the same study re-makes it. A file SQLite itself
    cannot read (not a database, a malformed page) raises :class:`StoreCorruptError` with
    one line saying what to do.

    Args:
        path: database file; created with its tables when absent.
        timeout: seconds to wait for a lock held by another process.
        check: run SQLite's ``PRAGMA quick_check`` on open (a damaged file is found at once
            instead of midway through a run).
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0, check: bool = True) -> None:
        self.path = Path(path)
        self._reported_bad: set[tuple] = set()
        self._verified: set[tuple] = set()
        self.conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = self._connect(timeout)
            if check and self.path.stat().st_size > 0:
                self._quick_check()
            self._create()
        except StoreCorruptError:
            self._close_quietly()
            raise
        except UnicodeDecodeError as exc:  # SQLite's message quoting a damaged schema
            self._close_quietly()
            raise StoreCorruptError(self.path, "malformed database schema (undecodable text)") from exc
        except (sqlite3.DatabaseError, OSError) as exc:
            self._close_quietly()
            if is_disk_full(exc):
                raise StoreFullError(f"disk full while opening {self.path}: {exc}") from exc
            if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
                raise StoreCorruptError(self.path, exc) from exc
            raise ValueError(f"cannot open result store {self.path}: {exc}") from exc

    def _close_quietly(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass

    def _connect(self, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        # a flipped byte inside a text value must not stop every read: it decodes (with
        # surrogate escapes) and then fails its row checksum
        conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _quick_check(self) -> None:
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise StoreCorruptError(self.path, "; ".join(str(r) for r in rows[:2]))

    def _create(self) -> None:
        cols = ",\n  ".join(f"{k} {t}" for k, t in UNIT_COLUMNS.items())
        # one IMMEDIATE transaction: two processes opening one old store migrate it once
        with self._tx():
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS configs (config_hash TEXT PRIMARY KEY, "
                "config_json TEXT NOT NULL, created_at TEXT NOT NULL, last_run_at TEXT NOT NULL, "
                "run_seq INTEGER NOT NULL)")
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS units (\n  {cols},\n  {CHECKSUM_COLUMN} TEXT NOT NULL,\n"
                f"  PRIMARY KEY ({', '.join(KEY_COLUMNS)}))")
            self._create_claims()
            self._create_failures()
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            cfg_cols = {r[1] for r in self.conn.execute("PRAGMA table_info(configs)")}
            if "run_seq" not in cfg_cols:  # stores written by the first development version
                self.conn.execute("ALTER TABLE configs ADD COLUMN run_seq INTEGER NOT NULL DEFAULT 0")
            ver = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
            try:
                ver = int(ver)
            except (TypeError, ValueError):
                raise StoreCorruptError(self.path, f"schema version {ver!r}") from None
            if ver == 1:
                self._migrate_v1()
                ver = 2
            if ver == 2:
                self._migrate_v2()
                ver = 3
            if ver != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: store schema {ver}, this prunecal reads "
                                 f"{SCHEMA_VERSION} (a newer prunecal wrote it)")

    def _create_claims(self) -> None:
        """Claims of pending units by concurrent processes (see :meth:`claim_units`); each
        records the claiming machine (:data:`HOST`) and process id beside its owner."""
        cols = ", ".join(f"{k} {UNIT_COLUMNS[k]}" for k in KEY_COLUMNS)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS claims ({cols}, owner TEXT NOT NULL, "
            f"expires_at REAL NOT NULL, host TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT 0, "
            f"PRIMARY KEY ({', '.join(KEY_COLUMNS)}))")
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(claims)")}
        if "host" not in have:  # claims tables of early development stores
            self.conn.execute("ALTER TABLE claims ADD COLUMN host TEXT NOT NULL DEFAULT ''")
        if "pid" not in have:
            self.conn.execute("ALTER TABLE claims ADD COLUMN pid INTEGER NOT NULL DEFAULT 0")
        self.conn.execute("CREATE INDEX IF NOT EXISTS claims_owner ON claims (owner)")

    def _create_failures(self) -> None:
        """Units an executor gave up on (retries spent): key columns, the error, when."""
        cols = ", ".join(f"{k} {UNIT_COLUMNS[k]}" for k in KEY_COLUMNS)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS failures ({cols}, error TEXT NOT NULL, "
            f"recorded_at TEXT NOT NULL, PRIMARY KEY ({', '.join(KEY_COLUMNS)}))")

    def _migrate_v1(self) -> None:
        """Version 1 had no fine-tuning columns: its rows become one-shot rows (epochs 0).
        Runs inside :meth:`_create`'s transaction; leaves a version-2 table."""
        cols = ",\n  ".join(f"{k} {t}" for k, t in UNIT_COLUMNS.items())
        old = [r[1] for r in self.conn.execute("PRAGMA table_info(units)")]
        self.conn.execute(f"CREATE TABLE units_v2 (\n  {cols},\n"
                          f"  PRIMARY KEY ({', '.join(KEY_COLUMNS)}))")
        shared = [c for c in old if c in UNIT_COLUMNS]
        self.conn.execute(
            f"INSERT INTO units_v2 ({', '.join(shared)}, finetune_epochs, finetune_recipe) "
            f"SELECT {', '.join(shared)}, 0, 'none' FROM units")
        self.conn.execute("DROP TABLE units")
        self.conn.execute("ALTER TABLE units_v2 RENAME TO units")
        self.conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")

    def _migrate_v2(self) -> None:
        """Version 2 had no row checksums: each existing row gets the digest of its values as
        they are now (from here on a change is detected). Inside :meth:`_create`'s transaction."""
        self.conn.execute(f"ALTER TABLE units ADD COLUMN {CHECKSUM_COLUMN} TEXT NOT NULL DEFAULT ''")
        names = list(UNIT_COLUMNS)
        rows = self.conn.execute(f"SELECT rowid, {', '.join(names)} FROM units").fetchall()
        for r in rows:
            vals = [_normalise(c, v) for c, v in zip(names, r[1:])]
            self.conn.execute(f"UPDATE units SET {CHECKSUM_COLUMN}=? WHERE rowid=?",
                              (row_checksum(vals), r[0]))
        self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    # -- transactions -------------------------------------------------------------------
    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, et, ev, tb):
            if et is None:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            else:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            return False

    def _tx(self) -> "Store._Tx":
        return Store._Tx(self.conn)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc):
                raise StoreFullError(f"database or disk is full ({self.path}); no partial unit "
                                     "was stored: free space and re-run the same command") from exc
            if is_corruption(exc):
                raise StoreCorruptError(self.path, exc) from exc
            raise
        except UnicodeDecodeError as exc:  # SQLite's message quoting a damaged schema
            raise StoreCorruptError(self.path, "malformed database (undecodable text)") from exc

    # -- configs ------------------------------------------------------------------------
    def record_config(self, config_hash: str, config: dict[str, Any]) -> None:
        """Save the resolved config under its hash (first time) and mark it as the latest run."""
        def run() -> None:
            t = now_iso()
            with self._tx():
                seq = self.conn.execute("SELECT COALESCE(MAX(run_seq), 0) + 1 FROM configs").fetchone()[0]
                self.conn.execute(
                    "INSERT INTO configs VALUES (?, ?, ?, ?, ?) ON CONFLICT(config_hash) "
                    "DO UPDATE SET last_run_at=excluded.last_run_at, config_json=excluded.config_json, "
                    "run_seq=excluded.run_seq",
                    (config_hash, json.dumps(config, sort_keys=True), t, t, seq))
        self._guard(run)

    def configs(self) -> list[dict[str, Any]]:
        """All configs, latest run first: ``{config_hash, config, created_at, last_run_at, n_units}``."""
        def run() -> list[dict[str, Any]]:
            rows = self.conn.execute(
                "SELECT c.config_hash, c.config_json, c.created_at, c.last_run_at, "
                "(SELECT COUNT(*) FROM units u WHERE u.config_hash=c.config_hash) "
                "FROM configs c ORDER BY c.run_seq DESC").fetchall()
            out = []
            for h, j, c, l, n in rows:
                try:
                    cfg = json.loads(j)
                except (TypeError, ValueError):
                    raise StoreCorruptError(self.path, f"unreadable configuration of study {h!r}") from None
                out.append(dict(config_hash=h, config=cfg, created_at=c, last_run_at=l, n_units=n))
            return out
        return self._guard(run)

    def latest_config_hash(self) -> str | None:
        cfgs = self.configs()
        return cfgs[0]["config_hash"] if cfgs else None

    # -- units --------------------------------------------------------------------------
    def _scan(self, config_hash: str | None, order: bool = False):
        """(raw values in UNIT_COLUMNS order, problem or None) of every stored row."""
        q = f"SELECT {', '.join(UNIT_COLUMNS)}, {CHECKSUM_COLUMN} FROM units"
        args: tuple = ()
        if config_hash:
            q += " WHERE config_hash=?"
            args = (config_hash,)
        if order:
            q += (" ORDER BY model, method, sparsity, finetune_epochs, finetune_recipe, seed, "
                  "backend, corruption, severity")
        out = []
        for r in self.conn.execute(q, args):
            raw = r[:-1]
            out.append((raw, _row_problem(raw, r[-1])))
        return out

    def _row_ok(self, rowid: int, digest: Any) -> bool:
        """Whether the row ``rowid`` matches its checksum ``digest`` (read in full and checked
        once per Store: cached by rowid and checksum)."""
        tag = (rowid, digest)
        if tag in self._verified:
            return True
        raw = self.conn.execute(f"SELECT {', '.join(UNIT_COLUMNS)} FROM units WHERE rowid=?",
                                (rowid,)).fetchone()
        if raw is None or _row_problem(raw, digest) is not None:
            return False
        self._verified.add(tag)
        return True

    def _verified_keys(self, config_hash: str | None) -> set[tuple]:
        """Keys of the stored rows whose checksum verifies."""
        q = f"SELECT rowid, {CHECKSUM_COLUMN}, {', '.join(KEY_COLUMNS)} FROM units"
        rows = (self.conn.execute(q + " WHERE config_hash=?", (config_hash,)) if config_hash
                else self.conn.execute(q)).fetchall()
        return {unit_key(dict(zip(KEY_COLUMNS, key))) for rowid, digest, *key in rows
                if self._row_ok(rowid, digest)}

    def done_keys(self, config_hash: str | None = None) -> set[tuple]:
        """Primary-key tuples of the stored units (of one config, or all) whose row checksum
        verifies: a damaged row counts as not done, so the sweep re-makes it."""
        return self._guard(self._verified_keys, config_hash)

    def check(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """Every stored row whose checksum fails: ``{"key": {column: value}, "problem": str,
        "line": str}`` (``line`` is one line naming the store, the unit and what to do)."""
        def run() -> list[dict[str, Any]]:
            out = []
            for raw, problem in self._scan(config_hash, order=True):
                if problem is None:
                    continue
                key = {k: v for k, v in zip(UNIT_COLUMNS, raw) if k in KEY_COLUMNS}
                out.append(dict(key=key, problem=problem, line=self._bad_line(key, problem)))
            return out
        return self._guard(run)

    def _bad_line(self, key: dict[str, Any], problem: str) -> str:
        unit = " ".join(f"{k}={key[k]!r}" if isinstance(key[k], str) else f"{k}={key[k]}"
                        for k in KEY_COLUMNS)
        return (f"{self.path}: damaged unit row ({problem}) excluded: {unit}; re-run prunecal-eval "
                "with the same settings to re-make it")

    # -- claims (several processes on one output folder) ---------------------------------
    def claim_units(self, config_hash: str, keys: Sequence[tuple], *, owner: str,
                    lease_s: float = 120.0, limit: int | None = None) -> list[tuple]:
        """Claim pending units for ``owner`` so that concurrent processes share the work.

        In one ``BEGIN IMMEDIATE`` transaction, claims (up to ``limit``) of ``keys`` (unit-key
        tuples in :data:`KEY_COLUMNS` order, as :func:`unit_key` returns, all of ``config_hash``)
        those that are neither stored nor claimed under an unexpired lease by another owner.
        A claim of ``owner`` itself is renewed and returned again; an expired claim (its
        process died or stopped renewing) is taken over, and so is, at once, the claim of a
        process of this machine that no longer runs (killed: a re-run need not wait for its
        lease to expire). Each claim expires ``lease_s``
        seconds from now unless :meth:`renew_claims` extends it; :meth:`insert_unit` drops it.

        Returns:
            the claimed keys, in the order given.
        """
        if not owner:
            raise ValueError("claim_units: owner must be a non-empty string")
        if not lease_s > 0:
            raise ValueError(f"claim_units: lease_s must be > 0, got {lease_s}")
        if limit is not None and limit < 0:
            raise ValueError(f"claim_units: limit must be >= 0 or None, got {limit}")
        norm = []
        for k in keys:
            k = tuple(k)
            if len(k) != len(KEY_COLUMNS):
                raise ValueError(f"claim_units: a key has {len(k)} fields, expected "
                                 f"{len(KEY_COLUMNS)} ({', '.join(KEY_COLUMNS)})")
            if k[0] != config_hash:
                raise ValueError(f"claim_units: key of config {k[0]!r} among keys of {config_hash!r}")
            norm.append((k, unit_key(dict(zip(KEY_COLUMNS, k)))))
        cols = ", ".join(KEY_COLUMNS)
        where = " AND ".join(f"{k}=?" for k in KEY_COLUMNS)

        def run() -> list[tuple]:
            out: list[tuple] = []
            seen: set[tuple] = set()
            with self._tx():
                now = time.time()
                for k, nk in norm:  # index lookups of the given keys only: cheap per call
                    if limit is not None and len(out) >= limit:
                        break
                    if nk in seen:  # a key listed twice is claimed once
                        continue
                    seen.add(nk)
                    row = self.conn.execute(
                        f"SELECT rowid, {CHECKSUM_COLUMN} FROM units WHERE {where}", nk).fetchone()
                    if row is not None and self._row_ok(*row):
                        continue  # stored (a damaged row is re-made: claimable)
                    held = self.conn.execute(
                        f"SELECT owner, expires_at, host, pid FROM claims WHERE {where}", nk).fetchone()
                    if (held is not None and held[0] != owner and held[1] > now
                            and not _owner_dead(held[2], held[3])):
                        continue  # another owner's lease is running
                    self.conn.execute(
                        f"INSERT OR REPLACE INTO claims ({cols}, owner, expires_at, host, pid) "
                        f"VALUES ({', '.join('?' * (len(KEY_COLUMNS) + 4))})",
                        (*nk, owner, now + lease_s, HOST, os.getpid()))
                    out.append(k)
            return out
        return self._guard(run)

    def renew_claims(self, owner: str, lease_s: float = 120.0) -> None:
        """Extend every claim of ``owner`` to ``lease_s`` seconds from now (call it more often
        than ``lease_s`` while working, e.g. after each unit)."""
        def run() -> None:
            with self._tx():
                self.conn.execute("UPDATE claims SET expires_at=? WHERE owner=?",
                                  (time.time() + lease_s, owner))
        self._guard(run)

    def release_claims(self, owner: str) -> None:
        """Drop every claim of ``owner`` (at the end of its run, or when it is interrupted)."""
        def run() -> None:
            with self._tx():
                self.conn.execute("DELETE FROM claims WHERE owner=?", (owner,))
        self._guard(run)

    def _bad_keys(self, config_hash: str | None = None) -> set[tuple]:
        return set()

    def claims(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """Current claims (expired ones included): key columns, ``owner``, ``expires_at``."""
        q = f"SELECT {', '.join(KEY_COLUMNS)}, owner, expires_at FROM claims"
        rows = (self.conn.execute(q + " WHERE config_hash=?", (config_hash,)) if config_hash
                else self.conn.execute(q))
        return [dict(zip((*KEY_COLUMNS, "owner", "expires_at"), r)) for r in rows]

    def record_failures(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record failed units (each: the key columns and ``error``, one line) in one
        transaction; a unit that failed before keeps only its latest error. A unit stored
        later (:meth:`insert_unit`) drops its failure."""
        if not rows:
            return
        data = []
        for r in rows:
            missing = [k for k in (*KEY_COLUMNS, "error") if r.get(k) is None]
            if missing:
                raise ValueError(f"failure row: missing columns {missing}")
            data.append([_normalise(k, r[k]) for k in KEY_COLUMNS] + [str(r["error"]), now_iso()])
        names = (*KEY_COLUMNS, "error", "recorded_at")
        sql = (f"INSERT OR REPLACE INTO failures ({', '.join(names)}) "
               f"VALUES ({', '.join('?' * len(names))})")

        def run() -> None:
            with self._tx():
                self.conn.executemany(sql, data)
        self._guard(run)

    def failures(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """Recorded failures (see :meth:`record_failures`) as dicts: key columns, ``error``,
        ``recorded_at``; ordered by key."""
        names = (*KEY_COLUMNS, "error", "recorded_at")
        q = f"SELECT {', '.join(names)} FROM failures"
        order = f" ORDER BY {', '.join(KEY_COLUMNS)}"

        def run() -> list[dict[str, Any]]:
            rows = (self.conn.execute(q + " WHERE config_hash=?" + order, (config_hash,))
                    if config_hash else self.conn.execute(q + order))
            return [dict(zip(names, r)) for r in rows]
        return self._guard(run)

    def insert_unit(self, row: dict[str, Any]) -> bool:
        """Insert one complete unit (with its row checksum) in one transaction; False if the
        key is already stored. A stored row of the same key that fails its checksum is
        replaced. The unit's claim (:meth:`claim_units`) and recorded failure, if any, are dropped
        in the same transaction.

        Raises:
            ValueError: a missing or unknown column.
            StoreFullError: the disk is full (the transaction was rolled back).
        """
        missing = [c for c, t in UNIT_COLUMNS.items() if "NOT NULL" in t and row.get(c) is None]
        unknown = sorted(set(row) - set(UNIT_COLUMNS))
        if missing or unknown:
            raise ValueError(f"unit row: missing columns {missing}, unknown columns {unknown}")
        vals = [_normalise(c, row.get(c)) for c in UNIT_COLUMNS]
        vals.append(row_checksum(vals))
        names = [*UNIT_COLUMNS, CHECKSUM_COLUMN]
        sql = f"INSERT INTO units ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        key = [vals[list(UNIT_COLUMNS).index(k)] for k in KEY_COLUMNS]
        where = " AND ".join(f"{k}=?" for k in KEY_COLUMNS)

        def run() -> bool:
            with self._tx():
                # the unit is stored (now or before): its claim has served its purpose, and
                # an earlier failure of it is history
                self.conn.execute(f"DELETE FROM claims WHERE {where}", key)
                self.conn.execute(f"DELETE FROM failures WHERE {where}", key)
                try:
                    self.conn.execute(sql, vals)
                except sqlite3.IntegrityError:
                    old = self.conn.execute(
                        f"SELECT {', '.join(names)} FROM units WHERE {where}", key).fetchone()
                    if old is None or _row_problem(old[:-1], old[-1]) is None:
                        return False  # only this statement failed; the claim's deletion commits
                    self.conn.execute(f"DELETE FROM units WHERE {where}", key)  # damaged: re-made
                    self.conn.execute(sql, vals)
            return True
        return self._guard(run)

    def units(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """Stored units as dicts, JSON columns decoded; ordered by key. A row that fails its
        checksum is left out and logged once (one line: :meth:`check` lists them all)."""
        def run() -> list[dict[str, Any]]:
            out = []
            for raw, problem in self._scan(config_hash, order=True):
                d = dict(zip(UNIT_COLUMNS, raw))
                if problem is not None:
                    key = {k: d[k] for k in KEY_COLUMNS}
                    tag = tuple(str(key[k]) for k in KEY_COLUMNS)
                    if tag not in self._reported_bad:
                        self._reported_bad.add(tag)
                        log.warning("%s", self._bad_line(key, problem))
                    continue
                for c in JSON_COLUMNS:
                    if d[c] is not None:
                        d[c] = json.loads(d[c])
                out.append(d)
            return out
        return self._guard(run)

    def count(self, config_hash: str | None = None) -> int:
        """Number of stored rows (damaged ones included; see :meth:`check`)."""
        def run() -> int:
            if config_hash:
                return self.conn.execute("SELECT COUNT(*) FROM units WHERE config_hash=?",
                                         (config_hash,)).fetchone()[0]
            return self.conn.execute("SELECT COUNT(*) FROM units").fetchone()[0]
        return self._guard(run)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Store", "StoreFullError", "StoreCorruptError", "is_corruption", "row_checksum",
           "CHECKSUM_COLUMN", "SCHEMA_VERSION", "KEY_COLUMNS", "UNIT_COLUMNS", "unit_key", "is_disk_full",
           "now_iso"]
