"""The on-disk format of a quantized model, `load_quantized(path)`, and the module shells both loaders fill.

An output folder is a Hugging Face model folder: `config.json`, `generation_config.json`, the tokenizer files
and one `model.safetensors`. `config.json` is the original model's config with two changes: `model_type` is
"llm1bit" (transformers refuses an unknown model type, so a process that has not imported llm1bit fails
loudly instead of loading random weights) and `llm1bit_base_model_type` keeps the original one; plus a
`quantization_config` block whose `quant_method` is `llm1bit-<method>` and whose `modules` maps every
quantized module name to its `shape` [out, in], format and group layout. The safetensors file holds every
tensor that stays in full precision (embeddings, norms, biases, an untied lm_head) under its usual state-dict
name, and for each quantized module the packed tensors of `llm1bit.quant.hf.packing` under `<module name>.`.

Both loaders build the model on the meta device, replace each quantized module by an empty `QuantLinear`
shell shaped from the file's header (`build_shells`), fill it from the file and check it (`check_loaded`):
`load_quantized` with safetensors' `load_file`, and transformers' `from_pretrained` through the quantizer
registered in `llm1bit.quant.hf`. Reloaded weights equal the solver's output bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm1bit.errors import UserError
from llm1bit.format import (
    BASE_MODEL_TYPE_KEY,
    FORMAT_VERSION,
    QUANTIZED_MODEL_TYPE,
    SAVE_DTYPES,
    WEIGHTS_NAME,
    quant_method,
)
from llm1bit.format.folder import read_quantized_config, unwrap_quantized
from llm1bit.format.safetensors import packed_by_module, safetensors_header

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def storage_dtype(declared: object, requested: str = "auto") -> str:
    """The dtype the unquantized tensors are written in: `requested`, or with "auto" the model's declared
    dtype where it is a 16-bit one, else float16 (a GGUF source is dequantized to float32 on load; writing
    that would make the quantized folder larger than the FP16 model)."""
    if requested not in SAVE_DTYPES:
        raise UserError(f"--save-dtype {requested!r}: choose one of {', '.join(SAVE_DTYPES)}")
    if requested != "auto":
        return requested
    name = str(declared or "").removeprefix("torch.")
    return name if name in ("float16", "bfloat16") else "float16"


def quant_linears(model: nn.Module) -> dict[str, nn.Module]:
    from llm1bit.quant.hf.linear import QuantLinear

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, QuantLinear)}


def _layout(meta: dict[str, Any]) -> tuple[int | str, int | str]:
    """(col_block, row_block) of one module, whole dimensions written as "K", "N" or "N/8"."""
    n, k = meta["shape"]
    if "col_block" not in meta:  # uniform: groups of `groupsize` columns within each row
        return ("K" if meta["groupsize"] >= k else meta["groupsize"], 1)
    col, row = meta["col_block"], meta["row_block"]
    col_text = "K" if col >= k and k > 1 else col
    row_text = "N" if row >= n else ("N/8" if col == 8 and row == -(-n // 8) else row)
    return (col_text, row_text)


def build_quantization_config(
    model: nn.Module, spec_dict: dict[str, Any], modules: dict[str, dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """The `quantization_config` block: method, bits, mode, group layout, seed, tool version, per-layer data."""
    from llm1bit.quant.numerics.methods import METHOD_REGISTRY
    from llm1bit.version import __version__

    layouts = {_layout(m) for m in modules.values()}
    if len(layouts) == 1:
        col_block, row_block = layouts.pop()
        group_layout: dict[str, Any] = {"col_block": col_block, "row_block": row_block}
    else:
        group_layout = {"col_block": "per module", "row_block": "per module"}
    bits = {name: m["bits"] for name, m in modules.items()}
    config: dict[str, Any] = {
        "quant_method": quant_method(spec_dict["method"]),
        "method": spec_dict["method"],
        "bits": spec_dict["wbits"],
        "mode": spec_dict["mode"] if METHOD_REGISTRY[spec_dict["method"]].has_modes else None,
        "groupsize": spec_dict["groupsize"],
        "act_order": spec_dict.get("act_order"),
        "group_layout": group_layout,
        "seed": spec_dict["seed"],
        "tool": "llm1bit",
        "tool_version": __version__,
        "format_version": FORMAT_VERSION,
        "spec": spec_dict,
    }
    if len(set(bits.values())) > 1 or any(b != spec_dict["wbits"] for b in bits.values()):
        config["layer_bits"] = bits
    config.update(extra)
    config["modules"] = modules
    return config


def save_quantized(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out: str | os.PathLike,
    spec_dict: dict[str, Any],
    extra: dict[str, Any] | None = None,
    save_dtype: str = "auto",
) -> dict[str, Any]:
    """Write the folder `out` (which must exist, e.g. the temp folder of `atomic_dir`); returns the
    quantization_config written. `extra` adds keys such as the calibration settings.

    Unquantized floating-point tensors are written in `storage_dtype(..., save_dtype)` and the model in
    memory is rounded to the same values in place (its compute dtype unchanged), so it equals the folder
    loaded back; config.json keeps the compute dtype, which both loaders build the model in."""
    import torch
    from safetensors.torch import save_file

    from llm1bit.quant.hf.packing import packed_nbytes
    from llm1bit.version import __version__

    out = Path(out)
    stored_dtype = storage_dtype(getattr(model.config, "dtype", None), save_dtype)
    to_dtype = getattr(torch, stored_dtype)
    packed_keys = {f"{name}.{key}" for name, mod in quant_linears(model).items() for key in mod.packed_names}
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:  # a tied weight (lm_head = embed_tokens): stored once, re-tied on load
            continue
        seen.add(ptr)
        tensor = tensor.detach()
        if name not in packed_keys and tensor.is_floating_point() and tensor.dtype != to_dtype:
            stored = tensor.to(to_dtype)
            tensor.copy_(stored)  # the in-memory model is what the folder holds
            tensor = stored
        tensors[name] = tensor.cpu().contiguous()
    modules: dict[str, dict[str, Any]] = {}
    for name, mod in quant_linears(model).items():
        packed = {key: t.detach().cpu().contiguous() for key, t in mod.packed_tensors().items()}
        meta = dict(mod.meta)
        meta["bias"] = mod.bias is not None
        meta["nbytes"] = packed_nbytes(packed)
        modules[name] = meta
        tensors.update({f"{name}.{key}": t for key, t in packed.items()})
    if not modules:
        raise ValueError("the model has no quantized layers to save")
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "llm1bit_version": __version__})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / WEIGHTS_NAME, 0o666 & ~umask)  # like the other files, not owner-only

    qconfig = build_quantization_config(
        model, spec_dict, modules, {**(extra or {}), "save_dtype": stored_dtype}
    )
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config[BASE_MODEL_TYPE_KEY] = config["model_type"]
    config["model_type"] = QUANTIZED_MODEL_TYPE
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    config["quantization_config"] = qconfig
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return qconfig


def _stored_shape(codes) -> tuple[int, int]:
    """[out, in] the stored codes describe, after checking that their scales fit them (no dequantizing)."""
    from llm1bit.quant.numerics.codes import BinaryCodes

    if isinstance(codes, BinaryCodes):
        q, n, k = codes.codes.shape
        want = (-(-k // codes.col_block), -(-n // codes.row_block), q)
        if tuple(codes.scales.shape) != want:
            raise ValueError(
                f"scales of shape {list(codes.scales.shape)} for codes {[q, n, k]}: expected {list(want)}"
            )
        return n, k
    n, k = codes.qweight.shape
    want = (n, -(-k // codes.groupsize))
    if tuple(codes.scale.shape) != want or tuple(codes.zero.shape) != want:
        raise ValueError(
            f"scale / zero of shape {list(codes.scale.shape)} for levels {[n, k]}: expected {list(want)}"
        )
    return n, k


def _check_module(weights: Path, name: str, own: dict, meta: dict, layer_shape: tuple[int, int]) -> None:
    """Refuse (one line naming the file and module) packed tensors that do not match the module's
    quantization_config entry or the layer they replace."""
    from llm1bit.quant.hf.packing import unpack

    what = f"{weights}: the packed tensors of {name} do not match its quantization_config"
    try:
        shape = tuple(meta["shape"])
        quantized = unpack(own, meta)
        dense = _stored_shape(quantized.codes)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise UserError(
            f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc})"
        ) from None
    if tuple(dense) != shape or shape != tuple(layer_shape):
        raise UserError(
            f"{what}: they give {list(dense)}, the config says {list(shape)}, the layer is {list(layer_shape)}"
        )


def build_shells(
    model: nn.Module, modules: dict[str, dict[str, Any]], weights: Path, dtype
) -> dict[str, tuple[int, int]]:
    """Replace, in place, every module `quantization_config.modules` lists by an empty shell shaped from the
    safetensors header of `weights` (a QuantLinear for an nn.Linear; a QuantExperts for the slices of a fused
    experts module). Returns each module's expected [out, in] from the layer it replaces."""
    from torch import nn as torch_nn

    from llm1bit.quant.hf.linear import QuantLinear

    header = safetensors_header(weights)
    packed = packed_by_module(header)
    layer_shapes: dict[str, tuple[int, int]] = {}
    experts: dict[str, dict[str, dict[str, Any]]] = {}
    for name, meta in modules.items():
        prefix = f"{name}."
        specs = {
            suffix: [dtype_name, shape] for suffix, (dtype_name, shape, _) in packed.get(name, {}).items()
        }
        if not specs:
            raise UserError(f"{weights}: no packed tensors for {name}, which quantization_config lists")
        meta = {**meta, "tensors": specs}
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            parent = None
        target = getattr(parent, child, None) if parent is not None else None
        if isinstance(target, torch_nn.Linear):
            layer_shapes[name] = (target.out_features, target.in_features)
            setattr(parent, child, QuantLinear.shell(meta, f"{prefix}bias" in header, dtype))
            continue
        # a fused experts module (transformers 5 MoE): <experts>.<3-D parameter>.<expert index>
        owner_name, _, param_name = parent_name.rpartition(".")
        owner = _fused_experts(model, owner_name) if child.isdigit() else None
        fused = getattr(owner, param_name, None) if owner is not None else None
        slot = int(child) if child.isdigit() else -1
        if fused is None or fused.dim() != 3 or not 0 <= slot < fused.shape[0]:
            raise UserError(
                f"{weights}: quantized module {name} is not a linear layer of {type(model).__name__}"
            )
        layer_shapes[name] = (int(fused.shape[1]), int(fused.shape[2]))
        experts.setdefault(owner_name, {})[f"{param_name}.{slot}"] = meta
    if experts:
        from llm1bit.quant.hf.experts import QuantExperts

        for owner_name, metas in experts.items():
            parent_name, _, child = owner_name.rpartition(".")
            owner = model.get_submodule(owner_name)
            setattr(model.get_submodule(parent_name), child, QuantExperts.shell(owner, metas, dtype))
    return layer_shapes


def _fused_experts(model: nn.Module, name: str) -> nn.Module | None:
    """The fused experts module at `name` (3-D expert parameters, transformers 5 MoE), if it is one."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    from llm1bit.quant.hf.experts import is_fused_experts

    return module if is_fused_experts(module) else None


def check_loaded(
    model: nn.Module,
    modules: dict[str, dict[str, Any]],
    layer_shapes: dict[str, tuple[int, int]],
    weights: Path,
) -> None:
    """After a loader filled the shells: every quantized module's tensors are there (none left on the meta
    device), unpack, and match its config entry and the layer it replaces; nothing else is left unloaded."""
    import torch

    from llm1bit.quant.hf.linear import QuantLinear

    for name, meta in modules.items():
        module = model.get_submodule(name)
        if not isinstance(module, QuantLinear):
            raise UserError(f"{weights}: quantized module {name} was not rebuilt as a quantized layer")
        own = module.packed_tensors()
        missing = [key for key, t in own.items() if t.device == torch.device("meta")]
        if missing:
            raise UserError(
                f"{weights}: tensors {', '.join(f'{name}.{k}' for k in missing[:3])} were not loaded"
            )
        _check_module(weights, name, own, meta, layer_shapes[name])
    left = [
        n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device == torch.device("meta")
    ]
    if left:
        raise UserError(f"{weights}: missing tensors {', '.join(left[:5])}")


def quiet_transformers() -> None:
    """transformers' warnings and progress bars off: llm1bit reports its own, in one line each."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def base_config(config_dict: dict[str, Any]):
    """The original architecture's transformers config of a quantized folder's config dict (no
    quantization_config: the shells, not transformers, decide how the quantized modules load)."""
    from transformers import AutoConfig

    fields = unwrap_quantized(config_dict)
    fields = {k: v for k, v in fields.items() if k != "quantization_config"}
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def load_quantized(
    path: str | os.PathLike, device: str = "cpu", with_tokenizer: bool = False
) -> PreTrainedModel | tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Rebuild a runnable model from an `llm1bit quantize` folder; its linears compute through the stored codes.

    The model is built on the meta device, so nothing but the stored tensors is ever allocated: quantized
    linears hold their packed codes only (see `llm1bit.quant.hf.linear`). Returns the model (eval mode, on
    `device`), or (model, tokenizer) with `with_tokenizer=True`."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llm1bit.quant.hf.kernel.bf16 import attach as attach_bf16_gemv

    quiet_transformers()
    path = Path(path)
    config_dict, qc = read_quantized_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"{path} has no {WEIGHTS_NAME}")
    config = base_config(config_dict)
    dtype = getattr(torch, str(config.dtype or "float32").removeprefix("torch."))
    with init_empty_weights(include_buffers=False):  # parameters on meta; computed buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layer_shapes = build_shells(model, qc["modules"], weights, dtype)
    tensors = load_file(str(weights))
    packed_keys = {f"{name}.{key}" for name, mod in quant_linears(model).items() for key in mod.packed_names}
    tensors = {  # unquantized tensors are stored in 16 bits; the model computes in its config's dtype
        key: t.to(dtype) if t.is_floating_point() and key not in packed_keys else t
        for key, t in tensors.items()
    }
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise UserError(f"{path}: unexpected tensors {', '.join(result.unexpected_keys[:5])}")
    del tensors
    model.tie_weights()
    check_loaded(model, qc["modules"], layer_shapes, weights)
    attach_bf16_gemv(model)  # decode calls of its unquantized linears (lm_head): the kernel's bf16 GEMV
    model.eval().to(device)
    if with_tokenizer:
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(path)
    return model
