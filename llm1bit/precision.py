"""Operand precisions: how many bits each SCALE-Sim word stands for.

SCALE-Sim counts words (one per operand element). A GEMM's three operands carry different data:
projections read activations (ifmap, `act_bits`) and weights (filter, in a weight format), the
attention products read activations (Q or scores, `act_bits`) and the cached K / V (filter,
`kv_bits`); every ofmap is an activation (`act_bits`). A weight format moves more than its code
bits: scales, zero points and group layout add an overhead per weight (bits-and-energy.md §4); the
formats themselves, what they hold, move and cost, are objects in llm1bit.weight_formats."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm1bit.errors import UserError
from llm1bit.weight_formats import default_format, weight_format


def check_bits(flag: str, bits: float) -> float:
    if not (isinstance(bits, (int, float)) and math.isfinite(bits) and 0 < bits <= 32):
        raise UserError(f"{flag} {bits}: bits must be > 0 and <= 32 (e.g. 16, 8, 4, 3, 2, 1.58, 1)")
    return float(bits)


def check_format(fmt: str, bits: float) -> str:
    """A format that can hold `bits`-bit codes, else a one-line error (the format's own widths)."""
    weight_format(fmt).check(bits)
    return fmt


def bits_moved(fmt: str, bits: float, n: int, k: int) -> float:
    """Bits that move per weight of an N x K projection (N outputs, K inputs), overhead included."""
    return weight_format(fmt).bits_moved(bits, n, k)


@dataclass(frozen=True)
class Precision:
    """Operand widths of one simulated point; 16 / 16 / 16 fp reproduces the study (bytes = 2 x words)."""

    weight_bits: float = 16.0
    act_bits: float = 16.0
    kv_bits: float = 16.0
    weight_format: str = "fp"

    @classmethod
    def build(
        cls,
        weight_bits: float = 16,
        act_bits: float = 16,
        kv_bits: float = 16,
        weight_format: str | None = None,
    ) -> Precision:
        weight_bits = check_bits("--weight-bits", weight_bits)
        fmt = check_format(weight_format or default_format(weight_bits), weight_bits)
        return cls(weight_bits, check_bits("--act-bits", act_bits), check_bits("--kv-bits", kv_bits), fmt)

    def to_dict(self) -> dict:
        return {
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "kv_bits": self.kv_bits,
            "weight_format": self.weight_format,
        }
