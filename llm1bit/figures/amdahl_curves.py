"""Fig. 5, 7, 11, 12 and `llm1bit amdahl --plot`: Amdahl's law of LLMs as curves.

For each model, with F its MatMul-free fraction of the compute cycles: dashed = projections
sped up by S_partial (S_total = 1 / ((1 - F) + F / S)), solid = attention heads sped up
(S_total = 1 / (F + (1 - F) / S)); S_partial from 1 to 100 on a log axis, one colour per model.
Fig. 5 / 7: l = 2048, cloud / edge. Fig. 11 / 12: one panel per sequence length.

The CSV holds every plotted point: F, the side, S_partial and S_total, with the settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llm1bit.amdahl import SIDES, AmdahlCurve
from llm1bit.figures.common import (
    FigureSpec,
    Results,
    Settings,
    backend_note,
    fmt_float,
    grid,
    hw_label,
    lookup,
    model_color,
    new_figure,
    rows_to_csv,
    save_figure,
    settings_text,
    write_outputs,
)

CSV_COLUMNS = (
    "model",
    "hw",
    "dataflow",
    "seq_len",
    "phase",
    "batch",
    "backend",
    "metric",
    "fraction",
    "side",
    "s_partial",
    "s_total",
)
LINESTYLES = {"projection": "--", "attention": "-"}
SIDE_LABELS = {
    "projection": "projections sped up (MatMul-free part)",
    "attention": "attention heads sped up (MatMul part)",
}


def _style_axes(ax, s_partial: Sequence[float]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    if min(s_partial) < max(s_partial):
        ax.set_xlim(min(s_partial), max(s_partial))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def draw_curves(ax, curves: Sequence[tuple[str, AmdahlCurve]], markers: bool = False) -> None:
    """Both sides of the law for each (model name, curve) on one axes."""
    for name, curve in curves:
        for side in SIDES:
            ax.plot(
                curve.s_partial,
                curve.side(side),
                LINESTYLES[side],
                color=model_color(name),
                lw=1.6,
                marker="o" if markers else None,
                ms=3,
            )
    _style_axes(ax, curves[0][1].s_partial)


def add_legends(fig_or_ax, names: Sequence[str], loc: str = "outside right center") -> None:
    """One legend: the models (colour) and the two sides (line style)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=model_color(n), lw=2, label=n) for n in names]
    handles += [Line2D([], [], color="black", ls=LINESTYLES[s], lw=1.4, label=SIDE_LABELS[s]) for s in SIDES]
    fig_or_ax.legend(handles=handles, loc=loc, fontsize=8, frameon=False)


def plot_amdahl_file(
    path: str | Path,
    curves: Sequence[tuple[str, AmdahlCurve]],
    title: str,
    derived: Sequence[tuple[str, float, float, str]] = (),
) -> Path:
    """`llm1bit amdahl --plot`: the curves of several models on one axes, written atomically (.png/.pdf/.svg).

    `derived` marks (model, S_partial, S_total, label) points simulated at narrower operands on the curves."""
    path = Path(path)
    fig = new_figure(8.5, 4.8)
    ax = fig.subplots()
    draw_curves(ax, curves, markers=len(curves[0][1].s_partial) < 12)
    for name, s_partial, s_total, label in derived:
        ax.plot(s_partial, s_total, "*", ms=13, color=model_color(name), markeredgecolor="black", zorder=4)
        ax.annotate(label, (s_partial, s_total), xytext=(6, -12), textcoords="offset points", fontsize=8)
    ax.set_xlabel("S_partial: speedup of the improved part (×)")
    ax.set_ylabel("S_total: speedup of the whole model (×)")
    add_legends(fig, [n for n, _ in curves])
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, title, "")


def _rows(splits, curves: Sequence[AmdahlCurve]) -> list[dict]:
    rows = []
    for split, curve in zip(splits, curves):
        for side in SIDES:
            for s, total in zip(curve.s_partial, curve.side(side)):
                rows.append(
                    {
                        "model": split.model.name,
                        "hw": split.hw.name,
                        "dataflow": split.hw.dataflow,
                        "seq_len": split.seq_len,
                        "phase": split.phase,
                        "batch": split.batch,
                        "backend": split.backend,
                        "metric": "cycles",
                        "fraction": fmt_float(curve.fraction),
                        "side": side,
                        "s_partial": fmt_float(s),
                        "s_total": fmt_float(total),
                    }
                )
    return rows


def amdahl_points(settings: Settings, hw: str, lens: Sequence[int]):
    return grid(settings, settings.opt_models, hw, lens)


def draw_amdahl(
    settings: Settings, results: Results, out: Path, number: str, hw: str, all_lengths: bool
) -> list[Path]:
    lens = settings.seq_lens if all_lengths else (settings.amdahl_len,)
    splits = lookup(results, amdahl_points(settings, hw, lens))
    curves = [AmdahlCurve(s.frac_cycles, settings.s_partial) for s in splits]
    names = list(settings.opt_models)
    hw_obj = splits[0].hw
    backend = backend_note(settings, splits)
    where = "for each sequence length" if all_lengths else f"l = {settings.amdahl_len}"
    title = (
        f"Fig. {int(number[3:])}: Amdahl's law, OPT models on the {hw_label(hw_obj)}, {where}\n"
        f"F = MatMul-free fraction of compute cycles; {settings.step}, backend {backend}"
    )
    by_len = {seq: [(s.model.name, c) for s, c in zip(splits, curves) if s.seq_len == seq] for seq in lens}
    if all_lengths:
        ncols = 3 if len(lens) > 2 else len(lens)
        nrows = -(-len(lens) // ncols)
        fig = new_figure(4.0 * ncols + 2.6, 3.3 * nrows + 0.9)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
        for ax, seq in zip(axes, lens):
            draw_curves(ax, by_len[seq])
            ax.set_title(f"l = {seq}", fontsize=10)
        for ax in axes[len(lens) :]:
            ax.set_visible(False)
        for ax in axes[::ncols]:
            ax.set_ylabel("S_total, whole model (×)")
        for ax in axes[(nrows - 1) * ncols :]:
            ax.set_xlabel("S_partial, improved part (×)")
        stem = f"{number}-opt-{hw}-amdahl-all-lengths{settings.suffix}"
    else:
        fig = new_figure(9.0, 5.0)
        ax = fig.subplots()
        draw_curves(ax, by_len[settings.amdahl_len])
        ax.set_xlabel("S_partial: speedup of the improved part (×)")
        ax.set_ylabel("S_total: speedup of the whole model (×)")
        stem = f"{number}-opt-{hw}-amdahl-l{settings.amdahl_len}{settings.suffix}"
    add_legends(fig, names)
    fig.suptitle(title, fontsize=11)
    meta = settings_text(
        settings,
        backend,
        hw=hw_obj.name,
        dataflow=hw_obj.dataflow,
        seq_len=",".join(map(str, lens)),
        metric="cycles",
    )
    csv_text = rows_to_csv(_rows(splits, curves), CSV_COLUMNS)
    return write_outputs(fig, out, stem, csv_text, title.replace("\n", " "), meta)


def _spec(number: str, hw: str, all_lengths: bool, summary: str) -> FigureSpec:
    def pts(s: Settings):
        return amdahl_points(s, hw, s.seq_lens if all_lengths else (s.amdahl_len,))

    return FigureSpec(
        name=number,
        summary=summary,
        points=pts,
        draw=lambda s, r, out: draw_amdahl(s, r, out, number, hw, all_lengths),
    )


FIGURES = (
    _spec("fig05", "cloud", False, "Amdahl curves, OPT, cloud, l = 2048"),
    _spec("fig07", "edge", False, "Amdahl curves, OPT, edge, l = 2048"),
    _spec("fig11", "cloud", True, "Amdahl curves, OPT, cloud, every sequence length"),
    _spec("fig12", "edge", True, "Amdahl curves, OPT, edge, every sequence length"),
)
