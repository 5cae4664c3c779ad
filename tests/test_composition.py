"""The scalesim backend composes small real SCALE-Sim runs; it must equal whole-GEMM runs exactly."""

import pytest

from llm1bit.backends import scalesim as composed
from llm1bit.backends.scalesim_runner import run_whole
from llm1bit.engine import evaluate
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware, load_hardware

# Shapes with >= 3 steps along the mapped and streamed dimensions (temporal unit 16 below), partial
# last steps, exact multiples, and several row folds (prefill-like M > rows).
EDGE_SHAPES = [
    (1, 200, 300),
    (1, 97, 1000),
    (1, 64, 64),
    (1, 128, 100),
    (3, 130, 70),
    (40, 100, 90),
    (70, 33, 150),
    (96, 96, 48),
]
CLOUD_SHAPES = {
    "os": [(1, 800, 100), (1, 1000, 70), (2, 768, 33)],
    "ws": [(1, 300, 800), (1, 600, 1100), (20, 40, 900)],
    "is": [(1, 50, 800), (2, 70, 1030), (300, 20, 100)],
}
TINY = Hardware("tiny", rows=8, cols=4, ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=256)


def _compare(shapes, hw):
    got = evaluate([(s, hw) for s in shapes], "scalesim", jobs=2, temporal_unit=16)
    whole = run_whole(shapes, hw)
    for shape, expected in zip(shapes, whole):
        assert len(composed.plan(*shape, hw, 16)) >= 1
        assert got[(shape, hw)] == expected, f"{hw.name} {hw.dataflow} {shape}"


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_composition_equals_whole_run_edge(dataflow):
    _compare(EDGE_SHAPES, load_hardware("edge", dataflow))


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_composition_equals_whole_run_nonsquare(dataflow):
    _compare(EDGE_SHAPES, TINY.with_dataflow(dataflow))


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_composition_equals_whole_run_cloud(dataflow):
    _compare(CLOUD_SHAPES[dataflow], load_hardware("cloud", dataflow))


def test_composition_really_splits():
    """The plans used above are not trivially whole runs."""
    hw = load_hardware("edge")
    pieces = composed.plan(1, 200, 300, hw, 16)
    assert len(pieces) == 4 and all(p.shape[1] < 200 and p.shape[2] < 300 for p in pieces)
    assert sum(p.weight for p in pieces) == 1


def test_real_model_products_compose_exactly():
    """OPT-6.7B's attention products at l = 2048 (and a 1.3B-sized projection on the edge array)."""
    cloud = load_hardware("cloud")
    _compare([(1, 2048, 128), (1, 128, 2048)], cloud)
    edge = load_hardware("edge")
    got = evaluate([((1, 2048, 512), edge)], "scalesim")  # default temporal unit 1024
    assert got[((1, 2048, 512), edge)] == run_whole([(1, 2048, 512)], edge)[0]


def test_outside_the_exact_regime_is_refused():
    small = Hardware("small", rows=8, cols=4, ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=64)
    with pytest.raises(UserError, match="ifmap operand .* re-read"):
        evaluate([((40, 100, 90), small)], "scalesim")
    small_out = Hardware("small", rows=8, cols=4, ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=1)
    with pytest.raises(UserError, match="output writes overflow"):
        evaluate([((1, 2000, 40), small_out)], "scalesim")
