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

from dataclasses import dataclass

from llm1bit.errors import UserError
from llm1bit.models import ModelSpec

PHASES = ("decode", "prefill")
MATMUL = "matmul"  # attention heads: activation x activation
MATMUL_FREE = "matmul_free"  # projections: activation x weight (the part 1-bit LLMs make multiplication-free)
PARTS = (MATMUL_FREE, MATMUL)


@dataclass(frozen=True)
class Gemm:
    name: str
    part: str
    m: int
    n: int
    k: int
    count: int  # occurrences per forward step of the whole model (per block x blocks x heads x sequences)
    window: int = 0  # attention products of sliding-window layers: the window W (0: full attention)
    weight_bits: float | None = None  # projections whose blocks have their own width (else the point's)
    weight_format: str | None = None
    bits_moved: float | None = None  # measured bits per weight (a quantized checkpoint's packed bytes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.m, self.n, self.k)


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} = {value!r} must be a positive integer")
    return value


def projection_shapes(model: ModelSpec) -> dict[str, tuple[int, int]]:
    """Each projection of a decoder block: (N outputs, K inputs), i.e. nn.Linear's [out, in]."""
    if model.projections:
        return {name: (n, k) for name, n, k in model.projections}
    d, dh, h, hkv = model.d_model, model.dim_head, model.n_heads, model.kv_heads
    shapes = {
        "q_proj": (h * dh, d),
        "k_proj": (hkv * dh, d),
        "v_proj": (hkv * dh, d),
        "out_proj": (d, h * dh),
    }
    if model.gated_ffn:
        shapes.update(gate_proj=(model.d_ff, d), up_proj=(model.d_ff, d), down_proj=(d, model.d_ff))
    else:
        shapes.update(ffn_in=(model.d_ff, d), ffn_out=(d, model.d_ff))
    return shapes


def build_workload(model: ModelSpec, seq_len: int, phase: str = "decode", batch: int = 1) -> list[Gemm]:
    """The GEMMs of one forward step (decode: one token per sequence; prefill: the whole prompt)."""
    _positive("seq_len", seq_len)
    _positive("batch", batch)
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}; allowed: {', '.join(PHASES)}")
    dh, layers = model.dim_head, model.n_layers
    h, hkv = model.n_heads, model.kv_heads
    group = h // hkv
    tokens = batch if phase == "decode" else batch * seq_len
    rows = group if phase == "decode" else group * seq_len  # query rows per K/V head and sequence

    gemms = []
    # blocks whose projections share their widths are one group (all blocks when no per-layer bits)
    configs = model.proj_bits or ((),) * layers
    for config in dict.fromkeys(configs):
        count, own = configs.count(config), dict(config)
        for name, (n, k) in projection_shapes(model).items():
            pb = own.get(name)
            extra = (pb.bits, pb.fmt, pb.bits_moved) if pb else ()
            gemms.append(Gemm(name, MATMUL_FREE, tokens, n, k, count, 0, *extra))
    for window, n_layers in model.window_groups.items():
        span = min(seq_len, window) if window and phase == "decode" else seq_len
        suffix = "_swa" if window else ""
        heads = hkv * batch * n_layers
        gemms += [
            Gemm(f"attn_qk{suffix}", MATMUL, rows, span, dh, heads, window),
            Gemm(f"attn_sv{suffix}", MATMUL, rows, dh, span, heads, window),
        ]
    return gemms
