"""The simulation commands, in-process with click's CliRunner and once as a real subprocess."""

import csv
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.models import CONFIG_DIR

CONFIGS = CONFIG_DIR  # the HF configs shipped with the package
LAYER_KEYS = {
    "name",
    "part",
    "kind",
    "M",
    "N",
    "K",
    "count",
    "cycles",
    "sram_ifmap_reads",
    "sram_filter_reads",
    "sram_ofmap_writes",
    "dram_reads",
    "dram_writes",
    "window",
    "dram_ifmap_reads",
    "dram_filter_reads",
    "dram_ofmap_writes",
    "weight_bits",
    "filter_bits",
    "sram_bytes",
    "dram_bytes",
    "time_s",
    "bound",
    "energy_j",
}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def test_simulate_json_schema(tmp_path):
    res = run(
        "simulate", "--model", "opt-350m", "--hw", "edge", "--seq-len", 512, "--json", "--cache-dir", tmp_path
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"model", "hw", "dataflow", "seq_len", "backend", "layers", "totals", "fraction"} <= set(out)
    assert (out["model"], out["hw"], out["dataflow"], out["seq_len"], out["backend"]) == (
        "opt-350m",
        "edge",
        "os",
        512,
        "scalesim",
    )
    assert all(set(layer) == LAYER_KEYS for layer in out["layers"])
    free = out["totals"]["matmul_free"]
    total_cycles = free["cycles"] + out["totals"]["matmul"]["cycles"]
    assert out["fraction"]["cycles"] == pytest.approx(free["cycles"] / total_cycles)
    assert free["cycles"] == sum(
        x["cycles"] * x["count"] for x in out["layers"] if x["part"] == "matmul_free"
    )


def test_simulate_table_and_hf_config(tmp_path):
    res = run(
        "simulate",
        "--model",
        CONFIGS / "llama-3-8b.json",
        "--hw",
        "cloud",
        "--seq-len",
        128,
        "--cache-dir",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert "MatMul-free fraction" in res.output and "gate_proj" in res.output


def test_sweep_csv(tmp_path):
    out = tmp_path / "sweep.csv"
    res = run(
        "sweep",
        "--models",
        "opt-350m,gpt-125m",
        "--hw",
        "cloud,edge",
        "--seq-lens",
        "128,256",
        "--dataflows",
        "os,ws",
        "--backend",
        "scalesim",
        "--jobs",
        2,
        "--cache-dir",
        tmp_path / "c",
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 2 * 2 * 2 * 2
    assert {
        "model",
        "hw",
        "dataflow",
        "seq_len",
        "backend",
        "matmul_free_cycles",
        "matmul_cycles",
        "matmul_free_accesses",
        "matmul_accesses",
        "frac_cycles",
        "frac_memory",
    } <= set(rows[0])
    assert {r["dataflow"] for r in rows} == {"os", "ws"}


def test_topology_csv_is_scalesim_format(tmp_path):
    out = tmp_path / "t.csv"
    assert run("topology", "--model", "opt-6.7b", "--seq-len", 2048, "-o", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "Layer, M, N, K,"
    assert "ffn_in, 1, 16384, 4096," in lines and "attn_qk, 1, 2048, 128," in lines
    assert all(line.endswith(",") for line in lines)


def test_models_lists_all():
    res = run("models", "--json")
    assert len(json.loads(res.stdout)) == 13


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "--model", "opt-6.7"], "did you mean opt-6.7b"),
        (["simulate", "--model", "opt-350m", "--hw", "tpu"], "unknown hardware 'tpu'"),
        (["simulate", "--model", "opt-350m", "--seq-len", "0"], "--seq-len: 0 must be a positive integer"),
        (["simulate", "--model", "opt-350m", "--seq-len", "1.5"], "'1.5' is not an integer"),
        (["simulate", "--model", "no/such/config.json"], "does not exist"),
        (
            ["sweep", "--models", "opt-350m", "--seq-lens", "128,-1", "-o", "x.csv"],
            "-1 must be a positive integer",
        ),
        (["sweep", "--models", "opt-350m", "--dataflows", "os,xs", "-o", "x.csv"], "unknown dataflow 'xs'"),
        (
            ["sweep", "--models", "opt-350m", "--seq-lens", "128", "-o", "/no/such/dir/x.csv"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_malformed_inputs_from_files(tmp_path):
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text("[architecture_presets]\nArrayHeight: x\n[run_presets]\nInterfaceBandwidth: CALC\n")
    res = CliRunner().invoke(main, ["simulate", "--model", "opt-350m", "--hw", str(bad_cfg)])
    assert res.exit_code == 1 and "ArrayHeight = 'x' is not an integer" in res.output
    bad_json = tmp_path / "config.json"
    bad_json.write_text(
        '{"model_type": "opt", "hidden_size": 100, "num_attention_heads": 3, "ffn_dim": 4, '
        '"num_hidden_layers": 1}'
    )
    res = CliRunner().invoke(main, ["simulate", "--model", str(tmp_path)])
    assert res.exit_code == 1 and "3 heads do not divide d_model = 100" in res.output


def test_unwritable_output_leaves_nothing(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = CliRunner().invoke(main, ["topology", "--model", "opt-350m", "-o", str(locked / "t.csv")])
        if res.exit_code == 0:  # running as root: permissions are not enforced
            pytest.skip("permissions not enforced for this user")
        assert "not writable" in res.output and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_real_subprocess(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm1bit.cli",
            "simulate",
            "--model",
            "gpt-125m",
            "--hw",
            "edge",
            "--seq-len",
            "128",
            "--json",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert 0 < json.loads(proc.stdout)["fraction"]["cycles"] < 1
    bad = subprocess.run(
        [sys.executable, "-m", "llm1bit.cli", "simulate", "--model", "gpt-9"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "unknown model 'gpt-9'" in bad.stderr
