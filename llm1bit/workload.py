"""Workload: a model's products as GEMMs, in SCALE-Sim's convention (ifmap M x K, filter K x N).

Decode (the study's case): one new token per sequence with a KV cache, so every projection is a
matrix-vector product with M = batch, N = output size, K = contraction size, the weight in the
filter operand. Attention products use the cached K / V as the filter operand: per K/V head,
Q.K^T is (g x d_h).(d_h x l) and score.V is (g x l).(l x d_h), with g = query heads sharing that
K/V head (g = 1 without grouped-query attention). Prefill processes the whole prompt of l tokens:
M = batch * l for the projections and g * l for the attention products.

Sliding-window layers (window W) keep apart from full-attention ones: in decode their products span
min(l, W) cached tokens, the current one included (transformers' mask keeps key j for query i when
i - W < j <= i). Prefill computes the dense l x l products and masks them, as transformers' eager
and SDPA attention do, so windowed prefill products have the full-attention shapes (still labelled)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm1bit.errors import UserError
from llm1bit.model_spec import FFN, ModelSpec, Proj
from llm1bit.phases import PHASES, tokens_per_step

MATMUL = "matmul"  # attention heads: activation x activation
MATMUL_FREE = "matmul_free"  # projections: activation x weight (the part 1-bit LLMs make multiplication-free)
PARTS = (MATMUL_FREE, MATMUL)
ATTENTION = "attention"  # the kind of the attention products


@dataclass(frozen=True)
class Gemm:
    name: str
    part: str
    m: int
    n: int
    k: int
    # occurrences per forward step of the whole model (per block x blocks x heads x sequences); the
    # expected number of experts with a given load is fractional (MoE), so count may be a float
    count: int | float
    window: int = 0  # attention products of sliding-window layers: the window W (0: full attention)
    weight_bits: float | None = None  # projections whose blocks have their own width (else the point's)
    weight_format: str | None = None
    bits_moved: float | None = None  # measured bits per weight (a quantized checkpoint's packed bytes)
    kind: str = ""  # attention-projection | ffn | expert | router | shared-expert | attention

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.m, self.n, self.k)


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} = {value!r} must be a positive integer")
    return value


def block_projections(model: ModelSpec) -> list[Proj]:
    """The projections of a decoder block with the dense FFN (a MoE layer swaps the `ffn` ones for its own)."""
    if model.mla:
        return list(mla_projections(model))
    if model.projections:
        return list(model.projections)
    d, dh, h, hkv = model.d_model, model.dim_head, model.n_heads, model.kv_heads
    out = [Proj("q_proj", h * dh, d), Proj("k_proj", hkv * dh, d), Proj("v_proj", hkv * dh, d)]
    out.append(Proj("out_proj", d, h * dh))
    if model.gated_ffn:
        ff = [("gate_proj", model.d_ff, d), ("up_proj", model.d_ff, d), ("down_proj", d, model.d_ff)]
    else:
        ff = [("ffn_in", model.d_ff, d), ("ffn_out", d, model.d_ff)]
    return out + [Proj(name, n, k, FFN) for name, n, k in ff]


def mla_projections(model: ModelSpec) -> tuple[Proj, ...]:
    """The projections of an MLA block (absorbed or expanded, README) and its dense gated FFN."""
    mla, d, heads, d_ff = model.mla, model.d_model, model.n_heads, model.d_ff
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if mla.q_lora_rank:
        q = (Proj("q_a_proj", mla.q_lora_rank, d), Proj("q_b_proj", heads * qk, mla.q_lora_rank))
    else:
        q = (Proj("q_proj", heads * qk, d),)
    kv_a = Proj("kv_a_proj_with_mqa", mla.kv_lora_rank + mla.qk_rope_head_dim, d)
    if (
        mla.form == "absorbed"
    ):  # kv_b_proj's K part folded into the query, its V part into the output, per head
        middle = (
            Proj("q_absorb", mla.kv_lora_rank, mla.qk_nope_head_dim, per_block=heads),
            Proj("o_absorb", mla.v_head_dim, mla.kv_lora_rank, per_block=heads),
        )
    else:
        middle = (Proj("kv_b_proj", heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank),)
    out = Proj("out_proj", d, heads * mla.v_head_dim)
    return (
        *q,
        kv_a,
        *middle,
        out,
        Proj("gate_proj", d_ff, d, FFN),
        Proj("up_proj", d_ff, d, FFN),
        Proj("down_proj", d, d_ff, FFN),
    )


def attention_dims(model: ModelSpec) -> tuple[int, int, int]:
    """(K/V heads, contraction width of Q.K^T, width of the values) of the attention products."""
    mla = model.mla
    if mla is None:
        return model.kv_heads, model.dim_head, model.dim_head
    if mla.form == "absorbed":  # one latent 'head' shared by all query heads
        return 1, mla.kv_lora_rank + mla.qk_rope_head_dim, mla.kv_lora_rank
    return model.n_heads, mla.qk_nope_head_dim + mla.qk_rope_head_dim, mla.v_head_dim


# Expected routing of `tokens` tokens over E experts, top-k each, uniform: exact binomial up to this many tokens.
BINOMIAL_TOKENS = 256


def expert_loads(tokens: int, experts: int, top_k: int) -> list[tuple[int, float]]:
    """(tokens an expert receives j, expected number of experts receiving exactly j) under uniform routing.

    Each token picks top_k of the E experts, so an expert's load is Binomial(tokens, top_k / E): the
    expected number of distinct experts read is E (1 - (1 - k/E)^tokens) (bits-and-energy.md §5) and the
    expected MACs are tokens x top_k x one expert's, exactly. Beyond BINOMIAL_TOKENS tokens (prefill) the
    load is taken as its mean tokens x k / E, split between floor and ceil so the MACs stay exact."""
    p = top_k / experts
    if tokens <= BINOMIAL_TOKENS:
        out = []
        for j in range(1, tokens + 1):
            expected = experts * math.comb(tokens, j) * p**j * (1 - p) ** (tokens - j)
            if expected > 0:
                out.append((j, expected))
        return out
    mean = tokens * p
    lo = math.floor(mean)
    frac = mean - lo
    return [(j, experts * w) for j, w in ((lo, 1 - frac), (lo + 1, frac)) if j > 0 and w > 0]


def _projection(p: Proj, m: int, blocks: float, own: dict) -> Gemm:
    """One projection of `blocks` blocks (times its per-block count), with its own width where it has one."""
    pb = own.get(p.name)
    bits = {"weight_bits": pb.bits, "weight_format": pb.fmt, "bits_moved": pb.bits_moved} if pb else {}
    return Gemm(p.name, MATMUL_FREE, m, p.n, p.k, blocks * p.per_block, kind=p.kind, **bits)


def build_workload(model: ModelSpec, seq_len: int, phase: str = "decode", batch: int = 1) -> list[Gemm]:
    """The GEMMs of one forward step (decode: one token per sequence; prefill: the whole prompt)."""
    _positive("seq_len", seq_len)
    _positive("batch", batch)
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}; allowed: {', '.join(PHASES)}")
    layers = model.n_layers
    hkv, qk_dim, v_dim = attention_dims(model)
    group = model.n_heads // hkv
    tokens = tokens_per_step(phase, batch, seq_len)
    rows = group if phase == "decode" else group * seq_len  # query rows per K/V head and sequence

    gemms = []
    # Blocks alike (same FFN kind, same per-layer widths) are one group of `count` blocks.
    moe_layers = model.moe.layers if model.moe else (False,) * layers
    configs = model.proj_bits or ((),) * layers
    blocks = list(zip(moe_layers, configs))
    for is_moe, config in dict.fromkeys(blocks):
        count, own = blocks.count((is_moe, config)), dict(config)

        gemms += [
            _projection(p, tokens, count, own)
            for p in block_projections(model)
            if not (is_moe and p.kind == FFN)
        ]
        if is_moe:
            gemms += [_projection(p, tokens, count, own) for p in model.moe.always]
            for load, experts in expert_loads(tokens, model.moe.experts, model.moe.top_k):
                gemms += [_projection(p, load, count * experts, own) for p in model.moe.expert]
    for window, n_layers in model.window_groups.items():
        span = min(seq_len, window) if window and phase == "decode" else seq_len
        suffix = "_swa" if window else ""
        heads = hkv * batch * n_layers
        gemms += [
            Gemm(f"attn_qk{suffix}", MATMUL, rows, span, qk_dim, heads, window, kind=ATTENTION),
            Gemm(f"attn_sv{suffix}", MATMUL, rows, v_dim, span, heads, window, kind=ATTENTION),
        ]
    return gemms
