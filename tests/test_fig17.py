"""fig17: perplexity of quantized folders (stories260K) against their simulated tokens/s and energy per token,
coloured by how their widths were chosen (the run's name)."""

import csv
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
    root = tmp_path_factory.mktemp("fig17")
    evaluate = ["--data", TEXT, "--seqlen", 64, "--max-windows", 2, "--json"]
    (root / "fp.json").write_text(invoke("eval", "--model", STORIES, *evaluate).stdout)
    for name, bits in (("uniform2", 2), ("ilp-tps-cloud-2.5", 3)):
        invoke("quantize", "--model", STORIES, "--mode", "lat", "--wbits", bits, "--calib", TEXT,
               "--nsamples", 2, "--seqlen", 64, "--bcq-rounds", 2, "-o", root / name)  # fmt: skip
        out = json.loads(invoke("eval", "--model", root / name, *evaluate).stdout)
        out["model"] = name
        (root / f"{name}.json").write_text(json.dumps(out))
    # widths equal to another run's: its eval result, naming that run's folder (as scripts/fig17_results.sh does)
    (root / "ilp-tps-cloud-b16-2.5.json").write_text((root / "ilp-tps-cloud-2.5.json").read_text())
    return root


def test_fig17_numbers_are_the_folders_simulated(results, tmp_path):
    invoke("figures", "--only", "fig17", "--results", results, "--backend", "analytic", "--out", tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".csv"}
    rows = list(csv.DictReader((tmp_path / "fig17-bits-for-the-hardware.csv").open()))
    assert sorted((r["run"], r["hw"]) for r in rows) == [
        ("ilp-tps-cloud-2.5", "cloud"), ("ilp-tps-cloud-2.5", "edge"), ("ilp-tps-cloud-b16-2.5", "cloud"),
        ("ilp-tps-cloud-b16-2.5", "edge"), ("uniform2", "cloud"), ("uniform2", "edge"),
    ]  # fmt: skip
    assert {r["run"]: (r["allocation"], Path(r["folder"]).name) for r in rows} == {
        "uniform2": ("uniform", "uniform2"),
        "ilp-tps-cloud-2.5": ("ILP, tokens/s on cloud", "ilp-tps-cloud-2.5"),
        "ilp-tps-cloud-b16-2.5": ("ILP, tokens/s on cloud at batch 16", "ilp-tps-cloud-2.5"),
    }  # fmt: skip
    settings = Settings()
    for r in rows:
        assert float(r["perplexity"]) == json.loads((results / f"{r['run']}.json").read_text())["perplexity"]
        model = load_quantized_model(r["folder"])
        (split,) = run_points([Point(model, settings.priced_hardware(r["hw"]), 2048)], "analytic")
        assert float(r["tokens_per_s"]) == pytest.approx(split.tokens_per_s, rel=1e-12)
        assert float(r["energy_per_token_mj"]) == pytest.approx(split.energy_j * 1000, rel=1e-12)
