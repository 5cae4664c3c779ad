"""Load a causal LM (local folder, `.gguf` file, hub id, or an llm1bit output folder), refusing in one line
a source that cannot be one; the hub only where it answers."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from llm1bit.errors import UserError
from llm1bit.format.folder import is_quantized_folder
from llm1bit.quant.hf.checkpoint import quiet_transformers

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


def check_safetensors(folder: Path) -> None:
    """Every *.safetensors file of a folder has a whole header and all its tensors' bytes: a half-finished
    download is a one-line error naming the file, not a traceback from deep inside the loader."""
    from llm1bit.format.safetensors import safetensors_sizes

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

    quiet_transformers()
    check_model_source(source)
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if is_quantized_folder(path):
            from llm1bit.quant.hf.checkpoint import load_quantized

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
