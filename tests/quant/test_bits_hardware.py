"""`llm1bit bits` under hardware budgets, end to end on stories260K: bits -> quantize --bits-config -> simulate
--quantized reproduces `predicted` and meets the budget for tokens/s, energy per token and weight bytes; at what
an average-bits allocation reaches, the hardware ILP's predicted cost is no higher; refusals are one line and
write no file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from llm1bit.budget_costs import Storage, Target, measure, with_widths
from llm1bit.cli import main
from llm1bit.hardware import load_hardware
from llm1bit.hf_config import spec_from_hf_config

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = str(DATA / "models" / "stories260K")
VALID = str(DATA / "tinystories" / "valid-head.txt")
TINY = ("--calib", VALID, "--nsamples", "2", "--seqlen", "64", "--bcq-rounds", "2")
FAST = (*TINY, "--fit-layers", "4")
# stories260K is compute-bound on both arrays at the default bandwidths: at 0.05 GB/s its weights decide cloud's time
CLOUD = ("--hw", "cloud", "--dram-gbps", "0.05")
EDGE = ("--hw", "edge")


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The average-bits ILP at 2.4 bits, then each hardware budget at what that allocation reaches when
    simulated; every hardware allocation quantized."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("hwbits")
    try:
        res = invoke("bits", "--model", STORIES, *FAST, "--budget", "2.4", "-o", tmp / "avg.json")
        assert res.exit_code == 0, res.output
        avg = json.loads((tmp / "avg.json").read_text())
        config = Path(STORIES) / "config.json"
        arch = spec_from_hf_config(json.loads(config.read_text()), config)
        priced = with_widths(arch, avg["layers"], Storage("lat", -1))
        cloud = Target(load_hardware("cloud").with_clock(dram_gbps=0.05))
        edge = Target(load_hardware("edge"))
        reached = {
            "min_tokens_per_s": (measure("min_tokens_per_s", priced, cloud), CLOUD),
            "max_energy_per_token_mj": (measure("max_energy_per_token_mj", priced, edge), EDGE),
            "max_weight_bytes": (measure("max_weight_bytes", priced, cloud), ()),
        }
        out = {"avg": avg, "reached": reached, "hw": {}}
        for kind, (value, hw) in reached.items():
            alloc = tmp / f"{kind}.json"
            flag = "--" + kind.replace("_", "-")
            res = invoke("bits", "--model", STORIES, *FAST, flag, repr(value), *hw, "-o", alloc)
            assert res.exit_code == 0, res.output
            q = tmp / f"q-{kind}"
            res = invoke(
                "quantize", "--model", STORIES, "--mode", "lat", "--bits-config", alloc, *TINY, "-o", q
            )
            assert res.exit_code == 0, res.output
            out["hw"][kind] = (json.loads(alloc.read_text()), q, hw)
        yield out
    finally:
        torch.set_num_threads(threads)


def simulated(kind: str, folder: Path, hw: tuple[str, ...], source: tuple = ()) -> float:
    """The budget's quantity as `simulate --quantized --json` reports it for the folder (or as `simulate` does for
    `source`, e.g. --model M --bits-config FILE)."""
    if kind == "max_weight_bytes":
        hw = ("--hw", "cloud")
    res = invoke("simulate", *(source or ("--quantized", folder)), *hw, "--backend", "analytic", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    if kind == "min_tokens_per_s":
        return data["tokens_per_s"]
    if kind == "max_energy_per_token_mj":
        return data["energy_j"] * 1000 / data["batch"]
    return sum(
        x["N"] * x["K"] * x["filter_bits"] / 8 * x["count"]
        for x in data["layers"]
        if x["part"] == "matmul_free" and x["kind"] != "router"
    )


@pytest.mark.parametrize("kind", ["min_tokens_per_s", "max_energy_per_token_mj", "max_weight_bytes"])
def test_quantized_folder_reproduces_predicted_and_meets_the_budget(runs, kind: str) -> None:
    data, folder, hw = runs["hw"][kind]
    assert data["budget"] == {"kind": kind, "value": runs["reached"][kind][0]}
    value = simulated(kind, folder, hw)
    assert value == pytest.approx(data["predicted"], rel=1e-9)
    budget = data["budget"]["value"]
    assert value >= budget * (1 - 1e-12) if kind == "min_tokens_per_s" else value <= budget * (1 + 1e-12)
    assert data["settings"]["budget"] == data["budget"]


@pytest.mark.parametrize("kind", ["min_tokens_per_s", "max_energy_per_token_mj", "max_weight_bytes"])
def test_simulate_bits_config_prices_the_file_as_its_folder(runs, kind: str, tmp_path: Path) -> None:
    """`simulate --bits-config` prices the bytes `quantize` stores under the file's settings (mode, groupsize):
    it reproduces `predicted`; and a file chosen for groupsize 16, quantized with --groupsize 16, simulates as its
    folder, while quantize with another groupsize is refused."""
    data, folder, hw = runs["hw"][kind]
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps(data))
    value = simulated(kind, folder, hw, ("--model", STORIES, "--bits-config", alloc))
    assert value == pytest.approx(data["predicted"], rel=1e-9)
    if kind != "min_tokens_per_s":
        return
    g16 = tmp_path / "g16.json"
    g16.write_text(json.dumps({**data, "settings": {**data["settings"], "groupsize": 16}}))
    res = invoke(
        "quantize", "--model", STORIES, "--mode", "lat", "--bits-config", g16, *TINY, "-o", tmp_path / "no"
    )
    assert_one_line_error(
        res, "chosen for settings.groupsize 16, but this run has groupsize -1 (--groupsize)"
    )
    assert not (tmp_path / "no").exists()
    q = tmp_path / "q16"
    res = invoke("quantize", "--model", STORIES, "--mode", "lat", "--groupsize", "16", "--bits-config", g16, *TINY,
                 "-o", q)  # fmt: skip
    assert res.exit_code == 0, res.output
    priced = simulated(kind, folder, hw, ("--model", STORIES, "--bits-config", g16))
    assert priced == pytest.approx(simulated(kind, q, hw), rel=1e-12) and priced != pytest.approx(
        value, rel=1e-6
    )


@pytest.mark.parametrize("kind", ["min_tokens_per_s", "max_energy_per_token_mj", "max_weight_bytes"])
def test_hardware_ilp_costs_no_more_than_the_average_bits_ilp_at_its_point(runs, kind: str) -> None:
    avg, (data, _, _) = runs["avg"], runs["hw"][kind]
    assert [s["costs"] for s in data["sublayers"]] == [
        s["costs"] for s in avg["sublayers"]
    ]  # one measurement
    assert data["objective"] <= avg["objective"] * (1 + 1e-12)


def test_average_bits_output_keeps_its_keys(runs) -> None:
    avg = runs["avg"]
    assert avg["budget"] == {"kind": "average_bits", "value": 2.4}
    assert avg["predicted"] == avg["average_bits"] <= 2.4


@pytest.mark.parametrize(
    "args, match",
    [
        (("--min-tokens-per-s", "100"), "--min-tokens-per-s needs --hw"),
        (("--max-energy-per-token-mj", "0.3"), "--max-energy-per-token-mj needs --hw"),
        (("--budget", "2.2", "--max-weight-bytes", "80000"), "give exactly one budget"),
        (("--min-tokens-per-s", "10", "--max-energy-per-token-mj", "1", *EDGE), "give exactly one budget"),
        (("--max-weight-bytes", "8e4,9e4"), "takes one value here, not a list"),
        (("--budget", "2.2,2.5"), "takes one value here, not a list"),
        (("--min-tokens-per-s", "100", "--hw", "cloud,edge"), "takes one value here, not a list"),
        (("--min-tokens-per-s", "100", *EDGE, "--batch", "1,2"), "takes one value here, not a list"),
        (
            ("--max-energy-per-token-mj", "0.3", *EDGE, "--act-bits", "8,16"),
            "takes one value here, not a list",
        ),
        (("--max-weight-bytes", "-5"), "must be a positive number"),
        (("--min-tokens-per-s", "nan", *EDGE), "must be a positive number"),
        (("--budget", "nan"), "must be a positive number"),
        (("--budget", "2.2", *EDGE), "--hw prices a hardware budget"),
        (("--max-weight-bytes", "8e4", *EDGE), "--hw prices a hardware budget"),
        (("--min-tokens-per-s", "100", *EDGE, "--weight-bits", "4"), "--weight-bits"),
        (("--min-tokens-per-s", "100", *EDGE, "--weight-format", "int"), "--weight-format"),
        (("--min-tokens-per-s", "100", *EDGE, "--solver", "rank"), "--solver rank takes --budget"),
        # unreachable: refused before measuring, with the best value any allocation reaches
        (("--min-tokens-per-s", "1e9", *CLOUD), "the best any allocation reaches is"),
        (("--max-energy-per-token-mj", "1e-6", *EDGE), "the best any allocation reaches is"),
        (("--max-weight-bytes", "100"), "the best any allocation reaches is 73760 bytes"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(tmp_path: Path, args: tuple[str, ...], match: str) -> None:
    out = tmp_path / "alloc.json"
    result = invoke("bits", "--model", STORIES, *TINY, *args, "-o", out)
    assert_one_line_error(result, match)
    assert not out.exists()


def test_help_leaves_out_the_refused_weight_options() -> None:
    text = invoke("bits", "--help").output
    assert "--act-bits" in text and "--weight-bits" not in text and "--weight-format" not in text
