"""Fig. 4, 6, 9, 10: the MatMul-free fraction of (a) compute cycles and (b) memory accesses as heatmap tables.

Rows are sequence lengths, columns models, each cell annotated with three decimals, as in the
paper. The CSV beside each figure is exactly what `llm1bit sweep` writes for the same cells
(same columns, same rows in the same order, same backend), e.g. for fig04:

    llm1bit sweep --models opt --hw cloud --seq-lens 128,256,512,1024,2048,4096 --backend analytic -o x.csv
"""

from __future__ import annotations

from pathlib import Path

from llm1bit.figures.common import (
    HEATMAP_CMAP,
    FigureSpec,
    Results,
    Settings,
    backend_note,
    grid,
    hw_label,
    lookup,
    new_figure,
    settings_text,
    write_outputs,
)
from llm1bit.sweep import to_csv

PANELS = (
    ("frac_cycles", "(a) fraction of compute cycles"),
    ("frac_memory", "(b) fraction of memory accesses (SRAM reads + writes)"),
)


def _group(settings: Settings, group: str) -> tuple[str, ...]:
    return settings.opt_models if group == "opt" else settings.gpt_llama_models


def heatmap_points(settings: Settings, group: str, hw: str):
    return grid(settings, _group(settings, group), hw, settings.seq_lens)


def draw_heatmaps(
    settings: Settings, results: Results, out: Path, number: str, group: str, hw: str
) -> list[Path]:
    names = _group(settings, group)
    lens = settings.seq_lens
    splits = lookup(results, heatmap_points(settings, group, hw))
    cell = {(s.model.name, s.seq_len): s for s in splits}
    hw_obj = splits[0].hw
    backend = backend_note(settings, splits)
    family = "OPT" if group == "opt" else "GPT and LLaMA"
    title = (
        f"Fig. {int(number[3:])}: MatMul-free fraction, {family} models on the {hw_label(hw_obj)}\n"
        f"{settings.step}, backend {backend}"
    )

    ncols = len(names)
    width = max(6.0, 0.95 * ncols + 1.6)
    fig = new_figure(
        2 * width if ncols <= 4 else width, (0.42 * len(lens) + 1.4) * (1 if ncols <= 4 else 2) + 0.6
    )
    axes = fig.subplots(1, 2) if ncols <= 4 else fig.subplots(2, 1)
    image = None
    for ax, (attr, label) in zip(axes, PANELS):
        values = [[getattr(cell[(m, seq)], attr) for m in names] for seq in lens]
        image = ax.imshow(values, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, aspect="auto")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{v:.3f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if v > 0.62 else "black",
                )
        ax.set_xticks(range(ncols), names)
        ax.set_yticks(range(len(lens)), [str(seq) for seq in lens])
        ax.set_xlabel("model")
        ax.set_ylabel("sequence length l (tokens)")
        ax.set_title(label, fontsize=10)
        ax.tick_params(length=0)
        for j in range(1, ncols):  # a white rule between model families
            if names[j].split("-")[0] != names[j - 1].split("-")[0]:
                ax.axvline(j - 0.5, color="white", lw=3)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.colorbar(image, ax=list(axes), label="MatMul-free fraction", shrink=0.9)
    fig.suptitle(title, fontsize=11)

    stem = f"{number}-{group.replace('+', '-')}-{hw}-fractions{settings.suffix}"
    meta = settings_text(
        settings,
        backend,
        hw=hw_obj.name,
        dataflow=hw_obj.dataflow,
        seq_len=",".join(map(str, lens)),
        models=",".join(names),
    )
    return write_outputs(fig, out, stem, to_csv(splits), title.replace("\n", " "), meta)


def _spec(number: str, group: str, hw: str, summary: str) -> FigureSpec:
    return FigureSpec(
        name=number,
        summary=summary,
        points=lambda s: heatmap_points(s, group, hw),
        draw=lambda s, r, out: draw_heatmaps(s, r, out, number, group, hw),
    )


FIGURES = (
    _spec("fig04", "opt", "cloud", "MatMul-free fractions, OPT, cloud (heatmaps)"),
    _spec("fig06", "opt", "edge", "MatMul-free fractions, OPT, edge (heatmaps)"),
    _spec("fig09", "gpt+llama", "cloud", "MatMul-free fractions, GPT and LLaMA, cloud (heatmaps)"),
    _spec("fig10", "gpt+llama", "edge", "MatMul-free fractions, GPT and LLaMA, edge (heatmaps)"),
)
