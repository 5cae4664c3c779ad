"""Split: a simulated workload summed into its MatMul (attention heads) and MatMul-free (projections) parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm1bit.costs import Cost, Pricing
from llm1bit.counters import Counters
from llm1bit.hardware import Hardware
from llm1bit.model_spec import ModelSpec
from llm1bit.phases import tokens_per_step
from llm1bit.version import __version__
from llm1bit.workload import MATMUL, MATMUL_FREE, PARTS, Gemm


@dataclass(frozen=True)
class LayerResult:
    gemm: Gemm
    counters: Counters  # of one occurrence
    cost: Cost  # of one occurrence

    def to_dict(self) -> dict:
        c, g, cost = self.counters, self.gemm, self.cost
        return {
            "name": g.name,
            "part": g.part,
            "kind": g.kind,
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
            "dram_ifmap_reads": c.dram_ifmap_reads,
            "dram_filter_reads": c.dram_filter_reads,
            "dram_ofmap_writes": c.dram_ofmap_writes,
            "window": g.window or None,
            "weight_bits": cost.weight_bits,
            "filter_bits": cost.filter_bits,
            "sram_bytes": cost.sram_bytes,
            "dram_bytes": cost.dram_bytes,
            "time_s": cost.time_s,
            "bound": cost.bound,
            "energy_j": cost.energy_j,
        }


@dataclass(frozen=True)
class PartCost:
    """Costs of a part summed over its GEMMs x count."""

    sram_bytes: float = 0.0
    dram_bytes: float = 0.0
    time_s: float = 0.0
    ops_j: float = 0.0
    sram_j: float = 0.0
    dram_j: float = 0.0

    @property
    def energy_j(self) -> float:
        return self.ops_j + self.sram_j + self.dram_j

    def plus(self, cost: Cost, count: int | float) -> PartCost:
        return PartCost(
            self.sram_bytes + cost.sram_bytes * count,
            self.dram_bytes + cost.dram_bytes * count,
            self.time_s + cost.time_s * count,
            self.ops_j + cost.ops_j * count,
            self.sram_j + cost.sram_j * count,
            self.dram_j + cost.dram_j * count,
        )

    def to_dict(self) -> dict:
        return {
            "sram_bytes": self.sram_bytes,
            "dram_bytes": self.dram_bytes,
            "time_s": self.time_s,
            "energy_j": self.energy_j,
            "energy_breakdown_j": {"compute": self.ops_j, "sram": self.sram_j, "dram": self.dram_j},
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
    pricing: Pricing = field(default_factory=Pricing)
    totals: dict[str, Counters] = field(init=False)
    costs: dict[str, PartCost] = field(init=False)

    def __post_init__(self) -> None:
        totals = {part: Counters() for part in PARTS}
        costs = {part: PartCost() for part in PARTS}
        for layer in self.layers:
            part = layer.gemm.part
            totals[part] = totals[part] + layer.counters * layer.gemm.count
            costs[part] = costs[part].plus(layer.cost, layer.gemm.count)
        object.__setattr__(self, "totals", totals)
        object.__setattr__(self, "costs", costs)

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Cycles, DRAM bytes, time and energy per kind of product (attention projection, FFN, expert, router,
        shared expert, attention), x count: the experts' share apart from the other projections."""
        out: dict[str, dict[str, float]] = {}
        for layer in self.layers:
            g, c = layer.gemm, layer.cost
            row = out.setdefault(g.kind, {"cycles": 0, "dram_bytes": 0.0, "time_s": 0.0, "energy_j": 0.0})
            row["cycles"] += layer.counters.cycles * g.count
            row["dram_bytes"] += c.dram_bytes * g.count
            row["time_s"] += c.time_s * g.count
            row["energy_j"] += c.energy_j * g.count
        return out

    def _share(self, attr: str) -> float:
        free, mm = getattr(self.costs[MATMUL_FREE], attr), getattr(self.costs[MATMUL], attr)
        return free / (free + mm)

    @property
    def latency_s(self) -> float:
        """One forward step: Σ time_s x count over every GEMM (no overlap across GEMMs)."""
        return self.costs[MATMUL_FREE].time_s + self.costs[MATMUL].time_s

    @property
    def energy_j(self) -> float:
        return self.costs[MATMUL_FREE].energy_j + self.costs[MATMUL].energy_j

    @property
    def tokens_per_s(self) -> float:
        """Decode: batch tokens per step; prefill: batch x l tokens per step."""
        return tokens_per_step(self.phase, self.batch, self.seq_len) / self.latency_s

    @property
    def frac_time(self) -> float:
        return self._share("time_s")

    @property
    def frac_energy(self) -> float:
        return self._share("energy_j")

    @property
    def frac_dram_bytes(self) -> float:
        return self._share("dram_bytes")

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
        label = point_label(
            self.model, self.hw, self.seq_len, self.phase, self.batch, self.backend, self.pricing
        )
        return {**label, **self._per_layer_bits()} if self.model.proj_bits else label

    def _per_layer_bits(self) -> dict:
        """With per-layer widths: the projections' mean code bits, weighted by their weights, and 'per-layer'."""
        free = [x for x in self.layers if x.gemm.part == MATMUL_FREE]
        weights = sum(x.gemm.n * x.gemm.k * x.gemm.count for x in free)
        bits = sum(x.cost.weight_bits * x.gemm.n * x.gemm.k * x.gemm.count for x in free) / weights
        return {"weight_bits": bits, "weight_format": "per-layer"}

    def to_dict(self) -> dict:
        label = self.label()
        hw = self.hw
        return {
            **{k: label[k] for k in ("model", "hw", "dataflow", "seq_len", "phase", "batch", "backend")},
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": {
                part: {**_totals_dict(self.totals[part]), **self.costs[part].to_dict()} for part in PARTS
            },
            "fraction": {
                "cycles": self.frac_cycles,
                "memory": self.frac_memory,
                "dram": self.frac_dram,
                "dram_bytes": self.frac_dram_bytes,
                "time": self.frac_time,
                "energy": self.frac_energy,
            },
            "by_kind": self.by_kind(),
            "latency_s": self.latency_s,
            "tokens_per_s": self.tokens_per_s,
            "energy_j": self.energy_j,
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
                    "freq_mhz": hw.freq_mhz,
                    "dram_gbps": hw.dram_gbps,
                },
                "precision": self.pricing.precision.to_dict(),
                "bcq_compute": self.pricing.bcq_compute,
                "energy_table": self.pricing.energy.to_dict(),
                "backend": self.backend,
                "scalesim": label["scalesim_version"],
                "llm1bit": __version__,
            },
        }


def point_label(
    model: ModelSpec, hw: Hardware, seq_len: int, phase: str, batch: int, backend: str, pricing: Pricing
) -> dict:
    """Everything that decides a point's numbers, flat (the leading CSV columns; per-layer widths aside)."""
    from llm1bit.backends.scalesim_runner import SCALESIM_VERSION

    return {
        "model": model.name,
        "model_source": model.source,
        "architecture": model.architecture,
        "hw": hw.name,
        "hw_file": hw.source,
        "array_rows": hw.rows,
        "array_cols": hw.cols,
        "ifmap_sram_kb": hw.ifmap_sram_kb,
        "filter_sram_kb": hw.filter_sram_kb,
        "ofmap_sram_kb": hw.ofmap_sram_kb,
        "dataflow": hw.dataflow,
        "hw_fingerprint": hw.fingerprint(),
        "seq_len": seq_len,
        "phase": phase,
        "batch": batch,
        "backend": backend,
        # the analytic backend is the closed form of this SCALE-Sim version's counters
        "scalesim_version": SCALESIM_VERSION,
        **pricing.precision.to_dict(),
        "freq_mhz": hw.freq_mhz,
        "dram_gbps": hw.dram_gbps,
        "energy_table": pricing.energy.name,
        "energy_table_sha256": pricing.energy.sha256,
    }
