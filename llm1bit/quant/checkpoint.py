"""The on-disk format of a quantized model and `load_quantized(path)`.

An output folder is a Hugging Face model folder: `config.json` (with a `quantization_config` block whose
`quant_method` is `llm1bit-<method>`), `generation_config.json`, the tokenizer files and one
`model.safetensors`. The safetensors file holds every tensor that stays in full precision (embeddings,
norms, biases, an untied lm_head) under its usual state-dict name, and for each quantized linear the
packed codes described in `llm1bit.quant.packing`. `load_quantized` rebuilds the model from the config,
swaps those linears for `QuantLinear` and loads the rest, so reloaded weights equal the solver's output
bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm1bit.errors import UserError
from llm1bit.layer_bits import safetensors_sizes

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FORMAT_VERSION = 2  # 2: one byte per power-of-two scale term (packing.encode_terms)
WEIGHTS_NAME = "model.safetensors"


def quant_linears(model: nn.Module) -> dict[str, nn.Module]:
    from llm1bit.quant.linear import QuantLinear

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
    from llm1bit import __version__

    layouts = {_layout(m) for m in modules.values()}
    if len(layouts) == 1:
        col_block, row_block = layouts.pop()
        group_layout: dict[str, Any] = {"col_block": col_block, "row_block": row_block}
    else:
        group_layout = {"col_block": "per module", "row_block": "per module"}
    bits = {name: m["bits"] for name, m in modules.items()}
    config: dict[str, Any] = {
        "quant_method": f"llm1bit-{spec_dict['method']}",
        "method": spec_dict["method"],
        "bits": spec_dict["wbits"],
        "mode": spec_dict["mode"] if spec_dict["method"] == "shiftaddllm" else None,
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
) -> dict[str, Any]:
    """Write the folder `out` (which must exist, e.g. the temp folder of `atomic_dir`); returns the
    quantization_config written. `extra` adds keys such as the calibration settings."""
    import torch
    from safetensors.torch import save_file

    from llm1bit import __version__
    from llm1bit.quant.packing import pack, packed_nbytes

    out = Path(out)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:  # a tied weight (lm_head = embed_tokens): stored once, re-tied on load
            continue
        seen.add(ptr)
        tensors[name] = tensor.detach().cpu().contiguous()
    modules: dict[str, dict[str, Any]] = {}
    for name, mod in quant_linears(model).items():
        packed, meta = pack(mod.quantized, mod.bits)
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

    qconfig = build_quantization_config(model, spec_dict, modules, extra or {})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
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
    from llm1bit.quant.result import BinaryCodes

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


def _unpack_checked(weights: Path, name: str, own: dict, meta: dict, linear_shape: tuple[int, int]):
    """Unpack one module's tensors, refusing (one line naming the file and module) any that do not match
    its quantization_config entry or the layer they replace."""
    from llm1bit.quant.packing import unpack

    what = f"{weights}: the packed tensors of {name} do not match its quantization_config"
    if not own:
        raise UserError(f"{weights}: no packed tensors for {name}, which quantization_config lists")
    try:
        shape = tuple(meta["shape"])
        quantized = unpack(own, meta)
        dense = _stored_shape(quantized.codes)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise UserError(
            f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc})"
        ) from None
    if tuple(dense) != shape or shape != linear_shape:
        raise UserError(
            f"{what}: they give {list(dense)}, the config says {list(shape)}, the layer is {list(linear_shape)}"
        )
    return quantized


def read_quantization_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path / 'config.json'}: {exc}") from None
    qc = config.get("quantization_config") or {}
    if not str(qc.get("quant_method", "")).startswith("llm1bit-"):
        raise UserError(f"{path} is not an llm1bit quantized folder (no llm1bit quantization_config)")
    return qc


def load_quantized(
    path: str | os.PathLike, device: str = "cpu", with_tokenizer: bool = False
) -> PreTrainedModel | tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Rebuild a runnable model from an `llm1bit quantize` folder; its linears compute through the stored codes.

    Returns the model (eval mode, on `device`), or (model, tokenizer) with `with_tokenizer=True`."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm1bit.quant.linear import QuantLinear
    from llm1bit.quant.models import _quiet_transformers

    _quiet_transformers()
    path = Path(path)
    qc = read_quantization_config(path)
    if int(qc.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(
            f"{path} uses format version {qc['format_version']}; this llm1bit reads up to {FORMAT_VERSION}"
        )
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"{path} has no {WEIGHTS_NAME}")
    safetensors_sizes(weights)  # a truncated file: one line naming it
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = getattr(torch, str(config.dtype or "float32").removeprefix("torch."))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_file(str(weights))

    for name, meta in qc["modules"].items():
        prefix = f"{name}."
        own = {
            key[len(prefix) :]: tensors.pop(key)
            for key in list(tensors)
            if key.startswith(prefix) and key != f"{prefix}bias"
        }
        bias = tensors.get(f"{prefix}bias")  # stays in `tensors` for load_state_dict
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            parent = None
        linear = getattr(parent, child, None)
        if not isinstance(linear, torch.nn.Linear):
            raise UserError(
                f"{path}: quantized module {name} is not a linear layer of {type(model).__name__}"
            )
        quantized = _unpack_checked(weights, name, own, meta, (linear.out_features, linear.in_features))
        setattr(parent, child, QuantLinear(quantized, bias, dtype=dtype, bits=int(meta["bits"])))

    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise UserError(f"{path}: unexpected tensors {', '.join(result.unexpected_keys[:5])}")
    if result.missing_keys:
        model.tie_weights()
        state = model.state_dict()
        loaded = {state[k].untyped_storage().data_ptr() for k in tensors}
        untied = [k for k in result.missing_keys if state[k].untyped_storage().data_ptr() not in loaded]
        if untied:
            raise UserError(f"{path}: missing tensors {', '.join(untied[:5])}")
    model.eval().to(device)
    if with_tokenizer:
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(path)
    return model
