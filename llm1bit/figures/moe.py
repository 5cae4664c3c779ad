"""Fig. 13's second panel: mixture-of-experts and today's dense models at decode batch 1 and 16.

For Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V2-Lite, Gemma-2-9B and Llama-3.1-8B (their published configs
in llm1bit/configs/) at l = 4096 on cloud and edge: each bar is one decode step's compute cycles split by
kind of product (attention projections, dense FFN, routed experts, shared experts, router: the
MatMul-free part; attention heads: the MatMul part), with the MatMul-free share of cycles, time and
energy written beside it. At batch 16 a MoE layer reads the expected number of distinct experts
(uniform routing), so its experts' share of the bytes and of the time changes with the batch."""

from __future__ import annotations

from pathlib import Path

from llm1bit.figures.common import (
    Results,
    Settings,
    backend_note,
    config_model,
    fmt_float,
    new_figure,
    rows_to_csv,
    settings_text,
    write_outputs,
)
from llm1bit.sweep import Point

HW = ("cloud", "edge")
BATCHES = (1, 16)
SEQ_LEN = 4096
MODELS = ("mixtral-8x7b-v0.1", "qwen3-30b-a3b", "deepseek-v2-lite", "gemma-2-9b-it", "llama-3.1-8b")
KINDS = ("attention-projection", "ffn", "expert", "shared-expert", "router", "attention")
KIND_COLORS = {
    "attention-projection": "#4c72b0",
    "ffn": "#55a868",
    "expert": "#dd8452",
    "shared-expert": "#c44e52",
    "router": "#8172b3",
    "attention": "#937860",
}
CSV_COLUMNS = (
    "model",
    "model_source",
    "architecture",
    "hw",
    "hw_fingerprint",
    "seq_len",
    "batch",
    "phase",
    "backend",
    "frac_cycles",
    "frac_time",
    "frac_energy",
    "tokens_per_s",
    *(f"cycles_share_{k}" for k in KINDS),
    *(f"time_share_{k}" for k in KINDS),
    *(f"energy_share_{k}" for k in KINDS),
)


def _cells(settings: Settings):
    models = [config_model(settings, name) for name in MODELS]
    pricing = settings.reference_pricing()
    for hw in HW:
        hw_obj = settings.priced_hardware(hw)
        for batch in BATCHES:
            for model in models:
                yield hw, batch, Point(model, hw_obj, SEQ_LEN, "decode", batch, pricing)


def moe_points(settings: Settings) -> list[Point]:
    return [p for _, _, p in _cells(settings)]


def _shares(split, metric: str) -> dict[str, float]:
    by_kind = split.by_kind()
    total = sum(v[metric] for v in by_kind.values())
    return {k: by_kind.get(k, {}).get(metric, 0.0) / total for k in KINDS}


def draw_moe(settings: Settings, results: Results, out: Path) -> list[Path]:
    from matplotlib.patches import Patch

    fig = new_figure(13.0, 7.5)
    axes = fig.subplots(len(HW), len(BATCHES), sharex=True, squeeze=False)
    rows, splits = [], []
    for hw, batch, point in _cells(settings):
        split = results[point]
        splits.append(split)
        cycles, time, energy = (_shares(split, m) for m in ("cycles", "time_s", "energy_j"))
        rows.append(
            {
                "model": split.model.name,
                "model_source": split.model.source,
                "architecture": split.model.architecture,
                "hw": hw,
                "hw_fingerprint": split.hw.fingerprint(),
                "seq_len": SEQ_LEN,
                "batch": batch,
                "phase": "decode",
                "backend": split.backend,
                "frac_cycles": fmt_float(split.frac_cycles),
                "frac_time": fmt_float(split.frac_time),
                "frac_energy": fmt_float(split.frac_energy),
                "tokens_per_s": fmt_float(split.tokens_per_s),
                **{f"cycles_share_{k}": fmt_float(v) for k, v in cycles.items()},
                **{f"time_share_{k}": fmt_float(v) for k, v in time.items()},
                **{f"energy_share_{k}": fmt_float(v) for k, v in energy.items()},
            }
        )
        ax = axes[HW.index(hw)][BATCHES.index(batch)]
        y = MODELS.index(point.model.name)
        left = 0.0
        for k in KINDS:
            ax.barh(y, cycles[k], left=left, color=KIND_COLORS[k], height=0.6)
            left += cycles[k]
        ax.annotate(
            f"F: cycles {split.frac_cycles:.2f}, time {split.frac_time:.2f}, energy {split.frac_energy:.2f}",
            (1.01, y),
            va="center",
            fontsize=7,
            annotation_clip=False,
        )
    for (row, hw), (col, batch) in ((r, c) for r in enumerate(HW) for c in enumerate(BATCHES)):
        ax = axes[row][col]
        ax.set_yticks(range(len(MODELS)), MODELS, fontsize=8)
        ax.set_ylim(len(MODELS) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_title(f"{hw}, decode batch {batch}, l = {SEQ_LEN}", fontsize=10)
        if row == len(HW) - 1:
            ax.set_xlabel("share of the compute cycles of one decode step")
    handles = [Patch(color=KIND_COLORS[k], label=k) for k in KINDS]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(KINDS), fontsize=8, frameon=False)
    title = (
        "Fig. 13b: MoE and today's dense models: compute cycles by kind of product; MatMul-free share F of "
        f"cycles, time and energy [{backend_note(settings, splits)}]"
    )
    fig.suptitle(title, fontsize=10)
    meta = settings_text(settings, settings.backend, seq_len=SEQ_LEN, batch="1,16", hw=",".join(HW))
    return write_outputs(fig, out, f"fig13-moe{settings.suffix}", rows_to_csv(rows, CSV_COLUMNS), title, meta)
