"""Acc-mode incoherence processing (spec §3.2): diagonal rescale plus random orthogonal rotations.

Forward (before the solver), in float64:
  1. H <- H / max|H|;  s_j = (max(H_jj, 1e-8) / max(||W[:, j]||^2, 1e-8))^(1/4), s >= 1e-8;
     W <- W diag(s),  H <- diag(s)^-1 H diag(s)^-1
  2. H <- H K / (tr H + 1e-8) + 0.01 I;  W <- U W V^T,  H <- V H V^T
Undo (after it): W <- (U^T Q V) diag(s)^-1.

Rotations, procedure 2 (`PHILOX_HADAMARD`, format version 3 and later): U (N x N) and V (K x K) are
random signed Hadamard networks, each a product of S = 2 * ceil(log2 n) stages (S = 2 for n = 1):

    stage t:  x <- D_t x  (random signs),  x <- P_t x  (random permutation, (P x)_i = x[perm_t[i]]),
              then (x_2i, x_2i+1) <- ((x_2i + x_2i+1) * c, (x_2i - x_2i+1) * c),  c = sqrt(0.5) in float64,
              for i < n // 2; an odd n leaves its last element (a different one each stage) alone.

* Randomness: one 128-bit key per quantized module, key = the first 16 bytes of
  sha256(f"{seed}:{module}") read as two little-endian uint64 words (`rotation_key`). U draws from
  `numpy.random.Philox(key=key, counter=[0, 0, 0, 0]).random_raw()`, V from counter [0, 0, 0, 1]:
  2 * S * n raw uint64 words, stage by stage, first n sign words, then n permutation words. The sign
  of element i is -1 iff the top bit of its word is set; perm_t = the stable argsort of the n
  permutation words. Only the raw Philox4x64-10 stream is used (NEP 19 keeps bit generator streams
  stable across numpy versions and machines), never Generator methods, whose algorithms may change.
* Arithmetic: only +, -, x by +-1 and x by the correctly rounded constant sqrt(0.5), elementwise in
  float64 (no QR, det, sin/cos or matmul, no reduction whose order could vary), so the transform gives
  the same bits on every IEEE-754 machine. Each stage is orthogonal (a 2 x 2 Hadamard block
  [[1, 1], [1, -1]] / sqrt 2 per pair), so M M^T = I up to float64 rounding (~1e-15).
* Why S = 2 ceil(log2 n): a stage at most doubles the coordinates one input reaches, so ceil(log2 n)
  stages are the minimum; with random pairings some pairs join two already reached coordinates
  (about 1/3 of the entries are still unreached after ceil(log2 n) stages), and the unreached fraction
  then roughly squares each stage. Measured for n = 64 .. 4096, every entry of M is reached after
  1.5 ceil(log2 n) stages (n = 7: after 6 = 2 ceil(log2 n)), and from there on the entries' spread is
  that of a Haar-random orthogonal matrix (kurtosis of sqrt(n) M_ij 2.9 - 3.0, max |M_ij| sqrt(n)
  3.4 - 5.3 against Haar's 3.5 - 5.5). 2 ceil(log2 n) leaves a margin, at about 5 ns per element and
  stage. (Some entries may still be exactly 0 by cancellation: they are sums of +-2^(-S/2).)
* Checksum: sha256 over b"llm1bit-rotation-2", then for U and V: n and S (8-byte little-endian),
  the signs (int8, S x n) and the permutations (little-endian int32, S x n); its first 16 hex digits
  are stored with the key, and regenerating the factors on reload must reproduce them (a numpy whose
  Philox stream or argsort differed would otherwise silently give other weights): a mismatch is
  `RotationMismatch`, a one-line `UserError`.

Procedure 1 (`LEGACY_BUTTERFLY`, folders of format versions 1 and 2, `legacy_rotations`): U and V
are "butterflies" P_out F_2 F_1 P_in drawn from `numpy.random.default_rng(seed)` (U first, then V),
a pure function of (seed, N, K): n = p0 * p1 from the prime factors of n taken alternately
(ascending), F_1 applies its own random p0 x p0 orthogonal block along the first mixed-radix axis for
each of the p1 fibres, F_2 a p1 x p1 block along the second, and the P are random permutations.
Blocks of size 2 are rotations by a uniform angle; larger ones are Haar rotations (QR of a Gaussian
matrix, det +1, like scipy's special_ortho_group). A factor of 1 is the identity, so a prime n gets
one random n x n block (where the reference crashes in scipy). Generator methods and LAPACK make it
reproducible on one software stack only, and every layer of one shape shares one rotation; it is
kept only to load those folders exactly as before.

Deviations from the reference, each deliberate:
* Rotations: the reference draws its butterflies from unseeded global RNGs, so its acc runs are not
  reproducible; here they are a function of (seed, module name), stored as a key plus checksum, so a
  stored result needs only (key, s) and reloads bit for bit on any machine.
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

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from llm1bit.errors import UserError

if TYPE_CHECKING:
    import torch


# Rotation procedures of acc-mode incoherence (documented above):
# 1 = numpy default_rng butterflies keyed by (seed, N, K), folders of format versions 1 and 2;
# 2 = Philox raw bits -> signed Hadamard stages keyed per module (seed, name), format version 3.
LEGACY_BUTTERFLY = 1
PHILOX_HADAMARD = 2


@dataclass
class Incoherence:
    """Acc-mode incoherence processing: codes live in the basis U (W diag(s)) V^T.

    U (N x N) and V (K x K) are random orthogonal matrices regenerated on demand: from the 128-bit
    `key` (procedure `PHILOX_HADAMARD`; `checksum` is the sha256 prefix of the generated factors,
    which regeneration must reproduce) or, for old folders, from `seed` (`LEGACY_BUTTERFLY`).
    `rescale` is the diagonal s. The original-basis weight is (U^T Q V) diag(1/s)."""

    rescale: torch.Tensor  # float32 (K,)
    key: tuple[int, int] | None = None  # two uint64 words (procedure 2)
    checksum: str | None = None  # 16 hex digits (procedure 2)
    version: int = PHILOX_HADAMARD
    seed: int | None = None  # procedure 1 only


_C = math.sqrt(0.5)  # correctly rounded (IEEE sqrt)


class RotationMismatch(UserError, ValueError):
    """The rotation factors regenerated from a stored key do not give the stored checksum.

    A `UserError` (one line, exit 1); also a ValueError, so the loader's check of a module's packed
    tensors reports it with the file and module name."""


def rotation_key(seed: int, module: str) -> tuple[int, int]:
    """The 128-bit Philox key of one module: sha256(f"{seed}:{module}")[:16] as two little-endian uint64."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    return int.from_bytes(digest[0:8], "little"), int.from_bytes(digest[8:16], "little")


def stage_count(n: int) -> int:
    """S = 2 ceil(log2 n) stages (2 for n = 1); see the module docstring for why."""
    return 2 * max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class SignedHadamard:
    """The orthogonal n x n matrix M = B P_S D_S ... B P_1 D_1 (procedure 2), applied without forming it."""

    n: int
    negative: np.ndarray  # bool (S, n): stage t multiplies x_i by -1 where negative[t, i]
    perms: np.ndarray  # int32 (S, n): stage t then takes x <- x[perms[t]]

    @classmethod
    def generate(cls, n: int, key: tuple[int, int], stream: int) -> SignedHadamard:
        stages = stage_count(n)
        bits = np.random.Philox(
            key=np.array(key, dtype=np.uint64), counter=np.array([0, 0, 0, stream], dtype=np.uint64)
        )
        raw = np.asarray(bits.random_raw(2 * stages * n), dtype=np.uint64).reshape(stages, 2, n)
        negative = (raw[:, 0] >> np.uint64(63)).astype(bool)
        perms = np.argsort(raw[:, 1], axis=1, kind="stable").astype(np.int32)
        for a in (negative, perms):
            a.setflags(write=False)
        return cls(n, negative, perms)

    def digest_into(self, h) -> None:
        stages = self.perms.shape[0]
        h.update(self.n.to_bytes(8, "little") + stages.to_bytes(8, "little"))
        h.update(np.where(self.negative, -1, 1).astype(np.int8).tobytes())
        h.update(self.perms.astype("<i4").tobytes())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """M @ x for x float64 of shape (n, m): per stage signs, permutation, butterflies."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        n, h = self.n, self.n - self.n % 2
        for neg, perm in zip(self.negative, self.perms, strict=True):
            sign = np.where(neg, -1.0, 1.0)
            out = np.empty_like(x)
            a = x[perm[0:h:2]]
            a *= sign[perm[0:h:2], None]  # exact
            b = x[perm[1:h:2]]
            b *= sign[perm[1:h:2], None]
            np.multiply(a + b, _C, out=out[0:h:2])
            np.subtract(a, b, out=a)
            np.multiply(a, _C, out=out[1:h:2])
            if h < n:
                out[h] = x[perm[h]] * sign[perm[h]]
            x = out
        return x

    def apply_t(self, x: np.ndarray) -> np.ndarray:
        """M^T @ x for x float64 of shape (n, m): per stage (last first) butterflies (symmetric), the
        inverse permutation, signs."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        n, h = self.n, self.n - self.n % 2
        for neg, perm in zip(self.negative[::-1], self.perms[::-1], strict=True):
            sign = np.where(neg, -1.0, 1.0)
            out = np.empty_like(x)
            a, b = x[0:h:2], x[1:h:2]
            even = (a + b) * _C
            even *= sign[perm[0:h:2], None]
            out[perm[0:h:2]] = even
            odd = np.subtract(a, b, out=even)
            odd *= _C
            odd *= sign[perm[1:h:2], None]
            out[perm[1:h:2]] = odd
            if h < n:
                out[perm[h]] = x[h] * sign[perm[h]]
            x = out
        return x

    def dense(self) -> np.ndarray:
        return self.apply(np.eye(self.n))


@dataclass(frozen=True)
class Rotations:
    """(U for the N output rows, V for the K input columns) and the checksum of their factors."""

    u: SignedHadamard | Butterfly
    v: SignedHadamard | Butterfly
    checksum: str | None  # None for the legacy procedure


@lru_cache(maxsize=64)
def rotations(key: tuple[int, int], n: int, k: int) -> Rotations:
    """Procedure 2: a pure function of (key, N, K); U from Philox stream 0, V from stream 1."""
    u = SignedHadamard.generate(n, key, 0)
    v = SignedHadamard.generate(k, key, 1)
    h = hashlib.sha256(f"llm1bit-rotation-{PHILOX_HADAMARD}".encode())
    u.digest_into(h)
    v.digest_into(h)
    return Rotations(u, v, h.hexdigest()[:16])


def rotations_of(inc: Incoherence, n: int, k: int) -> Rotations:
    """The rotations an `Incoherence` record names, checked against its stored checksum.

    Raises `RotationMismatch` (one line) when the regenerated factors differ from the stored ones."""
    if inc.version == LEGACY_BUTTERFLY:
        if inc.seed is None:
            raise ValueError("a legacy (procedure 1) incoherence record needs its seed")
        u, v = legacy_rotations(int(inc.seed), n, k)
        return Rotations(u, v, None)
    if inc.version != PHILOX_HADAMARD:
        raise ValueError(
            f"unknown rotation procedure {inc.version}; this llm1bit knows {LEGACY_BUTTERFLY} and {PHILOX_HADAMARD}"
        )
    if inc.key is None:
        raise ValueError("an incoherence record of procedure 2 needs its rotation key")
    rot = rotations((int(inc.key[0]), int(inc.key[1])), n, k)
    if inc.checksum is not None and inc.checksum != rot.checksum:
        raise RotationMismatch(
            f"the rotations regenerated from key {key_hex(inc.key)} for {n} x {k} have checksum "
            f"{rot.checksum}, the stored one is {inc.checksum} (this numpy's Philox stream or argsort "
            "differs from the one that quantized it, or the file is damaged)"
        )
    return rot


def key_hex(key: tuple[int, int]) -> str:
    return f"{int(key[1]):016x}{int(key[0]):016x}"


def incoherence_preprocess(
    w: np.ndarray, h: np.ndarray, seed: int, module: str = "", version: int = PHILOX_HADAMARD
) -> tuple[np.ndarray, np.ndarray, Incoherence]:
    """Rescale and rotate: (W' float32 (N, K), H' float64 (K, K), Incoherence) with W' = U W diag(s) V^T.

    The rotations are keyed by (seed, module) (procedure 2), or by (seed, N, K) with
    `version=LEGACY_BUTTERFLY` (procedure 1, kept for tests of old folders)."""
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
    rescale = torch.from_numpy(s)
    if version == LEGACY_BUTTERFLY:
        inc = Incoherence(rescale=rescale, version=LEGACY_BUTTERFLY, seed=seed)
    else:
        key = rotation_key(seed, module)
        inc = Incoherence(rescale=rescale, key=key, checksum=rotations(key, n, k).checksum)
    rot = rotations_of(inc, n, k)
    u, v = rot.u, rot.v
    w64 = v.apply(u.apply(w64).T).T  # U W V^T
    h = v.apply(v.apply(h).T).T  # V H V^T
    h = (h + h.T) / 2
    return w64.astype(np.float32), h, inc


def undo_incoherence(weight, inc: Incoherence):
    """The original-basis weight (U^T Q V) diag(1/s) of a rotated-basis weight Q (torch float32 (N, K))."""
    import torch

    q = weight.detach().cpu().numpy().astype(np.float64)
    n, k = q.shape
    rot = rotations_of(inc, n, k)
    w = rot.v.apply_t(rot.u.apply_t(q).T).T  # U^T Q V = (V^T (U^T Q)^T)^T
    w = w / inc.rescale.detach().cpu().numpy().astype(np.float64)[None, :]
    return torch.from_numpy(w.astype(np.float32))


# Procedure 1 (format versions 1 and 2): numpy Generator + LAPACK butterflies, keyed by (seed, N, K).


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
def legacy_rotations(seed: int, n: int, k: int) -> tuple[Butterfly, Butterfly]:
    """Procedure 1: (U for the N output rows, V for the K input columns), a function of (seed, N, K)
    on one software stack (numpy Generator methods and LAPACK may differ elsewhere)."""
    rng = np.random.default_rng(seed)
    u = Butterfly.random(n, rng)
    v = Butterfly.random(k, rng)
    return u, v
