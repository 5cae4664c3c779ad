"""Pack one `QuantizedWeight` into named tensors (and a small JSON-able meta dict), and back.

Tensors stored for a linear layer `NAME` (all beside `NAME.bias` when the layer has one):

* binary codes (shiftaddllm, bcq), W[n, k] = sum_b scale[k // col_block, n // row_block, b] * code[b, n, k]:
  - `NAME.codes`        uint8 (q, N, ceil(K/8)): plane b, row n, bit t of byte j is 1 iff code[b, n, 8j+t] = +1
  - `NAME.scale_terms`  uint8 (ceil(K/col_block), ceil(N/row_block), q, terms): each power-of-two term of a
                        scale in one byte (format version 2): 0 = no term; else bit 7 = sign (1: negative),
                        bits 0-6 = exponent + TERM_BIAS, exponents TERM_EXP_MIN..TERM_EXP_MAX (-95..31);
                        scale = sum_t sign_t * 2**exp_t. (Version 1 folders hold `NAME.scale_signs` and
                        `NAME.scale_exps`, int8 each; they still load.)
  - `NAME.scales`       float32 (ceil(K/col_block), ceil(N/row_block), q): only for plain bcq (no power-of-two
                        terms), or if the terms do not rebuild the float32 scales bit for bit
* uniform codes (rtn, gptq), W[n, k] = scale[n, k // groupsize] * (level[n, k] - zero[n, k // groupsize]):
  - `NAME.qweight`      uint8 (bits, N, ceil(K/8)): bit planes of the integer levels, plane b = bit b
  - `NAME.scale`, `NAME.zero`  float32 (N, ceil(K/groupsize))
* incoherence (shiftaddllm acc; `llm1bit.quant.numerics.incoherence` documents the rotations):
  - `NAME.incoherence_rescale` float32 (K,): the diagonal rescale s
  - `NAME.incoherence_key`     int64 (2,): the module's 128-bit rotation key, two uint64 words (low first)
                               stored bit for bit as int64 (format version 3, rotation procedure 2)
  - `NAME.incoherence_sha256`  uint8 (8,): the first 8 bytes of the sha256 of the rotation factors; unpacking
                               regenerates the factors from the key and refuses a mismatch (`RotationMismatch`)
  - `NAME.incoherence_seed`    int64 (1,): instead of key and checksum in folders of format versions 1 and 2
                               (rotation procedure 1, regenerated from (seed, N, K) as before)

The meta dict records format, bits, shape and group layout (and, with incoherence, `rotation_version` and
`rotation_sha256`, the checksum as 16 hex digits); `unpack` needs both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm1bit.quant.numerics.codes import (
    LEGACY_BUTTERFLY,
    PHILOX_HADAMARD,
    BinaryCodes,
    Incoherence,
    QuantizedWeight,
    UniformCodes,
)

if TYPE_CHECKING:
    import torch


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (..., K) into uint8 (..., ceil(K/8)), least significant bit first."""
    import torch

    k = bits.shape[-1]
    pad = (-k) % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*bits.shape[:-1], -1, 8).to(torch.uint8)
    weights = torch.tensor([1 << t for t in range(8)], dtype=torch.uint8, device=bits.device)
    return (bits * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_bits`: bool (..., k)."""
    import torch

    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :k].bool()


# One byte per power-of-two term: code 0 is "no term", 1..127 are exponents -95..31 (plus the sign bit).
TERM_BIAS = 96
TERM_EXP_MIN, TERM_EXP_MAX = 1 - TERM_BIAS, 127 - TERM_BIAS


def encode_terms(signs: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """int8 signs {-1, 0, 1} and exponents -> one uint8 per term; an exponent outside -95..31 is an error."""
    import torch

    used = signs != 0
    e = exps.to(torch.int16)
    bad = used & ((e < TERM_EXP_MIN) | (e > TERM_EXP_MAX))
    if bool(bad.any()):
        from llm1bit.errors import UserError

        raise UserError(
            f"a power-of-two scale term 2**{int(e[bad][0])} is outside the packed range "
            f"2**{TERM_EXP_MIN}..2**{TERM_EXP_MAX}; rescale the weights or keep float scales (method bcq)"
        )
    code = torch.where(used, e + TERM_BIAS, torch.zeros_like(e)) | torch.where(signs < 0, 128, 0).to(
        torch.int16
    )
    return code.to(torch.uint8)


def decode_terms(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 terms -> (int8 signs, int8 exponents), as the solver produced them (exponent 0 where no term)."""
    import torch

    c = code.to(torch.int16)
    magnitude = c & 127
    used = magnitude != 0
    signs = torch.where(used, torch.where(c >= 128, -1, 1), 0).to(torch.int8)
    exps = torch.where(used, magnitude - TERM_BIAS, 0).to(torch.int8)
    return signs, exps


def apot_scales(signs: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """float32 scales sum_t signs[..., t] * 2**exps[..., t], summed term by term in float32."""
    import torch

    terms = torch.ldexp(signs.to(torch.float64), exps.to(torch.int32)).to(torch.float32)
    scales = terms[..., 0].clone()
    for t in range(1, terms.shape[-1]):
        scales = scales + terms[..., t]
    return scales


def pack(quantized: QuantizedWeight, bits: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors keyed by suffix, meta) for one quantized weight; keys have no module prefix."""
    import torch

    codes = quantized.codes
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(codes, BinaryCodes):
        c = codes.codes.cpu()
        q, n, k = c.shape
        if not bool(((c == 1) | (c == -1)).all()):
            raise ValueError("binary codes must be +1 or -1 to be bit-packed")
        tensors["codes"] = pack_bits(c == 1)
        meta: dict[str, Any] = {
            "format": "binary",
            "bits": q,
            "shape": [n, k],
            "col_block": codes.col_block,
            "row_block": codes.row_block,
        }
        scales = codes.scales.cpu().to(torch.float32)
        if codes.scale_signs is not None and codes.scale_exps is not None:
            signs = codes.scale_signs.cpu().to(torch.int8)
            exps = codes.scale_exps.cpu().to(torch.int8)
            tensors["scale_terms"] = encode_terms(signs, exps)
            meta["format"] = "binary-pot"
            meta["apot_terms"] = int(signs.shape[-1])
            if not torch.equal(apot_scales(signs, exps), scales):
                tensors["scales"] = scales  # keep the exact floats; the terms stay for kernels
        else:
            tensors["scales"] = scales
    elif isinstance(codes, UniformCodes):
        level = codes.qweight.cpu().to(torch.int32)
        n, k = level.shape
        if int(level.min()) < 0 or int(level.max()) >= 1 << bits:
            raise ValueError(f"uniform levels outside 0..{(1 << bits) - 1}")
        planes = torch.stack([(level >> b) & 1 for b in range(bits)]).bool()
        tensors["qweight"] = pack_bits(planes)
        tensors["scale"] = codes.scale.cpu().to(torch.float32)
        tensors["zero"] = codes.zero.cpu().to(torch.float32)
        meta = {"format": "uniform", "bits": bits, "shape": [n, k], "groupsize": codes.groupsize}
    else:
        raise TypeError(f"cannot pack codes of type {type(codes).__name__}")
    inc = quantized.incoherence
    if inc is not None:
        tensors["incoherence_rescale"] = inc.rescale.cpu().to(torch.float32)
        if inc.version == LEGACY_BUTTERFLY:
            tensors["incoherence_seed"] = torch.tensor([inc.seed], dtype=torch.int64)
            meta["incoherence_seed"] = int(inc.seed)
        else:
            words = [int(w) - (1 << 64) if int(w) >= 1 << 63 else int(w) for w in inc.key]
            tensors["incoherence_key"] = torch.tensor(words, dtype=torch.int64)
            tensors["incoherence_sha256"] = torch.tensor(list(bytes.fromhex(inc.checksum)), dtype=torch.uint8)
            meta["rotation_version"] = int(inc.version)
            meta["rotation_sha256"] = inc.checksum
    meta["error"] = float(quantized.error)
    return {key: t.contiguous() for key, t in tensors.items()}, meta


def unpack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> QuantizedWeight:
    """Rebuild the `QuantizedWeight` that `pack` stored."""
    import torch

    n, k = meta["shape"]
    if meta["format"] in ("binary", "binary-pot"):
        plus = unpack_bits(tensors["codes"], k)
        codes_pm = torch.where(plus, 1, -1).to(torch.int8)
        signs, exps = tensors.get("scale_signs"), tensors.get("scale_exps")
        if "scale_terms" in tensors:  # format version 2: one byte per term
            signs, exps = decode_terms(tensors["scale_terms"])
        scales = tensors.get("scales")
        if scales is None:
            scales = apot_scales(signs, exps)
        codes: BinaryCodes | UniformCodes = BinaryCodes(
            codes=codes_pm,
            scales=scales,
            col_block=int(meta["col_block"]),
            row_block=int(meta["row_block"]),
            scale_signs=signs,
            scale_exps=exps,
        )
    elif meta["format"] == "uniform":
        planes = unpack_bits(tensors["qweight"], k).to(torch.int32)
        level = sum(planes[b] << b for b in range(planes.shape[0]))
        codes = UniformCodes(
            qweight=level.to(torch.uint8),
            scale=tensors["scale"],
            zero=tensors["zero"],
            groupsize=int(meta["groupsize"]),
        )
    else:
        raise ValueError(f"unknown packed format {meta['format']!r}")
    incoherence = None
    if "incoherence_key" in tensors:
        incoherence = unpack_rotation(tensors, meta, n, k)
    elif "incoherence_seed" in tensors:
        incoherence = Incoherence(
            rescale=tensors["incoherence_rescale"],
            version=LEGACY_BUTTERFLY,
            seed=int(tensors["incoherence_seed"][0]),
        )
    return QuantizedWeight(codes=codes, incoherence=incoherence, error=float(meta.get("error", 0.0)))


def unpack_rotation(tensors: dict[str, torch.Tensor], meta: dict[str, Any], n: int, k: int) -> Incoherence:
    """The procedure-2 incoherence record, after regenerating its factors and checking their checksum."""
    from llm1bit.quant.numerics.incoherence import RotationMismatch, rotations_of

    words = tensors["incoherence_key"].cpu().tolist()
    if len(words) != 2:
        raise ValueError(f"incoherence_key holds {len(words)} values, expected 2")
    checksum = meta.get("rotation_sha256")
    if "incoherence_sha256" in tensors:
        stored = bytes(tensors["incoherence_sha256"].cpu().tolist()).hex()
        if checksum is not None and checksum != stored:
            raise RotationMismatch(
                f"the rotation checksum in the config ({checksum}) differs from the one in the tensors ({stored})"
            )
        checksum = stored
    incoherence = Incoherence(
        rescale=tensors["incoherence_rescale"],
        key=(int(words[0]) & (1 << 64) - 1, int(words[1]) & (1 << 64) - 1),
        checksum=checksum,
        version=int(meta.get("rotation_version", PHILOX_HADAMARD)),
    )
    rotations_of(incoherence, n, k)  # regenerate now: a mismatch is an error at load, not in a forward
    return incoherence


def packed_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
