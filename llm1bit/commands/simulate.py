"""`llm1bit simulate`: one model on one accelerator, split into MatMul and MatMul-free parts."""

from __future__ import annotations

import json
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
    strict_option,
    warn_beyond_context,
)


@click.command()
@click.option(
    "--model", "model_name", default=None, help="Built-in name (see `llm1bit models`) or config.json path."
)
@click.option(
    "--hw", "hw_spec", default="cloud", show_default=True, help="cloud, edge, or a SCALE-Sim .cfg path."
)
@click.option("--seq-len", default="2048", callback=positive_int, show_default=True, help="Context length l.")
@click.option(
    "--dataflow", type=click.Choice(["os", "ws", "is"]), default=None, help="Override the .cfg's dataflow."
)
@click.option(
    "--backend",
    type=click.Choice(["scalesim", "analytic"]),
    default="scalesim",
    show_default=True,
    help="scalesim: the real simulator (composed exactly, cached); analytic: its closed form.",
)
@click.option("--phase", type=click.Choice(["decode", "prefill"]), default="decode", show_default=True)
@click.option(
    "--batch", default="1", callback=positive_int, show_default=True, help="Sequences per decode step."
)
@click.option("--jobs", default=None, callback=positive_int, help="Worker processes [default: CPU count].")
@strict_option
@cost_options()
@layer_bits_options
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def simulate(
    model_name: str | None,
    hw_spec: str,
    seq_len: int,
    dataflow: str | None,
    backend: str,
    phase: str,
    batch: int,
    jobs: int | None,
    strict: bool,
    cost: CostArgs,
    bits_config: str | None,
    quantized: str | None,
    mla: str,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """Simulate one forward step and report the MatMul-free fraction of cycles and memory accesses.

    \b
    Examples:
      llm1bit simulate --model opt-6.7b --hw cloud
      llm1bit simulate --model opt-66b --hw edge --seq-len 4096 --json
      llm1bit simulate --model path/to/config.json --hw my_array.cfg --dataflow ws
      llm1bit simulate --model opt-6.7b --hw edge --weight-bits 1.58 --act-bits 8
      llm1bit simulate --quantized out/smol-lat3 --hw edge
    """
    from llm1bit.hardware import load_hardware
    from llm1bit.sweep import Point, run_points

    (pricing,) = cost.pricings()
    hw = load_hardware(hw_spec, dataflow).with_clock(cost.freq_mhz, cost.dram_gbps)
    (model,) = resolve_with_bits(model_name, bits_config, quantized, mla=mla)
    point = Point(model, hw, seq_len, phase, batch, pricing)
    warn_beyond_context([point])
    with simulator_progress(f"SCALE-Sim runs for {point.model.name}") as progress:
        (split,) = run_points(
            [point], backend, cache=make_cache(cache_dir), jobs=jobs, progress=progress, strict=strict
        )
    if split.backend != backend:
        from llm1bit.errors import warn

        warn(
            f"{point.model.name} on {point.hw.name} ({point.hw.dataflow}) is outside the exact composition of "
            "the real SCALE-Sim; computed by its closed form (backend analytic, equal there). --strict refuses"
        )
    if as_json:
        click.echo(json.dumps(split.to_dict(), indent=2))
    else:
        print_split(split)


def print_split(split) -> None:
    from rich.console import Console
    from rich.table import Table

    hw = split.hw
    table = Table(
        title=(
            f"{split.model.name} ({split.model.architecture}), {split.phase} l={split.seq_len} batch={split.batch} "
            f"on {hw.name} {hw.rows}x{hw.cols} {hw.dataflow.upper()} [{split.backend}]"
        )
    )
    for col in (
        "product",
        "part",
        "bits",
        "window",
        "M",
        "N",
        "K",
        "count",
        "cycles",
        "x count",
        "SRAM acc. x count",
        "DRAM x count",
        "DRAM bytes x count",
        "time x count",
        "bound",
        "energy x count",
    ):
        table.add_column(
            col, justify="left" if col in ("product", "part") else "right", no_wrap=col == "product"
        )
    for layer in split.layers:
        g, c = layer.gemm, layer.counters
        table.add_row(
            g.name,
            "MatMul" if g.part == "matmul" else "free",
            f"{layer.cost.filter_bits:.3g}",
            str(g.window) if g.window else "",
            str(g.m),
            str(g.n),
            str(g.k),
            str(g.count),
            f"{c.cycles:,}",
            f"{c.cycles * g.count:,}",
            f"{c.memory_accesses * g.count:,}",
            f"{(c.dram_reads + c.dram_writes) * g.count:,}",
            f"{layer.cost.dram_bytes * g.count:,.0f}",
            f"{layer.cost.time_s * g.count * 1e3:.3f} ms",
            layer.cost.bound,
            f"{layer.cost.energy_j * g.count * 1e3:.3f} mJ",
        )
    console = Console()
    if not console.is_terminal:  # pipes and files: no 80-column truncation of the numbers
        console = Console(width=150)
    console.print(table)
    free, mm = split.totals["matmul_free"], split.totals["matmul"]
    console.print(
        f"MatMul-free fraction: [bold]{split.frac_cycles:.3f}[/] of compute cycles "
        f"({free.cycles:,} of {free.cycles + mm.cycles:,}), "
        f"[bold]{split.frac_memory:.3f}[/] of SRAM accesses, {split.frac_dram:.3f} of DRAM accesses."
    )
    p, free = split.pricing.precision, split.costs["matmul_free"]
    memory_bound = sorted({x.gemm.name for x in split.layers if x.cost.bound == "memory"})
    weights = f"{p.weight_bits:g}-bit {p.weight_format}"
    if split.model.proj_bits:
        own = sorted({(pb.bits, pb.fmt) for block in split.model.proj_bits for _, pb in block})
        weights = "per layer " + ", ".join(f"{b:g}-bit {f}" for b, f in own) + f" (others {weights})"
    console.print(
        f"Weights {weights}, activations {p.act_bits:g}-bit, KV {p.kv_bits:g}-bit at "
        f"{hw.freq_mhz:g} MHz and {hw.dram_gbps:g} GB/s: step {split.latency_s * 1e3:.3f} ms, "
        f"[bold]{split.tokens_per_s:.3f}[/] tokens/s, {split.energy_j:.4g} J "
        f"({free.dram_bytes:,.0f} projection DRAM bytes).\n"
        f"MatMul-free share: [bold]{split.frac_time:.3f}[/] of time, [bold]{split.frac_energy:.3f}[/] of energy, "
        f"{split.frac_dram_bytes:.3f} of DRAM bytes. Memory-bound: {', '.join(memory_bound) or 'none'}."
    )
