"""Pack one `QuantizedWeight` into named tensors (and a small JSON-able meta dict), and back.

Tensors stored for a linear layer `NAME` (all beside `NAME.bias` when the layer has one):

* binary codes (shiftaddllm, bcq), W[n, k] = sum_b scale[k // col_block, n // row_block, b] * code[b, n, k]:
  - `NAME.codes`        uint8 (q, N, ceil(K/8)): plane b, row n, bit t of byte j is 1 iff code[b, n, 8j+t] = +1
  - `NAME.scale_signs`  int8 (ceil(K/col_block), ceil(N/row_block), q, terms): signs of the power-of-two terms
  - `NAME.scale_exps`   int8, same shape: their exponents; scale = sum_t sign_t * 2**exp_t
  - `NAME.scales`       float32 (ceil(K/col_block), ceil(N/row_block), q): only for plain bcq (no power-of-two
                        terms), or if the terms do not rebuild the float32 scales bit for bit
* uniform codes (rtn, gptq), W[n, k] = scale[n, k // groupsize] * (level[n, k] - zero[n, k // groupsize]):
  - `NAME.qweight`      uint8 (bits, N, ceil(K/8)): bit planes of the integer levels, plane b = bit b
  - `NAME.scale`, `NAME.zero`  float32 (N, ceil(K/groupsize))
* incoherence (shiftaddllm acc): `NAME.incoherence_seed` int64 (1,), `NAME.incoherence_rescale` float32 (K,)

The meta dict records format, bits, shape and group layout; `unpack` needs both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm1bit.quant.result import BinaryCodes, Incoherence, QuantizedWeight, UniformCodes

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
            tensors["scale_signs"], tensors["scale_exps"] = signs, exps
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
    if quantized.incoherence is not None:
        tensors["incoherence_seed"] = torch.tensor([quantized.incoherence.seed], dtype=torch.int64)
        tensors["incoherence_rescale"] = quantized.incoherence.rescale.cpu().to(torch.float32)
        meta["incoherence_seed"] = int(quantized.incoherence.seed)
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
    if "incoherence_seed" in tensors:
        incoherence = Incoherence(
            seed=int(tensors["incoherence_seed"][0]), rescale=tensors["incoherence_rescale"]
        )
    return QuantizedWeight(codes=codes, incoherence=incoherence, error=float(meta.get("error", 0.0)))


def packed_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
