"""`--backend scalesim` (real SCALE-Sim, composed) and `--backend analytic` give identical totals."""

import pytest

from llm1bit.cache import ResultCache
from llm1bit.hardware import load_hardware
from llm1bit.models import CONFIG_DIR, resolve_models
from llm1bit.sweep import points, run_points


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ResultCache(tmp_path_factory.mktemp("agree-cache"))


@pytest.mark.parametrize("hw", ["cloud", "edge"])
def test_all_paper_models_decode_os(hw, cache):
    pts = points(resolve_models("paper"), [load_hardware(hw)], [128, 4096], [None])
    real = run_points(pts, "scalesim", cache=cache, jobs=2)
    closed = run_points(pts, "analytic")
    for r, c in zip(real, closed):
        assert [x.counters for x in r.layers] == [x.counters for x in c.layers], r.model.name
        assert r.totals == c.totals


@pytest.mark.parametrize("dataflow", ["ws", "is"])
def test_other_dataflows_and_true_architectures(dataflow, cache):
    models = resolve_models(f"opt-350m,gpt-125m,{CONFIG_DIR / 'smollm2-135m.json'}")
    pts = points(models, [load_hardware("cloud"), load_hardware("edge")], [256, 2048], [dataflow])
    real = run_points(pts, "scalesim", cache=cache, jobs=2)
    closed = run_points(pts, "analytic")
    for r, c in zip(real, closed):
        assert r.totals == c.totals, (r.model.name, r.hw.name, r.seq_len)
