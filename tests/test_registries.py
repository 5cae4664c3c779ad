"""The registries: backends, dataflows and weight formats are each listed once, and everything reads them."""

from __future__ import annotations

import sys
import types

import click
import pytest

from llm1bit import backends
from llm1bit.backends import BACKENDS, get_backend
from llm1bit.cli import main
from llm1bit.dataflows import DATAFLOW_TABLE, DATAFLOWS, PER_COL_FOLD, PER_ROW_FOLD, dataflow
from llm1bit.engine import evaluate
from llm1bit.errors import UserError
from llm1bit.hardware import load_hardware
from llm1bit.models import resolve_model
from llm1bit.phases import PHASES
from llm1bit.sweep import points, run_points
from llm1bit.weight_formats import DOCUMENTED_WIDTHS, WEIGHT_FORMATS, default_format, weight_format


def _choices(command: str, option: str) -> list[str]:
    cmd = main.get_command(click.Context(main), command)
    (param,) = [p for p in cmd.params if option in p.opts]
    return list(param.type.choices)


@pytest.mark.parametrize("command", ["simulate", "sweep", "amdahl", "figures"])
def test_every_backend_option_lists_the_registry_default_first(command):
    choices = _choices(command, "--backend")
    assert sorted(choices) == sorted(BACKENDS)
    cmd = main.get_command(click.Context(main), command)
    (param,) = [p for p in cmd.params if "--backend" in p.opts]
    assert choices[0] == param.default


@pytest.mark.parametrize("command", ["simulate", "sweep", "amdahl", "figures", "topology"])
def test_phase_and_dataflow_options_read_their_tables(command):
    assert tuple(_choices(command, "--phase")) == PHASES
    if command in ("simulate", "amdahl"):
        assert tuple(_choices(command, "--dataflow")) == DATAFLOWS


def test_unknown_backend_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown backend 'scalesm' \(did you mean scalesim\?\)"):
        get_backend("scalesm")


def test_a_registered_backend_is_all_it_takes(monkeypatch):
    """A new backend: a module with a BACKEND object and one registry line; evaluate and run_points use it."""

    class Doubled:
        name, stored, fallback, install = "doubled", False, None, ""

        def available(self) -> bool:
            return True

        def check(self, shape, hw) -> None:
            return None

        def counters(self, pairs, runs=None):
            analytic = get_backend("analytic").counters(pairs)
            return {pair: c * 2 for pair, c in analytic.items()}

    module = types.ModuleType("llm1bit_test_doubled")
    module.BACKEND = Doubled()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(backends.REGISTRY, "doubled", f"{module.__name__}:BACKEND")
    hw = load_hardware("edge")
    pair = ((1, 64, 64), hw)
    assert evaluate([pair], "doubled")[pair] == evaluate([pair], "analytic")[pair] * 2
    (split,) = run_points(points([resolve_model("gpt-125m")], [hw], [128], [None]), "doubled")
    assert split.backend == "doubled" and split.totals["matmul"].cycles > 0


def test_an_unavailable_backend_says_what_to_install(monkeypatch):
    scalesim = get_backend("scalesim")
    monkeypatch.setattr(type(scalesim), "available", lambda self: False)
    with pytest.raises(UserError, match="backend scalesim is not installed here: pip install scalesim"):
        evaluate([((1, 8, 8), load_hardware("edge"))], "scalesim")


def test_dataflow_table_derives_what_the_closed_form_reads():
    """The mapping alone decides which operand each fold loop brings back (the analytic module's table)."""
    os_, ws, is_ = (DATAFLOW_TABLE[name] for name in ("os", "ws", "is"))
    assert os_.passes == (PER_COL_FOLD, PER_ROW_FOLD, 0) and os_.stationary == "ofmap" and not os_.preloads
    assert ws.passes == (PER_COL_FOLD, 0, PER_ROW_FOLD) and ws.stationary == "filter" and ws.preloads
    assert is_.passes == (0, PER_COL_FOLD, PER_ROW_FOLD) and is_.stationary == "ifmap" and is_.preloads
    assert [f.step_units(8, 4, 100) for f in (os_, ws, is_)] == [(8, 4, 100), (100, 4, 8), (4, 100, 8)]
    assert ws.folds(3, 9, 17, 8, 4) == (3, 3)  # K over 8 rows, N over 4 columns
    with pytest.raises(UserError, match="unknown dataflow 'xs'"):
        dataflow("xs")


def test_weight_formats_know_their_widths():
    for bits in DOCUMENTED_WIDTHS:
        weight_format(default_format(bits)).check(bits)  # each documented width fits its default format
    refusals = {"fp": 4, "int": 1.58, "bcq-lat": 9, "bcq-acc": 2.5, "ternary": 2, "binary": 2}
    for name, bits in refusals.items():
        with pytest.raises(UserError, match=f"weight format {name} cannot hold"):
            weight_format(name).check(bits)
    weight_format("raw").check(3.3)
    assert list(WEIGHT_FORMATS) == ["fp", "int", "bcq-lat", "bcq-acc", "ternary", "binary", "raw"]
    with pytest.raises(UserError, match=r"unknown weight format 'bcq_lat' \(did you mean bcq-lat"):
        weight_format("bcq_lat")


def test_weight_formats_cost_what_their_kind_needs():
    """fp / raw multiply, binary / ternary add, int dequantizes, BCQ queries LUTs and shifts."""
    widths = {"fp": 16, "int": 4, "bcq-lat": 3, "bcq-acc": 3, "ternary": 1.58, "binary": 1, "raw": 16}
    ops = {name: fmt.ops(widths[name], 16, 1, 64, 64) for name, fmt in WEIGHT_FORMATS.items()}
    assert set(ops["fp"]) == {"fp16_mult", "fp16_add"}
    assert "fp16_mult" not in {k for k, v in ops["binary"].items() if v == 64 * 64}  # no multiply per weight
    assert ops["int"]["fp16_mult"] == 64 * 64 + 64 * 64  # dequantize each weight, then the MACs
    assert {"lut_query", "int16_shift"} <= set(ops["bcq-lat"]) and {"lut_query"} <= set(ops["bcq-acc"])
    assert WEIGHT_FORMATS["int"].bits_moved(4, 4096, 4096) == 4.25
