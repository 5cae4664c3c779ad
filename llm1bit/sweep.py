"""Sweep: many (model, hardware, dataflow, seq_len) points simulated as one deduplicated batch."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from llm1bit.cache import ResultCache
from llm1bit.engine import Progress, RunReport, evaluate
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware
from llm1bit.models import ModelSpec
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
    "matmul_free_cycles",
    "matmul_cycles",
    "matmul_free_accesses",
    "matmul_accesses",
    "matmul_free_dram",
    "matmul_dram",
    "frac_cycles",
    "frac_memory",
)


@dataclass(frozen=True)
class Point:
    model: ModelSpec
    hw: Hardware  # dataflow already applied
    seq_len: int
    phase: str = "decode"
    batch: int = 1


def points(
    models: list[ModelSpec],
    hardware: list[Hardware],
    seq_lens: list[int],
    dataflows: list[str | None],
    phase: str = "decode",
    batch: int = 1,
) -> list[Point]:
    """Every combination, each once (repeated list items give one point)."""
    combos = itertools.product(models, hardware, dict.fromkeys(dataflows), dict.fromkeys(seq_lens))
    return list(dict.fromkeys(Point(m, hw.with_dataflow(df), seq, phase, batch) for m, hw, df, seq in combos))


def uncovered_points(pts: Iterable[Point]) -> list[Point]:
    """Points with a GEMM the exact composition of the real SCALE-Sim does not cover (backends.scalesim)."""
    from llm1bit.backends.scalesim import check_exact

    out = []
    for p in pts:
        try:
            for g in build_workload(p.model, p.seq_len, p.phase, p.batch):
                check_exact(*g.shape, p.hw)
        except UserError:
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
) -> list[Split]:
    """Simulate every point; distinct GEMMs are simulated once across the whole sweep.

    With the scalesim backend, a point that the exact composition does not cover is computed by
    the analytic closed form (equal to SCALE-Sim there too) and its Split says `analytic`;
    `strict` refuses such points instead (the first uncovered GEMM's one-line error)."""
    workloads = {p: build_workload(p.model, p.seq_len, p.phase, p.batch) for p in pts}
    backend_of = dict.fromkeys(pts, backend)
    if backend == "scalesim" and not strict:
        backend_of.update(dict.fromkeys(uncovered_points(pts), "analytic"))
    counters = {}
    for name in dict.fromkeys(backend_of.values()):
        wanted = [(g.shape, p.hw) for p in pts if backend_of[p] == name for g in workloads[p]]
        counters[name] = evaluate(wanted, name, cache=cache, jobs=jobs, progress=progress, report=report)
    return [
        Split(
            model=p.model,
            hw=p.hw,
            seq_len=p.seq_len,
            backend=backend_of[p],
            phase=p.phase,
            batch=p.batch,
            layers=[LayerResult(g, counters[backend_of[p]][(g.shape, p.hw)]) for g in workloads[p]],
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
    }


def to_csv(splits: list[Split]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for split in splits:
        writer.writerow(csv_row(split))
    return buf.getvalue()
