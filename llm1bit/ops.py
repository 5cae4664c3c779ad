"""Operation counts in the energy table's vocabulary: the names it prices, and how a product's arithmetic maps
onto them (which entry an operand width computes in, a MAC, an accumulation, a shift).

Shared by the weight formats (the operations of a projection) and the attention heads (energy.attention_ops)."""

from __future__ import annotations

# The operations an energy table prices, each in pJ (energy.load_energy_table requires every one).
OP_NAMES = (
    "fp32_mult",
    "fp32_add",
    "fp16_mult",
    "fp16_add",
    "int32_mult",
    "int32_add",
    "int8_mult",
    "int8_add",
    "int32_shift",
    "int16_shift",
    "int8_shift",
    "lut_query",
)


def arith_class(bits: float) -> str:
    """The table entry an operand width computes in: > 16 bits fp32, > 8 bits fp16 (LLM activations),
    else int8 (the table's smallest entry)."""
    return "fp32" if bits > 16 else "fp16" if bits > 8 else "int8"


def acc_add(cls: str) -> str:
    """Accumulation: fp32 / fp16 in their own precision, integers in int32."""
    return {"fp32": "fp32_add", "fp16": "fp16_add", "int8": "int32_add"}[cls]


def shift(bits: float) -> str:
    return "int32_shift" if bits > 16 else "int16_shift" if bits > 8 else "int8_shift"


def mac(cls: str, count: float) -> dict[str, float]:
    """`count` multiply-accumulates computed in `cls`."""
    return {f"{cls}_mult": count, acc_add(cls): count}


def add_ops(into: dict[str, float], ops: dict[str, float]) -> dict[str, float]:
    """`ops` added into `into` (insertion order kept: energies are summed in it)."""
    for name, count in ops.items():
        into[name] = into.get(name, 0.0) + count
    return into
