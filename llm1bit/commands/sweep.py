"""`llm1bit sweep`: a grid of models x hardware x dataflows x lengths into one CSV."""

from __future__ import annotations

from pathlib import Path

import click

from llm1bit.commands.options import (
    CostArgs,
    OneValueCommand,
    backend_option,
    batch_option,
    cache_option,
    cost_options,
    hw_option,
    layer_bits_options,
    make_cache,
    nonempty,
    parse_int_list,
    parse_name_list,
    phase_option,
    positive_int,
    resolve_with_bits,
    simulator_progress,
    strict_option,
    warn_beyond_context,
)
from llm1bit.dataflows import DATAFLOWS

SEQ_LENS = "128,256,512,1024,2048,4096"


@click.command(cls=OneValueCommand)
@click.option(
    "--models",
    "model_names",
    default=None,
    callback=nonempty,
    help="Comma-separated names or config.json paths; groups: opt, gpt, llama, paper [default: opt].",
)
@hw_option("cloud,edge")
@click.option("--seq-lens", default=SEQ_LENS, show_default=True, help="Comma-separated context lengths.")
@click.option(
    "--dataflows",
    default=None,
    callback=nonempty,
    help=f"Comma-separated {','.join(DATAFLOWS)} [default: each .cfg's own].",
)
@backend_option("scalesim")
@phase_option
@batch_option
@click.option("--jobs", default=None, callback=positive_int, help="Worker processes [default: CPU count].")
@strict_option
@cost_options()
@layer_bits_options
@cache_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="CSV to write (- for standard output).",
)
def sweep(
    model_names: str | None,
    hw_spec: str,
    seq_lens: str,
    dataflows: str | None,
    backend: str,
    phase: str,
    batch: list[int],
    jobs: int | None,
    strict: bool,
    cost: CostArgs,
    bits_config: str | None,
    quantized: str | None,
    mla: str,
    cache_dir: Path | None,
    output: Path,
) -> None:
    """Simulate every combination and write one CSV row per (model, hw, dataflow, seq_len, batch, widths).

    \b
    Distinct GEMMs are simulated once for the whole grid, and every real simulator run is
    cached, so an interrupted sweep picks up where it stopped.
    Examples:
      llm1bit sweep --models opt --hw cloud -o opt-cloud.csv
      llm1bit sweep --models paper --hw cloud,edge --dataflows os,ws,is --backend analytic -o all.csv
    """
    from llm1bit.atomic import atomic_write_text, check_output
    from llm1bit.backends import get_backend
    from llm1bit.engine import RunReport
    from llm1bit.errors import UserError, unknown_choice
    from llm1bit.hardware import load_hardware_list
    from llm1bit.sweep import points, run_points, to_csv, uncovered_points

    models = resolve_with_bits(model_names, bits_config, quantized, cost=cost, mla=mla, default="opt")
    hardware = [
        hw.with_clock(cost.freq_mhz, cost.dram_gbps) for hw in load_hardware_list(parse_name_list(hw_spec))
    ]
    pricings = cost.pricings()
    lengths = parse_int_list("--seq-lens", seq_lens)
    flows: list[str | None] = [None]
    if dataflows:
        flows = parse_name_list(dataflows)
        if not flows:
            raise UserError(
                f"--dataflows {dataflows!r}: give {', '.join(DATAFLOWS[:-1])} and / or {DATAFLOWS[-1]}"
            )
        for df in flows:
            if df not in DATAFLOWS:
                raise unknown_choice("dataflow", df, DATAFLOWS)
    check_output(output)
    pts = points(models, hardware, lengths, flows, phase, batch, pricings)
    warn_beyond_context(pts)
    if strict and get_backend(backend).fallback:
        uncovered = uncovered_points(pts)
        if uncovered:
            listing = output.with_name(output.name + ".uncovered.csv") if str(output) != "-" else None
            if listing is not None:
                atomic_write_text(
                    listing,
                    "model,hw,dataflow,seq_len,phase,batch\n"
                    + "".join(
                        f"{p.model.name},{p.hw.name},{p.hw.dataflow},{p.seq_len},{p.phase},{p.batch}\n"
                        for p in uncovered
                    ),
                )
            where = f"listed in {listing}" if listing else "rerun with -o FILE for their list"
            raise UserError(
                f"--strict: {len(uncovered)} of {len(pts)} points are outside the exact composition of the real "
                f"SCALE-Sim ({where}); without --strict they are computed by its closed form"
            )
    report = RunReport()
    with simulator_progress(f"SCALE-Sim runs for {len(pts)} points") as progress:
        splits = run_points(
            pts,
            backend,
            cache=make_cache(cache_dir),
            jobs=jobs,
            progress=progress,
            strict=strict,
            report=report,
        )
    atomic_write_text(output, to_csv(splits))
    fallback = sum(s.backend != backend for s in splits)
    notes = [
        n for n in (report.summary(), fallback and f"{fallback} points by the analytic closed form") if n
    ]
    where = "standard output" if str(output) == "-" else output
    click.echo(f"wrote {len(splits)} rows to {where}" + (f" ({'; '.join(notes)})" if notes else ""), err=True)
