"""Per-layer quantization: one GPTQ-style loop with a slot for a column (or 8-column slab) quantizer.

`quantize_weight` is the entry point the pipeline calls. The loop (spec §3.4) knows nothing about
the grid: it walks the columns in act-order, in blocks of `blocksize` with lazy error propagation,
and hands every column to a quantizer that returns the quantized column and records its codes.
The quantizers that plug in:

* `UniformColumns` (uniform.py)  gptq: uniform asymmetric, per row or per group of columns
* `BCQColumns`                   shiftaddllm acc: BCQ + APoT per column, groups of output rows (§3.5)
* `BlockScales`                  shiftaddllm lat: scales fit once per 8-column slab, codes refit
                                 per column with those scales (§3.6)

`rtn` and plain `bcq` need no loop (no calibration): they quantize every column independently.

Device: everything runs in torch on the weight's device (CPU or CUDA): the Hessian work, the loop, the
quantizers and their BCQ fits. Host steps that remain: the act-order permutation and the slab list (one
read per layer), the early-exit count of each batched BCQ round, the rounds of fits of up to 8 groups
(acc and lat without groups: Python floats, faster than any device's small kernels), on a CPU the sort of
a fit's groups (NumPy's is ~30x faster than torch's there), the BCQ rounds themselves on any device where a
C compiler is (`bcq.c`, the same bits as the torch rounds; `bcq.py`), and acc's rotations (float64 NumPy,
once per layer, bit-exact on every machine; `incoherence.py`).

Threads: a layer is thousands of small operations (a BCQ round is a few dozen torch calls on tensors of a
few hundred numbers) and a few large ones (the Cholesky factor, the block updates: O(K^3) and O(N K^2)).
`solve` runs everything with one torch thread and gives the caller's thread count only to operations of
at least PARALLEL_FLOPS (the Cholesky factor); with 2 or more threads the block updates of the loop run on
a worker thread, one core, behind the small operations of the next block (`gptq_loop`). Measured on 2 shared
cores: with 2 threads for everything a SmolLM2 layer once took 10x as long, and a single small `searchsorted` took 6 ms instead of 15 us, because every parallel
region waits for a pool worker that the machine's other work has descheduled; the large operations,
where 2 threads help, are the ones that get them. Small operations also run in inference mode (about
13 % less overhead each); the returned tensors are ordinary ones.

Numerics: the column loop and BCQ are float32 like the reference. The Hessian is handled in float64: the
GPTQ fix-up (dead columns, damping), the act-order scores and the Cholesky factor are computed in float64
and the factor is rounded to float32 for the loop (the reference does the Cholesky steps in float32, which
fails more easily on ill-conditioned H; this is a deliberate deviation). Act-order sorts are stable, so
ties keep their column order. No inverse is formed: `gptq_loop` runs on R with H = R R^T (one Cholesky
factorisation of the reversed H, K^3/3 flops) instead of GPTQ's U = chol(H^-1) (three factorisations,
4 K^3/3 flops); the quantized columns are the same up to float32 rounding (on the tests' layers bit for
bit; on SmolLM2's layer 15 a rounding now and then flips a discrete choice, and the reported errors of
gptq, lat and acc stay within 0.01 %, 0.06 % and 0.2 % of the NumPy solver's). The reported error, 1/2 tr(E H E^T) with E = W - Q in the original basis and
except for acc, whose loop sees a rescaled, rotated H."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from llm1bit.errors import UserError
from llm1bit.quant.numerics.bcq import LevelTable, assign, bcq_fit, group_rows
from llm1bit.quant.numerics.codes import BinaryCodes, QuantizedWeight
from llm1bit.quant.numerics.methods import QuantSpec

LAT_COLS = 8  # lat mode: scales are shared by 8 consecutive input columns
INNER = 8  # columns whose error feedback is applied column by column before one GEMM carries it further
PARALLEL_FLOPS = 1e9  # an operation gets the caller's threads from this much work on (module docstring)


class ColumnQuantizer(Protocol):
    width: int  # columns per slab; `begin_slab` is called at the first column of each slab

    def reads(self, start: int) -> int:
        """How many rows from `start` on `begin_slab(start)` reads (0: none)."""

    def begin_slab(self, rows: torch.Tensor, start: int, end: int) -> None:
        """rows: the `reads(start)` rows of the (K, N) transposed weight in act-order from `start` on, as GPTQ
        has them when every column before `start` is quantized (all feedback so far included)."""

    def column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        """Quantize column j (act-order index) with current values w (N,); return the quantized column (float32)."""


@contextmanager
def _threads(n: int, flops: float = PARALLEL_FLOPS) -> Iterator[None]:
    """torch's intra-op threads set to n inside for an operation of `flops` work (one below PARALLEL_FLOPS),
    restored after."""
    n = n if flops >= PARALLEL_FLOPS else 1
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gptq_loop(
    wt: torch.Tensor,
    r: torch.Tensor,
    slabs: list[tuple[int, int]],
    quantizer: ColumnQuantizer,
    blocksize: int,
    threads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize all columns of wt (K, N) float32 (modified in place) with GPTQ error feedback.

    r is the upper triangular factor of H = R R^T (K, K) float32, in the same (act-)order as wt (the
    "reverse" Cholesky factor; R^-1 is GPTQ's upper Cholesky factor U of H^-1, so no inverse is formed).
    With D = W0 - Q the errors in original units, GPTQ's scaled errors are E = D R (E_j = (w_j - q_j) R_jj)
    and column j is quantized at w_j = W0_j + sum_{i<j} D_i R_ij / R_jj, which equals GPTQ's
    W0_j - sum_{i<j} E_i U_ij once every column before j is done (not in between: the partial sums
    differ). A quantizer that reads rows ahead (a lat slab, a gptq group) gets GPTQ's state of those rows,
    W0_S + (rows - W0_S) (R_SS / diag R_SS)^-1, one small triangular solve (`_gptq_state`).

    The feedback is lazy at two levels: column by column inside runs of about INNER columns (whole
    slabs), one GEMM to the rest of the block after a run, one to the rest of the matrix after a block of
    about `blocksize` columns; blocks and runs never split a slab and end before a slab that reads rows
    beyond itself. That last GEMM is split: the next block's rows at once, the rows after it on a worker
    thread (one core) while this thread quantizes the next block (`_Behind`; on a CPU with `threads` > 1).
    r is overwritten.
    Returns (qt (K, N) the quantized columns, D (K, N), the squared norm of E per column (K,) float64):
    its sum / 2 is 1/2 tr(D H D^T), the loss of the H the loop used."""
    k, n = wt.shape
    w0 = wt.clone()
    qt = torch.empty_like(wt)
    delta = torch.empty_like(wt)  # D = W0 - Q
    diag = r.diagonal().clone()
    rs = r.div_(diag[None, :])  # R_ij / R_jj: the feedback into column j

    def cut(start: int) -> bool:
        return quantizer.reads(start) > quantizer.width

    blocks = list(_runs(slabs, blocksize, cut))
    with _Behind(wt.device.type == "cpu" and threads > 1) as behind:
        for at, (b1, b2, block) in enumerate(blocks):
            for i1, i2, run in _runs(block, INNER, cut):
                for s1, s2 in run:
                    ahead = min(quantizer.reads(s1), k - s1)
                    if s1 + ahead > b2:
                        behind.wait()  # rows past this block: the last block's feedback must be in
                    if ahead:
                        quantizer.begin_slab(_gptq_state(wt, w0, rs, s1, s1 + ahead), s1, s2)
                    for j in range(s1, s2):
                        qcol = quantizer.column(wt[j], j)
                        qt[j] = qcol
                        torch.sub(w0[j], qcol, out=delta[j])
                        if j + 1 < i2:
                            wt[j + 1 : i2].addr_(rs[j, j + 1 : i2], delta[j])
                if i2 < b2:
                    wt[i2:b2].addmm_(rs[i1:i2, i2:b2].T, delta[i1:i2])
            if b2 < k:
                # the next block's rows now, the rest behind the next block's columns (disjoint rows)
                b3 = blocks[at + 1][1]
                behind.wait()
                wt[b2:b3].addmm_(rs[b1:b2, b2:b3].T, delta[b1:b2])
                if b3 < k:
                    behind.run(wt[b3:].addmm_, rs[b1:b2, b3:].T, delta[b1:b2])
    e = (wt - qt).mul_(diag[:, None])
    return qt, delta, e.square_().sum(1, dtype=torch.float64)


class _Behind:
    """Runs one operation at a time behind the caller's back (a worker thread), or at once when `on` is false.

    The loop's block update of the rows after the next block, O(N K blocksize) of GEMM, runs on one core
    while the loop's small operations (one core: Python and op dispatch) quantize the next block; `wait`
    before reading those rows. On a GPU the device already runs behind the host: no thread there."""

    def __init__(self, on: bool):
        self.on = on
        self.pool = None
        self.future = None

    def __enter__(self) -> _Behind:
        if self.on:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptq-feedback")
        return self

    def run(self, fn, *args) -> None:
        self.wait()
        if self.pool is None:
            fn(*args)
        else:
            self.future = self.pool.submit(_in_inference, fn, *args)

    def wait(self) -> None:
        if self.future is not None:
            future, self.future = self.future, None
            future.result()

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


def _in_inference(fn, *args):
    """fn(*args) in inference mode (a worker thread does not inherit the caller's mode)."""
    with torch.inference_mode():
        return fn(*args)


def _gptq_state(wt: torch.Tensor, w0: torch.Tensor, rs: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """GPTQ's rows start:end when every column before `start` is done, from the loop's rows there (which hold
    all that feedback in the loop's form): W0_S + M^-T (rows - W0_S), M = (R_SS / diag R_SS) unit upper."""
    moved = wt[start:end] - w0[start:end]
    m = rs[start:end, start:end]
    return w0[start:end] + torch.linalg.solve_triangular(m.T, moved, upper=False, unitriangular=True)


def _runs(slabs: list[tuple[int, int]], width: int, cut: Callable[[int], bool]) -> Iterator:
    """Consecutive slabs grouped into runs of about `width` columns (a slab is never split; a run also ends
    before a slab whose start `cut` names): (first column, end column, slabs)."""
    run: list[tuple[int, int]] = []
    size = 0
    for s in slabs:
        if run and (size + (s[1] - s[0]) > width or cut(s[0])):
            yield run[0][0], run[-1][1], run
            run, size = [], 0
        run.append(s)
        size += s[1] - s[0]
    if run:
        yield run[0][0], run[-1][1], run


class BCQColumns:
    """Acc (§3.5): per column, BCQ with APoT scales over groups of `row_block` consecutive output rows."""

    width = 1

    def __init__(self, n: int, k: int, q: int, row_block: int, rounds: int, apot_terms: int | None, device):
        self.n, self.q, self.row_block, self.rounds, self.apot_terms = n, q, row_block, rounds, apot_terms
        self.groups = -(-n // row_block)
        self.codes = torch.empty((k, q, n), dtype=torch.int8, device=device)  # act-order
        self.scales = torch.empty((k, self.groups, q), dtype=torch.float32, device=device)
        terms = apot_terms or 1
        self.signs = torch.zeros((k, self.groups, q, terms), dtype=torch.int8, device=device)
        self.exps = torch.zeros((k, self.groups, q, terms), dtype=torch.int8, device=device)
        self.rounds_run = 0

    def reads(self, start: int) -> int:
        return 0

    def begin_slab(self, rows: torch.Tensor, start: int, end: int) -> None:
        pass

    def column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        x, sizes = group_rows(w, self.row_block)
        fit = bcq_fit(x, sizes, self.q, self.rounds, self.apot_terms)
        codes, xhat = assign(x, fit.scales)
        self.codes[j] = codes.reshape(self.q, -1)[:, : self.n]
        self.scales[j] = fit.scales
        if fit.signs is not None:
            self.signs[j] = fit.signs
            self.exps[j] = fit.exps
        self.rounds_run += fit.rounds_run
        return xhat.reshape(-1)[: self.n]

    def result(self, perm: torch.Tensor) -> BinaryCodes:
        return _binary_codes(self, self.codes, perm, perm, col_block=1)


class BlockScales:
    """Lat (§3.6): at the first column of each 8-column slab, fit BCQ + APoT scales on the current slab
    (groups of `row_block` rows x the slab's columns, flattened row-major); every column of the slab
    then gets nearest-level codes for those fixed scales. As in the reference, the scales see the
    error feedback of earlier slabs but not that of the slab's own columns (spec §9.3). A slab
    narrower than 8 (K % 8) and a row block shorter than `row_block` (N % row_block) are fit on the
    entries they have (no zero padding enters a fit)."""

    width = LAT_COLS

    def __init__(
        self, n: int, k: int, q: int, row_block: int, rounds: int, apot_terms: int, perm: list[int], device
    ):
        self.n, self.q, self.row_block, self.rounds, self.apot_terms = n, q, row_block, rounds, apot_terms
        self.perm, self.k = perm, k
        self.groups = -(-n // row_block)
        n_slabs = -(-k // LAT_COLS)
        self.group_of_row = torch.arange(n, device=device) // row_block
        self.rows_in_group = torch.bincount(self.group_of_row, minlength=self.groups)
        # per column (act-order), the index of its level among its group's sorted levels; `_translate` turns a
        # finished slab's indices into sign-table indices (2**q <= 256 levels: uint8)
        self.level = torch.empty((k, n), dtype=torch.uint8, device=device)
        # scales and their terms by original slab
        self.scales = torch.empty((n_slabs, self.groups, q), dtype=torch.float32, device=device)
        self.signs = torch.zeros((n_slabs, self.groups, q, apot_terms), dtype=torch.int8, device=device)
        self.exps = torch.zeros((n_slabs, self.groups, q, apot_terms), dtype=torch.int8, device=device)
        self.padded = torch.zeros((self.groups * row_block, LAT_COLS), dtype=torch.float32, device=device)
        self.pending: tuple[int, int, torch.Tensor] | None = None  # (start, end, order (L, N)) to translate
        self.rounds_run = 0

    def reads(self, start: int) -> int:
        slab = self.perm[start] // LAT_COLS
        return min(LAT_COLS, self.k - slab * LAT_COLS)  # its slab (the last original one may be narrower)

    def begin_slab(self, rows: torch.Tensor, start: int, end: int) -> None:
        self._translate()
        width = end - start
        padded = self.padded if width == LAT_COLS else self.padded.new_zeros((len(self.padded), width))
        padded[: self.n] = rows.T
        # row-major: the entries of one row of the slab are adjacent in its group
        x = padded.reshape(self.groups, self.row_block * width)
        fit = bcq_fit(x, self.rows_in_group * width, self.q, self.rounds, self.apot_terms)
        slab = self.perm[start] // LAT_COLS  # slabs are whole original 8-column blocks
        self.scales[slab] = fit.scales
        self.signs[slab] = fit.signs
        self.exps[slab] = fit.exps
        table = LevelTable.build(fit.scales)
        # the table of each row's group, levels along the first axis: a column is one comparison with the
        # midpoints and one sum down the L - 1 rows (vectorised over the N rows; a per-row binary search
        # costs ~4x as much on a CPU)
        self.mids = table.mids.T.contiguous().index_select(1, self.group_of_row)  # (L - 1, N)
        self.values = table.values.T.contiguous().index_select(1, self.group_of_row)  # (L, N)
        self.pending = (start, end, table.order.T.contiguous().index_select(1, self.group_of_row))
        self.rounds_run += fit.rounds_run

    def column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        # the number of midpoints <= w: `LevelTable.index` (x < mid goes left, ties go right)
        idx = torch.sum((self.mids <= w).view(torch.uint8), 0, dtype=torch.uint8, out=self.level[j])
        return self.values.gather(0, idx.long()[None])[0]

    def _translate(self) -> None:
        """The pending slab's sorted-level indices into sign-table indices (one gather per slab)."""
        if self.pending is not None:
            start, end, order = self.pending
            got = order.gather(0, self.level[start:end].long())
            self.level[start:end] = got
            self.pending = None

    def result(self, perm: torch.Tensor) -> BinaryCodes:
        self._translate()
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm), device=perm.device)
        level = self.level.index_select(0, inverse).T.contiguous()  # (N, K), original column order
        # the sign table by bits: plane b of level l is -1 iff bit q-1-b of l is set (`sign_table`)
        codes = torch.empty((self.q, self.n, self.k), dtype=torch.int8, device=level.device)
        for b in range(self.q):
            bit = torch.bitwise_and(torch.bitwise_right_shift(level, self.q - 1 - b), 1)
            torch.sub(1, bit.view(torch.int8).mul_(2), out=codes[b])
        return _binary_codes(self, codes, None, None, col_block=LAT_COLS)


def _binary_codes(quantizer, codes: torch.Tensor, perm, scale_perm, col_block: int) -> BinaryCodes:
    """Codes (K, q, N) in act-order (and, when indexed by act-order column, scales) back in original column order;
    perm None: codes are (q, N, K) in original order already."""
    if perm is not None:
        out = torch.empty_like(codes)
        out[perm] = codes
        codes = out.permute(1, 2, 0)
    scales, signs, exps = quantizer.scales, quantizer.signs, quantizer.exps
    if scale_perm is not None:
        scales, signs, exps = (
            torch.empty_like(a) for a in (quantizer.scales, quantizer.signs, quantizer.exps)
        )
        scales[scale_perm] = quantizer.scales
        signs[scale_perm] = quantizer.signs
        exps[scale_perm] = quantizer.exps
    has_terms = quantizer.apot_terms is not None
    return BinaryCodes(
        codes=codes.contiguous(),
        scales=scales.contiguous(),
        col_block=col_block,
        row_block=quantizer.row_block,
        scale_signs=signs.contiguous() if has_terms else None,
        scale_exps=exps.contiguous() if has_terms else None,
    )


def plain_bcq(w: torch.Tensor, q: int, groupsize: int, rounds: int) -> BinaryCodes:
    """The `--bcq` baseline: every column on its own (no solver), float scales over groups of output rows.

    All columns are fit in one batch; exact nearest-level codes."""
    n, k = w.shape
    row_block = n if groupsize <= 0 else groupsize
    x, sizes = group_rows(w.T.contiguous(), row_block)  # (K, G, row_block)
    groups = x.shape[1]
    x = x.reshape(k * groups, row_block)
    fit = bcq_fit(x, sizes.repeat(k), q, rounds, None)
    codes, _ = assign(x, fit.scales)
    codes = codes.reshape(q, k, groups * row_block)[:, :, :n].transpose(1, 2)
    return BinaryCodes(
        codes=codes.contiguous(),
        scales=fit.scales.reshape(k, groups, q),
        col_block=1,
        row_block=row_block,
    )


def zero_dead_inputs(w: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """Dead inputs (H_jj == 0 in `diag`, H's diagonal or a copy of it: never active in calibration): H_jj = 1 and
    W[:, j] = 0, in place. Returns the mask."""
    dead = diag == 0
    diag[dead] = 1.0
    w[:, dead] = 0.0
    return dead


def gptq_fixup(w: torch.Tensor, h: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`zero_dead_inputs`, then H += percdamp * mean(diag H) * I (in place).

    Returns (the diagonal before damping (the act-order score), the damping lambda (0-d))."""
    zero_dead_inputs(w, h.diagonal())
    diag = h.diagonal().clone()
    damp = percdamp * diag.mean()
    h.diagonal().add_(damp)
    return diag, damp


def column_order(diag: torch.Tensor, act_order: bool) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Act-order (§3.3, acc/gptq): columns by descending H_jj (stable); one slab per column."""
    k = diag.shape[0]
    perm = torch.argsort(-diag, stable=True) if act_order else torch.arange(k, device=diag.device)
    return perm, [(j, j + 1) for j in range(k)]


def block_order(
    diag: torch.Tensor, act_order: bool, width: int = LAT_COLS
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Block act-order (§3.3, lat): blocks of `width` consecutive columns (the last may be narrower) sorted by
    descending sum of H_jj (stable), column order kept inside a block. Returns (perm, slabs in permuted order)."""
    k = diag.shape[0]
    nblocks = -(-k // width)
    scores = torch.nn.functional.pad(diag, (0, nblocks * width - k)).reshape(nblocks, width).sum(1)
    order = torch.argsort(-scores, stable=True).tolist() if act_order else list(range(nblocks))
    perm, slabs, pos = [], [], 0
    for b in order:
        cols = range(b * width, min((b + 1) * width, k))
        perm.extend(cols)
        slabs.append((pos, pos + len(cols)))
        pos += len(cols)
    return torch.tensor(perm, device=diag.device), slabs


def _reversed(h: torch.Tensor, perm: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """H[back][:, back] in `dtype`, back = perm reversed: a new matrix. Both gathers run in H's dtype and the copy
    is widened last (exact either way; a float32 gather moves half a float64 one's bytes)."""
    back = perm.flip(0)
    out = h.index_select(0, back).index_select(1, back)
    return out if out.dtype == dtype else out.to(dtype)


def _reverse_factor(hr: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """R (upper, `dtype`) with H' = R R^T, from the reversed H' `hr` (overwritten): its lower Cholesky factor,
    flipped both ways. R^-1 is the upper Cholesky factor of H'^-1 that GPTQ uses; `gptq_loop` needs only R.

    The factor is written over `hr` and rounded to `dtype` before the flip: around the factorisation a large
    layer spends its time in fresh pages and memory passes, so no further K x K float64 matrix is made."""
    info = torch.empty((), dtype=torch.int32, device=hr.device)
    torch.linalg.cholesky_ex(hr, out=(hr, info))
    if int(info):
        raise UserError(
            f"the Hessian is not positive definite even after damping (leading minor {int(info)}); raise percdamp"
        )
    return hr.to(dtype).flip(0, 1)


def quantize_weight(weight, hessian, spec: QuantSpec) -> QuantizedWeight:
    """weight: float32 (N, K) (nn.Linear layout); hessian: float32/float64 (K, K) = sum of X^T X / n_seq from calibration
    inputs (None only allowed for rtn and bcq, which need no calibration). Returns the quantized layer; result.dequantize()
    is the quantized weight in the original basis. Does not modify `weight`."""
    return _run(weight, hessian, spec, want_final=False)[0]


def solve(weight, hessian, spec: QuantSpec):
    """`quantize_weight`, also returning the solver's own quantized matrix (torch float32 (N, K), original column
    order, in the basis the codes live in), which `result.codes.dequantize()` reproduces bit for bit.

    Runs on the weight's device; on a CPU its large operations use the caller's torch threads, everything
    else one thread (module docstring)."""
    result, final = _run(weight, hessian, spec, want_final=True)
    return result, final.clone()


def _run(weight, hessian, spec: QuantSpec, want_final: bool):
    """`_solve` with one thread and in inference mode (less overhead per small operation, ~13 %); the result's
    tensors made ordinary ones, the solver's matrix (None unless `want_final`) still an inference tensor."""
    threads = torch.get_num_threads()
    with torch.inference_mode(), _threads(1):
        result, final = _solve(weight, hessian, spec, threads, want_final)
    return _outside_inference(result), final


def _outside_inference(value):
    """A copy of the result whose tensors are ordinary ones (inference tensors refuse some later uses)."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _outside_inference(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value


def _solve(weight, hessian, spec: QuantSpec, threads: int, want_final: bool = True):
    from llm1bit.quant.numerics.uniform import UniformColumns, rtn

    spec = spec.validate()
    if weight.ndim != 2:
        raise UserError(f"expected a 2-D weight (out_features, in_features), got shape {tuple(weight.shape)}")
    device = weight.device
    w = weight.detach().to(dtype=torch.float32, copy=True)
    n, k = w.shape
    if not _all_finite(w):
        raise UserError("the weight holds NaN or inf values")
    q = spec.wbits
    if spec.method in ("rtn", "bcq"):
        codes = (
            rtn(w, q, spec.groupsize)
            if spec.method == "rtn"
            else plain_bcq(w, q, spec.groupsize, spec.bcq_rounds)
        )
        return QuantizedWeight(codes), codes.dequantize() if want_final else None
    if hessian is None:
        raise UserError(f"method {spec.method!r} needs a Hessian from calibration inputs")
    if tuple(hessian.shape) != (k, k):
        raise UserError(
            f"Hessian shape {tuple(hessian.shape)} does not match the weight's {k} input features"
        )
    h = hessian.detach().to(device=device)
    if not _all_finite(h):
        raise UserError("the Hessian holds NaN or inf values")

    incoherence = None
    lat = spec.method == "shiftaddllm" and spec.mode == "lat"
    if spec.method == "shiftaddllm" and not lat and spec.incoherence:
        from llm1bit.quant.numerics.incoherence import incoherence_preprocess

        # Deviation: the reference rescales first, where a dead input gets s_j = (1e-8/|w_j|^2)^(1/4), and its
        # fix-up after the rotation finds nothing dead; undoing then multiplies that column's quantization noise
        # by 1/s_j (about 30x). Zeroing dead inputs first, as GPTQ does, leaves them (nearly) zero instead.
        # The rotations are float64 NumPy (bit-reproducible on any machine), once per layer on the host.
        h = h.to(dtype=torch.float64, copy=True)
        zero_dead_inputs(w, h.diagonal())
        w_np, h_np, incoherence = incoherence_preprocess(
            w.cpu().numpy(), h.cpu().numpy(), spec.seed, spec.module
        )
        w, h = torch.from_numpy(w_np).to(device), torch.from_numpy(h_np).to(device)
    # `gptq_fixup` on the diagonal alone (H itself is only read, once, by the permuted float64 copy below)
    diag = h.diagonal().to(torch.float64, copy=True)
    dead = zero_dead_inputs(w, diag)
    damp = spec.percdamp * diag.mean()
    perm, slabs = block_order(diag, spec.act_order) if lat else column_order(diag, spec.act_order)
    hr = _reversed(h, perm, torch.float64)
    del h
    hr.diagonal().copy_((diag + damp)[perm.flip(0)])
    with _threads(threads, k**3 / 3):
        r = _reverse_factor(hr, torch.float32)
    del hr
    wt = w.index_select(1, perm).T.contiguous()

    if spec.method == "gptq":
        quantizer = UniformColumns(n, k, q, spec.groupsize, perm.tolist(), w, static=spec.act_order)
    elif lat:
        row_block = -(-n // LAT_COLS) if spec.groupsize <= 0 else spec.groupsize // LAT_COLS
        quantizer = BlockScales(n, k, q, row_block, spec.bcq_rounds, spec.apot_terms, perm.tolist(), device)
    else:
        row_block = n if spec.groupsize <= 0 else spec.groupsize
        quantizer = BCQColumns(n, k, q, row_block, spec.bcq_rounds, spec.apot_terms, device)
    qt, delta, loss_cols = gptq_loop(wt, r, slabs, quantizer, spec.blocksize, threads)
    codes = quantizer.result() if spec.method == "gptq" else quantizer.result(perm)
    final = None
    if want_final or incoherence is not None:  # (N, K) in original column order: a transpose of N K floats
        final = torch.empty_like(qt)
        final[perm] = qt
        final = final.T.contiguous()
    # Report every layer's error in its own units, 1/2 tr(E H E^T) with E = W - Q in the original basis and the
    # calibration Hessian H, so errors of all methods and modes compare (`bits` fits them). The loop's loss is
    # that of its damped H_d = H + lambda I + (1 on dead inputs' diagonal): sum(loss_cols) = tr(D H_d D^T), so
    # without rotations tr(E H E^T) = sum(loss_cols) - lambda ||D||^2 - ||D on dead inputs||^2 (dead inputs' W
    # columns are 0 there and their H rows and columns are 0, so E and D give the same trace), O(N K) instead
    # of the O(N K^2) product. With acc's rescale and rotations the loop's H is another matrix: the product.
    if incoherence is None:
        d2 = delta.square().sum(1, dtype=torch.float64)
        loss = 0.5 * float(loss_cols.sum() - damp * d2.sum() - d2[dead[perm]].sum())
    else:
        qo = _original_basis(final, incoherence).to(device)
        e = weight.detach().to(torch.float64) - qo.to(torch.float64)
        with _threads(threads, 2.0 * n * k * k):
            loss = 0.5 * float(torch.sum((e @ hessian.detach().to(device=device, dtype=torch.float64)) * e))
    return QuantizedWeight(codes, incoherence, error=loss), final


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in t: its sum is finite (a NaN or inf always reaches it; one pass, no mask). The sum in
    t's dtype (a tenth of a float64 sum's time on a large Hessian), in float64 only when that one overflows."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t.sum(dtype=torch.float64)))


def _original_basis(q, incoherence):
    from llm1bit.quant.numerics.incoherence import undo_incoherence

    return undo_incoherence(q, incoherence)


# Expert slices with fewer routed calibration tokens than inputs are quantized with H = I.
FALLBACK = "identity Hessian (round-to-nearest on the same grid): fewer routed tokens than inputs"


def solve_fallback(
    solver: Callable[..., QuantizedWeight], weight: torch.Tensor, routed: torch.Tensor, spec: QuantSpec
) -> QuantizedWeight:
    """FALLBACK for an expert slice with too few routed tokens: the solver with the identity Hessian
    (round-to-nearest on the same grid); its .error is then 1/2 tr(E H E^T) against the routed Hessian the
    slice did get, in the units of every other layer. `bits` (sensitivity) quantizes such slices the same way."""
    import dataclasses

    import torch

    quantized = solver(weight, torch.eye(weight.shape[1], dtype=torch.float32), spec)
    e = weight.to(torch.float64) - quantized.dequantize().to(torch.float64).to(weight.device)
    error = 0.5 * float(torch.sum((e @ routed.to(device=weight.device, dtype=torch.float64)) * e))
    return dataclasses.replace(quantized, error=error)
