"""`llm1bit topology`: a model's decode step as a SCALE-Sim GEMM topology CSV."""

from __future__ import annotations

from pathlib import Path

import click

from llm1bit.commands.options import OneValueCommand, phase_option, positive_int


@click.command(cls=OneValueCommand)
@click.option(
    "--model", "model_name", required=True, help="Built-in name (see `llm1bit models`) or config.json path."
)
@click.option("--seq-len", default="2048", callback=positive_int, show_default=True, help="Context length l.")
@phase_option
@click.option("--batch", default="1", callback=positive_int, show_default=True, help="Sequences per step.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def topology(model_name: str, seq_len: int, phase: str, batch: int, output: Path | None) -> None:
    """Write the SCALE-Sim topology (`name, M, N, K,` rows) of one forward step.

    \b
    One row per distinct product; `llm1bit simulate` multiplies each by its count
    (per block x blocks x heads). Run it with SCALE-Sim's own CLI:
      llm1bit topology --model opt-6.7b --seq-len 2048 -o opt-6.7b.csv
      python -m scalesim.scale -c hw_configs/cloud.cfg -t opt-6.7b.csv -i gemm
    """
    from llm1bit.atomic import atomic_write_text, is_stdout
    from llm1bit.backends.scalesim_runner import topology_csv
    from llm1bit.models import resolve_model
    from llm1bit.workload import build_workload

    gemms = build_workload(resolve_model(model_name), seq_len, phase, batch)
    text = topology_csv([(g.name, g.m, g.n, g.k) for g in gemms])
    atomic_write_text(output or "-", text)
    if output is not None and not is_stdout(output):
        click.echo(f"wrote {output}", err=True)
