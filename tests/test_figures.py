"""The figure pipeline on a small sweep: files written atomically, CSVs equal to the sweep / the formula, CLI."""

import csv
import functools
import importlib.util
import io

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.figures import FIGURES, NEEDS_RESULTS, Settings, make_figures
from llm1bit.figures.common import (
    MODEL_COLORS,
    FigureSpec,
    backend_note,
    model_color,
    simulate,
)
from llm1bit.hardware import load_hardware
from llm1bit.models import PAPER_MODELS, resolve_models
from llm1bit.sweep import points, run_points, to_csv, uncovered_points

BACKEND = "analytic" if importlib.util.find_spec("llm1bit.backends.analytic") else "scalesim"
SMALL = dict(
    opt_models=("opt-350m", "opt-1.3b"),
    gpt_llama_models=("gpt-125m", "llama-7b"),
    seq_lens=(128, 2048),
    amdahl_len=2048,
    s_partial=(1.0, 2.0, 5.0, 10.0, 100.0),
    modern_pairs=(("llama-3-8b", "llama-7b"), ("gpt2-medium", "gpt-355m")),
    modern_lens=(2048,),
)
NAMES = [f"fig{n:02d}" for n in range(4, 16)]
DEFAULT = [n for n in FIGURES if n not in NEEDS_RESULTS]  # fig16 needs --results (tests/test_fig16.py)
HEATMAPS = {
    "fig04": ("opt", "cloud"),
    "fig06": ("opt", "edge"),
    "fig09": ("gpt-llama", "cloud"),
    "fig10": ("gpt-llama", "edge"),
}


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    settings = Settings(backend=BACKEND, **SMALL)
    cache = tmp_path_factory.mktemp("cache")
    from llm1bit.cache import ResultCache

    written = make_figures(DEFAULT, settings, out, cache=ResultCache(cache))
    return settings, out, written


def the_file(out, name, ext):
    """A figure's file; fig13's first panel (its second, fig13-moe: tests/test_architectures.py)."""
    (path,) = (p for p in out.glob(f"{name}-*.{ext}") if not p.stem.startswith("fig13-moe"))
    return path


def test_every_figure_writes_png_pdf_csv_and_nothing_else(drawn):
    settings, out, written = drawn
    assert list(written) == NAMES
    expected = set()
    for name, paths in written.items():
        stems = {p.stem for p in paths}
        assert len(stems) == (2 if name == "fig13" else 1)  # fig13: two panels
        for stem in stems:
            assert stem.startswith(name + "-")
            group = [p for p in paths if p.stem == stem]
            assert sorted(p.suffix for p in group) == [".csv", ".pdf", ".png"]
            png, pdf = (next(p for p in group if p.suffix == ext) for ext in (".png", ".pdf"))
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
            assert pdf.read_bytes()[:5] == b"%PDF-"
        expected |= {p.name for p in paths}
    assert {p.name for p in out.iterdir()} == expected  # only final names: no temp files


def test_default_names_are_plain(drawn):
    _, out, _ = drawn
    names = {p.stem for p in out.glob("*.png")}
    assert "fig04-opt-cloud-fractions" in names
    assert "fig05-opt-cloud-amdahl-l2048" in names
    assert "fig08-opt-dataflows-l2048" in names
    assert not any("prefill" in n or "-b1" in n for n in names)


@pytest.mark.parametrize("name", sorted(HEATMAPS))
def test_heatmap_csv_is_the_sweep_output(drawn, name, tmp_path):
    settings, out, _ = drawn
    group, hw = HEATMAPS[name]
    names = settings.opt_models if group == "opt" else settings.gpt_llama_models
    text = the_file(out, name, "csv").read_text()
    # equal to run_points of the same cells ...
    pts = points(resolve_models(",".join(names)), [load_hardware(hw)], list(settings.seq_lens), [None])
    assert text == to_csv(run_points(pts, BACKEND, cache=None if BACKEND == "analytic" else _cache(tmp_path)))
    # ... and to what `llm1bit sweep` writes for them
    sweep_csv = tmp_path / "sweep.csv"
    res = CliRunner().invoke(
        main,
        [
            "sweep",
            "--models",
            ",".join(names),
            "--hw",
            hw,
            "--seq-lens",
            ",".join(map(str, settings.seq_lens)),
            "--backend",
            BACKEND,
            "--cache-dir",
            str(tmp_path / "cache"),
            "-o",
            str(sweep_csv),
        ],
    )
    assert res.exit_code == 0, res.output
    assert text == sweep_csv.read_text()
    rows = read_csv(the_file(out, name, "csv"))
    assert {(r["backend"], r["phase"], r["batch"], r["dataflow"]) for r in rows} == {
        (BACKEND, "decode", "1", "os")
    }


def _cache(tmp_path):
    from llm1bit.cache import ResultCache

    return ResultCache(tmp_path / "cache")


@pytest.mark.parametrize("name", ["fig05", "fig07", "fig11", "fig12"])
def test_amdahl_csv_numbers_are_the_formula(drawn, name):
    settings, out, _ = drawn
    rows = read_csv(the_file(out, name, "csv"))
    hw = "cloud" if name in ("fig05", "fig11") else "edge"
    lens = {settings.amdahl_len} if name in ("fig05", "fig07") else set(settings.seq_lens)
    assert {int(r["seq_len"]) for r in rows} == lens
    assert {r["model"] for r in rows} == set(settings.opt_models)
    assert {(r["hw"], r["backend"], r["metric"], r["phase"], r["batch"]) for r in rows} == {
        (hw, BACKEND, "cycles", "decode", "1")
    }
    assert len(rows) == len(settings.opt_models) * len(lens) * 2 * len(settings.s_partial)
    heat = {
        (r["model"], int(r["seq_len"])): float(r["frac_cycles"])
        for r in read_csv(the_file(out, "fig04" if hw == "cloud" else "fig06", "csv"))
    }
    for r in rows:
        f, s, total = float(r["fraction"]), float(r["s_partial"]), float(r["s_total"])
        part = f if r["side"] == "projection" else 1 - f
        assert total == pytest.approx(1 / ((1 - part) + part / s), rel=1e-12)
        assert f == pytest.approx(heat[(r["model"], int(r["seq_len"]))], abs=1e-6)  # the simulated fraction
    assert {r["side"] for r in rows} == {"projection", "attention"}


def test_dataflow_csv(drawn):
    settings, out, _ = drawn
    rows = read_csv(the_file(out, "fig08", "csv"))
    assert {(r["model"], r["hw"], r["dataflow"]) for r in rows} == {
        (m, hw, df) for m in settings.opt_models for hw in ("cloud", "edge") for df in ("is", "os", "ws")
    }
    for r in rows:
        assert int(r["total_cycles"]) == int(r["matmul_free_cycles"]) + int(r["matmul_cycles"])
        assert r["seq_len"] == "2048"
    os_cloud = {r["model"]: r for r in rows if r["hw"] == "cloud" and r["dataflow"] == "os"}
    fig04 = {r["model"]: r for r in read_csv(the_file(out, "fig04", "csv")) if r["seq_len"] == "2048"}
    for model, row in os_cloud.items():  # the same simulation as the heatmap's OS cells
        assert row["matmul_free_cycles"] == fig04[model]["matmul_free_cycles"]


def test_modern_csv(drawn):
    _, out, _ = drawn
    rows = read_csv(the_file(out, "fig13", "csv"))
    assert {(r["pair"], r["role"], r["model"]) for r in rows} == {
        ("llama-3-8b vs llama-7b", "true", "llama-3-8b"),
        ("llama-3-8b vs llama-7b", "paper", "llama-7b"),
        ("gpt2-medium vs gpt-355m", "true", "gpt2-medium"),
        ("gpt2-medium vs gpt-355m", "paper", "gpt-355m"),
    }
    for r in rows:
        assert float(r["asymptote_projection"]) == pytest.approx(1 / (1 - float(r["frac_cycles"])), rel=1e-5)
    arch = {r["model"]: r["architecture"] for r in rows}
    assert arch["llama-3-8b"] == "GQA 32/8, gated FFN" and arch["llama-7b"] == "MHA, FFN"
    src = {r["model"]: r["source"] for r in rows}
    assert src["llama-3-8b"] == "llama-3-8b.json" and src["llama-7b"] == "paper"


def test_png_metadata_records_the_settings(drawn):
    from PIL import Image

    _, out, _ = drawn
    with Image.open(the_file(out, "fig04", "png")) as im:
        text = im.text
    assert f"backend={BACKEND}" in text["Description"] and "phase=decode" in text["Description"]
    assert "batch=1" in text["Description"] and "hw=cloud" in text["Description"]
    assert "Fig. 4" in text["Title"] and "cloud" in text["Title"]


# --- one simulation for all figures; the scalesim fallback ------------------------------------------


def test_points_of_all_figures_are_simulated_in_one_call(monkeypatch):
    import llm1bit.figures.common as common

    calls = []
    real = common.run_points

    def spy(pts, backend, **kw):
        calls.append(len(pts))
        return real(pts, backend, **kw)

    monkeypatch.setattr(common, "run_points", spy)
    settings = Settings(backend="analytic", **SMALL)
    specs = [FIGURES[n] for n in DEFAULT]
    results = simulate(specs, settings)
    all_points = [p for s in specs for p in s.points(settings)]
    assert calls == [len(set(all_points))] and len(set(all_points)) < len(all_points)
    assert set(results) == set(all_points)


def test_scalesim_falls_back_to_analytic_outside_the_exact_composition():
    edge_ws = points(resolve_models("opt-6.7b"), [load_hardware("edge")], [2048], ["ws"])
    cloud_os = points(resolve_models("opt-350m"), [load_hardware("cloud")], [128], [None])
    assert uncovered_points(edge_ws + cloud_os) == edge_ws
    spec = FigureSpec("figXX", "test", points=lambda s: edge_ws, draw=lambda s, r, o: [])
    settings = Settings(backend="scalesim")
    results = simulate([spec], settings)  # runs no real simulation: every point falls back
    (split,) = results.values()
    assert split.backend == "analytic"
    assert (
        backend_note(settings, [split]) == "scalesim (1 of 1 points analytic: outside the exact composition)"
    )


def test_each_model_has_its_own_fixed_colour():
    for name in PAPER_MODELS:
        assert name in MODEL_COLORS
    assert len(set(MODEL_COLORS.values())) == len(MODEL_COLORS)
    assert model_color("opt-350m") == MODEL_COLORS["opt-350m"]
    assert model_color("my-model") == model_color("my-model")


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    real = Figure.savefig

    def savefig(self, fname, **kw):
        if kw.get("format") == "pdf":
            with open(fname, "wb") as f:
                f.write(b"%PDF-1.4 half")
            raise KeyboardInterrupt
        return real(self, fname, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        make_figures(["fig05"], Settings(backend="analytic", **SMALL), out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fig05-opt-cloud-amdahl-l2048.csv", "fig05-opt-cloud-amdahl-l2048.png"]


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def small_cli(monkeypatch):
    """`llm1bit figures` on the small sweep (the command builds its Settings from llm1bit.figures)."""
    import llm1bit.figures

    monkeypatch.setattr(llm1bit.figures, "Settings", functools.partial(Settings, **SMALL))

    def run(*args):
        return CliRunner().invoke(main, ["figures", *map(str, args)])

    return run


def test_cli_writes_the_selected_figures(small_cli, tmp_path):
    out = tmp_path / "figs" / "sub"
    res = small_cli(
        "--only", "fig5,04", "--backend", BACKEND, "--out", out, "--cache-dir", tmp_path / "cache"
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}"
        for stem in ("fig04-opt-cloud-fractions", "fig05-opt-cloud-amdahl-l2048")
        for ext in ("png", "pdf", "csv")
    )
    assert "fig04:" in res.output and "fig05:" in res.output


def test_cli_phase_and_batch_flow_into_names_and_csvs(small_cli, tmp_path):
    res = small_cli(
        "--only",
        "fig04,fig05",
        "--phase",
        "prefill",
        "--batch",
        4,
        "--backend",
        "analytic",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    heat = tmp_path / "fig04-opt-cloud-fractions-prefill-b4.csv"
    amdahl = tmp_path / "fig05-opt-cloud-amdahl-l2048-prefill-b4.csv"
    assert (tmp_path / "fig04-opt-cloud-fractions-prefill-b4.png").is_file()
    for path in (heat, amdahl):
        assert {(r["phase"], r["batch"]) for r in read_csv(path)} == {("prefill", "4")}
    pts = points(
        resolve_models("opt-350m,opt-1.3b"), [load_hardware("cloud")], [128, 2048], [None], "prefill", 4
    )
    assert heat.read_text() == to_csv(run_points(pts, "analytic"))


def test_cli_unknown_figure_is_one_line(small_cli, tmp_path):
    res = small_cli("--only", "fig04,fig99", "--out", tmp_path / "x")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "unknown figure 'fig99'" in lines[0]
    for name in NAMES:
        assert name in lines[0]
    assert not (tmp_path / "x").exists()


def test_cli_out_must_be_a_folder(small_cli, tmp_path):
    (tmp_path / "file").write_text("x")
    res = small_cli("--only", "fig04", "--out", tmp_path / "file")
    assert res.exit_code != 0 and "Traceback" not in res.output
