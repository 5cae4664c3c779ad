"""The one table of Hugging Face module names: for each decoder-layer layout, the quantizable linears in the
order `llm1bit quantize` solves them, each with the workload projection it is. `quantize` finds a model's
layout here (`llm1bit.quant.walk.decoder_stack`), and `bits` files and `simulate --quantized` map a module
name to a projection of a decoder block through it (`llm1bit.layer_widths`).

Mixture-of-experts blocks (Mixtral, Qwen2-MoE, Qwen3-MoE) add each expert's slice of the fused experts
weights (`mlp.experts.gate_up_proj.3`, `mlp.experts.down_proj.3`); the router (`mlp.gate`, Qwen2-MoE's
`mlp.shared_expert_gate`) keeps its precision. Gemma-3's multimodal wrapper names its language model's
blocks `model.language_model.layers.N`."""

from __future__ import annotations

_LLAMA_ATTENTION = (
    ("self_attn.q_proj", "q_proj"),
    ("self_attn.k_proj", "k_proj"),
    ("self_attn.v_proj", "v_proj"),
    ("self_attn.o_proj", "out_proj"),
)
# layout -> ((Hugging Face module inside a decoder layer, workload projection), ...) in quantization order
LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "opt": (
        ("self_attn.k_proj", "k_proj"),
        ("self_attn.v_proj", "v_proj"),
        ("self_attn.q_proj", "q_proj"),
        ("self_attn.out_proj", "out_proj"),
        ("fc1", "ffn_in"),
        ("fc2", "ffn_out"),
    ),
    "llama": _LLAMA_ATTENTION
    + (("mlp.gate_proj", "gate_proj"), ("mlp.up_proj", "up_proj"), ("mlp.down_proj", "down_proj")),
    # Phi-3: fused q/k/v and gate/up projections (plain nn.Linear, quantized as one matrix each)
    "phi3": (
        ("self_attn.qkv_proj", "qkv_proj"),
        ("self_attn.o_proj", "out_proj"),
        ("mlp.gate_up_proj", "gate_up_proj"),
        ("mlp.down_proj", "down_proj"),
    ),
    # Mixtral, Qwen3-MoE: attention + fused experts (each expert's slices listed after these)
    "moe": _LLAMA_ATTENTION,
    # Qwen2-MoE: attention + a shared expert (its 1-output gate keeps its precision) + fused experts
    "moe-shared": _LLAMA_ATTENTION
    + tuple((f"mlp.shared_expert.{p}", f"shared_expert.{p}") for p in ("gate_proj", "up_proj", "down_proj")),
}
MOE_LAYOUTS = ("moe", "moe-shared")
# layout -> its Hugging Face linears alone, relative to the decoder layer, in quantization order
LAYOUT_LINEARS = {layout: tuple(hf for hf, _ in pairs) for layout, pairs in LAYOUTS.items()}

# workload family -> the layout of its dense decoder blocks (Gemma's layers name their linears as LLaMA's)
FAMILY_LAYOUTS = {"llama": "llama", "gemma": "llama", "phi3": "phi3", "opt": "opt"}
# Hugging Face prefixes of decoder block i, per family (Gemma-3's multimodal wrapper: model.language_model)
BLOCK_PREFIXES = {"llama": ("model.layers.{}.",), "gemma": ("model.layers.{}.", "model.language_model.layers.{}."),
                  "phi3": ("model.layers.{}.",), "opt": ("model.decoder.layers.{}.",)}  # fmt: skip
# MoE blocks: each expert's slice of a fused experts parameter -> the workload's expert projections
EXPERT_SLICES = {
    "mlp.experts.gate_up_proj": ("expert.gate_proj", "expert.up_proj"),  # gate rows, then up rows
    "mlp.experts.down_proj": ("expert.down_proj",),
}
# Qwen2-MoE's shared expert: Hugging Face module -> workload projection
SHARED_EXPERT_NAMES = {hf: proj for hf, proj in LAYOUTS["moe-shared"] if proj.startswith("shared_expert.")}
# routing, kept at its precision by `llm1bit quantize`: Hugging Face module -> workload projection
ROUTER_NAMES = {"mlp.gate": "router", "mlp.shared_expert_gate": "shared_expert_gate"}


def projection_modules(family: str) -> dict[str, str]:
    """Workload projection -> Hugging Face module inside a dense decoder block of `family`."""
    return {proj: hf for hf, proj in LAYOUTS[FAMILY_LAYOUTS[family]]}
