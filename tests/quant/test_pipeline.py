"""Layer-by-layer pipeline on the real stories260K LLaMA: capture, perplexity protocol, quantization.

Calibration in these tests draws windows from the first half of tinystories/valid-head.txt, the
same file the perplexity is measured on (the only TinyStories text here); the CLI never does that by
default. Data is read in place from ../shared/data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from llm1bit.errors import UserError
from llm1bit.quant.calib import sample_windows, tokenize_file
from llm1bit.quant.eval.perplexity import perplexity
from llm1bit.quant.hf.linear import QuantLinear
from llm1bit.quant.hf.loading import load_model
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model, resolve_bits
from llm1bit.quant.walk.decoder_stack import find_decoder_stack
from llm1bit.quant.walk.layers import capture_inputs, run_layer

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = DATA / "models" / "stories260K"
VALID = DATA / "tinystories" / "valid-head.txt"


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    _, tokenizer = load_model(STORIES)
    return tokenize_file(VALID, tokenizer)


@pytest.fixture(scope="module")
def calib(tokens: torch.Tensor) -> torch.Tensor:
    """8 windows of 128 tokens from the first half of the evaluation text (tests only)."""
    return sample_windows(tokens[: tokens.numel() // 2], nsamples=8, seqlen=128, seed=0)


def fresh_model():
    model, _ = load_model(STORIES)
    return model


def test_fp_perplexity_matches_reference(tokens: torch.Tensor) -> None:
    result = perplexity(fresh_model(), tokens, seqlen=256)
    assert result.windows == 9 and result.tokens == 2304
    assert abs(result.perplexity - 5.82) < 0.006  # data README: 5.82 (256-token windows, BOS once)


def test_max_windows_caps_the_walk(tokens: torch.Tensor) -> None:
    result = perplexity(fresh_model(), tokens, seqlen=256, max_windows=2)
    assert result.windows == 2
    assert math.isclose(result.perplexity, math.exp(sum(result.window_losses) / 2))


def test_layerwise_walk_equals_full_forward(tokens: torch.Tensor) -> None:
    model = fresh_model()
    stack = find_decoder_stack(model)
    assert stack.layout == "llama" and len(stack.layers) == 5
    windows = tokens[: 3 * 256].reshape(3, 256)
    inputs, kwargs = capture_inputs(model, stack, windows, "cpu")
    outputs = torch.empty_like(inputs)
    for layer in stack.layers:
        run_layer(layer, inputs, kwargs, outputs)
        inputs, outputs = outputs, inputs
    seen = []
    handle = stack.layers[-1].register_forward_hook(lambda mod, args, out: seen.append(out))
    with torch.no_grad():
        for window in windows:
            model(input_ids=window[None], use_cache=False)
    handle.remove()
    for i in range(3):
        assert torch.equal(seen[i][0], inputs[i])


def test_stack_of_tiny_opt() -> None:
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(
        OPTConfig(
            hidden_size=32, num_hidden_layers=3, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32
        )
    )
    stack = find_decoder_stack(model)
    assert stack.layout == "opt" and stack.prefix == "model.decoder.layers"
    assert stack.module_names()[:2] == [
        "model.decoder.layers.0.self_attn.k_proj",
        "model.decoder.layers.0.self_attn.v_proj",
    ]


@pytest.mark.parametrize("mode", ["acc", "lat"])
@pytest.mark.parametrize("wbits", [2, 3])
def test_shiftaddllm_end_to_end(tokens: torch.Tensor, calib: torch.Tensor, mode: str, wbits: int) -> None:
    model = fresh_model()
    spec = QuantSpec(method="shiftaddllm", wbits=wbits, mode=mode, bcq_rounds=10)
    report = quantize_model(model, spec, calib)
    names = find_decoder_stack(model).module_names()
    assert [s.name for layer in report.layers for s in layer.sublayers] == names
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in names)
    assert all(s.bits == wbits and math.isfinite(s.error) for layer in report.layers for s in layer.sublayers)
    assert report.forward_seconds > 0 and report.solver_seconds > 0
    assert (
        isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.model.embed_tokens.weight
    )
    ppl = perplexity(model, tokens, seqlen=256).perplexity
    assert 5.82 < ppl < (30 if wbits == 3 else 250), ppl  # far below the ~529 of a random model


@pytest.mark.parametrize("method", ["rtn", "gptq", "bcq"])
def test_baselines_run(tokens: torch.Tensor, calib: torch.Tensor, method: str) -> None:
    model = fresh_model()
    report = quantize_model(model, QuantSpec(method=method, wbits=3, bcq_rounds=5), calib)
    if method in ("rtn", "bcq"):
        assert report.forward_seconds == 0  # no calibration forwards without a Hessian
    assert perplexity(model, tokens, seqlen=256, max_windows=3).perplexity < 100


def test_hessian_from_captured_inputs_and_bits_config(calib: torch.Tensor) -> None:
    """The solver sees H = mean_s X_s^T X_s of the layer-0 inputs and the per-module bits."""
    from llm1bit.quant.numerics.column_solver import quantize_weight

    model = fresh_model()
    stack = find_decoder_stack(model)
    inputs, _ = capture_inputs(model, stack, calib, "cpu")
    with torch.no_grad():
        x = stack.layers[0].input_layernorm(inputs).double()
    expected = (x.transpose(1, 2) @ x).sum(0) / len(calib)
    calls = []

    def spy(weight, hessian, spec):
        calls.append((weight.shape, hessian, spec.wbits))
        return quantize_weight(weight, hessian, spec)

    bits = {"model.layers.0.self_attn.q_proj": 2, "model.layers.4.mlp.down_proj": 4}
    quantize_model(model, QuantSpec(method="gptq", wbits=3), calib, bits_config=bits, solver=spy)
    assert len(calls) == 35
    scale = expected.abs().max().item()  # float32 X^T X summed in float64 is close enough
    assert torch.allclose(calls[0][1], expected.float(), rtol=1e-4, atol=1e-6 * scale)
    assert calls[0][2] == 2 and calls[-1][2] == 4 and calls[1][2] == 3
    assert model.get_submodule("model.layers.4.mlp.down_proj").bits == 4


def test_bad_inputs(calib: torch.Tensor) -> None:
    names = find_decoder_stack(fresh_model()).module_names()
    with pytest.raises(UserError, match="did you mean"):
        resolve_bits(names, 3, {"model.layers.0.self_attn.q_prj": 2})
    with pytest.raises(UserError, match="1 to 8"):
        resolve_bits(names, 3, {names[0]: 9})
    with pytest.raises(UserError, match="calibration"):
        quantize_model(fresh_model(), QuantSpec(method="shiftaddllm"), None)
    with pytest.raises(UserError, match="too short"):
        sample_windows(torch.arange(100), 4, 128, 0)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            quantize_model(fresh_model(), QuantSpec(method="rtn"), device="cuda")


def test_bf16_forwards_give_float32_hessians_close_to_float32(
    calib: torch.Tensor, tokens: torch.Tensor
) -> None:
    """--dtype bfloat16: the forwards run under bf16 autocast, the Hessians stay float32 and within bf16
    rounding of the float32 run's; the quantized model's perplexity is close to the float32 run's."""
    from llm1bit.quant.numerics.column_solver import quantize_weight

    seen: dict[str, list[torch.Tensor]] = {"float32": [], "bfloat16": []}
    models = {}
    for dtype in seen:

        def spy(weight, hessian, spec, dtype=dtype):
            seen[dtype].append(hessian)
            return quantize_weight(weight, hessian, spec)

        models[dtype] = fresh_model()
        report = quantize_model(
            models[dtype],
            QuantSpec(method="shiftaddllm", mode="lat", wbits=4),
            calib,
            dtype=dtype,
            solver=spy,
        )
        assert report.dtype == dtype and report.to_dict()["dtype"] == dtype
        assert all(layer.weights_per_second > 0 for layer in report.layers)
    assert all(h.dtype == torch.float32 for h in seen["bfloat16"])
    for h32, h16 in zip(seen["float32"][:7], seen["bfloat16"][:7], strict=True):  # layer 0: same inputs
        scale = h32.abs().max()
        assert (h16 - h32).abs().max() <= 2e-2 * scale
    ppl = {d: perplexity(m, tokens, seqlen=256, max_windows=4).perplexity for d, m in models.items()}
    assert abs(ppl["bfloat16"] / ppl["float32"] - 1) < 0.05, ppl


def test_resolve_dtype() -> None:
    from llm1bit.quant.walk.layers import _cpu_has_fast_bf16, resolve_dtype

    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if _cpu_has_fast_bf16() else "float32")
    with pytest.raises(UserError, match="dtype"):
        resolve_dtype("float16", "cpu")
