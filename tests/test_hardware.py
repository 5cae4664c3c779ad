import dataclasses

import pytest

from llm1bit.errors import UserError
from llm1bit.hardware import Hardware, load_hardware, read_cfg


def test_builtin_configs_are_the_papers():
    cloud, edge = load_hardware("cloud"), load_hardware("edge")
    assert (cloud.rows, cloud.cols, cloud.ifmap_sram_kb, cloud.filter_sram_kb, cloud.ofmap_sram_kb) == (
        256,
        256,
        4096,
        8192,
        4096,
    )
    assert (edge.rows, edge.cols, edge.ifmap_sram_kb, edge.filter_sram_kb, edge.ofmap_sram_kb) == (
        32,
        32,
        2048,
        4096,
        2048,
    )
    assert cloud.dataflow == edge.dataflow == "os" and cloud.bandwidth_mode == "CALC"


def test_dataflow_override_and_fingerprint():
    os_, ws = load_hardware("cloud"), load_hardware("cloud", "ws")
    assert ws.dataflow == "ws" and os_.fingerprint() != ws.fingerprint()
    assert load_hardware("edge").fingerprint() != os_.fingerprint()


def test_cfg_round_trip(tmp_path):
    hw = Hardware("tiny", 8, 4, 3, 5, 7, dataflow="is")
    path = tmp_path / "tiny.cfg"
    path.write_text(hw.to_cfg())
    assert read_cfg(path) == hw
    loaded = load_hardware(str(path))
    # labelled by the path given (not the file's run_name), with the file it came from
    assert loaded == dataclasses.replace(hw, name=str(path), source=str(path.resolve()))
    assert loaded.fingerprint() == hw.fingerprint()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda t: t.replace("ArrayHeight: 8", "ArrayHeight: eight"),
            "ArrayHeight = 'eight' is not an integer",
        ),
        (lambda t: t.replace("ArrayHeight: 8\n", ""), "lacks ArrayHeight"),
        (lambda t: t.replace("Dataflow: is", "Dataflow: xs"), "Dataflow 'xs'"),
        (lambda t: t.replace("[run_presets]", "[other]"), r"missing section \[run_presets\]"),
        (lambda t: t.replace("ArrayWidth: 4", "ArrayWidth: 0"), "ArrayWidth = 0 must be >= 1"),
        (lambda t: "garbage without sections", "malformed hardware config"),
    ],
)
def test_malformed_cfg(tmp_path, mutate, message):
    path = tmp_path / "bad.cfg"
    path.write_text(mutate(Hardware("tiny", 8, 4, 3, 5, 7, dataflow="is").to_cfg()))
    with pytest.raises(UserError, match=message):
        read_cfg(path)


def test_unknown_hardware():
    with pytest.raises(UserError, match="unknown hardware 'cluod'"):
        load_hardware("cluod")
    with pytest.raises(UserError, match="unknown dataflow 'xs'"):
        load_hardware("cloud", "xs")
