"""Tables people can read (issue #18, part 5): the default `simulate` table fits the terminal (the COLUMNS of a
pipe included) in scaled units, `--wide` shows every counter in full, and no number is ever cut with `…`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.commands.tables import scaled
from llm1bit.models import CONFIG_DIR


def invoke(columns: int, *args):
    res = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res.stdout


def layers(*args):
    res = CliRunner().invoke(main, ["simulate", "--backend", "analytic", "--json", *map(str, args)])
    return json.loads(res.stdout)["layers"]


def test_piped_table_fits_100_columns_without_a_cut_number():
    """The issue's check, as a user runs it: COLUMNS=100 llm1bit simulate --model opt-6.7b --hw cloud 2>&1 | cat"""
    cmd = f"{sys.executable} -m llm1bit.cli simulate --model opt-6.7b --hw cloud 2>&1 | cat"
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    assert "…" not in proc.stdout
    # scaled units; the projections' row: 2.36 M cycles, 1.07 GB, 31.6 ms, 189 mJ per step
    q_proj = next(line for line in lines if line.startswith("q_proj"))
    assert q_proj.split()[-5:] == ["31.6", "ms", "189", "mJ", "memory"] and "2.36 M" in q_proj


@pytest.mark.parametrize("columns", [100, 80, 60, 30])
def test_moe_table_never_cuts_a_number(columns):
    model = CONFIG_DIR / "deepseek-v2-lite.json"
    out = invoke(columns, "simulate", "--model", model, "--backend", "analytic", "--batch", 16)
    assert "…" not in out
    if columns >= 60:  # the columns a reader needs first fit; the rest is left out, not squeezed
        assert max(len(line) for line in out.splitlines()) <= columns
    rows = [" ".join(line.split()) for line in out.splitlines()]
    for layer in layers("--model", model, "--batch", 16):  # every row's time and energy, whole
        time = scaled(layer["time_s"] * layer["count"], "s")
        energy = scaled(layer["energy_j"] * layer["count"], "J")
        assert any(r.startswith(layer["name"] + " ") and f" {time} {energy}" in r for r in rows), (
            time,
            energy,
        )


def test_wide_shows_every_counter_in_full():
    out = invoke(100, "simulate", "--model", "opt-6.7b", "--backend", "analytic", "--wide")
    assert "…" not in out
    for layer in layers("--model", "opt-6.7b"):
        assert f"{layer['cycles'] * layer['count']:,}" in out
        assert f"{layer['dram_bytes'] * layer['count']:,.0f}" in out
    assert "SRAM acc. x count" in out


@pytest.mark.parametrize("columns", [100, 30])
def test_amdahl_and_models_tables_are_never_cut(columns):
    out = invoke(columns, "amdahl", "--model", "opt-350m", "--backend", "analytic", "--s-partial", "1,2,100")
    assert "…" not in out and "projections sped up" in out and "1.581x" in out
    out = invoke(columns, "models")
    assert "…" not in out and "llama-13b" in out and "13824" in out


def test_scaled_units():
    assert [scaled(2358240), scaled(0.0316, "s"), scaled(4.3e9, "B"), scaled(999.7), scaled(0.9996, "s")] == [
        "2.36 M", "31.6 ms", "4.30 GB", "1.00 k", "1.00 s",
    ]  # fmt: skip
    assert [scaled(12, "B"), scaled(0), scaled(0.25, small=False)] == ["12 B", "0", "0.25"]
