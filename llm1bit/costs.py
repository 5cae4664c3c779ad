"""Costs on top of counters: bytes per operand, time under a finite DRAM bandwidth, energy.

Never inside a backend: the same words (from SCALE-Sim or its closed form) priced under other
precisions, clocks, bandwidths or energy tables need no new simulation.

Per GEMM (one occurrence):
  bytes       = ifmap words x act_bits / 8 + filter words x filter bits / 8 + ofmap words x act_bits / 8,
                for SRAM (reads / writes) and DRAM alike; filter bits = the weight format's bits moved
                per weight (projections) or kv_bits (attention heads).
  time_s      = max(cycles / f, DRAM bytes / bandwidth): a roofline with double-buffered overlap of
                compute and DRAM traffic inside one GEMM, none across GEMMs; `bound` says which term won.
  energy_j    = (Σ ops x pJ per op + SRAM bytes x pJ/B + DRAM bytes x pJ/B) x 1e-12.
Compute cycles do not change with operand width: the array still takes one weight per PE and cycle."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm1bit.counters import Counters
from llm1bit.energy import EnergyTable, attention_ops, load_energy_table, ops_energy_pj
from llm1bit.errors import unknown_choice
from llm1bit.hardware import Hardware
from llm1bit.precision import Precision
from llm1bit.weight_formats import BCQ_COMPUTE, weight_format
from llm1bit.workload import MATMUL_FREE, Gemm


@dataclass(frozen=True)
class Pricing:
    """Everything besides the counters that decides bytes, time and energy (hardware clock and bandwidth aside)."""

    precision: Precision = field(default_factory=Precision)
    energy: EnergyTable = field(default_factory=load_energy_table)
    bcq_compute: str = "lut"

    def __post_init__(self) -> None:
        if self.bcq_compute not in BCQ_COMPUTE:
            raise unknown_choice("BCQ compute", self.bcq_compute, BCQ_COMPUTE)


@dataclass(frozen=True)
class Cost:
    """Bytes, time and energy of one occurrence of a GEMM."""

    weight_bits: float | None  # projections: the code width of their weights; attention products: None
    filter_bits: float  # bits that move per filter element (weight format overhead included, or kv_bits)
    sram_bytes: float
    dram_bytes: float
    compute_s: float
    memory_s: float
    ops_j: float
    sram_j: float
    dram_j: float

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s > self.compute_s else "compute"

    @property
    def energy_j(self) -> float:
        return self.ops_j + self.sram_j + self.dram_j


def word_bytes(ifmap, filt, ofmap, act_bits, filter_bits):
    """Bytes of the three operands' words; also takes NumPy arrays (bulk pricing, the same operations)."""
    return (ifmap * act_bits + filt * filter_bits + ofmap * act_bits) / 8


def operand_costs(gemm: Gemm, pricing: Pricing) -> tuple[float | None, float, float]:
    """What a GEMM's price takes from its shape and precision alone, not from its counters: the code width
    of its weights (None for attention products), the bits moved per filter element, and the operations'
    energy (J)."""
    p = pricing.precision
    m, n, k = gemm.shape
    if gemm.part == MATMUL_FREE:
        weight_bits = gemm.weight_bits or p.weight_bits
        fmt = weight_format(gemm.weight_format or p.weight_format)  # what it moves and what it costs
        filter_bits = gemm.bits_moved or fmt.bits_moved(weight_bits, n, k)
        ops = fmt.ops(weight_bits, p.act_bits, m, n, k, pricing.bcq_compute)
    else:
        weight_bits, filter_bits = None, p.kv_bits
        ops = attention_ops(p.act_bits, p.kv_bits, m, n, k)
    return weight_bits, filter_bits, ops_energy_pj(ops, pricing.energy) * 1e-12


def seconds(cycles, dram_bytes, freq_mhz, dram_gbps):
    """(compute, memory) seconds of the roofline; also takes NumPy arrays (bulk pricing, same operations)."""
    return cycles / (freq_mhz * 1e6), dram_bytes / (dram_gbps * 1e9)


def joules(nbytes, pj_per_byte: float):
    """Energy of moving `nbytes`; also takes NumPy arrays (bulk pricing, the same operations)."""
    return nbytes * pj_per_byte * 1e-12


def price(gemm: Gemm, counters: Counters, hw: Hardware, pricing: Pricing) -> Cost:
    weight_bits, filter_bits, ops_j = operand_costs(gemm, pricing)
    act, c, table = pricing.precision.act_bits, counters, pricing.energy
    sram = word_bytes(c.sram_ifmap_reads, c.sram_filter_reads, c.sram_ofmap_writes, act, filter_bits)
    dram = word_bytes(c.dram_ifmap_reads, c.dram_filter_reads, c.dram_ofmap_writes, act, filter_bits)
    compute_s, memory_s = seconds(c.cycles, dram, hw.freq_mhz, hw.dram_gbps)
    return Cost(
        weight_bits=weight_bits,
        filter_bits=filter_bits,
        sram_bytes=sram,
        dram_bytes=dram,
        compute_s=compute_s,
        memory_s=memory_s,
        ops_j=ops_j,
        sram_j=joules(sram, table.sram_per_byte),
        dram_j=joules(dram, table.dram_per_byte),
    )
