"""The lean decode step (llm1bit.quant.eval.lean_decode) and its C glue, against transformers: the glue's ops
against the torch ops they replace (bit for bit where the C code rounds where torch does, within bf16 rounding
where a reduction's order differs), and whole models (a quantized stories260K folder through the LUT kernel,
its bf16 source, a tiny Qwen2 with q/k/v biases) against their own forward: the same greedy tokens, logits
within bf16 rounding. Nothing here checks a speed."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.quant.eval import speed
from llm1bit.quant.eval.lean_decode import LeanStep, unsupported
from llm1bit.quant.hf.kernel import build

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = str(DATA / "models" / "stories260K")
VALID = str(DATA / "tinystories" / "valid-head.txt")
LIB = build.load()
pytestmark = pytest.mark.skipif(LIB is None, reason="the kernel's C library is not available here")
BF16 = torch.bfloat16


def ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous()
    return t.data_ptr()


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(BF16)


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance between a and b in bf16 steps (same-sign values)."""
    ia = a.view(torch.int16).to(torch.int32)
    ib = b.view(torch.int16).to(torch.int32)
    return int((ia - ib).abs().max())


# ---------------------------------------------------------------- the C glue against torch


def test_add_rmsnorm_against_the_model_norm() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    for n, seed in ((576, 0), (1536, 1), (37, 2)):
        norm = LlamaRMSNorm(n, eps=1e-5).to(BF16)
        norm.weight.data = randn(n, seed=seed + 10)
        h, d = randn(n, seed=seed, scale=3.0), randn(n, seed=seed + 20)
        out = torch.empty(n, dtype=BF16)
        expect_h = h + d  # one bf16 add, as the model's residual
        got_h = h.clone()
        rc = LIB.lib.llm1bit_add_rmsnorm_bf16(ptr(got_h), ptr(d), ptr(norm.weight.data), 1e-5, n, ptr(out))
        assert rc == 0
        assert torch.equal(got_h, expect_h)
        assert bf16_ulps(out, norm(expect_h)) <= 1  # the mean of squares sums in another order
        again = torch.empty(n, dtype=BF16)
        LIB.lib.llm1bit_add_rmsnorm_bf16(ptr(got_h), None, ptr(norm.weight.data), 1e-5, n, ptr(again))
        assert torch.equal(again, out)  # no add: the norm alone


def test_silu_mul_against_torch() -> None:
    ffn = 1536
    gu = randn(2 * ffn, seed=3, scale=4.0)
    out = torch.empty(ffn, dtype=BF16)
    assert LIB.lib.llm1bit_silu_mul_bf16(ptr(gu), ffn, ptr(out)) == 0
    assert bf16_ulps(out, F.silu(gu[:ffn]) * gu[ffn:]) <= 1  # expf against torch's vectorised exp


def test_attention_step_against_transformers_rotary_and_sdpa() -> None:
    """Rotary written into the cache bit for bit as apply_rotary_pos_emb; attention within bf16 rounding of
    an fp64 softmax over the same keys and values; grouped heads (4 query heads, 2 key/value heads)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    heads, kv, dim, cache_len, pos = 4, 2, 64, 40, 29
    prior_k, prior_v = randn(1, kv, cache_len, dim, seed=4), randn(1, kv, cache_len, dim, seed=5)
    qkv = randn((heads + 2 * kv) * dim, seed=6, scale=2.0)
    angles = (pos * 10000 ** (-torch.arange(0, dim, 2).float() / dim)).repeat(2)
    cos, sin = angles.cos().to(BF16), angles.sin().to(BF16)
    signed = torch.cat((-sin[: dim // 2], sin[dim // 2 :]))
    k_cache, v_cache = prior_k.clone(), prior_v.clone()
    out = torch.empty(heads * dim, dtype=BF16)
    rc = LIB.lib.llm1bit_attn_decode_bf16(
        ptr(qkv), ptr(cos), ptr(signed), ptr(k_cache), ptr(v_cache), cache_len, pos, heads, kv, dim,
        ctypes.c_float(dim**-0.5), ptr(out),
    )  # fmt: skip
    assert rc == 0
    q = qkv[: heads * dim].view(1, heads, 1, dim)
    k = qkv[heads * dim : (heads + kv) * dim].view(1, kv, 1, dim)
    v = qkv[(heads + kv) * dim :].view(1, kv, 1, dim)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos[None, None], sin[None, None])
    assert torch.equal(k_cache[:, :, pos], k_rot[:, :, 0]) and torch.equal(v_cache[:, :, pos], v[:, :, 0])
    untouched = torch.ones(cache_len, dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(k_cache[:, :, untouched], prior_k[:, :, untouched])
    keys = k_cache[0, :, : pos + 1].double().repeat_interleave(heads // kv, 0)
    values = v_cache[0, :, : pos + 1].double().repeat_interleave(heads // kv, 0)
    probs = torch.softmax(q_rot[0].double() @ keys.transpose(1, 2) * dim**-0.5, -1)
    ref = (probs @ values).reshape(-1)
    assert float((out.double() - ref).abs().max()) <= 2**-7 * float(ref.abs().max())
    bad = LIB.lib.llm1bit_attn_decode_bf16(
        ptr(qkv), ptr(cos), ptr(signed), ptr(k_cache), ptr(v_cache), cache_len, cache_len, heads, kv, dim,
        ctypes.c_float(1.0), ptr(out),
    )  # fmt: skip
    assert bad == -1  # a position outside the cache is refused


def test_logits_rounded_as_torch() -> None:
    y = torch.randn(1000, generator=torch.Generator().manual_seed(7)) * 30
    bias = torch.randn(1000, generator=torch.Generator().manual_seed(8))
    out = torch.empty(1000, dtype=BF16)
    assert LIB.lib.llm1bit_f32_bias_to_bf16(ptr(y), ptr(bias), 1000, ptr(out)) == 0
    assert torch.equal(out, (y + bias).to(BF16))


# ---------------------------------------------------------------- whole models against their own forward


def forced(stepper, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The logits of the prompt's last position and of each given token fed in turn (teacher forcing: both
    steps see the same inputs, so a near-tie that one breaks the other way does not change what follows)."""
    cache = stepper.new_cache()
    rows = [stepper.prefill(prompt, cache).logits[:, -1].float()]
    for i, token in enumerate(tokens):
        rows.append(stepper.decode(token.view(1, 1), cache, prompt.shape[1] + i).logits[:, -1].float())
    return torch.cat(rows)


def check_against_transformers(model, vocab: int, expect_kinds: set[str], steps: int = 10) -> None:
    """Logits within 3% of their largest (bf16 rounding in other orders: attention, norms); the same
    greedy choice wherever transformers' top two are further apart than twice that."""
    gen = torch.Generator().manual_seed(0)
    prompt, tokens = (
        torch.randint(0, vocab, (1, 12), generator=gen),
        torch.randint(0, vocab, (steps,), generator=gen),
    )
    cache_len = 12 + steps + 1
    with torch.inference_mode():
        lean = LeanStep(model, cache_len)
        assert set(lean.kernels) == expect_kinds
        hf_logits = forced(speed.DecodeStep(model, cache_len, model, "eager"), prompt, tokens)
        lean_logits = forced(lean, prompt, tokens)
    tol = 0.03 * float(hf_logits.abs().max())
    assert float((lean_logits - hf_logits).abs().max()) <= tol
    top2 = hf_logits.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert torch.equal(lean_logits.argmax(-1)[clear], hf_logits.argmax(-1)[clear])


@pytest.fixture(scope="module")
def lat3(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lean") / "lat3"
    args = ["quantize", "--model", STORIES, "--wbits", "3", "--method", "shiftaddllm", "--mode", "lat",
            "--groupsize", "128", "--bcq-rounds", "3", "--calib", VALID, "--nsamples", "2", "--seqlen", "64",
            "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_quantized_folder_through_the_kernel_and_dense(lat3) -> None:
    from llm1bit.quant.hf.checkpoint import load_quantized
    from llm1bit.quant.hf.kernel import use_kernel

    model = load_quantized(lat3).to(BF16)
    check_against_transformers(model, 512, {"lut"})
    with use_kernel("dense"):  # every projection layer by layer through the dense rebuild
        check_against_transformers(model, 512, {"each"})


def test_bf16_source_model() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=BF16)
    check_against_transformers(model, 512, {"cat", "each"})  # q/k/v and gate/up: one matmul each


def test_tiny_qwen2_with_biases_and_grouped_heads() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).to(BF16).eval()
    check_against_transformers(model, 300, {"cat", "each"})


def test_unsupported_models_say_why_and_auto_falls_back(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64))
    assert unsupported(model.to(BF16)).startswith("its architecture is gpt2")
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{}")
    stepper = speed.decode_step(model, torch.zeros(1, 4, dtype=torch.long), 8, False, "auto")
    assert stepper.loop == "eager" and stepper.note.startswith(
        "the lean step does not run this model (its arch"
    )
    with pytest.raises(Exception, match="--loop lean: this model cannot run the lean decode step: its arch"):
        speed.decode_step(model, torch.zeros(1, 4, dtype=torch.long), 8, False, "lean")
    from transformers import AutoModelForCausalLM

    fp32 = AutoModelForCausalLM.from_pretrained(STORIES)
    assert unsupported(fp32) == "it computes in torch.float32, the lean step in bfloat16"


def test_compile_with_the_lean_loop_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(main, ["bench", "--model", STORIES, "--loop", "lean", "--compile"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--compile compiles transformers' forward (--loop hf)" in lines[0], (
        result.output
    )
