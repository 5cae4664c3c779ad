"""The real-SCALE-Sim sweep reproduces the study's Fig. 4a (cloud, OPT, MatMul-free share of cycles)."""

from llm1bit.cache import ResultCache
from llm1bit.hardware import load_hardware
from llm1bit.models import resolve_models
from llm1bit.sweep import points, run_points

# The paper's published numbers (matmul-study.md), used only as the test's target.
PAPER_FIG4A = {
    128: [0.777, 0.858, 0.900, 0.955, 0.963, 0.973, 0.978],
    256: [0.759, 0.845, 0.891, 0.950, 0.959, 0.970, 0.976],
    512: [0.661, 0.771, 0.834, 0.921, 0.935, 0.952, 0.962],
    1024: [0.524, 0.656, 0.739, 0.868, 0.890, 0.917, 0.934],
    2048: [0.371, 0.505, 0.603, 0.778, 0.812, 0.855, 0.883],
    4096: [0.234, 0.346, 0.440, 0.645, 0.690, 0.754, 0.795],
}


def test_opt_cloud_sweep_reproduces_fig4a(tmp_path):
    models = resolve_models("opt")
    pts = points(models, [load_hardware("cloud")], list(PAPER_FIG4A), [None])
    splits = run_points(pts, "scalesim", cache=ResultCache(tmp_path), jobs=2)
    got = {(s.model.name, s.seq_len): s for s in splits}
    for seq_len, row in PAPER_FIG4A.items():
        for model, expected in zip(models, row):
            assert abs(got[(model.name, seq_len)].frac_cycles - expected) <= 0.001, (model.name, seq_len)
    # Stated in the text: memory-access fractions at l = 2048 of 0.74 (OPT-350M) and 0.96 (OPT-66B).
    assert round(got[("opt-350m", 2048)].frac_memory, 2) == 0.74
    assert round(got[("opt-66b", 2048)].frac_memory, 2) == 0.96

    # A re-run is served from the cache: no simulator run at all.
    calls = []
    run_points(
        pts, "scalesim", cache=ResultCache(tmp_path), jobs=2, progress=lambda done, total: calls.append(total)
    )
    assert calls == [0]
