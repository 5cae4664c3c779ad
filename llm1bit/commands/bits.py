"""`llm1bit bits`: sensitivity-based mixed-bit allocation (ShiftAddLLM §6) written as a bits config."""

from __future__ import annotations

import time
from pathlib import Path

import click

from llm1bit.commands.options import (
    CostArgs,
    OneValueCommand,
    backend_option,
    batch_option,
    cost_options,
    hw_option,
    phase_option,
    positive_int,
)
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
  llm1bit bits --model SmolLM2-135M-Instruct.Q4_1.gguf --calib ../shared/data/wikitext-2/valid.tokenized.txt \\
      --nsamples 16 --seqlen 512 --min-tokens-per-s 370 --hw cloud --seq-len 2048 -o smol-370tps.json
"""
# Options that price a time or energy budget (`simulate`'s), refused when no such budget is given.
HARDWARE_OPTIONS = ("hw_spec", "backend", "act_bits", "kv_bits", "freq_mhz", "dram_gbps", "energy_table",
                    "bcq_compute")  # fmt: skip
STEP_OPTIONS = ("seq_len", "batch", "phase")  # also decide an MoE model's weight bytes per step
COST_GIVEN = ("weight_bits", "weight_format")  # refused: the allocation gives every projection its width


@click.command(cls=OneValueCommand, epilog=EPILOG)
@click.option(
    "--model", "model_src", required=True, help="Local folder, FILE.gguf or hub id (hub only if reachable)."
)
@click.option("--calib", required=True, type=click.Path(dir_okay=False), help="Plain-text calibration file.")
@click.option("--nsamples", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per calibration window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of window sampling and rotations.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--budget", help="Average bits per weight (parameter-weighted), e.g. 2.2.")
@click.option(
    "--min-tokens-per-s",
    help="Budget: simulated tokens/s at least this (as `simulate --json` reports it); needs --hw.",
)
@click.option(
    "--max-energy-per-token-mj",
    help="Budget: simulated energy per token (energy_j x 1000 / tokens per step) at most this; needs --hw.",
)
@click.option(
    "--max-weight-bytes",
    help="Budget: bytes of the quantized projections' weights read per decode step, scales included.",
)
@hw_option(default=None)
@click.option(
    "--seq-len",
    default="2048",
    callback=positive_int,
    show_default=True,
    help="Simulated context length l (the calibration window is --seqlen).",
)
@batch_option
@phase_option
@backend_option("analytic", help="Simulator of a time or energy budget (as `simulate`).")
@cost_options(act_kv_lists=False, hide_weight=True)  # refused (COST_GIVEN): hidden
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
    "cost_kind",
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
    budget: str | None,
    min_tokens_per_s: str | None,
    max_energy_per_token_mj: str | None,
    max_weight_bytes: str | None,
    hw_spec: str | None,
    seq_len: int,
    batch: list[int],
    phase: str,
    backend: str,
    cost: CostArgs,
    candidates: str,
    solver: str,
    mode: str,
    cost_kind: str,
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
    rule on S instead. The output JSON is read by `llm1bit quantize --bits-config`.

    Instead of --budget, a hardware budget: --min-tokens-per-s or --max-energy-per-token-mj (simulated with
    --hw, --seq-len, --batch, --phase, --act-bits, --kv-bits, ... as `simulate` does) or --max-weight-bytes.
    Each layer's cost at each width is what `simulate --quantized` charges it once `quantize` has stored it
    (--mode, --groupsize); the chosen allocation is simulated whole, `predicted` in the output, and
    `quantize --bits-config` then `simulate --quantized` reproduce it."""
    from llm1bit.commands.options import one_float
    from llm1bit.format.bits_file import read_bits_file
    from llm1bit.quant.bits.allocation import SOLVERS, check_budget, parse_candidates
    from llm1bit.quant.bits.analysis import COSTS, analyse, model_tag, result_json
    from llm1bit.quant.bits.hardware import AVERAGE_BITS, FLAGS, pick_budget
    from llm1bit.quant.device import check_device
    from llm1bit.quant.numerics.methods import QuantSpec

    ctx = click.get_current_context()
    given = {
        name for name in (*HARDWARE_OPTIONS, *STEP_OPTIONS, *COST_GIVEN)
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }  # fmt: skip
    texts = {
        AVERAGE_BITS: budget,
        "min_tokens_per_s": min_tokens_per_s,
        "max_energy_per_token_mj": max_energy_per_token_mj,
        "max_weight_bytes": max_weight_bytes,
    }
    chosen = pick_budget({k: None if t is None else one_float(FLAGS[k], t) for k, t in texts.items()})
    target = _target(chosen, given, hw_spec, seq_len, batch, phase, backend, cost)
    budget = chosen.value if chosen is not None and chosen.kind == AVERAGE_BITS else None
    cands = parse_candidates(candidates)
    if solver not in SOLVERS:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("solver", solver, SOLVERS)
    if cost_kind not in COSTS:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("cost", cost_kind, COSTS)
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
    if chosen is None and not record_errors and not figures:
        raise UserError("nothing to do: give --budget B (allocation), --record-errors and/or --figures DIR")
    if output and chosen is None:
        raise UserError("-o writes an allocation: give --budget B (or a hardware budget)")
    if chosen is not None and chosen.kind != AVERAGE_BITS and solver != "ilp":
        raise UserError(
            f"--solver {solver} takes --budget (average bits); a hardware budget is for --solver ilp"
        )
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
    hardware = None
    if chosen is not None and chosen.kind != AVERAGE_BITS:
        from llm1bit.quant.bits.hardware import hardware_budget

        hardware = hardware_budget(model, str(model_src), chosen, spec, cands, pins, target)
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
            cost=cost_kind,
            output_windows=output_windows,
            hardware=hardware,
        )
    result.timings["load_seconds"] = load_seconds
    settings = {
        "model": str(model_src),
        "calib": str(calib),
        "nsamples": nsamples,
        "seqlen": seqlen,
        "seed": seed,
        "candidates": list(cands),
        "budget": None if chosen is None else chosen.to_dict(),
        "target": None if target is None else target.to_dict(),
        "solver": solver,
        "cost": cost_kind,
        "output_windows": min(output_windows, nsamples) if cost_kind == "output" else None,
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
    _print_summary(result, chosen)
    if output:
        from llm1bit.format.bits_file import write_bits_file

        write_bits_file(output, result_json(result, chosen, settings))
        click.echo(f"wrote {output}")
    if figures:
        from llm1bit.figures.shiftaddllm import draw_figures

        out = Path(figures_dir)
        out.mkdir(exist_ok=True)
        paths = draw_figures(figures, result, out, model_tag(model_src), settings)
        for path in paths:
            click.echo(f"wrote {path}")


def _target(chosen, given: set[str], hw_spec, seq_len: int, batch: list[int], phase: str, backend: str, cost):
    """The simulated point of a hardware budget (None for average bits), its options refused where they price
    nothing: one value each, --hw required for time and energy."""
    from llm1bit.commands.options import one_value

    flags = {"hw_spec": "--hw", "seq_len": "--seq-len", "batch": "--batch", "phase": "--phase"}
    if given & set(COST_GIVEN):
        flag = "--weight-bits" if "weight_bits" in given else "--weight-format"
        raise UserError(f"{flag}: the allocation gives every quantized projection its width; drop it")
    if chosen is None or chosen.kind == "average_bits":
        unused = sorted(given)
    elif not chosen.hardware:  # weight bytes: the step's shape only
        unused = sorted(given - set(STEP_OPTIONS))
    else:
        unused = []
    if unused:
        flag = flags.get(unused[0], "--" + unused[0].replace("_", "-"))
        raise UserError(
            f"{flag} prices a hardware budget: give --min-tokens-per-s or --max-energy-per-token-mj"
            + (" (or --max-weight-bytes)" if unused[0] in STEP_OPTIONS else "")
        )
    if chosen is None or chosen.kind == "average_bits":
        return None
    if len(batch) > 1:
        raise UserError(f"--batch {','.join(map(str, batch))}: takes one value here, not a list")
    from llm1bit.budget_costs import Target

    if not chosen.hardware:
        return Target(None, seq_len, phase, batch[0])
    if hw_spec is None:
        raise UserError(f"{'--min-tokens-per-s' if chosen.kind == 'min_tokens_per_s' else '--max-energy-per-token-mj'}"
                        " needs --hw (cloud, edge or a SCALE-Sim .cfg)")  # fmt: skip
    from llm1bit.hardware import load_hardware

    one_value("--hw", hw_spec)
    one_value("--act-bits", cost.act_bits)
    one_value("--kv-bits", cost.kv_bits)
    (pricing,) = cost.pricings()
    hw = load_hardware(hw_spec).with_clock(cost.freq_mhz, cost.dram_gbps)
    return Target(hw, seq_len, phase, batch[0], pricing, backend)


def _figure_names(only: str | None) -> tuple[str, ...]:
    if not only:
        return FIGURE_NAMES
    from llm1bit.errors import unknown_choice

    names = [x.strip() for x in only.split(",") if x.strip()]
    for name in names:
        if name not in FIGURE_NAMES:
            raise unknown_choice("figure", name, FIGURE_NAMES)
    return tuple(n for n in FIGURE_NAMES if n in names)


def _print_summary(result, budget) -> None:
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
        predicted = "" if budget.kind == "average_bits" else f", predicted {budget.text(result.predicted)}"
        click.echo(
            f"allocation ({alloc.solver}): average {alloc.average_bits:.4f} bits (budget {budget.text()}"
            f"{predicted}), objective {alloc.objective:.6g}, {mix}, solved in {alloc.solve_seconds:.3f} s"
        )
