"""Dense families beyond LLaMA / OPT: Gemma-2, Gemma-3 (alternating sliding-window / global attention, with
different masks and, for Gemma-3, different rotary embeddings per layer) and Phi-3 (fused qkv_proj and
gate_up_proj as plain nn.Linear) quantize end to end and reload to the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm1bit.format.hf_names import LAYOUT_LINEARS as LAYOUTS
from llm1bit.quant.hf.checkpoint import load_quantized, save_quantized
from llm1bit.quant.hf.linear import QuantLinear
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model
from llm1bit.quant.walk.decoder_stack import find_decoder_stack
from llm1bit.quant.walk.layers import capture_inputs, capture_layer_kwargs, run_layer

VOCAB, SEQLEN = 96, 24


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/quant/conftest.py


def tiny(kind: str):
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, Phi3Config

    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    # a sliding window shorter than the calibration windows: layers 0 and 1 get different masks
    alternating = dict(head_dim=8, sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    if kind == "gemma2":
        config = Gemma2Config(**common, **alternating)
    elif kind == "gemma3":
        config = Gemma3TextConfig(**common, **alternating)
    else:
        config = Phi3Config(**common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def windows(n: int = 6, seqlen: int = SEQLEN) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("kind", "layout"), [("gemma2", "llama"), ("gemma3", "llama"), ("phi3", "phi3")])
def test_layout(kind, layout) -> None:
    stack = find_decoder_stack(tiny(kind))
    assert stack.layout == layout and stack.linears == LAYOUTS[layout] and not stack.experts


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_each_layer_gets_its_own_kwargs(kind) -> None:
    """Layer by layer over the captured inputs reproduces the model's own hidden states only with each
    layer's kwargs (the global layer's mask, and for Gemma-3 its rotary embeddings)."""
    model = tiny(kind)
    stack = find_decoder_stack(model)
    ids = windows(2)
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True).hidden_states
    inputs, first = capture_inputs(model, stack, ids, "cpu")
    per_layer = capture_layer_kwargs(model, stack, ids[0], "cpu")
    hidden = inputs
    for layer, kwargs in zip(stack.layers, per_layer, strict=True):
        hidden = run_layer(layer, hidden, kwargs, torch.empty_like(hidden))
    torch.testing.assert_close(model.model.norm(hidden), want[-1])
    wrong = run_layer(stack.layers[1], want[1], first, torch.empty_like(inputs))
    right = run_layer(stack.layers[1], want[1], per_layer[1], torch.empty_like(inputs))
    assert not torch.allclose(wrong, right)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "phi3"])
@pytest.mark.parametrize(
    "spec",
    [QuantSpec(method="shiftaddllm", mode="lat", wbits=3), QuantSpec(method="gptq", wbits=3)],
    ids=["lat3", "gptq3"],
)
def test_quantize_and_reload(kind, spec, tmp_path) -> None:
    model = tiny(kind)
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    report = quantize_model(model, spec, windows())
    stack = find_decoder_stack(model)
    assert all(isinstance(model.get_submodule(name), QuantLinear) for name in stack.module_names())
    assert len(report.layers) == 2 and all(s.error > 0 for layer in report.layers for s in layer.sublayers)
    assert all(torch.equal(p, norms[n]) for n, p in model.named_parameters() if "norm" in n)
    ids = windows(2, 12)
    save_quantized(model, None, tmp_path, spec.validate().to_dict())  # rounds unquantized tensors to 16 bits
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path)(input_ids=ids).logits, logits)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids=ids).logits, logits)
