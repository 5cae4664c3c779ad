"""Design-space exploration: a TOML space file expanded into simulation points.

Every dimension `simulate` accepts is a list (or a range table) in the space file; the product of all
of them, filtered by the constraints and deduplicated, is the set of points. Points are simulated by
`sweep.run_points` (distinct GEMM runs once, the verified store first, then an executor), so a
re-run recomputes nothing.

    backend = "scalesim"                  # or "analytic"
    models = ["opt-350m", "llama-7b"]     # names or config.json paths
    seq_len = [512, 2048]                 # or {from = 128, to = 4096, times = 2}
    phase = ["decode"]
    batch = [1, 16]
    weight_bits = [16, 3, 1.58]
    act_bits = [16]
    kv_bits = [16]
    energy_table = "horowitz-45nm"

    [hardware]
    files = ["cloud", "edge"]             # .cfg designs as they are, and / or a grid:
    rows = [32, 64, 128, 256]             # ArrayHeight
    cols = "rows"                         # ArrayWidth: a list, or "rows" for square arrays
    ifmap_sram_kb = [1024, 2048]
    filter_sram_kb = [2048, 4096]
    ofmap_sram_kb = [1024]
    dataflow = ["os", "ws"]
    freq_mhz = [700]
    dram_gbps = [34, 100]

    [constraints]
    max_total_sram_kb = 8192              # ifmap + filter + ofmap
    max_macs = 65536                      # rows x cols"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError

TOP_KEYS = {
    "backend",
    "models",
    "seq_len",
    "phase",
    "batch",
    "weight_bits",
    "act_bits",
    "kv_bits",
    "weight_format",
    "energy_table",
    "bcq_compute",
    "hardware",
    "constraints",
}
HW_KEYS = {
    "files",
    "rows",
    "cols",
    "ifmap_sram_kb",
    "filter_sram_kb",
    "ofmap_sram_kb",
    "dataflow",
    "freq_mhz",
    "dram_gbps",
}
CONSTRAINT_KEYS = {"max_total_sram_kb", "max_macs", "min_macs"}
GRID_KEYS = ("rows", "cols", "ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb")
MAX_POINTS = 2_000_000


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read space file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"malformed space file {path}: {exc}") from None


def values(path: Path, key: str, raw, kind=float) -> list:
    """A dimension: a scalar, a list, or a range table {from, to, step} / {from, to, times}."""
    if isinstance(raw, dict):
        unknown = set(raw) - {"from", "to", "step", "times"}
        if unknown or "from" not in raw or "to" not in raw or ("step" in raw) == ("times" in raw):
            raise UserError(
                f"space file {path}: {key} = {raw}: give {{from, to, step}} or {{from, to, times}}"
            )
        start, stop = raw["from"], raw["to"]
        out, x = [], start
        step, times = raw.get("step"), raw.get("times")
        if (step is not None and step <= 0) or (times is not None and times <= 1) or stop < start:
            raise UserError(f"space file {path}: {key} = {raw}: the range must grow (step > 0, times > 1)")
        while x <= stop * (1 + 1e-12):
            out.append(x)
            x = x + step if step is not None else x * times
            if len(out) > 100_000:
                raise UserError(f"space file {path}: {key} = {raw} has over 100000 values")
        raw = out
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise UserError(f"space file {path}: {key} is empty")
    out = []
    for item in items:
        if kind is int:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or item != int(item) or item <= 0:
                raise UserError(f"space file {path}: {key} value {item!r} must be a positive integer")
            item = int(item)
        elif kind is float:
            if (
                isinstance(item, bool)
                or not isinstance(item, (int, float))
                or not math.isfinite(item)
                or item <= 0
            ):
                raise UserError(f"space file {path}: {key} value {item!r} must be a positive number")
            item = float(item)
        elif not isinstance(item, str):
            raise UserError(f"space file {path}: {key} value {item!r} must be a string")
        out.append(item)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Space:
    """A parsed space file: what `points()` expands."""

    path: Path
    backend: str
    models: tuple
    seq_lens: tuple[int, ...]
    phases: tuple[str, ...]
    batches: tuple[int, ...]
    pricings: tuple
    hardware: tuple
    constraints: dict

    def points(self) -> list:
        from llm1bit.sweep import Point

        combos = itertools.product(
            self.models, self.hardware, self.seq_lens, self.phases, self.batches, self.pricings
        )
        return list(dict.fromkeys(Point(m, hw, seq, ph, b, pr) for m, hw, seq, ph, b, pr in combos))


def _grid_hardware(path: Path, hw: dict) -> list:
    from llm1bit.hardware import DATAFLOWS, Hardware

    dims = {
        k: values(path, f"hardware.{k}", hw[k], int)
        for k in GRID_KEYS
        if k in hw and not (k == "cols" and hw[k] == "rows")
    }
    missing = [k for k in GRID_KEYS if k not in hw]
    if missing:
        raise UserError(f'space file {path}: [hardware] grid needs {", ".join(missing)} (cols may be "rows")')
    square = hw["cols"] == "rows"
    flows = values(path, "hardware.dataflow", hw.get("dataflow", ["os"]), str)
    for df in flows:
        if df not in DATAFLOWS:
            raise UserError(f"space file {path}: hardware.dataflow {df!r}; allowed: {', '.join(DATAFLOWS)}")
    out = []
    cols = [None] if square else dims["cols"]
    for rows, col, ifm, flt, ofm, df in itertools.product(
        dims["rows"], cols, dims["ifmap_sram_kb"], dims["filter_sram_kb"], dims["ofmap_sram_kb"], flows
    ):
        col = rows if col is None else col
        name = f"{rows}x{col}-i{ifm}-f{flt}-o{ofm}"
        out.append(Hardware(name, rows, col, ifm, flt, ofm, dataflow=df, source="grid"))
    return out


def load_space(path: str | Path) -> Space:
    """Parse and validate a space file; every problem is one line naming the key and what is allowed."""
    from llm1bit.costs import Pricing
    from llm1bit.energy import load_energy_table
    from llm1bit.engine import BACKENDS
    from llm1bit.hardware import load_hardware
    from llm1bit.models import resolve_models
    from llm1bit.precision import Precision
    from llm1bit.workload import PHASES

    path = Path(path)
    data = _load_toml(path)
    for where, keys, allowed in (("", data, TOP_KEYS), ("[hardware] ", data.get("hardware", {}), HW_KEYS),
                                 ("[constraints] ", data.get("constraints", {}), CONSTRAINT_KEYS)):  # fmt: skip
        unknown = sorted(set(keys) - allowed)
        if unknown:
            raise UserError(
                f"space file {path}: unknown {where}key {unknown[0]!r}; known: {', '.join(sorted(allowed))}"
            )
    backend = data.get("backend", "analytic")
    if backend not in BACKENDS:
        raise UserError(f"space file {path}: backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if "models" not in data:
        raise UserError(f"space file {path}: give models = [...] (names or config.json paths)")
    base = path.parent
    names = [
        m if not (base / m).exists() else str(base / m) for m in values(path, "models", data["models"], str)
    ]
    models = resolve_models(",".join(names))
    phases = values(path, "phase", data.get("phase", ["decode"]), str)
    for ph in phases:
        if ph not in PHASES:
            raise UserError(f"space file {path}: phase {ph!r}; allowed: {', '.join(PHASES)}")
    table = load_energy_table(data.get("energy_table"))
    fmt, bcq = data.get("weight_format"), data.get("bcq_compute", "lut")
    pricings = [
        Pricing(Precision.build(w, a, kv, fmt), table, bcq)
        for w, a, kv in itertools.product(
            values(path, "weight_bits", data.get("weight_bits", [16])),
            values(path, "act_bits", data.get("act_bits", [16])),
            values(path, "kv_bits", data.get("kv_bits", [16])),
        )
    ]
    hw = data.get("hardware", {"files": ["cloud"]})
    designs = [load_hardware(f if not (base / f).is_file() else str(base / f)) for f in values(path, "hardware.files", hw["files"], str)] if "files" in hw else []  # fmt: skip
    if any(k in hw for k in GRID_KEYS):
        designs += _grid_hardware(path, hw)
    if not designs:
        raise UserError(
            f"space file {path}: [hardware] needs files = [...] or a grid (rows, cols, ..._sram_kb)"
        )
    clocks = itertools.product(
        values(path, "hardware.freq_mhz", hw["freq_mhz"]) if "freq_mhz" in hw else [None],
        values(path, "hardware.dram_gbps", hw["dram_gbps"]) if "dram_gbps" in hw else [None],
    )
    hardware = [d.with_clock(f, b) for (f, b), d in itertools.product(list(clocks), designs)]
    constraints = {
        k: values(path, f"constraints.{k}", v, int)[0] for k, v in data.get("constraints", {}).items()
    }
    hardware = [h for h in hardware if _allowed(h, constraints)]
    if not hardware:
        raise UserError(f"space file {path}: the constraints leave no hardware design")
    space = Space(
        path=path,
        backend=backend,
        models=tuple(models),
        seq_lens=tuple(values(path, "seq_len", data.get("seq_len", [2048]), int)),
        phases=tuple(phases),
        batches=tuple(values(path, "batch", data.get("batch", [1]), int)),
        pricings=tuple(dict.fromkeys(pricings)),
        hardware=tuple(dict.fromkeys(hardware)),
        constraints=constraints,
    )
    size = math.prod(
        map(len, (space.models, space.hardware, space.seq_lens, space.phases, space.batches, space.pricings))
    )
    if size > MAX_POINTS:
        raise UserError(f"space file {path}: {size} points; at most {MAX_POINTS} are allowed")
    return space


def _allowed(hw, constraints: dict) -> bool:
    sram = hw.ifmap_sram_kb + hw.filter_sram_kb + hw.ofmap_sram_kb
    macs = hw.rows * hw.cols
    return (
        sram <= constraints.get("max_total_sram_kb", sram)
        and macs <= constraints.get("max_macs", macs)
        and macs >= constraints.get("min_macs", macs)
    )


# --- outputs ---------------------------------------------------------------------------------------


def write_table(path: Path, splits: list) -> None:
    """One row per point (every setting and metric, nothing about how it ran): CSV, or Parquet by suffix."""
    from llm1bit.atomic import atomic_path, atomic_write_text
    from llm1bit.sweep import CSV_COLUMNS, csv_row, to_csv

    if path.suffix.lower() != ".parquet":
        atomic_write_text(path, to_csv(splits))
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise UserError(
            "Parquet output needs pyarrow: pip install 'llm1bit[parquet]' (or write a .csv)"
        ) from None
    rows = [csv_row(s) for s in splits]
    table = pa.table({c: [_number(r[c]) for r in rows] for c in CSV_COLUMNS})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _number(value):
    """CSV text fields that hold numbers become numbers in Parquet."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better), by x."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(path: Path, splits: list, references: list) -> None:
    """Decode time vs energy per token of every point, the Pareto front, the paper's cloud and edge marked."""
    from llm1bit.figures.common import model_color, new_figure, save_figure

    fig = new_figure(8.5, 6)
    ax = fig.subplots()
    xy = [(1 / s.tokens_per_s, s.energy_j / _tokens(s)) for s in splits]
    groups = {}
    for s, p in zip(splits, xy):
        groups.setdefault(s.model.name, []).append(p)
    for name, pts in groups.items():
        ax.scatter(*zip(*pts), s=10, alpha=0.5, color=model_color(name), label=name)
    front = pareto_front(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color="black", lw=1.2, label="Pareto front")
    for ref in references:
        ax.scatter([1 / ref.tokens_per_s], [ref.energy_j / _tokens(ref)], marker="*", s=180, color=model_color(ref.model.name),
                   edgecolors="black", zorder=4)  # fmt: skip
        ax.annotate(f"paper {ref.hw.name}", (1 / ref.tokens_per_s, ref.energy_j / _tokens(ref)), xytext=(6, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per token (s)")
    ax.set_ylabel("energy per token (J)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    title = f"Design space: {len(splits)} points, Pareto front of time vs energy per token"
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, title, "")


def _tokens(split) -> int:
    return split.batch if split.phase == "decode" else split.batch * split.seq_len


def reference_points(space: Space) -> list:
    """The paper's cloud and edge designs for the space's first model and workload (the plot's stars)."""
    from llm1bit.hardware import load_hardware
    from llm1bit.sweep import Point

    model, seq, phase, batch, pricing = (
        space.models[0],
        space.seq_lens[0],
        space.phases[0],
        space.batches[0],
        space.pricings[0],
    )
    return [Point(model, load_hardware(h), seq, phase, batch, pricing) for h in ("cloud", "edge")]
