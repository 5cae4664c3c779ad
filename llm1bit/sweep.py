"""Sweep: many (model, hardware, dataflow, seq_len) points simulated as one deduplicated batch."""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass

from llm1bit.cache import ResultCache
from llm1bit.engine import Progress, evaluate
from llm1bit.hardware import Hardware
from llm1bit.models import ModelSpec
from llm1bit.split import LayerResult, Split
from llm1bit.workload import build_workload

CSV_COLUMNS = (
    "model",
    "hw",
    "dataflow",
    "seq_len",
    "phase",
    "batch",
    "backend",
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
    return [
        Point(model, hw.with_dataflow(df), seq_len, phase, batch)
        for model, hw, df, seq_len in itertools.product(models, hardware, dataflows, seq_lens)
    ]


def run_points(
    pts: list[Point],
    backend: str,
    cache: ResultCache | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> list[Split]:
    """Simulate every point; distinct GEMMs are simulated once across the whole sweep."""
    workloads = [build_workload(p.model, p.seq_len, p.phase, p.batch) for p in pts]
    wanted = [(g.shape, p.hw) for p, gemms in zip(pts, workloads) for g in gemms]
    counters = evaluate(wanted, backend, cache=cache, jobs=jobs, progress=progress)
    return [
        Split(
            model=p.model,
            hw=p.hw,
            seq_len=p.seq_len,
            backend=backend,
            phase=p.phase,
            batch=p.batch,
            layers=[LayerResult(g, counters[(g.shape, p.hw)]) for g in gemms],
        )
        for p, gemms in zip(pts, workloads)
    ]


def csv_row(split: Split) -> dict:
    free, mm = split.totals["matmul_free"], split.totals["matmul"]
    return {
        "model": split.model.name,
        "hw": split.hw.name,
        "dataflow": split.hw.dataflow,
        "seq_len": split.seq_len,
        "phase": split.phase,
        "batch": split.batch,
        "backend": split.backend,
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
