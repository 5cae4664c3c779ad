"""The analytic backend equals the real SCALE-Sim 2.0.2 (CALC mode) field for field.

Every dataflow, on the product's two arrays and on small non-square arrays whose 1-4 kB SRAMs put
the read buffers into the refetch regime and make the ofmap write buffer drain mid-run."""

from __future__ import annotations

import time

import pytest

from llm1bit.backends.analytic import analytic_counters
from llm1bit.backends.scalesim_runner import run_whole
from llm1bit.counters import COUNTER_NAMES
from llm1bit.dataflows import DATAFLOWS
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware, load_hardware

# Shapes are (M, N, K): ifmap M x K, filter K x N.
_MATVEC = [
    (1, 1, 1),
    (1, 7, 3),
    (1, 100, 50),
    (1, 256, 256),  # exact multiple of both arrays
    (1, 257, 255),  # one over / one under the cloud array
    (1, 600, 20),  # N >> C (cloud: 3 column folds, edge: 19)
    (1, 1000, 6),
    (1, 30, 700),  # K >> R
    (1, 9, 520),
    (1, 64, 512),
    (1, 512, 64),
    (1, 33, 31),
    (1, 32, 32),
    (1, 96, 160),
]
_BATCHED = [
    (2, 50, 70),
    (3, 300, 20),
    (5, 5, 5),
    (8, 64, 64),
    (16, 33, 100),
    (32, 32, 32),
    (33, 65, 17),
    (64, 100, 40),
    (100, 20, 30),
    (256, 8, 12),
    (257, 10, 10),  # cloud: 2 row folds (1 row in the second); edge: 9
    (300, 40, 5),
    (520, 6, 9),  # cloud: 3 row folds
    (130, 270, 4),
    (40, 40, 300),
    (7, 300, 90),
    (600, 3, 3),
]
PRODUCT_SHAPES = _MATVEC + _BATCHED

# Small arrays: SRAMs of 1-4 kB give read-buffer blocks of B = 50 * floor(bytes / 100) = 500-2000
# insertions (so re-read operands are fetched again) and ofmap drains every 512-2048 writes.
SMALL_SHAPES = [
    (1, 1, 1),
    (1, 5, 9),
    (1, 40, 13),
    (1, 120, 7),  # N >> C
    (1, 6, 150),  # K >> R
    (1, 64, 64),
    (1, 17, 33),
    (1, 200, 30),
    (2, 16, 16),
    (3, 45, 20),
    (4, 8, 4),
    (5, 30, 45),
    (8, 100, 10),
    (9, 9, 9),
    (12, 24, 40),
    (13, 70, 25),
    (16, 16, 16),
    (17, 33, 65),
    (24, 4, 100),
    (30, 50, 12),
    (31, 7, 77),
    (40, 30, 33),
    (45, 12, 5),
    (64, 8, 8),
    (66, 20, 30),
    (90, 33, 2),
    (100, 1, 50),
    (120, 12, 12),
    (3, 110, 40),
    (50, 20, 20),
    (150, 25, 15),
]

# 512 columns with a 1 kB ofmap SRAM (filter / ifmap blocks stay wider than a demand row: narrower
# ones make SCALE-Sim itself crash with ZeroDivisionError).
WIDE_SHAPES = [(1, 1, 1), (1, 600, 3), (2, 1100, 1), (3, 513, 2), (5, 40, 6)]

HARDWARE = {
    "cloud": (lambda: load_hardware("cloud"), PRODUCT_SHAPES),
    "edge": (lambda: load_hardware("edge"), PRODUCT_SHAPES),
    # name, rows, cols, ifmap kB, filter kB, ofmap kB
    "8x4": (lambda: Hardware("8x4", 8, 4, 1, 2, 1), SMALL_SHAPES),
    "4x16": (lambda: Hardware("4x16", 4, 16, 2, 1, 4), SMALL_SHAPES),
    # 3 columns do not divide the 512-word drain half (the other write-buffer branch)
    "5x3": (lambda: Hardware("5x3", 5, 3, 1, 1, 1), SMALL_SHAPES),
    # drain half (512 words) == array width: one-line drains, no padding artefact
    "2x512": (lambda: Hardware("2x512", 2, 512, 2, 4, 1), WIDE_SHAPES),
}


def _diff_report(hw: Hardware, shapes, got, want) -> list[str]:
    lines = []
    for shape, g, w in zip(shapes, got, want, strict=True):
        if g != w:
            fields = ", ".join(
                f"{name}: analytic {getattr(g, name)} != scalesim {getattr(w, name)}"
                for name in COUNTER_NAMES
                if getattr(g, name) != getattr(w, name)
            )
            lines.append(f"{hw.name} {hw.rows}x{hw.cols} {hw.dataflow} (M,N,K)={shape}: {fields}")
    return lines


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("hw_name", list(HARDWARE))
def test_analytic_equals_scalesim(hw_name: str, dataflow: str) -> None:
    make, shapes = HARDWARE[hw_name]
    hw = make().with_dataflow(dataflow)
    want = run_whole(shapes, hw)
    got = [analytic_counters(m, n, k, hw) for m, n, k in shapes]
    diffs = _diff_report(hw, shapes, got, want)
    assert not diffs, f"{len(diffs)} of {len(shapes)} shapes differ:\n" + "\n".join(diffs)


def test_enough_shapes() -> None:
    for hw_name in ("cloud", "edge", "8x4", "4x16", "5x3"):
        assert len(set(HARDWARE[hw_name][1])) >= 30


def test_small_arrays_exercise_refetch_and_drains() -> None:
    """Guard the test's own coverage: the small arrays really hit the non-trivial DRAM branches."""
    refetch = drains = artefact = 0
    for hw_name in ("8x4", "4x16", "5x3"):
        make, shapes = HARDWARE[hw_name]
        for df in DATAFLOWS:
            hw = make().with_dataflow(df)
            half = hw.ofmap_sram_kb * 1024 // 2
            for m, n, k in shapes:
                c = analytic_counters(m, n, k, hw)
                stored = m * n if df == "os" else c.sram_ofmap_writes
                refetch += c.dram_ifmap_reads > m * k or c.dram_filter_reads > k * n
                drains += stored > half + 1
                artefact += c.dram_ofmap_writes > stored
    assert refetch >= 30
    assert drains >= 30
    assert artefact >= 10


def test_rejects_user_bandwidth_mode() -> None:
    hw = Hardware("u", 8, 8, 64, 64, 64, bandwidth_mode="USER")
    with pytest.raises(UserError, match="CALC"):
        analytic_counters(1, 8, 8, hw)


def test_fast_enough_for_a_sweep() -> None:
    """~30k decode GEMMs (OPT-66B-sized) on both arrays and all dataflows well under a second."""
    shapes = [(1, n, k) for n in (128, 2048, 9216, 36864) for k in (128, 2048, 9216, 36864)]
    hws = [load_hardware(name, df) for name in ("cloud", "edge") for df in DATAFLOWS]
    start = time.perf_counter()
    count = 0
    while count < 30_000:
        for hw in hws:
            for m, n, k in shapes:
                analytic_counters(m, n, k, hw)
                count += 1
    assert time.perf_counter() - start < 1.0
