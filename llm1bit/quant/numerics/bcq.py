"""Binary-coding quantization (spec §1): x ~ sum_b a_b * B_b with codes B_b in {-1, +1}.

Everything works on a batch of G groups at once: `x` is (G, n) float32, each row one group, with
`sizes[g]` valid entries at the start of row g (the rest is padding and ignored). This covers the
solver's acc columns (one or N/groupsize groups), lat slabs (N/gr row blocks x 8 columns) and the
plain `bcq` baseline (all columns of a layer at once).

`bcq_fit` follows the reference exactly, step by step:
  greedy init (b = sign(r), a = mean|r|);  then `rounds` times:
  LS for a by q warm-started float32 CG steps (eps 1e-6) -> |a| sorted descending -> APoT ->
  exact nearest-level code refit (levels in the reference's sign order, midpoints, ties go right).
It is made fast without changing a single bit of the result:

* After round 1 the codes are a function of (x, a) only (nearest level), so B^T B and B^T x need
  only, per group, how many entries fall in each level interval and their sum. With x sorted once
  per call and prefix sums, a round costs O(2^q log n) instead of O(n q).
* The state after a round is its scale vector a. If a round returns the scales of an earlier round,
  the sequence is periodic from there on (a fixed point is period 1) and the scales after round
  `rounds` are known; the loop stops early. The result is bit-identical to running all rounds.
* Python overhead, not arithmetic, is the cost of a round (q and 2^q are tiny). A single group runs
  with float32 scalars and a CG unrolled into straight-line code (about 35 us a round for q = 3);
  up to SMALL_BATCH groups are fit one after the other that way, each stopping at its own fixed
  point; larger batches (plain BCQ: every column at once) run as arrays with the same operations
  in the same order, so a group gets the same bits either way (tested).
* Batched interval counts use an exact binary search on order-preserving integer keys of the
  float32 values, so the comparison `x < mid` is the exact float comparison.

Deviations from the reference, each deliberate:
* B^T x is summed in float64 and rounded to float32 (the reference sums in float32 on the GPU in
  an unspecified order); the CG itself is float32.
* Equal levels (two equal scales, or a zero scale) are ordered by a stable sort, so the code vector
  chosen for a tied level is deterministic (the reference's GPU sort leaves it unspecified).
* With rounds == 0 or q == 1 the reference skips the refinement and returns unrounded scales and
  greedy codes that can be 0 (spec §9.12). Here the scales are still made |a|, sorted, APoT-rounded
  (when APoT is on) and the codes refit to the nearest level, so codes are always +-1 and scales
  always representable."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llm1bit.quant.numerics.apot import apot, apot_scalar

CG_EPS = np.float32(1e-6)
MAX_PERIOD = 4  # longest cycle of scale vectors the early exit looks for
SMALL_BATCH = 8  # up to this many groups, fitting them one by one (scalar path) is faster than batched


@lru_cache(maxsize=8)
def sign_table(q: int) -> np.ndarray:
    """(2**q, q) float32 sign vectors in the reference's order L_m = [+1 (+) L_{m-1}] ++ [-1 (+) L_{m-1}].

    For q = 2: (+,+), (+,-), (-,+), (-,-). Row l has -1 in plane b iff bit (q-1-b) of l is set."""
    rows = np.arange(2**q)[:, None]
    bits = (rows >> (q - 1 - np.arange(q))[None, :]) & 1
    table = (1 - 2 * bits).astype(np.float32)
    table.setflags(write=False)
    return table


def float_keys(x: np.ndarray) -> np.ndarray:
    """uint64 keys with the order of the float32 values (-0.0 and +0.0 get the same key)."""
    x = np.asarray(x, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 == +0.0
    u = x.view(np.uint32).astype(np.uint64)
    neg = (u >> np.uint64(31)) == 1
    return np.where(neg, np.uint64(0xFFFFFFFF) - u, u | np.uint64(0x80000000))


def _group_keys(x: np.ndarray) -> np.ndarray:
    """Keys of a (G, m) float32 array, offset by group so that a row-wise sorted array is globally sorted."""
    g = np.arange(x.shape[0], dtype=np.uint64)[:, None] << np.uint64(32)
    return float_keys(x) | g


def levels(a: np.ndarray) -> np.ndarray:
    """(G, 2**q) level values s . a, summed plane by plane in order b = 0 .. q-1 in float32.

    The same order as `BinaryCodes.dequantize`, so a weight set to a level equals its dequantization bit for bit."""
    signs = sign_table(a.shape[1])
    out = signs[None, :, 0] * a[:, None, 0]
    for b in range(1, a.shape[1]):
        out = out + signs[None, :, b] * a[:, None, b]
    return out


@dataclass
class LevelTable:
    """Sorted levels of each group and the midpoints between neighbours (what the binary search compares to)."""

    values: np.ndarray  # (G, L) float32, ascending
    order: np.ndarray  # (G, L) index into sign_table of each sorted level
    mids: np.ndarray  # (G, L-1) float32
    mid_keys: np.ndarray  # (G*(L-1),) uint64, globally sorted

    @classmethod
    def build(cls, a: np.ndarray) -> LevelTable:
        lv = levels(a)
        order = np.argsort(lv, axis=1, kind="stable")
        values = lv[np.arange(lv.shape[0])[:, None], order]
        mids = (values[:, :-1] + values[:, 1:]) * np.float32(0.5)  # == / 2 exactly
        return cls(values, order, mids, _group_keys(mids).ravel())

    def index(self, x: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
        """Sorted-level index of each entry: the number of midpoints <= x (x < mid goes left, ties go right).

        x is (G, n) (row g against group g), or 1-D with `group` naming each entry's group."""
        m = self.mids.shape[1]
        if m == 0:
            return np.zeros(x.shape, dtype=np.int64)
        if group is None and x.shape[0] == 1:
            return self.mids[0].searchsorted(x[0], side="right")[None, :]
        if group is None:
            group = np.broadcast_to(np.arange(x.shape[0])[:, None], x.shape)
        keys = float_keys(x) | (group.astype(np.uint64) << np.uint64(32))
        pos = np.searchsorted(self.mid_keys, keys.ravel(), side="right").reshape(x.shape)
        return pos - group * m


def assign(x: np.ndarray, a: np.ndarray, table: LevelTable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest-level codes for fixed scales a (G, q): (codes int8 (q, G, n), xhat float32 (G, n))."""
    q = a.shape[1]
    if x.shape[0] == 1 and table is None:  # one group: plain float searchsorted, no keys
        lv = levels(a)[0]
        order = lv.argsort(kind="stable")
        values = lv[order]
        idx = ((values[:-1] + values[1:]) * np.float32(0.5)).searchsorted(x[0], side="right")
        return code_table(q)[:, order[idx]][:, None, :], values[idx][None, :]
    table = table or LevelTable.build(a)
    idx = table.index(x)
    rows = np.arange(x.shape[0])[:, None]
    codes = code_table(q)[:, table.order[rows, idx]]
    return codes, table.values[rows, idx]


@lru_cache(maxsize=8)
def code_table(q: int) -> np.ndarray:
    """sign_table(q) transposed, as int8 (q, 2**q): column l holds the codes of sign vector l."""
    table = np.ascontiguousarray(sign_table(q).T.astype(np.int8))
    table.setflags(write=False)
    return table


def greedy(x: np.ndarray, sizes: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual init: b_i = sign(r), a_i = mean_group |r|. Padding must be 0. Returns (B (G, n, q), a (G, q))."""
    r = x.copy()
    n = sizes.astype(np.float32)
    codes = np.empty(x.shape + (q,), dtype=np.float32)
    a = np.empty((x.shape[0], q), dtype=np.float32)
    for i in range(q):
        b = np.sign(r)
        a[:, i] = np.abs(r).sum(axis=1, dtype=np.float32) / n
        r -= a[:, i, None] * b
        codes[..., i] = b
    return codes, a


def cg(A: list, rhs: list, a: list, iters: int) -> list:
    """The reference's conjugate gradient for A a = rhs: warm start at a, `iters` steps, eps 1e-6, float32.

    Vectors are lists of q entries and A a q x q nested list; an entry is a float32 scalar (one
    group) or a float32 array (a batch of groups). The operations and their order are the same
    either way, so one group gives the same bits alone or in a batch."""
    q = len(a)
    return list(_cg_function(q, iters)(*[v for row in A for v in row], *rhs, *a))


@lru_cache(maxsize=64)
def _cg_function(q: int, iters: int):
    """CG for a fixed size, unrolled into straight-line code (a round of BCQ is dominated by Python overhead).

    Every dot product is summed left to right, s = u0*v0 + u1*v1 + ... ."""
    idx = range(q)

    def dot(u: str, v: str) -> str:
        return " + ".join(f"{u}{i} * {v}{i}" for i in idx)

    lines = [
        f"def cg_{q}({', '.join(f'A{i}_{j}' for i in idx for j in idx)}, {', '.join(f'b{i}' for i in idx)}, "
        f"{', '.join(f'a{i}' for i in idx)}):"
    ]
    for i in idx:
        lines.append(f"    r{i} = b{i} - (" + " + ".join(f"A{i}_{j} * a{j}" for j in idx) + ")")
        lines.append(f"    p{i} = r{i}")
    lines.append(f"    rs = {dot('r', 'r')}")
    lines.append(f"    for _ in range({iters}):")
    for i in idx:
        lines.append(f"        ap{i} = " + " + ".join(f"A{i}_{j} * p{j}" for j in idx))
    lines.append(f"        alpha = rs / (({dot('p', 'ap')}) + eps)")
    for i in idx:
        lines.append(f"        a{i} = a{i} + alpha * p{i}")
        lines.append(f"        r{i} = r{i} - alpha * ap{i}")
    lines.append(f"        rs_new = {dot('r', 'r')}")
    lines.append("        beta = rs_new / (rs + eps)")
    for i in idx:
        lines.append(f"        p{i} = r{i} + beta * p{i}")
    lines.append("        rs = rs_new")
    lines.append(f"    return ({', '.join(f'a{i}' for i in idx)},)")
    namespace = {"eps": CG_EPS}
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from integers only
    return namespace[f"cg_{q}"]


def cg_arrays(A: np.ndarray, rhs: np.ndarray, a: np.ndarray, iters: int) -> np.ndarray:
    """`cg` for a batch held as arrays (A (G, q, q), rhs and a (G, q)), with the same operations in the same order
    (every sum over j runs left to right), so each group gets the same bits as alone; fewer, larger numpy calls."""
    q = a.shape[1]
    cols = [np.ascontiguousarray(A[:, :, j]) for j in range(q)]

    def matvec(v: np.ndarray) -> np.ndarray:
        out = cols[0] * v[:, 0:1]
        for j in range(1, q):
            out = out + cols[j] * v[:, j : j + 1]
        return out

    def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = u[:, 0] * v[:, 0]
        for j in range(1, q):
            out = out + u[:, j] * v[:, j]
        return out

    r = rhs - matvec(a)
    p = r
    rs = dot(r, r)
    for _ in range(iters):
        ap = matvec(p)
        alpha = (rs / (dot(p, ap) + CG_EPS))[:, None]
        a = a + alpha * p
        r = r - alpha * ap
        rs_new = dot(r, r)
        p = r + (rs_new / (rs + CG_EPS))[:, None] * p
        rs = rs_new
    return a


class _SortedGroups:
    """x sorted per group, with float64 prefix sums and search keys: B^T B and B^T x of nearest-level codes in O(L log n)."""

    def __init__(self, x: np.ndarray, sizes: np.ndarray):
        G, n = x.shape
        pad = np.arange(n)[None, :] >= sizes[:, None]
        xs = np.sort(np.where(pad, np.float32(np.inf), x), axis=1)
        self.keys = _group_keys(xs).ravel()
        csum = np.zeros((G, n + 1), dtype=np.float64)
        np.cumsum(np.where(pad, 0.0, xs), axis=1, dtype=np.float64, out=csum[:, 1:])  # padding sorts last
        self.csum = csum
        self.sizes = sizes
        self.n = n
        self.rows = np.arange(G)[:, None]
        self.offsets = self.rows.astype(np.uint64) << np.uint64(32)

    def normal_equations(self, table: LevelTable, q: int) -> tuple[np.ndarray, np.ndarray]:
        G = self.csum.shape[0]
        L = table.values.shape[1]
        bounds = np.empty((G, L + 1), dtype=np.int64)
        bounds[:, 0] = 0
        bounds[:, L] = self.sizes
        if L > 1:
            qk = float_keys(table.mids) | self.offsets
            pos = np.searchsorted(self.keys, qk.ravel(), side="left").reshape(G, L - 1)
            bounds[:, 1:L] = pos - self.rows * self.n  # entries x < mid go left
        counts = (bounds[:, 1:] - bounds[:, :-1]).astype(np.float64)
        cs = self.csum[self.rows, bounds]
        sums = cs[:, 1:] - cs[:, :-1]
        s = sign_table(q).astype(np.float64)[table.order]  # (G, L, q)
        sT = s.transpose(0, 2, 1)
        btb = np.matmul(sT * counts[:, None, :], s).astype(np.float32)
        btx = np.matmul(sT, sums[:, :, None])[:, :, 0].astype(np.float32)
        return btb, btx


@dataclass
class BCQFit:
    scales: np.ndarray  # (G, q) float32, non-negative, descending
    signs: np.ndarray | None  # (G, q, terms) int8 APoT terms (None without APoT)
    exps: np.ndarray | None
    rounds_run: int  # rounds actually computed (<= rounds thanks to the exact early exit)


def _finish(a: np.ndarray, apot_terms: int | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """|a| sorted descending per group, then APoT when requested (spec §1.3 steps 2-3). a is (G, q)."""
    a = -np.sort(-np.abs(a), axis=1)
    if apot_terms is None:
        return a, None, None
    return apot(a, apot_terms)


def bcq_fit(
    x: np.ndarray,
    sizes: np.ndarray,
    q: int,
    rounds: int,
    apot_terms: int | None,
    early_exit: bool = True,
) -> BCQFit:
    """Scales of BCQ(x, q, rounds, bst=True, apot_terms) for G groups (x (G, n) float32, padding = 0).

    The codes that go with the scales are `assign(x, fit.scales)` (the reference's last refit step)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    sizes = np.asarray(sizes, dtype=np.int64)
    codes, a = greedy(x, sizes, q)
    if rounds == 0 or q == 1:
        s, signs, exps = _finish(a, apot_terms)
        return BCQFit(s, signs, exps, 0)
    # round 1 starts from the greedy codes (which may hold zeros)
    btb = np.matmul(codes.transpose(0, 2, 1), codes)
    btx = np.matmul(codes.transpose(0, 2, 1).astype(np.float64), x.astype(np.float64)[:, :, None])
    btx = btx[:, :, 0].astype(np.float32)
    del codes
    G = x.shape[0]
    if G > SMALL_BATCH:
        return _rounds_many(x, sizes, q, rounds, apot_terms, early_exit, btb, btx, a)
    fits = [
        _rounds_one(
            x[g],
            int(sizes[g]),
            q,
            rounds,
            apot_terms,
            early_exit,
            btb[g : g + 1],
            btx[g : g + 1],
            a[g : g + 1],
        )
        for g in range(G)
    ]
    if G == 1:
        return fits[0]
    signs = exps = None
    if apot_terms is not None:
        signs = np.concatenate([f.signs for f in fits])
        exps = np.concatenate([f.exps for f in fits])
    return BCQFit(np.concatenate([f.scales for f in fits]), signs, exps, max(f.rounds_run for f in fits))


def _rounds_one(x, n, q, rounds, apot_terms, early_exit, btb, btx, a) -> BCQFit:
    """Refinement rounds for a single group, with float32 scalars (a round costs a few dozen microseconds)."""
    xs = np.sort(x[:n])
    csum = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(xs, dtype=np.float64, out=csum[1:])
    table = sign_table(q)
    signs_int = table.astype(np.int64)
    sign_cols = [np.ascontiguousarray(table[:, b]) for b in range(q)]
    bounds = np.empty(2**q + 1, dtype=np.int64)
    bounds[0] = 0
    bounds[-1] = n
    half = np.float32(0.5)
    solve = _cg_function(q, q)
    A, rhs, av = tuple(btb[0].ravel()), tuple(btx[0]), tuple(a[0])
    history: list[tuple] = []  # (scales as float tuple, signs, exps) after round 1, 2, ...
    final = None
    for r in range(1, rounds + 1):
        av = solve(*A, *rhs, *av)
        vals = sorted([abs(float(v)) for v in av], reverse=True)
        if apot_terms is None:
            state = (tuple(vals), None, None)
        else:
            terms = [apot_scalar(v, apot_terms) for v in vals]
            state = (tuple([t[0] for t in terms]), tuple([t[1] for t in terms]), tuple([t[2] for t in terms]))
        history.append(state)
        if r == rounds:
            break
        if early_exit and r >= 2:
            for period in range(1, min(MAX_PERIOD, r - 1) + 1):
                j = r - period
                if history[j - 1][0] == state[0]:
                    final = history[j + (rounds - j) % period - 1]
                    break
            if final is not None:
                break
        a32 = np.array(state[0], dtype=np.float32)
        av = tuple(a32)
        lv = sign_cols[0] * av[0]  # the same plane order as `levels`
        for b in range(1, q):
            lv = lv + sign_cols[b] * av[b]
        order = lv.argsort(kind="stable")
        v = lv[order]
        bounds[1:-1] = xs.searchsorted((v[:-1] + v[1:]) * half)  # entries x < mid go left
        cs = csum[bounds]
        s = signs_int[order]  # (L, q)
        A = tuple(((s.T * (bounds[1:] - bounds[:-1])) @ s).astype(np.float32).ravel())  # exact integers
        rhs = tuple(((cs[1:] - cs[:-1]) @ s).astype(np.float32))
    state = final if final is not None else history[-1]
    scales = np.array(state[0], dtype=np.float32)[None]
    if apot_terms is None:
        return BCQFit(scales, None, None, len(history))
    return BCQFit(
        scales, np.array(state[1], dtype=np.int8)[None], np.array(state[2], dtype=np.int8)[None], len(history)
    )


def _rounds_many(x, sizes, q, rounds, apot_terms, early_exit, btb, btx, a) -> BCQFit:
    """Refinement rounds for a batch of groups; groups that reach a cycle are resolved and the loop ends when all are."""
    G = x.shape[0]
    sorted_groups = _SortedGroups(x, sizes)
    history: list[tuple] = []  # (a, signs, exps) after round r = 1, 2, ...
    final: list | None = None
    done = np.zeros(G, dtype=bool)
    for r in range(1, rounds + 1):
        a = cg_arrays(btb, btx, a, q)
        a, signs, exps = _finish(a, apot_terms)
        history.append((a, signs, exps))
        if r == rounds:
            break
        if early_exit and r >= 2:
            final = _resolve_cycles(history, rounds, done, final)
            if done.all():
                break
        btb, btx = sorted_groups.normal_equations(LevelTable.build(a), q)
    rounds_run = len(history)
    last = history[-1]
    if final is None:
        return BCQFit(last[0], last[1], last[2], rounds_run)
    scales = np.where(done[:, None], final[0], last[0])
    signs = exps = None
    if apot_terms is not None:
        signs = np.where(done[:, None, None], final[1], last[1])
        exps = np.where(done[:, None, None], final[2], last[2])
    return BCQFit(scales, signs, exps, rounds_run)


def _resolve_cycles(history: list[tuple], rounds: int, done: np.ndarray, final: list | None) -> list:
    """Mark groups whose latest scales repeat an earlier round's and record their scales after `rounds` rounds."""
    r = len(history)  # rounds computed so far; history[i] is the state after round i + 1
    a_r = history[-1][0]
    if final is None:
        final = [np.zeros_like(v) if v is not None else None for v in history[-1]]
    for period in range(1, min(MAX_PERIOD, r - 1) + 1):
        j = r - period  # state after round j equals the state after round r
        match = ~done & np.all(history[j - 1][0] == a_r, axis=1)
        if not match.any():
            continue
        target = j + (rounds - j) % period  # round whose state equals the state after `rounds`
        for slot in range(3):
            if final[slot] is not None:
                final[slot][match] = history[target - 1][slot][match]
        done |= match
    return final


def group_rows(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a (..., n) array into runs of `size` along the last axis: ((..., G, size) zero-padded, sizes (G,))."""
    n = x.shape[-1]
    G = -(-n // size)
    if G * size != n:
        pad = np.zeros(x.shape[:-1] + (G * size - n,), dtype=x.dtype)
        x = np.concatenate([x, pad], axis=-1)
    sizes = np.full(G, size, dtype=np.int64)
    sizes[-1] = n - (G - 1) * size
    return x.reshape(x.shape[:-1] + (G, size)), sizes
