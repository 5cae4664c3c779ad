"""Closed form of SCALE-Sim 2.0.2's GEMM counters (CALC bandwidth mode), field for field.

SCALE-Sim takes a GEMM (M, N, K) as ifmap M x K times filter K x N into ofmap M x N. On an R x C
array (R = ArrayHeight = rows, C = ArrayWidth = cols) each dataflow pins two GEMM dimensions to the
array and streams the third (T) in time (the table in llm1bit.dataflows, which this module reads);
ceil splits give the folds:

    dataflow   array rows   array cols   streamed T   folds F = Fr * Fc
    os         M            N            K            Fr = ceil(M/R), Fc = ceil(N/C)
    ws         K            N            M            Fr = ceil(K/R), Fc = ceil(N/C)
    is         K            M            N            Fr = ceil(K/R), Fc = ceil(M/C)

Folds run one after another (loop `for fc: for fr:`), each padded to the full array. An operand comes
back once per fold of the dimension it lacks (`Dataflow.passes`): the os ifmap per column fold, the os
filter per row fold, the ws ifmap and the is filter per column fold, the ws / is ofmap (a partial sum)
per row fold; the rest pass once. The formulas below are that rule written out per dataflow.

Cycles (COMPUTE_REPORT Total Cycles = number of demand-matrix rows - 1; CALC mode never stalls,
see the write buffer below):

    os:  F * (K + R + C - 2) - 1      T rows + (C-1) drain suffix, skewed over R  (compute/systolic_compute_os.py)
    ws:  F * (2R + C + M - 2) - 1     R weight-load prefix + T + (C-1) suffix, skewed over R (systolic_compute_ws.py)
    is:  F * (2R + C + N - 2) - 1     same shape as ws with T = N                 (systolic_compute_is.py)

SRAM accesses (the compute module's request counters, valid elements of the demand matrices):

    os:  ifmap M*K*Fc,   filter K*N*Fr,   ofmap M*N + F*(R + C)
    ws:  ifmap M*K*Fc,   filter K*N,      ofmap M*N*Fr
    is:  ifmap M*K,      filter K*N*Fc,   ofmap M*N*Fr

The os term F*(R + C) is a counting artefact: after adding a fold's real element count,
`create_ofmap_demand_mat` also adds `shape[0] + shape[1]` of the padded R x C fold tile to
`ofmap_writes`. ws / is count every partial-sum write, once per row fold.

DRAM reads (memory/read_buffer_estimate_bw.py). The CALC read buffer puts each missed address into
sets of P = floor(SRAM bytes / 100) addresses; after every 50 completed sets (B = 50*P insertions)
it forgets everything inserted before. So an address re-read is a hit iff it was (last) inserted in
the current block of B insertions, and DRAM reads = number of insertions. Every operand is read in
tiles, each tile always in the same order, in one of three patterns (D = distinct elements):

  * once (ws filter, is ifmap): D.
  * cycle: tiles 0..Fr-1 visited in turn, the whole cycle repeated Fc times (os ifmap D = M*K,
    ws ifmap D = M*K, is filter D = K*N). Between two reads of one element lie D - 1 other
    reads, so: D if D < B or Fc = 1, else Fc * D (every re-read misses).
  * repeat: tile j (K x cols_j of the os filter) visited Fr times in a row. A tile of s elements
    inserted from insertion index n0 on: s >= B -> all Fr visits miss (Fr * s); otherwise only
    the x = max(0, floor((n0+s)/B)*B - n0) elements that fell in the older block are fetched
    again on the second visit (s + x, for Fr >= 2). Summed tile by tile (K*N if K*N < B or Fr = 1).

DRAM ofmap writes (memory/write_buffer.py, drained at C words per line). Every valid ofmap
request is stored (os: M*N; ws, is: M*N*Fr, one per row fold). With H = floor(ofmap bytes / 2) the
buffer flushes when more than H words are pending, forcing out the partial line it was filling; a
drain of L = ceil(H/C) lines subtracts padding only from its own last line. When C divides H
(cloud and edge do) the first flush leaves a 1-word line that the next drain counts as full:

    writes = stored + (C - 1)   if H % C == 0 and H > C and stored > H + 1, else stored.

At most C words arrive per cycle and a drain ends before the other half can fill, so flushes
always happen exactly at the threshold and there are no stall cycles.

Exactness: derived for every (M, N, K) >= 1 and any array / SRAM sizes, all seven fields equal
to SCALE-Sim 2.0.2 in CALC mode, no regime excluded; tests/test_analytic_vs_scalesim.py checks the product's arrays and small
non-square arrays with 1-4 kB SRAMs, where refetches and mid-run ofmap drains happen. (SCALE-Sim
itself dies with ZeroDivisionError when two read-buffer blocks end in the same cycle, i.e. a demand
row wider than B; this function still answers there.) USER bandwidth mode is rejected (UserError).
"""

from __future__ import annotations

from collections.abc import Sequence

from llm1bit.backends.base import Pair, Runs, Shape
from llm1bit.counters import Counters
from llm1bit.dataflows import DATAFLOW_TABLE, ONCE, PER_COL_FOLD, dataflow
from llm1bit.errors import UserError
from llm1bit.hardware import Hardware


def _block(sram_kb: int) -> int:
    """B: insertions per block of the CALC read buffer (50 sets of floor(bytes / 100) addresses)."""
    return 50 * ((sram_kb * 1024) // 100)


def _cycle_reads(distinct: int, cycles: int, block: int) -> int:
    """DRAM reads of an operand whose tiles are read in turn, the whole round repeated `cycles` times."""
    if cycles == 1 or distinct < block:
        return distinct
    return distinct * cycles


def _repeat_reads(k: int, n: int, cols: int, visits: int, block: int) -> int:
    """DRAM reads of an operand that the row folds bring back (the os filter): tile j = K x cols_j (K the
    streamed extent, cols_j the columns of column fold j over N) read `visits` times in a row, tiles in order."""
    total = k * n
    if visits == 1 or total < block:
        return total
    n_ins = 0
    full_tiles, rest = divmod(n, cols)
    sizes = [k * cols] * full_tiles + ([k * rest] if rest else [])
    for s in sizes:
        if s >= block:
            n_ins += visits * s
            continue
        n0 = n_ins
        end_block = (n0 + s) // block
        n_ins += s
        if end_block != n0 // block:
            n_ins += end_block * block - n0
    return n_ins


def _dram_reads(
    passes: int, size: int, block: int, t: int, cols_extent: int, c: int, fr: int, fc: int
) -> int:
    """DRAM reads of an operand of `size` words, by how the folds bring it back (Dataflow.passes): once, read
    once; per column fold (the outer loop), the whole round again (cycle); per row fold (the inner loop), each
    T x cols_j tile `fr` times in a row (repeat: the os filter)."""
    if passes == ONCE:
        return size
    if passes == PER_COL_FOLD:
        return _cycle_reads(size, fc, block)
    return _repeat_reads(t, cols_extent, c, fr, block)


def _ofmap_dram_writes(stored: int, hw: Hardware) -> int:
    """DRAM ofmap writes: the stored words, plus the padding of the one-word line left by the first
    flush when the array width divides the drain half and drains span several lines."""
    half = (hw.ofmap_sram_kb * 1024) // 2
    if half % hw.cols == 0 and half > hw.cols and stored > half + 1:
        return stored + hw.cols - 1
    return stored


def analytic_counters(m: int, n: int, k: int, hw: Hardware) -> Counters:
    """Closed form equal to SCALE-Sim 2.0.2 (CALC mode) field for field, for hw.dataflow in os / ws / is.

    Exact for every M, N, K >= 1 and array / SRAM size (formulas in the module docstring),
    SCALE-Sim's DRAM refetches and ofmap-drain artefact included. Pure integer arithmetic.
    Raises UserError for USER bandwidth mode, ValueError for dimensions < 1."""
    if hw.bandwidth_mode != "CALC":
        raise UserError(
            f"hardware {hw.name!r}: the analytic backend models InterfaceBandwidth CALC only, "
            f"not {hw.bandwidth_mode}; use the scalesim backend"
        )
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"GEMM dimensions must be >= 1, got M={m}, N={n}, K={k}")
    r, c = hw.rows, hw.cols
    flow = DATAFLOW_TABLE.get(hw.dataflow) or dataflow(hw.dataflow)  # the row, or its one-line error
    shape = (m, n, k)
    on_rows, on_cols, streamed = flow.axes
    t, cols_extent = shape[streamed], shape[on_cols]
    fr, fc = -(-shape[on_rows] // r), -(-cols_extent // c)
    f = fr * fc
    # ws / is load the stationary input for R cycles before each fold
    cycles = f * (t + r + c - 2 + (r if flow.preloads else 0)) - 1
    mk, kn, mn = m * k, k * n, m * n
    times = (1, fr, fc)  # indexed by Dataflow.passes: once, per row fold, per column fold
    p_if, p_fi, p_of = flow.passes
    sram_if, sram_fi, stored = mk * times[p_if], kn * times[p_fi], mn * times[p_of]
    sram_of = stored if flow.preloads else stored + f * (r + c)  # os: the fold-tile counting artefact
    dram_if = _dram_reads(p_if, mk, _block(hw.ifmap_sram_kb), t, cols_extent, c, fr, fc)
    dram_fi = _dram_reads(p_fi, kn, _block(hw.filter_sram_kb), t, cols_extent, c, fr, fc)
    return Counters(
        cycles=cycles,
        sram_ifmap_reads=sram_if,
        sram_filter_reads=sram_fi,
        sram_ofmap_writes=sram_of,
        dram_ifmap_reads=dram_if,
        dram_filter_reads=dram_fi,
        dram_ofmap_writes=_ofmap_dram_writes(stored, hw),
    )


class Analytic:
    """SCALE-Sim's counters in closed form: in-process, microseconds a GEMM, exact everywhere, nothing to store."""

    name = "analytic"
    stored = False
    fallback = None
    install = ""

    def available(self) -> bool:
        return True

    def check(self, shape: Shape, hw: Hardware) -> None:
        return None

    def counters(self, pairs: Sequence[Pair], runs: Runs | None = None) -> dict[Pair, Counters]:
        return {(s, hw): analytic_counters(*s, hw) for s, hw in pairs}


BACKEND = Analytic()
