"""Per-layer weight widths from real artefacts: a `llm1bit bits` file or a `llm1bit quantize` folder.

Both name Hugging Face modules (`model.layers.3.mlp.down_proj`, the names of `llm1bit.format.hf_names`);
each maps to one projection of one decoder block of the workload. A quantized folder also says what its layers weigh: the bytes of every
tensor stored under `<module name>.` in `model.safetensors` (codes, scales, exponents, rescales;
the bias is not part of the GEMM and is left out), so the simulated weight bytes per decode step are
the checkpoint's own, read from the safetensors header alone (`llm1bit.format.safetensors`).

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
import math
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, warn
from llm1bit.format import WEIGHTS_NAME
from llm1bit.format.bits_file import BITS_MODES, read_bits_file
from llm1bit.format.folder import read_quantized_config
from llm1bit.format.hf_names import (
    BLOCK_PREFIXES,
    EXPERT_SLICES,
    FAMILY_LAYOUTS,
    ROUTER_NAMES,
    SHARED_EXPERT_NAMES,
    projection_modules,
)
from llm1bit.format.safetensors import packed_by_module, safetensors_header
from llm1bit.hf_config import spec_from_hf_config
from llm1bit.model_spec import FFN, ModelSpec
from llm1bit.precision import bits_moved, check_bits, check_format
from llm1bit.weight_formats import APOT_TERMS, LAT_COLS, WEIGHT_FORMATS, default_format

_SLICE = "expert slice"  # module_names' marker for expert slices: (block, "expert slice", fused, expert)


@dataclass(frozen=True)
class ProjBits:
    """One projection's weights: code width, format, and (from a checkpoint) the bits it moves per weight."""

    bits: float
    fmt: str
    bits_moved: float | None = None


ROTATION_KEY_BYTES = 2 * 8 + 8  # acc: incoherence_key (two int64) + incoherence_sha256 (8 uint8)


@dataclass(frozen=True)
class Storage:
    """How `llm1bit quantize` (shiftaddllm) stores a module: mode, groupsize, power-of-two terms, acc's rotation.
    A bits file's settings name it; `llm1bit bits`'s hardware budgets price it."""

    mode: str = "lat"
    groupsize: int = -1
    apot_terms: int = APOT_TERMS
    incoherence: bool = True

    def nbytes(self, bits: int, n: int, k: int) -> int:
        """Packed bytes of an N x K module at `bits` (llm1bit.quant.hf.packing): codes q x N x ceil(K/8); one byte
        per power-of-two term of every scale, whole blocks (lat: 8 columns x ceil(N/8) or groupsize/8 rows; acc:
        one column x N or groupsize rows); acc with incoherence: a float32 rescale per input, key and checksum."""
        codes = bits * n * math.ceil(k / 8)
        if self.mode == "lat":
            rows = math.ceil(n / LAT_COLS) if self.groupsize <= 0 else self.groupsize // LAT_COLS
            blocks = math.ceil(k / LAT_COLS) * math.ceil(n / rows)
        elif self.mode == "acc":
            rows = n if self.groupsize <= 0 else self.groupsize
            blocks = k * math.ceil(n / rows)
        else:
            raise UserError(f"mode {self.mode!r}: hardware budgets price shiftaddllm lat or acc")
        rotation = 4 * k + ROTATION_KEY_BYTES if self.mode == "acc" and self.incoherence else 0
        return codes + blocks * bits * self.apot_terms + rotation

    def proj_bits(self, bits: int, n: int, k: int) -> ProjBits:
        """The ProjBits `load_quantized_model` reads back for this module from the folder `quantize` writes."""
        return ProjBits(float(bits), BITS_MODES[self.mode], 8 * self.nbytes(bits, n, k) / (n * k))


def _check_family(model: ModelSpec) -> None:
    if model.source == "paper":
        raise UserError(
            f"per-layer bits name Hugging Face modules, so they go with a model given as a config / folder, "
            f"not with the built-in paper model {model.name}"
        )
    if model.family not in FAMILY_LAYOUTS:
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
        hf_of = projection_modules(model.family)
        rel: dict[str, tuple] = {
            hf_of[proj]: (i, proj)
            for proj, kind in kinds.items()
            if proj in hf_of and not (sparse and kind == FFN)
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


def _attach(
    model: ModelSpec, per_module: dict[str, ProjBits], what: str, storage: Storage | None = None
) -> ModelSpec:
    """`model` with each named module's (or expert group's) ProjBits; with `storage`, a width in its mode's format
    and without measured bytes moves the bytes `quantize` stores for that module (its own shape)."""
    names = _names(model)
    shapes = _shapes(model)
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
            if storage is not None and pb.bits_moved is None and pb.fmt == BITS_MODES[storage.mode]:
                shape = _slice_shapes(model)[where[2]] if where[1] == _SLICE else shapes.get(where[1])
                pb = storage.proj_bits(int(pb.bits), *shape) if shape else pb
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


def attach_bits(model: ModelSpec, per_module: dict[str, ProjBits], what: str) -> ModelSpec:
    """`model` with each named module's ProjBits, exactly as `load_quantized_model` attaches a folder's (expert
    slices averaged per layer): `llm1bit bits` prices an allocation through it before any folder exists."""
    return _attach(model, per_module, what)


@dataclass(frozen=True)
class ModuleSite:
    """Where a module's weights sit in the workload: its decoder block, the workload projections it gives its
    width to, its share of each (1; an expert slice 1 / experts, as the layer's mean prices it) and [out, in]."""

    block: int
    projections: tuple[str, ...]
    share: float
    shape: tuple[int, int]


def module_sites(model: ModelSpec) -> dict[str, ModuleSite]:
    """Every module a bits file or a quantized folder may name (routers left out), with its ModuleSite."""
    shapes, slices = _shapes(model), _slice_shapes(model) if model.moe else {}
    out = {}
    for name, where in _names(model).items():
        if where[1] == _SLICE:
            out[name] = ModuleSite(where[0], EXPERT_SLICES[where[2]], 1 / model.moe.experts, slices[where[2]])
        elif where[1] not in ROUTER_NAMES.values():
            out[name] = ModuleSite(where[0], (where[1],), 1.0, shapes[where[1]])
    return out


def with_bits_config(model: ModelSpec, path: str | Path) -> ModelSpec:
    """Attach the widths of a `llm1bit bits` file (or any {"layers": {module: bits}}) to a config-given model.

    The format follows the file's `settings.mode` (lat: bcq-lat, acc: bcq-acc) for the widths that format holds
    (whole widths 1 to 8), else each width's default. With a mode, those widths move the bytes `quantize` stores
    under the file's groupsize, apot_terms and incoherence (`Storage`; `quantize`'s defaults where not given), so
    the file is priced as `simulate --quantized` prices its folder; without one, the format's own blocks."""
    layers, stored = read_bits_file(path)
    mode = stored.get("mode")
    if mode is None and stored:
        key = next(iter(stored))
        raise UserError(
            f"bits config {path}: settings.{key} without settings.mode (lat or acc), which it describes; add the mode"
        )
    storage = None
    if mode is not None:
        groupsize = stored.get("groupsize", -1)
        if mode == "lat" and groupsize > 0 and groupsize % LAT_COLS:
            raise UserError(
                f"bits config {path}: settings.groupsize {groupsize} must be a multiple of 8 in lat mode"
            )
        storage = Storage(
            mode, groupsize, stored.get("apot_terms", APOT_TERMS), stored.get("incoherence", True)
        )
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
    return _attach(model, out, f"bits config {path}", storage)


def priced_by_point(model: ModelSpec) -> bool:
    """Whether any projection of `model` takes the point's weight width (one without per-layer bits, or a
    router, which `llm1bit quantize` keeps at its precision)."""
    from llm1bit.workload import MATMUL_FREE, build_workload

    return any(g.part == MATMUL_FREE and g.weight_bits is None for g in build_workload(model, 1))


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
    config, qc = read_quantized_config(folder, f"--quantized {folder}")
    modules = qc.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise UserError(f"--quantized {folder}: quantization_config has no modules")
    config_path = folder / "config.json"
    model = spec_from_hf_config(config, config_path, name=folder.name)
    packed = packed_by_module(safetensors_header(folder / WEIGHTS_NAME))
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
            raise UserError(f"--quantized {folder}: {WEIGHTS_NAME} holds no packed tensors for {name}")
        where = names.get(name)
        if where is not None:
            want = _slice_shapes(model)[where[2]] if where[1] == _SLICE else shapes[where[1]]
            if (n, k) != want:
                raise UserError(
                    f"--quantized {folder}: {name} has shape {[n, k]}, the config implies {list(want)}"
                )
        out[name] = ProjBits(bits, _format_of(meta, qc.get("method"), qc.get("mode")), 8 * stored / (n * k))
    return _attach(model, out, f"--quantized {folder}")
