"""Tables for people: numbers in scaled units, as many columns as the terminal holds, none ever cut.

rich shrinks a table that is wider than the console by wrapping and then cutting cells with `…`, and a
cut number reads as a different number. So a table is built from columns in the order a reader needs
them, the ones that do not fit are left out (the command's `--wide` shows them all), and a table that
still does not fit is printed at its own width: a long line the terminal wraps, never a shortened one.
JSON and CSV outputs carry every number in full; nothing here touches them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_UP = ("", "k", "M", "G", "T", "P", "E")
_DOWN = ("", "m", "µ", "n", "p", "f", "a")


def scaled(value: float, unit: str = "", digits: int = 3, small: bool = True) -> str:
    """`value` with an SI prefix and `digits` significant digits: 2358240 -> '2.36 M', 0.0316 s -> '31.6 ms',
    4.3e9 B -> '4.30 GB' (trailing zeros kept, so a column's digits line up). Without `small`, values below 1
    (an expected fraction of a cycle or byte) stay plain numbers: no milli-cycles."""
    if not small and abs(value) < 1:
        return f"{value:.{digits}g} {unit}".rstrip()
    if value == 0 or not math.isfinite(value) or (float(value).is_integer() and abs(value) < 1000):
        return f"{value:g} {unit}".rstrip()
    step = max(-(len(_DOWN) - 1), min(len(_UP) - 1, math.floor(math.log10(abs(value)) / 3)))
    while True:  # rounding may carry into the next prefix (999.7 -> 1.00 k)
        mantissa = value / 1000.0**step
        decimals = max(0, digits - 1 - max(0, math.floor(math.log10(abs(mantissa)))))
        text = f"{mantissa:.{decimals}f}"
        if abs(float(text)) < 1000 or step == len(_UP) - 1:
            break
        step += 1
    prefix = _UP[step] if step >= 0 else _DOWN[-step]
    return f"{text} {prefix}{unit}".rstrip()


def count_text(count: float) -> str:
    """A product's occurrences per step: whole counts as integers, expected (MoE) counts to 4 digits."""
    return str(count) if isinstance(count, int) else f"{count:.4g}"


@dataclass(frozen=True)
class Column:
    """One column: header, how a row becomes its cell, whether it is text (left-aligned)."""

    header: str
    cell: Callable[[object], str]
    text: bool = False


def build_table(title: str, columns: Sequence[Column], rows: Sequence[object], caption: str | None = None):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(title),
        caption=caption,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        caption_justify="left",
    )
    for col in columns:
        table.add_column(col.header, justify="left" if col.text else "right", no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(Text(col.cell(row)) for col in columns))  # Text: a '[' in a name is not markup
    return table


def table_width(console, table) -> int:
    """The width the table takes with every cell on one line (rich's own measure stops at the console's width)."""
    return console.measure(table, options=console.options.update(max_width=100_000)).maximum


def fit_columns(console, title: str, columns: Sequence[Column], rows: Sequence[object], drop_order: Sequence[str],
                caption: str | None = None):  # fmt: skip
    """The table with as many of `columns` as fit the console: those named in `drop_order` are left out,
    first one first, until it fits (or none is left to drop)."""
    kept = list(columns)
    table = build_table(title, kept, rows, caption)
    for header in drop_order:
        if table_width(console, table) <= console.width:
            break
        kept = [c for c in kept if c.header != header]
        table = build_table(title, kept, rows, caption)
    return table


def print_table(console, table) -> None:
    """Print `table` whole: at the console's width when it fits, else at its own (never a cut cell)."""
    from rich.console import Console

    need = table_width(console, table)
    if need > console.width:
        console = Console(file=console.file, width=need, color_system=console.color_system, soft_wrap=False)
    console.print(table)


def weights_text(split) -> str:
    """The weights a point was priced with, as its numbers were: per-layer widths (a quantized folder or a
    bits config) by their own widths and formats, the point's width only for the projections left to it."""
    p = split.pricing.precision
    point = f"{p.weight_bits:g}-bit {p.weight_format}"
    if not split.model.proj_bits:
        return point
    from llm1bit.layer_widths import priced_by_point

    own = sorted({(pb.bits, pb.fmt) for block in split.model.proj_bits for _, pb in block})
    text = "per layer " + ", ".join(f"{b:g}-bit {f}" for b, f in own)
    return text + (f" (others {point})" if priced_by_point(split.model) else "")
