"""Load a causal LM (local folder, `.gguf` file, hub id, or an llm1bit output folder) and find its
decoder layers and the linear layers inside them that get quantized.

The layout is read from the module structure: the decoder stack is the `nn.ModuleList` of
`config.num_hidden_layers` identical layers, and each layer's `nn.Linear` children must form one of the
known layouts (OPT, LLaMA-style incl. Gemma-2/3, Phi-3's fused qkv / gate_up, and Mixtral / Qwen2-MoE /
Qwen3-MoE with their fused experts, see `llm1bit.quant.experts`); anything else is refused with a message
naming what was found."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from llm1bit.errors import UserError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

QUANT_METHOD_PREFIX = "llm1bit-"

# Linear layers of one decoder layer, relative names, in the order they are quantized.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "opt": (
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.q_proj",
        "self_attn.out_proj",
        "fc1",
        "fc2",
    ),
    "llama": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ),
    # Phi-3: fused q/k/v and gate/up projections (plain nn.Linear, quantized as one matrix each)
    "phi3": (
        "self_attn.qkv_proj",
        "self_attn.o_proj",
        "mlp.gate_up_proj",
        "mlp.down_proj",
    ),
    # Mixtral, Qwen3-MoE: attention + fused experts (each expert's slices listed after these)
    "moe": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    ),
    # Qwen2-MoE: attention + a shared expert (its 1-output gate keeps its precision) + fused experts
    "moe-shared": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.shared_expert.gate_proj",
        "mlp.shared_expert.up_proj",
        "mlp.shared_expert.down_proj",
    ),
}
MOE_LAYOUTS = ("moe", "moe-shared")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class DecoderStack:
    """Where the decoder layers live and which linears of each layer are quantized."""

    prefix: str  # module name of the ModuleList, e.g. "model.layers" or "model.decoder.layers"
    layers: nn.ModuleList
    layout: str  # a key of LAYOUTS ("a+b" when the layers differ, e.g. Qwen2-MoE's mlp_only_layers)
    linears: tuple[str, ...]  # relative names inside layer 0 (expert slices "mlp.experts.down_proj.3")
    per_layer: tuple[tuple[str, ...], ...] = ()  # every layer's names; empty: all as `linears`
    experts: tuple[tuple[str, ...], ...] = ()  # per layer: relative names of its fused-experts modules

    def layer_name(self, index: int) -> str:
        return f"{self.prefix}.{index}"

    def layer_linears(self, index: int) -> tuple[str, ...]:
        return self.per_layer[index] if self.per_layer else self.linears

    def layer_experts(self, index: int) -> tuple[str, ...]:
        """Relative names of layer `index`'s experts modules (fused or already `QuantExperts`)."""
        return self.experts[index] if self.experts else ()

    def module_names(self) -> list[str]:
        """Full module names of every quantizable linear (and expert slice), layer by layer."""
        return [f"{self.prefix}.{i}.{rel}" for i in range(len(self.layers)) for rel in self.layer_linears(i)]


def _layer_linears(layer: nn.Module, linear: tuple[type, ...]) -> tuple[list[str], list[str], list[str]]:
    """(dense linear names, experts module names, expert slice names) of one decoder layer.

    Experts modules are fused transformers experts or `QuantExperts`; the direct nn.Linear children of a
    block that holds experts (the router `gate` when it is an nn.Linear, Qwen2-MoE's 1-output
    `shared_expert_gate`) are routing and keep their precision; custom router modules are not linears."""
    from llm1bit.quant.experts import (
        QuantExperts,
        is_fused_experts,
        looks_like_experts,
        slice_names,
        unsupported_experts,
    )

    experts, slices = [], []
    for name, mod in layer.named_modules():
        if isinstance(mod, QuantExperts) or is_fused_experts(mod):
            experts.append(name)
            slices.extend(f"{name}.{s}" for s in slice_names(mod))
        elif looks_like_experts(mod):
            raise UserError(
                f"unsupported mixture-of-experts module {name} ({type(mod).__name__}): {unsupported_experts(mod)}"
            )
    routers = {
        f"{parent}.{child}" if parent else child
        for parent in (name.rpartition(".")[0] for name in experts)
        for child, mod in (layer.get_submodule(parent) if parent else layer).named_children()
        if isinstance(mod, linear)
    }
    inside = tuple(f"{name}." for name in experts)
    dense = [
        n
        for n, m in layer.named_modules()
        if isinstance(m, linear) and n not in routers and not n.startswith(inside)
    ]
    return dense, experts, slices


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """Locate the decoder layers and check their linear layers (or `QuantLinear`s) against the known layouts.

    Mixture-of-experts layers (Mixtral, Qwen2-MoE, Qwen3-MoE) list each expert's slices of the fused
    experts weights as their own linears, after the layout's dense linears."""
    from torch import nn

    from llm1bit.quant.linear import QuantLinear

    linear = (nn.Linear, QuantLinear)

    n_layers = getattr(model.config, "num_hidden_layers", None)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) > 0
        and (n_layers is None or len(mod) == n_layers)
        and len({type(m) for m in mod}) == 1
        and any(isinstance(m, linear) for m in mod[0].modules())
    ]
    if len(candidates) != 1:
        found = ", ".join(n for n, _ in candidates) or "none"
        raise UserError(
            f"cannot find the decoder layers of {type(model).__name__}: expected one list of "
            f"{n_layers} identical layers, found {found}"
        )
    prefix, layers = candidates[0]
    layouts, per_layer, experts = [], [], []
    for i, layer in enumerate(layers):
        dense, layer_experts, slices = _layer_linears(layer, linear)
        layout = next(
            (
                name
                for name, expected in LAYOUTS.items()
                if set(dense) == set(expected) and (name in MOE_LAYOUTS) == bool(layer_experts)
            ),
            None,
        )
        if layout is None:
            if i:
                raise UserError(f"decoder layer {i} of {type(model).__name__} has linears {sorted(dense)}")
            extra = f" and experts {', '.join(layer_experts)}" if layer_experts else ""
            raise UserError(
                f"unsupported layer structure in {type(model).__name__}: linear layers {', '.join(dense)}"
                f"{extra}; supported: OPT ({', '.join(LAYOUTS['opt'])}), LLaMA-style "
                f"({', '.join(LAYOUTS['llama'])}), Phi-3 ({', '.join(LAYOUTS['phi3'])}) and "
                "Mixtral / Qwen-MoE experts"
            )
        layouts.append(layout)
        per_layer.append(LAYOUTS[layout] + tuple(slices))
        experts.append(tuple(layer_experts))
    kinds = list(dict.fromkeys(layouts))
    uniform = len(set(per_layer)) == 1
    return DecoderStack(
        prefix=prefix,
        layers=layers,
        layout="+".join(kinds),
        linears=per_layer[0],
        per_layer=() if uniform else tuple(per_layer),
        experts=tuple(experts) if any(experts) else (),
    )


def _is_llm1bit_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        qc = json.loads(config.read_text()).get("quantization_config") or {}
    except (OSError, json.JSONDecodeError):
        return False
    return str(qc.get("quant_method", "")).startswith(QUANT_METHOD_PREFIX)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint answers a TCP connection (offline mode counts as no)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def check_safetensors(folder: Path) -> None:
    """Every *.safetensors file of a folder has a whole header and all its tensors' bytes: a half-finished
    download is a one-line error naming the file, not a traceback from deep inside the loader."""
    from llm1bit.layer_bits import safetensors_sizes

    for file in sorted(folder.glob("*.safetensors")):
        safetensors_sizes(file)


def check_model_source(source: str | os.PathLike) -> None:
    """Refuse, in one line and without loading anything, a model source that cannot be a model: a folder
    without config.json, a missing .gguf file, another kind of file, or a name that is no hub id."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json")
    elif path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist")
    elif path.exists():
        raise UserError(f"--model {text}: expected a model folder or a .gguf file")
    elif not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise UserError(f"model {text!r} does not exist (not a local folder, .gguf file or hub id)")


def load_model(
    source: str | os.PathLike, dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) on the CPU in eval mode from a folder, a `.gguf` file or a hub id.

    A folder written by `llm1bit quantize` is rebuilt with `load_quantized`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    check_model_source(source)
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if _is_llm1bit_folder(path):
            from llm1bit.quant.checkpoint import load_quantized

            return load_quantized(path, with_tokenizer=True)
        check_safetensors(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot load model from {path}: {_first_line(exc)}") from None
    elif path.suffix.lower() == ".gguf":
        model, tokenizer = _load_gguf(path)
    else:
        model, tokenizer = _load_hub(text, dtype)
    model.eval()
    return model, tokenizer


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file through transformers (dequantized to float32) and make it serializable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # the GGUF converter draws its own tqdm bar on stderr; keep the terminal quiet
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as exc:
        raise UserError(
            f"loading {path.name} needs the gguf and accelerate packages: {_first_line(exc)}"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError, struct.error, EOFError, IndexError) as exc:
        # a truncated file ends in struct.error / a short read deep inside the GGUF reader
        raise UserError(
            f"cannot load GGUF file {path} (truncated or not a GGUF file?): {_first_line(exc)}"
        ) from None
    # The weights are dequantized already; drop the gguf marker so save_pretrained works.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def _load_hub(model_id: str, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub id from the local cache, else from the hub when it is reachable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            raise UserError(
                f"model {model_id!r} is not a local folder or .gguf file, is not in the Hugging Face "
                "cache, and the hub is unreachable from here; pass a local folder or FILE.gguf"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_only)
            return model, tokenizer
        except (OSError, ValueError) as exc:
            if not local_only:
                raise UserError(f"cannot load model {model_id!r} from the hub: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_seqlen(model: nn.Module, seqlen: int, flag: str = "--seqlen") -> None:
    """Refuse windows longer than the model's context (OPT's learned positions would fail, RoPE degrade)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if seqlen < 2:
        raise UserError(f"{flag} {seqlen} must be at least 2")
    if limit is not None and seqlen > limit:
        raise UserError(
            f"{flag} {seqlen} exceeds the model's context of {limit} tokens (max_position_embeddings)"
        )
