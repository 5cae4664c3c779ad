"""Weight formats: what a projection's weights are stored as, one object each, registered by name.

A format knows the code widths it holds (`widths`, `check`), the bits that move per weight of an N x K layer
(`bits_moved`: codes plus scales and zero points, in whole groups as `llm1bit quantize` stores them;
bits-and-energy.md §4) and the operations one product with it costs, in the energy table's vocabulary (`ops`,
README "Cost model"). Precision, the energy model, the bits files and the CLI's --weight-format read them
from WEIGHT_FORMATS. A new format is an object here (a class where none of these fits) and one line in it."""

from __future__ import annotations

import itertools
import math

from llm1bit.errors import UserError, unknown_choice
from llm1bit.ops import acc_add, add_ops, arith_class, mac, shift

INT_GROUP = 128  # int: one FP16 scale + one FP16 zero per 128 weights of a row (GPTQ / RTN, group 128)
LAT_COLS, LAT_ROWS = (
    8,
    16,
)  # bcq-lat: 8 columns x 16 rows (128 weights) share one scale tuple (ShiftAddLLM lat)
APOT_TERMS = 3  # power-of-two terms per scale, one byte each (sign + exponent), as llm1bit writes them
TRITS_PER_BYTE = 5  # ternary packing: 3^5 = 243 <= 256, so 8 / 5 = 1.6 bits per weight
TERNARY_BITS = 1.58
LUT_INPUTS = 8  # one LUT per 8 inputs: 2**8 entries, one query stands for 8 multiply-free operations
BCQ_COMPUTE = ("lut", "add")  # BCQ inner products by 8-bit LUT queries (ShiftAddLLM) or plain additions


# Plain classes, not dataclasses: the CLI imports this module to list the formats, and each dataclass would
# add most of a millisecond to its start.


class Widths:
    """The code widths a format holds: the listed `values`, or the whole widths `low` to `high`; neither: any."""

    def __init__(
        self, values: tuple[float, ...] = (), low: int | None = None, high: int | None = None
    ) -> None:
        self.values, self.low, self.high = values, low, high

    def __contains__(self, bits: float) -> bool:
        if self.low is not None and self.high is not None:
            return bits == int(bits) and self.low <= bits <= self.high
        return not self.values or bits in self.values

    def __str__(self) -> str:
        """What an error says the format takes: '8, 16 or 32', 'whole widths 2 to 16'."""
        if self.low is not None:
            return f"whole widths {self.low} to {self.high}"
        *head, last = [f"{v:g}" for v in self.values] or ["any width"]
        return f"{', '.join(head)} or {last}" if head else last


class WeightFormat:
    """A weight format: its name, the widths it holds; subclasses say what it moves and what it costs."""

    def __init__(self, name: str, widths: Widths) -> None:
        self.name, self.widths = name, widths

    def __repr__(self) -> str:
        return f"<weight format {self.name}>"

    def check(self, bits: float) -> None:
        """Refuse, in one line, a width this format cannot hold."""
        if bits not in self.widths:
            raise UserError(
                f"weight format {self.name} cannot hold {bits:g}-bit weights; it takes {self.widths}"
            )

    def bits_moved(self, bits: float, n: int, k: int) -> float:
        """Bits that move per weight of an N x K projection (N outputs, K inputs), overhead included."""
        raise NotImplementedError

    def ops(
        self, bits: float, act_bits: float, m: int, n: int, k: int, bcq_compute: str = "lut"
    ) -> dict[str, float]:
        """Operations of one projection GEMM (M tokens, N outputs, K inputs) with `bits`-bit weights, by the
        energy table's names, in the order their energies are summed."""
        raise NotImplementedError


class Plain(WeightFormat):
    """Exactly the code bits per weight, no scales (fp: float weights; raw: any width as given), multiplied and
    accumulated at the wider of the weight and activation widths."""

    def bits_moved(self, bits: float, n: int, k: int) -> float:
        return bits

    def ops(
        self, bits: float, act_bits: float, m: int, n: int, k: int, bcq_compute: str = "lut"
    ) -> dict[str, float]:
        return mac(arith_class(max(bits, act_bits)), float(m) * n * k)


class UniformInt(WeightFormat):
    """Uniform integer codes with one FP16 scale and one FP16 zero per group of `group` inputs of a row (GPTQ /
    RTN). Groups are whole, as `llm1bit quantize` stores them: a row of K = 172 inputs holds two groups of 128
    (the second partly empty), so int4 moves 4 + 2 x 32 / 172 bits per weight, not 4 + 32 / 128. Each weight is
    dequantized once per step, (q - zero) * scale, then multiplied at the activation width (as ShiftAddLLM's
    energy script models its GPTQ baseline)."""

    def __init__(self, name: str, widths: Widths, group: int = INT_GROUP) -> None:
        super().__init__(name, widths)
        self.group = group

    def bits_moved(self, bits: float, n: int, k: int) -> float:
        return bits + 32 * math.ceil(k / self.group) / k

    def ops(
        self, bits: float, act_bits: float, m: int, n: int, k: int, bcq_compute: str = "lut"
    ) -> dict[str, float]:
        dequantize = {"fp16_add": float(n) * k, "fp16_mult": float(n) * k}
        return add_ops(dequantize, mac(arith_class(act_bits), float(m) * n * k))


class Signs(WeightFormat):
    """Binary (±1) or ternary codes, packed `packed_bits` per weight, one FP16 scale per tensor: signed additions
    and one scale multiply per output, no multiplications by weights."""

    def __init__(self, name: str, widths: Widths, packed_bits: float) -> None:
        super().__init__(name, widths)
        self.packed_bits = packed_bits

    def bits_moved(self, bits: float, n: int, k: int) -> float:
        return self.packed_bits + 16 / (n * k)

    def ops(
        self, bits: float, act_bits: float, m: int, n: int, k: int, bcq_compute: str = "lut"
    ) -> dict[str, float]:
        a = arith_class(act_bits)
        return {acc_add(a): float(m) * n * k, f"{a}_mult": float(m) * n}


class Bcq(WeightFormat):
    """Binary-coded quantization: q planes of ±1 codes, each scale a sum of APOT_TERMS powers of two. Per token
    (ShiftAddLLM §4.1 and its energy script, energy/shiftaddllm_energy.py): a LUT of 2^8 partial sums for every
    8 inputs (8 mults + 8 adds + 255 adds to build), one LUT query per (output, plane, 8-input slab) standing
    for 8 weights (or, with bcq_compute 'add', the additions themselves), each result shifted by its scale's
    power-of-two terms and added up. Where the scales sit (`shifts_and_builds`) tells lat from acc."""

    def shifts_and_builds(
        self, results: float, builds: float, m: int, k: int, q: float
    ) -> tuple[float, float]:
        """The shifts, and the LUT builds, given the LUT results and the builds of one LUT per slab."""
        raise NotImplementedError

    def ops(
        self, bits: float, act_bits: float, m: int, n: int, k: int, bcq_compute: str = "lut"
    ) -> dict[str, float]:
        a = arith_class(act_bits)
        q, t = bits, APOT_TERMS
        slabs = -(-k // LUT_INPUTS)
        results = float(m) * n * q * slabs  # LUT results (or 8-weight inner sums): per output, plane, slab
        shifts, builds = self.shifts_and_builds(results, float(m) * slabs, m, k, q)
        ops = {shift(act_bits): shifts, acc_add(a): results * t}
        if bcq_compute == "lut":
            add_ops(
                ops, {"lut_query": results, f"{a}_mult": builds * LUT_INPUTS, acc_add(a): builds * (8 + 255)}
            )
        else:
            add_ops(ops, {acc_add(a): float(m) * n * k * q})
        return ops


class BcqLat(Bcq):
    """bcq-lat: one scale tuple per 8 x 16 block of weights (q tuples of APOT_TERMS bytes, one per plane)."""

    def bits_moved(self, bits: float, n: int, k: int) -> float:
        blocks = math.ceil(k / LAT_COLS) * math.ceil(n / LAT_ROWS)
        return bits + bits * APOT_TERMS * 8 * blocks / (n * k)

    def shifts_and_builds(
        self, results: float, builds: float, m: int, k: int, q: float
    ) -> tuple[float, float]:
        return results * APOT_TERMS, builds  # one scale per 8-column slab: each result shifted by its terms


class BcqAcc(Bcq):
    """bcq-acc: one scale tuple per input column over all N rows, plus the float32 incoherence rescale."""

    def bits_moved(self, bits: float, n: int, k: int) -> float:
        return bits + (bits * APOT_TERMS * 8 + 32) / n

    def shifts_and_builds(
        self, results: float, builds: float, m: int, k: int, q: float
    ) -> tuple[float, float]:
        # one scale per input column: the inputs are scaled per plane, one LUT per plane
        return float(m) * k * q * APOT_TERMS, builds * q


# name -> format; this order is the order of --weight-format's help and of errors.
WEIGHT_FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        Plain("fp", Widths((8, 16, 32))),
        UniformInt("int", Widths(low=2, high=16)),
        BcqLat("bcq-lat", Widths(low=1, high=8)),
        BcqAcc("bcq-acc", Widths(low=1, high=8)),
        Signs("ternary", Widths((TERNARY_BITS,)), packed_bits=8 / TRITS_PER_BYTE),
        Signs("binary", Widths((1,)), packed_bits=1),
        Plain("raw", Widths()),
    )
}


def weight_format(name: str) -> WeightFormat:
    """The registered format `name`; an unknown name is a one-line error with the closest known ones."""
    fmt = WEIGHT_FORMATS.get(name)
    if fmt is None:
        raise unknown_choice("weight format", name, tuple(WEIGHT_FORMATS))
    return fmt


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


DOCUMENTED_WIDTHS = (16, 8, 4, 3, 2, 1.58, 1)


def defaults_text() -> str:
    """'by width: 16 fp, 8/4 int, ...': default_format over the documented widths, for --weight-format's help."""
    groups = itertools.groupby(DOCUMENTED_WIDTHS, key=default_format)
    return "by width: " + ", ".join(f"{'/'.join(f'{b:g}' for b in widths)} {fmt}" for fmt, widths in groups)
