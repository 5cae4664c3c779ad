"""Bit allocation under a hardware budget: simulated tokens/s, energy per token or weight bytes per step.

The costs per (layer, width) are the simulator's (`llm1bit.budget_costs.cost_table`: what `simulate --quantized`
charges the module once `quantize` has stored it at that width, mode and groupsize). The integer program is the
average-bits one (`allocation.solve_ilp`) with the budget row replaced by

    Σ_l Σ_b r_{l,b} x_{l,b} <= R - fixed

R the budget as a resource per step (seconds: tokens per step / X; joules: X x tokens per step / 1000; bytes),
each layer's row shifted by its cheapest width and the whole row divided by its spread, so every coefficient is
in [0, 1] and CBC's absolute tolerances (1e-7) do not decide. The chosen allocation is then priced whole, through
the same accounting as `simulate --quantized` (`check`); if it misses the budget (rounding, or an MoE layer's time,
which the linear model bounds from above), R is tightened by the miss and the program solved again."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llm1bit.budget_costs import (
    HARDWARE_KINDS,
    KINDS,
    CostTable,
    Storage,
    Target,
    best_allocation,
    cost_table,
    measure,
    meets,
    resource,
    with_widths,
)
from llm1bit.errors import UserError
from llm1bit.model_spec import ModelSpec
from llm1bit.quant.bits.allocation import Allocation, LayerCost, average_bits, chosen_widths, objective

AVERAGE_BITS = "average_bits"
BUDGET_KINDS = (AVERAGE_BITS, *KINDS)
FLAGS = {AVERAGE_BITS: "--budget", **{kind: flag for kind, (flag, _) in KINDS.items()}}
UNITS = {AVERAGE_BITS: "bits", **{kind: unit for kind, (_, unit) in KINDS.items()}}
MAX_TIGHTENINGS = 8


@dataclass(frozen=True)
class Budget:
    """What `llm1bit bits` was asked to meet: a kind (BUDGET_KINDS) and one value in its unit."""

    kind: str
    value: float

    @property
    def hardware(self) -> bool:
        return self.kind in HARDWARE_KINDS

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    def text(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        return f"{v:.6g} {UNITS[self.kind]}"


def pick_budget(given: Mapping[str, float | None]) -> Budget | None:
    """The one budget among {kind: value or None}; two at once is a one-line error, a bad value too."""
    chosen = [(kind, value) for kind, value in given.items() if value is not None]
    if len(chosen) > 1:
        raise UserError(f"{FLAGS[chosen[0][0]]} and {FLAGS[chosen[1][0]]}: give exactly one budget")
    if not chosen:
        return None
    kind, value = chosen[0]
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{FLAGS[kind]} {value:g} must be a positive number")
    return Budget(kind, float(value))


def solve_resource_ilp(
    layers: Sequence[LayerCost], table: CostTable, limit: float, time_limit: float | None = None
) -> Allocation:
    """Minimise the summed predicted error subject to fixed + Σ table.per[l][b] x_{l,b} <= limit."""
    import pulp

    if not layers:
        raise UserError("no layers to allocate")
    for layer in layers:
        if not all(math.isfinite(c) for c in layer.costs.values()):
            raise UserError(f"layer {layer.name} has a non-finite predicted error")
    res = [{b: table.per[layer.name][b] for b in layer.costs} for layer in layers]
    low = [min(r.values()) for r in res]
    spread = sum(max(r.values()) - lo for r, lo in zip(res, low)) or 1.0
    rhs = (limit - table.fixed - sum(low)) / spread
    floor = [min(layer.costs.values()) for layer in layers]
    cspread = max(max(c - f for c in layer.costs.values()) for layer, f in zip(layers, floor)) or 1.0

    start = time.perf_counter()
    prob = pulp.LpProblem("hardware_bit_allocation", pulp.LpMinimize)
    x = {}
    for i, layer in enumerate(layers):
        for b in layer.costs:
            x[i, b] = prob.add_variable(f"x_{i}_{b}", cat=pulp.LpBinary)
    prob += pulp.lpSum((layers[i].costs[b] - floor[i]) / cspread * var for (i, b), var in x.items())
    for i, layer in enumerate(layers):
        prob += pulp.lpSum(x[i, b] for b in layer.costs) == 1, f"one_width_{i}"
    prob += pulp.lpSum((res[i][b] - low[i]) / spread * var for (i, b), var in x.items()) <= rhs, "budget"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cbc = pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit)
    status = prob.solve(cbc)
    seconds = time.perf_counter() - start
    if pulp.LpStatus[status] != "Optimal":
        raise UserError(f"the integer program was not solved to optimality: {pulp.LpStatus[status]}")
    bits = chosen_widths(layers, x)
    params = {layer.name: layer.params for layer in layers}
    return Allocation(bits, average_bits(bits, params), objective(bits, layers), "ilp", seconds)


@dataclass
class HardwareBudget:
    """A budget in simulated units for one model: its cost table and the whole-allocation check."""

    budget: Budget
    model: ModelSpec  # the architecture, no per-layer widths
    storage: Storage
    target: Target
    table: CostTable
    best: float  # the best value any allocation reaches (every module at its cheapest allowed width)

    @classmethod
    def build(
        cls,
        budget: Budget,
        model: ModelSpec,
        widths: Mapping[str, Sequence[int]],
        storage: Storage,
        target: Target,
    ) -> HardwareBudget:
        """Price every module at every allowed width; an unreachable budget is a one-line error giving the best."""
        if budget.kind not in KINDS:
            raise UserError(f"{FLAGS[budget.kind]} is not a hardware budget")
        table = cost_table(budget.kind, model, widths, storage, target)
        out = cls(budget, model, storage, target, table, 0.0)
        out.best = out.predict(best_allocation(table))
        if not meets(budget.kind, out.best, budget.value):
            raise UserError(
                f"{FLAGS[budget.kind]} {budget.value:g} cannot be met: the best any allocation reaches is "
                f"{budget.text(out.best)} (every layer at its cheapest candidate width)"
            )
        return out

    def predict(self, bits: Mapping[str, int]) -> float:
        """The budget's quantity of an allocation, priced whole as `simulate --quantized` prices its folder."""
        return measure(self.budget.kind, with_widths(self.model, bits, self.storage), self.target)

    def linear(self, bits: Mapping[str, int]) -> float:
        """The cost table's resource of an allocation (what the integer program bounds)."""
        return self.table.fixed + sum(self.table.per[name][b] for name, b in bits.items())

    def allocate(self, layers: Sequence[LayerCost]) -> tuple[Allocation, float]:
        """The ILP's allocation and its checked value; tightened and re-solved while the check misses."""
        kind, value = self.budget.kind, self.budget.value
        limit = resource(kind, value, self.target)
        seconds = 0.0
        for _ in range(MAX_TIGHTENINGS):
            alloc = solve_resource_ilp(layers, self.table, limit)
            seconds += alloc.solve_seconds
            predicted = self.predict(alloc.bits)
            if meets(kind, predicted, value):
                alloc.solve_seconds = seconds
                return alloc, predicted
            miss = resource(kind, predicted, self.target) - resource(kind, value, self.target)
            limit -= max(miss, abs(limit) * 1e-12)
        raise UserError(
            f"{FLAGS[kind]} {value:g}: no allocation the integer program found meets it when simulated whole "
            f"after {MAX_TIGHTENINGS} tightenings (last {self.budget.text(predicted)})"
        )


def hardware_budget(
    model,
    model_src: str,
    budget: Budget,
    spec,
    candidates: Sequence[int],
    pins: Mapping[str, int] | None,
    target: Target,
) -> HardwareBudget:
    """The HardwareBudget of a loaded model (its config and decoder stack), before any measurement, so an
    unreachable budget is refused before the sensitivity walk."""
    from pathlib import Path

    from llm1bit.hf_config import spec_from_hf_config
    from llm1bit.quant.bits.allocation import check_pins
    from llm1bit.quant.walk.decoder_stack import find_decoder_stack

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    arch = spec_from_hf_config(config, Path(model_src) / "config.json", name=Path(str(model_src)).name)
    names = find_decoder_stack(model).module_names()
    pins = check_pins(pins or {}, names, candidates)
    widths = {name: (pins[name],) if name in pins else tuple(candidates) for name in names}
    storage = Storage(spec.mode, spec.groupsize, spec.apot_terms, spec.incoherence)
    return HardwareBudget.build(budget, arch, widths, storage, target)
