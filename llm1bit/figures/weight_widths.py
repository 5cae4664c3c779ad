"""Fig. 14 and 15 (beyond the paper): what narrower projection weights buy, in time and in energy.

Fig. 14: for the OPT models at l = `amdahl_len` on cloud and edge, the whole-model decode speedup
S_total(time) = latency(16) / latency(B) and S_total(energy) = E(16) / E(B) (right axis: the energy
saving 1 - E(B) / E(16)) against the projection weight width B (16, 8, 4, 3, 2, 1.58, 1, each in its
default format), one line per model; dashed, per model, the Amdahl limit 1 / (1 - F) with F the
MatMul-free share of time (or energy) of the 16-bit point: what free projections would give.
Only the projections change, so every point satisfies S_total = 1 / ((1 - F) + F / S_partial).

Fig. 15: the energy of one decode step of OPT-66B and LLaMA-7B at 16, 3 and 1.58 bits split into
MatMul (attention heads) / MatMul-free (projections) x compute / SRAM / DRAM, as stacked bars in the
manner of ShiftAddLLM's Fig. 8, each bar's total (and saving against 16 bits) annotated.

The 16-bit reference is fp16 weights with the same activation / KV widths, clock, bandwidth and
energy table. Each CSV row carries the settings that decided it and every plotted number."""

from __future__ import annotations

import re
from pathlib import Path

from llm1bit.amdahl import asymptote
from llm1bit.figures.common import (
    FigureSpec,
    Results,
    Settings,
    backend_note,
    fmt_float,
    hw_label,
    model_color,
    models,
    new_figure,
    rows_to_csv,
    settings_text,
    write_outputs,
)
from llm1bit.split import Split
from llm1bit.sweep import Point
from llm1bit.workload import MATMUL, MATMUL_FREE

HW = ("cloud", "edge")
LABEL_COLUMNS = (
    "model",
    "hw",
    "hw_fingerprint",
    "dataflow",
    "freq_mhz",
    "dram_gbps",
    "seq_len",
    "phase",
    "batch",
    "backend",
    "weight_bits",
    "weight_format",
    "act_bits",
    "kv_bits",
    "bcq_compute",
    "energy_table",
    "energy_table_sha256",
)
FIG14_COLUMNS = (
    *LABEL_COLUMNS,
    "latency_s",
    "latency_16_s",
    "s_total_time",
    "energy_j",
    "energy_16_j",
    "s_total_energy",
    "energy_saving",
    "frac_time_16",
    "frac_energy_16",
    "amdahl_limit_time",
    "amdahl_limit_energy",
)
PARTS = (MATMUL_FREE, MATMUL)
COMPONENTS = (("compute", "ops_j"), ("sram", "sram_j"), ("dram", "dram_j"))
SEGMENTS = tuple(f"{part}_{name}_j" for part in PARTS for name, _ in COMPONENTS)
FIG15_COLUMNS = (*LABEL_COLUMNS, *SEGMENTS, "energy_j", "energy_16_j", "energy_saving")
PART_NAMES = {MATMUL_FREE: "MatMul-free (projections)", MATMUL: "MatMul (attention heads)"}
COMPONENT_NAMES = {"compute": "compute", "sram": "SRAM", "dram": "DRAM"}
SEGMENT_COLORS = {
    "matmul_free_compute_j": "#08519c",
    "matmul_free_sram_j": "#4292c6",
    "matmul_free_dram_j": "#9ecae1",
    "matmul_compute_j": "#a63603",
    "matmul_sram_j": "#f16913",
    "matmul_dram_j": "#fdc38d",
}
SAVING_TICKS = (0.0, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99)


# --- points -------------------------------------------------------------------------------------


def _pricings(settings: Settings, widths):
    """The 16-bit fp reference first, then each width (a repeated pricing once)."""
    return list(dict.fromkeys((settings.reference_pricing(), *(settings.pricing(b) for b in widths))))


def _point(settings: Settings, model, hw: str, pricing) -> Point:
    return Point(
        model, settings.priced_hardware(hw), settings.amdahl_len, settings.phase, settings.batch, pricing
    )


def fig14_points(settings: Settings) -> list[Point]:
    pricings = _pricings(settings, settings.weight_bits)
    return [
        _point(settings, model, hw, pr)
        for hw in HW
        for model in models(settings.opt_models)
        for pr in pricings
    ]


def fig15_points(settings: Settings) -> list[Point]:
    pricings = _pricings(settings, settings.breakdown_bits)
    return [
        _point(settings, model, hw, pr)
        for hw in HW
        for model in models(settings.breakdown_models)
        for pr in pricings
    ]


# --- shared labels --------------------------------------------------------------------------------


def label(split: Split) -> dict:
    """The settings that decided a split's numbers (the CSVs' leading columns)."""
    full = split.label()
    return {
        **{k: full[k] for k in LABEL_COLUMNS if k in full},
        "bcq_compute": split.pricing.bcq_compute,
    }


def _bits_text(b: float) -> str:
    return f"{b:g}"


def cost_suffix(settings: Settings) -> str:
    """File-name suffix for cost settings beyond the defaults (16-bit activations / KV, horowitz-45nm, ...)."""
    from llm1bit.energy import load_energy_table

    parts = []
    if settings.weight_format:
        parts.append(settings.weight_format)
    if settings.act_bits != 16:
        parts.append(f"a{settings.act_bits:g}")
    if settings.kv_bits != 16:
        parts.append(f"kv{settings.kv_bits:g}")
    table = load_energy_table(settings.energy_table)
    if table.name != load_energy_table(None).name:
        from llm1bit.energy import BUILTIN_TABLES

        # a user's file: its stem and hash (the label is its path, too long and too like a built-in name)
        name = table.name if table.name in BUILTIN_TABLES else f"{Path(table.name).stem}-{table.sha256[:8]}"
        parts.append(re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "table")
    if settings.bcq_compute != "lut":
        parts.append(f"bcq-{settings.bcq_compute}")
    if settings.freq_mhz is not None:
        parts.append(f"{settings.freq_mhz:g}mhz")
    if settings.dram_gbps is not None:
        parts.append(f"{settings.dram_gbps:g}gbps")
    return "".join(f"-{p}" for p in parts)


def _precision_text(settings: Settings) -> str:
    from llm1bit.energy import load_energy_table

    table = load_energy_table(settings.energy_table)
    fmt = f"weight format {settings.weight_format}" if settings.weight_format else "default weight formats"
    return (
        f"activations {settings.act_bits:g}-bit, KV cache {settings.kv_bits:g}-bit, {fmt}, "
        f"energy table {table.name}, BCQ by {settings.bcq_compute}"
    )


def _hw_text(split: Split) -> str:
    hw = split.hw
    return f"{hw_label(hw)}, {hw.freq_mhz:g} MHz, {hw.dram_gbps:g} GB/s"


def _meta(settings: Settings, backend: str, splits: list[Split]) -> str:
    first = splits[0]
    table = first.pricing.energy
    return settings_text(
        settings,
        backend,
        hw=",".join(dict.fromkeys(s.hw.name for s in splits)),
        freq_mhz=",".join(dict.fromkeys(f"{s.hw.freq_mhz:g}" for s in splits)),
        dram_gbps=",".join(dict.fromkeys(f"{s.hw.dram_gbps:g}" for s in splits)),
        seq_len=settings.amdahl_len,
        act_bits=f"{settings.act_bits:g}",
        kv_bits=f"{settings.kv_bits:g}",
        weight_bits=",".join(dict.fromkeys(_bits_text(s.pricing.precision.weight_bits) for s in splits)),
        energy_table=table.name,
        energy_table_sha256=table.sha256,
        bcq_compute=settings.bcq_compute,
    )


# --- fig14 ----------------------------------------------------------------------------------------


def _grid(settings: Settings, results: Results, model_names, widths):
    """(hw, model, reference split, [split at each width]) in plotting order: fig14's lines, fig15's bars."""
    ref_pricing = settings.reference_pricing()
    pricings = list(dict.fromkeys(settings.pricing(b) for b in widths))
    for hw in HW:
        for model in models(model_names):
            ref = results[_point(settings, model, hw, ref_pricing)]
            yield hw, model, ref, [results[_point(settings, model, hw, pr)] for pr in pricings]


def _fig14_rows(settings: Settings, results: Results):
    return _grid(settings, results, settings.opt_models, settings.weight_bits)


def fig14_csv_rows(settings: Settings, results: Results) -> list[dict]:
    rows = []
    for _, _, ref, splits in _fig14_rows(settings, results):
        for split in splits:
            rows.append(
                {
                    **label(split),
                    "latency_s": fmt_float(split.latency_s),
                    "latency_16_s": fmt_float(ref.latency_s),
                    "s_total_time": fmt_float(ref.latency_s / split.latency_s),
                    "energy_j": fmt_float(split.energy_j),
                    "energy_16_j": fmt_float(ref.energy_j),
                    "s_total_energy": fmt_float(ref.energy_j / split.energy_j),
                    "energy_saving": fmt_float(1 - split.energy_j / ref.energy_j),
                    "frac_time_16": fmt_float(ref.frac_time),
                    "frac_energy_16": fmt_float(ref.frac_energy),
                    "amdahl_limit_time": fmt_float(asymptote(ref.frac_time)),
                    "amdahl_limit_energy": fmt_float(asymptote(ref.frac_energy)),
                }
            )
    return rows


def _bits_axis(ax, widths) -> None:
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [_bits_text(b) for b in widths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(max(widths) * 1.25, min(widths) / 1.25)  # 16 bits on the left, fewer bits to the right


def _speedup_axis(ax, top: float) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.set_ylim(0.9, top)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="y", alpha=0.1)


def _saving_axis(ax) -> None:
    """A right axis on an S_total(energy) log axis, ticked with the energy saving 1 - 1 / S."""
    from matplotlib.ticker import NullLocator

    twin = ax.twinx()
    twin.set_yscale("log")
    low, high = ax.get_ylim()
    twin.set_ylim(low, high)
    ticks = [(1 / (1 - p), p) for p in SAVING_TICKS if low <= 1 / (1 - p) <= high]
    twin.set_yticks([t for t, _ in ticks], [f"{p:.0%}" for _, p in ticks])
    twin.yaxis.set_minor_locator(NullLocator())
    twin.set_ylabel("energy saving 1 − E(B)/E(16)", fontsize=9)


def draw_fig14(settings: Settings, results: Results, out: Path) -> list[Path]:
    from matplotlib.lines import Line2D

    groups = list(_fig14_rows(settings, results))
    splits = [s for _, _, ref, ss in groups for s in (ref, *ss)]
    backend = backend_note(settings, splits)
    widths = [s.pricing.precision.weight_bits for s in groups[0][3]]
    formats = [s.pricing.precision.weight_format for s in groups[0][3]]
    hw_split = {hw: ref for hw, _, ref, _ in groups}
    rows = (
        (
            "time",
            "latency_s",
            "frac_time",
            "(a) decode speedup",
            "S_total, time: latency(16)/latency(B) (×)",
        ),
        (
            "energy",
            "energy_j",
            "frac_energy",
            "(b) energy",
            "S_total, energy: E(16)/E(B) (×)",
        ),
    )
    top = 1.6 * max(asymptote(getattr(ref, attr)) for _, _, ref, _ in groups for _, _, attr, _, _ in rows)

    fig = new_figure(12.5, 8.2)
    axes = fig.subplots(len(rows), len(HW), sharex=True, squeeze=False)
    for r, (_, value, frac, panel, ylabel) in enumerate(rows):
        for c, hw in enumerate(HW):
            ax = axes[r][c]
            for hw_name, model, ref, ss in groups:
                if hw_name != hw:
                    continue
                color = model_color(model.name)
                ys = [getattr(ref, value) / getattr(s, value) for s in ss]
                ax.plot(widths, ys, "-o", color=color, lw=1.6, ms=4, zorder=3)
                limit = asymptote(getattr(ref, frac))
                ax.axhline(limit, color=color, ls="--", lw=1.1, alpha=0.85, zorder=2)
                ax.annotate(
                    f"{limit:.3g}",
                    (max(widths), limit),
                    xytext=(2, 1),
                    textcoords="offset points",
                    ha="left",
                    va="bottom",
                    fontsize=7,
                    color=color,
                )
            _bits_axis(ax, widths)
            _speedup_axis(ax, top)
            ax.set_title(f"{panel}, {_hw_text(hw_split[hw])}", fontsize=10)
            if c == 0:
                ax.set_ylabel(ylabel, fontsize=9)
            if rows[r][0] == "energy":
                _saving_axis(ax)
            if r == len(rows) - 1:
                ax.set_xlabel("projection weight bits B", fontsize=9)
    handles = [
        Line2D([], [], color=model_color(n), lw=2, marker="o", ms=4, label=n) for n in settings.opt_models
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="0.3",
            ls="--",
            lw=1.1,
            label="Amdahl limit 1/(1−F): F = 16-bit MatMul-free\nshare of time (a) / energy (b)",
        )
    )
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    fig.supxlabel(
        "weight format per width B: " + ", ".join(f"{_bits_text(b)} {f}" for b, f in zip(widths, formats)),
        fontsize=8.5,
    )
    title = (
        "Fig. 14: whole-model decode speedup and energy saving against projection weight bits, OPT models, "
        f"l = {settings.amdahl_len}\n{settings.step}; {_precision_text(settings)}; reference fp16 weights; "
        f"backend {backend}"
    )
    fig.suptitle(title, fontsize=10.5)
    stem = f"fig14-opt-weight-bits-l{settings.amdahl_len}{settings.suffix}{cost_suffix(settings)}"
    csv_text = rows_to_csv(fig14_csv_rows(settings, results), FIG14_COLUMNS)
    return write_outputs(fig, out, stem, csv_text, title.replace("\n", " "), _meta(settings, backend, splits))


# --- fig15 ----------------------------------------------------------------------------------------


def segments(split: Split) -> dict[str, float]:
    """The six energies of a decode step (J): MatMul-free / MatMul x compute / SRAM / DRAM."""
    return {
        f"{part}_{name}_j": getattr(split.costs[part], attr) for part in PARTS for name, attr in COMPONENTS
    }


def _fig15_bars(settings: Settings, results: Results):
    return _grid(settings, results, settings.breakdown_models, settings.breakdown_bits)


def fig15_csv_rows(settings: Settings, results: Results) -> list[dict]:
    rows = []
    for _, _, ref, splits in _fig15_bars(settings, results):
        for split in splits:
            rows.append(
                {
                    **label(split),
                    **{k: fmt_float(v) for k, v in segments(split).items()},
                    "energy_j": fmt_float(split.energy_j),
                    "energy_16_j": fmt_float(ref.energy_j),
                    "energy_saving": fmt_float(1 - split.energy_j / ref.energy_j),
                }
            )
    return rows


def _joules(x: float) -> str:
    if x >= 1:
        return f"{x:.3g} J"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} mJ"
    return f"{x * 1e6:.3g} µJ"


def draw_fig15(settings: Settings, results: Results, out: Path) -> list[Path]:
    from matplotlib.patches import Patch

    bars = list(_fig15_bars(settings, results))
    splits = [s for _, _, ref, ss in bars for s in (ref, *ss)]
    backend = backend_note(settings, splits)
    names = list(settings.breakdown_models)
    fig = new_figure(3.4 * len(names) + 2.9, 3.9 * len(HW) + 1.0)
    axes = fig.subplots(len(HW), len(names), squeeze=False)
    for hw_name, model, ref, ss in bars:
        ax = axes[HW.index(hw_name)][names.index(model.name)]
        xs = range(len(ss))
        bottom = [0.0] * len(ss)
        top = max(s.energy_j for s in ss)
        for seg in SEGMENTS:
            values = [segments(s)[seg] for s in ss]
            ax.bar(xs, values, 0.62, bottom=bottom, color=SEGMENT_COLORS[seg], edgecolor="white", lw=0.5)
            for x, v, b, s in zip(xs, values, bottom, ss):
                if v >= 0.05 * top:
                    share = v / s.energy_j
                    dark = seg.endswith("compute_j") or seg == "matmul_free_sram_j" or seg == "matmul_sram_j"
                    ax.text(
                        x,
                        b + v / 2,
                        f"{share:.0%}",
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="white" if dark else "black",
                    )
            bottom = [b + v for b, v in zip(bottom, values)]
        for x, s in zip(xs, ss):
            text = _joules(s.energy_j)
            if s.pricing != ref.pricing:
                text += f"\n−{1 - s.energy_j / ref.energy_j:.1%} vs fp16"
            ax.annotate(
                text,
                (x, s.energy_j),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(
            list(xs),
            [
                f"{_bits_text(s.pricing.precision.weight_bits)}-bit\n{s.pricing.precision.weight_format}"
                for s in ss
            ],
            fontsize=8.5,
        )
        ax.set_xlim(-0.6, len(ss) - 0.4)
        ax.set_ylim(0, top * 1.22)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylabel("energy per decode step (J)", fontsize=9)
        ax.set_title(f"{model.name}, {_hw_text(ref)}", fontsize=9.5)
    # three columns, filled column by column: MatMul-free on the first row, MatMul on the second
    handles = [
        Patch(color=SEGMENT_COLORS[f"{part}_{name}_j"], label=f"{PART_NAMES[part]}: {COMPONENT_NAMES[name]}")
        for name, _ in COMPONENTS
        for part in PARTS
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    title = (
        "Fig. 15: energy per decode step, MatMul (attention heads) / MatMul-free (projections) "
        f"× compute / SRAM / DRAM, l = {settings.amdahl_len}\n{settings.step}; {_precision_text(settings)}; "
        f"backend {backend}"
    )
    fig.suptitle(title, fontsize=10)
    stem = f"fig15-energy-breakdown-l{settings.amdahl_len}{settings.suffix}{cost_suffix(settings)}"
    csv_text = rows_to_csv(fig15_csv_rows(settings, results), FIG15_COLUMNS)
    return write_outputs(fig, out, stem, csv_text, title.replace("\n", " "), _meta(settings, backend, splits))


FIGURES = (
    FigureSpec(
        name="fig14",
        summary="decode speedup and energy saving against weight bits, OPT, cloud and edge, with Amdahl limits",
        points=fig14_points,
        draw=draw_fig14,
    ),
    FigureSpec(
        name="fig15",
        summary="energy breakdown per decode step (MatMul / MatMul-free x compute / SRAM / DRAM), 16 / 3 / 1.58 bits",
        points=fig15_points,
        draw=draw_fig15,
    ),
)
