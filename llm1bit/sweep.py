"""Sweep: many (model, hardware, dataflow, seq_len) points simulated as one deduplicated batch."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llm1bit.backends import get_backend
from llm1bit.cache import ResultCache
from llm1bit.costs import Pricing, price
from llm1bit.engine import Executor, Progress, RunReport, evaluate
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware
from llm1bit.model_spec import ModelSpec
from llm1bit.split import LayerResult, Split
from llm1bit.workload import build_workload

# What decides a row's numbers first (model, hardware, settings, backend), then the counters.
CSV_COLUMNS = (
    "model",
    "model_source",
    "architecture",
    "hw",
    "hw_file",
    "array_rows",
    "array_cols",
    "ifmap_sram_kb",
    "filter_sram_kb",
    "ofmap_sram_kb",
    "dataflow",
    "hw_fingerprint",
    "seq_len",
    "phase",
    "batch",
    "backend",
    "scalesim_version",
    "weight_bits",
    "act_bits",
    "kv_bits",
    "weight_format",
    "freq_mhz",
    "dram_gbps",
    "energy_table",
    "energy_table_sha256",
    "matmul_free_cycles",
    "matmul_cycles",
    "matmul_free_accesses",
    "matmul_accesses",
    "matmul_free_dram",
    "matmul_dram",
    "frac_cycles",
    "frac_memory",
    "matmul_free_dram_bytes",
    "matmul_dram_bytes",
    "time_s",
    "tokens_per_s",
    "energy_j",
    "frac_time",
    "frac_energy",
    "frac_dram_bytes",
)


@dataclass(frozen=True)
class Point:
    model: ModelSpec
    hw: Hardware  # dataflow already applied
    seq_len: int
    phase: str = "decode"
    batch: int = 1
    pricing: Pricing = field(default_factory=Pricing)


def points(
    models: list[ModelSpec],
    hardware: list[Hardware],
    seq_lens: list[int],
    dataflows: list[str | None],
    phase: str = "decode",
    batch: int | Sequence[int] = 1,
    pricings: list[Pricing] | None = None,
) -> list[Point]:
    """Every combination, each once (repeated list items give one point); `batch` one size or a list."""
    batches = [batch] if isinstance(batch, int) else list(batch)
    combos = itertools.product(
        models,
        hardware,
        dict.fromkeys(dataflows),
        dict.fromkeys(seq_lens),
        dict.fromkeys(batches),
        dict.fromkeys(pricings or [Pricing()]),
    )
    return list(
        dict.fromkeys(Point(m, hw.with_dataflow(df), seq, phase, b, pr) for m, hw, df, seq, b, pr in combos)
    )


def _workloads(pts: Iterable[Point]) -> dict[Point, list]:
    """Point -> its GEMMs; each distinct (model, seq_len, phase, batch) is built once and its list shared (read-only)."""
    built: dict[tuple, list] = {}
    out = {}
    for p in pts:
        key = (p.model, p.seq_len, p.phase, p.batch)
        if key not in built:
            built[key] = build_workload(*key)
        out[p] = built[key]
    return out


def uncovered_points(
    pts: Iterable[Point], workloads: dict | None = None, backend: str = "scalesim"
) -> list[Point]:
    """Points with a GEMM that `backend` refuses to compute exactly (its `check`): for the real SCALE-Sim, the
    GEMMs its exact composition does not cover (backends.scalesim).

    `workloads` (point -> its GEMMs) saves rebuilding them; each distinct (shape, hardware) is checked once."""
    check = get_backend(backend).check
    covered: dict[tuple, bool] = {}

    def ok(shape, hw) -> bool:
        if (shape, hw) not in covered:
            try:
                check(shape, hw)
                covered[(shape, hw)] = True
            except UserError:
                covered[(shape, hw)] = False
        return covered[(shape, hw)]

    if not workloads:
        pts = list(pts)
        workloads = _workloads(pts)
    out = []
    for p in pts:
        gemms = workloads[p]
        if not all(ok(g.shape, p.hw) for g in gemms):
            out.append(p)
    return out


def run_points(
    pts: list[Point],
    backend: str,
    cache: ResultCache | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    strict: bool = False,
    report: RunReport | None = None,
    executor: Executor | None = None,
) -> list[Split]:
    """Simulate every point; distinct GEMMs are simulated once across the whole sweep.

    A point with a GEMM the backend does not compute exactly (the scalesim backend: outside its exact
    composition) is computed by the backend's `fallback` (the analytic closed form, equal to SCALE-Sim there
    too) and its Split names it; `strict` refuses such points instead (the first uncovered GEMM's one-line
    error)."""
    workloads = _workloads(pts)
    fallback = get_backend(backend).fallback
    backend_of = dict.fromkeys(pts, backend)
    if fallback and not strict:
        backend_of.update(dict.fromkeys(uncovered_points(pts, workloads, backend), fallback))
    counters = {}
    for name in dict.fromkeys(backend_of.values()):
        wanted = [(g.shape, p.hw) for p in pts if backend_of[p] == name for g in workloads[p]]
        counters[name] = evaluate(
            wanted, name, cache=cache, jobs=jobs, progress=progress, report=report, executor=executor
        )
    return [
        Split(
            model=p.model,
            hw=p.hw,
            seq_len=p.seq_len,
            backend=backend_of[p],
            phase=p.phase,
            batch=p.batch,
            layers=[
                LayerResult(g, c, price(g, c, p.hw, p.pricing))
                for g in workloads[p]
                for c in (counters[backend_of[p]][(g.shape, p.hw)],)
            ],
            pricing=p.pricing,
        )
        for p in pts
    ]


def csv_row(split: Split) -> dict:
    free, mm = split.totals["matmul_free"], split.totals["matmul"]
    return {
        **split.label(),
        "matmul_free_cycles": free.cycles,
        "matmul_cycles": mm.cycles,
        "matmul_free_accesses": free.memory_accesses,
        "matmul_accesses": mm.memory_accesses,
        "matmul_free_dram": free.dram_reads + free.dram_writes,
        "matmul_dram": mm.dram_reads + mm.dram_writes,
        "frac_cycles": f"{split.frac_cycles:.6f}",
        "frac_memory": f"{split.frac_memory:.6f}",
        "matmul_free_dram_bytes": repr(split.costs["matmul_free"].dram_bytes),
        "matmul_dram_bytes": repr(split.costs["matmul"].dram_bytes),
        "time_s": repr(split.latency_s),
        "tokens_per_s": repr(split.tokens_per_s),
        "energy_j": repr(split.energy_j),
        "frac_time": f"{split.frac_time:.6f}",
        "frac_energy": f"{split.frac_energy:.6f}",
        "frac_dram_bytes": f"{split.frac_dram_bytes:.6f}",
    }


def to_csv(splits: list[Split]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for split in splits:
        writer.writerow(csv_row(split))
    return buf.getvalue()
