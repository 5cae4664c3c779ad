"""`llm1bit amdahl`: overall speedup when only the projections, or only the attention heads, get faster."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from llm1bit.commands.options import (
    CostArgs,
    cache_option,
    cost_options,
    layer_bits_options,
    make_cache,
    positive_int,
    resolve_with_bits,
    simulator_progress,
    warn_beyond_context,
)


@click.command()
@click.option("--model", "model_names", default=None, help="Name(s) or config.json path(s), comma-separated.")
@click.option(
    "--hw", "hw_spec", default="cloud", show_default=True, help="cloud, edge, or a SCALE-Sim .cfg path."
)
@click.option("--seq-len", default="2048", callback=positive_int, show_default=True)
@click.option(
    "--metric",
    type=click.Choice(["cycles", "memory", "time", "energy"]),
    default=None,
    help="The curve's F: share of compute cycles, SRAM accesses, time or energy of the 16-bit point "
    "[default: cycles; time when a precision flag is given].",
)
@click.option("--s-partial", default=None, help="Speedups of the improved part [default: 1,2,5,10,100].")
@click.option("--s-range", default=None, help="START:END[:N] log-spaced speedups, e.g. 1:100.")
@click.option("--dataflow", type=click.Choice(["os", "ws", "is"]), default=None)
@click.option("--backend", type=click.Choice(["scalesim", "analytic"]), default="scalesim", show_default=True)
@click.option("--phase", type=click.Choice(["decode", "prefill"]), default="decode", show_default=True)
@click.option("--batch", default="1", callback=positive_int, show_default=True)
@click.option("--jobs", default=None, callback=positive_int)
@cost_options()
@layer_bits_options
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list when several models are given).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the curves to this .png / .pdf / .svg.",
)
def amdahl(
    model_names: str | None,
    hw_spec: str,
    seq_len: int,
    metric: str | None,
    s_partial: str | None,
    s_range: str | None,
    dataflow: str | None,
    backend: str,
    phase: str,
    batch: int,
    jobs: int | None,
    cost: CostArgs,
    bits_config: str | None,
    quantized: str | None,
    mla: str,
    cache_dir: Path | None,
    as_json: bool,
    plot: Path | None,
) -> None:
    """Amdahl's law of LLMs from the simulated MatMul-free fraction F.

    \b
    Projections sped up by S:      S_total = 1 / ((1 - F) + F / S)
    Attention heads sped up by S:  S_total = 1 / (F + (1 - F) / S)
    Examples:
      llm1bit amdahl --model opt-6.7b --hw cloud
      llm1bit amdahl --model opt-350m,opt-66b --hw edge --s-range 1:100 --plot amdahl.png
      llm1bit amdahl --model opt-6.7b --metric memory --s-partial 0.5,2,8 --json
      llm1bit amdahl --model opt-6.7b --hw cloud --weight-bits 1.58 --metric time
    The curve's F is the 16-bit point's. With --weight-bits (and --act-bits / --kv-bits) the point
    is also simulated at those widths: the derived S_partial (MatMul-free part, 16-bit over
    requested) and S_total, for time and energy, are reported next to the curve.
    """
    from dataclasses import replace

    from llm1bit.amdahl import METRIC_FRACTION, SIDES, AmdahlCurve, derive, parse_s_partial
    from llm1bit.costs import Pricing
    from llm1bit.errors import UserError
    from llm1bit.hardware import load_hardware
    from llm1bit.precision import Precision
    from llm1bit.sweep import points, run_points

    speeds = parse_s_partial(s_partial, s_range)
    if plot is not None and plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--plot {plot}: use a .png, .pdf or .svg file name")
    if plot is not None:
        from llm1bit.atomic import check_output

        check_output(plot)
    if not (model_names or quantized):
        raise UserError("give --model NAME[,NAME...] (or --quantized DIR)")
    models = resolve_with_bits(model_names, bits_config, quantized, many=True, mla=mla)
    (pricing,) = cost.pricings()
    per_layer = bool(bits_config or quantized)
    metric = metric or ("cycles" if pricing.precision == Precision() and not per_layer else "time")
    base_pricing = Pricing(energy=pricing.energy, bcq_compute=pricing.bcq_compute)  # 16 / 16 / 16 fp
    hw = load_hardware(hw_spec).with_clock(cost.freq_mhz, cost.dram_gbps)
    # the 16-bit point: every projection fp16, per-layer widths (--bits-config / --quantized) dropped
    asked = points(models, [hw], [seq_len], [dataflow], phase, batch, [pricing])
    pts = [replace(p, model=replace(p.model, proj_bits=()), pricing=base_pricing) for p in asked]
    warn_beyond_context(pts)
    with simulator_progress("SCALE-Sim runs") as progress:
        splits = run_points(
            list(dict.fromkeys(pts + asked)),
            backend,
            cache=make_cache(cache_dir),
            jobs=jobs,
            progress=progress,
        )
    by_point = dict(zip(dict.fromkeys(pts + asked), splits))
    results = []
    for p, q in zip(pts, asked):
        split = by_point[p]
        curve = AmdahlCurve(getattr(split, METRIC_FRACTION[metric]), speeds)
        results.append((split, curve, derive(split, by_point[q]), by_point[q]))

    if plot is not None:
        from llm1bit.figures.amdahl_curves import plot_amdahl_file

        marks = []
        if metric in ("time", "energy"):  # the derived point lies on the projection curve of its own metric
            for split, _, derived, asked in results:
                p = asked.pricing.precision
                label = f"{p.weight_bits:g}-bit {p.weight_format} (derived)"
                marks.append(
                    (split.model.name, derived[f"s_partial_{metric}"], derived[f"s_total_{metric}"], label)
                )
        plot_amdahl_file(
            plot,
            [(s.model.name, c) for s, c, _, _ in results],
            title=f"Amdahl's law, {hw_spec} {pts[0].hw.dataflow.upper()}, l = {seq_len}, {metric}",
            derived=marks,
        )

    if as_json:
        objs = []
        for split, curve, derived, asked_split in results:
            obj = {
                "model": split.model.name,
                "hw": split.hw.name,
                "dataflow": split.hw.dataflow,
                "seq_len": seq_len,
                "phase": phase,
                "batch": batch,
                "backend": backend,
                "metric": metric,
                "fraction": curve.fraction,
            }
            for side in SIDES:
                obj[side] = [{"s_partial": s, "s_total": t} for s, t in zip(speeds, curve.side(side))]
            obj["asymptote"] = {side: _json_number(curve.asymptote(side)) for side in SIDES}
            obj["precision"] = asked_split.pricing.precision.to_dict()
            obj["derived"] = derived
            obj["config"] = asked_split.to_dict()["config"]
            objs.append(obj)
        click.echo(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2))
        return
    _print_tables(results, speeds, metric)


def _json_number(x: float) -> float | None:
    return None if math.isinf(x) else x


def _print_tables(results, speeds, metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for split, curve, derived, asked in results:
        table = Table(
            title=f"{split.model.name} on {split.hw.name} ({split.hw.dataflow.upper()}), {split.phase} "
            f"l={split.seq_len}: MatMul-free fraction of {metric} F = {curve.fraction:.3f}"
        )
        table.add_column("S_partial", justify="right")
        table.add_column("projections sped up", justify="right")
        table.add_column("attention sped up", justify="right")
        for s, p, a in zip(speeds, curve.side("projection"), curve.side("attention")):
            table.add_row(f"{s:g}", f"{p:.3f}x", f"{a:.3f}x")
        console.print(table)
        console.print(
            f"  asymptote (S_partial -> inf): projections {curve.asymptote('projection'):.2f}x, "
            f"attention {curve.asymptote('attention'):.2f}x"
        )
        p = asked.pricing.precision
        console.print(
            f"  derived at weights {p.weight_bits:g}-bit {p.weight_format}, activations {p.act_bits:g}, KV "
            f"{p.kv_bits:g} (vs 16-bit): time S_partial {derived['s_partial_time']:.3f}x -> S_total "
            f"{derived['s_total_time']:.3f}x (F_time {derived['fraction_time_16bit']:.3f}); energy S_partial "
            f"{derived['s_partial_energy']:.3f}x -> S_total {derived['s_total_energy']:.3f}x "
            f"(F_energy {derived['fraction_energy_16bit']:.3f})"
        )
