"""The real SCALE-Sim on GEMMs of any size, by simulating a few small pieces and composing them exactly.

Why: SCALE-Sim costs ~2 us and ~200 bytes per weight element and its demand-matrix build grows
quadratically with the number of folds, so a whole OPT-66B FFN matrix needs tens of GB.

How: along each GEMM dimension the systolic array works in identical steps: folds of R rows /
C columns over the two mapped dimensions, and time steps over the streamed one (OS: M->rows,
N->cols, K streamed; WS: K->rows, N->cols, M streamed; IS: K->rows, M->cols, N streamed).
Every SCALE-Sim counter is then affine in the number of whole steps along each dimension, the
partial last step kept as it is. So for a dimension of extent E = q*u + r with q >= 3 steps of u,
X(E) = (2 - q) X(u + r) + (q - 1) X(2u + r), and across dimensions the same rule applies to each
in turn: at most 2**3 small real runs per GEMM, integer weights, exact. Tests compare the composed
counters with whole-GEMM SCALE-Sim runs on shapes small enough to run whole.

Where it holds: SCALE-Sim's CALC-mode read buffer counts a DRAM read when an address enters its
set window (50 sets of 1 % of the SRAM each). Data re-read by later folds is a hit only while the
window has not moved, i.e. while the re-read operand is smaller than half its SRAM. Its write
buffer drains to DRAM once it holds more than half the output SRAM, and each drain mid-run counts
the padding of a partly filled line as writes. `check_exact` refuses the shapes outside that
regime (none of the OS decode workloads of the built-in models); sweep.run_points
computes such points with the analytic closed form unless asked to be strict."""

from __future__ import annotations

from dataclasses import dataclass

from llm1bit.errors import UserError
from llm1bit.hardware import Hardware

# Steps along the streamed (temporal) dimension: extents up to 3 units - 1 run whole.
TEMPORAL_UNIT = 1024
WINDOW_SETS = 50  # SCALE-Sim's read-buffer active window: 50 of 100 sets


@dataclass(frozen=True)
class Piece:
    shape: tuple[int, int, int]  # (M, N, K) of a small real SCALE-Sim run
    weight: int  # its integer weight in the composition


def step_units(hw: Hardware, temporal_unit: int = TEMPORAL_UNIT) -> tuple[int, int, int]:
    """Step size along M, N, K for the hardware's dataflow."""
    r, c, t = hw.rows, hw.cols, temporal_unit
    return {"os": (r, c, t), "ws": (t, c, r), "is": (c, t, r)}[hw.dataflow]


def _axis(extent: int, unit: int) -> list[tuple[int, int]]:
    """(sample extent, integer weight) pairs that reproduce `extent` along one dimension."""
    steps, rest = divmod(extent, unit)
    if steps <= 2:
        return [(extent, 1)]
    return [(unit + rest, 2 - steps), (2 * unit + rest, steps - 1)]


def plan(m: int, n: int, k: int, hw: Hardware, temporal_unit: int = TEMPORAL_UNIT) -> list[Piece]:
    """The small runs, and their weights, whose weighted sum equals the whole GEMM's counters."""
    um, un, uk = step_units(hw, temporal_unit)
    return [
        Piece((sm, sn, sk), wm * wn * wk)
        for sm, wm in _axis(m, um)
        for sn, wn in _axis(n, un)
        for sk, wk in _axis(k, uk)
    ]


def _window_elems(sram_kb: int) -> int:
    return WINDOW_SETS * ((sram_kb * 1024) // 100)


def check_exact(m: int, n: int, k: int, hw: Hardware) -> None:
    """Refuse GEMMs whose re-read operands outgrow SCALE-Sim's read-buffer window (see module doc)."""
    row_folds_m = -(-m // hw.rows)
    col_folds_n = -(-n // hw.cols)
    col_folds_m = -(-m // hw.cols)
    reread = {
        "os": [
            ("ifmap", m * k, hw.ifmap_sram_kb, col_folds_n > 1),
            ("filter", k * n, hw.filter_sram_kb, row_folds_m > 1),
        ],
        "ws": [("ifmap", m * k, hw.ifmap_sram_kb, col_folds_n > 1)],
        "is": [("filter", k * n, hw.filter_sram_kb, col_folds_m > 1)],
    }[hw.dataflow]
    k_folds = -(-k // hw.rows)
    outputs = m * n * (1 if hw.dataflow == "os" else k_folds)  # WS / IS write a partial sum per K fold
    if outputs > (hw.ofmap_sram_kb * 1024) // 2:
        raise UserError(
            f"GEMM M={m} N={n} K={k} on {hw.name} ({hw.dataflow}): its {outputs} output writes overflow half the "
            f"output SRAM ({hw.ofmap_sram_kb} kB), where SCALE-Sim's DRAM write count picks up line padding; "
            "the exact composition does not cover it (without --strict: computed by the analytic closed form, exact there)"
        )
    for operand, size, sram_kb, is_reread in reread:
        if is_reread and size >= _window_elems(sram_kb):
            raise UserError(
                f"GEMM M={m} N={n} K={k} on {hw.name} ({hw.dataflow}): the {operand} operand ({size} words) is "
                f"re-read by later folds and outgrows SCALE-Sim's buffer window ({_window_elems(sram_kb)} words); "
                "the exact composition does not cover it (without --strict: computed by the analytic closed form, exact there)"
            )
