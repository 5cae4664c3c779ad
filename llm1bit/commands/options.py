"""Options and helpers shared by the simulation commands."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from llm1bit.errors import UserError


def parse_int_list(name: str, text: str) -> list[int]:
    """`128,256` -> [128, 256]; every item a positive integer, else a one-line error."""
    values = []
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            raise UserError(f"{name} {text!r}: an empty item; give positive integers like 128,256")
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


def _flag(param: click.Parameter) -> str:
    """The option as users type it (`--models`, not its parameter name `model_names`)."""
    return max(param.opts, key=len) if param.opts else f"--{param.name.replace('_', '-')}"


def one_value(flag: str, text: str) -> str:
    """`text` itself when it is one value; a comma list is refused in one line (never cut to its first item)."""
    if "," in str(text):
        raise UserError(f"{flag} {text!r}: takes one value here, not a list")
    return str(text)


def positive_int(ctx: click.Context, param: click.Parameter, value: str | int | None) -> int | None:
    """A click callback: one positive integer; a list is refused (the option takes one value here)."""
    if value is None:
        return None
    (number,) = parse_int_list(_flag(param), one_value(_flag(param), str(value)))
    return number


def positive_ints(ctx: click.Context, param: click.Parameter, value: str | int | None) -> list[int] | None:
    """A click callback: a comma list of positive integers, each once (one result per value)."""
    if value is None:
        return None
    return list(dict.fromkeys(parse_int_list(_flag(param), str(value))))


def nonempty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: an option given as an empty string is refused, not read as 'not given' (its default)."""
    if value is not None and not str(value).strip():
        raise UserError(f"{_flag(param)} '': give a value (or leave the option out)")
    return value


class OneValueCommand(click.Command):
    """A command that refuses an option given twice with different values: click keeps the last one silently,
    so `--weight-bits 4 ... --weight-bits 2` would price 2 bits where the line also says 4."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {
            opt: param
            for param in self.params
            if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag)
            for opt in param.opts
        }
        seen: dict[str, tuple[str, str]] = {}
        tokens = iter(args)
        for token in tokens:
            if token == "--":
                break
            name, eq, value = token.partition("=")
            param = takes_value.get(name)
            if param is None:
                continue
            value = value if eq else next(tokens, None)
            if value is None:
                break
            first = seen.setdefault(param.name, (name, value))
            if first[1] != value:
                raise UserError(f"{first[0]} given twice ({first[1]!r} and {value!r}); give it once")
        return super().parse_args(ctx, args)


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


# The option builders below read their choices from the registries, imported when a command uses the option
# (`llm1bit quantize`, `bits`, `models`, ... never do).


def backend_option(default: str, help: str | None = None) -> Callable[[Callable], Callable]:
    """--backend, its choices the backend registry's (the default first, as --help and errors list them)."""
    from llm1bit.backends import BACKENDS

    choices = [default, *(name for name in BACKENDS if name != default)]
    return click.option(
        "--backend", type=click.Choice(choices), default=default, show_default=True, help=help
    )


class LazyChoice(click.Choice):
    """A click.Choice whose choices come from their registry when first needed (help, parsing, completion), so
    that listing the commands (`llm1bit --help`) imports no registry module."""

    def __init__(self, load: Callable[[], Sequence[str]], case_sensitive: bool = True) -> None:
        self._load, self._choices, self.case_sensitive = load, None, case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices


def hw_option(default: str = "cloud") -> Callable[[Callable], Callable]:
    """--hw: built-in hardware names or SCALE-Sim .cfg paths, comma-separated (parameter `hw_spec`)."""
    return click.option(
        "--hw",
        "hw_spec",
        default=default,
        show_default=True,
        help="cloud, edge, or SCALE-Sim .cfg path(s), comma-separated.",
    )


def batch_option(f: Callable) -> Callable:
    """--batch: sequences per step, comma-separated positive integers."""
    return click.option(
        "--batch",
        default="1",
        callback=positive_ints,
        show_default=True,
        help="Sequences per step, comma-separated.",
    )(f)


def phase_option(f: Callable) -> Callable:
    from llm1bit.phases import PHASES

    return click.option("--phase", type=click.Choice(PHASES), default=PHASES[0], show_default=True)(f)


def dataflow_option(help: str | None = None) -> Callable[[Callable], Callable]:
    """--dataflow, one of the dataflow table's names (default: the .cfg's own)."""
    from llm1bit.dataflows import DATAFLOWS

    return click.option("--dataflow", type=click.Choice(DATAFLOWS), default=None, help=help)


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
def simulator_progress(description: str, points: int = 0):
    """A progress bar of simulator runs on stderr (`llm1bit.progress`); yields a progress(done, total). Silent (no
    output at all) without a terminal. It shows runs per second (and, given the number of `points` the runs serve,
    the points per second they amount to) and the time remaining."""
    from rich.console import Console

    from llm1bit.progress import progress_bar

    def runs_per_s(speed: float, total: float | None) -> str:
        per_point = f" ≈ {speed * points / total:,.0f} points/s" if points and total else ""
        return f"{speed:.1f} runs/s{per_point}"

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with progress_bar("runs", console, transient=True, rate_text=runs_per_s) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def parse_float_list(flag: str, text: str) -> list[float]:
    """`16,4,1.58` -> [16.0, 4.0, 1.58]; a non-number or an empty item is a one-line error naming it."""
    out = []
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            what = "no value" if not str(text).strip() else "an empty item"
            raise UserError(f"{flag} {text!r}: {what}; give widths like 16,4,3,1.58")
        try:
            out.append(float(item))
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a number; give widths like 16,4,3,1.58") from None
    return out


def one_float(flag: str, text: str) -> float:
    """One number; a list is refused (the option takes one value here)."""
    (value,) = parse_float_list(flag, one_value(flag, text))
    return value


@dataclass(frozen=True)
class CostArgs:
    """The cost options of a command, as given (strings for the bit lists), bundled into one argument.

    `weight_bits` and `weight_format` are None when not given, so a flag that per-layer widths
    (--quantized, --bits-config) override everywhere can be refused rather than relabelled."""

    weight_bits: str | None
    act_bits: str
    kv_bits: str
    weight_format: str | None
    freq_mhz: float | None
    dram_gbps: float | None
    energy_table: str | None
    bcq_compute: str

    def pricings(self) -> list:
        """One Pricing per combination of weight, activation and KV widths (each list item once)."""
        import itertools

        from llm1bit.costs import Pricing
        from llm1bit.energy import load_energy_table
        from llm1bit.precision import Precision

        table = load_energy_table(self.energy_table)
        weights = parse_float_list("--weight-bits", "16" if self.weight_bits is None else self.weight_bits)
        acts = parse_float_list("--act-bits", self.act_bits)
        kvs = parse_float_list("--kv-bits", self.kv_bits)
        out = [
            Pricing(Precision.build(wb, act, kv, self.weight_format), table, self.bcq_compute)
            for wb, act, kv in itertools.product(*map(dict.fromkeys, (weights, acts, kvs)))
        ]
        if self.weight_format is None:
            note_raw_widths("--weight-bits", [p.precision for p in out])
        return list(dict.fromkeys(out))


def note_raw_widths(where: str, precisions) -> None:
    """Say which format a fractional width is priced in when it was not asked for: `raw`, exactly that many
    bits and no scales, so 3.5 bits moves fewer bytes than 3-bit bcq-lat with its scales."""
    from llm1bit.errors import warn

    raw = [p.weight_bits for p in precisions if p.weight_format == "raw"]
    if raw:
        widths = ", ".join(f"{b:g}" for b in dict.fromkeys(raw))
        warn(
            f"{where} {widths}: priced as format raw, exactly that many bits per weight with no scales or zero "
            "points (whole widths carry their format's overhead); --weight-format raw says so and silences this"
        )


COST_FIELDS = tuple(f.name for f in dataclasses.fields(CostArgs))


def cost_options(
    act_kv_lists: bool = True,
    weight_bits_default: str | None = "16",
    weight_bits_help: str | None = None,
    hide_weight: bool = False,
):
    """--weight-bits / --act-bits / --kv-bits / --weight-format / --freq-mhz / --dram-gbps / --energy-table /
    --bcq-compute, handed to the command as one `cost: CostArgs` argument. `hide_weight`: --weight-bits and
    --weight-format stay out of --help (a command that refuses them, its widths being its own).

    --weight-bits takes a comma-separated list (one result per width); so do --act-bits and --kv-bits unless
    `act_kv_lists` is False (the command then refuses a list of them). A --weight-bits left at its default
    reaches the command as None."""
    from llm1bit.weight_formats import BCQ_COMPUTE, WEIGHT_FORMATS, defaults_text

    wb_help = (
        weight_bits_help
        or "Projection weight bits (16, 8, 4, 3, 2, 1.58, 1; fractional allowed), comma-separated."
    )
    lists = ", comma-separated" if act_kv_lists else ""
    options = (
        click.option(
            "--weight-bits",
            default=weight_bits_default,
            show_default=bool(weight_bits_default),
            help=wb_help,
            hidden=hide_weight,
        ),
        click.option(
            "--act-bits", default="16", show_default=True, help=f"Activation bits (ifmap, ofmap){lists}."
        ),
        click.option("--kv-bits", default="16", show_default=True, help=f"Bits of the cached K / V{lists}."),
        click.option(
            "--weight-format",
            default=None,
            callback=nonempty,
            help=f"{', '.join(WEIGHT_FORMATS)} [default: {defaults_text()}].",
            hidden=hide_weight,
        ),
        click.option("--freq-mhz", type=float, default=None, help="Clock [default: the .cfg's [llm1bit]]."),
        click.option(
            "--dram-gbps", type=float, default=None, help="DRAM bandwidth, 10^9 B/s [default: the .cfg's]."
        ),
        click.option(
            "--energy-table",
            default=None,
            callback=nonempty,
            help="horowitz-45nm (default), shiftaddllm, or a JSON file of unit energies (README).",
        ),
        click.option(
            "--bcq-compute",
            type=click.Choice(BCQ_COMPUTE),
            default="lut",
            show_default=True,
            help="BCQ weights: 8-bit LUT queries (ShiftAddLLM) or additions.",
        ),
    )

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args, **kwargs):
            cost = {k: kwargs.pop(k) for k in COST_FIELDS}
            source = click.get_current_context().get_parameter_source("weight_bits")
            if source is click.core.ParameterSource.DEFAULT:
                cost["weight_bits"] = None  # not given: the command knows 16 is meant, not asked for
            return f(*args, cost=CostArgs(**cost), **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _mla_forms() -> tuple[str, ...]:
    from llm1bit.model_spec import MLA_FORMS

    return MLA_FORMS


def layer_bits_options(f: Callable) -> Callable:
    """--bits-config / --quantized (per-layer widths) and --mla (how latent attention is computed)."""
    f = click.option(
        "--mla",
        type=LazyChoice(_mla_forms),
        default="absorbed",
        show_default=True,
        help="DeepSeek latent attention: kv_b_proj absorbed (attention over the latent cache) or expanded "
        "(K / V re-expanded and cached per head, as transformers computes it).",
    )(f)
    f = click.option(
        "--quantized",
        "quantized",
        default=None,
        callback=nonempty,
        help="Folder(s) written by `llm1bit quantize`, comma-separated, in place of --model: the architecture, "
        "and each layer's bits and packed bytes.",
    )(f)
    return click.option(
        "--bits-config",
        default=None,
        callback=nonempty,
        help="Per-layer bits (the JSON `llm1bit bits` writes), for a model given as a config / folder.",
    )(f)


def resolve_with_bits(
    model_names: str | None,
    bits_config: str | None,
    quantized: str | None,
    cost: CostArgs | None = None,
    mla: str = "absorbed",
    default: str | None = None,
):
    """The models of --model(s) (comma-separated; `default` when none is given, else a one-line error), or of
    --quantized (comma-separated folders), with their per-layer bits and the latent-attention form.

    Given the command's `cost`, a --weight-bits / --weight-format that the per-layer widths override on every
    projection is refused: it would price nothing, yet label the result."""
    models = [_with_mla(m, mla) for m in _resolve(model_names, bits_config, quantized, default)]
    if cost is not None and (bits_config or quantized):
        _refuse_overridden(
            cost, models, f"--bits-config {bits_config}" if bits_config else f"--quantized {quantized}"
        )
    return models


def _refuse_overridden(cost: CostArgs, models: list, source: str) -> None:
    from llm1bit.layer_widths import priced_by_point

    flags = {"--weight-bits": cost.weight_bits, "--weight-format": cost.weight_format}
    given = [(flag, value) for flag, value in flags.items() if value is not None]
    if given and not any(priced_by_point(m) for m in models):
        flag, value = given[0]
        raise UserError(
            f"{flag} {value}: {source} gives every projection its own width, so {flag} would price none of them; "
            "drop it"
        )


def _with_mla(model, form: str):
    return dataclasses.replace(model, mla=dataclasses.replace(model.mla, form=form)) if model.mla else model


def _resolve(model_names: str | None, bits_config: str | None, quantized: str | None, default: str | None):
    from llm1bit.layer_widths import load_quantized_model, with_bits_config
    from llm1bit.models import resolve_models

    if quantized:
        if model_names:
            raise UserError(
                "--quantized takes the place of --model(s): the architecture comes from the folder"
            )
        if bits_config:
            raise UserError("--quantized already gives each layer's bits: drop --bits-config")
        folders = parse_name_list(quantized)
        if not folders:
            raise UserError(f"--quantized {quantized!r}: give a folder written by `llm1bit quantize`")
        return [load_quantized_model(folder) for folder in dict.fromkeys(folders)]
    if not model_names:
        if default is None:
            raise UserError("give --model NAME (or --quantized DIR)")
        model_names = default
    models = resolve_models(model_names)
    return [with_bits_config(m, bits_config) for m in models] if bits_config else models
