"""On-disk format: packing, save + `load_quantized` round trip (bit-exact weights, equal logits).

Calibration windows come from the first half of tinystories/valid-head.txt (tests only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from llm1bit.atomic import atomic_dir
from llm1bit.quant.calib import sample_windows, tokenize_file
from llm1bit.quant.hf.checkpoint import load_quantized, quant_linears, save_quantized
from llm1bit.quant.hf.loading import load_model
from llm1bit.quant.hf.packing import apot_scales, pack, pack_bits, unpack, unpack_bits
from llm1bit.quant.numerics.codes import BinaryCodes, QuantizedWeight, UniformCodes
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = DATA / "models" / "stories260K"
VALID = DATA / "tinystories" / "valid-head.txt"
GPT2 = DATA / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    _, tokenizer = load_model(STORIES)
    return tokenize_file(VALID, tokenizer)


def assert_same_model(model, reloaded, ids: torch.Tensor) -> None:
    ours, theirs = quant_linears(model), quant_linears(reloaded)
    assert ours.keys() == theirs.keys() and ours
    for name, mod in ours.items():
        again = theirs[name]
        assert torch.equal(mod.weight, again.weight), name
        assert torch.equal(again.quantized.dequantize().to(again.weight.dtype), again.weight)
        assert torch.equal(mod.quantized.dequantize(), again.quantized.dequantize()), name
        assert (mod.bias is None) == (again.bias is None)
        if mod.bias is not None:
            assert torch.equal(mod.bias, again.bias)
    with torch.no_grad():
        a = model(input_ids=ids[None], use_cache=False).logits
        b = reloaded(input_ids=ids[None], use_cache=False).logits
    assert torch.equal(a, b)


def test_pack_bits_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    for k in (1, 7, 8, 13, 172):
        bits = torch.rand((3, 5, k), generator=gen) > 0.5
        packed = pack_bits(bits)
        assert packed.dtype == torch.uint8 and packed.shape == (3, 5, (k + 7) // 8)
        assert torch.equal(unpack_bits(packed, k), bits)
    assert pack_bits(torch.tensor([True, False, False, False, False, False, False, True])).item() == 129


def test_pack_unpack_codes_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    codes = torch.where(torch.rand((2, 10, 13), generator=gen) > 0.5, 1, -1).to(torch.int8)
    signs = torch.tensor([1, -1, 0], dtype=torch.int8).expand(13, 1, 2, 3).contiguous()
    exps = torch.tensor([-3, -6, 0], dtype=torch.int8).expand(13, 1, 2, 3).contiguous()
    binary = BinaryCodes(
        codes, apot_scales(signs, exps), col_block=1, row_block=10, scale_signs=signs, scale_exps=exps
    )
    tensors, meta = pack(QuantizedWeight(binary), bits=2)
    assert set(tensors) == {"codes", "scale_terms"}  # exact terms, one byte each: no float scales stored
    assert torch.equal(unpack(tensors, meta).dequantize(), binary.dequantize())

    level = torch.randint(0, 8, (6, 20), generator=gen, dtype=torch.uint8)
    uniform = UniformCodes(level, torch.rand(6, 2, generator=gen), torch.full((6, 2), 3.0), groupsize=16)
    tensors, meta = pack(QuantizedWeight(uniform), bits=3)
    assert tensors["qweight"].shape == (3, 6, 3)
    back = unpack(tensors, meta)
    assert torch.equal(back.codes.qweight, level) and torch.equal(back.dequantize(), uniform.dequantize())


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(method="shiftaddllm", wbits=3, mode="lat", bcq_rounds=10),
        QuantSpec(method="shiftaddllm", wbits=2, mode="acc", bcq_rounds=10),
        QuantSpec(method="gptq", wbits=3),
        QuantSpec(method="bcq", wbits=2, bcq_rounds=5),
        QuantSpec(method="rtn", wbits=4),
    ],
    ids=lambda s: f"{s.method}-{s.mode}-{s.wbits}",
)
def test_stories_round_trip(tmp_path: Path, tokens: torch.Tensor, spec: QuantSpec) -> None:
    model, tokenizer = load_model(STORIES)
    calib = sample_windows(tokens[: tokens.numel() // 2], nsamples=4, seqlen=128, seed=0)
    quantize_model(model, spec, calib)
    out = tmp_path / "q"
    with atomic_dir(out) as tmp:
        qconfig = save_quantized(model, tokenizer, tmp, spec.to_dict(), extra={"calibration": None})
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc == json.loads(json.dumps(qconfig))
    assert qc["quant_method"] == f"llm1bit-{spec.method}" and qc["bits"] == spec.wbits
    assert qc["seed"] == 0 and qc["tool"] == "llm1bit" and "tool_version" in qc
    assert set(qc["group_layout"]) == {"col_block", "row_block"}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        name = "model.layers.0.mlp.down_proj"
        if spec.method == "shiftaddllm":
            assert f.get_tensor(f"{name}.codes").dtype == torch.uint8
            terms = f.get_tensor(f"{name}.scale_terms")  # one byte per power-of-two term
            assert terms.dtype == torch.uint8 and terms.shape[-1] == spec.apot_terms
        if spec.method == "gptq":
            assert f.get_tensor(f"{name}.qweight").shape == (3, 64, 22)  # 3 planes, N=64, ceil(172/8)
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied, stored once
    assert not any(k.endswith(".weight") and "layers" in k and "norm" not in k for k in keys)

    reloaded, tok2 = load_quantized(out, with_tokenizer=True)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert tok2("Once upon a time")["input_ids"] == tokenizer("Once upon a time")["input_ids"]
    assert_same_model(model, reloaded, tokens[:256])
    # transformers' own loader (llm1bit registered it on import) gives the same model
    native = AutoModelForCausalLM.from_pretrained(out)
    assert type(native) is type(model) and native.config.model_type == model.config.model_type
    assert_same_model(model, native, tokens[:256])
    if spec.mode == "acc" and spec.method == "shiftaddllm":
        q = quant_linears(reloaded)["model.layers.0.self_attn.q_proj"].quantized
        assert q.incoherence is not None or not spec.incoherence


def test_tiny_opt_quantizes_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=256,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=512,
    )
    model = OPTForCausalLM(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(GPT2)
    ids = tokenize_file(DATA / "wikitext-2" / "valid.tokenized.txt", tokenizer)[:20000]
    calib = sample_windows(ids, nsamples=4, seqlen=128, seed=0)
    spec = QuantSpec(method="shiftaddllm", wbits=3, mode="lat", bcq_rounds=5)
    report = quantize_model(model, spec, calib)
    assert [s.name.rsplit(".", 1)[-1] for s in report.layers[0].sublayers] == [
        "k_proj",
        "v_proj",
        "q_proj",
        "out_proj",
        "fc1",
        "fc2",
    ]
    with atomic_dir(tmp_path / "opt") as tmp:
        save_quantized(model, tokenizer, tmp, spec.to_dict())
    reloaded = load_quantized(tmp_path / "opt")
    assert type(reloaded).__name__ == "OPTForCausalLM"
    assert torch.equal(
        reloaded.model.decoder.embed_positions.weight, model.model.decoder.embed_positions.weight
    )
    assert_same_model(model, reloaded, ids[:200])


def test_load_quantized_refuses_plain_folder() -> None:
    from llm1bit.errors import UserError

    with pytest.raises(UserError, match="not an llm1bit"):
        load_quantized(STORIES)


def test_scale_terms_take_one_byte_each_and_round_trip():
    from llm1bit.errors import UserError
    from llm1bit.quant.hf.packing import TERM_EXP_MAX, TERM_EXP_MIN, decode_terms, encode_terms

    signs = torch.tensor([[1, -1, 0], [-1, 1, 1]], dtype=torch.int8)
    exps = torch.tensor([[TERM_EXP_MIN, TERM_EXP_MAX, 0], [-7, 0, -30]], dtype=torch.int8)
    code = encode_terms(signs, exps)
    assert code.dtype == torch.uint8 and code.element_size() == 1 and int(code[0, 2]) == 0
    back_signs, back_exps = decode_terms(code)
    assert torch.equal(back_signs, signs) and torch.equal(back_exps, exps)
    with pytest.raises(UserError, match=r"2\*\*-100 is outside the packed range 2\*\*-95..2\*\*31"):
        encode_terms(torch.tensor([1], dtype=torch.int8), torch.tensor([-100], dtype=torch.int8))
