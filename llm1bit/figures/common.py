"""What every figure shares: settings, one simulation for all figures, the palette, atomic PNG + PDF + CSV.

A figure is a `FigureSpec`: the simulation points it needs (`points(settings)`) and a drawing
function (`draw(settings, results, out)`) that reads the simulated `Split`s back by point and
writes its files. `simulate` gathers the points of every requested figure, removes duplicates
and runs them in one `run_points` call, so a GEMM shared by several figures is simulated once.

Figures are drawn with matplotlib's object API on an Agg canvas (`new_figure`): no pyplot, no
global backend switch, nothing done at import."""

from __future__ import annotations

import csv
import functools
import io
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm1bit.amdahl import parse_s_partial
from llm1bit.backends import get_backend
from llm1bit.cache import ResultCache
from llm1bit.costs import Pricing
from llm1bit.energy import load_energy_table
from llm1bit.engine import Progress
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware, load_hardware
from llm1bit.model_spec import ModelSpec
from llm1bit.models import CONFIG_DIR, GPT_MODELS, LLAMA_MODELS, OPT_MODELS, resolve_model
from llm1bit.precision import Precision
from llm1bit.split import Split
from llm1bit.sweep import Point, points, run_points
from llm1bit.version import __version__

SEQ_LENS = (128, 256, 512, 1024, 2048, 4096)
WEIGHT_BITS = (16.0, 8.0, 4.0, 3.0, 2.0, 1.58, 1.0)  # fig14's projection weight widths
BREAKDOWN_BITS = (16.0, 3.0, 1.58)  # fig15's (ShiftAddLLM Fig. 8: FP16, 3-bit ShiftAddLLM; ternary)
BREAKDOWN_MODELS = ("opt-66b", "llama-7b")

# fig13: (true architecture from llm1bit/configs/<name>.json, the comparable paper-shape model).
# opt-125m has GPT-2 small's d, h and layers; the paper's gpt-125m is that shape with d_FF = d.
MODERN_PAIRS = (
    ("llama-2-7b", "llama-7b"),
    ("llama-3-8b", "llama-7b"),
    ("mistral-7b", "llama-7b"),
    ("smollm2-135m", "gpt-125m"),
    ("opt-125m", "gpt-125m"),
    ("gpt2-medium", "gpt-355m"),
)


@dataclass(frozen=True)
class Settings:
    """Everything that decides the figures' numbers; tests shrink the model and length lists."""

    backend: str = "analytic"
    phase: str = "decode"
    batch: int = 1
    seq_lens: tuple[int, ...] = SEQ_LENS
    amdahl_len: int = 2048  # l of the single-length Amdahl figures and of fig08
    s_partial: tuple[float, ...] = field(default_factory=lambda: parse_s_partial(None, "1:100:49"))
    opt_models: tuple[str, ...] = OPT_MODELS
    gpt_llama_models: tuple[str, ...] = GPT_MODELS + LLAMA_MODELS
    dataflows: tuple[str, ...] = ("is", "os", "ws")
    modern_pairs: tuple[tuple[str, str], ...] = MODERN_PAIRS
    modern_lens: tuple[int, ...] = (2048, 4096)
    config_dir: Path = CONFIG_DIR
    # What prices the counters (fig14, fig15; the other figures plot counters only and ignore these).
    weight_bits: tuple[float, ...] = WEIGHT_BITS  # fig14's x axis
    breakdown_bits: tuple[float, ...] = BREAKDOWN_BITS  # fig15's bars
    breakdown_models: tuple[str, ...] = BREAKDOWN_MODELS
    weight_format: str | None = None  # None: each width's default format (precision.default_format)
    act_bits: float = 16.0
    kv_bits: float = 16.0
    energy_table: str | None = None  # a built-in table name or a JSON file; None: horowitz-45nm
    bcq_compute: str = "lut"
    freq_mhz: float | None = None  # None: the .cfg's [llm1bit] clock
    dram_gbps: float | None = None  # None: the .cfg's [llm1bit] DRAM bandwidth
    results_dir: Path | None = None  # fig16: quantized folders and their `eval --json` results

    def pricing(self, weight_bits: float) -> Pricing:
        """Projection weights at `weight_bits` in `weight_format` (None: the width's default format),
        activations and KV cache at these settings' widths; a bad value is a one-line UserError."""
        return self._pricing(weight_bits, self.weight_format)

    def reference_pricing(self) -> Pricing:
        """The 16-bit point that speedups and savings are relative to: fp16 weights, whatever `weight_format`."""
        return self._pricing(16.0, None)

    def _pricing(self, weight_bits: float, weight_format: str | None) -> Pricing:
        precision = Precision.build(weight_bits, self.act_bits, self.kv_bits, weight_format)
        return Pricing(precision, load_energy_table(self.energy_table), self.bcq_compute)

    def priced_hardware(self, name: str) -> Hardware:
        """The built-in (or .cfg) hardware with these settings' clock / DRAM bandwidth overrides."""
        return hardware(name).with_clock(self.freq_mhz, self.dram_gbps)

    @property
    def suffix(self) -> str:
        """File-name suffix for settings beyond the paper's (decode, batch 1 keep the plain names)."""
        parts = [] if self.phase == "decode" else [self.phase]
        if self.batch != 1:
            parts.append(f"b{self.batch}")
        return "".join(f"-{p}" for p in parts)

    @property
    def step(self) -> str:
        """'decode, batch 1' for titles."""
        return f"{self.phase}, batch {self.batch}"


# Results of the one simulation: the Split of every point.
Results = dict[Point, Split]


@dataclass(frozen=True)
class FigureSpec:
    name: str  # fig04 ...
    summary: str  # one line for --help and the progress bar
    points: Callable[[Settings], list[Point]]
    draw: Callable[[Settings, Results, Path], list[Path]]


# --- inputs -------------------------------------------------------------------------------------


@functools.lru_cache
def hardware(name: str, dataflow: str | None = None) -> Hardware:
    """load_hardware, each (name, dataflow) read once per process (Hardware is frozen, so sharing it is safe)."""
    return load_hardware(name, dataflow)


def models(names: Iterable[str]) -> list[ModelSpec]:
    return [resolve_model(n) for n in names]


def config_model(settings: Settings, name: str) -> ModelSpec:
    """A true architecture from `<config_dir>/<name>.json` (the HF configs shipped in llm1bit/configs)."""
    path = settings.config_dir / f"{name}.json"
    if not path.is_file():
        raise UserError(f"fig13 needs the Hugging Face config {path}, which does not exist")
    return resolve_model(str(path))


def grid(
    settings: Settings, names: Iterable[str], hw: str, seq_lens: Sequence[int], dataflows=(None,)
) -> list[Point]:
    """The points `llm1bit sweep --models NAMES --hw HW --seq-lens ... --dataflows ...` would run, in its order."""
    return points(
        models(names), [hardware(hw)], list(seq_lens), list(dataflows), settings.phase, settings.batch
    )


def lookup(results: Results, pts: Iterable[Point]) -> list[Split]:
    return [results[p] for p in pts]


# --- one simulation for all figures ---------------------------------------------------------------


def simulate(
    specs: Sequence[FigureSpec],
    settings: Settings,
    cache: ResultCache | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> Results:
    """Simulate the points of all `specs` at once (one deduplicated run).

    With the scalesim backend, points the exact composition of the real simulator cannot cover
    fall back to the analytic closed form (field-for-field equal to SCALE-Sim); their rows say
    `analytic` in the backend column and the figure's title counts them."""
    wanted = list(dict.fromkeys(p for spec in specs for p in spec.points(settings)))
    return dict(zip(wanted, run_points(wanted, settings.backend, cache=cache, jobs=jobs, progress=progress)))


def backend_note(settings: Settings, splits: Sequence[Split]) -> str:
    """'analytic', or 'scalesim' plus how many points came from its fallback (the analytic closed form)."""
    fallback = [s for s in splits if s.backend != settings.backend]
    if not fallback:
        return settings.backend
    name = get_backend(settings.backend).fallback
    return (
        f"{settings.backend} ({len(fallback)} of {len(splits)} points {name}: outside the exact composition)"
    )


# --- colours ---------------------------------------------------------------------------------------

# One fixed colour per model, the same in every figure. OPT models take tab10's first seven hues
# (they share the line plots); the others are distinct from those and from each other.
MODEL_COLORS: dict[str, str] = {
    "opt-350m": "#1f77b4",
    "opt-1.3b": "#ff7f0e",
    "opt-2.7b": "#2ca02c",
    "opt-6.7b": "#d62728",
    "opt-13b": "#9467bd",
    "opt-30b": "#8c564b",
    "opt-66b": "#e377c2",
    "gpt-125m": "#7f7f7f",
    "gpt-355m": "#bcbd22",
    "gpt-774m": "#17becf",
    "gpt-1.5b": "#393b79",
    "llama-7b": "#843c39",
    "llama-13b": "#e7ba52",
    # true architectures (llm1bit/configs)
    "llama-2-7b": "#d6616b",
    "llama-3-8b": "#3182bd",
    "mistral-7b": "#e6550d",
    "smollm2-135m": "#31a354",
    "opt-125m": "#756bb1",
    "gpt2-medium": "#636363",
}
DATAFLOW_COLORS = {"is": "#dd8452", "os": "#4c72b0", "ws": "#55a868"}
DATAFLOW_HATCHES = {"is": "//", "os": "", "ws": ".."}
HEATMAP_CMAP = "YlGnBu"


def model_color(name: str) -> str:
    """The model's fixed colour; an unknown name gets a stable tab20 colour from its name."""
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["tab20"](zlib.crc32(name.encode()) % 20))


def hw_label(hw: Hardware) -> str:
    return f"{hw.name} TPU {hw.rows}×{hw.cols}, {hw.dataflow.upper()}"


# --- drawing and writing -------------------------------------------------------------------------


def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _metadata(fmt: str, title: str, settings_text: str) -> dict:
    software = f"llm1bit {__version__}"
    if fmt == "png":
        return {"Title": title, "Description": settings_text, "Software": software}
    if fmt == "pdf":
        return {
            "Title": title,
            "Subject": settings_text,
            "Creator": software,
            "Producer": software,
            "CreationDate": None,
        }
    if fmt == "svg":
        return {"Title": title, "Description": settings_text, "Date": None}
    return {}


def save_figure(fig, path: Path, title: str, settings_text: str) -> Path:
    """Write one image atomically, its title and settings in the file's metadata."""
    from llm1bit.atomic import atomic_path

    fmt = path.suffix.lower().lstrip(".")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, metadata=_metadata(fmt, title, settings_text))
    return path


def rows_to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(fig, out: Path, stem: str, csv_text: str, title: str, settings_text: str) -> list[Path]:
    """`<out>/<stem>.png`, `.pdf` and `.csv`, each written atomically; the CSV first."""
    from llm1bit.atomic import atomic_write_text

    paths = [atomic_write_text(out / f"{stem}.csv", csv_text)]
    for ext in ("png", "pdf"):
        paths.append(save_figure(fig, out / f"{stem}.{ext}", title, settings_text))
    return paths


def settings_text(settings: Settings, backend: str, **extra: object) -> str:
    """'backend=analytic phase=decode batch=1 hw=cloud ...': what the PNG / PDF metadata records."""
    items = {"backend": backend, "phase": settings.phase, "batch": settings.batch, **extra}
    return " ".join(f"{k}={v}" for k, v in items.items())


def fmt_float(x: float) -> str:
    """Full precision in CSVs (repr round-trips)."""
    return repr(float(x))
