"""Acc-mode incoherence processing (spec §3.2): diagonal rescale plus random butterfly rotations.

Forward (before the solver), in float64:
  1. H <- H / max|H|;  s_j = (max(H_jj, 1e-8) / max(||W[:, j]||^2, 1e-8))^(1/4), s >= 1e-8;
     W <- W diag(s),  H <- diag(s)^-1 H diag(s)^-1
  2. H <- H K / (tr H + 1e-8) + 0.01 I;  W <- U W V^T,  H <- V H V^T
Undo (after it): W <- (U^T Q V) diag(s)^-1.

U (N x N) and V (K x K) are "butterflies" P_out F_2 F_1 P_in: n = p0 * p1 from the prime factors
of n taken alternately (ascending), F_1 applies its own random p0 x p0 orthogonal block along the
first mixed-radix axis for each of the p1 fibres, F_2 a p1 x p1 block along the second, and the P
are random permutations. Blocks of size 2 are rotations by a uniform angle; larger ones are Haar
rotations (QR of a Gaussian matrix, det +1, like scipy's special_ortho_group). A factor of 1 is
the identity, so a prime n gets one random n x n block (where the reference crashes in scipy).

Deviations from the reference, each deliberate:
* Seeded: everything is drawn from `numpy.random.default_rng(seed)`, U first, then V (the
  reference draws from unseeded global RNGs, so its acc runs are not reproducible). `undo_incoherence`
  regenerates U and V from the seed and the shape, so a stored result needs only (seed, s).
* Dead inputs (H_jj == 0) are zeroed by the solver *before* this rescale (spec order: after the
  rotation, where nothing is dead any more). In the reference order a dead input gets a tiny s_j
  and the undo multiplies its column's quantization noise by 1/s_j: on a test layer its weights
  came back as large as 2.8 (typical |w| 0.016); zeroed first they stay below 0.005.
* No FP16 rounding between the steps: the reference casts W to the layer dtype (FP16) after the
  rescale, the rotation and each undo step because it writes into the layer; here the transforms
  run in float64 and the solver gets float32. The rescale s is rounded to float32 first (that is
  what is stored) and the forward transform uses that rounded s, so the undo is its exact inverse
  up to float64 rounding."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llm1bit.quant.result import Incoherence


def prime_factors(n: int) -> list[int]:
    """Prime factors of n in ascending order, with multiplicity (n >= 1; 1 has none)."""
    out = []
    p = 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def butterfly_factors(n: int) -> tuple[int, int]:
    """(p0, p1): products of the ascending prime factors at even and odd positions (768 -> 48 x 16)."""
    pf = prime_factors(n)
    return int(np.prod(pf[0::2], dtype=np.int64)), int(np.prod(pf[1::2], dtype=np.int64))


def random_orthogonal(p: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` independent random p x p rotations (det +1), float64 (count, p, p)."""
    if p == 1:
        return np.ones((count, 1, 1))
    if p == 2:
        theta = 2 * np.pi * rng.random(count)
        c, s = np.cos(theta), np.sin(theta)
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    g = rng.standard_normal((count, p, p))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # Haar: fix the column signs
    flip = np.linalg.det(q) < 0
    q[flip, :, 0] *= -1
    return q


@dataclass(frozen=True)
class Butterfly:
    """The orthogonal n x n matrix M = P_out F_2 F_1 P_in, applied without forming it."""

    n: int
    p0: int
    p1: int
    perm_in: np.ndarray  # (P_in x)_i = x[perm_in[i]]
    blocks1: np.ndarray  # (p1, p0, p0)
    blocks2: np.ndarray  # (p0, p1, p1)
    perm_out: np.ndarray

    @classmethod
    def random(cls, n: int, rng: np.random.Generator) -> Butterfly:
        p0, p1 = butterfly_factors(n)
        perm_in = rng.permutation(n)
        blocks1 = random_orthogonal(p0, p1, rng)
        blocks2 = random_orthogonal(p1, p0, rng)
        perm_out = rng.permutation(n)
        for a in (perm_in, blocks1, blocks2, perm_out):
            a.setflags(write=False)
        return cls(n, p0, p1, perm_in, blocks1, blocks2, perm_out)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """M @ x for x of shape (n, m)."""
        return self._run(x, transpose=False)

    def apply_t(self, x: np.ndarray) -> np.ndarray:
        """M^T @ x for x of shape (n, m)."""
        return self._run(x, transpose=True)

    def _run(self, x: np.ndarray, transpose: bool) -> np.ndarray:
        import torch

        m = x.shape[1]
        b1, b2 = torch.from_numpy(self.blocks1.copy()), torch.from_numpy(self.blocks2.copy())
        if transpose:  # M^T = P_in^T F_1^T F_2^T P_out^T
            y = np.empty_like(x)
            y[self.perm_out] = x
            y = torch.from_numpy(y).reshape(self.p0, self.p1, m)
            y = torch.matmul(b2.transpose(1, 2), y)
            y = torch.matmul(b1.transpose(1, 2), y.transpose(0, 1)).transpose(0, 1)
            y = y.reshape(self.n, m).numpy()
            out = np.empty_like(y)
            out[self.perm_in] = y
            return out
        y = torch.from_numpy(np.ascontiguousarray(x[self.perm_in])).reshape(self.p0, self.p1, m)
        y = torch.matmul(b1, y.transpose(0, 1)).transpose(0, 1)  # F_1: a p0 x p0 block per fibre along axis 0
        y = torch.matmul(b2, y)  # F_2: a p1 x p1 block per fibre along axis 1
        return y.reshape(self.n, m).numpy()[self.perm_out]

    def dense(self) -> np.ndarray:
        return self.apply(np.eye(self.n))


@lru_cache(maxsize=16)
def rotations(seed: int, n: int, k: int) -> tuple[Butterfly, Butterfly]:
    """(U for the N output rows, V for the K input columns), a pure function of (seed, N, K)."""
    rng = np.random.default_rng(seed)
    u = Butterfly.random(n, rng)
    v = Butterfly.random(k, rng)
    return u, v


def incoherence_preprocess(
    w: np.ndarray, h: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, Incoherence]:
    """Rescale and rotate: (W' float32 (N, K), H' float64 (K, K), Incoherence) with W' = U W diag(s) V^T."""
    import torch

    n, k = w.shape
    w64 = w.astype(np.float64)
    h = np.array(h, dtype=np.float64)
    h = h / np.abs(h).max() if np.abs(h).max() > 0 else h
    s = (np.maximum(np.diag(h), 1e-8) / np.maximum((w64 * w64).sum(axis=0), 1e-8)) ** 0.25
    s = np.maximum(s, 1e-8).astype(np.float32)
    s64 = s.astype(np.float64)
    w64 = w64 * s64[None, :]
    h = h / s64[:, None] / s64[None, :]
    h = h * (k / (np.trace(h) + 1e-8)) + 0.01 * np.eye(k)
    u, v = rotations(seed, n, k)
    w64 = v.apply(u.apply(w64).T).T  # U W V^T
    h = v.apply(v.apply(h).T).T  # V H V^T
    h = (h + h.T) / 2
    return w64.astype(np.float32), h, Incoherence(seed=seed, rescale=torch.from_numpy(s))


def undo_incoherence(weight, inc: Incoherence):
    """The original-basis weight (U^T Q V) diag(1/s) of a rotated-basis weight Q (torch float32 (N, K))."""
    import torch

    q = weight.detach().cpu().numpy().astype(np.float64)
    n, k = q.shape
    u, v = rotations(inc.seed, n, k)
    w = v.apply_t(u.apply_t(q).T).T  # U^T Q V = (V^T (U^T Q)^T)^T
    w = w / inc.rescale.detach().cpu().numpy().astype(np.float64)[None, :]
    return torch.from_numpy(w.astype(np.float32))
