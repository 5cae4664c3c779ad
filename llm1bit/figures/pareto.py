"""`llm1bit explore --plot`: decode time against energy per token of every point of a design space, its Pareto
front, and the paper's cloud and edge designs marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm1bit.explore import PlotPoints, pareto_front, tokens_of
from llm1bit.figures.common import model_color, new_figure, save_figure


def plot_pareto(path: Path, drawn: PlotPoints, references: list) -> None:
    """Decode time vs energy per token of every point, the Pareto front, the paper's cloud and edge marked."""
    fig = new_figure(8.5, 6)
    ax = fig.subplots()
    for name, (x, y) in drawn.groups().items():
        ax.scatter(x, y, s=10, alpha=0.5, color=model_color(name), label=name)
    x, y = np.concatenate(drawn.x), np.concatenate(drawn.y)
    front = pareto_front(np.column_stack((x, y)))
    ax.plot(x[front], y[front], color="black", lw=1.2, label="Pareto front")
    for ref in references:
        ax.scatter([1 / ref.tokens_per_s], [ref.energy_j / tokens_of(ref)], marker="*", s=180, color=model_color(ref.model.name),
                   edgecolors="black", zorder=4)  # fmt: skip
        ax.annotate(f"paper {ref.hw.name}", (1 / ref.tokens_per_s, ref.energy_j / tokens_of(ref)), xytext=(6, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per token (s)")
    ax.set_ylabel("energy per token (J)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    title = f"Design space: {len(x)} points, Pareto front of time vs energy per token"
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, title, "")
