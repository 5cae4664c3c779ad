"""`llm1bit sweep`: a grid of models x hardware x dataflows x lengths into one CSV."""

from __future__ import annotations

from pathlib import Path

import click

from llm1bit.commands.options import (
    cache_option,
    make_cache,
    parse_int_list,
    parse_name_list,
    positive_int,
    simulator_progress,
)

SEQ_LENS = "128,256,512,1024,2048,4096"


@click.command()
@click.option(
    "--models",
    "model_names",
    default="opt",
    show_default=True,
    help="Comma-separated names or config.json paths; groups: opt, gpt, llama, paper.",
)
@click.option(
    "--hw",
    "hw_specs",
    default="cloud,edge",
    show_default=True,
    help="Comma-separated: cloud, edge, .cfg paths.",
)
@click.option("--seq-lens", default=SEQ_LENS, show_default=True, help="Comma-separated context lengths.")
@click.option("--dataflows", default=None, help="Comma-separated os,ws,is [default: each .cfg's own].")
@click.option("--backend", type=click.Choice(["scalesim", "analytic"]), default="scalesim", show_default=True)
@click.option("--phase", type=click.Choice(["decode", "prefill"]), default="decode", show_default=True)
@click.option("--batch", default="1", callback=positive_int, show_default=True)
@click.option("--jobs", default=None, callback=positive_int, help="Worker processes [default: CPU count].")
@cache_option
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV to write."
)
def sweep(
    model_names: str,
    hw_specs: str,
    seq_lens: str,
    dataflows: str | None,
    backend: str,
    phase: str,
    batch: int,
    jobs: int | None,
    cache_dir: Path | None,
    output: Path,
) -> None:
    """Simulate every combination and write one CSV row per (model, hw, dataflow, seq_len).

    \b
    Distinct GEMMs are simulated once for the whole grid, and every real simulator run is
    cached, so an interrupted sweep picks up where it stopped.
    Examples:
      llm1bit sweep --models opt --hw cloud -o opt-cloud.csv
      llm1bit sweep --models paper --hw cloud,edge --dataflows os,ws,is --backend analytic -o all.csv
    """
    from llm1bit.atomic import atomic_write_text
    from llm1bit.errors import unknown_choice
    from llm1bit.hardware import DATAFLOWS, load_hardware
    from llm1bit.models import resolve_models
    from llm1bit.sweep import points, run_points, to_csv

    models = resolve_models(model_names)
    hardware = [load_hardware(h) for h in parse_name_list(hw_specs)]
    lengths = parse_int_list("--seq-lens", seq_lens)
    flows: list[str | None] = [None]
    if dataflows:
        flows = parse_name_list(dataflows)
        for df in flows:
            if df not in DATAFLOWS:
                raise unknown_choice("dataflow", df, DATAFLOWS)
    if output.parent and not output.parent.exists():
        from llm1bit.errors import UserError

        raise UserError(f"cannot write {output}: folder {output.parent} does not exist")
    pts = points(models, hardware, lengths, flows, phase, batch)
    with simulator_progress(f"SCALE-Sim runs for {len(pts)} points") as progress:
        splits = run_points(pts, backend, cache=make_cache(cache_dir), jobs=jobs, progress=progress)
    atomic_write_text(output, to_csv(splits))
    click.echo(f"wrote {len(splits)} rows to {output}", err=True)
