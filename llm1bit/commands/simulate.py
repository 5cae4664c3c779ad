"""`llm1bit simulate`: one model on one accelerator, split into MatMul and MatMul-free parts."""

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
    strict_option,
    warn_beyond_context,
)


@click.command(cls=OneValueCommand)
@click.option(
    "--model",
    "model_name",
    default=None,
    callback=nonempty,
    help="Built-in name(s) (see `llm1bit models`) or config.json path(s), comma-separated.",
)
@hw_option()
@click.option(
    "--seq-len",
    default="2048",
    callback=positive_ints,
    show_default=True,
    help="Context length(s) l, comma-separated.",
)
@dataflow_option(help="Override the .cfg's dataflow.")
@backend_option(
    "scalesim", help="scalesim: the real simulator (composed exactly, cached); analytic: its closed form."
)
@phase_option
@batch_option
@click.option("--jobs", default=None, callback=positive_int, help="Worker processes [default: CPU count].")
@strict_option
@cost_options()
@layer_bits_options
@cache_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of tables (an array when lists give several points).",
)
@click.option(
    "--wide", is_flag=True, help="Every column and every counter in full (wider than most terminals)."
)
def simulate(
    model_name: str | None,
    hw_spec: str,
    seq_len: list[int],
    dataflow: str | None,
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
    as_json: bool,
    wide: bool,
) -> None:
    """Simulate one forward step and report the MatMul-free fraction of cycles and memory accesses.

    \b
    --model, --quantized, --hw, --seq-len, --batch, --weight-bits, --act-bits and
    --kv-bits take comma lists: one result per combination (--json: an array of
    objects; one point: one object).
    Examples:
      llm1bit simulate --model opt-6.7b --hw cloud
      llm1bit simulate --model opt-66b --hw edge --seq-len 4096 --json
      llm1bit simulate --model path/to/config.json --hw my_array.cfg --dataflow ws
      llm1bit simulate --model opt-6.7b --hw edge --weight-bits 16,1.58 --act-bits 8
      llm1bit simulate --quantized out/smol-lat3 --hw edge
    """
    from llm1bit.errors import warn
    from llm1bit.hardware import load_hardware_list
    from llm1bit.sweep import points, run_points

    pricings = cost.pricings()
    hardware = [
        hw.with_clock(cost.freq_mhz, cost.dram_gbps) for hw in load_hardware_list(parse_name_list(hw_spec))
    ]
    models = resolve_with_bits(model_name, bits_config, quantized, cost=cost, mla=mla)
    pts = points(models, hardware, seq_len, [dataflow], phase, batch, pricings)
    warn_beyond_context(pts)
    what = pts[0].model.name if len(pts) == 1 else f"{len(pts)} points"
    with simulator_progress(f"SCALE-Sim runs for {what}") as progress:
        splits = run_points(
            pts, backend, cache=make_cache(cache_dir), jobs=jobs, progress=progress, strict=strict
        )
    for split in splits:
        if split.backend != backend:
            warn(
                f"{split.model.name} on {split.hw.name} ({split.hw.dataflow}) is outside the exact composition "
                f"of the real SCALE-Sim; computed by its closed form (backend {split.backend}, equal there). "
                "--strict refuses"
            )
    if as_json:
        import json

        objs = [split.to_dict() for split in splits]
        click.echo(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2))
        return
    from rich.console import Console

    console = Console()
    for i, split in enumerate(splits):
        if i:
            console.print()
        print_split(split, console, wide)


def _layer_columns(split, wide: bool) -> tuple[list, list[str]]:
    """(columns, the headers to leave out first when the terminal is too narrow) of the per-product table.

    The default view: what each product is and, per step (one product x its count), cycles, DRAM bytes, time
    and energy in scaled units. `--wide`: the full counters with every digit, as before."""
    from llm1bit.commands.tables import Column, count_text, scaled

    name = Column("product", lambda x: x.gemm.name, text=True)
    part = Column("part", lambda x: "MatMul" if x.gemm.part == "matmul" else "free", text=True)
    bits = Column("bits", lambda x: f"{x.cost.filter_bits:.3g}")
    window = Column("window", lambda x: str(x.gemm.window) if x.gemm.window else "")
    has_window = any(x.gemm.window for x in split.layers)
    if wide:
        columns = [
            name,
            part,
            bits,
            window,
            Column("M", lambda x: str(x.gemm.m)),
            Column("N", lambda x: str(x.gemm.n)),
            Column("K", lambda x: str(x.gemm.k)),
            Column("count", lambda x: str(x.gemm.count)),
            Column("cycles", lambda x: f"{x.counters.cycles:,}"),
            Column("cycles x count", lambda x: f"{x.counters.cycles * x.gemm.count:,}"),
            Column("SRAM acc. x count", lambda x: f"{x.counters.memory_accesses * x.gemm.count:,}"),
            Column(
                "DRAM x count",
                lambda x: f"{(x.counters.dram_reads + x.counters.dram_writes) * x.gemm.count:,}",
            ),
            Column("DRAM bytes x count", lambda x: f"{x.cost.dram_bytes * x.gemm.count:,.0f}"),
            Column("time x count", lambda x: f"{x.cost.time_s * x.gemm.count * 1e3:.3f} ms"),
            Column("bound", lambda x: x.cost.bound),
            Column("energy x count", lambda x: f"{x.cost.energy_j * x.gemm.count * 1e3:.3f} mJ"),
        ]
        return columns, []
    columns = [
        name,
        part,
        bits,
        *([window] if has_window else []),
        Column("M×N×K", lambda x: f"{x.gemm.m}×{x.gemm.n}×{x.gemm.k}"),
        Column("count", lambda x: count_text(x.gemm.count)),
        Column("cycles", lambda x: scaled(x.counters.cycles * x.gemm.count, small=False)),
        Column("DRAM", lambda x: scaled(x.cost.dram_bytes * x.gemm.count, "B", small=False)),
        Column("time", lambda x: scaled(x.cost.time_s * x.gemm.count, "s")),
        Column("energy", lambda x: scaled(x.cost.energy_j * x.gemm.count, "J")),
        Column("bound", lambda x: x.cost.bound),
    ]
    return columns, ["bound", "M×N×K", "count", "cycles", "bits", "part"]


def print_split(split, console=None, wide: bool = False) -> None:
    """The per-product table (fitted to the terminal unless `wide`) and the summary lines of one point."""
    from rich.console import Console

    from llm1bit.commands.tables import fit_columns, print_table, weights_text

    console = console or Console()
    hw = split.hw
    title = (
        f"{split.model.name} ({split.model.architecture}), {split.phase} l={split.seq_len} batch={split.batch} "
        f"on {hw.name} {hw.rows}x{hw.cols} {hw.dataflow.upper()} [{split.backend}]"
    )
    columns, drop = _layer_columns(split, wide)
    caption = (
        None if wide else "cycles, DRAM, time, energy: per step (one product x count); --wide: every counter"
    )
    table = fit_columns(console, title, columns, split.layers, drop, caption)
    print_table(console, table)
    free, mm = split.totals["matmul_free"], split.totals["matmul"]
    console.print(
        f"MatMul-free fraction: [bold]{split.frac_cycles:.3f}[/] of compute cycles "
        f"({free.cycles:,.0f} of {free.cycles + mm.cycles:,.0f}), "
        f"[bold]{split.frac_memory:.3f}[/] of SRAM accesses, {split.frac_dram:.3f} of DRAM accesses."
    )
    p, free = split.pricing.precision, split.costs["matmul_free"]
    memory_bound = sorted({x.gemm.name for x in split.layers if x.cost.bound == "memory"})
    console.print(
        f"Weights {weights_text(split)}, activations {p.act_bits:g}-bit, KV {p.kv_bits:g}-bit at "
        f"{hw.freq_mhz:g} MHz and {hw.dram_gbps:g} GB/s: step {split.latency_s * 1e3:.3f} ms, "
        f"[bold]{split.tokens_per_s:.3f}[/] tokens/s, {split.energy_j:.4g} J "
        f"({free.dram_bytes:,.0f} projection DRAM bytes).\n"
        f"MatMul-free share: [bold]{split.frac_time:.3f}[/] of time, [bold]{split.frac_energy:.3f}[/] of energy, "
        f"{split.frac_dram_bytes:.3f} of DRAM bytes. Memory-bound: {', '.join(memory_bound) or 'none'}."
    )
