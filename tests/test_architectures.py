"""Today's architectures read from their published config.json (tests/hf_configs/SOURCES.md says where each
copy came from): every product's shape and count, and the MACs per token, written out by hand from the
config's numbers (MoE: attention projections + router + k routed experts + shared experts, per layer type)."""

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.errors import UserError
from llm1bit.models import CONFIG_DIR, load_hf_config
from llm1bit.workload import MATMUL_FREE, build_workload, expert_loads

TESTS = Path(__file__).resolve().parent / "hf_configs"


def products(path, seq_len=4096, batch=1, phase="decode"):
    """{name: (M, N, K, count)}, counts of one shape summed over layer groups (dense / MoE blocks); a name
    with several shapes (experts at several loads) maps to a list [(M, N, K, count), ...]."""
    out: dict = {}
    for g in build_workload(load_hf_config(path), seq_len, phase, batch):
        shapes = out.setdefault(g.name, {})
        shapes[g.shape] = shapes.get(g.shape, 0) + g.count
    return {
        name: [(*s, c) for s, c in shapes.items()]
        if len(shapes) > 1
        else (*next(iter(shapes)), *shapes.values())
        for name, shapes in out.items()
    }


def macs_per_token(path, batch=1):
    gemms = build_workload(load_hf_config(path), 4096, batch=batch)
    return sum(g.m * g.n * g.k * g.count for g in gemms if g.part == MATMUL_FREE) / batch


def test_mixtral_8x7b():
    p = (
        CONFIG_DIR / "mixtral-8x7b-v0.1.json"
    )  # d 4096, 32 heads / 8 KV of 128, 8 experts of 14336, top-2, 32 layers
    got = products(p)
    assert got["q_proj"] == (1, 4096, 4096, 32) and got["k_proj"] == (1, 1024, 4096, 32)
    assert got["out_proj"] == (1, 4096, 4096, 32) and got["router"] == (1, 8, 4096, 32)
    # batch 1: exactly 2 experts per layer read, 1 token each
    assert got["expert.gate_proj"] == (1, 14336, 4096, pytest.approx(64))
    assert got["expert.down_proj"] == (1, 4096, 14336, pytest.approx(64))
    assert got["attn_qk"] == (4, 4096, 128, 8 * 32) and got["attn_sv"] == (4, 128, 4096, 8 * 32)
    assert "gate_proj" not in got  # every layer is sparse
    attention = 2 * 4096 * 4096 + 2 * 1024 * 4096
    assert macs_per_token(p) == pytest.approx(32 * (attention + 8 * 4096 + 2 * 3 * 14336 * 4096), rel=1e-12)


def test_moe_batch_reads_the_expected_distinct_experts():
    p = CONFIG_DIR / "mixtral-8x7b-v0.1.json"
    experts = products(p, batch=16)["expert.up_proj"]
    loads = {m: count for m, _, _, count in experts}
    assert set(loads) == set(range(1, 17))
    # E (1 - (1 - k/E)^B) distinct experts per layer; B k tokens routed per layer
    assert sum(loads.values()) == pytest.approx(32 * 8 * (1 - (1 - 2 / 8) ** 16), rel=1e-12)
    assert sum(m * c for m, c in loads.items()) == pytest.approx(32 * 16 * 2, rel=1e-12)
    assert loads[3] == pytest.approx(32 * 8 * math.comb(16, 3) * 0.25**3 * 0.75**13, rel=1e-12)
    attention = 2 * 4096 * 4096 + 2 * 1024 * 4096
    assert macs_per_token(p, 16) == pytest.approx(
        32 * (attention + 8 * 4096 + 2 * 3 * 14336 * 4096), rel=1e-12
    )
    # prefill: the mean load split between floor and ceil, MACs still exact
    pre = expert_loads(4096 * 2, 128, 8)
    assert sum(j * w for j, w in pre) == pytest.approx(4096 * 2 * 8, rel=1e-12) and len(pre) <= 2


def test_qwen3_30b_a3b():
    p = (
        CONFIG_DIR / "qwen3-30b-a3b.json"
    )  # d 2048, 32 heads / 4 KV of head_dim 128, 128 experts of 768, top-8, 48 layers
    got = products(p)
    assert got["q_proj"] == (1, 32 * 128, 2048, 48) and got["k_proj"] == (1, 4 * 128, 2048, 48)
    assert got["out_proj"] == (1, 2048, 4096, 48) and got["router"] == (1, 128, 2048, 48)
    assert got["expert.gate_proj"] == (1, 768, 2048, pytest.approx(48 * 8))
    assert got["attn_qk"] == (8, 4096, 128, 4 * 48)
    attention = 2 * 4096 * 2048 + 2 * 512 * 2048
    assert macs_per_token(p) == pytest.approx(48 * (attention + 128 * 2048 + 8 * 3 * 768 * 2048), rel=1e-12)


@pytest.mark.parametrize(
    "name, d, heads, kv, layers, experts, top_k, ff, shared",
    [
        ("qwen1.5-moe-a2.7b.json", 2048, 16, 16, 24, 60, 4, 1408, 5632),
        ("qwen2-57b-a14b.json", 3584, 28, 4, 28, 64, 8, 2560, 20480),
    ],
)
def test_qwen2_moe(name, d, heads, kv, layers, experts, top_k, ff, shared):
    got = products(TESTS / name)
    dh = d // heads
    assert got["k_proj"] == (1, kv * dh, d, layers) and got["router"] == (1, experts, d, layers)
    assert got["shared_expert.up_proj"] == (1, shared, d, layers) and got["shared_expert_gate"] == (
        1,
        1,
        d,
        layers,
    )
    assert got["expert.down_proj"] == (1, d, ff, pytest.approx(layers * top_k))
    attention = 2 * d * heads * dh + 2 * d * kv * dh
    per_layer = attention + experts * d + top_k * 3 * ff * d + 3 * shared * d + d
    assert macs_per_token(TESTS / name) == pytest.approx(layers * per_layer, rel=1e-12)


def test_deepseek_v2_lite_absorbed_and_expanded():
    p = (
        CONFIG_DIR / "deepseek-v2-lite.json"
    )  # d 2048, 16 heads, kv_lora 512, nope 128, rope 64, v 128, 27 layers
    got = products(p)
    assert got["q_proj"] == (1, 16 * 192, 2048, 27) and got["kv_a_proj_with_mqa"] == (1, 512 + 64, 2048, 27)
    assert got["q_absorb"] == (1, 512, 128, 27 * 16) and got["o_absorb"] == (1, 128, 512, 27 * 16)
    assert got["out_proj"] == (1, 2048, 16 * 128, 27)
    assert got["gate_proj"] == (1, 10944, 2048, 1)  # first_k_dense_replace = 1 dense layer
    assert got["router"] == (1, 64, 2048, 26) and got["shared_experts.up_proj"] == (1, 2 * 1408, 2048, 26)
    assert got["expert.up_proj"] == (1, 1408, 2048, pytest.approx(26 * 6))
    # absorbed: all 16 heads over the one latent cache of 512 + 64 per token
    assert got["attn_qk"] == (16, 4096, 576, 27) and got["attn_sv"] == (16, 512, 4096, 27)
    attention = 16 * 192 * 2048 + 576 * 2048 + 16 * 512 * 128 + 16 * 128 * 512 + 2048 * 2048
    moe = 64 * 2048 + 6 * 3 * 1408 * 2048 + 3 * 2816 * 2048
    assert macs_per_token(p) == pytest.approx(27 * attention + 3 * 10944 * 2048 + 26 * moe, rel=1e-12)
    res = CliRunner().invoke(
        main, ["simulate", "--model", str(p), "--mla", "expanded", "--backend", "analytic", "--json"]
    )
    layers = {x["name"]: x for x in json.loads(res.stdout)["layers"]}
    assert (layers["kv_b_proj"]["N"], layers["kv_b_proj"]["K"]) == (16 * (128 + 128), 512)
    assert (layers["attn_qk"]["M"], layers["attn_qk"]["K"], layers["attn_qk"]["count"]) == (1, 192, 16 * 27)
    assert (layers["attn_sv"]["N"], layers["attn_sv"]["K"]) == (128, 2048)


def test_deepseek_v3():
    got = products(
        TESTS / "deepseek-v3.json"
    )  # q_lora 1536, 128 heads, 61 layers, 3 dense, 256 experts top-8
    assert got["q_a_proj"] == (1, 1536, 7168, 61) and got["q_b_proj"] == (1, 128 * 192, 1536, 61)
    assert got["down_proj"] == (1, 7168, 18432, 3) and got["router"] == (1, 256, 7168, 58)
    assert got["shared_experts.gate_proj"] == (1, 2048, 7168, 58)
    assert got["expert.gate_proj"] == (1, 2048, 7168, pytest.approx(58 * 8))


def test_gemma_families():
    g2 = products(
        CONFIG_DIR / "gemma-2-9b-it.json", seq_len=8192
    )  # 42 layers, 16 heads / 8 KV of 256, window 4096
    assert g2["q_proj"] == (1, 16 * 256, 3584, 42) and g2["gate_proj"] == (1, 14336, 3584, 42)
    assert g2["attn_qk"] == (2, 8192, 256, 8 * 21) and g2["attn_qk_swa"] == (2, 4096, 256, 8 * 21)
    g3 = products(TESTS / "gemma-3-1b-it.json")  # 26 layers, MQA 4/1 of 256, window 512, pattern 6
    assert g3["attn_qk"] == (4, 4096, 256, 4) and g3["attn_qk_swa"] == (4, 512, 256, 22)
    wrapped = load_hf_config(
        TESTS / "gemma-3-4b-it.json"
    )  # text_config; heads from Gemma3TextConfig defaults
    assert (wrapped.n_layers, wrapped.n_heads, wrapped.kv_heads, wrapped.dim_head) == (34, 8, 4, 256)
    assert sum(w == 1024 for w in wrapped.windows) == 29


def test_gemma_1_from_its_config_class(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "config.json"  # GemmaConfig's defaults are Gemma-7B's shape (its docstring)
    path.write_text(json.dumps(transformers.GemmaConfig().to_dict()))
    got = products(path)
    assert got["q_proj"] == (1, 16 * 256, 3072, 28) and got["down_proj"] == (1, 3072, 24576, 28)
    assert "attn_qk_swa" not in got


def test_phi3_fused():
    got = products(TESTS / "phi-3-mini-4k-instruct.json")  # d 3072, 32 heads of 96, ff 8192, window 2047
    assert got["qkv_proj"] == (1, 3 * 3072, 3072, 32) and got["gate_up_proj"] == (1, 2 * 8192, 3072, 32)
    assert got["down_proj"] == (1, 3072, 8192, 32) and got["attn_qk_swa"] == (1, 2047, 96, 32 * 32)


@pytest.mark.parametrize(
    "name, d, heads, kv, layers, ff",
    [
        ("pythia-6.9b.json", 4096, 32, 32, 32, 16384),
        ("falcon-7b.json", 4544, 71, 1, 32, 4 * 4544),  # multi_query: one K/V head
        ("falcon-40b.json", 8192, 128, 8, 60, 4 * 8192),  # new_decoder_architecture, num_kv_heads 8
        ("bloom-560m.json", 1024, 16, 16, 24, 4 * 1024),
    ],
)
def test_fused_qkv_families(name, d, heads, kv, layers, ff):
    got = products(TESTS / name)
    dh = d // heads
    assert got["qkv_proj"] == (1, (heads + 2 * kv) * dh, d, layers) and got["out_proj"] == (1, d, d, layers)
    assert got["ffn_in"] == (1, ff, d, layers) and got["ffn_out"] == (1, d, ff, layers)
    assert got["attn_qk"] == (heads // kv, 4096, dh, kv * layers)
    assert macs_per_token(TESTS / name) == layers * ((heads + 2 * kv) * dh * d + d * d + 2 * ff * d)


def test_unsupported_type_names_its_text_config(tmp_path):
    path = tmp_path / "config.json"
    llama = json.loads((CONFIG_DIR / "llama-3.1-8b.json").read_text())
    path.write_text(json.dumps({"model_type": "llava", "text_config": llama}))
    with pytest.raises(
        UserError, match="unsupported model_type 'llava'.*text_config holds a supported 'llama'"
    ):
        load_hf_config(path)
    path.write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(UserError, match="unsupported model_type 'mamba'"):
        load_hf_config(path)


def test_fig13_moe_panel(tmp_path):
    import csv

    from llm1bit.figures.common import Settings
    from llm1bit.figures.moe import moe_points
    from llm1bit.sweep import run_points

    res = CliRunner().invoke(main, ["figures", "--only", "fig13", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "fig13-moe.csv").open()))
    assert len(rows) == 5 * 2 * 2
    pts = moe_points(Settings())
    splits = {(p.model.name, p.hw.name, p.batch): s for p, s in zip(pts, run_points(pts, "analytic"))}
    for r in rows:
        split = splits[(r["model"], r["hw"], int(r["batch"]))]
        assert float(r["frac_cycles"]) == split.frac_cycles and float(r["frac_time"]) == split.frac_time
        shares = [float(v) for k, v in r.items() if k.startswith("cycles_share_")]
        assert sum(shares) == pytest.approx(1.0)
        moe = "MoE" in r["architecture"]
        assert (float(r["cycles_share_expert"]) > 0) == moe and (float(r["cycles_share_router"]) > 0) == moe
