"""Split: a simulated workload summed into its MatMul (attention heads) and MatMul-free (projections) parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm1bit import __version__
from llm1bit.counters import Counters
from llm1bit.hardware import Hardware
from llm1bit.models import ModelSpec
from llm1bit.workload import MATMUL, MATMUL_FREE, PARTS, Gemm


@dataclass(frozen=True)
class LayerResult:
    gemm: Gemm
    counters: Counters  # of one occurrence

    def to_dict(self) -> dict:
        c = self.counters
        g = self.gemm
        return {
            "name": g.name,
            "part": g.part,
            "M": g.m,
            "N": g.n,
            "K": g.k,
            "count": g.count,
            "cycles": c.cycles,
            "sram_ifmap_reads": c.sram_ifmap_reads,
            "sram_filter_reads": c.sram_filter_reads,
            "sram_ofmap_writes": c.sram_ofmap_writes,
            "dram_reads": c.dram_reads,
            "dram_writes": c.dram_writes,
            "window": g.window or None,
        }


def _totals_dict(c: Counters) -> dict[str, int]:
    return {
        "cycles": c.cycles,
        "sram_ifmap_reads": c.sram_ifmap_reads,
        "sram_filter_reads": c.sram_filter_reads,
        "sram_ofmap_writes": c.sram_ofmap_writes,
        "memory_accesses": c.memory_accesses,
        "dram_reads": c.dram_reads,
        "dram_writes": c.dram_writes,
    }


@dataclass(frozen=True)
class Split:
    """One simulated (model, hardware, dataflow, phase, batch, seq_len) point and its two parts."""

    model: ModelSpec
    hw: Hardware
    seq_len: int
    backend: str
    phase: str
    batch: int
    layers: list[LayerResult]
    totals: dict[str, Counters] = field(init=False)

    def __post_init__(self) -> None:
        totals = {part: Counters() for part in PARTS}
        for layer in self.layers:
            totals[layer.gemm.part] = totals[layer.gemm.part] + layer.counters * layer.gemm.count
        object.__setattr__(self, "totals", totals)

    @property
    def total(self) -> Counters:
        return self.totals[MATMUL] + self.totals[MATMUL_FREE]

    @property
    def frac_cycles(self) -> float:
        """MatMul-free share of the compute cycles."""
        return self.totals[MATMUL_FREE].cycles / self.total.cycles

    @property
    def frac_memory(self) -> float:
        """MatMul-free share of the SRAM accesses (ifmap reads + filter reads + ofmap writes)."""
        return self.totals[MATMUL_FREE].memory_accesses / self.total.memory_accesses

    @property
    def frac_dram(self) -> float:
        free = self.totals[MATMUL_FREE]
        return (free.dram_reads + free.dram_writes) / (self.total.dram_reads + self.total.dram_writes)

    def label(self) -> dict:
        """Everything that decides this point's numbers, flat (the leading CSV columns)."""
        from llm1bit.backends.scalesim_runner import SCALESIM_VERSION

        hw = self.hw
        return {
            "model": self.model.name,
            "model_source": self.model.source,
            "architecture": self.model.architecture,
            "hw": hw.name,
            "hw_file": hw.source,
            "array_rows": hw.rows,
            "array_cols": hw.cols,
            "ifmap_sram_kb": hw.ifmap_sram_kb,
            "filter_sram_kb": hw.filter_sram_kb,
            "ofmap_sram_kb": hw.ofmap_sram_kb,
            "dataflow": hw.dataflow,
            "hw_fingerprint": hw.fingerprint(),
            "seq_len": self.seq_len,
            "phase": self.phase,
            "batch": self.batch,
            "backend": self.backend,
            # the analytic backend is the closed form of this SCALE-Sim version's counters
            "scalesim_version": SCALESIM_VERSION,
        }

    def to_dict(self) -> dict:
        label = self.label()
        hw = self.hw
        return {
            **{k: label[k] for k in ("model", "hw", "dataflow", "seq_len", "phase", "batch", "backend")},
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": {part: _totals_dict(self.totals[part]) for part in PARTS},
            "fraction": {"cycles": self.frac_cycles, "memory": self.frac_memory, "dram": self.frac_dram},
            "config": {
                "model_source": self.model.source,
                "architecture": self.model.architecture,
                "attention_windows": {str(w): n for w, n in self.model.window_groups.items() if w},
                "hardware": {
                    "file": hw.source,
                    "rows": hw.rows,
                    "cols": hw.cols,
                    "ifmap_sram_kb": hw.ifmap_sram_kb,
                    "filter_sram_kb": hw.filter_sram_kb,
                    "ofmap_sram_kb": hw.ofmap_sram_kb,
                    "dataflow": hw.dataflow,
                    "fingerprint": label["hw_fingerprint"],
                },
                "backend": self.backend,
                "scalesim": label["scalesim_version"],
                "llm1bit": __version__,
            },
        }
