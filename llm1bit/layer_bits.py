"""Per-layer weight widths from real artefacts: a `llm1bit bits` file or a `llm1bit quantize` folder.

Both name Hugging Face modules (`model.layers.3.mlp.down_proj`); each maps to one projection of one
decoder block of the workload. A quantized folder also says what its layers weigh: the bytes of every
tensor stored under `<module name>.` in `model.safetensors` (codes, scales, exponents, rescales;
the bias is not part of the GEMM and is left out), so the simulated weight bytes per decode step are
the checkpoint's own. The safetensors header (8-byte little-endian length, then JSON) is read without
loading any tensor, so the simulation side needs neither torch nor safetensors."""

from __future__ import annotations

import dataclasses
import difflib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError
from llm1bit.hf_config import spec_from_hf_config
from llm1bit.models import ModelSpec
from llm1bit.precision import check_bits, check_format, default_format

# workload projection name -> Hugging Face module path inside a decoder block, per family
HF_NAMES = {
    "llama": {
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "out_proj": "self_attn.o_proj",
        "gate_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj",
    },
    "opt": {
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "out_proj": "self_attn.out_proj",
        "ffn_in": "fc1",
        "ffn_out": "fc2",
    },
}
HF_NAMES["gemma"] = HF_NAMES["llama"]  # GemmaDecoderLayer: the same module names
HF_NAMES["phi3"] = {
    "qkv_proj": "self_attn.qkv_proj",
    "out_proj": "self_attn.o_proj",
    "gate_up_proj": "mlp.gate_up_proj",
    "down_proj": "mlp.down_proj",
}
BLOCK_PREFIX = {"llama": "model.layers.{}.", "gemma": "model.layers.{}.", "phi3": "model.layers.{}.",
                "opt": "model.decoder.layers.{}."}  # fmt: skip


@dataclass(frozen=True)
class ProjBits:
    """One projection's weights: code width, format, and (from a checkpoint) the bits it moves per weight."""

    bits: float
    fmt: str
    bits_moved: float | None = None


def module_names(model: ModelSpec) -> dict[str, tuple[int, str]]:
    """Hugging Face module name -> (block index, workload projection name)."""
    if model.source == "paper":
        raise UserError(
            f"per-layer bits name Hugging Face modules, so they go with a model given as a config / folder, "
            f"not with the built-in paper model {model.name}"
        )
    if model.family not in HF_NAMES:
        raise UserError(
            f"per-layer bits: {model.family} models are not supported (supported: llama family, opt)"
        )
    from llm1bit.workload import projection_shapes

    names, present = HF_NAMES[model.family], projection_shapes(model)
    prefix = BLOCK_PREFIX[model.family]
    return {
        prefix.format(i) + hf: (i, proj)
        for i in range(model.n_layers)
        for proj, hf in names.items()
        if proj in present
    }


def _attach(model: ModelSpec, per_module: dict[str, ProjBits], what: str) -> ModelSpec:
    known = module_names(model)
    blocks: list[dict[str, ProjBits]] = [{} for _ in range(model.n_layers)]
    for name, pb in per_module.items():
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(
                f"{what} names module {name!r}, which {model.name} does not have{hint}; e.g. {next(iter(known))}"
            )
        block, proj = known[name]
        blocks[block][proj] = pb
    proj_bits = tuple(tuple(sorted(b.items())) for b in blocks)
    return dataclasses.replace(model, proj_bits=proj_bits)


def with_bits_config(model: ModelSpec, path: str | Path) -> ModelSpec:
    """Attach the widths of a `llm1bit bits` file (or any {"layers": {module: bits}}) to a config-given model.

    The format follows the file's `settings.mode` (lat: bcq-lat, acc: bcq-acc), else each width's default."""
    from llm1bit.quant.pipeline import read_bits_config

    layers = read_bits_config(str(path))
    try:
        mode = json.loads(Path(path).read_text()).get("settings", {}).get("mode")
    except (AttributeError, ValueError):
        mode = None
    out = {}
    for name, bits in layers.items():
        if isinstance(bits, bool) or not isinstance(bits, (int, float)):
            raise UserError(f"bits config {path} gives {name} {bits!r} bits; allowed: a number > 0 and <= 32")
        bits = check_bits(f"bits config {path}: {name}", bits)
        fmt = {"lat": "bcq-lat", "acc": "bcq-acc"}.get(mode) if bits == int(bits) and bits <= 8 else None
        out[name] = ProjBits(bits, check_format(fmt or default_format(bits), bits))
    return _attach(model, out, f"bits config {path}")


def safetensors_sizes(path: Path) -> dict[str, int]:
    """Tensor name -> bytes, from a safetensors header alone; a truncated or foreign file is a one-line error."""
    return {name: nbytes for name, (_, _, nbytes) in safetensors_header(path).items()}


def safetensors_header(path: Path) -> dict[str, tuple[str, list[int], int]]:
    """Tensor name -> (dtype as safetensors spells it, shape, bytes), from the header alone, checked against
    the file's size: a truncated or foreign file is a one-line error."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: truncated safetensors file (no header length)")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                raise UserError(f"{path}: not a safetensors file (header length {length})")
            raw = f.read(length)
            f.seek(0, 2)
            size = f.tell()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) < length:
        raise UserError(f"{path}: truncated safetensors file (header cut short)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: not a safetensors file (header is not JSON)") from None
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            dtype, shape = str(info["dtype"]), [int(n) for n in info["shape"]]
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{path}: malformed safetensors header entry {name!r}") from None
        if 8 + length + end > size:
            raise UserError(f"{path}: truncated safetensors file ({name} ends past the end of the file)")
        entries[name] = (dtype, shape, end - start)
    return entries


def _format_of(meta: dict, method: str | None, mode: str | None) -> str:
    """The compute format of one stored module (energy ops): uniform -> int; binary codes -> bcq-lat when
    their scales cover 8-column slabs (lat), else bcq-acc (acc, and plain bcq's float scales)."""
    if meta.get("format") == "uniform":
        return "int"
    if meta.get("format") in ("binary", "binary-pot"):
        return "bcq-lat" if meta.get("col_block") == 8 else "bcq-acc"
    raise UserError(
        f"quantized folder: unknown module format {meta.get('format')!r} (method {method}, mode {mode})"
    )


def load_quantized_model(folder: str | Path) -> ModelSpec:
    """The architecture from a `llm1bit quantize` folder's config.json, each quantized linear's width and
    measured bits per weight from its quantization_config and model.safetensors."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir() or not config_path.is_file():
        raise UserError(f"--quantized {folder}: not a folder written by `llm1bit quantize` (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {config_path}: {exc}") from None
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(qc, dict) or not str(qc.get("quant_method", "")).startswith("llm1bit-"):
        raise UserError(
            f"--quantized {folder}: not an llm1bit quantized folder (no llm1bit quantization_config)"
        )
    modules = qc.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise UserError(f"--quantized {folder}: quantization_config has no modules")
    model = spec_from_hf_config(config, config_path, name=folder.name)
    sizes = safetensors_sizes(folder / "model.safetensors")
    known = module_names(model)
    out = {}
    for name, meta in modules.items():
        try:
            bits, (n, k) = float(meta["bits"]), meta["shape"]
        except (TypeError, KeyError, ValueError):
            raise UserError(
                f"--quantized {folder}: module {name} lacks bits / shape in quantization_config"
            ) from None
        stored = sum(size for t, size in sizes.items() if t.startswith(name + ".") and t != name + ".bias")
        if not stored:
            raise UserError(f"--quantized {folder}: model.safetensors holds no packed tensors for {name}")
        if name in known:
            block, proj = known[name]
            want = _projection_shape(model, proj)
            if (n, k) != want:
                raise UserError(
                    f"--quantized {folder}: {name} has shape {[n, k]}, the config implies {list(want)}"
                )
        out[name] = ProjBits(bits, _format_of(meta, qc.get("method"), qc.get("mode")), 8 * stored / (n * k))
    return _attach(model, out, f"--quantized {folder}")


def _projection_shape(model: ModelSpec, proj: str) -> tuple[int, int]:
    """[out, in] of a projection, as nn.Linear stores it."""
    from llm1bit.workload import projection_shapes

    return projection_shapes(model)[proj]
