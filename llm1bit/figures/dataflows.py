"""Fig. 8 (the paper's Appendix A): total cycles of the OPT models under the IS, OS and WS dataflows.

Whole model, one step (MatMul + MatMul-free cycles of every block), at l = 2048; cloud and edge
side by side, grouped bars on a log axis. The CSV holds the `llm1bit sweep` columns of the same
points plus the plotted `total_cycles`."""

from __future__ import annotations

from pathlib import Path

from llm1bit.figures.common import (
    DATAFLOW_COLORS,
    DATAFLOW_HATCHES,
    FigureSpec,
    Results,
    Settings,
    backend_note,
    hardware,
    lookup,
    models,
    new_figure,
    rows_to_csv,
    settings_text,
    write_outputs,
)
from llm1bit.sweep import CSV_COLUMNS, csv_row, points

HW = ("cloud", "edge")


def dataflow_points(settings: Settings):
    """As `llm1bit sweep --models opt --hw cloud,edge --seq-lens 2048 --dataflows is,os,ws`."""
    return points(
        models(settings.opt_models),
        [hardware(h) for h in HW],
        [settings.amdahl_len],
        list(settings.dataflows),
        settings.phase,
        settings.batch,
    )


def draw_dataflows(settings: Settings, results: Results, out: Path) -> list[Path]:
    from matplotlib.ticker import LogLocator

    splits = lookup(results, dataflow_points(settings))
    names = list(settings.opt_models)
    flows = list(settings.dataflows)
    backend = backend_note(settings, splits)
    total = {(s.model.name, s.hw.name, s.hw.dataflow): s.total.cycles for s in splits}
    title = (
        f"Fig. 8: total compute cycles of one {settings.phase} step (whole model) by dataflow, OPT models, "
        f"l = {settings.amdahl_len}\n{settings.step}, backend {backend}"
    )
    fig = new_figure(13.0, 4.8)
    axes = fig.subplots(1, 2)
    width = 0.8 / len(flows)
    for ax, hw in zip(axes, HW):
        hw_obj = next(s.hw for s in splits if s.hw.name == hw)
        for i, df in enumerate(flows):
            xs = [j + (i - (len(flows) - 1) / 2) * width for j in range(len(names))]
            ax.bar(
                xs,
                [total[(m, hw, df)] for m in names],
                width,
                label=df.upper(),
                color=DATAFLOW_COLORS.get(df),
                hatch=DATAFLOW_HATCHES.get(df),
                edgecolor="white",
                linewidth=0.5,
            )
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel("model")
        ax.set_ylabel("total compute cycles (log scale)")
        ax.set_title(f"{hw} TPU {hw_obj.rows}×{hw_obj.cols}", fontsize=10)
        ax.grid(True, axis="y", which="major", alpha=0.35)
        ax.set_axisbelow(True)
    axes[0].legend(title="dataflow", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)

    rows = [{**csv_row(s), "total_cycles": s.total.cycles} for s in splits]
    csv_text = rows_to_csv(rows, (*CSV_COLUMNS, "total_cycles"))
    stem = f"fig08-opt-dataflows-l{settings.amdahl_len}{settings.suffix}"
    meta = settings_text(
        settings, backend, hw=",".join(HW), dataflow=",".join(flows), seq_len=settings.amdahl_len
    )
    return write_outputs(fig, out, stem, csv_text, title.replace("\n", " "), meta)


FIGURES = (
    FigureSpec(
        name="fig08",
        summary="total cycles by dataflow (IS, OS, WS), OPT, cloud and edge, l = 2048",
        points=dataflow_points,
        draw=draw_dataflows,
    ),
)
