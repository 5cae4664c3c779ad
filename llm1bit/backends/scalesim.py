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
computes such points with the analytic closed form (this backend's `fallback`) unless asked to be strict.

`BACKEND` is this module's entry in the backend registry (llm1bit.backends): it plans the pieces, asks the
engine for their counters (the result store first, the rest run on an executor) and composes them."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from llm1bit.backends.base import Pair, Runs, Shape
from llm1bit.cache import ResultCache
from llm1bit.counters import Counters
from llm1bit.dataflows import dataflow
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
    return dataflow(hw.dataflow).step_units(hw.rows, hw.cols, temporal_unit)


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
    flow = dataflow(hw.dataflow)
    row_folds, col_folds = flow.folds(m, n, k, hw.rows, hw.cols)
    # ws / is write a partial sum per row (K) fold
    outputs = m * n * flow.times("ofmap", row_folds, col_folds)
    if outputs > (hw.ofmap_sram_kb * 1024) // 2:
        raise UserError(
            f"GEMM M={m} N={n} K={k} on {hw.name} ({hw.dataflow}): its {outputs} output writes overflow half the "
            f"output SRAM ({hw.ofmap_sram_kb} kB), where SCALE-Sim's DRAM write count picks up line padding; "
            "the exact composition does not cover it (without --strict: computed by the analytic closed form, exact there)"
        )
    for operand, size, sram_kb in (("ifmap", m * k, hw.ifmap_sram_kb), ("filter", k * n, hw.filter_sram_kb)):
        if flow.times(operand, row_folds, col_folds) > 1 and size >= _window_elems(sram_kb):
            raise UserError(
                f"GEMM M={m} N={n} K={k} on {hw.name} ({hw.dataflow}): the {operand} operand ({size} words) is "
                f"re-read by later folds and outgrows SCALE-Sim's buffer window ({_window_elems(sram_kb)} words); "
                "the exact composition does not cover it (without --strict: computed by the analytic closed form, exact there)"
            )


def run_key(shape: Shape, fingerprint: str) -> str:
    """The store key of one real SCALE-Sim run: its shape, the hardware fingerprint, the simulator version."""
    from llm1bit.backends.scalesim_runner import SCALESIM_VERSION

    return ResultCache.key(
        backend="scalesim", m=shape[0], n=shape[1], k=shape[2], hw=fingerprint, scalesim=SCALESIM_VERSION
    )


class ScaleSim:
    """The real SCALE-Sim 2.0.2, every GEMM composed exactly from a few small runs kept in the result store."""

    name = "scalesim"
    stored = True  # each run costs up to seconds: the engine keeps it in the store and runs what is missing
    fallback = "analytic"  # equal to SCALE-Sim field for field, also where `check` refuses the composition
    install = "pip install scalesim==2.0.2"

    def available(self) -> bool:
        return importlib.util.find_spec("scalesim") is not None

    def check(self, shape: Shape, hw: Hardware) -> None:
        check_exact(*shape, hw)

    def counters(self, pairs: Sequence[Pair], runs: Runs | None = None) -> dict[Pair, Counters]:
        """Plan each GEMM's pieces, get every distinct run once (from the store or simulated), compose."""
        if runs is None:
            raise ValueError(
                "the scalesim backend runs through engine.evaluate (it needs the store and an executor)"
            )
        unit = runs.temporal_unit or TEMPORAL_UNIT
        plans = {}
        for shape, hw in pairs:
            if hw.bandwidth_mode != "CALC":
                raise UserError(
                    f"hardware {hw.name}: InterfaceBandwidth {hw.bandwidth_mode}; the study needs CALC"
                )
            check_exact(*shape, hw)
            plans[(shape, hw)] = plan(*shape, hw, unit)

        # Runs are keyed by what decides them (shape, hardware fingerprint, simulator version): designs that
        # differ only in name, clock or bandwidth share their runs, each simulated once.
        fingerprints: dict[Hardware, str] = {}
        keys: dict[Pair, str] = {}
        for (_, hw), piece_list in plans.items():
            if hw not in fingerprints:
                fingerprints[hw] = hw.fingerprint()
            fp = fingerprints[hw]
            for piece in piece_list:
                if (piece.shape, hw) not in keys:
                    keys[(piece.shape, hw)] = run_key(piece.shape, fp)
        # key -> one pair that needs it (the first)
        wanted = {key: pair for pair, key in reversed(keys.items())}
        from llm1bit.backends.scalesim_runner import SCALESIM_VERSION, run_pair

        pieces = runs.results(wanted, run_pair, backend=self.name, simulator=SCALESIM_VERSION)

        out = {}
        for pair, piece_list in plans.items():
            total = Counters()
            for piece in piece_list:
                total = total + pieces[keys[(piece.shape, pair[1])]] * piece.weight
            if total.is_negative():
                raise UserError(
                    f"GEMM M={pair[0][0]} N={pair[0][1]} K={pair[0][2]} on {pair[1].name}: the composed counters "
                    f"are negative ({total}); the store at {runs.cache.path} holds wrong results: run "
                    "`llm1bit cache clear`"
                )
            out[pair] = total
        return out


BACKEND = ScaleSim()
