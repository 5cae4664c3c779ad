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
* mode 0 (`col_block` a multiple of 8: lat): the scale of each tile, code byte and plane, (groups, C, q, RT, 4),
  applied to the byte's signed sum; groups may mix row blocks. Held as `alpha_index` uint16 into `alpha`, the
  layer's distinct scales in fp32 (lat's power-of-two sums take a few hundred values per layer: 2 bytes an
  entry instead of 4, the same fp32 value), or, past `MAX_DISTINCT_SCALES` distinct values, as fp32 entries.
  Indexed by the distinct *stored* rows (the one-byte terms, or fp32 scales), the layout also gives the stored
  scale tensor back bit for bit (`packed_scales`), so a served layer releases it as it releases its codes.
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
# mode 0 keeps a layer's distinct scales once (fp32) and a uint16 index per (tile, code byte, plane) when
# there are at most this many (lat's power-of-two sums: a few hundred per layer), else fp32 per entry
MAX_DISTINCT_SCALES = 65536


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
    alpha: np.ndarray  # mode 0: fp32 per (tile, byte), or the distinct scales `alpha_index` points into
    rows: np.ndarray  # int32 (groups * RT * 16,)
    group_rb: np.ndarray  # int32 (groups,)
    alpha_index: np.ndarray | None = None  # mode 0: uint16 (groups, C, q, RT, 4) into `alpha`, or None
    scales_stored: StoredScales | None = None  # mode 0 with alpha_index: the stored scales, given back
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
                int(self.alpha_index is not None),
                self.codes.ctypes.data,
                self.alpha.ctypes.data,
                self.rows.ctypes.data,
                self.group_rb.ctypes.data,
                None if self.alpha_index is None else self.alpha_index.ctypes.data,
            )
        return self._struct

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_struct"] = None
        return state

    @property
    def nbytes(self) -> int:
        arrays = [self.codes, self.alpha, self.rows, self.group_rb]
        if self.alpha_index is not None:
            arrays.append(self.alpha_index)
        extra = 0 if self.scales_stored is None else self.scales_stored.nbytes
        for rot in (self.u, self.v):
            if rot is not None and rot.perms is not None:
                arrays += [rot.perms, rot.flips]
        return sum(a.nbytes for a in arrays) + extra + (0 if self.rescale is None else self.rescale.nbytes)


@dataclass
class StoredScales:
    """What `packed_scales` needs to rebuild a lat layer's stored scale tensor from `alpha_index`."""

    name: str  # "scale_terms" (uint8 (ceil(K/col_block), nrb, q, terms)) or "scales" (float32, no terms axis)
    rows: np.ndarray  # the distinct stored rows, `alpha`'s order: (D, terms) uint8 or (D, 1) float32 bits
    shape: tuple[int, ...]
    col_block: int
    first_tile: np.ndarray  # int32 (nrb,): a tile of each row block

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.first_tile.nbytes


def stored_scale_rows(tensors: dict) -> tuple[str | None, np.ndarray | None]:
    """(name, one row per scale) of a lat layer's stored scales that `packed_scales` can give back: the one-byte
    power-of-two terms, or float32 scales; (None, None) for others (legacy sign / exponent pairs, 16-bit)."""
    import torch

    if "scale_terms" in tensors:
        t = tensors["scale_terms"].detach().cpu()
        return "scale_terms", t.numpy().reshape(-1, t.shape[-1])
    if "scales" in tensors and tensors["scales"].dtype == torch.float32:
        # as uint32 bit patterns: rows that differ in any bit (-0.0 and 0.0) stay apart
        return "scales", tensors["scales"].detach().cpu().numpy().view(np.uint32).reshape(-1, 1)
    return None, None


def packed_scales(prepared: Prepared) -> np.ndarray:
    """The stored scale tensor this lat layout was built from, bit for bit (`prepared.scales_stored`)."""
    s = prepared.scales_stored
    if s is None or prepared.alpha_index is None:
        raise ValueError("this layout does not keep its stored scales")
    chunks, q = prepared.kp // CHUNK, prepared.q
    a = prepared.alpha_index.transpose(1, 4, 0, 3, 2).reshape(chunks * 4, -1, q)  # (kp/8, T, q)
    per_byte = a[:, s.first_tile, :]  # (kp/8, nrb, q)
    blocks = s.shape[0]
    index = per_byte[(np.arange(blocks) * s.col_block) // 8]  # (blocks, nrb, q)
    out = np.ascontiguousarray(s.rows[index.astype(np.int64)].reshape(s.shape))
    return out.view(np.float32) if s.name == "scales" else out


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

    alpha_index, stored = None, None
    if mode == 0:  # one scale per (tile, code byte j, plane): scales[(8 j) // col_block, rb(tile), b]
        j = np.arange(-(-k // 8))
        name, rows = stored_scale_rows(tensors)
        if rows is not None:  # distinct stored rows (term bytes, or fp32 scales), their scales, + a padding 0
            uniq, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            values = np.append(scales.reshape(-1)[first], np.float32(0))
            per_byte = np.full((kp // 8, nrb, q), len(uniq), dtype=np.int64)
            per_byte[: len(j)] = inverse.reshape(scales.shape)[(8 * j) // col_block]
            padding = np.zeros((1, rows.shape[1]), dtype=rows.dtype)
            stored = (name, np.concatenate([uniq, padding]), tensors[name].shape)
        else:
            per_byte = np.zeros((kp // 8, nrb, q), dtype=np.float32)
            per_byte[: len(j)] = scales[(8 * j) // col_block]
            values, inverse = np.unique(per_byte, return_inverse=True)
            per_byte = inverse.reshape(per_byte.shape)
        entries = groups * chunks * q * RT * 4
        if len(values) <= MAX_DISTINCT_SCALES and 4 * len(values) + 2 * entries < 4 * entries:
            # the few distinct scales once, a uint16 index per tile and byte: fewer bytes
            alpha = np.ascontiguousarray(values, dtype=np.float32)
            table = per_byte.astype(np.uint16)
        else:
            table, stored = values[per_byte].astype(np.float32), None
        a = table[:, tile_rb]  # (kp/8, T, q)
        a = np.ascontiguousarray(a.reshape(chunks, 4, groups, RT, q).transpose(2, 0, 4, 3, 1))
        if a.dtype == np.uint16:  # (groups, C, q, RT, 4)
            alpha_index = a
        else:
            alpha = a
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
        alpha_index=alpha_index,
        rows=np.ascontiguousarray(tiles.reshape(-1)),
        group_rb=group_rb.astype(np.int32),
    )
    if stored is not None:  # the layout can give the stored scales back: the layer need not keep them
        first_tile = np.unique(tile_rb, return_index=True)[1].astype(np.int32)
        prepared.scales_stored = StoredScales(stored[0], stored[1], tuple(stored[2]), col_block, first_tile)
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
