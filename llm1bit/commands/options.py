"""Options and helpers shared by the simulation commands."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from llm1bit.errors import UserError


def parse_int_list(name: str, text: str) -> list[int]:
    """`128,256` -> [128, 256]; every item a positive integer, else a one-line error."""
    values = []
    for item in (x.strip() for x in str(text).split(",")):
        try:
            value = int(item)
        except ValueError:
            raise UserError(
                f"{name}: {item!r} is not an integer; give positive integers like 128,256"
            ) from None
        if value <= 0:
            raise UserError(f"{name}: {value} must be a positive integer")
        values.append(value)
    return values


def parse_name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def positive_int(ctx: click.Context, param: click.Parameter, value: str | int | None) -> int | None:
    if value is None:
        return None
    return parse_int_list(f"--{param.name.replace('_', '-')}", str(value))[0]


def cache_option(f: Callable) -> Callable:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder of cached simulator runs [default: $LLM1BIT_CACHE_DIR or ~/.cache/llm1bit].",
    )(f)


def make_cache(cache_dir: Path | None, no_cache: bool = False):
    from llm1bit.cache import ResultCache, default_cache_dir

    if no_cache:
        return ResultCache(None)
    return ResultCache(cache_dir or default_cache_dir())


def strict_option(f: Callable) -> Callable:
    return click.option(
        "--strict",
        is_flag=True,
        help="With --backend scalesim: refuse points outside the exact composition of the real simulator "
        "instead of computing them with its closed form (the analytic backend, equal there).",
    )(f)


def warn_beyond_context(pts) -> None:
    """One warning per model simulated beyond its config's max_position_embeddings (never a refusal)."""
    from llm1bit.errors import warn

    longest: dict = {}
    for p in pts:
        if p.model.max_positions and p.seq_len > p.model.max_positions:
            longest[p.model] = max(longest.get(p.model, 0), p.seq_len)
    for model, seq_len in longest.items():
        warn(
            f"{model.name}: l = {seq_len} exceeds its max_position_embeddings {model.max_positions}; "
            "simulated anyway"
        )


@contextmanager
def simulator_progress(description: str, rate: bool = False, points: int = 0):
    """A rich progress bar on stderr; yields a progress(done, total). Silent (no output at all) without a terminal.

    With `rate`, it also shows simulator runs per second (and, given the number of `points` the runs serve,
    the points per second they amount to) and the time remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            if not task.speed:
                return Text("")
            per_point = (
                f" ≈ {task.speed * points / task.total:,.0f} points/s" if points and task.total else ""
            )
            return Text(f"{task.speed:.1f} runs/s{per_point}")

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if rate:
        columns += [RateColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def parse_float_list(flag: str, text: str) -> list[float]:
    """`16,4,1.58` -> [16.0, 4.0, 1.58]; a non-number is a one-line error naming it."""
    out = []
    for item in (x.strip() for x in str(text).split(",") if x.strip()):
        try:
            out.append(float(item))
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a number; give widths like 16,4,3,1.58") from None
    if not out:
        raise UserError(f"{flag}: give at least one value")
    return out


@dataclass(frozen=True)
class CostArgs:
    """The cost options of a command, as given (strings for the bit lists), bundled into one argument."""

    weight_bits: str | None
    act_bits: str
    kv_bits: str
    weight_format: str | None
    freq_mhz: float | None
    dram_gbps: float | None
    energy_table: str | None
    bcq_compute: str

    def pricings(self) -> list:
        """One Pricing per weight width (a single one unless a list was given)."""
        from llm1bit.costs import Pricing
        from llm1bit.energy import load_energy_table
        from llm1bit.precision import Precision

        table = load_energy_table(self.energy_table)
        act = parse_float_list("--act-bits", self.act_bits)[0]
        kv = parse_float_list("--kv-bits", self.kv_bits)[0]
        return [
            Pricing(Precision.build(wb, act, kv, self.weight_format), table, self.bcq_compute)
            for wb in dict.fromkeys(parse_float_list("--weight-bits", self.weight_bits or "16"))
        ]


COST_FIELDS = tuple(f.name for f in dataclasses.fields(CostArgs))


def cost_options(
    many: bool = False, weight_bits_default: str | None = "16", weight_bits_help: str | None = None
):
    """--weight-bits / --act-bits / --kv-bits / --weight-format / --freq-mhz / --dram-gbps / --energy-table /
    --bcq-compute, handed to the command as one `cost: CostArgs` argument.

    With `many`, --weight-bits takes a comma-separated list (a sweep over widths)."""
    wb_help = weight_bits_help or "Projection weight bits (16, 8, 4, 3, 2, 1.58, 1; fractional allowed)" + (
        ", comma-separated." if many else "."
    )
    options = (
        click.option(
            "--weight-bits", default=weight_bits_default, show_default=bool(weight_bits_default), help=wb_help
        ),
        click.option("--act-bits", default="16", show_default=True, help="Activation bits (ifmap, ofmap)."),
        click.option("--kv-bits", default="16", show_default=True, help="Bits of the cached K / V."),
        click.option(
            "--weight-format",
            default=None,
            help="fp, int, bcq-lat, bcq-acc, ternary, binary, raw [default: by width: 16 fp, 8/4 int, "
            "3/2 bcq-lat, 1.58 ternary, 1 binary].",
        ),
        click.option("--freq-mhz", type=float, default=None, help="Clock [default: the .cfg's [llm1bit]]."),
        click.option(
            "--dram-gbps", type=float, default=None, help="DRAM bandwidth, 10^9 B/s [default: the .cfg's]."
        ),
        click.option(
            "--energy-table",
            default=None,
            help="horowitz-45nm (default), shiftaddllm, or a JSON file of unit energies (README).",
        ),
        click.option(
            "--bcq-compute",
            type=click.Choice(["lut", "add"]),
            default="lut",
            show_default=True,
            help="BCQ weights: 8-bit LUT queries (ShiftAddLLM) or additions.",
        ),
    )

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args, **kwargs):
            return f(*args, cost=CostArgs(**{k: kwargs.pop(k) for k in COST_FIELDS}), **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def layer_bits_options(f: Callable) -> Callable:
    """--bits-config / --quantized (per-layer widths) and --mla (how latent attention is computed)."""
    f = click.option(
        "--mla",
        type=click.Choice(["absorbed", "expanded"]),
        default="absorbed",
        show_default=True,
        help="DeepSeek latent attention: kv_b_proj absorbed (attention over the latent cache) or expanded "
        "(K / V re-expanded and cached per head, as transformers computes it).",
    )(f)
    f = click.option(
        "--quantized",
        "quantized",
        default=None,
        help="A folder written by `llm1bit quantize`, in place of --model: its architecture, and each "
        "layer's bits and packed bytes.",
    )(f)
    return click.option(
        "--bits-config",
        default=None,
        help="Per-layer bits (the JSON `llm1bit bits` writes), for a model given as a config / folder.",
    )(f)


def resolve_with_bits(
    model_names: str | None,
    bits_config: str | None,
    quantized: str | None,
    many: bool = False,
    mla: str = "absorbed",
):
    """The models of --model / --models, or of --quantized (comma-separated folders), with their per-layer bits
    and the latent-attention form."""
    return [_with_mla(m, mla) for m in _resolve(model_names, bits_config, quantized, many)]


def _with_mla(model, form: str):
    return dataclasses.replace(model, mla=dataclasses.replace(model.mla, form=form)) if model.mla else model


def _resolve(model_names: str | None, bits_config: str | None, quantized: str | None, many: bool):
    from llm1bit.layer_bits import load_quantized_model, with_bits_config
    from llm1bit.models import resolve_models

    if quantized:
        if model_names:
            raise UserError(
                "--quantized takes the place of --model(s): the architecture comes from the folder"
            )
        if bits_config:
            raise UserError("--quantized already gives each layer's bits: drop --bits-config")
        folders = parse_name_list(quantized) if many else [quantized]
        return [load_quantized_model(folder) for folder in dict.fromkeys(folders)]
    if not model_names:
        if not many:
            raise UserError("give --model NAME (or --quantized DIR)")
        model_names = "opt"
    models = resolve_models(model_names)
    if not many and len(models) > 1:
        raise UserError(f"--model {model_names!r}: give one model")
    return [with_bits_config(m, bits_config) for m in models] if bits_config else models
