"""Bytes, time and energy on top of the counters, recomputed by hand from the reported words and the unit table."""

import json

import pytest
from click.testing import CliRunner

from llm1bit.amdahl import overall_speedup
from llm1bit.cli import main
from llm1bit.costs import Pricing
from llm1bit.energy import TABLE_DIR, load_energy_table
from llm1bit.hardware import load_hardware
from llm1bit.models import PAPER_MODELS, resolve_models
from llm1bit.precision import Precision, bits_moved, default_format
from llm1bit.sweep import Point, points, run_points

HOROWITZ = json.loads((TABLE_DIR / "horowitz-45nm.json").read_text())


def simulate_json(*args):
    res = CliRunner().invoke(main, ["simulate", "--backend", "analytic", "--json", *map(str, args)])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_16_bits_leave_the_study_unchanged_and_bytes_are_two_per_word():
    pts = points(
        resolve_models("opt"), [load_hardware("cloud"), load_hardware("edge")], [128, 2048, 4096], [None]
    )
    plain = run_points(pts, "analytic")
    ternary = run_points(points(resolve_models("opt"), [load_hardware("cloud"), load_hardware("edge")],
                                [128, 2048, 4096], [None], pricings=[Pricing(Precision.build(1.58))]), "analytic")  # fmt: skip
    for a, b in zip(plain, ternary):  # words, cycles and their fractions do not depend on precision
        assert (a.totals, a.frac_cycles, a.frac_memory) == (b.totals, b.frac_cycles, b.frac_memory)
    for split in plain:
        for layer in split.layers:
            c, cost = layer.counters, layer.cost
            assert cost.sram_bytes == 2 * c.memory_accesses
            assert cost.dram_bytes == 2 * (c.dram_reads + c.dram_writes)
        assert split.frac_dram_bytes == pytest.approx(split.frac_dram, rel=1e-12)


def test_default_formats_and_bits_moved():
    assert [default_format(b) for b in (16, 8, 4, 3, 2, 1.58, 1, 2.2)] == [
        "fp", "int", "int", "bcq-lat", "bcq-lat", "ternary", "binary", "raw",
    ]  # fmt: skip
    assert bits_moved("int", 4, 4096, 4096) == 4 + 32 / 128
    assert bits_moved("bcq-lat", 3, 4096, 4096) == 3 + 3 * 3 * 8 / 128  # 3.5625
    assert bits_moved("ternary", 1.58, 1000, 1000) == 1.6 + 16 / 1e6
    assert bits_moved("bcq-acc", 3, 4096, 11008) == 3 + (3 * 3 * 8 + 32) / 4096


def test_bytes_time_energy_recomputed_by_hand():
    """opt-350m on edge, l = 128: 3-bit bcq-lat weights, 8-bit activations, 4-bit KV cache."""
    out = simulate_json(
        "--model",
        "opt-350m",
        "--hw",
        "edge",
        "--seq-len",
        128,
        "--weight-bits",
        3,
        "--act-bits",
        8,
        "--kv-bits",
        4,
    )
    assert out["config"]["precision"] == {
        "weight_bits": 3.0,
        "act_bits": 8.0,
        "kv_bits": 4.0,
        "weight_format": "bcq-lat",
    }
    f_hz, bw = 921.6e6, 25.6e9  # edge.cfg [llm1bit]
    assert (out["config"]["hardware"]["freq_mhz"], out["config"]["hardware"]["dram_gbps"]) == (921.6, 25.6)
    ops, sram_pj, dram_pj = HOROWITZ["ops"], HOROWITZ["sram_per_byte"], HOROWITZ["dram_per_byte"]
    totals = {"matmul_free": [0.0, 0.0, 0.0], "matmul": [0.0, 0.0, 0.0]}  # dram bytes, time, energy
    for layer in out["layers"]:
        m, n, k = layer["M"], layer["N"], layer["K"]
        if layer["part"] == "matmul_free":
            fbits = 3.5625  # 3 code bits + 3 scales x 3 one-byte terms per 128 weights
            # per plane (3), per token, per output and 8-input slab: one LUT query, 3 shifts + 3 int32 adds;
            # LUTs: 8 int8 mults + 263 int32 adds per token and 8 inputs
            slabs = -(-k // 8)
            pj = 3 * m * n * slabs * (ops["lut_query"] + 3 * ops["int8_shift"] + 3 * ops["int32_add"])
            pj += m * slabs * (8 * ops["int8_mult"] + 263 * ops["int32_add"])
        else:
            fbits = 4
            pj = m * n * k * (ops["int8_mult"] + ops["int32_add"])  # MACs at max(8, 4) bits: int8
        sram = (
            layer["sram_ifmap_reads"] * 8
            + layer["sram_filter_reads"] * fbits
            + layer["sram_ofmap_writes"] * 8
        ) / 8
        dram = (
            layer["dram_ifmap_reads"] * 8
            + layer["dram_filter_reads"] * fbits
            + layer["dram_ofmap_writes"] * 8
        ) / 8
        time = max(layer["cycles"] / f_hz, dram / bw)
        energy = (pj + sram * sram_pj + dram * dram_pj) * 1e-12
        assert layer["sram_bytes"] == pytest.approx(sram, rel=1e-12)
        assert layer["dram_bytes"] == pytest.approx(dram, rel=1e-12)
        assert layer["time_s"] == pytest.approx(time, rel=1e-12)
        assert layer["bound"] == ("memory" if dram / bw > layer["cycles"] / f_hz else "compute")
        assert layer["energy_j"] == pytest.approx(energy, rel=1e-12)
        for i, v in enumerate((dram, time, energy)):
            totals[layer["part"]][i] += v * layer["count"]
    free, mm = totals["matmul_free"], totals["matmul"]
    for i, name in enumerate(("dram_bytes", "time", "energy")):
        assert out["fraction"][name] == pytest.approx(free[i] / (free[i] + mm[i]), rel=1e-12)
    assert out["totals"]["matmul_free"]["time_s"] == pytest.approx(free[1], rel=1e-12)
    assert out["tokens_per_s"] == pytest.approx(1 / (free[1] + mm[1]), rel=1e-12)


def test_decode_at_batch_1_is_bandwidth_over_bytes_per_token():
    """OPT-6.7B on cloud (8 MB of weight SRAM vs 13 GB of weights): tokens/s ~ bandwidth / bytes per token."""
    model, bw = PAPER_MODELS["opt-6.7b"], 34e9
    for bits, weight_bits_moved in ((16, 16), (1.58, 1.6)):
        (split,) = run_points(
            [Point(model, load_hardware("cloud"), 2048, pricing=Pricing(Precision.build(bits)))], "analytic"
        )
        weights = 32 * (4 * 4096 * 4096 + 2 * 4096 * 16384)  # q, k, v, out + the two FFN matrices, 32 blocks
        kv_cache = 32 * 2 * 4096 * 2048 * 2  # K and V of 32 layers, 16-bit
        per_token = weights * weight_bits_moved / 8 + kv_cache
        assert split.tokens_per_s == pytest.approx(bw / per_token, rel=0.10)
    assert 13 < split.tokens_per_s < 15  # 1.58 bits: the cache, not the weights, now bounds decode


def test_amdahl_derived_point_satisfies_the_identity():
    res = CliRunner().invoke(
        main,
        [
            "amdahl",
            "--model",
            "opt-6.7b",
            "--hw",
            "edge",
            "--weight-bits",
            "3",
            "--backend",
            "analytic",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    d = out["derived"]
    assert set(d) >= {"s_partial_time", "s_total_time", "s_partial_energy", "s_total_energy"}
    assert d["s_partial_time"] > 1 and d["s_partial_energy"] > 1
    assert d["s_total_time"] == pytest.approx(
        overall_speedup(d["fraction_time_16bit"], d["s_partial_time"]), rel=1e-12
    )
    assert d["s_total_energy"] == pytest.approx(
        overall_speedup(d["fraction_energy_16bit"], d["s_partial_energy"]), rel=1e-12
    )
    assert out["metric"] == "time" and out["fraction"] == d["fraction_time_16bit"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weight-bits", "0"], "--weight-bits 0.0: bits must be > 0 and <= 32"),
        (["--weight-bits", "33"], "bits must be > 0 and <= 32"),
        (["--act-bits", "-4"], "--act-bits -4.0: bits must be > 0"),
        (["--weight-bits", "x"], "'x' is not a number"),
        (
            ["--weight-bits", "3", "--weight-format", "ternary"],
            "weight format ternary cannot hold 3-bit weights",
        ),
        (["--weight-format", "nf4"], "unknown weight format 'nf4'"),
        (["--dram-gbps", "-1"], "--dram-gbps -1 must be a positive number"),
        (["--freq-mhz", "0"], "--freq-mhz 0 must be a positive number"),
        (["--energy-table", "nope.json"], "energy table nope.json does not exist"),
    ],
)
def test_bad_cost_input_is_one_line(args, message):
    res = CliRunner().invoke(main, ["simulate", "--model", "opt-350m", "--backend", "analytic", *args])
    assert res.exit_code != 0 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "table, message",
    [
        ("{", "not valid JSON"),
        ('{"ops": {}}', "missing sram_per_byte, dram_per_byte, ops.fp32_mult"),
        (json.dumps({**HOROWITZ, "dram_per_byte": -1}), "dram_per_byte = -1 must be a number >= 0"),
        (json.dumps({**HOROWITZ, "ops": {**HOROWITZ["ops"], "fp8_mult": 1}}), "unknown operation 'fp8_mult'"),
        (json.dumps({**HOROWITZ, "unit": "nJ"}), "unit 'nJ'"),
    ],
)
def test_malformed_energy_table(tmp_path, table, message):
    path = tmp_path / "table.json"
    path.write_text(table)
    res = CliRunner().invoke(
        main, ["simulate", "--model", "opt-350m", "--backend", "analytic", "--energy-table", str(path)]
    )
    assert res.exit_code == 1 and message in res.output and len(res.output.strip().splitlines()) == 1


def test_user_energy_table_and_its_hash(tmp_path):
    path = tmp_path / "doubled.json"
    path.write_text(
        json.dumps({**HOROWITZ, "name": "doubled", "dram_per_byte": 2 * HOROWITZ["dram_per_byte"]})
    )
    base = simulate_json("--model", "opt-350m", "--hw", "edge")
    doubled = simulate_json("--model", "opt-350m", "--hw", "edge", "--energy-table", path)
    assert doubled["config"]["energy_table"]["name"] == str(path)  # labelled by its path, not its "name"
    assert doubled["config"]["energy_table"]["sha256"] != base["config"]["energy_table"]["sha256"]
    for part in ("matmul", "matmul_free"):
        b, d = base["totals"][part]["energy_breakdown_j"], doubled["totals"][part]["energy_breakdown_j"]
        assert (
            d["dram"] == pytest.approx(2 * b["dram"])
            and d["compute"] == b["compute"]
            and d["sram"] == b["sram"]
        )


def test_sweep_rows_carry_precisions_and_costs(tmp_path):
    out = tmp_path / "o.csv"
    res = CliRunner().invoke(
        main,
        ["sweep", "--models", "opt-350m", "--hw", "cloud", "--seq-lens", "128", "--backend", "analytic",
         "--weight-bits", "16,4,1.58", "--kv-bits", "8", "-o", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [(r["weight_bits"], r["weight_format"], r["kv_bits"]) for r in rows] == [
        ("16.0", "fp", "8.0"), ("4.0", "int", "8.0"), ("1.58", "ternary", "8.0"),
    ]  # fmt: skip
    cols = {"matmul_free_dram_bytes", "matmul_dram_bytes", "time_s", "tokens_per_s", "energy_j"}
    cols |= {"frac_time", "frac_energy", "frac_dram_bytes", "freq_mhz", "dram_gbps", "energy_table_sha256"}
    assert cols <= set(rows[0])
    speeds = [float(r["tokens_per_s"]) for r in rows]
    assert speeds == sorted(speeds) and speeds[0] < speeds[-1]
    assert len(load_energy_table().sha256) == 16
