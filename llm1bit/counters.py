"""Counters: what one simulated GEMM costs, in SCALE-Sim's own report fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Counters:
    """COMPUTE_REPORT `Total Cycles` and the DETAILED_ACCESS_REPORT read / write counts of one GEMM."""

    cycles: int = 0
    sram_ifmap_reads: int = 0
    sram_filter_reads: int = 0
    sram_ofmap_writes: int = 0
    dram_ifmap_reads: int = 0
    dram_filter_reads: int = 0
    dram_ofmap_writes: int = 0

    @property
    def memory_accesses(self) -> int:
        """The study's 'memory accesses': SRAM ifmap reads + filter reads + ofmap writes."""
        return self.sram_ifmap_reads + self.sram_filter_reads + self.sram_ofmap_writes

    @property
    def dram_reads(self) -> int:
        return self.dram_ifmap_reads + self.dram_filter_reads

    @property
    def dram_writes(self) -> int:
        return self.dram_ofmap_writes

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, count: int) -> Counters:
        return Counters(*(getattr(self, f.name) * count for f in fields(self)))

    __rmul__ = __mul__

    def is_negative(self) -> bool:
        """A composed counter below zero can only come from a wrong stored piece."""
        return any(getattr(self, f.name) < 0 for f in fields(self))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Counters:
        return cls(**{f.name: int(data[f.name]) for f in fields(cls)})


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters))
