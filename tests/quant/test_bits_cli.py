"""`llm1bit bits` end to end on stories260K: allocation JSON that `quantize --bits-config` accepts, Kendall tau,
figures, one-line errors. Calibration is tinystories/valid-head.txt, read in place from ../shared/data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from llm1bit.cli import main

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = str(DATA / "models" / "stories260K")
VALID = str(DATA / "tinystories" / "valid-head.txt")
TINY = ("--calib", VALID, "--nsamples", "4", "--seqlen", "128", "--bcq-rounds", "3")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 64-wide model: torch's thread pool only spins, which costs seconds on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, one_thread):
    """One run with --record-errors and all figures; the allocation file and the output."""
    tmp = tmp_path_factory.mktemp("bits")
    alloc = tmp / "alloc.json"
    result = invoke(
        "bits", "--model", STORIES, *TINY, "--budget", "2.2", "--record-errors",
        "--figures", str(tmp / "figs"), "-o", str(alloc),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return tmp, alloc, result.output


def test_allocation_json(recorded) -> None:
    _, alloc, output = recorded
    data = json.loads(alloc.read_text())
    assert len(data["layers"]) == 35 and set(data["layers"].values()) <= {2, 3}
    assert data["solver"] == "ilp" and data["budget"] == {"kind": "average_bits", "value": 2.2}
    assert data["predicted"] == data["average_bits"]
    assert data["average_bits"] <= 2.2 and data["average_bits"] > 2.0
    assert data["solve_seconds"] >= 0
    settings = data["settings"]
    assert settings["nsamples"] == 4 and settings["seqlen"] == 128 and settings["seed"] == 0
    assert settings["candidates"] == [2, 3] and settings["mode"] == "lat"
    assert settings["model"] == STORIES and settings["calib"] == VALID
    subs = {s["name"]: s for s in data["sublayers"]}
    params = {name: s["params"] for name, s in subs.items()}
    avg = sum(params[n] * b for n, b in data["layers"].items()) / sum(params.values())
    assert data["average_bits"] == pytest.approx(avg)
    cost = sum(subs[n]["costs"][str(b)] for n, b in data["layers"].items())
    assert data["objective"] == pytest.approx(cost)
    # cost output (default): predicted reparameterization error x the layer's measured output gain
    assert settings["cost"] == "output" and settings["output_windows"] == 4
    for s in subs.values():
        assert set(s["output_errors"]) == {"2", "3"} and s["gain"] > 0
        ratio = math.sqrt(
            s["output_errors"]["2"]
            / s["measured_errors"]["2"]
            * s["output_errors"]["3"]
            / s["measured_errors"]["3"]
        )
        assert s["gain"] == pytest.approx(ratio)
        assert s["costs"]["2"] == pytest.approx(s["predicted_errors"]["2"] * s["gain"])
    assert set(data["fits"]) == {"2", "3"} and data["fits"]["2"]["points"] == 35
    assert "wrote" in output and "allocation (ilp)" in output


def test_record_errors_reports_tau(recorded) -> None:
    tmp, alloc, output = recorded
    line = next(line for line in output.splitlines() if line.startswith("kendall tau"))
    taus = {int(b): float(t) for b, t in re.findall(r"(\d) bits (-?[0-9.]+) \(held-out", line)}
    assert set(taus) == {2, 3} and all(-1 <= t <= 1 for t in taus.values())
    data = json.loads(alloc.read_text())
    for b in ("2", "3"):
        assert data["kendall_tau_refined"][b]["tau"] == pytest.approx(taus[int(b)], abs=5e-4)
        assert -1 <= data["kendall_tau_refined_held_out"][b]["tau"] <= 1
    for b in ("2", "3"):
        assert -1 <= data["kendall_tau"][b]["tau"] <= 1 and data["kendall_tau"][b]["layers"] == 35
    # every layer measured at each width
    assert all(set(s["measured_errors"]) == {"2", "3"} for s in data["sublayers"])
    figs = tmp / "figs"
    for name in ("sal_fig4", "sal_fig5", "sal_fig7"):
        assert (figs / f"{name}-stories260K.png").stat().st_size > 0
        assert (figs / f"{name}-stories260K.csv").read_text().count("\n") >= 36
    first = (figs / "sal_fig5-stories260K.csv").read_text().splitlines()[1].split(",")
    assert float(first[-2]) == pytest.approx(data["kendall_tau"]["2"]["tau"])
    assert float(first[-1]) == pytest.approx(data["kendall_tau_refined"]["2"]["tau"])
    assert data["fits"]["2"]["size_coeff"] is not None and data["settings"]["fit_size"] is True


def test_quantize_accepts_the_allocation(recorded) -> None:
    tmp, alloc, _ = recorded
    out = tmp / "mixed"
    result = invoke(
        "quantize", "--model", STORIES, "--method", "shiftaddllm", "--mode", "lat", "--wbits", "2",
        "--bits-config", str(alloc), *TINY, "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["layer_bits"] == json.loads(alloc.read_text())["layers"]


def test_rank_solver_and_pins(tmp_path: Path) -> None:
    alloc = tmp_path / "rank.json"
    result = invoke(
        "bits", "--model", STORIES, *TINY, "--budget", "2.5", "--solver", "rank", "-o", str(alloc)
    )
    assert result.exit_code == 0, result.output
    data = json.loads(alloc.read_text())
    assert data["solver"] == "rank" and len(data["layers"]) == 35
    # LLaMA: every linear is one unit, so 0.5 * 35 = 17.5 -> ranks 18..34 (17 layers) get 3 bits
    assert sum(b == 3 for b in data["layers"].values()) == 17
    assert data["settings"]["fit_layers"] == 35  # default: every layer measured

    # pins: a bits file that fixes every layer to 3 bits is infeasible at 2.2
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"layers": dict.fromkeys(data["layers"], 3)}))
    result = invoke(
        "bits", "--model", STORIES, *TINY, "--budget", "2.2", "--fix", str(pins), "--fit-layers", "4"
    )
    assert_one_line_error(result, "infeasible")
    pins.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_proj": 3}}))
    alloc = tmp_path / "pinned.json"
    result = invoke(
        "bits", "--model", STORIES, *TINY, "--budget", "2.2", "--fix", str(pins), "--fit-layers", "4",
        "-o", str(alloc),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(alloc.read_text())
    assert data["layers"]["model.layers.0.mlp.down_proj"] == 3 and data["average_bits"] <= 2.2
    assert data["settings"]["fit_layers"] == 4


def test_weight_cost_is_the_predicted_error_alone(tmp_path: Path) -> None:
    alloc = tmp_path / "weight.json"
    result = invoke(
        "bits", "--model", STORIES, *TINY, "--budget", "2.2", "--cost", "weight", "--fit-layers", "6",
        "-o", str(alloc),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(alloc.read_text())
    assert data["settings"]["cost"] == "weight" and data["settings"]["output_windows"] is None
    for s in data["sublayers"]:
        assert s["gain"] == 1.0 and s["costs"] == s["predicted_errors"] and not s["output_errors"]
    assert sum(bool(s["measured_errors"]) for s in data["sublayers"]) == 6


def test_unknown_name_in_bits_file(tmp_path: Path) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_prj": 3}}))
    result = invoke(
        "bits", "--model", STORIES, *TINY, "--budget", "2.2", "--fix", str(pins), "--fit-layers", "2"
    )
    assert_one_line_error(result, "unknown module 'model.layers.0.mlp.down_prj'")
    result = invoke(
        "quantize",
        "--model",
        STORIES,
        "--method",
        "rtn",
        "--bits-config",
        str(pins),
        "-o",
        str(tmp_path / "q"),
    )
    assert_one_line_error(result, "unknown module")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--budget", "1.9"), "outside [2, 3]"),
        (("--budget", "3.5"), "outside [2, 3]"),
        (("--budget", "2.5", "--candidates", "3,4"), "outside [3, 4]"),
        (("--budget", "2.2", "--solver", "greedy"), "unknown solver 'greedy'"),
        (("--budget", "2.2", "--candidates", "2,x"), "comma-separated integers"),
        ((), "nothing to do"),
        (("--record-errors", "-o", "x.json"), "give --budget"),
        (("--budget", "2.2", "--mode", "fast"), "unknown mode"),
        (("--budget", "2.2", "--cost", "ppl"), "unknown cost 'ppl'"),
        (("--budget", "2.2", "--output-windows", "0"), "--output-windows 0"),
        (("--budget", "2.2", "--solver", "rank", "--fix", "pins.json"), "--solver ilp"),
    ],
)
def test_bad_input_is_one_line(args: tuple[str, ...], match: str) -> None:
    result = invoke("bits", "--model", STORIES, *TINY, *args)
    assert_one_line_error(result, match)
