"""Fig. 13 (beyond the paper): the study's question put to today's models.

For the true architectures of the Hugging Face configs shipped in llm1bit/configs/ (gated FFN,
grouped-query attention, real FFN sizes and layer counts) next to the paper's simplified shape of
a comparable built-in model: the MatMul-free fraction F of the compute cycles and the Amdahl
asymptote 1 / (1 - F), the most that making the projections free (1-bit) can ever give.
Cloud and edge, l = 2048 (filled markers) and 4096 (open markers)."""

from __future__ import annotations

from pathlib import Path

from llm1bit.amdahl import asymptote
from llm1bit.figures.common import (
    FigureSpec,
    Results,
    Settings,
    backend_note,
    config_model,
    fmt_float,
    hardware,
    model_color,
    models,
    new_figure,
    rows_to_csv,
    settings_text,
    write_outputs,
)
from llm1bit.sweep import CSV_COLUMNS, Point, csv_row

HW = ("cloud", "edge")
EXTRA_COLUMNS = ("pair", "role", "architecture", "source", "asymptote_projection")
ROLES = ("paper", "true")
MARKERS = {"paper": "o", "true": "D"}


def _pairs(settings: Settings):
    return [(config_model(settings, true), models([paper])[0]) for true, paper in settings.modern_pairs]


def _point(settings: Settings, model, hw: str, seq: int) -> Point:
    return Point(model, hardware(hw), seq, settings.phase, settings.batch)


def _cells(settings: Settings):
    """(pair, role, point) for every plotted value, in the CSV's order."""
    for true, paper in _pairs(settings):
        for role, model in (("paper", paper), ("true", true)):
            for hw in HW:
                for seq in settings.modern_lens:
                    yield f"{true.name} vs {paper.name}", role, _point(settings, model, hw, seq)


def modern_points(settings: Settings) -> list[Point]:
    return [p for _, _, p in _cells(settings)]


def draw_modern(settings: Settings, results: Results, out: Path) -> list[Path]:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pairs = _pairs(settings)
    lens = settings.modern_lens
    frac = {}
    csv_rows = []
    splits = []
    for pair, role, point in _cells(settings):
        split = results[point]
        splits.append(split)
        frac[(pair, role, split.hw.name, split.seq_len)] = split.frac_cycles
        csv_rows.append(
            {
                **csv_row(split),
                "pair": pair,
                "role": role,
                "architecture": split.model.architecture,
                "source": "paper" if role == "paper" else Path(split.model.source).name,
                "asymptote_projection": fmt_float(asymptote(split.frac_cycles)),
            }
        )
    backend = backend_note(settings, splits)
    hw_objs = {s.hw.name: s.hw for s in splits}
    title = (
        "Fig. 13: today's architectures vs the paper's simplified shapes: MatMul-free fraction F of compute cycles "
        f"and Amdahl limit 1/(1−F)\n{settings.step}, {hw_objs['cloud'].dataflow.upper()}, "
        f"l = {' and '.join(map(str, lens))}, backend {backend}"
    )

    n = len(pairs)
    fig = new_figure(13.0, 1.0 + 0.62 * n * len(HW) + 0.6)
    axes = fig.subplots(len(HW), 2, sharey=True, squeeze=False)
    offsets = {
        seq: (0.0 if len(lens) == 1 else -0.18 + 0.36 * i / (len(lens) - 1)) for i, seq in enumerate(lens)
    }
    labels = [f"{t.name}: {t.architecture}\nvs paper {p.name}: {p.architecture}" for t, p in pairs]
    for row, hw in enumerate(HW):
        for col, transform in enumerate((lambda f: f, asymptote)):
            ax = axes[row][col]
            for i, (true, paper) in enumerate(pairs):
                pair = f"{true.name} vs {paper.name}"
                for k, seq in enumerate(lens):
                    y = i + offsets[seq]
                    xs = {role: transform(frac[(pair, role, hw, seq)]) for role in ROLES}
                    ax.plot([xs["paper"], xs["true"]], [y, y], color="0.65", lw=1.2, zorder=1)
                    low = min(ROLES, key=lambda r: xs[r])
                    for role, model in (("paper", paper), ("true", true)):
                        color = model_color(model.name)
                        ax.plot(
                            xs[role],
                            y,
                            MARKERS[role],
                            ms=7,
                            color=color,
                            zorder=2,
                            markerfacecolor=color if k == 0 else "white",
                            markeredgewidth=1.5,
                        )
                        if (
                            k == 0
                        ):  # values of the first length, left of the lower and right of the higher marker
                            left = role == low
                            ax.annotate(
                                f"{xs[role]:.2f}" if col else f"{xs[role]:.3f}",
                                (xs[role], y),
                                xytext=(-7 if left else 7, 0),
                                textcoords="offset points",
                                ha="right" if left else "left",
                                va="center",
                                fontsize=7,
                            )
            ax.set_yticks(range(n), labels, fontsize=8)
            ax.set_ylim(n - 0.5, -0.6)
            ax.grid(True, axis="x", alpha=0.35)
            hw_obj = hw_objs[hw]
            where = f"{hw} TPU {hw_obj.rows}×{hw_obj.cols}"
            if col == 0:
                ax.set_xlim(0.0, 1.09)
                ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
                ax.set_xlabel("F: MatMul-free fraction of compute cycles")
                ax.set_title(f"{where}: MatMul-free fraction F", fontsize=10)
            else:
                ax.set_xscale("log")
                ax.set_xlim(0.8, 1.7 * max(asymptote(f) for f in frac.values()))
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xlabel("1/(1−F): max. speedup from MatMul-free projections (×, log scale)")
                ax.set_title(f"{where}: Amdahl limit, projections improved", fontsize=10)
    handles = [
        Line2D([], [], ls="", marker=MARKERS["paper"], color="0.3", label="paper's simplified shape"),
        Line2D([], [], ls="", marker=MARKERS["true"], color="0.3", label="true architecture (HF config)"),
    ]
    for k, seq in enumerate(lens):
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="s",
                color="0.3",
                markerfacecolor="0.3" if k == 0 else "white",
                label=f"l = {seq}" + (" (values annotated)" if k == 0 else ""),
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)

    stem = f"fig13-modern-vs-paper{settings.suffix}"
    meta = settings_text(
        settings,
        backend,
        hw=",".join(HW),
        dataflow=hw_objs["cloud"].dataflow,
        seq_len=",".join(map(str, lens)),
    )
    csv_text = rows_to_csv(csv_rows, (*CSV_COLUMNS, *EXTRA_COLUMNS))
    return write_outputs(fig, out, stem, csv_text, title.replace("\n", " "), meta)


def fig13_points(settings: Settings) -> list[Point]:
    from llm1bit.figures.moe import moe_points

    return modern_points(settings) + moe_points(settings)


def draw_fig13(settings: Settings, results: Results, out: Path) -> list[Path]:
    """Both panels: the true architectures vs the paper's shapes, and MoE / today's dense models (moe.py)."""
    from llm1bit.figures.moe import draw_moe

    return draw_modern(settings, results, out) + draw_moe(settings, results, out)


FIGURES = (
    FigureSpec(
        name="fig13",
        summary="today's models vs the paper's shapes (F, 1/(1-F)); MoE and dense models at batch 1 and 16",
        points=fig13_points,
        draw=draw_fig13,
    ),
)
