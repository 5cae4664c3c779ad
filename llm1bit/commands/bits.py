"""`llm1bit bits`: sensitivity-based mixed-bit allocation (ShiftAddLLM §6) written as a bits config."""

from __future__ import annotations

import time
from pathlib import Path

import click

from llm1bit.errors import UserError
from llm1bit.quant.numerics.methods import MODES, choices_text

FIGURE_NAMES = ("sal_fig4", "sal_fig5", "sal_fig7")

EPILOG = """\b
Examples:
  llm1bit bits --model ../shared/data/models/stories260K --calib ../shared/data/tinystories/valid-head.txt \\
      --nsamples 16 --seqlen 256 --budget 2.2 -o alloc.json
  llm1bit quantize --model ../shared/data/models/stories260K --mode lat --bits-config alloc.json \\
      --calib ../shared/data/tinystories/valid-head.txt --nsamples 16 --seqlen 256 -o out/mixed
  llm1bit bits --model SmolLM2-135M-Instruct.Q4_1.gguf --calib ../shared/data/wikitext-2/valid.tokenized.txt \\
      --nsamples 16 --seqlen 512 --budget 2.2 --record-errors --figures figures -o smol-2.2.json
"""


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
    "--mode",
    default="lat",
    show_default=True,
    help=f"shiftaddllm mode of the measured errors: {choices_text(MODES)}.",
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
    from llm1bit.format.bits_file import read_bits_file
    from llm1bit.quant.bits.allocation import SOLVERS, check_budget, parse_candidates
    from llm1bit.quant.bits.analysis import COSTS, analyse, model_tag, result_json
    from llm1bit.quant.device import check_device
    from llm1bit.quant.numerics.methods import QuantSpec

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
    pins = read_bits_file(fix_file)[0] if fix_file else None
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
    from llm1bit.quant.hf.loading import check_seqlen, load_model

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
        from llm1bit.format.bits_file import write_bits_file

        write_bits_file(output, result_json(result, budget, settings))
        click.echo(f"wrote {output}")
    if figures:
        from llm1bit.figures.shiftaddllm import draw_figures

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


def _print_summary(result, budget: float | None) -> None:
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
        from llm1bit.quant.numerics.column_solver import FALLBACK

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
