"""Design-space exploration: a TOML space file expanded into simulation points.

Every dimension `simulate` accepts is a list (or a range table) in the space file; the product of all
of them, filtered by the constraints and deduplicated, is the set of points. Each distinct GEMM run is
simulated once (engine.evaluate: the verified store first, then an executor), so a re-run recomputes
nothing; then the rows are priced in bulk and written as they come (bulk.BulkTable), so memory stays
flat however large the space.

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
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from llm1bit.errors import UserError

if TYPE_CHECKING:
    from llm1bit.bulk import Block, BulkTable

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

    @property
    def size(self) -> int:
        """Number of points (each axis holds distinct values, so every combination is one point)."""
        return math.prod(
            map(len, (self.models, self.hardware, self.seq_lens, self.phases, self.batches, self.pricings))
        )

    def points(self) -> list:
        """Every point, in the table's row order (`bulk.BulkTable` prices them without building this list)."""
        from llm1bit.sweep import Point

        combos = itertools.product(
            self.models, self.hardware, self.seq_lens, self.phases, self.batches, self.pricings
        )
        return list(dict.fromkeys(Point(m, hw, seq, ph, b, pr) for m, hw, seq, ph, b, pr in combos))


def _grid_hardware(path: Path, hw: dict) -> list:
    from llm1bit.dataflows import DATAFLOWS
    from llm1bit.hardware import Hardware

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
    from llm1bit.backends import BACKENDS
    from llm1bit.costs import Pricing
    from llm1bit.energy import load_energy_table
    from llm1bit.hardware import load_hardware
    from llm1bit.models import resolve_models
    from llm1bit.phases import PHASES
    from llm1bit.precision import Precision

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
    if space.size > MAX_POINTS:
        raise UserError(f"space file {path}: {space.size} points; at most {MAX_POINTS} are allowed")
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

# pyarrow's default row group (write_table splits a table at this size): streamed, the file is the same
PARQUET_ROW_GROUP = 1024 * 1024


@dataclass
class Exploration:
    """A space whose simulator runs are done: its table is priced and written by `write`."""

    table: BulkTable
    references: list  # Splits of the paper's cloud and edge designs (the plot's stars), if plotting

    def write(self, output: Path, drawn: PlotPoints | None = None) -> int:
        """Write the table (one row per point, in the space's order) as rows are priced, keeping each
        point's two plotted floats in `drawn` (for `llm1bit.figures.pareto`); returns the number of rows."""
        return write_table(output, self.table, drawn.add if drawn else None)


def simulate_space(
    space: Space,
    output: Path,
    plot: Path | None = None,
    cache=None,
    jobs: int | None = None,
    progress=None,
    report=None,
    executor=None,
) -> Exploration:
    """Every simulator run a space needs (the store, then the executor: resumable, Ctrl-C keeps what
    finished), the plot's references too; the rows are priced later, block by block, as
    `Exploration.write` writes them, so memory does not grow with the space."""
    from llm1bit.bulk import BulkTable
    from llm1bit.sweep import run_points

    if _is_parquet(output):
        _need_pyarrow()
    table = BulkTable(space, cache, jobs, progress, report, executor, parquet=_is_parquet(output))
    hardware = set(space.hardware)
    refs = [p for p in reference_points(space) if p.hw not in hardware] if plot else []
    references = (
        run_points(refs, space.backend, cache, jobs, progress, report=report, executor=executor)
        if refs
        else []
    )
    return Exploration(table, references)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        raise UserError(
            "Parquet output needs pyarrow: pip install 'llm1bit[parquet]' (or write a .csv)"
        ) from None


def write_table(path: Path, table: BulkTable, on_block: Callable[[Block], None] | None = None) -> int:
    """Write the rows block by block as they are priced (every setting and metric, nothing about how it
    ran): CSV, or Parquet by suffix; atomically (nothing is left on an error or Ctrl-C). Returns the rows
    written."""
    from llm1bit.atomic import atomic_path, is_stdout

    if _is_parquet(path):
        _need_pyarrow()
    blocks = table.blocks()
    if on_block is not None:
        blocks = _tapped(blocks, on_block)
    if is_stdout(path):
        return _write_csv(sys.stdout, blocks)
    with atomic_path(path) as tmp:
        if _is_parquet(path):
            return _write_parquet(tmp, table, blocks)
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            return _write_csv(f, blocks)


def _tapped(blocks: Iterable[Block], on_block: Callable[[Block], None]) -> Iterator[Block]:
    for block in blocks:
        on_block(block)
        yield block


def _write_csv(f: TextIO, blocks: Iterable[Block]) -> int:
    from llm1bit.bulk import csv_fields
    from llm1bit.sweep import CSV_COLUMNS

    f.write(csv_fields(CSV_COLUMNS) + "\n")
    rows = 0
    for block in blocks:
        f.write(block.csv())
        rows += len(block)
    f.flush()
    return rows


def _write_parquet(path: Path, table: BulkTable, blocks: Iterable[Block]) -> int:
    """Row groups of PARQUET_ROW_GROUP rows, column types decided up front from every value type a column
    holds: the bytes pq.write_table gives for the whole table at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm1bit.sweep import CSV_COLUMNS

    samples = table.parquet_samples()
    schema = pa.schema([(c, pa.array(samples[c]).type) for c in CSV_COLUMNS])
    pending, held, rows = [], 0, 0
    with pq.ParquetWriter(path, schema) as writer:
        for block in blocks:
            arrays = [pa.array(block.columns[c], type=schema.field(c).type) for c in CSV_COLUMNS]
            pending.append(pa.Table.from_arrays(arrays, schema=schema))
            held += len(block)
            rows += len(block)
            while held >= PARQUET_ROW_GROUP:
                whole = pa.concat_tables(pending).combine_chunks()
                writer.write_table(whole.slice(0, PARQUET_ROW_GROUP))
                rest = whole.slice(PARQUET_ROW_GROUP).combine_chunks()
                pending, held = [rest], len(rest)
        if held:
            writer.write_table(pa.concat_tables(pending).combine_chunks())
    return rows


def pareto_front(points) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better), by x."""
    xy = np.asarray(points, dtype=float).reshape(-1, 2)
    if not len(xy):
        return []
    order = np.lexsort((xy[:, 1], xy[:, 0]))  # by x, then y, then index (a stable sort)
    y = xy[order, 1]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], y[:-1])))
    return order[y < best_before].tolist()


class PlotPoints:
    """Time and energy per token of every point, by model (what --plot draws): two floats a point."""

    def __init__(self) -> None:
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.models: list[str] = []

    def add(self, block: Block) -> None:
        self.x.append(1 / block.tokens_per_s)
        self.y.append(block.energy_j / block.tokens)
        self.models.append(block.model.name)

    def groups(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[list, list]] = {}
        for name, x, y in zip(self.models, self.x, self.y):
            xs, ys = out.setdefault(name, ([], []))
            xs.append(x)
            ys.append(y)
        return {name: (np.concatenate(xs), np.concatenate(ys)) for name, (xs, ys) in out.items()}


def tokens_of(split) -> int:
    """Tokens one simulated step produces (decode: batch; prefill: batch x seq_len)."""
    from llm1bit.phases import tokens_per_step

    return tokens_per_step(split.phase, split.batch, split.seq_len)


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
