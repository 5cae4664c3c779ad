"""fig14 (speedup / energy saving against weight bits) and fig15 (energy breakdown): every plotted number
recomputed from run_points of the same points, the Amdahl limits, the files and the command."""

import csv
import functools
import io

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.costs import Pricing
from llm1bit.energy import load_energy_table
from llm1bit.figures import FIGURES, Settings, make_figures
from llm1bit.figures.weight_widths import SEGMENTS
from llm1bit.hardware import load_hardware
from llm1bit.models import resolve_models
from llm1bit.precision import Precision
from llm1bit.sweep import Point, run_points

SMALL = dict(
    opt_models=("opt-350m", "opt-1.3b"),
    gpt_llama_models=("gpt-125m", "llama-7b"),
    seq_lens=(128, 2048),
    amdahl_len=2048,
    s_partial=(1.0, 2.0, 5.0, 10.0, 100.0),
    modern_pairs=(("llama-3-8b", "llama-7b"), ("gpt2-medium", "gpt-355m")),
    modern_lens=(2048,),
)
WIDTHS = (16.0, 8.0, 4.0, 3.0, 2.0, 1.58, 1.0)
FORMATS = {16.0: "fp", 8.0: "int", 4.0: "int", 3.0: "bcq-lat", 2.0: "bcq-lat", 1.58: "ternary", 1.0: "binary"}
HW = ("cloud", "edge")


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def the_file(out, name, ext):
    (path,) = out.glob(f"{name}-*.{ext}")
    return path


def pricing(bits, act=16, kv=16, table=None):
    return Pricing(Precision.build(bits, act, kv), load_energy_table(table), "lut")


def simulated(model_names, widths, act=16, kv=16, table=None):
    """{(model, hw, bits): Split} from run_points of the figure's points, built here independently."""
    pts = [
        Point(model, load_hardware(hw), 2048, "decode", 1, pricing(b, act, kv, table))
        for hw in HW
        for model in resolve_models(",".join(model_names))
        for b in widths
    ]
    return {
        (p.model.name, p.hw.name, p.pricing.precision.weight_bits): s
        for p, s in zip(pts, run_points(pts, "analytic"))
    }


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    settings = Settings(backend="analytic", **SMALL)
    written = make_figures(["fig14", "fig15"], settings, out)
    return settings, out, written


def test_files_png_pdf_csv(drawn):
    _, out, written = drawn
    assert list(written) == ["fig14", "fig15"]
    assert {p.name for p in out.iterdir()} == {
        f"{stem}.{ext}"
        for stem in ("fig14-opt-weight-bits-l2048", "fig15-energy-breakdown-l2048")
        for ext in ("png", "pdf", "csv")
    }
    for paths in written.values():
        png, pdf = (next(p for p in paths if p.suffix == ext) for ext in (".png", ".pdf"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-"
    assert set(FIGURES) >= {"fig14", "fig15"}


def test_fig14_values_are_recomputed_from_run_points(drawn):
    settings, out, _ = drawn
    rows = read_csv(the_file(out, "fig14", "csv"))
    sim = simulated(settings.opt_models, WIDTHS)
    table = load_energy_table()
    assert len(rows) == len(settings.opt_models) * len(HW) * len(WIDTHS)
    for r in rows:
        bits = float(r["weight_bits"])
        split, ref = sim[(r["model"], r["hw"], bits)], sim[(r["model"], r["hw"], 16.0)]
        hw = split.hw
        # the settings that decided the row
        assert r["weight_format"] == FORMATS[bits]
        assert (r["act_bits"], r["kv_bits"], r["seq_len"], r["phase"], r["batch"]) == (
            "16.0",
            "16.0",
            "2048",
            "decode",
            "1",
        )
        assert (r["backend"], r["bcq_compute"], r["dataflow"]) == ("analytic", "lut", "os")
        assert r["hw_fingerprint"] == hw.fingerprint()
        assert (float(r["freq_mhz"]), float(r["dram_gbps"])) == (hw.freq_mhz, hw.dram_gbps)
        assert (r["energy_table"], r["energy_table_sha256"]) == (table.name, table.sha256)
        # the plotted numbers
        assert float(r["latency_s"]) == split.latency_s and float(r["latency_16_s"]) == ref.latency_s
        assert float(r["s_total_time"]) == ref.latency_s / split.latency_s
        assert float(r["energy_j"]) == split.energy_j and float(r["energy_16_j"]) == ref.energy_j
        assert float(r["s_total_energy"]) == ref.energy_j / split.energy_j
        assert float(r["energy_saving"]) == 1 - split.energy_j / ref.energy_j
        assert float(r["frac_time_16"]) == ref.frac_time
        assert float(r["frac_energy_16"]) == ref.frac_energy
        # the Amdahl limit is 1 / (1 - F) of the 16-bit point
        assert float(r["amdahl_limit_time"]) == 1 / (1 - ref.frac_time)
        assert float(r["amdahl_limit_energy"]) == 1 / (1 - ref.frac_energy)
        # only the projections changed: Amdahl's identity with the derived S_partial
        for attr, frac in (("time_s", ref.frac_time), ("energy_j", ref.frac_energy)):
            s_partial = getattr(ref.costs["matmul_free"], attr) / getattr(split.costs["matmul_free"], attr)
            total = ref.latency_s / split.latency_s if attr == "time_s" else ref.energy_j / split.energy_j
            assert total == pytest.approx(1 / ((1 - frac) + frac / s_partial), rel=1e-12)
            assert total < 1 / (1 - frac)


def test_fig14_at_16_bits_is_one_and_saving_grows_as_bits_drop(drawn):
    _, out, _ = drawn
    rows = read_csv(the_file(out, "fig14", "csv"))
    for r in rows:
        if r["weight_bits"] == "16.0":
            assert float(r["s_total_time"]) == 1.0 and float(r["s_total_energy"]) == 1.0
            assert float(r["energy_saving"]) == 0.0
    for key in {(r["model"], r["hw"]) for r in rows}:
        line = sorted((float(r["weight_bits"]) for r in rows if (r["model"], r["hw"]) == key), reverse=True)
        assert line == list(WIDTHS)
        saving = [float(r["energy_saving"]) for r in rows if (r["model"], r["hw"]) == key]
        assert all(a < b for a, b in zip(saving, saving[1:])), (key, saving)
        speedup = [float(r["s_total_time"]) for r in rows if (r["model"], r["hw"]) == key]
        assert all(a <= b for a, b in zip(speedup, speedup[1:])), (key, speedup)


def test_fig15_segments_are_the_part_costs_and_sum_to_the_energy(drawn):
    settings, out, _ = drawn
    rows = read_csv(the_file(out, "fig15", "csv"))
    assert settings.breakdown_models == ("opt-66b", "llama-7b")
    sim = simulated(settings.breakdown_models, (16.0, 3.0, 1.58))
    assert [(r["hw"], r["model"], r["weight_bits"], r["weight_format"]) for r in rows] == [
        (hw, m, b, f)
        for hw in HW
        for m in ("opt-66b", "llama-7b")
        for b, f in (("16.0", "fp"), ("3.0", "bcq-lat"), ("1.58", "ternary"))
    ]
    for r in rows:
        split = sim[(r["model"], r["hw"], float(r["weight_bits"]))]
        ref = sim[(r["model"], r["hw"], 16.0)]
        for part in ("matmul_free", "matmul"):
            cost = split.costs[part]
            assert float(r[f"{part}_compute_j"]) == cost.ops_j
            assert float(r[f"{part}_sram_j"]) == cost.sram_j
            assert float(r[f"{part}_dram_j"]) == cost.dram_j
        assert len(SEGMENTS) == 6
        assert sum(float(r[s]) for s in SEGMENTS) == pytest.approx(split.energy_j, rel=1e-12)
        assert float(r["energy_j"]) == split.energy_j
        assert float(r["energy_saving"]) == 1 - split.energy_j / ref.energy_j
        assert r["hw_fingerprint"] == split.hw.fingerprint() and r["seq_len"] == "2048"


def test_png_metadata_records_the_cost_settings(drawn):
    from PIL import Image

    _, out, _ = drawn
    with Image.open(the_file(out, "fig14", "png")) as im:
        text = im.text
    for item in (
        "backend=analytic",
        "act_bits=16",
        "kv_bits=16",
        "energy_table=horowitz-45nm",
        "seq_len=2048",
    ):
        assert item in text["Description"]
    assert "Fig. 14" in text["Title"] and "l = 2048" in text["Title"]


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture
def small_cli(monkeypatch):
    import llm1bit.figures

    monkeypatch.setattr(llm1bit.figures, "Settings", functools.partial(Settings, **SMALL))

    def run(*args):
        return CliRunner().invoke(main, ["figures", *map(str, args)])

    return run


def test_cli_writes_fig14_and_fig15(small_cli, tmp_path, drawn):
    _, default_out, _ = drawn
    res = small_cli("--only", "fig14,fig15", "--backend", "analytic", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "fig14:" in res.output and "fig15:" in res.output
    for name in ("fig14", "fig15"):  # the same numbers as make_figures with the same settings
        assert the_file(tmp_path, name, "csv").read_text() == the_file(default_out, name, "csv").read_text()


def test_cli_cost_options_flow_into_names_and_csvs(small_cli, tmp_path):
    res = small_cli(
        "--only",
        "fig14,fig15",
        "--weight-bits",
        "16,4,1.58",
        "--act-bits",
        "8",
        "--energy-table",
        "shiftaddllm",
        "--dram-gbps",
        "100",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    fig14 = tmp_path / "fig14-opt-weight-bits-l2048-a8-shiftaddllm-100gbps.csv"
    fig15 = tmp_path / "fig15-energy-breakdown-l2048-a8-shiftaddllm-100gbps.csv"
    table = load_energy_table("shiftaddllm")
    for path in (fig14, fig15):
        rows = read_csv(path)
        assert [r["weight_bits"] for r in rows[:3]] == ["16.0", "4.0", "1.58"]
        assert {
            (r["act_bits"], r["energy_table"], r["energy_table_sha256"], r["dram_gbps"]) for r in rows
        } == {("8.0", table.name, table.sha256, "100.0")}
    row = next(
        r for r in read_csv(fig14) if (r["model"], r["hw"], r["weight_bits"]) == ("opt-350m", "cloud", "1.58")
    )
    hw = load_hardware("cloud").with_clock(None, 100)
    (model,) = resolve_models("opt-350m")
    ref, split = run_points(
        [Point(model, hw, 2048, "decode", 1, pricing(b, 8, 16, "shiftaddllm")) for b in (16.0, 1.58)],
        "analytic",
    )
    assert float(row["s_total_time"]) == ref.latency_s / split.latency_s
    assert float(row["amdahl_limit_energy"]) == 1 / (1 - ref.frac_energy)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--weight-bits", "16,0"), "--weight-bits 0.0: bits must be > 0"),
        (("--act-bits", "40"), "--act-bits 40.0: bits must be > 0 and <= 32"),
        (("--dram-gbps", "-1"), "--dram-gbps -1 must be a positive number"),
        (("--energy-table", "nope.json"), "energy table nope.json does not exist"),
        (("--weight-bits", "1.58", "--weight-format", "int"), "weight format int cannot hold 1.58-bit"),
    ],
)
def test_cli_bad_cost_options_are_one_line(small_cli, tmp_path, args, message):
    res = small_cli("--only", "fig14", *args, "--out", tmp_path / "x")
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "x").exists()
