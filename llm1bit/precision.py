"""Operand precisions and weight formats: how many bits each SCALE-Sim word stands for.

SCALE-Sim counts words (one per operand element). A GEMM's three operands carry different data:
projections read activations (ifmap, `act_bits`) and weights (filter, in a weight format), the
attention products read activations (Q or scores, `act_bits`) and the cached K / V (filter,
`kv_bits`); every ofmap is an activation (`act_bits`). A weight format moves more than its code
bits: scales, zero points and group layout add an overhead per weight (bits-and-energy.md §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm1bit.errors import UserError, unknown_choice

# Formats of projection weights. `bits` is the code width; what moves per weight is `bits_moved`.
WEIGHT_FORMATS = ("fp", "int", "bcq-lat", "bcq-acc", "ternary", "binary", "raw")
INT_GROUP = 128  # int: one FP16 scale + one FP16 zero per 128 weights of a row (GPTQ / RTN, group 128)
LAT_COLS, LAT_ROWS = (
    8,
    16,
)  # bcq-lat: 8 columns x 16 rows (128 weights) share one scale tuple (ShiftAddLLM lat)
APOT_TERMS = 3  # power-of-two terms per scale, one byte each (sign + exponent), as llm1bit writes them
TRITS_PER_BYTE = 5  # ternary packing: 3^5 = 243 <= 256, so 8 / 5 = 1.6 bits per weight
TERNARY_BITS = 1.58


def default_format(bits: float) -> str:
    """The documented format of each width: 16 (and 32) fp; 8, 4 (and other whole widths >= 4) int;
    3, 2 bcq-lat; 1.58 ternary; 1 binary; any other fractional width raw (exactly that many bits)."""
    if bits == TERNARY_BITS:
        return "ternary"
    if bits == 1:
        return "binary"
    if bits >= 16:
        return "fp"
    if bits == int(bits):
        return "int" if bits >= 4 else "bcq-lat"
    return "raw"


def check_bits(flag: str, bits: float) -> float:
    if not (isinstance(bits, (int, float)) and math.isfinite(bits) and 0 < bits <= 32):
        raise UserError(f"{flag} {bits}: bits must be > 0 and <= 32 (e.g. 16, 8, 4, 3, 2, 1.58, 1)")
    return float(bits)


def check_format(fmt: str, bits: float) -> str:
    """A format that can hold `bits`-bit codes, else a one-line error."""
    if fmt not in WEIGHT_FORMATS:
        raise unknown_choice("weight format", fmt, WEIGHT_FORMATS)
    whole = bits == int(bits)
    ok = {
        "fp": bits in (8, 16, 32),
        "int": whole and 2 <= bits <= 16,
        "bcq-lat": whole and 1 <= bits <= 8,
        "bcq-acc": whole and 1 <= bits <= 8,
        "ternary": bits == TERNARY_BITS,
        "binary": bits == 1,
        "raw": True,
    }[fmt]
    if not ok:
        allowed = {
            "fp": "8, 16 or 32",
            "int": "whole widths 2 to 16",
            "bcq-lat": "whole widths 1 to 8",
            "bcq-acc": "whole widths 1 to 8",
            "ternary": "1.58",
            "binary": "1",
        }[fmt]
        raise UserError(f"weight format {fmt} cannot hold {bits:g}-bit weights; it takes {allowed}")
    return fmt


def bits_moved(fmt: str, bits: float, n: int, k: int) -> float:
    """Bits that move per weight of an N x K projection (N outputs, K inputs), overhead included."""
    if fmt in ("fp", "raw"):
        return bits
    # Groups are whole, as `llm1bit quantize` stores them: a row of K = 172 inputs holds two groups of 128
    # (the second one partly empty), so int4 moves 4 + 2 x 32 / 172 bits per weight, not 4 + 32 / 128.
    if fmt == "int":  # FP16 scale + FP16 zero per group of 128 inputs of a row
        return bits + 32 * math.ceil(k / INT_GROUP) / k
    if fmt == "bcq-lat":  # q planes, q scale tuples of APOT_TERMS bytes per 8 x 16 block
        blocks = math.ceil(k / LAT_COLS) * math.ceil(n / LAT_ROWS)
        return bits + bits * APOT_TERMS * 8 * blocks / (n * k)
    if fmt == "bcq-acc":  # q scale tuples per input column over all N rows, + the float32 incoherence rescale
        return bits + (bits * APOT_TERMS * 8 + 32) / n
    if fmt == "ternary":  # 5 trits per byte, one FP16 scale per tensor
        return 8 / TRITS_PER_BYTE + 16 / (n * k)
    if fmt == "binary":  # 8 codes per byte, one FP16 scale per tensor
        return 1 + 16 / (n * k)
    raise unknown_choice("weight format", fmt, WEIGHT_FORMATS)


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
