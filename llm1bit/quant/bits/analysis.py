"""What one `llm1bit bits` run computes, as a library: each layer's criterion and measured errors on the FP
model, the per-width fits, the allocation, Kendall taus, and the JSON the command writes (a bits file,
`llm1bit.format.bits_file`, plus how it was obtained). The command and `scripts/bench_bits.py` share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COSTS = ("output", "weight")  # what the ILP minimises per layer (see `analyse`)


@dataclass
class BitsResult:
    """Everything one `bits` run computed (the CLI writes it; the benchmark reuses it)."""

    layers: list  # LayerSensitivity, in module order
    fits: dict = field(default_factory=dict)  # bits -> ErrorFit
    costs: list = field(default_factory=list)  # LayerCost
    allocation: Any = None  # Allocation or None
    taus: dict | None = None  # bits -> {tau, pvalue, layers}
    taus_per_param: dict | None = None
    taus_refined: dict | None = None  # tau of the fitted (refined) prediction vs the measured error
    taus_held_out: dict | None = None  # the same with each block predicted by a fit to the other blocks
    gains: list | None = None  # per layer: reparameterization error -> relative output error (cost output)
    timings: dict = field(default_factory=dict)
    predicted: float | None = None  # the allocation's value in its budget's unit (hardware: simulated whole)


def analyse(
    model,
    windows,
    spec,
    candidates: tuple[int, ...],
    budget: float | None,
    solver: str,
    fit_degree: int,
    fit_layers: int | None,
    pins: dict[str, int] | None,
    record_errors: bool,
    device: str = "cpu",
    progress=None,
    fit_size: bool = True,
    cost: str = "output",
    output_windows: int | None = 16,
    hardware=None,
) -> BitsResult:
    """Criterion + measured errors (FP model), per-width fits, allocation, Kendall tau.

    cost "output": the ILP minimises the predicted reparameterization errors times each layer's measured
    gain to the relative decoder-output error (`output_gains`); "weight": the predicted errors alone.

    Mixture-of-experts layers: every expert slice is its own layer (criterion and errors from its routed
    tokens); slices on the pipeline's identity-Hessian fallback (too few routed tokens) are measured as the
    pipeline quantizes them but left out of the fits and Kendall taus, and are predicted like unmeasured
    layers from their (routed-Hessian) criterion.

    `hardware` (a `quant.bits.hardware.HardwareBudget`) replaces the average-bits budget: the ILP then bounds the
    simulated time, energy or weight bytes, and `predicted` is the allocation's simulated value."""
    from llm1bit.quant.bits.allocation import (
        allocate,
        check_pins,
        fit_errors,
        held_out_predictions,
        predicted_costs,
    )
    from llm1bit.quant.bits.sensitivity import kendall_taus, measure_layers, measured_positions, output_gains
    from llm1bit.quant.walk.decoder_stack import find_decoder_stack

    if cost not in COSTS:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("cost", cost, COSTS)

    names = find_decoder_stack(model).module_names()
    pins = check_pins(pins or {}, names, candidates)
    wanted = measured_positions(len(names), None if record_errors else fit_layers)
    layers, timings = measure_layers(
        model,
        windows,
        spec,
        candidates,
        lambda pos, info: pos in wanted,
        device=device,
        progress=progress,
        output=cost == "output",
        output_windows=output_windows,
    )
    result = BitsResult(layers=layers, timings=timings)
    fitted = [layer for layer in layers if not layer.fallback]  # fallback slices: not the Hessian quantizer
    measured = [layer for layer in fitted if layer.errors]
    for b in candidates:
        result.fits[b] = fit_errors(
            [layer.criterion for layer in measured],
            [layer.errors[b] for layer in measured],
            b,
            fit_degree,
            [layer.params for layer in measured] if fit_size else None,
        )
    if cost == "output":
        result.gains = output_gains(layers)
    result.costs = predicted_costs(
        [layer.name for layer in layers],
        [layer.params for layer in layers],
        [layer.criterion for layer in layers],
        result.fits,
        pins,
        result.gains,
    )
    if hardware is not None:
        result.allocation, result.predicted = hardware.allocate(result.costs)
    elif budget is not None:
        result.allocation = allocate(result.costs, budget, candidates, solver)
        result.predicted = result.allocation.average_bits
    if record_errors:
        result.taus = kendall_taus(fitted)
        result.taus_per_param = kendall_taus(fitted, per_param=True)
        predicted = {
            layer.name: {
                b: float(fit.predict(layer.criterion, layer.params)) for b, fit in result.fits.items()
            }
            for layer in layers
        }
        result.taus_refined = kendall_taus(fitted, predicted=predicted)
        held_out: dict[str, dict[int, float]] = {layer.name: {} for layer in measured}
        for b in candidates:
            values = held_out_predictions(
                [layer.criterion for layer in measured],
                [layer.errors[b] for layer in measured],
                [layer.block for layer in measured],
                b,
                fit_degree,
                [layer.params for layer in measured] if fit_size else None,
            )
            if values is None:
                held_out = {}
                break
            for layer, value in zip(measured, values, strict=True):
                held_out[layer.name][b] = float(value)
        if held_out:
            result.taus_held_out = kendall_taus(measured, predicted=held_out)
    return result


def result_json(result: BitsResult, budget, settings: dict) -> dict:
    """The output file: the bits config `quantize --bits-config` reads, plus how it was obtained.

    `budget` is a `quant.bits.hardware.Budget` or a number (average bits); the file's `budget` is {kind, value}
    and `predicted` the allocation's value in that unit (tokens_per_s as `simulate --json` reports it, energy per
    token in mJ, weight bytes per step, or average bits)."""
    from llm1bit.quant.bits.hardware import AVERAGE_BITS, Budget

    if budget is not None and not isinstance(budget, Budget):
        budget = Budget(AVERAGE_BITS, float(budget))
    alloc = result.allocation
    out: dict[str, Any] = {}
    if alloc is not None:
        predicted = result.predicted
        if predicted is None and budget is not None and budget.kind == AVERAGE_BITS:
            predicted = alloc.average_bits
        out.update(
            layers=alloc.bits,
            average_bits=alloc.average_bits,
            budget=None if budget is None else budget.to_dict(),
            predicted=predicted,
            objective=alloc.objective,
            solver=alloc.solver,
            solve_seconds=alloc.solve_seconds,
        )
    out["settings"] = settings
    out["error"] = (
        "measured_errors: reparameterization error, QuantizedWeight.error of quantize_weight (1/2 tr(E H E^T), "
        "E = W - Q in the original basis) with Hessians of the unquantized model; predicted_errors: the "
        "per-width fit of it on the criterion; output_errors: relative decoder-layer output error "
        "sum_t ||y_t' - y_t||^2 / ||y_t||^2 per window; gain: geometric mean of output_errors / "
        "measured_errors; costs = predicted_errors x gain; objective = sum of the allocation's costs"
    )
    out["fits"] = {str(b): fit.to_dict() for b, fit in result.fits.items()}
    if result.taus is not None:
        out["kendall_tau"] = {str(b): t for b, t in result.taus.items()}
        out["kendall_tau_per_param"] = {str(b): t for b, t in result.taus_per_param.items()}
        out["kendall_tau_refined"] = {str(b): t for b, t in result.taus_refined.items()}
        if result.taus_held_out is not None:
            out["kendall_tau_refined_held_out"] = {str(b): t for b, t in result.taus_held_out.items()}
    costs = {c.name: c for c in result.costs}
    out["sublayers"] = [
        {
            **layer.to_dict(),
            "predicted_errors": {
                str(b): e / costs[layer.name].gain for b, e in costs[layer.name].costs.items()
            },
            "gain": costs[layer.name].gain,
            "costs": {str(b): e for b, e in costs[layer.name].costs.items()},
            **({"bits": alloc.bits[layer.name]} if alloc is not None else {}),
        }
        for layer in result.layers
    ]
    experts = [layer for layer in result.layers if layer.tokens is not None]
    if experts:
        from llm1bit.quant.numerics.column_solver import FALLBACK

        out["fallback"] = {
            "rule": FALLBACK,
            "modules": [layer.name for layer in experts if layer.fallback],
            "note": "measured as quantize does (identity Hessian, error against the routed Hessian); "
            "left out of the fits, gains and Kendall taus",
        }
    out["timings"] = result.timings
    return out


def model_tag(model_src: str) -> str:
    """A file-name tag for the model: the folder or file name without '.gguf' and quant suffixes."""
    name = Path(str(model_src).rstrip("/")).name or "model"
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
