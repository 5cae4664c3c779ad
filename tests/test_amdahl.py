"""Amdahl's law of LLMs: the maths, and `llm1bit amdahl` (JSON, tables, --s-range, --plot, bad input)."""

import importlib.util
import json
import math

import pytest
from click.testing import CliRunner

from llm1bit.amdahl import AmdahlCurve, asymptote, overall_speedup, parse_s_partial
from llm1bit.cli import main
from llm1bit.errors import UserError

# The closed form while it exists (seconds); the real simulator with a private cache otherwise.
BACKEND = "analytic" if importlib.util.find_spec("llm1bit.backends.analytic") else "scalesim"
S_VALUES = (0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1e6)


def projection(f, s):
    return 1.0 / ((1.0 - f) + f / s)


def attention(f, s):
    return 1.0 / (f + (1.0 - f) / s)


def run(*args, tmp_path=None):
    extra = ["--backend", BACKEND] + (["--cache-dir", str(tmp_path / "cache")] if tmp_path else [])
    return CliRunner().invoke(main, ["amdahl", *map(str, args), *extra], env={"COLUMNS": "200"})


# --- the maths ---------------------------------------------------------------------------------


def test_f_zero_projections_do_nothing_attention_gets_everything():
    curve = AmdahlCurve(0.0, S_VALUES)
    assert curve.side("projection") == pytest.approx([1.0] * len(S_VALUES))
    assert curve.side("attention") == pytest.approx(list(S_VALUES))


def test_f_one_is_the_reverse():
    curve = AmdahlCurve(1.0, S_VALUES)
    assert curve.side("projection") == pytest.approx(list(S_VALUES))
    assert curve.side("attention") == pytest.approx([1.0] * len(S_VALUES))


@pytest.mark.parametrize("f", [0.0, 0.2, 0.371, 0.5, 0.883, 1.0])
def test_no_speedup_gives_no_speedup(f):
    curve = AmdahlCurve(f, (1.0,))
    assert curve.side("projection") == [pytest.approx(1.0)]
    assert curve.side("attention") == [pytest.approx(1.0)]


def test_hand_computed_values():
    # F = 0.75, S = 4: projections 1 / (0.25 + 0.1875) = 1 / 0.4375; attention 1 / (0.75 + 0.0625) = 1 / 0.8125
    assert overall_speedup(0.75, 4.0) == pytest.approx(16 / 7)
    curve = AmdahlCurve(0.75, (4.0,))
    assert curve.side("projection") == [pytest.approx(16 / 7)]
    assert curve.side("attention") == [pytest.approx(16 / 13)]
    # F = 0.8, S = 10: 1 / (0.2 + 0.08) = 3.5714...
    assert overall_speedup(0.8, 10) == pytest.approx(1 / 0.28)


@pytest.mark.parametrize("f", [0.1, 0.371, 0.9])
def test_curves_match_the_formula_and_approach_the_asymptotes(f):
    curve = AmdahlCurve(f, S_VALUES)
    assert curve.side("projection") == pytest.approx([projection(f, s) for s in S_VALUES])
    assert curve.side("attention") == pytest.approx([attention(f, s) for s in S_VALUES])
    assert curve.asymptote("projection") == pytest.approx(1 / (1 - f))
    assert curve.asymptote("attention") == pytest.approx(1 / f)
    assert curve.side("projection")[-1] == pytest.approx(curve.asymptote("projection"), rel=1e-5)
    assert curve.side("attention")[-1] == pytest.approx(curve.asymptote("attention"), rel=1e-5)


def test_asymptotes_at_the_ends():
    assert asymptote(1.0) == math.inf
    assert asymptote(0.0) == 1.0
    assert AmdahlCurve(1.0, (2.0,)).asymptote("projection") == math.inf
    assert AmdahlCurve(1.0, (2.0,)).asymptote("attention") == 1.0
    assert AmdahlCurve(0.0, (2.0,)).asymptote("attention") == math.inf


def test_bad_fraction_and_speed_are_user_errors():
    for f, s in ((-0.1, 2.0), (1.1, 2.0), (0.5, 0.0), (0.5, -1.0), (0.5, math.inf), (0.5, math.nan)):
        with pytest.raises(UserError):
            overall_speedup(f, s)


def test_s_range_is_log_spaced_and_inclusive():
    speeds = parse_s_partial(None, "1:100:5")
    assert speeds == pytest.approx((1.0, 10**0.5, 10.0, 10**1.5, 100.0))
    assert len(parse_s_partial(None, "1:100")) == 25
    assert parse_s_partial("1, 2,5", None) == (1.0, 2.0, 5.0)


# --- the command ---------------------------------------------------------------------------------


def test_json_agrees_with_the_formula_for_its_own_fraction(tmp_path):
    res = run(
        "--model", "opt-1.3b", "--hw", "cloud", "--s-partial", "1,2,5,10,100", "--json", tmp_path=tmp_path
    )
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output)
    f = obj["fraction"]
    assert 0.0 < f < 1.0
    assert (obj["model"], obj["hw"], obj["seq_len"], obj["metric"], obj["backend"]) == (
        "opt-1.3b",
        "cloud",
        2048,
        "cycles",
        BACKEND,
    )
    for side, formula in (("projection", projection), ("attention", attention)):
        points = obj[side]
        assert [p["s_partial"] for p in points] == [1.0, 2.0, 5.0, 10.0, 100.0]
        for p in points:
            assert p["s_total"] == pytest.approx(formula(f, p["s_partial"]), rel=1e-12)
    assert obj["asymptote"]["projection"] == pytest.approx(1 / (1 - f))
    assert obj["asymptote"]["attention"] == pytest.approx(1 / f)


def test_json_fraction_is_the_simulated_one(tmp_path):
    sim = CliRunner().invoke(
        main,
        [
            "simulate",
            "--model",
            "opt-350m",
            "--hw",
            "edge",
            "--seq-len",
            "512",
            "--json",
            "--backend",
            BACKEND,
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert sim.exit_code == 0, sim.output
    res = run(
        "--model",
        "opt-350m",
        "--hw",
        "edge",
        "--seq-len",
        512,
        "--json",
        "--metric",
        "memory",
        tmp_path=tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fraction"] == pytest.approx(json.loads(sim.output)["fraction"]["memory"])


def test_several_models_give_a_list_and_tables(tmp_path):
    res = run("--model", "opt-350m,opt-1.3b", "--s-range", "1:100:7", "--json", tmp_path=tmp_path)
    assert res.exit_code == 0, res.output
    objs = json.loads(res.output)
    assert [o["model"] for o in objs] == ["opt-350m", "opt-1.3b"]
    for obj in objs:
        speeds = [p["s_partial"] for p in obj["projection"]]
        assert len(speeds) == 7
        assert speeds[0] == pytest.approx(1.0) and speeds[-1] == pytest.approx(100.0)
        for p in obj["projection"]:
            assert p["s_total"] == pytest.approx(projection(obj["fraction"], p["s_partial"]))
    table = run("--model", "opt-350m,opt-1.3b", tmp_path=tmp_path)
    assert table.exit_code == 0, table.output
    assert "opt-350m" in table.output and "opt-1.3b" in table.output and "asymptote" in table.output


@pytest.mark.parametrize("ext", ["png", "pdf", "svg"])
def test_plot_writes_the_file(tmp_path, ext):
    out = tmp_path / f"amdahl.{ext}"
    res = run(
        "--model", "opt-350m,opt-66b", "--hw", "edge", "--s-range", "1:100", "--plot", out, tmp_path=tmp_path
    )
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000
    if ext == "png":
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [out.name]  # no temp files left


@pytest.mark.parametrize(
    "args, words",
    [
        (["--s-partial", "0"], "must be > 0"),
        (["--s-partial", "-2"], "must be > 0"),
        (["--s-partial", "abc"], "not a number"),
        (["--s-partial", "2", "--s-range", "1:10"], "not both"),
        (["--s-range", "10:1"], "--s-range"),
        (["--s-range", "x"], "--s-range"),
        (["--s-range", "1:100:z"], "--s-range"),
        (["--plot", "out.txt"], ".png"),
        (["--seq-len", "0"], "--seq-len"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, args, words):
    res = run("--model", "opt-350m", *args, tmp_path=tmp_path)
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    assert words in lines[0]
