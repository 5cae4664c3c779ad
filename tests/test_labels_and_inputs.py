"""Every row says what decided its numbers; no two different points share a label; small input traps refused."""

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.hardware import HW_DIR
from llm1bit.models import CONFIG_DIR


def invoke(*args, cwd=None, monkeypatch=None):
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return CliRunner().invoke(main, [str(a) for a in args])


def rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_builtin_name_and_local_folder_get_distinct_labels(tmp_path, monkeypatch):
    folder = tmp_path / "llama-7b"
    folder.mkdir()
    shutil.copy(CONFIG_DIR / "llama-2-7b.json", folder / "config.json")
    out = tmp_path / "o.csv"
    res = invoke(
        "sweep", "--models", "llama-7b,./llama-7b", "--hw", "cloud", "--seq-lens", "2048",
        "--backend", "analytic", "-o", out, cwd=tmp_path, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "the built-in paper model is used; a local llama-7b exists too (pass ./llama-7b" in res.stderr
    got = rows(out)
    assert [(r["model"], r["model_source"]) for r in got] == [
        ("llama-7b", "paper"),
        ("./llama-7b", str((folder / "config.json").resolve())),
    ]
    assert got[0]["matmul_free_cycles"] != got[1]["matmul_free_cycles"]  # different models, different labels


def test_hw_files_are_labelled_by_path_not_run_name(tmp_path, monkeypatch):
    tiny = tmp_path / "tiny.cfg"
    tiny.write_text((HW_DIR / "edge.cfg").read_text().replace("ArrayHeight:    32", "ArrayHeight:    16"))
    out = tmp_path / "o.csv"
    res = invoke(
        "sweep", "--models", "opt-350m", "--hw", "edge,tiny.cfg,edge,./tiny.cfg", "--seq-lens", "128,128",
        "--backend", "analytic", "-o", out, cwd=tmp_path, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = rows(out)
    assert [r["hw"] for r in got] == ["edge", "tiny.cfg"]  # repeats (by name or by file) dropped
    assert [r["array_rows"] for r in got] == ["32", "16"]
    assert got[1]["hw_file"] == str(tiny.resolve()) and got[0]["hw_file"] == str(HW_DIR / "edge.cfg")
    assert got[0]["hw_fingerprint"] != got[1]["hw_fingerprint"]
    for r in got:
        assert r["scalesim_version"] == "2.0.2" and r["backend"] == "analytic"
        assert {"architecture", "ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb", "array_cols"} <= set(r)
    labels = [(r["model"], r["hw"], r["dataflow"], r["seq_len"]) for r in got]
    assert len(set(labels)) == len(labels)


def test_repeated_items_give_one_row(tmp_path):
    out = tmp_path / "o.csv"
    res = invoke(
        "sweep", "--models", "opt-350m,opt-350m,opt", "--hw", "cloud", "--seq-lens", "128,256,128",
        "--dataflows", "os,os", "--backend", "analytic", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = [(r["model"], r["seq_len"]) for r in rows(out)]
    assert len(got) == len(set(got)) == 7 * 2


def test_json_config_carries_the_hardware(tmp_path):
    res = invoke("simulate", "--model", "opt-350m", "--hw", "edge", "--backend", "analytic", "--json")
    config = json.loads(res.stdout)["config"]
    assert config["hardware"] == {
        "file": str(HW_DIR / "edge.cfg"),
        "rows": 32,
        "cols": 32,
        "ifmap_sram_kb": 2048,
        "filter_sram_kb": 4096,
        "ofmap_sram_kb": 2048,
        "dataflow": "os",
        "fingerprint": config["hardware"]["fingerprint"],
        "freq_mhz": 921.6,
        "dram_gbps": 25.6,
    }
    assert config["backend"] == "analytic" and config["scalesim"] == "2.0.2"


@pytest.mark.parametrize(
    "args, message",
    [
        (["sweep", "--hw", "", "-o", "x.csv"], "no hardware given"),
        (["sweep", "--hw", " , ", "-o", "x.csv"], "no hardware given"),
        (["simulate", "--model", "opt-350m", "--hw", "clod"], "did you mean cloud"),
        (["amdahl", "--model", "opt-350m", "--s-range", "1:100:1000000"], "at most 1000 are allowed"),
        (
            ["simulate", "--model", "opt-350m", "--hw", "no/such.cfg"],
            "hardware config no/such.cfg does not exist",
        ),
    ],
)
def test_small_traps_are_one_line_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_uncovered_points_fall_back_to_analytic_and_strict_refuses(tmp_path):
    # IS FFNs of opt-66b on the edge TPU outgrow the exact composition; opt-350m's do not.
    out = tmp_path / "o.csv"
    common = [
        "sweep",
        "--models",
        "opt-350m,opt-66b",
        "--hw",
        "edge",
        "--seq-lens",
        "128",
        "--dataflows",
        "is",
    ]
    common += ["--backend", "scalesim", "--jobs", "2", "--cache-dir", tmp_path / "c"]
    res = invoke(*common, "-o", out)
    assert res.exit_code == 0, res.output
    assert [(r["model"], r["backend"]) for r in rows(out)] == [
        ("opt-350m", "scalesim"),
        ("opt-66b", "analytic"),
    ]
    assert "1 points by the analytic closed form" in res.stderr
    strict_out = tmp_path / "strict.csv"
    res = invoke(*common, "--strict", "-o", strict_out)
    assert res.exit_code == 1 and not strict_out.exists()
    listing = tmp_path / "strict.csv.uncovered.csv"
    assert (
        f"--strict: 1 of 2 points are outside the exact composition of the real SCALE-Sim (listed in {listing})"
        in (res.output)
    )
    assert rows(listing) == [
        {
            "model": "opt-66b",
            "hw": "edge",
            "dataflow": "is",
            "seq_len": "128",
            "phase": "decode",
            "batch": "1",
        }
    ]


def test_no_stray_output_without_a_terminal(tmp_path):
    cmd = [sys.executable, "-m", "llm1bit.cli", "simulate", "--model", "opt-350m", "--hw", "edge"]
    cmd += ["--seq-len", "128", "--json", "--cache-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""  # no progress bar, not even a lone newline
    out = tmp_path / "o.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "llm1bit.cli", *"sweep --models opt-350m --hw edge --seq-lens 128".split(),
         "--cache-dir", str(tmp_path), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stderr == f"wrote 1 rows to {out} (SCALE-Sim runs: 7 from the store, 0 simulated)\n"
