"""The LUT kernel's layout of one binary-coded layer, built once from its packed tensors (numpy, no dense W).

Rows are gathered into tiles of 16 (one output row per SIMD lane); a tile never straddles two row blocks,
so one scale serves all its lanes (the tile's last rows are padding where a row block is not a multiple
of 16). Tiles go in groups of `RT` = 4, the kernel's unit of work and of threading.

* codes: uint8 (groups, C, q, RT, 16, 4), flat, plus 64 bytes of padding; C = kp / 32, kp = K rounded up
  to 32: the 64 bytes the kernel loads at once are 16 rows x 4 code bytes (32 input columns) of one plane.
  Padding rows and columns have code bytes 0 and meet zero activations (columns) or are never written out
  (rows). Same size as the packed codes (plus padding), and a permutation of them: `packed_codes` gives the
  packed (q, N, ceil(K/8)) tensor back bit for bit, so a layer the kernel serves keeps its codes only here
  (`QuantLinear` releases its `codes` buffer and rebuilds it on demand: saving, the dense path, `.to`).
* mode 0 (`col_block` a multiple of 8: lat): alpha fp32 (groups, C, q, RT, 4), the scale of each tile and
  code byte, applied to the byte's signed sum; groups may mix row blocks.
* mode 1 (any other `col_block`: acc, bcq): alpha fp32 (nrb, q, kp), one scale per input column (a
  col_block > 1 repeats its scale), folded into the tables; each group lies in one row block.

The scales are decoded once, exactly as `packing.unpack` does (the float32 `scales` tensor when stored, else
`apot_scales` of the one-byte power-of-two terms). Acc incoherence keeps the rotation factors (`Rotation`)
for the activation side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TILE = 16
RT = 4
CHUNK = 32  # input columns per 64-byte unit


@dataclass
class Rotation:
    """One acc rotation factor: procedure 2 as arrays the C code walks, else the numpy object itself."""

    n: int
    perms: np.ndarray | None = None  # int32 (stages, n): per stage, the element taken at each position
    flips: np.ndarray | None = None  # uint8 (stages, n): negative[t, perms[t, i]], the sign of the i-th taken
    factor: Any = None  # a legacy Butterfly (procedure 1), applied in numpy


@dataclass
class Prepared:
    n: int
    k: int
    q: int
    kp: int
    mode: int
    groups: int
    nrb: int
    codes: np.ndarray
    alpha: np.ndarray
    rows: np.ndarray  # int32 (groups * RT * 16,)
    group_rb: np.ndarray  # int32 (groups,)
    rescale: np.ndarray | None = None  # float64 (K,): acc's diagonal s
    u: Rotation | None = None  # output side (N)
    v: Rotation | None = None  # input side (K)
    key: tuple = ()
    _struct: Any = field(default=None, repr=False, compare=False)

    def struct(self):
        """The ctypes `lut_layer` pointing into this object's arrays (kept alive by it)."""
        if self._struct is None:
            from llm1bit.quant.hf.kernel.build import LutLayer

            self._struct = LutLayer(
                self.mode,
                self.q,
                self.k,
                self.kp,
                self.n,
                self.groups,
                self.nrb,
                0,
                self.codes.ctypes.data,
                self.alpha.ctypes.data,
                self.rows.ctypes.data,
                self.group_rb.ctypes.data,
            )
        return self._struct

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_struct"] = None
        return state

    @property
    def nbytes(self) -> int:
        arrays = [self.codes, self.alpha, self.rows, self.group_rb]
        for rot in (self.u, self.v):
            if rot is not None and rot.perms is not None:
                arrays += [rot.perms, rot.flips]
        return sum(a.nbytes for a in arrays) + (0 if self.rescale is None else self.rescale.nbytes)


def decoded_scales(tensors: dict, meta: dict) -> np.ndarray:
    """float32 (ceil(K/col_block), ceil(N/row_block), q): the scales `packing.unpack` would rebuild, bit for bit."""
    import torch

    from llm1bit.quant.hf.packing import apot_scales, decode_terms

    scales = tensors.get("scales")
    if scales is None:
        if "scale_terms" in tensors:
            signs, exps = decode_terms(tensors["scale_terms"])
        else:
            signs, exps = tensors["scale_signs"], tensors["scale_exps"]
        scales = apot_scales(signs, exps)
    return scales.detach().to(device="cpu", dtype=torch.float32).numpy()


def tiles_of(n: int, row_block: int, pad_blocks: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows int32 (T, 16), -1 = padding; row block int32 (T,)) with T a multiple of RT.

    pad_blocks: every row block gets a multiple of RT tiles (mode 1, where a group shares one row block)."""
    rows, rbs = [], []
    for rb, start in enumerate(range(0, n, row_block)):
        stop = min(n, start + row_block)
        count = -(-(stop - start) // TILE)
        if pad_blocks:
            count = -(-count // RT) * RT
        r = np.full(count * TILE, -1, dtype=np.int32)
        r[: stop - start] = np.arange(start, stop, dtype=np.int32)
        rows.append(r.reshape(count, TILE))
        rbs.append(np.full(count, rb, dtype=np.int32))
    tiles = np.concatenate(rows) if rows else np.zeros((0, TILE), dtype=np.int32)
    rb = np.concatenate(rbs) if rbs else np.zeros(0, dtype=np.int32)
    extra = (-len(tiles)) % RT
    if extra:
        tiles = np.concatenate([tiles, np.full((extra, TILE), -1, dtype=np.int32)])
        rb = np.concatenate([rb, np.full(extra, rb[-1] if len(rb) else 0, dtype=np.int32)])
    return tiles, rb


def prepare(tensors: dict, meta: dict) -> Prepared:
    """The kernel layout of one binary-coded layer from its packed tensors and meta (`packing.pack`'s output)."""
    n, k = (int(v) for v in meta["shape"])
    col_block, row_block = int(meta["col_block"]), int(meta["row_block"])
    packed = tensors["codes"].detach().cpu().numpy()  # (q, N, ceil(K/8))
    q = packed.shape[0]
    kp = -(-max(k, 1) // CHUNK) * CHUNK
    chunks = kp // CHUNK
    scales = decoded_scales(tensors, meta)  # (ceil(K/col_block), nrb, q)
    nrb = scales.shape[1]
    mode = 0 if col_block % 8 == 0 else 1
    tiles, tile_rb = tiles_of(n, row_block, pad_blocks=mode == 1)
    groups = len(tiles) // RT

    # codes: (q, rows + one zero row, kp / 8) -> gather the tiles' rows -> (groups, C, q, RT, 16, 4)
    src = np.zeros((q, n + 1, kp // 8), dtype=np.uint8)
    src[:, :n, : packed.shape[2]] = packed
    lanes = np.where(tiles < 0, n, tiles).reshape(-1)
    codes = src[:, lanes].reshape(q, groups, RT, TILE, chunks, 4)
    # + 64 bytes: the kernel's offset loads read up to 3 bytes past the last unit
    flat = np.zeros(codes.size + 64, dtype=np.uint8)
    flat[: codes.size] = codes.transpose(1, 4, 0, 2, 3, 5).reshape(-1)
    codes = flat

    if mode == 0:  # one scale per (tile, code byte j, plane): scales[(8 j) // col_block, rb(tile), b]
        per_byte = np.zeros((kp // 8, nrb, q), dtype=np.float32)
        j = np.arange(-(-k // 8))
        per_byte[: len(j)] = scales[(8 * j) // col_block]
        a = per_byte[:, tile_rb]  # (kp/8, T, q)
        a = a.reshape(chunks, 4, groups, RT, q).transpose(2, 0, 4, 3, 1)  # (groups, C, q, RT, 4)
        alpha = np.ascontiguousarray(a, dtype=np.float32)
    else:  # one scale per (row block, plane, column)
        per_col = np.zeros((kp, nrb, q), dtype=np.float32)
        per_col[:k] = np.repeat(scales, col_block, axis=0)[:k]
        alpha = np.ascontiguousarray(per_col.transpose(1, 2, 0))
    group_rb = np.ascontiguousarray(tile_rb.reshape(groups, RT)[:, 0]) if groups else np.zeros(0, np.int32)
    prepared = Prepared(
        n=n,
        k=k,
        q=q,
        kp=kp,
        mode=mode,
        groups=groups,
        nrb=nrb,
        codes=codes,
        alpha=alpha,
        rows=np.ascontiguousarray(tiles.reshape(-1)),
        group_rb=group_rb.astype(np.int32),
    )
    if "incoherence_rescale" in tensors:
        attach_incoherence(prepared, tensors, meta)
    return prepared


def packed_codes(prepared: Prepared) -> np.ndarray:
    """The packed codes uint8 (q, N, ceil(K/8)) this layout was built from, bit for bit (the inverse of the
    gather in `prepare`; padding lanes are dropped)."""
    q, n, chunks = prepared.q, prepared.n, prepared.kp // CHUNK
    size = prepared.groups * chunks * q * RT * TILE * 4
    units = prepared.codes[:size].reshape(prepared.groups, chunks, q, RT, TILE, 4)
    lanes = units.transpose(2, 0, 3, 4, 1, 5).reshape(q, prepared.groups * RT * TILE, chunks * 4)
    valid = prepared.rows >= 0
    out = np.zeros((q, n, -(-prepared.k // 8)), dtype=np.uint8)
    out[:, prepared.rows[valid]] = lanes[:, valid, : out.shape[2]]
    return out


def attach_incoherence(prepared: Prepared, tensors: dict, meta: dict) -> None:
    """The acc rotations and rescale, regenerated (and checked) as `packing.unpack` does."""
    from llm1bit.quant.hf.packing import unpack_rotation
    from llm1bit.quant.numerics.codes import LEGACY_BUTTERFLY, Incoherence
    from llm1bit.quant.numerics.incoherence import SignedHadamard, rotations_of

    # the record `packing.unpack` builds (it checks the key's checksum), without unpacking the codes
    if "incoherence_key" in tensors:
        inc = unpack_rotation(tensors, meta, prepared.n, prepared.k)
    else:
        inc = Incoherence(
            rescale=tensors["incoherence_rescale"],
            version=LEGACY_BUTTERFLY,
            seed=int(tensors["incoherence_seed"][0]),
        )
    rot = rotations_of(inc, prepared.n, prepared.k)
    prepared.rescale = inc.rescale.detach().cpu().numpy().astype(np.float64)
    for name, factor, size in (("u", rot.u, prepared.n), ("v", rot.v, prepared.k)):
        if isinstance(factor, SignedHadamard):
            perms = np.ascontiguousarray(factor.perms, dtype=np.int32)
            flips = np.ascontiguousarray(np.take_along_axis(factor.negative, perms, axis=1), dtype=np.uint8)
            setattr(prepared, name, Rotation(size, perms=perms, flips=flips))
        else:
            setattr(prepared, name, Rotation(size, factor=factor))
