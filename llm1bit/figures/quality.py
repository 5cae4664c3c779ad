"""Fig. 16 (beyond the paper): what a quantized model costs in quality against what it buys in time and energy.

Built from real artefacts: a results folder holding `llm1bit quantize` output folders and the
`llm1bit eval --json` result of each (any `*.json` in the folder with `model` and `perplexity`; its
`model` names the evaluated folder, absolute or relative to the results folder). An evaluation of a
model that is not a quantized folder is the FP reference (speedup 1). Each quantized folder is
simulated as it is stored (its per-layer bits and packed bytes, `simulate --quantized`) and as fp16
(the same architecture, every projection 16-bit), at decode batch `batch`, l = `amdahl_len`, on cloud
and edge: x = whole-model speedup in time (left) and energy saving (right), y = perplexity.
`scripts/fig16_results.sh` (or `make fig16-results`) produces such a folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError
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
from llm1bit.model_spec import ModelSpec
from llm1bit.sweep import Point

HW = ("cloud", "edge")
BIT_MARKERS = {3.0: "o", 2.0: "v", 4.0: "s", 1.0: "D"}  # other (mixed) widths: a star
METHOD_COLORS = {"rtn": "#7f7f7f", "gptq": "#1f77b4", "bcq": "#9467bd", "lat": "#d62728", "acc": "#2ca02c"}
CSV_COLUMNS = (
    "run",
    "folder",
    "method",
    "mode",
    "weight_bits_mean",
    "eval_data",
    "eval_seqlen",
    "eval_windows",
    "perplexity",
    "hw",
    "hw_fingerprint",
    "freq_mhz",
    "dram_gbps",
    "seq_len",
    "phase",
    "batch",
    "backend",
    "act_bits",
    "kv_bits",
    "energy_table",
    "energy_table_sha256",
    "speedup_time",
    "energy_saving",
    "tokens_per_s",
    "energy_j",
)


@dataclass(frozen=True)
class Run:
    """One evaluated model of the results folder."""

    name: str
    folder: Path
    perplexity: float
    data: str
    seqlen: int
    windows: int
    model: ModelSpec | None  # None: the FP reference (not a quantized folder)
    method: str = "fp"
    mode: str = ""

    @property
    def family(self) -> str:
        return self.mode if self.method == "shiftaddllm" else self.method


def read_runs(results: Path, figure: str = "fig16") -> list[Run]:
    """Every eval result of the folder, with its quantized model; a one-line error (naming `figure`, the one that
    reads them) for anything inconsistent."""
    from llm1bit.layer_widths import load_quantized_model

    if not results.is_dir():
        raise UserError(
            f"{figure}: results folder {results} does not exist (see README: make {figure}-results)"
        )
    runs = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not (isinstance(data, dict) and "perplexity" in data and "model" in data):
            continue
        folder = Path(data["model"])
        folder = folder if folder.is_absolute() else results / folder
        qc = (
            _quantization_config(folder, figure) if folder.is_dir() else None
        )  # a .gguf / hub id: the FP reference
        model = load_quantized_model(folder) if qc else None
        runs.append(
            Run(
                name=path.stem,
                folder=folder,
                perplexity=float(data["perplexity"]),
                data=Path(str(data.get("data", ""))).name,
                seqlen=int(data.get("seqlen", 0)),
                windows=int(data.get("windows", 0)),
                model=model,
                method=qc.get("method", "fp") if qc else "fp",
                mode=(qc.get("mode") or "") if qc else "",
            )
        )
    if not any(r.model for r in runs):
        raise UserError(f"{figure}: {results} holds no `llm1bit eval --json` result of a quantized folder")
    settings = {(r.data, r.seqlen, r.windows) for r in runs}
    if len(settings) > 1:
        raise UserError(
            f"{figure}: the evaluations in {results} differ in data / seqlen / windows: {sorted(settings)}"
        )
    return runs


def _quantization_config(folder: Path, figure: str) -> dict | None:
    """The evaluated folder's llm1bit quantization_config; None for an FP model's folder."""
    from llm1bit.format.folder import quantization_config, read_folder_config

    return quantization_config(
        read_folder_config(folder, f"{figure}: {folder} (the evaluated model's folder)")
    )


def _points(settings: Settings, run: Run, hw: str) -> tuple[Point, Point]:
    """(the quantized model as stored, the same architecture at fp16)."""
    model = run.model
    hw_obj = settings.priced_hardware(hw)
    pricing = settings.reference_pricing()
    fp16 = dataclasses.replace(model, proj_bits=())
    return (
        Point(model, hw_obj, settings.amdahl_len, settings.phase, settings.batch, pricing),
        Point(fp16, hw_obj, settings.amdahl_len, settings.phase, settings.batch, pricing),
    )


def _runs(settings: Settings) -> list[Run]:
    if settings.results_dir is None:
        raise UserError(
            "fig16 needs --results DIR: quantized folders and their `eval --json` results (README)"
        )
    return read_runs(Path(settings.results_dir))


def quality_points(settings: Settings) -> list[Point]:
    return [p for run in _runs(settings) if run.model for hw in HW for p in _points(settings, run, hw)]


def _label(run: Run, bits: float) -> str:
    kind = {"rtn": "RTN", "gptq": "GPTQ", "bcq": "BCQ", "lat": "ShiftAddLLM lat", "acc": "ShiftAddLLM acc"}
    return f"{kind.get(run.family, run.family)} {bits:.3g}"


def draw_quality(settings: Settings, results: Results, out: Path) -> list[Path]:
    from matplotlib.ticker import PercentFormatter

    runs = _runs(settings)
    quantized = [r for r in runs if r.model]
    fp = next((r for r in runs if not r.model), None)
    fig = new_figure(12, 8.5)
    axes = fig.subplots(2, 2, sharey=True)
    rows, splits = [], []
    for col, hw in enumerate(HW):
        for run in quantized:
            q_point, fp_point = _points(settings, run, hw)
            q, ref = results[q_point], results[fp_point]
            splits += [q, ref]
            bits = float(q.label()["weight_bits"])
            speedup, saving = ref.latency_s / q.latency_s, 1 - q.energy_j / ref.energy_j
            color = METHOD_COLORS.get(run.family, "#8c564b")
            marker = BIT_MARKERS.get(bits, "*")
            label = _label(run, bits) if col == 0 else None  # one legend entry per run
            for row, x in enumerate((speedup, saving)):
                axes[row][col].scatter(
                    [x],
                    [run.perplexity],
                    color=color,
                    marker=marker,
                    s=70,
                    zorder=3,
                    edgecolors="black",
                    linewidths=0.4,
                    label=label if row == 0 else None,
                )
            p = q.label()
            rows.append(
                {
                    "run": run.name,
                    "folder": str(run.folder),
                    "method": run.method,
                    "mode": run.mode,
                    "weight_bits_mean": fmt_float(bits),
                    "eval_data": run.data,
                    "eval_seqlen": run.seqlen,
                    "eval_windows": run.windows,
                    "perplexity": fmt_float(run.perplexity),
                    **{
                        k: p[k] for k in ("hw", "hw_fingerprint", "freq_mhz", "dram_gbps", "seq_len", "phase")
                    },
                    **{k: p[k] for k in ("batch", "backend", "act_bits", "kv_bits", "energy_table")},
                    "energy_table_sha256": p["energy_table_sha256"],
                    "speedup_time": fmt_float(speedup),
                    "energy_saving": fmt_float(saving),
                    "tokens_per_s": fmt_float(q.tokens_per_s),
                    "energy_j": fmt_float(q.energy_j),
                }
            )
        hw_obj = settings.priced_hardware(hw)
        for row, (xlabel, x_fp) in enumerate(
            (
                ("whole-model decode speedup in time (× over fp16)", 1.0),
                ("energy saving per decode step (vs fp16)", 0.0),
            )
        ):
            ax = axes[row][col]
            if fp is not None:
                ax.axhline(fp.perplexity, color="black", lw=0.8, ls="--")
                ax.scatter([x_fp], [fp.perplexity], color="black", marker="s", zorder=3)
                ax.annotate(f"FP {fp.perplexity:.3g}", (x_fp, fp.perplexity), xytext=(5, -10),
                            textcoords="offset points", fontsize=7)  # fmt: skip
            ax.set_xlabel(xlabel)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(f"{hw_label(hw_obj)}, {hw_obj.dram_gbps:g} GB/s", fontsize=10)
            if row == 1:
                ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
        axes[0][col].set_ylabel("perplexity")
        axes[1][col].set_ylabel("perplexity")
    name = fp.folder.stem if fp else quantized[0].model.name
    ev = quantized[0]
    fig.legend(loc="outside right center", fontsize=8, title="method, bits", title_fontsize=8)
    title = (
        f"Fig. 16: perplexity ({ev.data}, {ev.windows} windows of {ev.seqlen}) against simulated decode speedup and "
        f"energy saving\n{name}, l = {settings.amdahl_len}, {settings.step} [{backend_note(settings, splits)}]"
    )
    fig.suptitle(title, fontsize=10)
    stem = f"fig16-quality-vs-cost{settings.suffix}"
    meta = settings_text(
        settings, settings.backend, results=settings.results_dir, seq_len=settings.amdahl_len
    )
    return write_outputs(fig, out, stem, rows_to_csv(rows, CSV_COLUMNS), title.replace("\n", " "), meta)


FIGURES = (
    FigureSpec(
        "fig16",
        "perplexity against simulated speedup and energy saving of quantized folders (--results DIR)",
        quality_points,
        draw_quality,
    ),
)
