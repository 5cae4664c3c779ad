"""`llm1bit explore`: space files, expansion, the store, both executors, outputs and interrupts."""

import csv
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.cache import ResultCache
from llm1bit.cli import main
from llm1bit.errors import UserError
from llm1bit.explore import load_space, pareto_front

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
