"""Sensitivity figures of the mixed-bit allocation (`llm1bit bits --figures DIR`), after the paper's Figs. 4, 5, 7.

    sal_fig4  measured error per decoder block, one line per sublayer (Q/K/V/out/fc1/fc2 or
              q/k/v/o/gate/up/down), one panel per candidate width; a second row with the
              relative decoder-output errors when they were measured
    sal_fig5  criterion S vs measured error (log-log) per width, and the fit's prediction (the refined
              criterion) vs measured error; Kendall tau of both per width in the title, computed
              from the plotted points
    sal_fig7  the chosen allocation as a block x sublayer grid

Each figure is written as `<DIR>/<name>-<model tag>.png` and `.pdf`, with `.csv` of the plotted numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SHORT = {
    "self_attn.q_proj": "Q",
    "self_attn.k_proj": "K",
    "self_attn.v_proj": "V",
    "self_attn.o_proj": "out",
    "self_attn.out_proj": "out",
    "fc1": "fc1",
    "fc2": "fc2",
    "mlp.gate_proj": "gate",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _sublayers(layers) -> list[str]:
    seen: list[str] = []
    for layer in layers:
        if layer.sublayer not in seen:
            seen.append(layer.sublayer)
    order = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
    return sorted(seen, key=lambda s: (order.get(s, 3), seen.index(s)))


def _fmt(x: float) -> str:
    return repr(float(x))


def _settings_text(settings: dict) -> str:
    keys = ("model", "calib", "nsamples", "seqlen", "seed", "mode", "candidates")
    return " ".join(f"{k}={settings[k]}" for k in keys if k in settings)


def fig4(result, out: Path, tag: str, settings: dict) -> list[Path]:
    from llm1bit.figures.common import new_figure, rows_to_csv, write_outputs

    layers = result.layers
    widths = sorted({b for layer in layers for b in layer.errors})
    subs = _sublayers(layers)
    blocks = sorted({layer.block for layer in layers})
    has_output = any(layer.output_errors for layer in layers)
    rows = [
        {
            "block": layer.block,
            "sublayer": SHORT.get(layer.sublayer, layer.sublayer),
            "name": layer.name,
            "params": layer.params,
            "criterion": _fmt(layer.criterion),
            **{f"error_{b}bit": _fmt(layer.errors[b]) for b in widths},
            **{
                f"output_error_{b}bit": _fmt(layer.output_errors[b]) if b in layer.output_errors else ""
                for b in (widths if has_output else ())
            },
        }
        for layer in layers
        if layer.errors
    ]
    panels = [("errors", "reparameterization error (solver loss)")]
    if has_output:
        panels.append(("output_errors", "relative decoder-output error"))
    fig = new_figure(4.2 * max(1, len(widths)), 3.6 * len(panels))
    grid = fig.subplots(len(panels), max(1, len(widths)), squeeze=False)
    for row_axes, (attr, label) in zip(grid, panels, strict=True):
        for ax, b in zip(row_axes, widths, strict=False):
            for i, sub in enumerate(subs):
                pts = sorted(
                    (layer.block, getattr(layer, attr)[b])
                    for layer in layers
                    if layer.sublayer == sub and b in getattr(layer, attr)
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(
                        xs, ys, marker="o", ms=3, color=COLORS[i % len(COLORS)], label=SHORT.get(sub, sub)
                    )
            ax.set_yscale("log")
            ax.set_xlabel("decoder block")
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(f"{b}-bit")
            if len(blocks) <= 16:
                ax.set_xticks(blocks)
            ax.grid(True, which="major", alpha=0.3)
    grid[0][0].legend(fontsize=7, ncols=2)
    title = f"Per-layer sensitivity of {tag} ({settings.get('mode', '')} mode)"
    fig.suptitle(title, fontsize=10)
    columns = ["block", "sublayer", "name", "params", "criterion", *[f"error_{b}bit" for b in widths]]
    if has_output:
        columns += [f"output_error_{b}bit" for b in widths]
    return write_outputs(
        fig, out, f"sal_fig4-{tag}", rows_to_csv(rows, columns), title, _settings_text(settings)
    )


def fig5(result, out: Path, tag: str, settings: dict) -> list[Path]:
    from scipy.stats import kendalltau

    from llm1bit.figures.common import new_figure, rows_to_csv, write_outputs

    layers = result.layers
    widths = sorted({b for layer in layers for b in layer.errors})
    fig = new_figure(9.6, 4.4)
    ax, ax2 = fig.subplots(1, 2)
    rows, taus, taus_refined = [], [], []
    lo, hi = np.inf, -np.inf
    for i, b in enumerate(widths):
        pts = [layer for layer in layers if b in layer.errors]
        crit = np.array([layer.criterion for layer in pts])
        params = np.array([layer.params for layer in pts])
        err = np.array([layer.errors[b] for layer in pts])
        fit = result.fits.get(b)
        pred = fit.predict(crit, params) if fit is not None else np.full_like(crit, np.nan)
        tau = float(kendalltau(crit, err).statistic) if len(pts) > 1 else float("nan")
        tau_r = float(kendalltau(pred, err).statistic) if len(pts) > 1 and fit is not None else float("nan")
        taus.append(f"{b}-bit {tau:.3f}")
        taus_refined.append(f"{b}-bit {tau_r:.3f}")
        color = COLORS[i % len(COLORS)]
        ax.scatter(crit, err, s=10, color=color, label=f"{b}-bit (τ={tau:.3f})")
        if fit is not None and fit.size_coeff is None and len(crit):
            xs = np.geomspace(max(crit.min(), 1e-30), max(crit.max(), 1e-30), 100)
            ax.plot(xs, fit.predict(xs), color=color, lw=1)
        ax2.scatter(pred, err, s=10, color=color, label=f"{b}-bit (τ={tau_r:.3f})")
        if len(pts):
            lo, hi = min(lo, pred.min(), err.min()), max(hi, pred.max(), err.max())
        for layer, p in zip(pts, pred, strict=True):
            rows.append(
                {
                    "name": layer.name,
                    "bits": b,
                    "params": layer.params,
                    "criterion": _fmt(layer.criterion),
                    "error": _fmt(layer.errors[b]),
                    "predicted": _fmt(p),
                    "kendall_tau": _fmt(tau),
                    "kendall_tau_refined": _fmt(tau_r),
                }
            )
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_ylabel("measured error (solver loss)")
        a.legend(fontsize=8)
        a.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("criterion S = ‖W⊘d‖_F · std(W⊘d)²")
    ax.set_title("criterion S (Kendall τ of S)", fontsize=9)
    if np.isfinite(lo) and lo > 0:
        ax2.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax2.set_xlabel("predicted error (per-width fit)")
    ax2.set_title("refined criterion: the fit's prediction", fontsize=9)
    title = (
        f"{tag}: Kendall τ, criterion vs measured error: {', '.join(taus)}; "
        f"refined prediction: {', '.join(taus_refined)}"
    )
    fig.suptitle(title, fontsize=9)
    columns = [
        "name",
        "bits",
        "params",
        "criterion",
        "error",
        "predicted",
        "kendall_tau",
        "kendall_tau_refined",
    ]
    return write_outputs(
        fig, out, f"sal_fig5-{tag}", rows_to_csv(rows, columns), title, _settings_text(settings)
    )


def fig7(result, out: Path, tag: str, settings: dict) -> list[Path]:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    from llm1bit.figures.common import new_figure, rows_to_csv, write_outputs

    alloc = result.allocation
    layers = result.layers
    subs = _sublayers(layers)
    blocks = sorted({layer.block for layer in layers})
    grid = np.full((len(subs), len(blocks)), np.nan)
    for layer in layers:
        grid[subs.index(layer.sublayer), blocks.index(layer.block)] = alloc.bits[layer.name]
    widths = sorted(set(alloc.bits.values()) | set(result.fits))
    from matplotlib import colormaps

    cmap = ListedColormap(colormaps["Blues"](np.linspace(0.2, 0.85, len(widths))))
    norm = BoundaryNorm([w - 0.5 for w in widths] + [widths[-1] + 0.5], cmap.N)
    fig = new_figure(max(4.0, 0.32 * len(blocks) + 1.8), 0.4 * len(subs) + 1.4)
    ax = fig.subplots()
    im = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
    if len(blocks) <= 40:
        for (r, c), v in np.ndenumerate(grid):
            ax.text(
                c,
                r,
                f"{int(v)}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if v == widths[-1] else "black",
            )
    ax.set_yticks(range(len(subs)), [SHORT.get(s, s) for s in subs])
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=6)
    ax.set_xlabel("decoder block")
    fig.colorbar(im, ax=ax, ticks=widths, label="bits")
    budget = settings.get("budget", "")
    if isinstance(budget, dict):  # {kind, value}; sal_fig7 is drawn for average-bits budgets
        budget = f"{budget.get('value', '')}" if budget.get("kind") == "average_bits" else f"{budget}"
    title = f"{tag}: {alloc.solver} allocation, {alloc.average_bits:.4f} avg bits (budget {budget})"
    ax.set_title(title, fontsize=9)
    rows = [
        {
            "block": layer.block,
            "sublayer": SHORT.get(layer.sublayer, layer.sublayer),
            "name": layer.name,
            "params": layer.params,
            "bits": alloc.bits[layer.name],
        }
        for layer in layers
    ]
    columns = ["block", "sublayer", "name", "params", "bits"]
    return write_outputs(
        fig, out, f"sal_fig7-{tag}", rows_to_csv(rows, columns), title, _settings_text(settings)
    )


FIGURES = {"sal_fig4": fig4, "sal_fig5": fig5, "sal_fig7": fig7}


def draw_figures(names: Sequence[str], result, out: Path, tag: str, settings: dict) -> list[Path]:
    """Draw the named figures of a `bits` result into `out`; returns the written paths."""
    paths: list[Path] = []
    for name in names:
        paths += FIGURES[name](result, out, tag, settings)
    return paths
