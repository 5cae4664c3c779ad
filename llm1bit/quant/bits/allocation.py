"""Mixed-bit allocation (design §6): per-bit error fit, the PuLP integer program, the reference's rank rule.

Predicted errors. For each candidate width b, a least-squares polynomial in log space is fitted over
the layers whose true error was measured:

    log err_{l,b}  ~  p_b(log S_l) + g_b log n_l     (degree 1 by default: err = e^{a_b} S^{k_b} n^{g_b})

so every (layer, width) pair gets a predicted error c_{l,b} = exp(p_b(log S_l) + g_b log n_l). The size
term (on by default, `size=False` / `--no-fit-size` drops it) is there because S is not size-free:
with std(Z)^2 ~ ||Z||_F^2 / n, S ~ ||Z||_F^3 / n, while the solver's summed loss grows like ||Z||_F^2,
so err ~ (S n)^(2/3); on SmolLM2-135M (layers of 0.11 M to 0.88 M weights) Kendall tau of S alone
against the measured error is 0.60, of the refined prediction 0.85 to 0.89. Outside the range of the
fitted criteria a polynomial of degree > 1 is continued linearly (its value and slope at the edge), so
a subset fit never extrapolates a parabola.

ILP (`solve_ilp`, the paper's Eq. 4): binary x_{l,b}; one width per layer; minimise
sum c_{l,b} x_{l,b} subject to the parameter-weighted average width <= budget. Solved by CBC through
PuLP (msg off). Widths a layer may not take (pinned layers) are simply absent.

Rank rule (`rank_allocation`, §6.2 exactly): units = every layer, repeated 4 times when "fc" is in
its name (OPT's fc1/fc2 hold 4x the parameters; LLaMA layers count once); units sorted by ascending
criterion; cut points c = cumsum(mix) * len(units); unit of rank r gets candidates[bisect_right(c, r)],
later writes win, so an fc layer takes the width of its highest-ranked copy (the boundary rounds up).
Budget -> mix: the two candidates lo <= B <= hi around the budget share the units, a fraction
(B - lo) / (hi - lo) getting hi (for {2, 3} and B = 2.2: mix 0.8 / 0.2, the reference's default)."""

from __future__ import annotations

import bisect
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from llm1bit.errors import UserError

SOLVERS = ("ilp", "rank")
TINY = 1e-30  # floor of errors and criteria before taking logs


@dataclass(frozen=True)
class LayerCost:
    """One layer of an allocation problem: its size, criterion and predicted error per allowed width."""

    name: str
    params: int
    criterion: float
    costs: Mapping[int, float]  # bits -> predicted error; a width missing here is not allowed
    gain: float = 1.0  # the factor the predicted reparameterization errors were multiplied by


@dataclass
class Allocation:
    bits: dict[str, int]
    average_bits: float
    objective: float
    solver: str
    solve_seconds: float


def parse_candidates(text: str) -> tuple[int, ...]:
    """'2,3' -> (2, 3): distinct integer widths 1 to 8, sorted."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--candidates {text!r}: expected comma-separated integers, e.g. 2,3") from None
    if not values:
        raise UserError("--candidates is empty; e.g. 2,3")
    bad = [v for v in values if not 1 <= v <= 8]
    if bad:
        raise UserError(f"--candidates {text!r}: widths must be 1 to 8 (got {bad[0]})")
    return tuple(values)


def check_budget(budget: float, candidates: Sequence[int]) -> None:
    lo, hi = min(candidates), max(candidates)
    if not math.isfinite(budget) or not lo <= budget <= hi:
        raise UserError(
            f"--budget {budget:g} is outside [{lo}, {hi}], the range of the candidate widths "
            f"{','.join(map(str, candidates))}"
        )


def average_bits(bits: Mapping[str, int], params: Mapping[str, int]) -> float:
    total = sum(params[name] for name in bits)
    return sum(params[name] * b for name, b in bits.items()) / total


def objective(bits: Mapping[str, int], layers: Sequence[LayerCost]) -> float:
    """Summed predicted error of an allocation."""
    return float(sum(layer.costs[bits[layer.name]] for layer in layers))


# ---------------------------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class ErrorFit:
    """log err ~ poly(log S) [+ size_coeff * log n] for one width, fitted on `points` layers with log
    criteria in [x_min, x_max]; n is the layer's parameter count (None: no size term)."""

    bits: int
    coeffs: tuple[float, ...]  # np.polyfit order: highest power first
    x_min: float
    x_max: float
    points: int
    rms: float  # residual RMS in log space
    size_coeff: float | None = None

    def predict(self, criterion: float | np.ndarray, params: float | np.ndarray | None = None) -> np.ndarray:
        x = np.log(np.maximum(np.asarray(criterion, dtype=np.float64), TINY))
        p = np.poly1d(self.coeffs)
        dp = p.deriv()
        inside = np.clip(x, self.x_min, self.x_max)
        y = p(inside) + dp(inside) * (x - inside)  # linear continuation outside the fitted range
        if self.size_coeff is not None:
            if params is None:
                raise ValueError("this fit has a size term: pass the layers' parameter counts")
            y = y + self.size_coeff * np.log(np.asarray(params, dtype=np.float64))
        return np.exp(y)

    def to_dict(self) -> dict:
        size = self.size_coeff is not None
        return {
            "model": "log(err) = poly(log(S))" + (" + size_coeff * log(params)" if size else ""),
            "degree": len(self.coeffs) - 1,
            "coeffs": list(self.coeffs),
            "size_coeff": self.size_coeff,
            "log_criterion_range": [self.x_min, self.x_max],
            "points": self.points,
            "rms_log": self.rms,
        }


def fit_errors(
    criteria: Sequence[float],
    errors: Sequence[float],
    bits: int,
    degree: int = 1,
    params: Sequence[int] | None = None,
) -> ErrorFit:
    """Least-squares fit of log error on a polynomial of log criterion over the measured layers, plus a
    log(parameter count) term when `params` is given."""
    if degree < 0:
        raise UserError(f"--fit-degree {degree} must be >= 0")
    x = np.log(np.maximum(np.asarray(criteria, dtype=np.float64), TINY))
    y = np.log(np.maximum(np.asarray(errors, dtype=np.float64), TINY))
    columns = [x**p for p in range(degree, -1, -1)]
    if params is not None:
        columns.append(np.log(np.asarray(params, dtype=np.float64)))
    design = np.stack(columns, axis=1) if len(x) else np.zeros((0, len(columns)))
    if len(x) < len(columns) or np.linalg.matrix_rank(design) < len(columns):
        size = " and a size term" if params is not None else ""
        raise UserError(
            f"a degree-{degree} fit{size} at {bits} bits needs at least {len(columns)} measured layers with "
            f"distinct criteria{' and sizes' if size else ''}, got {len(np.unique(x))}; measure more layers "
            "(--fit-layers), lower --fit-degree or use --no-fit-size"
        )
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    sol, *_ = np.linalg.lstsq(design / scale, y, rcond=None)
    sol = sol / scale
    resid = y - design @ sol
    return ErrorFit(
        bits=bits,
        coeffs=tuple(float(c) for c in sol[: degree + 1]),
        x_min=float(x.min()),
        x_max=float(x.max()),
        points=len(x),
        rms=float(np.sqrt(np.mean(resid**2))),
        size_coeff=float(sol[-1]) if params is not None else None,
    )


def held_out_predictions(
    criteria: Sequence[float],
    errors: Sequence[float],
    groups: Sequence[int],
    bits: int,
    degree: int = 1,
    params: Sequence[int] | None = None,
) -> np.ndarray | None:
    """Each layer's error predicted by the fit to the *other* groups' layers (leave one decoder block out),
    so a Kendall tau of the refined criterion is not a tau of the fit against its own data. None when
    there are fewer than two groups or a held-out fit is underdetermined."""
    crit = np.asarray(criteria, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    size = None if params is None else np.asarray(params, dtype=np.float64)
    group = np.asarray(groups)
    if len(np.unique(group)) < 2:
        return None
    out = np.empty_like(crit)
    for g in np.unique(group):
        train = group != g
        try:
            fit = fit_errors(crit[train], err[train], bits, degree, None if size is None else size[train])
        except UserError:
            return None
        out[~train] = fit.predict(crit[~train], None if size is None else size[~train])
    return out


def predicted_costs(
    names: Sequence[str],
    params: Sequence[int],
    criteria: Sequence[float],
    fits: Mapping[int, ErrorFit],
    pinned: Mapping[str, int] | None = None,
    gains: Sequence[float] | None = None,
) -> list[LayerCost]:
    """LayerCosts from the per-width fits, each layer's multiplied by its gain (1 without `gains`);
    a pinned layer keeps only its pinned width."""
    pinned = pinned or {}
    gains = [1.0] * len(names) if gains is None else gains
    preds = {b: fit.predict(np.asarray(criteria), np.asarray(params)) for b, fit in fits.items()}
    layers = []
    for i, name in enumerate(names):
        costs = {b: float(preds[b][i]) * gains[i] for b in sorted(fits)}
        if name in pinned:
            costs = {pinned[name]: costs[pinned[name]]}
        layers.append(LayerCost(name, int(params[i]), float(criteria[i]), costs, float(gains[i])))
    return layers


def check_pins(pins: Mapping[str, object], names: Sequence[str], candidates: Sequence[int]) -> dict[str, int]:
    """Validate a {module name: bits} pin map: known names, widths among the candidates."""
    import difflib

    known = set(names)
    out = {}
    for name, value in pins.items():
        if name not in known:
            close = difflib.get_close_matches(name, list(names), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(f"bits file names unknown module {name!r}{hint}; e.g. {names[0]}")
        if isinstance(value, bool) or not isinstance(value, int) or value not in candidates:
            raise UserError(
                f"bits file gives {name} {value!r} bits; allowed: the candidates {','.join(map(str, candidates))}"
            )
        out[name] = value
    return out


# ---------------------------------------------------------------------------------------------- ILP


def chosen_widths(layers: Sequence[LayerCost], x: dict) -> dict[str, int]:
    """Each layer's width from a solved ILP's binary variables x[i, b]; exactly one per layer, else one line."""
    bits = {}
    for i, layer in enumerate(layers):
        chosen = [b for b in layer.costs if (x[i, b].value() or 0) > 0.5]
        if len(chosen) != 1:
            raise UserError(f"the solver returned {len(chosen)} widths for {layer.name}")
        bits[layer.name] = chosen[0]
    return bits


def solve_ilp(
    layers: Sequence[LayerCost],
    budget: float,
    candidates: Sequence[int] | None = None,
    time_limit: float | None = None,
) -> Allocation:
    """Minimise the summed predicted error subject to the parameter-weighted average width <= budget.

    The budget must lie within the range of `candidates` (default: the widths the layers allow); a problem
    whose pinned layers cannot meet it is reported as infeasible."""
    import pulp

    if not layers:
        raise UserError("no layers to allocate")
    widths = sorted({b for layer in layers for b in layer.costs})
    check_budget(budget, candidates or widths)
    for layer in layers:
        if not layer.costs:
            raise UserError(f"layer {layer.name} has no allowed width")
        if not all(math.isfinite(c) for c in layer.costs.values()):
            raise UserError(f"layer {layer.name} has a non-finite predicted error")
    total = float(sum(layer.params for layer in layers))
    base = min(widths)
    # Shift each layer's costs by its cheapest one (a constant), and scale to O(1), for CBC's tolerances.
    floor = [min(layer.costs.values()) for layer in layers]
    spread = max(max(c - f for c in layer.costs.values()) for layer, f in zip(layers, floor, strict=True))
    scale = 1.0 / spread if spread > 0 else 1.0

    start = time.perf_counter()
    prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
    x = {}
    for i, layer in enumerate(layers):
        for b in layer.costs:
            x[i, b] = prob.add_variable(f"x_{i}_{b}", cat=pulp.LpBinary)
    prob += pulp.lpSum((layers[i].costs[b] - floor[i]) * scale * var for (i, b), var in x.items())
    for i, layer in enumerate(layers):
        prob += pulp.lpSum(x[i, b] for b in layer.costs) == 1, f"one_width_{i}"
    # sum_l (n_l / N) * (b - base) * x_{l,b} <= budget - base
    prob += (
        pulp.lpSum(layers[i].params / total * (b - base) * var for (i, b), var in x.items())
        <= budget - base + 1e-12,
        "budget",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PuLP 4 moves CBC to an extra; 3.x bundles it
        cbc = pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit)
    status = prob.solve(cbc)
    seconds = time.perf_counter() - start
    if pulp.LpStatus[status] != "Optimal":
        if pulp.LpStatus[status] == "Infeasible":
            cheapest = sum(layer.params * min(layer.costs) for layer in layers) / total
            raise UserError(
                f"the allocation problem is infeasible: the lowest allowed widths already average "
                f"{cheapest:.4f} bits > budget {budget:g}"
            )
        raise UserError(f"the integer program was not solved to optimality: {pulp.LpStatus[status]}")
    bits = chosen_widths(layers, x)
    params = {layer.name: layer.params for layer in layers}
    avg = average_bits(bits, params)
    if avg > budget * (1 + 1e-9):
        raise UserError(f"the solver's allocation averages {avg:.6f} bits, over the budget {budget:g}")
    return Allocation(bits, avg, objective(bits, layers), "ilp", seconds)


# ---------------------------------------------------------------------------------------------- rank


def budget_mix(budget: float, candidates: Sequence[int]) -> list[float]:
    """Fractions of units per candidate (sorted) for a budget: the two widths around it share the units."""
    cands = sorted(candidates)
    check_budget(budget, cands)
    mix = [0.0] * len(cands)
    if len(cands) == 1:
        mix[0] = 1.0
        return mix
    hi_index = max(1, bisect.bisect_left(cands, budget))
    lo, hi = cands[hi_index - 1], cands[hi_index]
    frac = (budget - lo) / (hi - lo)
    mix[hi_index - 1] = 1.0 - frac
    mix[hi_index] = frac
    return mix


def unit_repeat(name: str) -> int:
    """§6.2: 4 units for OPT's fc1 / fc2 ('fc' anywhere in the name), 1 for every other layer."""
    return 4 if "fc" in name else 1


def rank_bits(
    names: Sequence[str], criteria: Sequence[float], mix: Sequence[float], candidates: Sequence[int]
) -> dict[str, int]:
    """The reference's rule (§6.2), with `mix` the fractions of units for the sorted `candidates`."""
    cands = sorted(candidates)
    units = [i for i, name in enumerate(names) for _ in range(unit_repeat(name))]
    order = np.argsort(np.asarray([criteria[i] for i in units], dtype=np.float64), kind="stable")
    cuts = list(np.cumsum(np.asarray(mix, dtype=np.float64)) * len(units))
    bits: dict[str, int] = {}
    for r, u in enumerate(order):
        index = min(bisect.bisect_right(cuts, r), len(cands) - 1)
        bits[names[units[u]]] = cands[index]  # later writes win
    return {name: bits[name] for name in names}


def rank_allocation(layers: Sequence[LayerCost], budget: float, candidates: Sequence[int]) -> Allocation:
    """§6.2 at the mix the budget maps to; may overshoot the budget (boundary round-up, unweighted LLaMA units)."""
    start = time.perf_counter()
    names = [layer.name for layer in layers]
    for layer in layers:
        if set(layer.costs) != set(candidates):
            raise UserError(f"--solver rank cannot pin layers ({layer.name}); use --solver ilp")
    bits = rank_bits(names, [layer.criterion for layer in layers], budget_mix(budget, candidates), candidates)
    seconds = time.perf_counter() - start
    params = {layer.name: layer.params for layer in layers}
    return Allocation(bits, average_bits(bits, params), objective(bits, layers), "rank", seconds)


def allocate(
    layers: Sequence[LayerCost], budget: float, candidates: Sequence[int], solver: str = "ilp"
) -> Allocation:
    if solver not in SOLVERS:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("solver", solver, SOLVERS)
    check_budget(budget, candidates)
    if solver == "ilp":
        return solve_ilp(layers, budget, candidates)
    return rank_allocation(layers, budget, candidates)
