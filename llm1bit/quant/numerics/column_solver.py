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

Threads: the solver is a sequential column loop of small numpy steps; its few large operations
(Cholesky factors, the lazy block update, the rotations) run in torch, and `solve` runs them with
one torch thread, restoring the caller's setting afterwards. Measured on 2 shared cores: with 2
torch threads a SmolLM2 layer took 20 s instead of 2 s, because the pool's workers keep spinning
between the large operations and take the core the column loop needs; the large operations are
only ~10 % of the time, so one thread loses almost nothing on an idle machine.

Numerics: the column loop and BCQ are float32 like the reference. The Hessian is handled in
float64: the GPTQ fix-up (dead columns, damping), the act-order scores and the inverse-Cholesky
factor are computed in float64 and the factor is rounded to float32 for the loop (the reference
does the Cholesky steps in float32, which fails more easily on ill-conditioned H; this is a
deliberate deviation). Act-order sorts are stable, so ties keep their column order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from llm1bit.errors import UserError
from llm1bit.quant.numerics.bcq import LevelTable, assign, bcq_fit, code_table, group_rows
from llm1bit.quant.numerics.codes import BinaryCodes, QuantizedWeight
from llm1bit.quant.numerics.methods import QuantSpec

if TYPE_CHECKING:
    import torch

LAT_COLS = 8  # lat mode: scales are shared by 8 consecutive input columns


class ColumnQuantizer(Protocol):
    width: int  # columns per slab; `begin_slab` is called at the first column of each slab

    def begin_slab(self, wt: np.ndarray, start: int, end: int) -> None:
        """wt is the live (K, N) transposed weight in act-order; rows start:end are the slab (feedback so far included)."""

    def column(self, w: np.ndarray, j: int) -> np.ndarray:
        """Quantize column j (act-order index) with current values w (N,); return the quantized column (float32)."""


def gptq_loop(
    wt: np.ndarray, u: np.ndarray, slabs: list[tuple[int, int]], quantizer: ColumnQuantizer, blocksize: int
) -> np.ndarray:
    """Quantize all columns of wt (K, N) float32 (modified in place) with GPTQ error feedback.

    u is the upper Cholesky factor of H^-1 (K, K) float32, in the same (act-)order as wt. Blocks of
    about `blocksize` columns never split a slab. The in-block update skips column i itself (the
    reference also subtracts from it, which changes nothing that is read later). Returns the
    quantized columns qt (K, N); the error is measured afterwards, in the original units."""
    import torch

    k, n = wt.shape
    qt = np.empty_like(wt)
    wt_t, u_t = torch.from_numpy(wt), torch.from_numpy(u)  # share memory: the lazy update runs in torch
    for b1, b2, block_slabs in _blocks(slabs, blocksize):
        w1 = wt[b1:b2]  # a view: in-block feedback goes straight into wt
        u1 = u[b1:b2, b1:b2]
        err = np.empty((b2 - b1, n), dtype=np.float32)
        for s1, s2 in block_slabs:
            quantizer.begin_slab(wt, s1, s2)
            for j in range(s1, s2):
                i = j - b1
                w = w1[i]
                qcol = quantizer.column(w, j)
                e = (w - qcol) / u1[i, i]
                qt[j] = qcol
                err[i] = e
                if i + 1 < b2 - b1:
                    w1[i + 1 :] -= u1[i, i + 1 :, None] * e[None, :]
        if b2 < k:
            wt_t[b2:] -= u_t[b1:b2, b2:].T @ torch.from_numpy(err)
    return qt


def _blocks(slabs: list[tuple[int, int]], blocksize: int):
    block: list[tuple[int, int]] = []
    width = 0
    for s in slabs:
        if block and width + (s[1] - s[0]) > blocksize:
            yield block[0][0], block[-1][1], block
            block, width = [], 0
        block.append(s)
        width += s[1] - s[0]
    if block:
        yield block[0][0], block[-1][1], block


class BCQColumns:
    """Acc (§3.5): per column, BCQ with APoT scales over groups of `row_block` consecutive output rows."""

    width = 1

    def __init__(self, n: int, k: int, q: int, row_block: int, rounds: int, apot_terms: int | None):
        self.n, self.q, self.row_block, self.rounds, self.apot_terms = n, q, row_block, rounds, apot_terms
        self.groups = -(-n // row_block)
        self.codes = np.empty((k, q, n), dtype=np.int8)  # act-order
        self.scales = np.empty((k, self.groups, q), dtype=np.float32)
        terms = apot_terms or 1
        self.signs = np.zeros((k, self.groups, q, terms), dtype=np.int8)
        self.exps = np.zeros((k, self.groups, q, terms), dtype=np.int8)
        self.rounds_run = 0

    def begin_slab(self, wt: np.ndarray, start: int, end: int) -> None:
        pass

    def column(self, w: np.ndarray, j: int) -> np.ndarray:
        if self.groups == 1:
            x, sizes = w[None, :], np.array([self.n])
        else:
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

    def result(self, perm: np.ndarray) -> BinaryCodes:
        return _binary_codes(self, perm, perm, col_block=1)


class BlockScales:
    """Lat (§3.6): at the first column of each 8-column slab, fit BCQ + APoT scales on the current slab
    (groups of `row_block` rows x the slab's columns, flattened row-major); every column of the slab
    then gets nearest-level codes for those fixed scales. As in the reference, the scales see the
    error feedback of earlier slabs but not that of the slab's own columns (spec §9.3). A slab
    narrower than 8 (K % 8) and a row block shorter than `row_block` (N % row_block) are fit on the
    entries they have (no zero padding enters a fit)."""

    width = LAT_COLS

    def __init__(
        self, n: int, k: int, q: int, row_block: int, rounds: int, apot_terms: int, perm: np.ndarray
    ):
        self.n, self.q, self.row_block, self.rounds, self.apot_terms = n, q, row_block, rounds, apot_terms
        self.perm = perm
        self.groups = -(-n // row_block)
        n_slabs = -(-k // LAT_COLS)
        self.group_of_row = np.arange(n) // row_block
        self.rows_in_group = np.bincount(self.group_of_row, minlength=self.groups)
        self.codes = np.empty((k, q, n), dtype=np.int8)  # act-order
        self.scales = np.empty((n_slabs, self.groups, q), dtype=np.float32)  # original slab order
        self.signs = np.zeros((n_slabs, self.groups, q, apot_terms), dtype=np.int8)
        self.exps = np.zeros((n_slabs, self.groups, q, apot_terms), dtype=np.int8)
        self.table: LevelTable | None = None
        self.rounds_run = 0

    def begin_slab(self, wt: np.ndarray, start: int, end: int) -> None:
        width = end - start
        padded = np.zeros((self.groups * self.row_block, width), dtype=np.float32)
        padded[: self.n] = wt[start:end].T
        # row-major: the entries of one row of the slab are adjacent in its group
        x = padded.reshape(self.groups, self.row_block * width)
        fit = bcq_fit(x, self.rows_in_group * width, self.q, self.rounds, self.apot_terms)
        slab = self.perm[start] // LAT_COLS  # slabs are whole original 8-column blocks
        self.scales[slab] = fit.scales
        self.signs[slab] = fit.signs
        self.exps[slab] = fit.exps
        self.table = LevelTable.build(fit.scales)
        self.rounds_run += fit.rounds_run

    def column(self, w: np.ndarray, j: int) -> np.ndarray:
        t = self.table
        idx = t.index(w, group=self.group_of_row)
        self.codes[j] = code_table(self.q)[:, t.order[self.group_of_row, idx]]
        return t.values[self.group_of_row, idx]

    def result(self, perm: np.ndarray) -> BinaryCodes:
        return _binary_codes(self, perm, None, col_block=LAT_COLS)


def _binary_codes(quantizer, perm: np.ndarray, scale_perm: np.ndarray | None, col_block: int) -> BinaryCodes:
    """Codes (and, when indexed by act-order column, scales) back in original column order."""
    import torch

    codes = np.empty_like(quantizer.codes)
    codes[perm] = quantizer.codes
    scales, signs, exps = quantizer.scales, quantizer.signs, quantizer.exps
    if scale_perm is not None:
        scales, signs, exps = (np.empty_like(a) for a in (quantizer.scales, quantizer.signs, quantizer.exps))
        scales[scale_perm] = quantizer.scales
        signs[scale_perm] = quantizer.signs
        exps[scale_perm] = quantizer.exps
    has_terms = quantizer.apot_terms is not None
    return BinaryCodes(
        codes=torch.from_numpy(np.ascontiguousarray(codes.transpose(1, 2, 0))),
        scales=torch.from_numpy(np.ascontiguousarray(scales)),
        col_block=col_block,
        row_block=quantizer.row_block,
        scale_signs=torch.from_numpy(np.ascontiguousarray(signs)) if has_terms else None,
        scale_exps=torch.from_numpy(np.ascontiguousarray(exps)) if has_terms else None,
    )


def plain_bcq(w: np.ndarray, q: int, groupsize: int, rounds: int) -> BinaryCodes:
    """The `--bcq` baseline: every column on its own (no solver), float scales over groups of output rows.

    All columns are fit in one batch; exact nearest-level codes (bst)."""
    import torch

    n, k = w.shape
    row_block = n if groupsize <= 0 else groupsize
    x, sizes = group_rows(np.ascontiguousarray(w.T), row_block)  # (K, G, row_block)
    groups = x.shape[1]
    x = x.reshape(k * groups, row_block)
    fit = bcq_fit(x, np.tile(sizes, k), q, rounds, None)
    codes, _ = assign(x, fit.scales)
    codes = codes.reshape(q, k, groups * row_block)[:, :, :n].transpose(0, 2, 1)
    return BinaryCodes(
        codes=torch.from_numpy(np.ascontiguousarray(codes)),
        scales=torch.from_numpy(fit.scales.reshape(k, groups, q)),
        col_block=1,
        row_block=row_block,
    )


def zero_dead_inputs(w: np.ndarray, h: np.ndarray) -> None:
    """Dead inputs (H_jj == 0, never active in calibration): H_jj = 1 and W[:, j] = 0, in place."""
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0


def gptq_fixup(w: np.ndarray, h: np.ndarray, percdamp: float) -> np.ndarray:
    """`zero_dead_inputs`, then H += percdamp * mean(diag H) * I (in place).

    Returns the diagonal before damping (the act-order score)."""
    zero_dead_inputs(w, h)
    diag = np.diag(h).copy()
    h[np.diag_indices_from(h)] += percdamp * diag.mean()
    return diag


def column_order(diag: np.ndarray, act_order: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Act-order (§3.3, acc/gptq): columns by descending H_jj (stable); one slab per column."""
    k = diag.shape[0]
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(k)
    return perm, [(j, j + 1) for j in range(k)]


def block_order(
    diag: np.ndarray, act_order: bool, width: int = LAT_COLS
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Block act-order (§3.3, lat): blocks of `width` consecutive columns (the last may be narrower) sorted by
    descending sum of H_jj (stable), column order kept inside a block. Returns (perm, slabs in permuted order)."""
    k = diag.shape[0]
    starts = np.arange(0, k, width)
    scores = np.add.reduceat(diag, starts)
    order = np.argsort(-scores, kind="stable") if act_order else np.arange(len(starts))
    perm, slabs, pos = [], [], 0
    for b in order:
        cols = np.arange(starts[b], min(starts[b] + width, k))
        perm.append(cols)
        slabs.append((pos, pos + len(cols)))
        pos += len(cols)
    return np.concatenate(perm), slabs


def inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of H^-1 (chol(H) -> cholesky_inverse -> chol upper), in float64, returned as float32."""
    import torch

    try:
        lower = torch.linalg.cholesky(torch.from_numpy(h))
        upper = torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
        raise UserError(
            f"the Hessian is not positive definite even after damping; raise percdamp ({exc})"
        ) from exc
    return upper.numpy().astype(np.float32)


def quantize_weight(weight, hessian, spec: QuantSpec) -> QuantizedWeight:
    """weight: float32 (N, K) (nn.Linear layout); hessian: float32/float64 (K, K) = sum of X^T X / n_seq from calibration
    inputs (None only allowed for rtn and bcq, which need no calibration). Returns the quantized layer; result.dequantize()
    is the quantized weight in the original basis. Does not modify `weight`."""
    return solve(weight, hessian, spec)[0]


def solve(weight, hessian, spec: QuantSpec):
    """`quantize_weight`, also returning the solver's own quantized matrix (torch float32 (N, K), original column
    order, in the basis the codes live in), which `result.codes.dequantize()` reproduces bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _solve(weight, hessian, spec)
    finally:
        torch.set_num_threads(threads)


def _original_basis(q, incoherence):
    from llm1bit.quant.numerics.incoherence import undo_incoherence

    return undo_incoherence(q, incoherence)


def _solve(weight, hessian, spec: QuantSpec):
    import torch

    from llm1bit.quant.numerics.uniform import UniformColumns, rtn

    spec = spec.validate()
    if weight.ndim != 2:
        raise UserError(f"expected a 2-D weight (out_features, in_features), got shape {tuple(weight.shape)}")
    w = weight.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
    n, k = w.shape
    if not np.isfinite(w).all():
        raise UserError("the weight holds NaN or inf values")
    q = spec.wbits
    if spec.method in ("rtn", "bcq"):
        codes = (
            rtn(w, q, spec.groupsize)
            if spec.method == "rtn"
            else plain_bcq(w, q, spec.groupsize, spec.bcq_rounds)
        )
        return QuantizedWeight(codes), codes.dequantize()
    if hessian is None:
        raise UserError(f"method {spec.method!r} needs a Hessian from calibration inputs")
    if tuple(hessian.shape) != (k, k):
        raise UserError(
            f"Hessian shape {tuple(hessian.shape)} does not match the weight's {k} input features"
        )
    h = hessian.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if not np.isfinite(h).all():
        raise UserError("the Hessian holds NaN or inf values")

    incoherence = None
    lat = spec.method == "shiftaddllm" and spec.mode == "lat"
    if spec.method == "shiftaddllm" and not lat and spec.incoherence:
        from llm1bit.quant.numerics.incoherence import incoherence_preprocess

        # Deviation: the reference rescales first, where a dead input gets s_j = (1e-8/|w_j|^2)^(1/4), and its
        # fix-up after the rotation finds nothing dead; undoing then multiplies that column's quantization noise
        # by 1/s_j (about 30x). Zeroing dead inputs first, as GPTQ does, leaves them (nearly) zero instead.
        zero_dead_inputs(w, h)
        w, h, incoherence = incoherence_preprocess(w, h, spec.seed, spec.module)
    diag = gptq_fixup(w, h, spec.percdamp)
    perm, slabs = block_order(diag, spec.act_order) if lat else column_order(diag, spec.act_order)
    u = inverse_cholesky_upper(h[np.ix_(perm, perm)])
    wt = np.ascontiguousarray(w[:, perm].T)

    if spec.method == "gptq":
        quantizer = UniformColumns(n, k, q, spec.groupsize, perm, w, static=spec.act_order)
    elif lat:
        row_block = -(-n // LAT_COLS) if spec.groupsize <= 0 else spec.groupsize // LAT_COLS
        quantizer = BlockScales(n, k, q, row_block, spec.bcq_rounds, spec.apot_terms, perm)
    else:
        row_block = n if spec.groupsize <= 0 else spec.groupsize
        quantizer = BCQColumns(n, k, q, row_block, spec.bcq_rounds, spec.apot_terms)
    qt = gptq_loop(wt, u, slabs, quantizer, spec.blocksize)
    codes = quantizer.result() if spec.method == "gptq" else quantizer.result(perm)
    final = np.empty_like(qt)
    final[perm] = qt
    final_t = torch.from_numpy(np.ascontiguousarray(final.T))
    # The loop's loss is measured against its damped (and for acc rescaled, rotated, normalised) Hessian;
    # report every layer's error in its own units instead, 1/2 tr(E H E^T) with E = W - Q in the original
    # basis and the calibration Hessian, so errors of all methods and modes compare (`bits` fits them).
    q = final_t if incoherence is None else _original_basis(final_t, incoherence)
    e = weight.detach().to(device="cpu", dtype=torch.float64).numpy() - q.numpy().astype(np.float64)
    h0 = hessian.detach().cpu().to(torch.float64).numpy()
    loss = 0.5 * float(np.sum((e @ h0) * e))
    return QuantizedWeight(codes, incoherence, error=loss), final_t


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
