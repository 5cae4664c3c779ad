"""ModelSpec: the shapes of a decoder-only LLM that decide its decode workload (and the projection kinds
the workload sorts its GEMMs by). `llm1bit.models` builds them: the paper's models and Hugging Face configs."""

from __future__ import annotations

from dataclasses import dataclass

from llm1bit.errors import UserError

ATTENTION_PROJECTION, FFN, EXPERT, ROUTER, SHARED_EXPERT = (
    "attention-projection",
    "ffn",
    "expert",
    "router",
    "shared-expert",
)


@dataclass(frozen=True)
class Proj:
    """One weight matrix of a decoder block: N outputs x K inputs (nn.Linear's [out, in])."""

    name: str
    n: int
    k: int
    kind: str = ATTENTION_PROJECTION  # attention-projection | ffn | expert | router | shared-expert
    per_block: int = 1  # occurrences per block (MLA's absorbed per-head products: the head count)


@dataclass(frozen=True)
class MoE:
    """A mixture-of-experts FFN: `experts` routed experts of which `top_k` per token, each `expert` projections,
    plus what every token always runs (`always`: the router, shared experts and their gate)."""

    experts: int
    top_k: int
    expert: tuple[Proj, ...]
    always: tuple[Proj, ...]
    layers: tuple[bool, ...]  # per decoder layer: the MoE FFN (True) or the dense FFN (False)


MLA_FORMS = ("absorbed", "expanded")  # how latent attention is computed (see MLA)


@dataclass(frozen=True)
class MLA:
    """Multi-head latent attention (DeepSeek-V2/V3): the cache holds kv_lora_rank + qk_rope_head_dim per token.

    `absorbed` (default): kv_b_proj folded into the query and output sides, the attention products run
    over the latent cache (one shared 'K/V head' of width kv_lora + rope); `expanded`: kv_b_proj
    re-expands K and V per head and the cache holds them (transformers' implementation)."""

    q_lora_rank: int  # 0: q_proj directly
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    form: str = "absorbed"  # one of MLA_FORMS


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # gpt | opt | llama
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head attention)
    head_dim: int = 0  # 0: d_model // n_heads
    gated_ffn: bool = False  # gate + up + down projections (LLaMA/Mistral) instead of two matrices
    source: str = "paper"  # "paper" or the absolute path of the config.json it was read from
    # Per decoder layer: the sliding attention window W (0 = full attention); () = every layer full.
    windows: tuple[int, ...] = ()
    max_positions: int = 0  # the config's max_position_embeddings (0: not given)
    # Per decoder block: ((projection name, layer_bits.ProjBits), ...) for projections with their own
    # width (from a bits file or a quantized folder); () = every projection at the point's precision.
    proj_bits: tuple = ()
    # A block's projections (Proj) where the family's layout is not the classic one (fused QKV, fused
    # gate/up, Falcon's multi-query QKV, MLA's projections); () = derived from the fields above.
    projections: tuple = ()
    moe: MoE | None = None
    mla: MLA | None = None

    def __post_init__(self) -> None:
        for field in ("d_model", "n_heads", "d_ff", "n_layers"):
            if getattr(self, field) <= 0:
                raise UserError(
                    f"model {self.name}: {field} = {getattr(self, field)} must be a positive integer"
                )
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise UserError(
                f"model {self.name}: {self.n_heads} heads do not divide d_model = {self.d_model}; "
                "give head_dim explicitly or use a head count that divides d_model"
            )
        if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            raise UserError(
                f"model {self.name}: {self.n_kv_heads} key/value heads must divide the {self.n_heads} attention heads"
            )
        if self.windows and (len(self.windows) != self.n_layers or min(self.windows) < 0):
            raise UserError(f"model {self.name}: give one window >= 0 per layer ({self.n_layers}), or none")

    @property
    def window_groups(self) -> dict[int, int]:
        """Window -> number of layers using it (0 = full attention), full attention first."""
        groups: dict[int, int] = {}
        for w in sorted(self.windows or (0,) * self.n_layers):
            groups[w] = groups.get(w, 0) + 1
        return groups

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def architecture(self) -> str:
        ffn = "gated FFN" if self.gated_ffn else "FFN"
        attn = f"GQA {self.n_heads}/{self.kv_heads}" if self.kv_heads != self.n_heads else "MHA"
        if self.kv_heads == 1 and self.n_heads > 1:
            attn = f"MQA {self.n_heads}/1"
        fused = [p.name for p in self.projections if p.name in ("qkv_proj", "gate_up_proj")]
        if fused:
            attn += ", fused " + " and ".join(fused)
        if self.mla:
            attn = f"MLA {self.n_heads} heads ({self.mla.form}, latent {self.mla.kv_lora_rank}+{self.mla.qk_rope_head_dim})"
        if self.moe:
            shared = sum(p.kind == SHARED_EXPERT for p in self.moe.always)
            ffn = (
                f"MoE {self.moe.top_k}/{self.moe.experts} experts"
                + (" + shared" if shared else "")
                + f" in {sum(self.moe.layers)}/{self.n_layers} layers"
            )
        windowed = {w: n for w, n in self.window_groups.items() if w}
        if windowed:
            attn += ", " + ", ".join(f"{n}/{self.n_layers} layers window {w}" for w, n in windowed.items())
        bits = ""
        if self.proj_bits:
            widths = sorted({pb.bits for block in self.proj_bits for _, pb in block})
            bits = ", per-layer weight bits " + "/".join(f"{b:g}" for b in widths)
        return f"{attn}, {ffn}{bits}"
