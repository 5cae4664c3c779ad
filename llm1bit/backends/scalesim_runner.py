"""Run the real SCALE-Sim (2.0.2) on whole GEMMs and read its reports back as Counters.

This is the only place that touches SCALE-Sim: its Python API with traces off
(`save_disk_space=True`), in a private temporary folder, its CSV reports parsed by header name."""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from importlib.metadata import version
from pathlib import Path

from llm1bit.counters import Counters
from llm1bit.hardware import Hardware

SCALESIM_VERSION = version("scalesim")

_REPORT_FIELDS = {
    "sram_ifmap_reads": "SRAM IFMAP Reads",
    "sram_filter_reads": "SRAM Filter Reads",
    "sram_ofmap_writes": "SRAM OFMAP Writes",
    "dram_ifmap_reads": "DRAM IFMAP Reads",
    "dram_filter_reads": "DRAM Filter Reads",
    "dram_ofmap_writes": "DRAM OFMAP Writes",
}


def topology_csv(gemms: list[tuple[str, int, int, int]]) -> str:
    """SCALE-Sim GEMM topology text: `name, M, N, K,` rows (the trailing comma is required)."""
    lines = ["Layer, M, N, K,"]
    lines += [f"{name}, {m}, {n}, {k}," for name, m, n, k in gemms]
    return "\n".join(lines) + "\n"


def _read_report(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    header = [h.strip() for h in rows[0]]
    return [dict(zip(header, (v.strip() for v in row))) for row in rows[1:] if any(row)]


def parse_reports(report_dir: Path) -> list[Counters]:
    """Counters per layer from COMPUTE_REPORT.csv and DETAILED_ACCESS_REPORT.csv."""
    compute = _read_report(report_dir / "COMPUTE_REPORT.csv")
    detail = _read_report(report_dir / "DETAILED_ACCESS_REPORT.csv")
    out = []
    for comp, det in zip(compute, detail, strict=True):
        values = {key: int(float(det[col])) for key, col in _REPORT_FIELDS.items()}
        out.append(Counters(cycles=int(float(comp["Total Cycles"])), **values))
    return out


def run_whole(gemms: list[tuple[int, int, int]], hw: Hardware) -> list[Counters]:
    """Simulate each (M, N, K) GEMM whole with the real SCALE-Sim, in this process.

    Cost grows with M*N*K (about 2 us and 200 bytes per weight element on a 256x256 array,
    more with many folds): callers split big GEMMs first (see backends.scalesim)."""
    from scalesim.scale_sim import scalesim

    with tempfile.TemporaryDirectory(prefix="llm1bit-scalesim-") as tmp:
        tmp_path = Path(tmp)
        cfg = tmp_path / "hw.cfg"
        cfg.write_text(hw.to_cfg(run_name="run"))
        topo = tmp_path / "topology.csv"
        topo.write_text(topology_csv([(f"g{i}", m, n, k) for i, (m, n, k) in enumerate(gemms)]))
        with contextlib.redirect_stdout(io.StringIO()):
            sim = scalesim(
                save_disk_space=True, verbose=False, config=str(cfg), topology=str(topo), input_type_gemm=True
            )
            sim.run_scale(top_path=str(tmp_path / "out"))
        return parse_reports(tmp_path / "out" / "run")


def run_pair(
    pair: tuple[tuple[int, int, int], Hardware],
) -> tuple[tuple[tuple[int, int, int], Hardware], Counters]:
    """One (shape, hardware) run and the pair it answers: what the engine's executors call (a top-level function,
    so a process pool or Ray can ship it by name)."""
    shape, hw = pair
    return pair, run_whole([shape], hw)[0]
