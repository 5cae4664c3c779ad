"""Fig. 17 (beyond the paper): mixed bits chosen for the hardware. Perplexity of quantized folders against their
simulated decode tokens/s (top) and energy per token (bottom) on cloud and edge, for uniform widths, the rank rule,
the average-bits ILP and the hardware-budget ILP (`llm1bit bits --min-tokens-per-s / --max-energy-per-token-mj`)
at the points the average-bits allocations reach.

The results folder is fig16's kind (`llm1bit quantize` folders and their `llm1bit eval --json` results, read by
`quality.read_runs`); `scripts/fig17_results.sh` (or `make fig17-results`) makes it, naming each run by how its
widths were chosen (uniform2, rank-2.2, ilp-bits-2.2, ilp-tps-cloud-2.2, ilp-tps-cloud-b16-2.2, ilp-mj-edge-2.2,
...), which colours it here; a run whose widths equal another's names that run's folder. Each folder is simulated
as stored (`simulate --quantized`), decode batch `batch`, l = `amdahl_len` (a batch-16 budget's run too: its point
at the figure's batch)."""

from __future__ import annotations

from pathlib import Path

from llm1bit.figures.common import (
    FigureSpec,
    Results,
    Settings,
    backend_note,
    fmt_float,
    hw_label,
    new_figure,
    rows_to_csv,
    settings_text,
    write_outputs,
)
from llm1bit.figures.quality import HW, Run, read_runs
from llm1bit.sweep import Point

# run-name prefix -> (legend text, colour); the first prefix a run's name starts with decides
FAMILIES = (
    ("uniform", "uniform", "#7f7f7f"),
    ("rank", "rank rule", "#9467bd"),
    ("ilp-bits", "ILP, average bits", "#1f77b4"),
    ("ilp-tps-cloud-b16", "ILP, tokens/s on cloud at batch 16", "#e377c2"),
    ("ilp-tps-cloud", "ILP, tokens/s on cloud", "#d62728"),
    ("ilp-tps-edge", "ILP, tokens/s on edge", "#ff7f0e"),
    ("ilp-mj-edge", "ILP, mJ/token on edge", "#2ca02c"),
    ("ilp-mj-cloud", "ILP, mJ/token on cloud", "#17becf"),
)
CSV_COLUMNS = (
    "run", "folder", "allocation", "weight_bits_mean", "eval_data", "eval_seqlen", "eval_windows", "perplexity",
    "hw", "hw_fingerprint", "freq_mhz", "dram_gbps", "seq_len", "phase", "batch", "backend", "act_bits",
    "kv_bits", "energy_table", "energy_table_sha256", "tokens_per_s", "energy_per_token_mj",
)  # fmt: skip


def family(run: Run) -> tuple[str, str]:
    """(legend text, colour) of a run from its name."""
    for prefix, text, color in FAMILIES:
        if run.name.startswith(prefix):
            return text, color
    return run.name, "#8c564b"


def _runs(settings: Settings) -> list[Run]:
    from llm1bit.errors import UserError

    if settings.results_dir is None:
        raise UserError(
            "fig17 needs --results DIR: quantized folders and their `eval --json` results (README)"
        )
    return read_runs(Path(settings.results_dir), "fig17")


def _point(settings: Settings, run: Run, hw: str) -> Point:
    return Point(
        run.model,
        settings.priced_hardware(hw),
        settings.amdahl_len,
        settings.phase,
        settings.batch,
        settings.reference_pricing(),
    )


def budget_points(settings: Settings) -> list[Point]:
    return [_point(settings, run, hw) for run in _runs(settings) if run.model for hw in HW]


def draw_budgets(settings: Settings, results: Results, out: Path) -> list[Path]:
    runs = _runs(settings)
    quantized = [r for r in runs if r.model]
    fp = next((r for r in runs if not r.model), None)
    fig = new_figure(12, 8.5)
    axes = fig.subplots(2, 2, sharey=True)
    rows, splits, labelled = [], [], set()
    for col, hw in enumerate(HW):
        for run in quantized:
            split = results[_point(settings, run, hw)]
            splits.append(split)
            tokens = split.tokens_per_s
            mj = (
                split.energy_j
                * 1000
                / (split.batch if split.phase == "decode" else split.batch * split.seq_len)
            )
            bits = float(split.label()["weight_bits"])
            text, color = family(run)
            label = None if text in labelled else text
            labelled.add(text)
            for row, x in enumerate((tokens, mj)):
                ax = axes[row][col]
                ax.scatter([x], [run.perplexity], color=color, s=60, zorder=3, edgecolors="black",
                           linewidths=0.4, label=label if row == 0 else None)  # fmt: skip
                ax.annotate(f"{run.name} ({bits:.3g} b)", (x, run.perplexity), xytext=(4, 3),
                            textcoords="offset points", fontsize=6)  # fmt: skip
            p = split.label()
            rows.append(
                {
                    "run": run.name,
                    "folder": str(run.folder),
                    "allocation": text,
                    "weight_bits_mean": fmt_float(bits),
                    "eval_data": run.data,
                    "eval_seqlen": run.seqlen,
                    "eval_windows": run.windows,
                    "perplexity": fmt_float(run.perplexity),
                    **{k: p[k] for k in CSV_COLUMNS[8:20]},
                    "tokens_per_s": fmt_float(tokens),
                    "energy_per_token_mj": fmt_float(mj),
                }
            )
        hw_obj = settings.priced_hardware(hw)
        for row, xlabel in enumerate(("simulated decode tokens/s", "simulated energy per token (mJ)")):
            ax = axes[row][col]
            if fp is not None:
                ax.axhline(fp.perplexity, color="black", lw=0.8, ls="--")
            ax.set_xlabel(xlabel)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_ylabel("perplexity")
            if row == 0:
                ax.set_title(f"{hw_label(hw_obj)}, {hw_obj.dram_gbps:g} GB/s", fontsize=10)
    name = fp.folder.stem if fp else quantized[0].model.name
    ev = quantized[0]
    fig.legend(loc="outside right center", fontsize=8, title="widths chosen by", title_fontsize=8)
    fp_text = f", FP {fp.perplexity:.4g} (dashed)" if fp else ""
    title = (
        f"Fig. 17: perplexity ({ev.data}, {ev.windows} windows of {ev.seqlen}) against simulated decode tokens/s "
        f"and energy per token{fp_text}\n{name}, l = {settings.amdahl_len}, {settings.step} "
        f"[{backend_note(settings, splits)}]"
    )
    fig.suptitle(title, fontsize=10)
    stem = f"fig17-bits-for-the-hardware{settings.suffix}"
    meta = settings_text(
        settings, settings.backend, results=settings.results_dir, seq_len=settings.amdahl_len
    )
    return write_outputs(fig, out, stem, rows_to_csv(rows, CSV_COLUMNS), title.replace("\n", " "), meta)


FIGURES = (
    FigureSpec(
        "fig17",
        "perplexity against simulated tokens/s and energy per token of uniform, rank, average-bits and "
        "hardware-budget allocations (--results DIR)",
        budget_points,
        draw_budgets,
    ),
)
