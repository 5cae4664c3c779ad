"""Every number is what its label says, or the input is refused in one line (issue #18, part 3).

A comma list is taken wherever it is offered (one result per value; `--json` an array) or refused; an
empty value is refused, never read as the default; a user's file is labelled by its path; keys given twice
or unknown to a format are refused; group overheads count whole groups; fractional widths say their format."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.energy import TABLE_DIR
from llm1bit.hardware import HW_DIR
from llm1bit.precision import bits_moved

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STORIES = SHARED_DATA / "models" / "stories260K"
HOROWITZ = json.loads((TABLE_DIR / "horowitz-45nm.json").read_text())
GEMMA3 = Path(__file__).resolve().parent / "hf_configs" / "gemma-3-4b-it.json"


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def simulate_json(*args):
    res = invoke("simulate", "--backend", "analytic", "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def one_line_error(res, *words):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    for word in words:
        assert word in res.output, res.output


# --- lists: one result per value, or a one-line refusal ---------------------------------------------


def test_sweep_batch_list_gives_a_row_per_batch(tmp_path):
    out = tmp_path / "o.csv"
    res = invoke("sweep", "--models", "opt-350m", "--hw", "cloud", "--seq-lens", "128", "--batch", "1,16",
                 "--act-bits", "16,8", "--backend", "analytic", "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["batch"], r["act_bits"]) for r in rows] == [
        ("1", "16.0"),
        ("1", "8.0"),
        ("16", "16.0"),
        ("16", "8.0"),
    ]
    assert len({r["tokens_per_s"] for r in rows}) == 4


def test_simulate_seq_len_list_gives_one_object_per_length():
    out = simulate_json("--model", "opt-350m", "--seq-len", "128,4096")
    assert isinstance(out, list) and [o["seq_len"] for o in out] == [128, 4096]
    single = simulate_json("--model", "opt-350m", "--seq-len", "4096")
    assert out[1] == single  # each object is what the single run prints


def test_simulate_weight_bits_list_is_not_a_traceback():
    out = simulate_json("--model", "opt-350m", "--weight-bits", "16,8", "--kv-bits", "16,4")
    assert [(o["config"]["precision"]["weight_bits"], o["config"]["precision"]["kv_bits"]) for o in out] == [
        (16.0, 16.0), (16.0, 4.0), (8.0, 16.0), (8.0, 4.0),
    ]  # fmt: skip
    assert [o["config"]["precision"]["weight_format"] for o in out] == ["fp", "fp", "int", "int"]


def test_simulate_lists_of_models_hardware_and_batches():
    out = simulate_json(
        "--model", "opt-350m,gpt-125m", "--hw", "cloud,edge", "--batch", "1,4", "--seq-len", 128
    )
    assert [(o["model"], o["hw"], o["batch"]) for o in out] == [
        (m, hw, b) for m in ("opt-350m", "gpt-125m") for hw in ("cloud", "edge") for b in (1, 4)
    ]
    same = simulate_json("--model", "opt-350m", "--seq-len", "128,128")  # a repeated item: one point
    assert isinstance(same, dict)


def test_simulate_table_shows_each_point():
    res = invoke("simulate", "--model", "opt-350m", "--backend", "analytic", "--seq-len", "128,4096",
                 env={"COLUMNS": "100"})  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "decode l=128 batch=1" in res.output and "decode l=4096 batch=1" in res.output
    assert res.output.count("MatMul-free fraction") == 2


def test_amdahl_lists_give_an_array():
    res = invoke("amdahl", "--model", "opt-350m", "--backend", "analytic", "--seq-len", "128,2048",
                 "--batch", "1,8", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [(o["seq_len"], o["batch"]) for o in out] == [(128, 1), (128, 8), (2048, 1), (2048, 8)]
    assert len({o["fraction"] for o in out}) == 4
    res = invoke("amdahl", "--model", "opt-350m", "--backend", "analytic", "--weight-bits", "16,3", "--json")
    out = json.loads(res.stdout)
    assert [o["precision"]["weight_bits"] for o in out] == [16.0, 3.0]
    assert out[0]["derived"]["s_total_time"] == 1.0 and out[1]["derived"]["s_total_time"] > 1


def test_amdahl_plot_labels_points_apart(tmp_path):
    out = tmp_path / "a.png"
    res = invoke("amdahl", "--model", "opt-350m", "--backend", "analytic", "--seq-len", "128,2048",
                 "--plot", out, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert out.is_file() and len(json.loads(res.stdout)) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["simulate", "--model", "opt-350m", "--jobs", "1,2"], ["--jobs '1,2': takes one value here"]),
        (["topology", "--model", "opt-350m", "--seq-len", "128,256", "-o", "t.csv"], ["--seq-len '128,256'"]),
        (["topology", "--model", "opt-350m", "--batch", "1,2", "-o", "t.csv"], ["--batch '1,2'"]),
        (["figures", "--only", "fig14", "--act-bits", "16,8"], ["--act-bits '16,8': takes one value here"]),
        (["figures", "--only", "fig14", "--kv-bits", "16,8"], ["--kv-bits '16,8'"]),
        (["figures", "--only", "fig04", "--batch", "1,4"], ["--batch '1,4'"]),
        (["sweep", "--models", "opt-350m", "--jobs", "2,3", "-o", "o.csv"], ["--jobs '2,3'"]),
    ],
)
def test_a_list_where_one_value_is_used_is_refused(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*args), *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["simulate", "--model", "opt-350m", "--weight-bits", "4", "--weight-bits=2"],
         ["--weight-bits given twice ('4' and '2')"]),
        (["sweep", "--models", "opt-350m", "--models", "opt-1.3b", "-o", "o.csv"], ["--models given twice"]),
        (["amdahl", "--model", "opt-350m", "--hw", "cloud", "--hw", "edge"], ["--hw given twice"]),
        (["topology", "--model", "opt-350m", "-o", "a.csv", "--output", "b.csv"], ["-o given twice"]),
    ],
)  # fmt: skip
def test_an_option_given_twice_is_refused(tmp_path, monkeypatch, args, words):
    """click keeps the last of two values silently; the line would say both."""
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*args), *words)
    assert list(tmp_path.iterdir()) == []
    assert (
        invoke("simulate", "--model", "opt-350m", "--json", "--json", "--backend", "analytic").exit_code == 0
    )


# --- empty values: refused, never the default ------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["simulate", "--model", "opt-350m", "--weight-bits", ""], ["--weight-bits '': no value"]),
        (["simulate", "--model", "opt-350m", "--weight-bits", "16,"], ["--weight-bits '16,': an empty item"]),
        (["simulate", "--model", "opt-350m", "--weight-bits", "16,,8"], ["an empty item"]),
        (["simulate", "--model", "opt-350m", "--act-bits", ""], ["--act-bits '': no value"]),
        (["simulate", "--model", "opt-350m", "--kv-bits", " "], ["--kv-bits ' ': no value"]),
        (["simulate", "--model", "opt-350m", "--weight-format", ""], ["--weight-format '': give a value"]),
        (["simulate", "--model", "opt-350m", "--energy-table", ""], ["--energy-table '': give a value"]),
        (["simulate", "--model", "opt-350m", "--seq-len", ""], ["--seq-len '': an empty item"]),
        (["simulate", "--model", ""], ["--model '': give a value"]),
        (["simulate", "--quantized", ""], ["--quantized '': give a value"]),
        (["simulate", "--model", "opt-350m", "--bits-config", ""], ["--bits-config '': give a value"]),
        (["amdahl", "--model", "opt-350m", "--s-partial", ""], ["--s-partial '': give a value"]),
        (["amdahl", "--model", "opt-350m", "--s-range", ""], ["--s-range '': give a value"]),
        (["sweep", "--models", "", "-o", "o.csv"], ["--models '': give a value"]),
        (["sweep", "--models", "opt-350m", "--dataflows", " , ", "-o", "o.csv"], ["--dataflows ' , '"]),
        (["sweep", "--models", "opt-350m", "--batch", "1,", "-o", "o.csv"], ["--batch '1,': an empty item"]),
        (["figures", "--only", ""], ["--only '': give a value"]),
    ],
)
def test_an_empty_value_is_refused(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*args, "--backend", "analytic"), *words)
    assert list(tmp_path.iterdir()) == []


# --- labels: a user's file by its path -------------------------------------------------------------


def test_a_user_table_calling_itself_shiftaddllm_is_labelled_by_its_path(tmp_path):
    impostor = tmp_path / "table.json"
    impostor.write_text(json.dumps({**HOROWITZ, "name": "shiftaddllm"}))
    builtin = simulate_json("--model", "opt-350m", "--energy-table", "shiftaddllm")["config"]["energy_table"]
    mine = simulate_json("--model", "opt-350m", "--energy-table", impostor)["config"]["energy_table"]
    assert builtin["name"] == "shiftaddllm"
    assert mine["name"] == str(impostor) and mine["sha256"] != builtin["sha256"]
    out = tmp_path / "o.csv"
    res = invoke("sweep", "--models", "opt-350m", "--hw", "cloud", "--seq-lens", 128, "--backend", "analytic",
                 "--energy-table", impostor, "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    (row,) = csv.DictReader(io.StringIO(out.read_text()))
    assert row["energy_table"] == str(impostor)


# --- JSON inputs: keys given twice, unknown keys, NaN ----------------------------------------------


def _bits(tmp_path, text: str) -> Path:
    path = tmp_path / "bits.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"layers": {"model.layers.0.mlp.down_proj": 2, "model.layers.0.mlp.down_proj": 3}}',
         ["key 'model.layers.0.mlp.down_proj' appears twice"]),
        ('{"layers": {"model.layers.0.mlp.down_proj": 2}, "layers": {}}', ["key 'layers' appears twice"]),
        ('{"layers": {"model.layers.0.mlp.down_proj": 2}, "mode": "acc"}', ['"mode" belongs in "settings"']),
        ('{"layers": {"model.layers.0.mlp.down_proj": 2}, "layer": {}}',
         ["unknown key 'layer' (did you mean 'layers'?)"]),
        ('{"layers": {"model.layers.0.mlp.down_proj": {"bits": 2, "format": "int"}}}',
         ["unknown key 'format'; allowed: bits"]),
        ('{"layers": {"model.layers.0.mlp.down_proj": 2}, "settings": {"mode": "lattice"}}',
         ["settings.mode 'lattice'; allowed: lat, acc"]),
        ('{"layers": {"model.layers.0.mlp.down_proj": NaN}}', ["NaN is not a number JSON allows"]),
    ],
)  # fmt: skip
def test_bits_config_inputs_refused(tmp_path, text, words):
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} not present")
    res = invoke(
        "simulate", "--model", STORIES, "--backend", "analytic", "--bits-config", _bits(tmp_path, text)
    )
    one_line_error(res, "bits config", *words)


def test_bits_config_naming_one_module_twice_by_its_aliases_is_refused(tmp_path):
    """Gemma-3's multimodal wrapper: model.layers.N and model.language_model.layers.N are one module."""
    layers = {"model.layers.0.mlp.down_proj": 2, "model.language_model.layers.0.mlp.down_proj": 3}
    res = invoke("simulate", "--model", GEMMA3, "--backend", "analytic", "--bits-config",
                 _bits(tmp_path, json.dumps({"layers": layers})))  # fmt: skip
    one_line_error(res, "two names of one module")
    res = invoke("simulate", "--model", GEMMA3, "--backend", "analytic", "--bits-config",
                 _bits(tmp_path, json.dumps({"layers": dict(list(layers.items())[1:])})), "--json")  # fmt: skip
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "table, words",
    [
        ('{"ops": {}, "ops": {}}', ["key 'ops' appears twice"]),
        (json.dumps({**HOROWITZ, "dram_pj_per_byte": 1}), ["unknown key 'dram_pj_per_byte'"]),
        (json.dumps({**HOROWITZ, "lut_query": 1}), ["unknown key 'lut_query'"]),
        (
            json.dumps(HOROWITZ).replace('"dram_per_byte": 162.5', '"dram_per_byte": NaN'),
            ["NaN is not a number"],
        ),
    ],
)
def test_energy_table_inputs_refused(tmp_path, table, words):
    path = tmp_path / "t.json"
    path.write_text(table)
    one_line_error(invoke("simulate", "--model", "opt-350m", "--energy-table", path), "energy table", *words)


def test_config_with_a_key_twice_is_refused(tmp_path):
    text = (Path(GEMMA3).parent / "falcon-7b.json").read_text()
    dup = text.replace("{", '{"num_hidden_layers": 2,', 1)
    (tmp_path / "config.json").write_text(dup)
    one_line_error(invoke("simulate", "--model", tmp_path, "--backend", "analytic"), "appears twice")


def test_hardware_llm1bit_section_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "tpu.cfg"
    cfg.write_text((HW_DIR / "cloud.cfg").read_text().replace("DramBandwidthGBps", "DramBandwidthGbs"))
    one_line_error(invoke("simulate", "--model", "opt-350m", "--hw", cfg), "unknown key 'drambandwidthgbs'")


# --- whole groups; fractional widths say their format ----------------------------------------------


def test_group_overheads_count_whole_groups():
    assert bits_moved("int", 4, 64, 172) == 4 + 64 / 172  # two groups of 128 for 172 inputs
    assert bits_moved("int", 4, 64, 64) == 4 + 32 / 64  # one (partly empty) group
    assert bits_moved("int", 4, 4096, 4096) == 4.25  # whole groups: unchanged
    blocks = math.ceil(172 / 8) * math.ceil(64 / 16)
    assert bits_moved("bcq-lat", 3, 64, 172) == 3 + 3 * 3 * 8 * blocks / (64 * 172)
    assert bits_moved("bcq-lat", 3, 4096, 4096) == 3 + 3 * 3 * 8 / 128


def test_stories_down_proj_at_4_bit_int_moves_two_whole_groups():
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} not present")
    out = simulate_json("--model", STORIES, "--weight-bits", 4, "--seq-len", 256)
    (down,) = [x for x in out["layers"] if x["name"] == "down_proj"]
    assert down["K"] == 172 and down["filter_bits"] == 4 + 64 / 172


def test_fractional_widths_say_which_format_prices_them():
    res = invoke(
        "simulate", "--model", "opt-350m", "--backend", "analytic", "--weight-bits", "3,3.5", "--json"
    )
    assert res.exit_code == 0, res.output
    assert "--weight-bits 3.5: priced as format raw" in res.stderr
    assert [o["config"]["precision"]["weight_format"] for o in json.loads(res.stdout)] == ["bcq-lat", "raw"]
    res = invoke(
        "simulate",
        "--model",
        "opt-350m",
        "--backend",
        "analytic",
        "--weight-bits",
        "3.5",
        "--weight-format",
        "raw",
    )
    assert res.exit_code == 0 and "priced as format raw" not in res.stderr
    assert "Weights 3.5-bit raw" in res.stdout
