"""fig16: perplexity of real quantized folders (stories260K) against their simulated speedup and energy saving."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.figures.common import Settings
from llm1bit.layer_widths import load_quantized_model
from llm1bit.sweep import Point, run_points

pytest.importorskip("torch")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STORIES, TEXT = DATA / "models" / "stories260K", DATA / "tinystories" / "valid-head.txt"


def invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} not present")
    root = tmp_path_factory.mktemp("fig16")
    evaluate = ["--data", TEXT, "--seqlen", 64, "--max-windows", 4, "--json"]
    (root / "fp.json").write_text(invoke("eval", "--model", STORIES, *evaluate).stdout)
    for name, args in (("rtn3", ["--method", "rtn"]), ("lat3", ["--method", "shiftaddllm", "--mode", "lat"])):
        invoke("quantize", "--model", STORIES, *args, "--wbits", 3, "--calib", TEXT, "--nsamples", 2,
               "--seqlen", 64, "-o", root / name)  # fmt: skip
        out = json.loads(invoke("eval", "--model", root / name, *evaluate).stdout)
        out["model"] = name  # relative to the results folder, as scripts/fig16_results.sh writes them
        (root / f"{name}.json").write_text(json.dumps(out))
    return root


def test_fig16_numbers_come_from_the_folders_and_their_evals(results, tmp_path):
    invoke("figures", "--only", "fig16", "--results", results, "--backend", "analytic", "--out", tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".csv"}
    rows = list(csv.DictReader((tmp_path / "fig16-quality-vs-cost.csv").open()))
    assert sorted((r["run"], r["hw"]) for r in rows) == [
        ("lat3", "cloud"), ("lat3", "edge"), ("rtn3", "cloud"), ("rtn3", "edge"),
    ]  # fmt: skip
    settings = Settings()
    for r in rows:
        assert float(r["perplexity"]) == json.loads((results / f"{r['run']}.json").read_text())["perplexity"]
        model = load_quantized_model(results / r["run"])
        hw = settings.priced_hardware(r["hw"])
        q, ref = run_points(
            [Point(model, hw, 2048), Point(dataclasses.replace(model, proj_bits=()), hw, 2048)], "analytic"
        )
        assert float(r["speedup_time"]) == pytest.approx(ref.latency_s / q.latency_s, rel=1e-12)
        assert float(r["energy_saving"]) == pytest.approx(1 - q.energy_j / ref.energy_j, rel=1e-12)
        assert 0 < float(r["energy_saving"]) < 1 and float(r["weight_bits_mean"]) == 3.0
        assert (r["eval_seqlen"], r["eval_windows"]) == ("64", "4")


def test_fig16_refusals(results, tmp_path):
    res = CliRunner().invoke(main, ["figures", "--only", "fig16", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "fig16 needs --results DIR" in res.output
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("rtn3", "lat3"):
        out = json.loads((results / f"{name}.json").read_text())
        out["model"], out["seqlen"] = str(results / name), 64 if name == "rtn3" else 128
        (mixed / f"{name}.json").write_text(json.dumps(out))
    res = CliRunner().invoke(
        main, ["figures", "--only", "fig16", "--results", str(mixed), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and "differ in data / seqlen / windows" in res.output
    assert len(res.output.strip().splitlines()) == 1
