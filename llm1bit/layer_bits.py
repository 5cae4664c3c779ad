"""Per-layer weight widths from real artefacts: a `llm1bit bits` file or a `llm1bit quantize` folder.

Both name Hugging Face modules (`model.layers.3.mlp.down_proj`); each maps to one projection of one
decoder block of the workload. A quantized folder also says what its layers weigh: the bytes of every
tensor stored under `<module name>.` in `model.safetensors` (codes, scales, exponents, rescales;
the bias is not part of the GEMM and is left out), so the simulated weight bytes per decode step are
the checkpoint's own. The safetensors header (8-byte little-endian length, then JSON) is read without
loading any tensor, so the simulation side needs neither torch nor safetensors.

Mixture-of-experts blocks (Mixtral, Qwen2-MoE, Qwen3-MoE) name each expert's slice of the fused experts
weights (`model.layers.0.mlp.experts.gate_up_proj.3`, `...down_proj.3`), Qwen2-MoE's shared expert
(`mlp.shared_expert.*`) and the router (`mlp.gate`, and `mlp.shared_expert_gate`), which `llm1bit quantize`
keeps at its precision, so naming it here is refused. The workload prices distinct experts under uniform
routing, not specific ones, so a layer's expert projections take the mean over its experts of their bits
per weight (measured, or the format's for a bits config) and of their code widths; every expert of a
layer must be given (a bits config may name the group, `...mlp.experts.down_proj` or `...mlp.experts`).
A fused `gate_up_proj` slice gives both the workload's `expert.gate_proj` and `expert.up_proj` its bits
per weight. Gemma-3's multimodal wrapper names its language model's blocks `model.language_model.layers.N`."""

from __future__ import annotations

import dataclasses
import difflib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, warn
from llm1bit.hf_config import spec_from_hf_config
from llm1bit.models import FFN, ModelSpec
from llm1bit.precision import bits_moved, check_bits, check_format
from llm1bit.weight_formats import WEIGHT_FORMATS, default_format

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
# Hugging Face prefixes of decoder block i, per family (Gemma-3's multimodal wrapper: model.language_model)
BLOCK_PREFIXES = {"llama": ("model.layers.{}.",), "gemma": ("model.layers.{}.", "model.language_model.layers.{}."),
                  "phi3": ("model.layers.{}.",), "opt": ("model.decoder.layers.{}.",)}  # fmt: skip
# MoE blocks: each expert's slice of a fused experts parameter -> the workload's expert projections
EXPERT_SLICES = {
    "mlp.experts.gate_up_proj": ("expert.gate_proj", "expert.up_proj"),  # gate rows, then up rows
    "mlp.experts.down_proj": ("expert.down_proj",),
}
# Qwen2-MoE's shared expert: Hugging Face module -> workload projection
SHARED_EXPERT_NAMES = {
    f"mlp.shared_expert.{p}": f"shared_expert.{p}" for p in ("gate_proj", "up_proj", "down_proj")
}
# routing, kept at its precision by `llm1bit quantize`: Hugging Face module -> workload projection
ROUTER_NAMES = {"mlp.gate": "router", "mlp.shared_expert_gate": "shared_expert_gate"}
_SLICE = "expert slice"  # module_names' marker for expert slices: (block, "expert slice", fused, expert)


@dataclass(frozen=True)
class ProjBits:
    """One projection's weights: code width, format, and (from a checkpoint) the bits it moves per weight."""

    bits: float
    fmt: str
    bits_moved: float | None = None


def _check_family(model: ModelSpec) -> None:
    if model.source == "paper":
        raise UserError(
            f"per-layer bits name Hugging Face modules, so they go with a model given as a config / folder, "
            f"not with the built-in paper model {model.name}"
        )
    if model.family not in HF_NAMES:
        raise UserError(
            f"per-layer bits: {model.family} models are not supported (supported: llama family incl. "
            "Mixtral / Qwen-MoE, gemma, phi3, opt)"
        )


def _names(model: ModelSpec) -> dict[str, tuple]:
    """Hugging Face module name -> (block, workload projection), or (block, _SLICE, fused name, expert) for
    an expert slice; routers are listed with their projection (ROUTER_NAMES) to be refused by name."""
    _check_family(model)
    from llm1bit.workload import block_projections

    kinds = {p.name: p.kind for p in block_projections(model)}
    always = {p.name for p in model.moe.always} if model.moe else set()
    out: dict[str, tuple] = {}
    for i in range(model.n_layers):
        sparse = bool(model.moe and model.moe.layers[i])
        rel: dict[str, tuple] = {
            hf: (i, proj)
            for proj, hf in HF_NAMES[model.family].items()
            if proj in kinds and not (sparse and kinds[proj] == FFN)
        }
        if sparse:
            rel.update({hf: (i, proj) for hf, proj in SHARED_EXPERT_NAMES.items() if proj in always})
            rel.update({hf: (i, proj) for hf, proj in ROUTER_NAMES.items() if proj in always})
            for fused in EXPERT_SLICES:
                rel.update({f"{fused}.{e}": (i, _SLICE, fused, e) for e in range(model.moe.experts)})
        for prefix in BLOCK_PREFIXES[model.family]:
            out.update({prefix.format(i) + name: where for name, where in rel.items()})
    return out


def module_names(model: ModelSpec) -> dict[str, tuple[int, str]]:
    """Hugging Face module name -> (block index, workload projection name); an expert slice
    (`...mlp.experts.gate_up_proj.3`) -> its first workload projection (`expert.gate_proj`)."""
    return {
        name: (where[0], EXPERT_SLICES[where[2]][0]) if where[1] == _SLICE else where
        for name, where in _names(model).items()
    }


def _slice_shapes(model: ModelSpec) -> dict[str, tuple[int, int]]:
    """[out, in] of each fused experts parameter's per-expert slice."""
    shapes = {p.name: (p.n, p.k) for p in model.moe.expert}
    (ff, d), (d_out, ff_in) = shapes["expert.gate_proj"], shapes["expert.down_proj"]
    return {"mlp.experts.gate_up_proj": (2 * ff, d), "mlp.experts.down_proj": (d_out, ff_in)}


def _shapes(model: ModelSpec) -> dict[str, tuple[int, int]]:
    """[out, in] of every workload projection (MoE ones included), as nn.Linear stores it."""
    from llm1bit.workload import block_projections

    projs = list(block_projections(model)) + (list(model.moe.expert + model.moe.always) if model.moe else [])
    return {p.name: (p.n, p.k) for p in projs}


def _expert_mean(per: dict[int, ProjBits], shape: tuple[int, int], where: str) -> ProjBits:
    """The experts of one fused parameter of one layer as one ProjBits: mean code width and mean bits moved
    per weight (measured, else the format's at the slice's shape); one format for all of them."""
    formats = sorted({pb.fmt for pb in per.values()})
    if len(formats) > 1:
        raise UserError(
            f"{where}: its experts are in formats {' and '.join(formats)}; the workload prices one format "
            "per expert projection (give its experts widths of one format)"
        )
    moved = [
        pb.bits_moved if pb.bits_moved is not None else bits_moved(pb.fmt, pb.bits, *shape)
        for pb in per.values()
    ]
    return ProjBits(sum(pb.bits for pb in per.values()) / len(per), formats[0], sum(moved) / len(moved))


def _attach(model: ModelSpec, per_module: dict[str, ProjBits], what: str) -> ModelSpec:
    names = _names(model)
    known = module_names(model)
    # group names standing for several expert slices: <prefix>mlp.experts.<fused> and <prefix>mlp.experts
    groups: dict[str, list[str]] = {}
    for name, where in names.items():
        if where[1] == _SLICE:
            head = name.rpartition(".")[0]
            groups.setdefault(head, []).append(name)
            groups.setdefault(head.rpartition(".")[0], []).append(name)
    blocks: list[dict[str, ProjBits]] = [{} for _ in range(model.n_layers)]
    named: dict[tuple, str] = {}  # (block, projection) or (block, fused, expert) -> the name that gave it
    experts: dict[tuple[int, str, str], dict[int, ProjBits]] = {}
    # groups first, so an expert slice named as well overrides its group (as `quantize --bits-config`)
    for name, pb in sorted(per_module.items(), key=lambda item: item[0] not in groups):
        if name not in names and name not in groups:
            close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(
                f"{what} names module {name!r}, which {model.name} does not have{hint}; e.g. {next(iter(known))}"
            )
        for target in groups.get(name, [name]):
            where = names[target]
            key = (where[0], where[2], where[3]) if where[1] == _SLICE else where
            if key in named and named[key] not in groups:  # two names of one module (e.g. Gemma-3's aliases)
                raise UserError(
                    f"{what} gives {named[key]} and {name}, two names of one module; give it once"
                )
            named[key] = name
            if where[1] == _SLICE:
                head = target[: -len(f"{where[2]}.{where[3]}")]
                experts.setdefault((where[0], head, where[2]), {})[where[3]] = pb
            elif where[1] in ROUTER_NAMES.values():
                raise UserError(
                    f"{what} gives bits to {target}, a router: it keeps its precision (llm1bit quantize "
                    "does not quantize it)"
                )
            else:
                blocks[where[0]][where[1]] = pb
    differ = []
    for (block, head, fused), per in experts.items():
        where = f"{what}: {head}{fused}"
        if len(per) != model.moe.experts:
            raise UserError(
                f"{where}: {len(per)} of its {model.moe.experts} experts have their own bits; the workload "
                f"models distinct experts, not specific ones, so give every expert (or the group {head}{fused})"
            )
        mean = _expert_mean(per, _slice_shapes(model)[fused], where)
        if len({(pb.bits, pb.bits_moved) for pb in per.values()}) > 1:
            differ.append(f"{head}{fused} {mean.bits_moved:.4g}")
        for proj in EXPERT_SLICES[fused]:
            blocks[block][proj] = mean
    if differ:
        warn(
            f"{what}: experts differ in bits; each layer's expert projections take the mean over its experts "
            f"of their bits per weight (the workload models distinct experts, not specific ones): "
            + ", ".join(differ[:4])
            + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
        )
    proj_bits = tuple(tuple(sorted(b.items())) for b in blocks)
    return dataclasses.replace(model, proj_bits=proj_bits)


# The top-level keys of a bits file: what `llm1bit bits` writes (commands/bits.py result_json). Only `layers`
# and `settings.mode` decide numbers here; any other key is a typo the simulation would silently ignore.
BITS_FILE_KEYS = (
    "layers", "average_bits", "budget", "objective", "solver", "solve_seconds", "settings", "error", "fits",
    "kendall_tau", "kendall_tau_per_param", "kendall_tau_refined", "kendall_tau_refined_held_out",
    "sublayers", "fallback", "timings",
)  # fmt: skip
BITS_MODES = {"lat": "bcq-lat", "acc": "bcq-acc"}  # settings.mode -> the format of the widths it holds


def read_bits_file(path: str | Path) -> tuple[dict[str, object], str | None]:
    """({module: bits as given}, settings.mode) of a bits file, read strictly: a module (or any key) given
    twice, an unknown top-level key, a per-layer object with keys other than `bits` or an unknown mode is
    a one-line error, never a silently dropped value."""
    from llm1bit.jsonfile import check_keys, read_json

    data = read_json(path, "bits config")
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise UserError(f'bits config {path} needs a non-empty "layers" object {{"<module name>": bits}}')
    if "mode" in data:  # the likeliest slip: the mode beside the layers, where nothing reads it
        raise UserError(
            f'bits config {path}: "mode" belongs in "settings" ({{"settings": {{"mode": "lat"}}}})'
        )
    check_keys(data, BITS_FILE_KEYS, f"bits config {path}")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise UserError(f"bits config {path}: settings must be an object")
    mode = settings.get("mode")
    if mode is not None and mode not in BITS_MODES:
        raise UserError(f"bits config {path}: settings.mode {mode!r}; allowed: {', '.join(BITS_MODES)}")
    out = {}
    for name, value in layers.items():
        if isinstance(value, dict):
            check_keys(value, ("bits",), f"bits config {path}: layers.{name}")
            value = value.get("bits")
        out[name] = value
    return out, mode


def with_bits_config(model: ModelSpec, path: str | Path) -> ModelSpec:
    """Attach the widths of a `llm1bit bits` file (or any {"layers": {module: bits}}) to a config-given model.

    The format follows the file's `settings.mode` (lat: bcq-lat, acc: bcq-acc) for the widths that format holds
    (whole widths 1 to 8), else each width's default."""
    layers, mode = read_bits_file(path)
    out = {}
    for name, bits in layers.items():
        if isinstance(bits, bool) or not isinstance(bits, (int, float)):
            raise UserError(f"bits config {path} gives {name} {bits!r} bits; allowed: a number > 0 and <= 32")
        bits = check_bits(f"bits config {path}: {name}", bits)
        fmt = BITS_MODES.get(mode)
        fmt = fmt if fmt is not None and bits in WEIGHT_FORMATS[fmt].widths else default_format(bits)
        out[name] = ProjBits(bits, check_format(fmt, bits))
    raw = sorted({pb.bits for pb in out.values() if pb.fmt == "raw"})
    if raw:
        warn(
            f"bits config {path}: widths {', '.join(f'{b:g}' for b in raw)} are priced as format raw, exactly "
            "that many bits per weight with no scales or zero points"
        )
    return _attach(model, out, f"bits config {path}")


def priced_by_point(model: ModelSpec) -> bool:
    """Whether any projection of `model` takes the point's weight width (one without per-layer bits, or a
    router, which `llm1bit quantize` keeps at its precision)."""
    from llm1bit.workload import MATMUL_FREE, build_workload

    return any(g.part == MATMUL_FREE and g.weight_bits is None for g in build_workload(model, 1))


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


def packed_by_module(
    header: dict[str, tuple[str, list[int], int]],
) -> dict[str, dict[str, tuple[str, list[int], int]]]:
    """A safetensors header's entries grouped by owning module: {module: {suffix: (dtype, shape, bytes)}},
    a quantized module's packed tensors being `<module>.<suffix>`; biases are left out (they are not codes)."""
    grouped: dict[str, dict[str, tuple[str, list[int], int]]] = {}
    for key, entry in header.items():
        owner, _, suffix = key.rpartition(".")
        if owner and suffix != "bias":
            grouped.setdefault(owner, {})[suffix] = entry
    return grouped


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
    from llm1bit.jsonfile import read_json

    config = read_json(config_path, "config", constants=True)  # a module given twice is refused
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(qc, dict) or not str(qc.get("quant_method", "")).startswith("llm1bit-"):
        raise UserError(
            f"--quantized {folder}: not an llm1bit quantized folder (no llm1bit quantization_config)"
        )
    modules = qc.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise UserError(f"--quantized {folder}: quantization_config has no modules")
    model = spec_from_hf_config(config, config_path, name=folder.name)
    packed = packed_by_module(safetensors_header(folder / "model.safetensors"))
    names = _names(model)
    shapes = _shapes(model)
    out = {}
    for name, meta in modules.items():
        try:
            bits, (n, k) = float(meta["bits"]), meta["shape"]
        except (TypeError, KeyError, ValueError):
            raise UserError(
                f"--quantized {folder}: module {name} lacks bits / shape in quantization_config"
            ) from None
        stored = sum(nbytes for _, _, nbytes in packed.get(name, {}).values())
        if not stored:
            raise UserError(f"--quantized {folder}: model.safetensors holds no packed tensors for {name}")
        where = names.get(name)
        if where is not None:
            want = _slice_shapes(model)[where[2]] if where[1] == _SLICE else shapes[where[1]]
            if (n, k) != want:
                raise UserError(
                    f"--quantized {folder}: {name} has shape {[n, k]}, the config implies {list(want)}"
                )
        out[name] = ProjBits(bits, _format_of(meta, qc.get("method"), qc.get("mode")), 8 * stored / (n * k))
    return _attach(model, out, f"--quantized {folder}")
