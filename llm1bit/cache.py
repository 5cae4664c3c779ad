"""The result store: every simulator run's counters in one SQLite file, verified before use.

`<root>/results.sqlite` holds one row per key (shape, hardware contents incl. dataflow, backend,
simulator version): the payload (JSON: the key, the counters, free-form meta), a sha256 checksum of
the key and counters, and the backend / simulator version for `llm1bit cache info`. WAL mode with a
busy timeout lets several processes read and write at once; every `put` commits at once, so an
interrupted sweep keeps what it finished.

Nothing stored is trusted: a row is used only when its key, its payload's key, the exact counter
fields (non-negative integers) and the checksum all agree. Any other row is deleted and counted in
`rejected`; the caller tells the user and recomputes it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from llm1bit.counters import COUNTER_NAMES
from llm1bit.errors import UserError

DB_NAME = "results.sqlite"
CHUNK = 500  # keys per SELECT ... IN (...)
BUSY_TIMEOUT_S = 30.0
CACHE_KIB = 32 * 1024  # SQLite page cache per connection: large stores insert random keys
SCHEMA_VERSION = 1
COLUMNS = ("key", "payload", "checksum", "backend", "simulator", "created")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results("
    "key TEXT PRIMARY KEY, payload TEXT NOT NULL, checksum TEXT NOT NULL, "
    "backend TEXT, simulator TEXT, created REAL) WITHOUT ROWID"
)
SQLITE_HEADER = b"SQLite format 3\x00"
# payload and checksum read as bytes: a row poisoned with bytes that are not UTF-8 must not crash the read
SELECT = "SELECT key, CAST(payload AS BLOB), CAST(checksum AS BLOB) FROM results"

# Connections inherited through fork() are never used nor closed by the child (SQLite forbids
# carrying a connection across fork); they are parked here so garbage collection does not close them.
_INHERITED: list[sqlite3.Connection] = []


def default_cache_dir() -> Path:
    """$LLM1BIT_CACHE_DIR, else $XDG_CACHE_HOME/llm1bit, else ~/.cache/llm1bit."""
    if os.environ.get("LLM1BIT_CACHE_DIR"):
        return Path(os.environ["LLM1BIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm1bit"


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _canonical(obj: object) -> str:
    return _ENCODER.encode(obj)


def checksum(key: str, value: Mapping[str, int]) -> str:
    """sha256 of the canonical JSON of the key and the counters."""
    return hashlib.sha256(_canonical({"key": key, "value": value}).encode()).hexdigest()


def _is_count(x: object) -> bool:
    return type(x) is int and x >= 0


def _echo_err(message: str) -> None:
    import click

    click.echo(message, err=True)


class ResultCache:
    """Maps a key to a dict of counters (`fields`), verified on every read. `root=None` disables it.

    The SQLite connection is opened on first use, one per process (a forked child opens its own)."""

    def __init__(self, root: str | os.PathLike | None, fields: tuple[str, ...] = COUNTER_NAMES):
        self.root = Path(root) if root is not None else None
        self.path: Path | None = self.root / DB_NAME if self.root is not None else None
        self.fields = tuple(fields)
        self._field_set = frozenset(self.fields)
        self.rejected = 0
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()

    # -- keys and values ------------------------------------------------------------------------------

    @staticmethod
    def key(**parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _clean(self, value: Mapping) -> dict[str, int]:
        """The value as stored: exactly `fields`, each a non-negative int (numpy ints accepted)."""
        if not isinstance(value, Mapping) or set(value) != self._field_set:
            raise ValueError(
                f"a cached value needs exactly the fields {', '.join(self.fields)}; got {value!r}"
            )
        out = {}
        for name in self.fields:
            x = value[name]
            if isinstance(x, bool) or isinstance(x, float):
                raise ValueError(f"cached field {name} must be a non-negative integer, not {x!r}")
            x = operator.index(x)
            if x < 0:
                raise ValueError(f"cached field {name} must be a non-negative integer, not {x}")
            out[name] = x
        return out

    def _verified(self, key: str, row_key: object, payload: object, stored_sum: object) -> dict | None:
        """The row's counters if every check passes, else None."""
        if row_key != key or not isinstance(payload, bytes) or not isinstance(stored_sum, bytes):
            return None
        try:
            data = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, absurdly nested
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        value = data.get("value")
        if not isinstance(value, dict) or set(value) != self._field_set:
            return None
        if not all(_is_count(x) for x in value.values()):
            return None
        if checksum(key, value).encode() != stored_sum:
            return None
        return {name: value[name] for name in self.fields}

    # -- connection -----------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> UserError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError):
            text = exc.strerror or text
        low = text.lower()
        if "full" in low:
            hint = "the disk is full; free some space or give --cache-dir on another disk"
        elif "readonly" in low or "read-only" in low:
            hint = "it is read-only; give a writable --cache-dir"
        elif "locked" in low or "busy" in low:
            hint = f"another process held it locked for {BUSY_TIMEOUT_S:.0f} s; try again"
        elif "unable to open" in low:
            hint = "the file cannot be opened; check the folder's permissions or give another --cache-dir"
        else:
            hint = "give another --cache-dir, or move the file aside"
        return UserError(f"result cache {self.path}: {text} ({hint})")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the store created) on first use."""
        assert self.path is not None
        pid = os.getpid()
        if self._conn is not None and self._pid == pid:
            return self._conn
        if self._conn is not None:  # inherited through fork: never touch it here
            _INHERITED.append(self._conn)
            self._conn = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"cannot use cache folder {self.root}: it is a file, not a folder") from None
        except OSError as exc:
            raise UserError(f"cannot use cache folder {self.root}: {exc.strerror or exc}") from None
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc) and "malformed" not in str(exc):
                raise self._fail(exc) from None
            self._move_aside(str(exc))
            try:
                conn = self._open()
            except sqlite3.Error as exc2:
                raise self._fail(exc2) from None
        self._conn, self._pid = conn, pid
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.execute(SCHEMA)
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(results)"))
            if columns != COLUMNS:
                raise UserError(
                    f"result cache {self.path}: not an llm1bit result store (table results has columns "
                    f"{', '.join(columns)}); give another --cache-dir or move the file aside"
                )
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, reason: str) -> None:
        """A file that is not a database: rename it (and its WAL) aside and start a new store."""
        assert self.path is not None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for n in range(1, 1000):
            if not aside.exists():
                break
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
            if header == SQLITE_HEADER and "not a database" in reason:
                return  # another process has already replaced it with a fresh store: just reopen
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    os.replace(side, Path(f"{aside}{suffix}"))
        except FileNotFoundError:
            return  # moved aside by another process meanwhile
        except OSError as exc:
            raise UserError(
                f"result cache {self.path}: {reason}, and it cannot be moved aside ({exc.strerror}); "
                "delete it or give another --cache-dir"
            ) from None
        _echo_err(
            f"warning: result cache {self.path}: {reason}; moved it to {aside.name} and started a new one"
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_conn=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- reads ----------------------------------------------------------------------------------------

    def _reject(self, conn: sqlite3.Connection, bad: list[tuple[object, object, object]]) -> None:
        """Delete rows that failed verification (only if still exactly as read); the caller reports `rejected`."""
        if not bad:
            return
        conn.executemany(
            "DELETE FROM results WHERE key = ? AND CAST(payload AS BLOB) IS ? AND CAST(checksum AS BLOB) IS ?",
            bad,
        )
        self.rejected += len(bad)

    def get(self, key: str) -> dict | None:
        """The verified counters stored under key, else None (a bad row is deleted)."""
        if self.path is None:
            return None
        with self._lock, self._guard():
            conn = self._connection()
            row = conn.execute(f"{SELECT} WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            value = self._verified(key, *row)
            if value is None:
                self._reject(conn, [row])
            return value

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """{key: verified counters} for every key found; one query per chunk of 500 keys."""
        if self.path is None:
            return {}
        wanted = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        with self._lock, self._guard():
            conn = self._connection()
            bad = []
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"{SELECT} WHERE key IN ({marks})", chunk).fetchall()
                for row in rows:
                    value = self._verified(row[0], *row) if isinstance(row[0], str) else None
                    if value is None:
                        bad.append(row)
                    else:
                        out[row[0]] = value
            self._reject(conn, bad)
        return out

    # -- writes ---------------------------------------------------------------------------------------

    def _row(self, key: str, value: Mapping, meta: Mapping) -> tuple:
        clean = self._clean(value)
        payload = _canonical({"key": key, "meta": dict(meta), "value": clean})
        backend, simulator = meta.get("backend"), meta.get("simulator", meta.get("scalesim"))
        return (
            key,
            payload,
            checksum(key, clean),
            None if backend is None else str(backend),
            None if simulator is None else str(simulator),
            time.time(),
        )

    _INSERT = "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)"

    def put(self, key: str, value: dict, **meta: object) -> None:
        """Store one result; committed before returning. `backend=` / `simulator=` in meta feed `info`."""
        if self.path is None:
            return
        row = self._row(key, value, meta)
        with self._lock, self._guard():
            self._connection().execute(self._INSERT, row)

    def put_many(self, items: Iterable[tuple[str, dict, dict]]) -> None:
        """Store (key, value, meta) triples in one transaction: all of them or none."""
        if self.path is None:
            return
        rows = sorted(self._row(key, value, meta or {}) for key, value, meta in items)  # B-tree order
        if not rows:
            return
        with self._lock, self._guard():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    # -- management -----------------------------------------------------------------------------------

    def _exists(self) -> bool:
        """Whether the store file exists; a folder that could never hold it is a one-line error."""
        assert self.root is not None and self.path is not None
        if self.path.exists():
            return True
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise UserError(f"cannot use cache folder {self.root}: {folder} is a file, not a folder")
        return False

    def info(self) -> dict:
        """Path, entries, bytes on disk (with WAL) and entries per (backend, simulator); one query."""
        if self.path is None:
            return {"path": None, "entries": 0, "bytes": 0, "by_version": []}
        groups: list[dict] = []
        if self._exists():
            with self._lock, self._guard():
                rows = (
                    self._connection()
                    .execute(
                        "SELECT backend, simulator, COUNT(*) FROM results GROUP BY backend, simulator "
                        "ORDER BY COUNT(*) DESC"
                    )
                    .fetchall()
                )
            groups = [{"backend": b, "simulator": s, "entries": n} for b, s, n in rows]
        size = sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )
        return {
            "path": str(self.path),
            "entries": sum(g["entries"] for g in groups),
            "bytes": size,
            "by_version": groups,
        }

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        if self.path is None or not self._exists():
            return 0
        with self._lock, self._guard():
            conn = self._connection()
            removed = conn.execute("DELETE FROM results").rowcount
            with contextlib.suppress(sqlite3.OperationalError):  # shrinking the file is a bonus
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def clear_legacy(self) -> int:
        """Remove the files of the old one-JSON-file-per-result layout (`<root>/<xx>/<key>.json`)."""
        if self.root is None or not self.root.is_dir():
            return 0
        removed = 0
        hexdigits = set("0123456789abcdef")
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not set(sub.name) <= hexdigits or not sub.is_dir():
                continue
            for f in sub.glob("*.json"):
                if f.name.startswith(sub.name) and len(f.stem) == 32 and set(f.stem) <= hexdigits:
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
                        removed += 1
            with contextlib.suppress(OSError):
                sub.rmdir()
        return removed
