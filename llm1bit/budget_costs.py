"""Hardware budgets of a bit allocation, priced by the simulator itself: per layer and width, and checked whole.

`llm1bit bits --min-tokens-per-s / --max-energy-per-token-mj / --max-weight-bytes` needs, for every quantized
module and candidate width, what `simulate --quantized` would charge that module once `quantize` has stored it.
Nothing here re-derives a cost: a module's width becomes the `ProjBits` that `load_quantized_model` would read
back from the folder (`Storage.proj_bits`: the bytes `quantize` packs, so bits moved = 8 x bytes / (N x K)),
attached by `layer_widths.attach_bits` (the folder reader's own `_attach`, expert slices averaged per layer), and
the model is priced by `sweep.run_points` (counters, then `costs.price`) or, for weight bytes, by
`costs.operand_costs` on `workload.build_workload`'s GEMMs.

Linearity. Time per step, energy per step and weight bytes per step are sums over GEMMs x count, and the counters
do not depend on widths, so each (module, width) has its own cost and the step's is a fixed part (attention
products, routers) plus the sum: tokens/s >= X is time per step <= tokens per step / X. Widths are priced all
alike (`cost_table`), where blocks fall in one workload group per FFN kind, and each block's share of a group's
GEMMs is their cost x count / blocks. MoE: a layer's expert projections are priced at the mean over its experts of
their bits moved (and code widths); the expected bytes, Σ_j E_j x bytes at load j, are linear in that mean, so
each expert slice adds 1 / experts of the layer's expert GEMMs at its own width, exactly for bytes and energy. Time
per GEMM is max(compute, memory); over a mean it is at most the mean of the slices' (convexity), so the linear
model never under-estimates an MoE layer's time, and `check` (the whole allocation, simulated) decides."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from llm1bit.costs import Pricing, operand_costs
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware
from llm1bit.layer_widths import Storage, attach_bits, module_sites
from llm1bit.model_spec import ModelSpec
from llm1bit.phases import tokens_per_step
from llm1bit.workload import MATMUL_FREE, build_workload

# budget kind -> (flag, unit); a "min" kind is met by values >= the budget, the others by values <=.
KINDS = {
    "min_tokens_per_s": ("--min-tokens-per-s", "tokens/s"),
    "max_energy_per_token_mj": ("--max-energy-per-token-mj", "mJ/token"),
    "max_weight_bytes": ("--max-weight-bytes", "bytes"),
}
HARDWARE_KINDS = ("min_tokens_per_s", "max_energy_per_token_mj")  # need --hw


@dataclass(frozen=True)
class Target:
    """The simulated point a budget is met on (`simulate`'s options); `hw` None: weight bytes only."""

    hw: Hardware | None = None
    seq_len: int = 2048
    phase: str = "decode"
    batch: int = 1
    pricing: Pricing = field(default_factory=Pricing)
    backend: str = "analytic"

    @property
    def tokens(self) -> int:
        return tokens_per_step(self.phase, self.batch, self.seq_len)

    def to_dict(self) -> dict:
        hw = self.hw
        if hw is None:
            return {"seq_len": self.seq_len, "phase": self.phase, "batch": self.batch}
        return {
            "hw": hw.name,
            "hw_file": hw.source,
            "hw_fingerprint": hw.fingerprint(),
            "dataflow": hw.dataflow,
            "freq_mhz": hw.freq_mhz,
            "dram_gbps": hw.dram_gbps,
            "seq_len": self.seq_len,
            "phase": self.phase,
            "batch": self.batch,
            "act_bits": self.pricing.precision.act_bits,
            "kv_bits": self.pricing.precision.kv_bits,
            "bcq_compute": self.pricing.bcq_compute,
            "energy_table": self.pricing.energy.name,
            "energy_table_sha256": self.pricing.energy.sha256,
            "backend": self.backend,
        }


def check_budget_value(kind: str, value: float) -> float:
    """A budget must be a finite positive number."""
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{KINDS[kind][0]} {value:g} must be a positive number")
    return float(value)


def resource(kind: str, value: float, target: Target) -> float:
    """A value in the budget's unit as the summed resource the ILP bounds: seconds per step for tokens/s,
    joules per step for mJ per token, bytes for weight bytes (each sum <= its budget's)."""
    if kind == "min_tokens_per_s":
        return target.tokens / value
    if kind == "max_energy_per_token_mj":
        return value * target.tokens / 1000
    return value


# Met within this relative margin: the same GEMMs summed in another order (blocks grouped otherwise) round
# differently in the last bits, so an allocation that ties the budget exactly may miss it by an ulp.
ROUNDING = 1e-12


def meets(kind: str, value: float, budget: float) -> bool:
    """Whether a simulated value meets the budget (within ROUNDING, relative)."""
    if kind == "min_tokens_per_s":
        return value >= budget * (1 - ROUNDING)
    return value <= budget * (1 + ROUNDING)


def with_widths(model: ModelSpec, bits: Mapping[str, int], storage: Storage) -> ModelSpec:
    """`model` with every named module at its width, as `simulate --quantized` reads the folder back."""
    sites = module_sites(model)
    unknown = [name for name in bits if name not in sites]
    if unknown:
        raise UserError(f"module {unknown[0]!r} is not a quantizable projection of {model.name}")
    per = {name: storage.proj_bits(b, *sites[name].shape) for name, b in bits.items()}
    return attach_bits(model, per, "the allocation")


def _gemm_values(kind: str, model: ModelSpec, target: Target, cache=None) -> list[tuple[object, float]]:
    """(GEMM, its value x count) over one step of `model`: seconds or joules from the simulator's split, or the
    weight bytes of the projections that have their own widths (N x K x bits moved / 8 x count)."""
    if kind == "max_weight_bytes":
        out = []
        for g in build_workload(model, target.seq_len, target.phase, target.batch):
            if g.part == MATMUL_FREE and g.weight_bits is not None:
                out.append((g, g.n * g.k * operand_costs(g, target.pricing)[1] / 8 * g.count))
        return out
    split = simulate(model, target, cache)
    attr = "time_s" if kind == "min_tokens_per_s" else "energy_j"
    return [(x.gemm, getattr(x.cost, attr) * x.gemm.count) for x in split.layers]


def simulate(model: ModelSpec, target: Target, cache=None):
    """The Split `simulate` computes for `model` at `target` (one point, the dataflow of the .cfg)."""
    from llm1bit.sweep import Point, run_points

    if target.hw is None:
        raise UserError("a time or energy budget needs --hw (cloud, edge or a .cfg)")
    point = Point(model, target.hw, target.seq_len, target.phase, target.batch, target.pricing)
    return run_points([point], target.backend, cache=cache)[0]


def measure(kind: str, model: ModelSpec, target: Target, cache=None) -> float:
    """The budget's quantity for a model with per-layer widths, as `simulate --json` reports it: tokens_per_s,
    energy_j x 1000 / tokens per step (mJ per token), or the own-width projections' weight bytes per step."""
    if kind == "max_weight_bytes":
        return float(sum(v for _, v in _gemm_values(kind, model, target)))
    split = simulate(model, target, cache)
    if kind == "min_tokens_per_s":
        return split.tokens_per_s
    return split.energy_j * 1000 / target.tokens


@dataclass(frozen=True)
class CostTable:
    """A budget's resource per step as fixed + Σ per[module][width] (seconds, joules or bytes)."""

    kind: str
    fixed: float
    per: dict[str, dict[int, float]]


def cost_table(
    kind: str,
    model: ModelSpec,
    widths: Mapping[str, Sequence[int]],
    storage: Storage,
    target: Target,
    cache=None,
) -> CostTable:
    """Each module's resource at each of its allowed widths (`widths`: module -> widths), from the simulator's
    pricing of the model with every module at one width at a time (see the module docstring)."""
    if kind not in KINDS:
        raise UserError(f"unknown budget kind {kind!r}")
    sites = module_sites(model)
    all_widths = sorted({b for ws in widths.values() for b in ws})
    # the blocks each workload projection occurs in (attention in all; dense FFN or experts in their own)
    blocks_with: dict[str, set[int]] = {}
    for name in widths:
        for p in sites[name].projections:
            blocks_with.setdefault(p, set()).add(sites[name].block)
    per: dict[str, dict[int, float]] = {name: {} for name in widths}
    fixed = None
    for b in all_widths:
        priced = with_widths(model, dict.fromkeys(widths, b), storage)
        own: dict[
            str, float
        ] = {}  # projection -> one block's value (its GEMMs x count / the blocks they span)
        rest = 0.0
        for g, value in _gemm_values(kind, priced, target, cache):
            if g.part == MATMUL_FREE and g.weight_bits is not None:
                own[g.name] = own.get(g.name, 0.0) + value / len(blocks_with[g.name])
            else:
                rest += value
        fixed = rest if fixed is None else fixed
        for name, allowed in widths.items():
            if b in allowed:
                site = sites[name]
                per[name][b] = sum(own[p] * site.share for p in site.projections)
    return CostTable(kind, float(fixed or 0.0), per)


def best_allocation(table: CostTable) -> dict[str, int]:
    """Each module at its cheapest width in the table's resource (the best any allocation reaches)."""
    return {name: min(costs, key=lambda b: (costs[b], b)) for name, costs in table.per.items()}
