"""`llm1bit figures`: regenerate the study's figures (PNG + PDF + the CSV of the plotted numbers)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from llm1bit.commands.options import (
    CostArgs,
    OneValueCommand,
    backend_option,
    cache_option,
    cost_options,
    make_cache,
    nonempty,
    one_float,
    parse_float_list,
    parse_name_list,
    phase_option,
    positive_int,
    simulator_progress,
)


def _figure_names(only: str | None, known: list[str]) -> list[str]:
    """`fig04,fig5,13` -> ['fig04', 'fig05', 'fig13']; an unknown name is a one-line error listing the known ones."""
    from llm1bit.errors import unknown_choice

    if not only:
        return known
    names = []
    for item in parse_name_list(only):
        m = re.fullmatch(r"(?:fig)?0*(\d+)", item.lower())
        name = f"fig{int(m.group(1)):02d}" if m else item
        if name not in known:
            raise unknown_choice("figure", item, known)
        if name not in names:
            names.append(name)
    return sorted(names, key=known.index) or known


def _check_costs(settings) -> None:
    """Every cost setting is valid (one-line error before anything is written)."""
    for b in (*settings.weight_bits, *settings.breakdown_bits):
        settings.pricing(b)
    settings.reference_pricing()
    settings.priced_hardware("cloud")


@click.command(cls=OneValueCommand)
@click.option(
    "--only",
    default=None,
    callback=nonempty,
    help="Comma-separated figures, e.g. fig04,fig05 [default: all].",
)
@backend_option(
    "analytic",
    help="analytic: SCALE-Sim's closed form (seconds); scalesim: the real simulator, composed exactly, cached.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("figures"),
    show_default=True,
    help="Folder to write into (created if missing).",
)
@phase_option
@click.option("--batch", default="1", callback=positive_int, show_default=True, help="Sequences per step.")
@click.option(
    "--jobs", default=None, callback=positive_int, help="Simulator worker processes [default: CPU count]."
)
@cost_options(
    act_kv_lists=False,
    weight_bits_default=None,
    weight_bits_help="Projection weight bits of fig14 and fig15, comma-separated "
    "[default: fig14 16,8,4,3,2,1.58,1; fig15 16,3,1.58].",
)
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="fig16, fig17: a folder of `llm1bit quantize` outputs and their `llm1bit eval --json` results.",
)
@cache_option
def figures(
    only: str | None,
    backend: str,
    out: Path,
    phase: str,
    batch: int,
    jobs: int | None,
    cost: CostArgs,
    results: Path | None,
    cache_dir: Path | None,
) -> None:
    """Regenerate the study's figures from simulation into OUT/figNN-*.png, .pdf and .csv.

    \b
    fig04 / fig06  MatMul-free fractions, OPT, cloud / edge (heatmaps)
    fig05 / fig07  Amdahl curves, OPT, l = 2048, cloud / edge
    fig08          total cycles under the IS, OS and WS dataflows
    fig09 / fig10  MatMul-free fractions, GPT and LLaMA, cloud / edge
    fig11 / fig12  Amdahl curves for every sequence length, cloud / edge
    fig13          today's architectures (HF configs) vs the paper's shapes
    fig14          decode speedup and energy saving against projection weight
                   bits (16 ... 1), OPT, l = 2048, cloud and edge, Amdahl limits
    fig15          energy per decode step, MatMul / MatMul-free x compute /
                   SRAM / DRAM, OPT-66B and LLaMA-7B at 16, 3 and 1.58 bits
    fig16          perplexity of quantized folders against their simulated
                   speedup and energy saving (needs --results DIR; README)
    fig17          perplexity against simulated tokens/s and energy per token
                   of uniform, rank-rule, average-bits and hardware-budget
                   allocations (needs --results DIR; make fig17-results)
    The cost options (--weight-bits ... --bcq-compute) price fig14 and fig15
    only (fig04-fig13 plot counters): --weight-bits is the list of widths of
    both [default: fig14 16,8,4,3,2,1.58,1; fig15 16,3,1.58]; speedups and
    savings are against fp16 weights at the same activation / KV widths.
    Settings beyond the defaults add e.g. -a8 or -shiftaddllm to their names.
    Every CSV holds exactly the plotted numbers with their settings; fig04's equals
    `llm1bit sweep --models opt --hw cloud` for the same backend. Other phases and batch
    sizes add -prefill / -bN to the file names. With --backend scalesim, points outside
    the exact composition of the real simulator (IS / WS FFNs of the larger OPT models on
    the edge TPU in fig08) use its closed form; their rows and the title say so.
    Examples:
      llm1bit figures
      llm1bit figures --only fig04,fig05 --out figs
      llm1bit figures --backend scalesim --cache-dir ~/.cache/llm1bit
      llm1bit figures --phase prefill --batch 4 --only fig04
      llm1bit figures --only fig14,fig15 --act-bits 8 --energy-table shiftaddllm
    """
    from llm1bit.errors import UserError
    from llm1bit.figures import FIGURES, NEEDS_RESULTS, Settings, make_figures
    from llm1bit.progress import progress_bar

    default = [n for n in FIGURES if results is not None or n not in NEEDS_RESULTS]
    names = _figure_names(only, list(FIGURES)) if only else default
    widths = {}
    if cost.weight_bits is not None:  # given: the widths of fig14 and of fig15
        widths = dict.fromkeys(
            ("weight_bits", "breakdown_bits"),
            tuple(dict.fromkeys(parse_float_list("--weight-bits", cost.weight_bits))),
        )
    settings = Settings(
        backend=backend,
        phase=phase,
        batch=batch,
        act_bits=one_float("--act-bits", cost.act_bits),
        kv_bits=one_float("--kv-bits", cost.kv_bits),
        weight_format=cost.weight_format,
        energy_table=cost.energy_table,
        bcq_compute=cost.bcq_compute,
        freq_mhz=cost.freq_mhz,
        dram_gbps=cost.dram_gbps,
        results_dir=results,
        **widths,
    )
    _check_costs(settings)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror}") from None
    cache = make_cache(cache_dir)
    drawn: list[tuple[str, list[Path]]] = []
    with simulator_progress(f"SCALE-Sim runs for {', '.join(names)}") as sim_progress:
        with progress_bar("figures", transient=True) as bar:
            task = bar.add_task("simulating", total=len(names))

            def on_drawn(name: str, paths: list[Path]) -> None:
                drawn.append((name, paths))
                bar.update(task, advance=1, description=f"drawn {name}")

            make_figures(
                names, settings, out, cache=cache, jobs=jobs, sim_progress=sim_progress, on_drawn=on_drawn
            )
    for name, paths in drawn:
        stems: dict[Path, list[str]] = {}
        for path in paths:
            stems.setdefault(path.with_suffix(""), []).append(path.suffix.lstrip("."))
        for stem, exts in stems.items():
            click.echo(f"{name}: {stem}.{{{','.join(exts)}}}", err=True)
