"""The result store: poisoned rows are never used, concurrent writers, full disk, bad folders, `llm1bit cache`."""

import csv
import io
import json
import multiprocessing
import os
import sqlite3

import pytest
from click.testing import CliRunner

from llm1bit.cache import ResultCache, checksum
from llm1bit.cli import main
from llm1bit.counters import COUNTER_NAMES
from llm1bit.errors import UserError

GOOD = {name: 1000 + i for i, name in enumerate(COUNTER_NAMES)}


def raw(store: ResultCache) -> sqlite3.Connection:
    """A separate connection to the store's file, as another program (or a bad disk) would write it."""
    return sqlite3.connect(store.path, isolation_level=None)


def rows(store: ResultCache) -> int:
    with raw(store) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def payload(key, value, meta=None):
    return json.dumps({"key": key, "meta": meta or {}, "value": value})


def set_row(store, key, text, check):
    conn = raw(store)
    conn.execute("UPDATE results SET payload = ?, checksum = ? WHERE key = ?", (text, check, key))
    conn.close()


def poison(store: ResultCache, key: str, kind: str) -> None:
    """Overwrite the stored row of `key` with a bad one. Where the payload is still JSON, the checksum is
    recomputed for the bad content (except for x1000), so only the check under test can catch it."""

    def with_value(value):
        set_row(store, key, payload(key, value), checksum(key, value))

    if kind == "x1000":  # valid JSON, the old checksum
        conn = raw(store)
        (old,) = conn.execute("SELECT checksum FROM results WHERE key = ?", (key,)).fetchone()
        conn.close()
        set_row(store, key, payload(key, {k: v * 1000 for k, v in GOOD.items()}), old)
    elif kind == "missing_field":
        with_value({k: v for k, v in GOOD.items() if k != "cycles"})
    elif kind == "extra_field":
        with_value({**GOOD, "energy": 5})
    elif kind == "negative":
        with_value({**GOOD, "cycles": -5})
    elif kind == "float":
        with_value({**GOOD, "cycles": 1000.0})
    elif kind == "bool":
        with_value({**GOOD, "cycles": True})
    elif kind == "string_value":
        with_value({**GOOD, "cycles": "1000"})
    elif kind == "value_list":
        with_value(list(GOOD.values()))
    elif kind == "list":
        value = [GOOD]
        set_row(store, key, json.dumps(value), checksum(key, value))
    elif kind == "string":
        set_row(store, key, json.dumps("cycles=1000"), checksum(key, GOOD))
    elif kind == "bad_json":
        set_row(store, key, '{"key": "' + key + '", "value": {', checksum(key, GOOD))
    elif kind == "random_bytes":
        set_row(store, key, os.urandom(200), checksum(key, GOOD))
    elif kind == "non_utf8_text":
        conn = raw(store)
        conn.execute(
            "UPDATE results SET payload = CAST(? AS TEXT) WHERE key = ?", (b"\xff\xfe{\x80 not text", key)
        )
        conn.close()
    elif kind == "key_mismatch":  # another key's complete, self-consistent row copied under this key
        other = "f" * 32
        set_row(store, key, payload(other, GOOD), checksum(other, GOOD))
    elif kind == "payload_key":  # the payload names another key; the checksum is this key's
        set_row(store, key, payload("f" * 32, GOOD), checksum(key, GOOD))
    elif kind == "checksum_missing":
        set_row(store, key, payload(key, GOOD), "")
    else:
        raise AssertionError(kind)


KINDS = [
    "x1000",
    "missing_field",
    "extra_field",
    "negative",
    "float",
    "bool",
    "string_value",
    "value_list",
    "list",
    "string",
    "bad_json",
    "random_bytes",
    "non_utf8_text",
    "key_mismatch",
    "payload_key",
    "checksum_missing",
]


def test_good_rows_round_trip(tmp_path):
    store = ResultCache(tmp_path)
    store.put("a" * 32, GOOD, backend="scalesim", simulator="2.0.2")
    store.put_many([("b" * 32, dict(GOOD, cycles=0), {})])
    assert store.get("a" * 32) == GOOD
    assert store.get_many(["a" * 32, "b" * 32, "c" * 32]) == {"a" * 32: GOOD, "b" * 32: dict(GOOD, cycles=0)}
    assert store.get("c" * 32) is None
    assert store.rejected == 0 and rows(store) == 2
    assert store.path == tmp_path / "results.sqlite"
    assert ResultCache(tmp_path).get("a" * 32) == GOOD  # another instance, same file
    with raw(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_row_is_rejected_deleted_and_restored(tmp_path, kind):
    store = ResultCache(tmp_path)
    key = ResultCache.key(shape=(1, 2, 3), kind=kind)
    store.put(key, GOOD)
    poison(store, key, kind)
    assert store.get(key) is None
    assert store.rejected == 1
    assert rows(store) == 0
    assert store.get(key) is None and store.rejected == 1  # gone, not rejected twice
    store.put(key, GOOD)
    assert store.get(key) == GOOD and store.rejected == 1


def test_get_many_returns_only_verified_rows(tmp_path):
    store = ResultCache(tmp_path)
    good = [ResultCache.key(i=i) for i in range(20)]
    bad = {ResultCache.key(kind=kind): kind for kind in KINDS}
    store.put_many([(k, GOOD, {}) for k in good + list(bad)])
    for key, kind in bad.items():
        poison(store, key, kind)
    found = store.get_many(good + list(bad) + ["0" * 32])
    assert found == dict.fromkeys(good, GOOD)
    assert store.rejected == len(bad)
    assert rows(store) == len(good)
    store.put_many([(k, GOOD, {}) for k in bad])
    assert store.get_many(bad) == dict.fromkeys(bad, GOOD) and store.rejected == len(bad)


def test_get_many_chunks_large_requests(tmp_path):
    store = ResultCache(tmp_path)
    keys = [ResultCache.key(i=i) for i in range(1234)]
    store.put_many([(k, dict(GOOD, cycles=i), {}) for i, k in enumerate(keys)])
    found = store.get_many(keys + [ResultCache.key(i=-1)])
    assert len(found) == 1234 and all(found[k]["cycles"] == i for i, k in enumerate(keys))


@pytest.mark.parametrize(
    "value",
    [
        {k: v for k, v in GOOD.items() if k != "cycles"},
        {**GOOD, "energy": 1},
        {**GOOD, "cycles": -1},
        {**GOOD, "cycles": 1.0},
        {**GOOD, "cycles": True},
    ],
)
def test_put_refuses_values_that_would_not_verify(tmp_path, value):
    store = ResultCache(tmp_path)
    with pytest.raises(ValueError):
        store.put("a" * 32, value)
    with pytest.raises(ValueError):
        store.put_many([("b" * 32, GOOD, {}), ("c" * 32, value, {})])
    assert store.get_many(["a" * 32, "b" * 32, "c" * 32]) == {}


def test_other_fields(tmp_path):
    store = ResultCache(tmp_path, fields=("x", "y"))
    store.put("a" * 32, {"x": 1, "y": 2})
    assert store.get("a" * 32) == {"x": 1, "y": 2}
    assert ResultCache(tmp_path).get("a" * 32) is None  # the default fields do not match: rejected
    assert rows(store) == 0


def test_disabled_store_keeps_nothing():
    store = ResultCache(None)
    store.put("a" * 32, GOOD)
    store.put_many([("a" * 32, GOOD, {})])
    assert store.get("a" * 32) is None and store.get_many(["a" * 32]) == {} and store.path is None


def test_old_json_layout_is_ignored_and_cleared(tmp_path):
    key = ResultCache.key(a=1)
    old = tmp_path / key[:2] / f"{key}.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"meta": {}, "value": GOOD}))
    other = tmp_path / "notes.json"
    other.write_text("{}")
    store = ResultCache(tmp_path)
    assert store.get(key) is None and store.get_many([key]) == {}
    assert store.clear_legacy() == 1
    assert not old.exists() and not old.parent.exists() and other.exists()


def _writer(store: ResultCache, worker: int) -> None:
    for i in range(200):
        store.put(ResultCache.key(worker=worker, i=i), dict(GOOD, cycles=worker * 1000 + i), worker=worker)
    # SQLite connections must not cross fork(): the child opened its own
    os._exit(0 if store._pid == os.getpid() else 3)


def test_concurrent_writers(tmp_path):
    store = ResultCache(tmp_path)
    store.put("a" * 32, GOOD)  # the parent's connection is open when the children fork
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(store, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    keys = {ResultCache.key(worker=w, i=i): w * 1000 + i for w in range(4) for i in range(200)}
    found = store.get_many(keys)
    assert {k: v["cycles"] for k, v in found.items()} == keys
    assert store.rejected == 0 and rows(store) == 801
    store.put("b" * 32, GOOD)  # the parent's own connection still works after the children wrote
    assert ResultCache(tmp_path).get("b" * 32) == GOOD


def test_full_disk_is_one_line_and_writes_nothing(tmp_path):
    store = ResultCache(tmp_path)
    store.put("a" * 32, GOOD)
    conn = store._connection()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    keys = [ResultCache.key(i=i) for i in range(2000)]
    with pytest.raises(UserError) as err:
        store.put_many([(k, GOOD, {}) for k in keys])
    message = err.value.format_message()
    assert "full" in message and str(store.path) in message and "\n" not in message
    with pytest.raises(UserError, match="full"):
        store.put("b" * 32, GOOD, note="x" * 100_000)
    assert store.get_many(keys + ["b" * 32]) == {}  # all or nothing
    assert store.get("a" * 32) == GOOD


@pytest.mark.parametrize("under", ["file/sub", "file"])
def test_folder_under_a_file_is_one_line(tmp_path, under):
    (tmp_path / "file").write_text("not a folder")
    store = ResultCache(tmp_path / under)
    for call in (lambda: store.get("a" * 32), lambda: store.put("a" * 32, GOOD), store.info, store.clear):
        with pytest.raises(UserError) as err:
            call()
        message = err.value.format_message()
        assert str(tmp_path / under) in message and "\n" not in message


def test_sweep_with_unusable_cache_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    res = CliRunner().invoke(
        main,
        ["sweep", "--models", "opt-350m", "--hw", "edge", "--seq-lens", "128", "--backend", "scalesim"]
        + ["--cache-dir", str(tmp_path / "file" / "c"), "-o", str(tmp_path / "out.csv")],
    )
    assert res.exit_code == 1, res.output
    assert "cannot use cache folder" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_file_that_is_not_a_database_is_moved_aside(tmp_path, capsys):
    (tmp_path / "results.sqlite").write_bytes(b"\x13garbage" * 1000)
    store = ResultCache(tmp_path)
    assert store.get("a" * 32) is None
    (aside,) = tmp_path.glob("results.sqlite.corrupt-*")
    assert aside.read_bytes() == b"\x13garbage" * 1000
    err = capsys.readouterr().err
    assert "not a database" in err and aside.name in err and len(err.strip().splitlines()) == 1
    store.put("a" * 32, GOOD)
    assert ResultCache(tmp_path).get("a" * 32) == GOOD
    assert capsys.readouterr().err == ""


def test_other_sqlite_file_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.execute("CREATE TABLE results(a, b)")
    conn.close()
    with pytest.raises(UserError, match="not an llm1bit result store"):
        ResultCache(tmp_path).get("a" * 32)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cache_info_and_clear(tmp_path):
    store = ResultCache(tmp_path)
    store.put_many(
        [(ResultCache.key(i=i), GOOD, {"backend": "scalesim", "simulator": "2.0.2"}) for i in range(5)]
    )
    store.put(ResultCache.key(i=99), GOOD, backend="analytic")
    res = cli("cache", "info", "--cache-dir", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["path"] == str(tmp_path / "results.sqlite") and info["entries"] == 6 and info["bytes"] > 0
    assert info["by_version"] == [
        {"backend": "scalesim", "simulator": "2.0.2", "entries": 5},
        {"backend": "analytic", "simulator": None, "entries": 1},
    ]
    text = cli("cache", "info", "--cache-dir", tmp_path)
    assert text.exit_code == 0 and str(tmp_path / "results.sqlite") in text.output
    assert "entries  6" in text.output and "scalesim" in text.output and "2.0.2" in text.output
    cleared = cli("cache", "clear", "--cache-dir", tmp_path)
    assert cleared.exit_code == 0 and "removed 6 entries" in cleared.output
    assert rows(store) == 0 and store.get(ResultCache.key(i=1)) is None
    again = json.loads(cli("cache", "info", "--cache-dir", tmp_path, "--json").stdout)
    assert again["entries"] == 0 and again["by_version"] == []


def test_cache_info_of_a_new_folder_creates_nothing(tmp_path):
    res = cli("cache", "info", "--cache-dir", tmp_path / "new")
    assert res.exit_code == 0 and "entries  0" in res.output and not (tmp_path / "new").exists()
    bad = cli("cache", "clear", "--cache-dir", tmp_path / "new" / "x")
    assert bad.exit_code == 0 and "removed 0 entries" in bad.output


def test_sweep_recomputes_a_poisoned_row(tmp_path):
    store_dir = tmp_path / "D"

    def sweep(out):
        res = CliRunner().invoke(
            main,
            ["sweep", "--models", "opt-350m", "--hw", "edge", "--seq-lens", "128", "--backend", "scalesim"]
            + ["--jobs", "1", "--cache-dir", str(store_dir), "-o", str(out)],
        )
        assert res.exit_code == 0, res.output
        return out.read_text()

    first = sweep(tmp_path / "first.csv")
    store = ResultCache(store_dir)
    conn = raw(store)
    stored = conn.execute("SELECT key, payload FROM results ORDER BY key").fetchall()
    conn.close()
    assert stored
    key, good_payload = stored[0]
    poison(store, key, "x1000")
    second = sweep(tmp_path / "second.csv")
    assert second == first
    assert list(csv.DictReader(io.StringIO(second)))  # a real CSV, not two empty ones
    conn = raw(store)
    after = conn.execute("SELECT key, payload FROM results ORDER BY key").fetchall()
    conn.close()
    assert [k for k, _ in after] == [k for k, _ in stored]
    assert (
        json.loads(dict(after)[key])["value"] == json.loads(good_payload)["value"]
    )  # recomputed, stored again
    assert len(store.get_many(k for k, _ in after)) == len(after) and store.rejected == 0
