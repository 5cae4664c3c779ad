"""Slow, direct statements of what the library computes fast, used only as test oracles: exhaustive search for
the bit allocation ILP, the BCQ algorithm (spec §1) with explicit codes and a plain binary search, and the
fit-then-assign composition of `bcq_fit` and `assign`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from llm1bit.quant.bits.allocation import LayerCost
from llm1bit.quant.numerics.apot import apot
from llm1bit.quant.numerics.bcq import BCQFit, assign, bcq_fit, cg, greedy, levels, sign_table


def brute_force(layers: Sequence[LayerCost], budget: float) -> tuple[float, dict[str, int]] | None:
    """Exhaustive optimum (for tests of small problems): (objective, bits) or None when infeasible."""
    total = sum(layer.params for layer in layers)
    best = None
    for choice in itertools.product(*(sorted(layer.costs) for layer in layers)):
        avg = sum(layer.params * b for layer, b in zip(layers, choice, strict=True)) / total
        if avg > budget * (1 + 1e-9):
            continue
        obj = sum(layer.costs[b] for layer, b in zip(layers, choice, strict=True))
        if best is None or obj < best[0] - 1e-12:
            best = (obj, {layer.name: b for layer, b in zip(layers, choice, strict=True)})
    return best


def bcq(
    x: np.ndarray,
    sizes: np.ndarray,
    q: int,
    rounds: int,
    apot_terms: int | None,
) -> tuple[np.ndarray, np.ndarray, BCQFit]:
    """Fit and refit on numpy arrays: (codes int8 (q, G, n), xhat float32 (G, n), fit)."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    fit = bcq_fit(xt, torch.as_tensor(sizes), q, rounds, apot_terms)
    codes, xhat = assign(xt, fit.scales)
    return codes.numpy(), xhat.numpy(), fit


def bcq_simple(x: np.ndarray, q: int, rounds: int, apot_terms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A direct, slow statement of §1 for one group (1-D x): all rounds, explicit codes, a plain binary search,
    APoT by the numpy reference `apot`. (codes (q, n), scales (q,)). It exists to check `bcq_fit`."""
    x = np.asarray(x, dtype=np.float32)
    codes, a = greedy(torch.from_numpy(x)[None, :], torch.tensor([x.shape[0]]), q)
    B = codes[0].numpy()  # (n, q)
    a = a.numpy()

    def finish(a: np.ndarray) -> np.ndarray:
        a = -np.sort(-np.abs(a), axis=1)
        return a if apot_terms is None else apot(a, apot_terms)[0]

    table = sign_table(q).numpy()
    if rounds > 0 and q > 1:
        for _ in range(rounds):
            btb = B.T @ B
            btx = (B.T.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)
            a = cg(torch.from_numpy(btb)[None], torch.from_numpy(btx)[None], torch.from_numpy(a), q).numpy()
            a = finish(a)
            lv = levels(torch.from_numpy(a))[0].numpy()
            order = np.argsort(lv, kind="stable")
            vals = lv[order]
            mids = (vals[:-1] + vals[1:]) / np.float32(2.0)
            idx = np.array([_binary_search(mids, v) for v in x])
            B = table[order[idx]]
    else:
        a = finish(a)
        lv = levels(torch.from_numpy(a))[0].numpy()
        order = np.argsort(lv, kind="stable")
        vals = lv[order]
        mids = (vals[:-1] + vals[1:]) / np.float32(2.0)
        B = table[order[np.array([_binary_search(mids, v) for v in x])]]
    return B.T.astype(np.int8), a[0]


def _binary_search(mids: np.ndarray, v: np.float32) -> int:
    """Halve over the sorted levels: v < mid goes left, equality goes right (the reference's rule)."""
    lo, hi = 0, len(mids) + 1  # level index in [lo, hi)
    while hi - lo > 1:
        m = (lo + hi) // 2
        if v < mids[m - 1]:
            hi = m
        else:
            lo = m
    return lo
