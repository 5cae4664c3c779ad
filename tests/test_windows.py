"""Sliding-window attention: read per layer from the config as transformers applies it, simulated over min(l, W)."""

import json

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.errors import UserError
from llm1bit.hardware import load_hardware
from llm1bit.models import CONFIG_DIR, load_hf_config
from llm1bit.sweep import Point, run_points
from llm1bit.workload import MATMUL, build_workload

MISTRAL = CONFIG_DIR / "mistral-7b.json"  # mistralai/Mistral-7B-v0.1: "sliding_window": 4096


def _attention(gemms):
    return [(g.name, g.m, g.n, g.k, g.count, g.window) for g in gemms if g.part == MATMUL]


def _write(tmp_path, **cfg):
    base = {
        "model_type": "qwen2",
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "max_position_embeddings": 8192,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**base, **cfg}))
    return path


def test_mistral_window_caps_the_attention_span():
    model = load_hf_config(MISTRAL)
    assert model.windows == (4096,) * 32
    long, window = build_workload(model, 16384), build_workload(model, 4096)
    # 8 K/V heads of 4 query heads each, 32 layers, all windowed: Q.K^T is (4 x 128).(128 x 4096)
    assert _attention(long) == [
        ("attn_qk_swa", 4, 4096, 128, 8 * 32, 4096),
        ("attn_sv_swa", 4, 128, 4096, 8 * 32, 4096),
    ]
    assert _attention(long) == _attention(window)
    assert _attention(build_workload(model, 1000))[0][2] == 1000  # below the window: every cached token
    hw = load_hardware("cloud")
    at_16k, at_4k = run_points([Point(model, hw, 16384), Point(model, hw, 4096)], "analytic")
    assert at_16k.frac_cycles == at_4k.frac_cycles
    assert at_16k.frac_cycles > 0.85  # today's main reported 0.670, as if all 16,384 tokens were attended


def test_without_the_window_the_numbers_change():
    model = load_hf_config(MISTRAL)
    full = type(model)(**{**model.__dict__, "windows": ()})
    hw = load_hardware("cloud")
    windowed, dense = run_points([Point(model, hw, 16384), Point(full, hw, 16384)], "analytic")
    assert dense.frac_cycles == pytest.approx(0.670, abs=0.001)
    assert windowed.frac_cycles != pytest.approx(dense.frac_cycles, abs=0.05)


def test_mistral_null_window_and_default(tmp_path):
    assert load_hf_config(_write(tmp_path, model_type="mistral", sliding_window=None)).windows == ()
    # MistralConfig's default when the key is absent
    assert load_hf_config(_write(tmp_path, model_type="mistral")).windows == (4096,) * 4


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_qwen_windows_from_max_window_layers(tmp_path, model_type):
    path = _write(
        tmp_path, model_type=model_type, use_sliding_window=True, sliding_window=1024, max_window_layers=2
    )
    model = load_hf_config(path)
    assert model.windows == (0, 0, 1024, 1024)
    # full and windowed layers kept apart: 2 K/V heads x 2 layers each
    assert _attention(build_workload(model, 4096)) == [
        ("attn_qk", 4, 4096, 32, 4, 0),
        ("attn_sv", 4, 32, 4096, 4, 0),
        ("attn_qk_swa", 4, 1024, 32, 4, 1024),
        ("attn_sv_swa", 4, 32, 1024, 4, 1024),
    ]
    off = _write(tmp_path, model_type=model_type, use_sliding_window=False, sliding_window=1024)
    assert load_hf_config(off).windows == ()


def test_layer_types_per_layer(tmp_path):
    types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    path = _write(tmp_path, use_sliding_window=True, sliding_window=512, layer_types=types)
    model = load_hf_config(path)
    assert model.windows == (512, 0, 512, 512)
    gemms = build_workload(model, 2048, batch=3)
    assert [(g.name, g.n, g.count) for g in gemms if g.name.startswith("attn_qk")] == [
        ("attn_qk", 2048, 2 * 3 * 1),
        ("attn_qk_swa", 512, 2 * 3 * 3),
    ]
    # prefill: dense l x l products with a mask, as transformers computes them (labelled windowed)
    prefill = build_workload(model, 2048, phase="prefill")
    assert [(g.name, g.m, g.n) for g in prefill if g.name.startswith("attn_qk")] == [
        ("attn_qk", 4 * 2048, 2048),
        ("attn_qk_swa", 4 * 2048, 2048),
    ]


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"layer_types": ["chunked_attention"] * 4}, "unsupported layer type 'chunked_attention'"),
        ({"layer_types": ["full_attention"]}, "one type per layer (4)"),
        ({"use_sliding_window": True, "sliding_window": -3}, "sliding_window = -3"),
        ({"layer_types": ["sliding_attention"] * 4}, "use_sliding_window is false"),
    ],
)
def test_window_fields_refused(tmp_path, cfg, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_hf_config(_write(tmp_path, **cfg))


def test_llama_ignores_window_fields_with_a_warning(tmp_path, capsys):
    model = load_hf_config(_write(tmp_path, model_type="llama", sliding_window=128))
    assert model.windows == ()
    assert "ignores sliding_window" in capsys.readouterr().err


def test_simulate_shows_windowed_products(tmp_path):
    runner = CliRunner()
    args = ["simulate", "--model", str(MISTRAL), "--seq-len", "16384", "--backend", "analytic"]
    res = runner.invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    windows = {layer["name"]: layer["window"] for layer in out["layers"]}
    assert windows["attn_qk_swa"] == 4096 and windows["q_proj"] is None
    assert out["config"]["attention_windows"] == {"4096": 32}
    table = runner.invoke(main, args, env={"COLUMNS": "200"})
    assert (
        "attn_qk_swa" in table.output
        and "window" in table.output
        and "32/32 layers window 4096" in table.output
    )


def test_beyond_max_positions_warns_never_refuses(tmp_path):
    path = _write(tmp_path)  # max_position_embeddings 8192
    res = CliRunner().invoke(
        main, ["simulate", "--model", str(path), "--seq-len", "16384", "--backend", "analytic"]
    )
    assert res.exit_code == 0
    assert "exceeds its max_position_embeddings 8192" in res.stderr
