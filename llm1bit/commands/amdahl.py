"""`llm1bit amdahl`: overall speedup when only the projections, or only the attention heads, get faster."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from llm1bit.commands.options import (
    CostArgs,
    LazyChoice,
    OneValueCommand,
    backend_option,
    batch_option,
    cache_option,
    cost_options,
    dataflow_option,
    hw_option,
    layer_bits_options,
    make_cache,
    nonempty,
    parse_name_list,
    phase_option,
    positive_int,
    positive_ints,
    resolve_with_bits,
    simulator_progress,
    warn_beyond_context,
)


def _metrics() -> tuple[str, ...]:
    from llm1bit.amdahl import METRIC_FRACTION

    return tuple(METRIC_FRACTION)


@click.command(cls=OneValueCommand)
@click.option(
    "--model",
    "model_names",
    default=None,
    callback=nonempty,
    help="Name(s) or config.json path(s), comma-separated.",
)
@hw_option()
@click.option("--seq-len", default="2048", callback=positive_ints, show_default=True, help="Comma-separated.")
@click.option(
    "--metric",
    type=LazyChoice(_metrics),
    default=None,
    help="The curve's F: share of compute cycles, SRAM accesses, time or energy of the 16-bit point "
    "[default: cycles; time when a precision flag is given].",
)
@click.option(
    "--s-partial",
    default=None,
    callback=nonempty,
    help="Speedups of the improved part [default: 1,2,5,10,100].",
)
@click.option(
    "--s-range", default=None, callback=nonempty, help="START:END[:N] log-spaced speedups, e.g. 1:100."
)
@dataflow_option()
@backend_option("scalesim")
@phase_option
@batch_option
@click.option("--jobs", default=None, callback=positive_int)
@cost_options()
@layer_bits_options
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an array when lists give several points).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the curves to this .png / .pdf / .svg.",
)
def amdahl(
    model_names: str | None,
    hw_spec: str,
    seq_len: list[int],
    metric: str | None,
    s_partial: str | None,
    s_range: str | None,
    dataflow: str | None,
    backend: str,
    phase: str,
    batch: list[int],
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
    --model, --quantized, --hw, --seq-len, --batch, --weight-bits, --act-bits and --kv-bits
    take comma lists: one curve per combination (--json: an array; one point: one object).
    Examples:
      llm1bit amdahl --model opt-6.7b --hw cloud
      llm1bit amdahl --model opt-350m,opt-66b --hw edge --s-range 1:100 --plot amdahl.png
      llm1bit amdahl --model opt-6.7b --metric memory --s-partial 0.5,2,8 --json
      llm1bit amdahl --model opt-6.7b --hw cloud --weight-bits 1.58 --metric time
    The curve's F is the 16-bit point's. With --weight-bits (and --act-bits / --kv-bits) the point
    is also simulated at those widths: the derived S_partial (MatMul-free part, 16-bit over
    requested) and S_total, for time and for energy, are reported next to the curve.
    """
    from dataclasses import replace

    from llm1bit.amdahl import METRIC_FRACTION, SIDES, AmdahlCurve, derive, parse_s_partial
    from llm1bit.costs import Pricing
    from llm1bit.errors import UserError
    from llm1bit.hardware import load_hardware_list
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
    pricings = cost.pricings()
    models = resolve_with_bits(model_names, bits_config, quantized, cost=cost, mla=mla)
    per_layer = bool(bits_config or quantized)
    if metric is None:
        metric = "cycles" if all(p.precision == Precision() for p in pricings) and not per_layer else "time"
    hardware = [
        hw.with_clock(cost.freq_mhz, cost.dram_gbps) for hw in load_hardware_list(parse_name_list(hw_spec))
    ]
    # the 16-bit point of each asked one: every projection fp16 (16 / 16 / 16), per-layer widths dropped
    asked = points(models, hardware, seq_len, [dataflow], phase, batch, pricings)
    pts = [
        replace(
            p,
            model=replace(p.model, proj_bits=()),
            pricing=Pricing(energy=p.pricing.energy, bcq_compute=p.pricing.bcq_compute),
        )
        for p in asked
    ]
    warn_beyond_context(pts)
    with simulator_progress("SCALE-Sim runs") as progress:
        wanted = list(dict.fromkeys(pts + asked))
        splits = run_points(wanted, backend, cache=make_cache(cache_dir), jobs=jobs, progress=progress)
    by_point = dict(zip(wanted, splits))
    results = []
    for p, q in zip(pts, asked):
        split = by_point[p]
        curve = AmdahlCurve(getattr(split, METRIC_FRACTION[metric]), speeds)
        results.append((split, curve, derive(split, by_point[q]), by_point[q]))
    labels = _labels([asked_split for *_, asked_split in results])

    if plot is not None:
        from llm1bit.commands.tables import weights_text
        from llm1bit.figures.amdahl_curves import plot_amdahl_file

        marks = []
        if metric in ("time", "energy"):  # the derived point lies on the projection curve of its own metric
            for label, (_, _, derived, asked_split) in zip(labels, results):
                mark = f"{weights_text(asked_split)} (derived)"
                marks.append((label, derived[f"s_partial_{metric}"], derived[f"s_total_{metric}"], mark))
        plot_amdahl_file(
            plot,
            [(label, c) for label, (_, c, _, _) in zip(labels, results)],
            title=f"Amdahl's law, {_common(results)}, {metric}",
            derived=marks,
        )

    if as_json:
        objs = []
        for split, curve, derived, asked_split in results:
            obj = {
                "model": split.model.name,
                "hw": split.hw.name,
                "dataflow": split.hw.dataflow,
                "seq_len": split.seq_len,
                "phase": phase,
                "batch": split.batch,
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


def _point_text(split) -> dict[str, str]:
    """What tells one asked point from another: model, hardware, length, batch, precision."""
    p = split.pricing.precision
    return {
        "model": split.model.name,
        "hw": f"{split.hw.name} {split.hw.dataflow.upper()}",
        "l": f"l = {split.seq_len}",
        "batch": f"batch {split.batch}",
        "precision": f"{p.weight_bits:g}-bit {p.weight_format} a{p.act_bits:g} kv{p.kv_bits:g}",
    }


def _labels(asked: list) -> list[str]:
    """One plot label per point: its model and whichever settings differ between the points."""
    texts = [_point_text(s) for s in asked]
    varying = [k for k in texts[0] if k != "model" and len({t[k] for t in texts}) > 1]
    return [", ".join([t["model"], *(t[k] for k in varying)]) for t in texts]


def _common(results) -> str:
    """The settings every point shares, for the plot's title."""
    texts = [_point_text(asked) for *_, asked in results]
    shared = [k for k in ("hw", "l", "batch") if len({t[k] for t in texts}) == 1]
    return ", ".join(texts[0][k] for k in shared) or "several settings"


def _json_number(x: float) -> float | None:
    return None if math.isinf(x) else x


def _print_tables(results, speeds, metric: str) -> None:
    from rich.console import Console

    from llm1bit.commands.tables import Column, build_table, print_table, weights_text

    console = Console()
    columns = [
        Column("S_partial", lambda row: f"{row[0]:g}"),
        Column("projections sped up", lambda row: f"{row[1]:.3f}x"),
        Column("attention sped up", lambda row: f"{row[2]:.3f}x"),
    ]
    for split, curve, derived, asked in results:
        title = (
            f"{split.model.name} on {split.hw.name} ({split.hw.dataflow.upper()}), {split.phase} "
            f"l={split.seq_len} batch={split.batch}: MatMul-free fraction of {metric} F = {curve.fraction:.3f}"
        )
        rows = list(zip(speeds, curve.side("projection"), curve.side("attention")))
        print_table(console, build_table(title, columns, rows))
        console.print(
            f"  asymptote (S_partial -> inf): projections {curve.asymptote('projection'):.2f}x, "
            f"attention {curve.asymptote('attention'):.2f}x"
        )
        p = asked.pricing.precision
        console.print(
            f"  derived at weights {weights_text(asked)}, activations {p.act_bits:g}, KV "
            f"{p.kv_bits:g} (vs 16-bit): time S_partial {derived['s_partial_time']:.3f}x -> S_total "
            f"{derived['s_total_time']:.3f}x (F_time {derived['fraction_time_16bit']:.3f}); energy S_partial "
            f"{derived['s_partial_energy']:.3f}x -> S_total {derived['s_total_energy']:.3f}x "
            f"(F_energy {derived['fraction_energy_16bit']:.3f})"
        )
