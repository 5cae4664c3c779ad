"""Per-layer bits of mixture-of-experts models on the simulate side: a tiny Mixtral quantized by the real
pipeline (3-bit lat, some experts at other widths) and bits configs naming expert slices, Qwen2-MoE's shared
expert and Gemma-3's multimodal prefix. The workload prices distinct experts, so a layer's expert
projections take the mean over its experts of their bits per weight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_moe_quantize import tiny, windows

from llm1bit.cli import main
from llm1bit.errors import UserError
from llm1bit.format.safetensors import safetensors_sizes
from llm1bit.hardware import load_hardware
from llm1bit.layer_widths import load_quantized_model, with_bits_config
from llm1bit.models import load_hf_config
from llm1bit.quant.hf.checkpoint import save_quantized
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model
from llm1bit.sweep import Point, run_points

HF_CONFIGS = Path(__file__).resolve().parents[1] / "hf_configs"
E, TOP_K = 4, 2
L0 = "model.layers.0.mlp.experts"
OWN = {f"{L0}.gate_up_proj.0": 2, f"{L0}.down_proj.2": 4}  # layer 0's experts differ; layer 1 all 3-bit


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = QuantSpec(method="shiftaddllm", mode="lat", wbits=3, bcq_rounds=3)
    model = tiny("mixtral")
    quantize_model(model, spec, windows(), bits_config=OWN)
    out = tmp_path_factory.mktemp("mixtral-lat3")
    save_quantized(model, None, out, spec.validate().to_dict())
    torch.set_num_threads(threads)
    return out


def _bits_per_weight(folder: Path, name: str) -> tuple[float, float]:
    """(code bits, packed bytes x 8 / weights) of one module, from the folder's own files."""
    meta = json.loads((folder / "config.json").read_text())["quantization_config"]["modules"][name]
    sizes = safetensors_sizes(folder / "model.safetensors")
    packed = sum(v for t, v in sizes.items() if t.startswith(name + "."))
    n, k = meta["shape"]
    return meta["bits"], 8 * packed / (n * k)


def test_quantized_mixtral_expert_bits_are_the_mean_of_the_packed_bits(folder) -> None:
    model = load_quantized_model(folder)
    blocks = [dict(block) for block in model.proj_bits]
    for i, block in enumerate(blocks):
        for fused, projs in (("gate_up_proj", ("expert.gate_proj", "expert.up_proj")), ("down_proj", ("expert.down_proj",))):  # fmt: skip
            per = [_bits_per_weight(folder, f"model.layers.{i}.mlp.experts.{fused}.{e}") for e in range(E)]
            for proj in projs:
                assert block[proj].fmt == "bcq-lat"
                assert block[proj].bits == pytest.approx(sum(b for b, _ in per) / E, rel=1e-12)
                assert block[proj].bits_moved == pytest.approx(sum(m for _, m in per) / E, rel=1e-12)
        assert "router" not in block  # the router keeps its precision
        assert block["q_proj"].bits_moved == _bits_per_weight(folder, f"model.layers.{i}.self_attn.q_proj")[1]
    assert blocks[0]["expert.gate_proj"].bits == 2.75 and blocks[0]["expert.down_proj"].bits == 3.25
    assert blocks[1]["expert.gate_proj"].bits == 3.0

    # decode at batch 1: top_k experts are read per layer, each weight once; the simulated expert weight
    # bytes of layer 0 are top_k x the mean over its experts of their packed bytes
    (split,) = run_points([Point(model, load_hardware("edge"), 64)], "analytic")
    simulated = sum(
        x.counters.dram_filter_reads * x.cost.filter_bits / 8 * x.gemm.count
        for x in split.layers
        if x.gemm.kind == "expert" and x.gemm.weight_bits in (2.75, 3.25)
    )
    sizes = safetensors_sizes(folder / "model.safetensors")
    packed = sum(v for t, v in sizes.items() if t.startswith(f"{L0}."))
    assert simulated == pytest.approx(TOP_K * packed / E, rel=1e-12)


def test_simulate_quantized_mixtral_cli(folder) -> None:
    res = invoke("simulate", "--quantized", folder, "--hw", "edge", "--backend", "analytic", "--seq-len", 64, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    experts = [x for x in out["layers"] if x["kind"] == "expert"]
    assert {x["weight_bits"] for x in experts} == {2.75, 3.25, 3.0}
    routers = [x for x in out["layers"] if x["kind"] == "router"]
    assert routers and all(x["weight_bits"] == 16 for x in routers)
    note = [line for line in res.stderr.splitlines() if "experts differ" in line]
    assert len(note) == 1 and f"{L0}.gate_up_proj" in note[0] and "mean over its experts" in note[0]


def _config(tmp_path: Path, kind: str) -> Path:
    from transformers import MixtralConfig, Qwen2MoeConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if kind == "mixtral":
        config = MixtralConfig(**common, intermediate_size=64, num_local_experts=E, num_experts_per_tok=TOP_K)
    else:
        config = Qwen2MoeConfig(
            **common,
            intermediate_size=64,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=64,
            num_experts=E,
            num_experts_per_tok=TOP_K,
            mlp_only_layers=[1],
        )
    path = tmp_path / f"{kind}.json"
    path.write_text(config.to_json_string())
    return path


def _bits_file(tmp_path: Path, layers: dict, mode: str | None = "lat") -> Path:
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps({"layers": layers, **({"settings": {"mode": mode}} if mode else {})}))
    return path


def test_bits_config_names_expert_slices(tmp_path) -> None:
    layers = {
        f"{L0}.down_proj": 2,
        f"{L0}.down_proj.1": 4,  # a slice overrides its group, whichever comes first
        f"{L0}.gate_up_proj": 3,
        "model.layers.1.mlp.experts": 2,
        "model.layers.0.self_attn.q_proj": 3,
    }
    bits = _bits_file(tmp_path, layers)
    bits.write_text(json.dumps({"layers": layers, "settings": {"mode": "lat", "groupsize": 128}}))
    model = with_bits_config(load_hf_config(_config(tmp_path, "mixtral")), bits)
    b0, b1 = (dict(block) for block in model.proj_bits)
    lat = 1 + 3 * 8 / 128  # bits moved per code bit: lat group 128, 3 scale bytes per plane per 128 weights
    assert (b0["expert.down_proj"].bits, b0["expert.down_proj"].fmt) == (2.5, "bcq-lat")
    assert b0["expert.down_proj"].bits_moved == pytest.approx((2 + 4 + 2 + 2) / 4 * lat, rel=1e-12)
    assert b0["expert.gate_proj"] == b0["expert.up_proj"] and b0["expert.up_proj"].bits_moved == 3 * lat
    assert b0["q_proj"].bits == 3 and "k_proj" not in b0
    assert {b1[p].bits for p in ("expert.gate_proj", "expert.up_proj", "expert.down_proj")} == {2}


@pytest.mark.parametrize(
    ("layers", "mode", "match"),
    [
        ({f"{L0}.down_proj.1": 2}, "lat", "1 of its 4 experts have their own bits"),
        ({"model.layers.0.mlp.gate": 2}, "lat", "a router: it keeps its precision"),
        ({f"{L0}.down_proj": 3, f"{L0}.down_proj.0": 4}, None, "formats bcq-lat and int"),
        ({"model.layers.0.mlp.down_proj": 2}, "lat", "does not have"),  # a sparse layer has no dense FFN
    ],
)
def test_bad_expert_bits_are_one_line(tmp_path, layers, mode, match) -> None:
    config = _config(tmp_path, "mixtral")
    with pytest.raises(UserError, match=match):
        with_bits_config(load_hf_config(config), _bits_file(tmp_path, layers, mode))
    res = invoke(
        "simulate", "--model", config, "--bits-config", tmp_path / "alloc.json", "--backend", "analytic"
    )
    assert res.exit_code != 0 and match in res.output and len(res.output.strip().splitlines()) == 1


def test_qwen2_moe_shared_expert_and_dense_layer(tmp_path) -> None:
    layers = {
        "model.layers.0.mlp.shared_expert.down_proj": 2,
        "model.layers.0.mlp.experts": 3,
        "model.layers.1.mlp.down_proj": 4,  # mlp_only_layers: layer 1 is dense
    }
    model = with_bits_config(load_hf_config(_config(tmp_path, "qwen2_moe")), _bits_file(tmp_path, layers))
    b0, b1 = (dict(block) for block in model.proj_bits)
    assert b0["shared_expert.down_proj"].bits == 2 and b0["expert.down_proj"].bits == 3
    assert b1["down_proj"].bits == 4
    with pytest.raises(UserError, match="a router"):
        with_bits_config(
            load_hf_config(tmp_path / "qwen2_moe.json"),
            _bits_file(tmp_path, {"model.layers.0.mlp.shared_expert_gate": 2}),
        )


def test_gemma3_multimodal_prefix(tmp_path) -> None:
    config = HF_CONFIGS / "gemma-3-4b-it.json"
    assert json.loads(config.read_text())["model_type"] == "gemma3"
    bits = _bits_file(tmp_path, {"model.language_model.layers.3.mlp.down_proj": 2})
    model = with_bits_config(load_hf_config(config), bits)
    assert dict(model.proj_bits[3])["down_proj"].bits == 2 and not model.proj_bits[2]
