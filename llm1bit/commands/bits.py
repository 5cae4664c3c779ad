"""`llm1bit bits`: sensitivity-based mixed-bit allocation (ShiftAddLLM §6) written as a bits config."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from llm1bit.errors import UserError

FIGURE_NAMES = ("sal_fig4", "sal_fig5", "sal_fig7")
COSTS = ("output", "weight")  # what the ILP minimises per layer (see `analyse`)

EPILOG = """\b
Examples:
  llm1bit bits --model ../shared/data/models/stories260K --calib ../shared/data/tinystories/valid-head.txt \\
      --nsamples 16 --seqlen 256 --budget 2.2 -o alloc.json
  llm1bit quantize --model ../shared/data/models/stories260K --mode lat --bits-config alloc.json \\
      --calib ../shared/data/tinystories/valid-head.txt --nsamples 16 --seqlen 256 -o out/mixed
  llm1bit bits --model SmolLM2-135M-Instruct.Q4_1.gguf --calib ../shared/data/wikitext-2/valid.tokenized.txt \\
      --nsamples 16 --seqlen 512 --budget 2.2 --record-errors --figures figures -o smol-2.2.json
"""


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
) -> BitsResult:
    """Criterion + measured errors (FP model), per-width fits, allocation, Kendall tau.

    cost "output": the ILP minimises the predicted reparameterization errors times each layer's measured
    gain to the relative decoder-output error (`output_gains`); "weight": the predicted errors alone.

    Mixture-of-experts layers: every expert slice is its own layer (criterion and errors from its routed
    tokens); slices on the pipeline's identity-Hessian fallback (too few routed tokens) are measured as the
    pipeline quantizes them but left out of the fits and Kendall taus, and are predicted like unmeasured
    layers from their (routed-Hessian) criterion."""
    from llm1bit.quant.allocation import (
        allocate,
        check_pins,
        fit_errors,
        held_out_predictions,
        predicted_costs,
    )
    from llm1bit.quant.models import find_decoder_stack
    from llm1bit.quant.sensitivity import kendall_taus, measure_layers, measured_positions, output_gains

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
    if budget is not None:
        result.allocation = allocate(result.costs, budget, candidates, solver)
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


def result_json(result: BitsResult, budget: float | None, settings: dict) -> dict:
    """The output file: the bits config `quantize --bits-config` reads, plus how it was obtained."""
    alloc = result.allocation
    out: dict[str, Any] = {}
    if alloc is not None:
        out.update(
            layers=alloc.bits,
            average_bits=alloc.average_bits,
            budget=budget,
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
        from llm1bit.quant.pipeline import FALLBACK

        out["fallback"] = {
            "rule": FALLBACK,
            "modules": [layer.name for layer in experts if layer.fallback],
            "note": "measured as quantize does (identity Hessian, error against the routed Hessian); "
            "left out of the fits, gains and Kendall taus",
        }
    out["timings"] = result.timings
    return out


@click.command(epilog=EPILOG)
@click.option(
    "--model", "model_src", required=True, help="Local folder, FILE.gguf or hub id (hub only if reachable)."
)
@click.option("--calib", required=True, type=click.Path(dir_okay=False), help="Plain-text calibration file.")
@click.option("--nsamples", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per calibration window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of window sampling and rotations.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--budget", type=float, help="Average bits per weight (parameter-weighted), e.g. 2.2.")
@click.option("--candidates", default="2,3", show_default=True, help="Bit widths a layer may get.")
@click.option("--solver", default="ilp", show_default=True, help="ilp (PuLP/CBC) or rank (reference §6.2).")
@click.option(
    "--mode", default="lat", show_default=True, help="shiftaddllm mode of the measured errors: lat or acc."
)
@click.option(
    "--cost",
    default="output",
    show_default=True,
    help="What the ILP minimises per layer: output (predicted error x the layer's measured gain to its "
    "relative decoder-output error; tracks perplexity) or weight (predicted reparameterization error "
    "alone, Eq. 4).",
)
@click.option(
    "--output-windows",
    type=int,
    default=16,
    show_default=True,
    help="Calibration windows the decoder-output errors are measured on (--cost output).",
)
@click.option("--groupsize", type=int, default=-1, show_default=True, help="As for quantize.")
@click.option("--bcq-rounds", type=int, default=50, show_default=True, help="As for quantize.")
@click.option("--apot-terms", type=int, default=3, show_default=True, help="As for quantize.")
@click.option("--no-incoherence", is_flag=True, help="acc mode: skip the rescale + random rotations.")
@click.option(
    "--fit-degree", type=int, default=1, show_default=True, help="Degree of log(err) = poly(log S) per width."
)
@click.option(
    "--fit-size/--no-fit-size",
    default=True,
    show_default=True,
    help="Add a log(parameter count) term to the fit.",
)
@click.option(
    "--fit-layers", type=int, help="Measure errors of only N layers, spread evenly (default: all layers)."
)
@click.option(
    "--fix",
    "fix_file",
    type=click.Path(dir_okay=False),
    help='Bits file {"layers": {"<module>": bits}} of layers pinned to a width (ilp).',
)
@click.option("--record-errors", is_flag=True, help="Measure every layer and report Kendall tau per width.")
@click.option(
    "--figures", "figures_dir", type=click.Path(file_okay=False), help="Write sal_fig4/5/7 PNG + CSV here."
)
@click.option("--only", help=f"Comma list of figures to draw ({', '.join(FIGURE_NAMES)}).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Allocation JSON (a bits config).")
def bits(
    model_src: str,
    calib: str,
    nsamples: int,
    seqlen: int,
    seed: int,
    device: str,
    budget: float | None,
    candidates: str,
    solver: str,
    mode: str,
    cost: str,
    output_windows: int,
    groupsize: int,
    bcq_rounds: int,
    apot_terms: int,
    no_incoherence: bool,
    fit_degree: int,
    fit_size: bool,
    fit_layers: int | None,
    fix_file: str | None,
    record_errors: bool,
    figures_dir: str | None,
    only: str | None,
    output: str | None,
) -> None:
    """Choose a bit width per linear layer under an average-bits budget.

    Each layer's criterion S = ||W/d||_F * std(W/d)^2 (d from the calibration Hessian of the FP model)
    is mapped to a predicted reparameterization error per width by a least-squares fit of log(measured
    error) on log(S) and log(size). With --cost output (default) each layer's predictions are multiplied
    by its measured gain to the relative error of its decoder layer's output, which puts q/k/v/o and
    MLP layers in one currency that tracks perplexity. The ILP minimises the summed costs with the
    parameter-weighted average width <= --budget; --solver rank applies the reference's ranking/quantile
    rule on S instead. The output JSON is read by `llm1bit quantize --bits-config`."""
    from llm1bit.quant.allocation import SOLVERS, check_budget, parse_candidates
    from llm1bit.quant.config import QuantSpec
    from llm1bit.quant.pipeline import check_device, read_bits_config

    cands = parse_candidates(candidates)
    if solver not in SOLVERS:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("solver", solver, SOLVERS)
    if cost not in COSTS:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("cost", cost, COSTS)
    if output_windows < 1:
        raise UserError(f"--output-windows {output_windows} must be >= 1")
    if budget is not None:
        check_budget(budget, cands)
    spec = QuantSpec(
        method="shiftaddllm",
        mode=mode,
        groupsize=groupsize,
        bcq_rounds=bcq_rounds,
        apot_terms=apot_terms,
        incoherence=not no_incoherence,
        seed=seed,
    ).validate()
    for b in cands:
        spec.with_bits(b)
    if fit_layers is not None and fit_layers < fit_degree + 1:
        raise UserError(
            f"--fit-layers {fit_layers} is too few for a degree-{fit_degree} fit (need >= {fit_degree + 1})"
        )
    figures = _figure_names(only) if figures_dir else ()
    if only and not figures_dir:
        raise UserError("--only selects figures; give --figures DIR too")
    if "sal_fig7" in figures and budget is None:
        raise UserError("sal_fig7 draws the allocation: give --budget")
    if budget is None and not record_errors and not figures:
        raise UserError("nothing to do: give --budget B (allocation), --record-errors and/or --figures DIR")
    if output and budget is None:
        raise UserError("-o writes an allocation: give --budget B")
    if fix_file and solver != "ilp":
        raise UserError("--fix pins layers for the integer program; use it with --solver ilp")
    pins = read_bits_config(fix_file) if fix_file else None
    if not Path(calib).is_file():
        raise UserError(f"calibration file {calib} does not exist")
    if output:
        parent = Path(output).absolute().parent
        if not parent.is_dir():
            raise UserError(f"cannot write {output}: folder {parent} does not exist")
    if figures_dir:
        fig_parent = Path(figures_dir).absolute().parent
        if not fig_parent.is_dir():
            raise UserError(f"cannot write figures into {figures_dir}: folder {fig_parent} does not exist")
    device = check_device(device)

    from rich.console import Console

    from llm1bit.quant.calib import calibration_windows
    from llm1bit.quant.models import check_seqlen, load_model

    console = Console(stderr=True)
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_src)
    check_seqlen(model, seqlen)
    windows = calibration_windows(calib, tokenizer, nsamples, seqlen, seed)
    load_seconds = time.perf_counter() - t0
    with console.status("criterion and errors") as status:
        result = analyse(
            model,
            windows,
            spec,
            cands,
            budget,
            solver,
            fit_degree,
            fit_layers,
            pins,
            record_errors or bool({"sal_fig4", "sal_fig5"} & set(figures)),
            device=device,
            progress=lambda text: status.update(text),
            fit_size=fit_size,
            cost=cost,
            output_windows=output_windows,
        )
    result.timings["load_seconds"] = load_seconds
    settings = {
        "model": str(model_src),
        "calib": str(calib),
        "nsamples": nsamples,
        "seqlen": seqlen,
        "seed": seed,
        "candidates": list(cands),
        "budget": budget,
        "solver": solver,
        "cost": cost,
        "output_windows": min(output_windows, nsamples) if cost == "output" else None,
        "method": "shiftaddllm",
        "mode": mode,
        "groupsize": groupsize,
        "bcq_rounds": bcq_rounds,
        "apot_terms": apot_terms,
        "incoherence": spec.incoherence if mode == "acc" else False,
        "fit_degree": fit_degree,
        "fit_size": fit_size,
        "fit_layers": sum(1 for layer in result.layers if layer.errors),
        "pinned": pins or {},
        "device": device,
    }
    _print_summary(result, budget)
    if output:
        from llm1bit.atomic import atomic_write_text

        atomic_write_text(output, json.dumps(result_json(result, budget, settings), indent=2) + "\n")
        click.echo(f"wrote {output}")
    if figures:
        from llm1bit.quant.sal_figures import draw_figures

        out = Path(figures_dir)
        out.mkdir(exist_ok=True)
        paths = draw_figures(figures, result, out, model_tag(model_src), settings)
        for path in paths:
            click.echo(f"wrote {path}")


def _figure_names(only: str | None) -> tuple[str, ...]:
    if not only:
        return FIGURE_NAMES
    from llm1bit.errors import unknown_choice

    names = [x.strip() for x in only.split(",") if x.strip()]
    for name in names:
        if name not in FIGURE_NAMES:
            raise unknown_choice("figure", name, FIGURE_NAMES)
    return tuple(n for n in FIGURE_NAMES if n in names)


def model_tag(model_src: str) -> str:
    """A file-name tag for the model: the folder or file name without '.gguf' and quant suffixes."""
    name = Path(str(model_src).rstrip("/")).name or "model"
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _print_summary(result: BitsResult, budget: float | None) -> None:
    layers = result.layers
    measured = sum(1 for layer in layers if layer.errors)
    t = result.timings
    click.echo(
        f"criterion of {len(layers)} linears, measured errors of {measured} at "
        f"{','.join(map(str, result.fits))} bits (forward {t.get('walk_seconds', 0):.1f} s, criterion "
        f"{t.get('criterion_seconds', 0):.1f} s, measuring {t.get('measure_seconds', 0):.1f} s)"
    )
    for b, fit in result.fits.items():
        coeffs = ", ".join(f"{c:.4g}" for c in fit.coeffs)
        size = "" if fit.size_coeff is None else f" + {fit.size_coeff:.4g} log(params)"
        click.echo(
            f"fit {b} bits: log(err) = poly(log S){size}, poly coeffs [{coeffs}] (highest power first), "
            f"rms {fit.rms:.3f} over {fit.points} layers"
        )
    if result.taus is not None:
        n = next(iter(result.taus.values()))["layers"] if result.taus else 0
        held = result.taus_held_out or {}
        parts = [
            f"{b} bits {result.taus_refined[b]['tau']:.3f}"
            + (f" (held-out blocks {held[b]['tau']:.3f})" if b in held else "")
            + f", S alone {t['tau']:.3f}"
            for b, t in result.taus.items()
        ]
        click.echo(
            f"kendall tau, refined criterion vs measured reparameterization error over {n} layers: "
            + "; ".join(parts)
        )
    fallbacks = [layer.name for layer in layers if layer.fallback]
    if fallbacks:
        from llm1bit.quant.pipeline import FALLBACK

        shown = ", ".join(fallbacks[:8]) + (f" and {len(fallbacks) - 8} more" if len(fallbacks) > 8 else "")
        click.echo(
            f"{len(fallbacks)} expert slices measured with the {FALLBACK} (left out of the fits): {shown}"
        )
    alloc = result.allocation
    if alloc is not None:
        counts: dict[int, int] = {}
        for b in alloc.bits.values():
            counts[b] = counts.get(b, 0) + 1
        mix = ", ".join(f"{counts[b]} at {b} bits" for b in sorted(counts))
        click.echo(
            f"allocation ({alloc.solver}): average {alloc.average_bits:.4f} bits (budget {budget:g}), "
            f"objective {alloc.objective:.6g}, {mix}, solved in {alloc.solve_seconds:.3f} s"
        )
