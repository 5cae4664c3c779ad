"""`llm1bit explore`: space files, expansion, the store, both executors, outputs and interrupts."""

import csv
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit import bulk, explore
from llm1bit.cache import ResultCache
from llm1bit.cli import main
from llm1bit.engine import check_ray_address
from llm1bit.errors import UserError
from llm1bit.explore import load_space, pareto_front
from llm1bit.models import CONFIG_DIR
from llm1bit.sweep import CSV_COLUMNS, csv_row, run_points, to_csv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "explore-small.toml"
HAS_RAY = importlib.util.find_spec("ray") is not None

TINY = """
backend = "{backend}"
models = ["gpt-125m"]
seq_len = {{from = 128, to = 512, times = 2}}
weight_bits = [16, 1.58]
[hardware]
files = ["edge"]
rows = [8, 16]
cols = "rows"
ifmap_sram_kb = [64]
filter_sram_kb = [64, 4096]
ofmap_sram_kb = [64]
dataflow = ["os"]
dram_gbps = [10, 20]
[constraints]
max_total_sram_kb = 1024
"""


def space(tmp_path, backend="analytic", text=TINY):
    path = tmp_path / "space.toml"
    path.write_text(text.format(backend=backend))
    return path


def test_space_expands_ranges_constraints_and_files(tmp_path):
    s = load_space(space(tmp_path))
    assert s.seq_lens == (128, 256, 512)
    # the constraint (1024 kB of SRAM) cuts edge.cfg (8 MB) and the grid designs with a 4096 kB filter SRAM
    names = sorted({h.name for h in s.hardware})
    assert names == ["16x16-i64-f64-o64", "8x8-i64-f64-o64"]
    assert len(s.points()) == 1 * 2 * 2 * 3 * 2  # models x designs x bandwidths x lengths x widths


def test_files_and_grid_together(tmp_path):
    text = TINY.replace("[constraints]\nmax_total_sram_kb = 1024\n", "")
    s = load_space(space(tmp_path, text=text))
    assert {h.name for h in s.hardware} >= {"edge", "8x8-i64-f4096-o64"} and len(s.hardware) == 5 * 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("seq_len", "seq_lens"), "unknown key 'seq_lens'"),
        (lambda t: t.replace('backend = "analytic"', 'backend = "fast"'), "backend 'fast'"),
        (
            lambda t: t.replace("rows = [8, 16]", "rows = [8, -1]"),
            "hardware.rows value -1 must be a positive integer",
        ),
        (lambda t: t.replace("times = 2", "times = 1"), "the range must grow"),
        (lambda t: t.replace('dataflow = ["os"]', 'dataflow = ["xs"]'), "hardware.dataflow 'xs'"),
        (
            lambda t: t.replace("max_total_sram_kb = 1024", "max_total_sram_kb = 1"),
            "constraints leave no hardware",
        ),
        (lambda t: t + "\n[[broken", "malformed space file"),
    ],
)
def test_bad_space_files(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(TINY.format(backend="analytic")))
    with pytest.raises(UserError, match=re.escape(message)):
        load_space(path)


def test_pareto_front():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 6)]
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([]) == []


def test_pareto_front_equals_the_sorted_scan():
    """The vectorised front is the scan it replaced, ties (equal x, equal points) included."""
    import random

    rng = random.Random(0)
    pts = [(rng.randint(0, 30), rng.randint(0, 30)) for _ in range(2000)]
    order, front, best = sorted(range(len(pts)), key=lambda i: pts[i]), [], float("inf")
    for i in order:
        if pts[i][1] < best:
            front.append(i)
            best = pts[i][1]
    assert pareto_front(pts) == front


def test_explore_local_rerun_computes_nothing(tmp_path):
    path, out, store = space(tmp_path, "scalesim"), tmp_path / "o.csv", tmp_path / "store"
    args = ["explore", str(path), "-o", str(out), "--cache-dir", str(store), "--jobs", "2"]
    args += ["--plot", str(tmp_path / "p.png")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 24 and {r["hw"] for r in rows} == {"8x8-i64-f64-o64", "16x16-i64-f64-o64"}
    assert not {"executor", "host", "seconds"} & set(rows[0])  # nothing about how it ran
    assert (tmp_path / "p.png").stat().st_size > 10_000
    simulated = int(re.search(r"(\d+) simulated", first.stderr)[1])
    before = out.read_text()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and f"SCALE-Sim runs: {simulated} from the store, 0 simulated" in again.stderr
    assert out.read_text() == before


def test_parquet_output(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "o.parquet"
    res = CliRunner().invoke(main, ["explore", str(space(tmp_path)), "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.num_rows == 24 and table.column("tokens_per_s").type == "double"


def test_ray_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = CliRunner().invoke(main, ["explore", str(space(tmp_path, "scalesim")), "--executor", "ray",
                                    "--cache-dir", str(tmp_path / "s"), "-o", str(tmp_path / "o.csv")])  # fmt: skip
    assert res.exit_code == 1 and "needs Ray: pip install 'llm1bit[ray]'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def _cmd(*args):
    return [sys.executable, "-m", "llm1bit.cli", "explore", *map(str, args)]


@pytest.mark.skipif(not HAS_RAY, reason="Ray is an optional extra (pip install 'llm1bit[ray]')")
def test_ray_equals_local_and_an_interrupted_ray_run_resumes(tmp_path):
    local, ray_out = tmp_path / "local.csv", tmp_path / "ray.csv"
    subprocess.run(
        _cmd(EXAMPLE, "-o", local, "--cache-dir", tmp_path / "a"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    store = tmp_path / "b"
    proc = subprocess.Popen(_cmd(EXAMPLE, "-o", ray_out, "--cache-dir", store, "--executor", "ray", "--jobs", 2),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (store / "results.sqlite").exists() or ResultCache(store).info()["entries"] < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    kept = int(re.search(r"interrupted: kept (\d+) of", stderr)[1])
    assert kept >= 5 and ResultCache(store).info()["entries"] == kept and not ray_out.exists()
    again = subprocess.run(_cmd(EXAMPLE, "-o", ray_out, "--cache-dir", store, "--executor", "ray", "--jobs", 2),
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"SCALE-Sim runs: {kept} from the store" in again.stderr
    assert ray_out.read_text() == local.read_text()  # row for row, whichever executor ran them


# MoE (fractional expert counts), sliding windows, latent attention and a plain GPT; both phases, odd sizes,
# tiny SRAMs (refetches, mid-run drains), every dataflow, two bandwidths, several widths and formats.
VARIED = f"""
backend = "analytic"
models = ["gpt-125m", "{CONFIG_DIR / "mixtral-8x7b-v0.1.json"}", "{CONFIG_DIR / "gemma-2-9b-it.json"}",
          "{CONFIG_DIR / "deepseek-v2-lite.json"}"]
seq_len = [100, 2048]
phase = ["decode", "prefill"]
batch = [1, 3]
weight_bits = [16, 4, 3, 1.58, 1]
act_bits = [16, 8]
[hardware]
files = ["edge"]
rows = [8, 64]
cols = [16]
ifmap_sram_kb = [2, 512]
filter_sram_kb = [4]
ofmap_sram_kb = [1, 256]
dataflow = ["os", "ws", "is"]
dram_gbps = [34, 100]
"""  # 4 models x 50 hardware entries x 8 workloads x 10 pricings = 16,000 points


def _old_parquet(path, splits, row_group_size=None):
    """The table as explore wrote it before it streamed: every row built, then one pq.write_table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [csv_row(s) for s in splits]
    table = pa.table({c: [bulk.number_or_text(r[c]) for r in rows] for c in CSV_COLUMNS})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_bulk_rows_are_byte_for_byte_those_of_run_points(tmp_path, monkeypatch):
    """The streamed, vectorised table equals run_points + csv_row point by point (small blocks, so blocks
    start inside a model's hardware list and span clocks), and so does its Parquet file (small row groups)."""
    monkeypatch.setattr(bulk, "ROWS_PER_BLOCK", 700)
    path = space(tmp_path, text=VARIED)
    s = load_space(path)
    assert s.size == 16_000
    splits = run_points(s.points(), "analytic")
    out = tmp_path / "o.csv"
    res = CliRunner().invoke(main, ["explore", str(path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == to_csv(splits)
    assert {r["matmul_free_cycles"].endswith(".0") for r in csv.DictReader(out.open())} == {
        True,
        False,
    }  # MoE
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(explore, "PARQUET_ROW_GROUP", 5000)
    res = CliRunner().invoke(main, ["explore", str(path), "-o", str(tmp_path / "o.parquet")])
    assert res.exit_code == 0, res.output
    _old_parquet(tmp_path / "old.parquet", splits, row_group_size=5000)
    assert (tmp_path / "o.parquet").read_bytes() == (tmp_path / "old.parquet").read_bytes()


def test_scalesim_rows_equal_run_points_with_the_closed_form_where_uncovered(tmp_path):
    text = TINY.replace(
        "seq_len = {{from = 128, to = 512, times = 2}}", 'seq_len = [128]\nphase = ["decode", "prefill"]'
    )
    text = text.replace(
        'dataflow = ["os"]', 'dataflow = ["os", "ws"]'
    )  # prefill and ws overflow the ofmap SRAM
    path, out, store = space(tmp_path, "scalesim", text), tmp_path / "o.csv", tmp_path / "store"
    res = CliRunner().invoke(main, ["explore", str(path), "-o", str(out), "--cache-dir", str(store)])
    assert res.exit_code == 0, res.output
    splits = run_points(load_space(path).points(), "scalesim", cache=ResultCache(store))
    assert {s.backend for s in splits} == {"scalesim", "analytic"}
    assert out.read_text() == to_csv(splits)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")
def test_memory_does_not_grow_with_the_space(tmp_path):
    """A 139,776-point space in a fresh process: the table streams (before: 1.1 GB resident at this size)."""
    text = """
backend = "analytic"
models = ["paper"]
seq_len = [256, 512, 1024, 2048]
batch = [1, 4, 16, 64]
weight_bits = [16, 8, 4, 3, 2, 1.58, 1]
[hardware]
rows = [32, 64, 128, 256]
cols = "rows"
ifmap_sram_kb = [1024, 4096]
filter_sram_kb = [2048, 8192]
ofmap_sram_kb = [2048]
dataflow = ["os", "ws", "is"]
freq_mhz = [700]
dram_gbps = [34, 68]
"""
    path, out = space(tmp_path, text=text), tmp_path / "o.csv"
    # VmHWM: this process's peak resident memory (ru_maxrss would carry over pytest's own across exec)
    code = (
        "from pathlib import Path\nfrom llm1bit.cli import main\n"
        f"try:\n    main(['explore', {str(path)!r}, '-o', {str(out)!r}])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(next(x for x in Path('/proc/self/status').read_text().splitlines() if x.startswith('VmHWM')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 139776 rows" in proc.stderr
    assert int(proc.stdout.split()[-2]) < 300_000  # kB: ~75 MB here
    assert sum(1 for _ in out.open()) == 139_777


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not HAS_RAY, reason="Ray is an optional extra (pip install 'llm1bit[ray]')")
@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_unreachable_ray_address_is_one_line_within_seconds(tmp_path, form):
    address = form.format(port=_free_port())
    out = tmp_path / "o.csv"
    start = time.monotonic()
    proc = subprocess.run(_cmd(space(tmp_path, "scalesim"), "-o", out, "--cache-dir", tmp_path / "s",
                               "--executor", "ray", "--ray-address", address),
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert time.monotonic() - start < 30
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"Error: cannot reach a Ray cluster at {address}: connection refused; "
        "start one there (`ray start --head`) or check the address and port"
    )
    assert not out.exists()


def test_ray_address_forms():
    check_ray_address("auto")  # left to Ray: nothing to probe
    with pytest.raises(UserError, match="'x' is not a port"):
        check_ray_address("ray://head:x")
    with pytest.raises(UserError, match="connection refused"):
        check_ray_address(f"ray://[::1]:{_free_port()}")


def test_a_rerun_with_everything_stored_needs_no_ray_runtime(tmp_path):
    """Nothing left to simulate: Ray is neither started nor reached (the dead address is never tried)."""
    path, store = space(tmp_path, "scalesim"), tmp_path / "store"
    first = CliRunner().invoke(
        main, ["explore", str(path), "-o", str(tmp_path / "a.csv"), "--cache-dir", str(store)]
    )
    assert first.exit_code == 0, first.output
    args = ["--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}"]
    again = CliRunner().invoke(
        main, ["explore", str(path), "-o", str(tmp_path / "b.csv"), "--cache-dir", str(store), *args]
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
