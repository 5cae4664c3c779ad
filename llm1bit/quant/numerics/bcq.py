"""Binary-coding quantization (spec §1): x ~ sum_b a_b * B_b with codes B_b in {-1, +1}, in torch.

Everything works on a batch of G groups at once, on the device of its input: `x` is a (G, n) float32
tensor, each row one group, with `sizes[g]` valid entries at the start of row g (the rest is padding
and ignored). This covers the solver's acc columns (one or N/groupsize groups), lat slabs (N/gr row
blocks x 8 columns) and the plain `bcq` baseline (all columns of a layer at once).

`bcq_fit` follows the reference step by step:
  greedy init (b = sign(r), a = mean|r|);  then `rounds` times:
  LS for a by q warm-started float32 CG steps (eps 1e-6) -> |a| sorted descending -> APoT ->
  exact nearest-level code refit (levels in the reference's sign order, midpoints, ties go right).
It is made fast without changing the result:

* After round 1 the codes are a function of (x, a) only (nearest level), so B^T B and B^T x need
  only, per group, how many entries fall in each level interval and their sum. With x sorted once
  per call and float64 prefix sums, a round is a batched `searchsorted` of 2^q - 1 midpoints: a few
  dozen small torch operations whatever n is.
* The state after a round is its scale vector a. If a round returns the scales of an earlier round,
  the sequence is periodic from there on (a fixed point is period 1) and the scales after round
  `rounds` are known; the loop stops once every group has reached its cycle (one host read of a flag
  per round). The result is identical to running all rounds.
* A fit of up to SMALL_BATCH groups (acc without groups: one group per column; lat without groups:
  8 per slab) runs its rounds group by group with Python floats on the host (one copy of the sorted
  group), each group stopping at its own cycle: a round is then a few hundred scalar steps (about 35 us),
  where the batched path's few dozen torch operations cost more than the arithmetic on any device and
  run until the slowest group of the batch cycles. The operations are those of the batched path in the
  same order, so a group gets the same bits either way (tested).
* Where a C compiler is, the rounds run in C on the host (`bcq.c`, built at first use by
  `llm1bit.quant.native`), group by group, each stopping at its own repeat: the same steps in the same order
  and precision, the same bits as both paths above (tested on a CPU), a lat slab's fit ~5x faster than the
  batched torch rounds on a CPU. On a GPU too: the greedy start is computed on the device, the fit's inputs
  copied to the host once (one synchronisation, where the torch rounds synchronise every round for the early
  exit), the scales copied back; a torch round is some 85 calls of a few microseconds each on any device
  (not measured on a GPU: none was available). Without a compiler (one warning) the two paths above run.

Deviations from the reference, each deliberate:
* B^T x is summed in float64 and rounded to float32 (the reference sums in float32 on the GPU in
  an unspecified order); the CG itself is float32, every sum over q left to right.
* Equal levels (two equal scales, or a zero scale) are ordered by a stable sort, so the code vector
  chosen for a tied level is deterministic (the reference's GPU sort leaves it unspecified).
* With rounds == 0 or q == 1 the reference skips the refinement and returns unrounded scales and
  greedy codes that can be 0 (spec §9.12). Here the scales are still made |a|, sorted, APoT-rounded
  (when APoT is on) and the codes refit to the nearest level, so codes are always +-1 and scales
  always representable."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from llm1bit.quant.numerics.apot import apot_scalar, apot_split, apot_values

CG_EPS = 1e-6  # float32 in every use
MAX_PERIOD = 4  # longest cycle of scale vectors the early exit looks for
SMALL_BATCH = 8  # fits of this many groups or fewer run their rounds with Python floats on the host
COMPACT_MIN = 64  # a batch of fewer groups is not shrunk to its unfinished groups
NATIVE_SOURCE = Path(__file__).with_name("bcq.c")  # the rounds in C on the host (`native_rounds`)
NATIVE_MAX_Q = 8  # the largest q bcq.c takes


@lru_cache(maxsize=32)
def sign_table(q: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2**q, q) float32 sign vectors in the reference's order L_m = [+1 (+) L_{m-1}] ++ [-1 (+) L_{m-1}].

    For q = 2: (+,+), (+,-), (-,+), (-,-). Row l has -1 in plane b iff bit (q-1-b) of l is set."""
    rows = torch.arange(2**q)[:, None]
    bits = (rows >> (q - 1 - torch.arange(q))[None, :]) & 1
    return (1 - 2 * bits).to(device=device, dtype=torch.float32)


@lru_cache(maxsize=32)
def code_table(q: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """sign_table(q) transposed, as int8 (q, 2**q): column l holds the codes of sign vector l."""
    return sign_table(q, device).T.contiguous().to(torch.int8)


def levels(a: torch.Tensor) -> torch.Tensor:
    """(G, 2**q) level values s . a, summed plane by plane in order b = 0 .. q-1 in float32.

    The same order as `BinaryCodes.dequantize`, so a weight set to a level equals its dequantization bit for bit."""
    signs = sign_table(a.shape[1], a.device)
    out = signs[None, :, 0] * a[:, None, 0]
    for b in range(1, a.shape[1]):
        out = out + signs[None, :, b] * a[:, None, b]
    return out


@dataclass
class LevelTable:
    """Sorted levels of each group and the midpoints between neighbours (what the search compares to)."""

    values: torch.Tensor  # (G, L) float32, ascending
    order: torch.Tensor  # (G, L) int64 index into sign_table of each sorted level
    mids: torch.Tensor  # (G, L-1) float32

    @classmethod
    def build(cls, a: torch.Tensor) -> LevelTable:
        values, order = torch.sort(levels(a), dim=1, stable=True)
        mids = (values[:, :-1] + values[:, 1:]) * 0.5  # == / 2 exactly
        return cls(values, order, mids)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Sorted-level index of each entry of x (G, n), row g against group g: the number of midpoints <= x
        (x < mid goes left, ties go right)."""
        if self.mids.shape[1] == 0:
            return torch.zeros(x.shape, dtype=torch.int64, device=x.device)
        return torch.searchsorted(self.mids, x, right=True)


def assign(
    x: torch.Tensor, a: torch.Tensor, table: LevelTable | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest-level codes for fixed scales a (G, q): (codes int8 (q, G, n), xhat float32 (G, n))."""
    table = table or LevelTable.build(a)
    idx = table.index(x)
    codes = code_table(a.shape[1], x.device)[:, table.order.gather(1, idx)]
    return codes, table.values.gather(1, idx)


def greedy(x: torch.Tensor, sizes: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual init: b_i = sign(r), a_i = mean_group |r|. Padding must be 0. Returns (B (G, n, q), a (G, q))."""
    r = x.clone()
    n = sizes.to(torch.float32)
    # plane by plane in (G, q, n) (contiguous writes and a contiguous B^T for the normal equations)
    codes = torch.empty((x.shape[0], q, x.shape[1]), dtype=torch.float32, device=x.device)
    a = torch.empty((x.shape[0], q), dtype=torch.float32, device=x.device)
    for i in range(q):
        b = torch.sign(r, out=codes[:, i])
        torch.div(r.abs().sum(dim=1), n, out=a[:, i])
        r -= a[:, i, None] * b
    return codes.transpose(1, 2), a


def cg(A: torch.Tensor, rhs: torch.Tensor, a: torch.Tensor, iters: int) -> torch.Tensor:
    """The reference's conjugate gradient for A a = rhs per group (A (G, q, q), rhs and a (G, q)): warm start at
    a, `iters` steps, eps 1e-6, float32. Every sum over q runs left to right (what `_cg_scalar` does; `bmm`
    sums that way too, tested). Vectors are kept as (G, q, 1) columns: a round is op-count bound."""
    eps = _constant(CG_EPS, A.device)
    a = a[:, :, None]
    r = rhs[:, :, None] - torch.bmm(A, a)
    p = r
    rs = (r * r).sum(1, keepdim=True)
    for it in range(iters):
        ap = torch.bmm(A, p)
        alpha = rs / ((p * ap).sum(1, keepdim=True) + eps)
        a = a + alpha * p
        if it == iters - 1:
            break  # the last step's residual and direction are never read (a round is op-count bound)
        r = r - alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + (rs_new / (rs + eps)) * p
        rs = rs_new
    return a[:, :, 0]


@lru_cache(maxsize=64)
def _constant(value: float, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 0-d tensor (an operation with one costs less than with a Python number, which is wrapped each time)."""
    return torch.tensor(value, dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _cg_scalar(q: int, iters: int):
    """`cg` for one group with Python float32 scalars, unrolled into straight-line code.

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
    namespace = {"eps": np.float32(CG_EPS)}
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from integers only
    return namespace[f"cg_{q}"]


@dataclass
class BCQFit:
    scales: torch.Tensor  # (G, q) float32, non-negative, descending
    signs: torch.Tensor | None  # (G, q, terms) int8 APoT terms (None without APoT)
    exps: torch.Tensor | None
    rounds_run: int  # rounds actually computed (<= rounds thanks to the exact early exit)


def _sorted_abs(a: torch.Tensor) -> torch.Tensor:
    return torch.sort(a.abs(), dim=1, descending=True).values


def _finish(raw: torch.Tensor, apot_terms: int | None) -> BCQFit:
    """The fit of sorted |a| `raw` (G, q): APoT when requested (spec §1.3 step 3)."""
    if apot_terms is None:
        return BCQFit(raw, None, None, 0)
    values, signs, exps = apot_split(raw, apot_terms)
    return BCQFit(values, signs, exps, 0)


def bcq_fit(
    x: torch.Tensor,
    sizes: torch.Tensor,
    q: int,
    rounds: int,
    apot_terms: int | None,
    early_exit: bool = True,
) -> BCQFit:
    """Scales of BCQ(x, q, rounds, bst=True, apot_terms) for G groups (x (G, n) float32, padding = 0).

    The codes that go with the scales are `assign(x, fit.scales)` (the reference's last refit step)."""
    x = x.to(torch.float32).contiguous()
    sizes = sizes.to(device=x.device, dtype=torch.int64)
    codes, a = greedy(x, sizes, q)
    if rounds == 0 or q == 1:
        return _finish(_sorted_abs(a), apot_terms)
    # round 1 starts from the greedy codes (which may hold zeros)
    ct = codes.transpose(1, 2)
    btb = torch.bmm(ct, codes)
    btx = torch.bmm(ct.double(), x.double()[:, :, None])[:, :, 0].float()
    del codes, ct
    if q <= NATIVE_MAX_Q and (rounds_fn := native_rounds()) is not None:
        # on every device: host work (a GPU's torch rounds are as op-count bound as a CPU's; module docstring)
        host = [t.cpu() for t in (x, sizes, btb, btx, a)]
        fit = _rounds_native(rounds_fn, host[0], host[1], q, rounds, apot_terms, early_exit, *host[2:])
        if x.device.type != "cpu":
            fit.scales, fit.signs, fit.exps = (
                None if t is None else t.to(x.device) for t in (fit.scales, fit.signs, fit.exps)
            )
        return fit
    if x.shape[0] <= SMALL_BATCH:
        fits = [
            _rounds_one(x[g], int(sizes[g]), q, rounds, apot_terms, early_exit, btb[g], btx[g], a[g])
            for g in range(x.shape[0])
        ]
        if len(fits) == 1:
            return fits[0]
        cat = [torch.cat([getattr(f, k) for f in fits]) if apot_terms else None for k in ("signs", "exps")]
        return BCQFit(torch.cat([f.scales for f in fits]), *cat, max(f.rounds_run for f in fits))
    return _rounds_many(x, sizes, q, rounds, apot_terms, early_exit, btb, btx, a)


@lru_cache(maxsize=1)
def native_rounds():
    """bcq.c's `llm1bit_bcq_rounds` (built at first use), or None after one warning when it cannot be had (no C
    compiler, a failed build): the rounds then run in torch and Python floats, with the same result, slower."""
    import ctypes
    import subprocess

    from llm1bit.errors import warn
    from llm1bit.quant import native

    ptr, num = ctypes.c_void_p, ctypes.c_int
    try:
        lib, _ = native.load_library(
            NATIVE_SOURCE,
            "libbcq",
            ("llm1bit_bcq_abi_version", 1),
            {"llm1bit_bcq_rounds": (num, [num] * 6 + [ptr] * 6)},
        )
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        warn(
            f"the solver's BCQ rounds run in torch, slower, same result: could not build {NATIVE_SOURCE.name} ({exc})"
        )
        return None
    return lib.llm1bit_bcq_rounds


def _rounds_native(rounds_fn, x, sizes, q, rounds, apot_terms, early_exit, btb, btx, a) -> BCQFit:
    """Refinement rounds of a batch (CPU tensors) in C (bcq.c), each group stopping at its own repeat: the bits
    of `_rounds_many` (tested), a group's round in well under a microsecond instead of a batch's ~85 torch calls."""
    G, n = x.shape
    sizes_np = np.ascontiguousarray(sizes.detach().numpy(), dtype=np.int64)
    x_np = x.detach().numpy()
    if int(sizes_np.min()) < n:  # padding sorts last
        x_np = np.where(np.arange(n)[None, :] >= sizes_np[:, None], np.float32(np.inf), x_np)
    xs = np.sort(x_np, axis=1)
    btb_np, btx_np, a_np = (np.ascontiguousarray(t.detach().numpy(), dtype=np.float32) for t in (btb, btx, a))
    out = np.empty((G, q), dtype=np.float32)
    ran = rounds_fn(
        G,
        n,
        q,
        rounds,
        apot_terms or 0,
        int(early_exit),
        *(t.ctypes.data for t in (xs, sizes_np, btb_np, btx_np, a_np, out)),
    )
    if ran < 0:
        raise RuntimeError(f"bcq.c refused a fit of q = {q}, rounds = {rounds}")
    fit = _finish(torch.from_numpy(out), apot_terms)
    fit.rounds_run = ran
    return fit


def _rounds_one(x, n, q, rounds, apot_terms, early_exit, btb, btx, a) -> BCQFit:
    """Refinement rounds for a single group with float32 scalars on the host (a round costs tens of microseconds)."""
    device = x.device
    xs = np.sort(x[:n].cpu().numpy())
    csum = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(xs, dtype=np.float64, out=csum[1:])
    table = sign_table(q).numpy()
    signs_int = table.astype(np.int64)
    sign_cols = [np.ascontiguousarray(table[:, b]) for b in range(q)]
    bounds = np.empty(2**q + 1, dtype=np.int64)
    bounds[0] = 0
    bounds[-1] = n
    half = np.float32(0.5)
    solve = _cg_scalar(q, q)
    A = tuple(btb.cpu().numpy().ravel())
    rhs, av = tuple(btx.cpu().numpy()), tuple(a.cpu().numpy())
    history: list[
        tuple
    ] = []  # (scales as a tuple of floats, APoT signs, APoT exponents) after round 1, 2, ...
    final = None
    for r in range(1, rounds + 1):
        av = solve(*A, *rhs, *av)
        vals = sorted([abs(float(v)) for v in av], reverse=True)
        if apot_terms is None:
            state = (tuple(vals), None, None)
        else:
            terms = [apot_scalar(v, apot_terms) for v in vals]
            state = (tuple([t[0] for t in terms]), [t[1] for t in terms], [t[2] for t in terms])
        history.append(state)
        if r == rounds:
            break
        if early_exit and r >= 2:
            for period in range(1, min(MAX_PERIOD, r - 1) + 1):
                j = r - period
                if history[j - 1][0] == state[0]:
                    final = history[j + (rounds - j - 1) % period]  # round t > j, t = rounds mod p
                    break
            if final is not None:
                break
        av = tuple(np.array(state[0], dtype=np.float32))
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
    scales = torch.tensor([state[0]], dtype=torch.float32, device=device)
    if apot_terms is None:
        return BCQFit(scales, None, None, len(history))
    signs, exps = (torch.tensor([v], dtype=torch.int8, device=device) for v in state[1:])
    return BCQFit(scales, signs, exps, len(history))


@lru_cache(maxsize=32)
def _normal_table(q: int, device: torch.device | str) -> torch.Tensor:
    """float64 (L, q*q + q): per sign vector s, the entries of s s^T (its B^T B) then s (its B^T x per unit x)."""
    signs = sign_table(q, device).double()
    return torch.cat([(signs[:, :, None] * signs[:, None, :]).reshape(2**q, q * q), signs], dim=1)


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """x sorted along its rows. On a CPU through NumPy: torch's CPU sort of many short rows is ~30x slower than
    NumPy's vectorised one (measured: 432 vs 15 us for 128 x 128 float32), and a sort's result is the same
    either way (equal values are equal floats; -0.0 and +0.0 compare equal wherever xs is used)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def _rounds_many(x, sizes, q, rounds, apot_terms, early_exit, btb, btx, a) -> BCQFit:
    """Refinement rounds for a batch of groups on their device. Each round logs which groups' scales repeat
    which earlier round's; a group that has repeated keeps running with the batch until at least half of the
    batch has, then the finished groups' results are read from the history (`_resolve`) and the batch shrinks
    to the others (the search, sorts and gathers cost in proportion to it); the loop ends when every group
    has repeated."""
    G, n = x.shape
    device = x.device
    # [entry count, prefix sum] of the sorted x, so that one gather at the level boundaries gives both
    prefix = torch.empty((G, 2, n + 1), dtype=torch.float64, device=device)
    prefix[:, 0] = torch.arange(n + 1, dtype=torch.float64, device=device)
    prefix[:, 1, 0] = 0.0
    if int(sizes.min()) == n:  # no padding (a host read: one per fit)
        xs = _sort_rows(x)
        torch.cumsum(xs.double(), dim=1, out=prefix[:, 1, 1:])
    else:
        pad = torch.arange(n, device=device)[None, :] >= sizes[:, None]
        xs = _sort_rows(torch.where(pad, torch.inf, x))  # padding sorts last
        torch.cumsum(torch.where(pad, 0.0, xs).double(), dim=1, out=prefix[:, 1, 1:])
    # the stats below the first level (none) and up to the last one (all) of each group
    lowest = prefix.new_zeros((G, 2, 1))
    highest = prefix.gather(2, sizes[:, None, None].expand(-1, 2, 1))
    table = _normal_table(q, device)
    signs32_t = sign_table(q, device).T.contiguous()
    half = _constant(0.5, device)
    mids = torch.empty((G, 2**q - 1), dtype=torch.float32, device=device)
    rows = torch.arange(G, device=device)  # the group of each row of the batch
    final = torch.empty((G, q), dtype=torch.float32, device=device)  # sorted |a| of the state after `rounds`
    history: list[torch.Tensor] = []  # the batch's scales, the last rounds
    raws: list[torch.Tensor] = []  # the batch's sorted |a| before APoT; raws[i] is round base + i + 1
    base = 0
    log: list[tuple[int, torch.Tensor]] = []  # (round r, (MAX_PERIOD, B) scales equal those of round r - p)
    done = torch.zeros(G, dtype=torch.bool, device=device)
    B = G  # rows in the batch
    r = 0
    for r in range(1, rounds + 1):
        raw = _sorted_abs(cg(btb, btx, a, q))
        a = raw if apot_terms is None else apot_values(raw, apot_terms)
        history = history[-MAX_PERIOD:] + [a]
        raws.append(raw)
        if r == rounds:
            break
        if early_exit and r >= 2:
            periods = min(MAX_PERIOD, r - 1)
            past = history[-1 - periods : -1][::-1] + [a.new_full(a.shape, torch.nan)] * (
                MAX_PERIOD - periods
            )
            equal = (torch.stack(past) == a).all(-1)  # period p at index p - 1
            log.append((r, equal))
            done |= equal.any(0)
            finished = int(done.sum())
            if finished == B:
                break
            if 2 * finished >= B >= COMPACT_MIN:
                pick = _resolve(log, rounds, r, B, device) - base
                got = torch.stack(raws)[pick, torch.arange(B, device=device)]
                final[rows[done]] = got[done]
                keep = (~done).nonzero()[:, 0]
                rows, xs, prefix, lowest, highest, mids, a = (
                    t[keep] for t in (rows, xs, prefix, lowest, highest, mids, a)
                )
                history = [t[keep] for t in history]
                raws = [t[keep] for t in raws[-MAX_PERIOD:]]  # a later repeat looks back at most MAX_PERIOD
                base = r - len(raws)
                log, done = [], done[keep]  # the groups kept have not repeated yet
                B -= finished
        # B^T B and B^T x of the nearest-level codes, from interval counts and sums of the sorted x
        values, order = torch.sort(torch.mm(a, signs32_t), dim=1, stable=True)  # products are exact (+-a)
        torch.add(values[:, :-1], values[:, 1:], out=mids).mul_(half)
        bounds = torch.searchsorted(xs, mids)  # entries x < mid go left
        stats = prefix.gather(2, bounds[:, None, :].expand(-1, 2, -1))  # (B, 2, L - 1)
        # counts and sums per sorted level
        per_level = torch.diff(stats, dim=2, prepend=lowest, append=highest)
        by_sign = torch.zeros_like(per_level).scatter_(2, order[:, None, :].expand(-1, 2, -1), per_level)
        normal = torch.mm(by_sign.view(2 * B, -1), table).float().view(B, 2, -1)  # one small 2-D product
        btb = normal[:, 0, : q * q].reshape(B, q, q)  # exact integers
        btx = normal[:, 1, q * q :]
    pick = _resolve(log, rounds, r, B, device) - base
    final[rows] = torch.stack(raws)[pick, torch.arange(B, device=device)]
    fit = _finish(final, apot_terms)
    fit.rounds_run = r
    return fit


def _resolve(
    log: list[tuple[int, torch.Tensor]], rounds: int, rounds_run: int, G: int, device
) -> torch.Tensor:
    """Per group, the round (0-based) whose state equals the state after `rounds` rounds: at the first
    logged round r where its scales equal those of round j = r - p (the shortest such period p), the sequence
    is periodic from j on, so it is the round t in j + 1 .. r with t = rounds (mod p); the last round for
    groups that never repeat. (t = j would give the right scales but maybe other APoT terms: round j's
    unrounded scales come from round j - 1, which may lie before the cycle.)"""
    pick = torch.full((G,), rounds_run - 1, dtype=torch.int64, device=device)
    if not log:
        return pick
    equal = torch.stack([e for _, e in log])  # (T, P, G)
    seen = equal.any(1)  # (T, G)
    t = seen.to(torch.uint8).argmax(0)  # the first logged round that repeats
    cols = torch.arange(G, device=device)
    period = equal[t, :, cols].to(torch.uint8).argmax(1) + 1  # (G,)
    r = torch.tensor([r for r, _ in log], device=device)[t]
    j = r - period
    return torch.where(seen.any(0), j + (rounds - j - 1) % period, pick)


def group_rows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a (..., n) tensor into runs of `size` along the last axis: ((..., G, size) zero-padded, sizes (G,))."""
    n = x.shape[-1]
    G = -(-n // size)
    if G * size != n:
        x = torch.nn.functional.pad(x, (0, G * size - n))
    sizes = torch.full((G,), size, dtype=torch.int64, device=x.device)
    sizes[-1] = n - (G - 1) * size
    return x.reshape(x.shape[:-1] + (G, size)), sizes
