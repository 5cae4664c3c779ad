"""`llm1bit explore`: a design space (TOML) simulated on this machine or on a Ray cluster."""

from __future__ import annotations

import time
from pathlib import Path

import click

from llm1bit.commands.options import LazyChoice, cache_option, make_cache, positive_int, simulator_progress


def _executors() -> tuple[str, ...]:
    from llm1bit.engine import EXECUTORS

    return EXECUTORS


@click.command()
@click.argument("space_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Table of every point: .csv, or .parquet (needs pyarrow) [default: SPACE.csv beside the space file].",
)
@click.option(
    "--executor",
    type=LazyChoice(_executors),
    default="local",
    show_default=True,
    help="local: a process pool here; ray: tasks on a Ray cluster (pip install 'llm1bit[ray]').",
)
@click.option(
    "--ray-address",
    default=None,
    help="An existing Ray cluster (ray://HOST:10001, HOST:6379 or auto; an address where nothing listens is "
    "refused within seconds) [default: a local runtime].",
)
@click.option(
    "--jobs", default=None, callback=positive_int, help="Processes (local) or CPUs of a local Ray runtime."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Pareto front of time vs energy per token (.png/.pdf/.svg).",
)
@cache_option
def explore(
    space_file: Path,
    output: Path | None,
    executor: str,
    ray_address: str | None,
    jobs: int | None,
    plot: Path | None,
    cache_dir: Path | None,
) -> None:
    """Expand SPACE_FILE into points, serve what the result store holds, simulate the rest, write one row per point.

    \b
    The space file names lists or ranges for every dimension `simulate` accepts (models, hardware files
    or array / SRAM / dataflow grids, clock, bandwidth, precisions, seq_len, phase, batch, backend) and
    constraints (README "Design-space exploration"). Distinct GEMM runs are simulated once; Ctrl-C keeps
    every finished run and a re-run recomputes nothing. Rows are priced in bulk and written as they come
    (memory does not grow with the space). The table holds every setting and metric of a point and
    nothing about how it ran, so local and Ray runs give identical files.
    Examples:
      llm1bit explore examples/explore-small.toml -o small.csv
      llm1bit explore examples/explore-small.toml --executor ray -o small-ray.csv
      llm1bit explore space.toml --executor ray --ray-address ray://head:10001 -o big.parquet --plot pareto.png
    """
    from llm1bit.atomic import check_output
    from llm1bit.engine import Executor, RunReport, default_jobs
    from llm1bit.errors import UserError
    from llm1bit.explore import PlotPoints, load_space, simulate_space

    output = output or space_file.with_suffix(".csv")
    if output.suffix.lower() not in (".csv", ".parquet") and str(output) != "-":
        raise UserError(f"-o {output}: use a .csv or .parquet file name")
    if plot is not None and plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--plot {plot}: use a .png, .pdf or .svg file name")
    for path in (output, plot):
        if path is not None:
            check_output(path)
    if ray_address and executor != "ray":
        raise UserError("--ray-address goes with --executor ray")
    start = time.perf_counter()
    space = load_space(space_file)
    report = RunReport()
    with simulator_progress(f"{space.size} points", points=space.size) as progress:
        exploration = simulate_space(
            space,
            output,
            plot,
            cache=make_cache(cache_dir),
            jobs=jobs,
            progress=progress,
            report=report,
            executor=Executor(executor, jobs or default_jobs(), ray_address),
        )
    drawn = PlotPoints() if plot is not None else None
    rows = exploration.write(output, drawn)  # after the progress bar: it would capture `-o -`
    if plot is not None:
        from llm1bit.figures.pareto import plot_pareto

        plot_pareto(plot, drawn, exploration.references)
    seconds = time.perf_counter() - start
    rate = rows / seconds if seconds > 0 else float("inf")
    summary = report.summary() or "no simulator runs"
    click.echo(f"wrote {rows} rows to {output} ({summary}; {rate:,.0f} points/s)", err=True)
