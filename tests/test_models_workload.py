import json

import pytest

from llm1bit.errors import UserError
from llm1bit.models import CONFIG_DIR, PAPER_MODELS, load_hf_config, resolve_model, resolve_models
from llm1bit.workload import MATMUL, MATMUL_FREE, build_workload

CONFIGS = CONFIG_DIR  # the HF configs shipped with the package


def test_registry_has_the_paper_models():
    assert (
        list(PAPER_MODELS)
        == (
            "gpt-125m gpt-355m gpt-774m gpt-1.5b opt-350m opt-1.3b opt-2.7b opt-6.7b opt-13b opt-30b opt-66b "
            "llama-7b llama-13b"
        ).split()
    )
    assert PAPER_MODELS["opt-66b"].n_heads == 72 and PAPER_MODELS["opt-66b"].dim_head == 128
    assert PAPER_MODELS["gpt-1.5b"].d_ff == 1600  # the paper's simplification d_FF = d
    assert resolve_models("opt")[0].name == "opt-350m" and len(resolve_models("paper")) == 13


def test_decode_workload_matches_the_study_table():
    m = PAPER_MODELS["opt-1.3b"]
    gemms = build_workload(m, 512)
    per_block = {g.name: (g.part, g.m, g.n, g.k, g.count // m.n_layers) for g in gemms}
    d, h, dff = 2048, 32, 8192
    assert per_block == {
        "q_proj": (MATMUL_FREE, 1, d, d, 1),
        "k_proj": (MATMUL_FREE, 1, d, d, 1),
        "v_proj": (MATMUL_FREE, 1, d, d, 1),
        "out_proj": (MATMUL_FREE, 1, d, d, 1),
        "ffn_in": (MATMUL_FREE, 1, dff, d, 1),
        "ffn_out": (MATMUL_FREE, 1, d, dff, 1),
        "attn_qk": (MATMUL, 1, 512, d // h, h),
        "attn_sv": (MATMUL, 1, d // h, 512, h),
    }
    assert sum(g.count for g in gemms) // m.n_layers == 2 * h + 6


@pytest.mark.parametrize(
    "name, d, h, kv, dff, layers, gated",
    [
        ("opt-125m", 768, 12, 12, 3072, 12, False),
        ("gpt2-medium", 1024, 16, 16, 4096, 24, False),
        ("llama-2-7b", 4096, 32, 32, 11008, 32, True),
        ("llama-3-8b", 4096, 32, 8, 14336, 32, True),
        ("mistral-7b", 4096, 32, 8, 14336, 32, True),
        ("smollm2-135m", 576, 9, 3, 1536, 30, True),
    ],
)
def test_hf_configs_give_the_true_architecture(name, d, h, kv, dff, layers, gated):
    m = load_hf_config(CONFIGS / f"{name}.json")
    assert (m.d_model, m.n_heads, m.kv_heads, m.d_ff, m.n_layers, m.gated_ffn) == (
        d,
        h,
        kv,
        dff,
        layers,
        gated,
    )


def test_gqa_and_gated_ffn_workload():
    m = load_hf_config(CONFIGS / "llama-3-8b.json")
    g = {x.name: x for x in build_workload(m, 1024)}
    assert (g["k_proj"].n, g["v_proj"].n) == (1024, 1024)  # 8 K/V heads of 128
    assert {"gate_proj", "up_proj", "down_proj"} <= set(g)
    assert (g["attn_qk"].m, g["attn_qk"].count) == (4, 8 * 32)  # 4 query heads share each K/V head


def test_real_checkpoint_folder_config(shared_data):
    m = resolve_model(str(shared_data / "models" / "stories260K"))
    assert (m.d_model, m.n_heads, m.kv_heads, m.dim_head, m.d_ff, m.n_layers) == (64, 8, 4, 8, 172, 5)


def test_prefill_and_batch():
    m = PAPER_MODELS["opt-350m"]
    pre = {g.name: g for g in build_workload(m, 256, phase="prefill", batch=2)}
    assert pre["q_proj"].m == 512 and pre["attn_qk"].m == 256 and pre["attn_qk"].count == 16 * 2 * 24
    dec = {g.name: g for g in build_workload(m, 256, batch=4)}
    assert dec["ffn_in"].m == 4 and dec["attn_sv"].count == 16 * 4 * 24


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"model_type": "bert"}', "unsupported model_type 'bert'"),
        (
            '{"model_type": "opt", "hidden_size": 100, "num_attention_heads": 3, "ffn_dim": 4, "num_hidden_layers": 1}',
            "3 heads do not divide d_model = 100",
        ),
        ('{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8}', "missing intermediate_size"),
        (
            '{"model_type": "opt", "hidden_size": -4, "num_attention_heads": 2, "ffn_dim": 4, "num_hidden_layers": 1}',
            "hidden_size = -4 must be a positive integer",
        ),
        (
            '{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 3, '
            '"intermediate_size": 4, "num_hidden_layers": 1}',
            "3 key/value heads must divide",
        ),
    ],
)
def test_malformed_configs_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_hf_config(tmp_path)


def test_unknown_model_suggests_the_closest():
    with pytest.raises(UserError) as err:
        resolve_model("opt-6.7")
    assert "did you mean opt-6.7b" in str(err.value) and "llama-13b" in str(err.value)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_lengths(bad):
    with pytest.raises(UserError):
        build_workload(PAPER_MODELS["opt-350m"], bad)


def test_configs_are_json():
    for path in CONFIGS.glob("*.json"):
        json.loads(path.read_text())
