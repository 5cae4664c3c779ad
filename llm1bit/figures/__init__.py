"""The study's figures, one module per figure family, regenerated from simulation by `llm1bit figures`.

    heatmaps       fig04, fig06, fig09, fig10  MatMul-free fractions (cycles, memory) as heatmap tables
    amdahl_curves  fig05, fig07, fig11, fig12  Amdahl curves (and `llm1bit amdahl --plot`)
    dataflows      fig08                       total cycles under the IS, OS and WS dataflows
    modern         fig13                       today's architectures vs the paper's simplified shapes
    weight_widths  fig14, fig15                speedup / energy saving against weight bits; energy breakdown
    quality        fig16                       perplexity of quantized folders against their speedup / saving
    hw_budgets     fig17                       perplexity against tokens/s and mJ/token: bits chosen for the hardware

Drawn by their commands instead: `pareto` (`llm1bit explore --plot`) and `shiftaddllm` (`llm1bit bits --figures`:
sal_fig4, sal_fig5, sal_fig7).

`make_figures` simulates the points of all requested figures in one deduplicated run, then draws
each figure into `<out>/figNN-....png`, `.pdf` and a `.csv` of exactly the plotted numbers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from llm1bit.figures import amdahl_curves, dataflows, heatmaps, hw_budgets, modern, quality, weight_widths
from llm1bit.figures.common import FigureSpec, Settings, simulate

FIGURES: dict[str, FigureSpec] = {
    spec.name: spec
    for spec in sorted(
        (
            *heatmaps.FIGURES,
            *amdahl_curves.FIGURES,
            *dataflows.FIGURES,
            *modern.FIGURES,
            *weight_widths.FIGURES,
            *quality.FIGURES,
            *hw_budgets.FIGURES,
        ),
        key=lambda f: f.name,
    )
}

# Figures drawn from artefacts the user supplies (`--results DIR`), not part of the default set.
NEEDS_RESULTS = ("fig16", "fig17")

__all__ = ["FIGURES", "NEEDS_RESULTS", "FigureSpec", "Settings", "make_figures"]


def make_figures(
    names: Sequence[str],
    settings: Settings,
    out: Path,
    cache=None,
    jobs: int | None = None,
    sim_progress: Callable[[int, int], None] | None = None,
    on_drawn: Callable[[str, list[Path]], None] | None = None,
) -> dict[str, list[Path]]:
    """Simulate once for all `names`, then draw each into `out` (which must exist)."""
    specs = [FIGURES[n] for n in names]
    results = simulate(specs, settings, cache=cache, jobs=jobs, progress=sim_progress)
    written = {}
    for spec in specs:
        written[spec.name] = spec.draw(settings, results, out)
        if on_drawn:
            on_drawn(spec.name, written[spec.name])
    return written
