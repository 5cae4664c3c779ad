"""The models llm1bit knows: the paper's 13 (Table 2) and any Hugging Face config, as `ModelSpec`s.

Model lookup happens here and only here: a built-in paper name, else a Hugging Face
`config.json` (or a folder holding one). The paper's models keep the paper's simplified
shapes (GPT with d_FF = d, LLaMA with a two-matrix FFN); a config.json gives the true
architecture (real FFN size, gated FFN, grouped-query attention, number of layers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llm1bit.errors import UserError, unknown_choice, warn
from llm1bit.model_spec import ModelSpec

# The published Hugging Face configs of six of today's models (package data, read by fig13): configs/README.md.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _paper(name: str, family: str, d: int, h: int, d_ff: int, layers: int) -> ModelSpec:
    return ModelSpec(name=name, family=family, d_model=d, n_heads=h, d_ff=d_ff, n_layers=layers)


# The paper's Table 2 (layer counts from the released models). OPT-66B: the table prints
# h = 76, but the model and the paper's numbers use 72 heads of 128.
PAPER_MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _paper("gpt-125m", "gpt", 768, 12, 768, 12),
        _paper("gpt-355m", "gpt", 1024, 16, 1024, 24),
        _paper("gpt-774m", "gpt", 1280, 20, 1280, 36),
        _paper("gpt-1.5b", "gpt", 1600, 25, 1600, 48),
        _paper("opt-350m", "opt", 1024, 16, 4096, 24),
        _paper("opt-1.3b", "opt", 2048, 32, 8192, 24),
        _paper("opt-2.7b", "opt", 2560, 32, 10240, 32),
        _paper("opt-6.7b", "opt", 4096, 32, 16384, 32),
        _paper("opt-13b", "opt", 5120, 40, 20480, 40),
        _paper("opt-30b", "opt", 7168, 56, 28672, 48),
        _paper("opt-66b", "opt", 9216, 72, 36864, 64),
        _paper("llama-7b", "llama", 4096, 32, 11008, 32),
        _paper("llama-13b", "llama", 5120, 40, 13824, 40),
    )
}

OPT_MODELS = tuple(n for n in PAPER_MODELS if n.startswith("opt-"))
GPT_MODELS = tuple(n for n in PAPER_MODELS if n.startswith("gpt-"))
LLAMA_MODELS = tuple(n for n in PAPER_MODELS if n.startswith("llama-"))


def load_hf_config(path: str | Path) -> ModelSpec:
    """A `config.json`, or a folder holding one; named after the folder (or the file's stem)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UserError(f"folder {path.parent} holds no config.json")
    from llm1bit.jsonfile import read_json

    cfg = read_json(
        path, "config", constants=True
    )  # a key given twice is refused, not read as its last value
    if not isinstance(cfg, dict):
        raise UserError(f"malformed config {path}: expected a JSON object")
    from llm1bit.format import QUANTIZED_MODEL_TYPE
    from llm1bit.hf_config import spec_from_hf_config

    if cfg.get("model_type") == QUANTIZED_MODEL_TYPE:  # its numbers are the architecture's, not the folder's
        warn(
            f"{path.parent}: an llm1bit quantized folder given as a model is simulated as its architecture at "
            "the point's widths; --quantized prices each layer's own widths and packed bytes"
        )

    name = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_hf_config(cfg, path, name=name)


def resolve_model(name_or_path: str) -> ModelSpec:
    """Built-in paper name -> local config.json / folder; otherwise a one-line error listing the names.

    A built-in name wins over a local folder of the same name (`./name` selects the folder), and a
    config whose name would read like a built-in one is labelled by its path, so no two differ by source only."""
    text = name_or_path.strip()
    key = text.lower()
    path = Path(text)
    if key in PAPER_MODELS:
        if path.exists():
            warn(
                f"{text}: the built-in paper model is used; a local {text} exists too (pass ./{text} to use it)"
            )
        return PAPER_MODELS[key]
    if path.exists():
        spec = load_hf_config(path)
        return spec if spec.name.lower() not in PAPER_MODELS else dataclasses.replace(spec, name=text)
    if "/" in text or text.endswith(".json"):
        raise UserError(f"model config {text} does not exist")
    raise unknown_choice("model", text, list(PAPER_MODELS))


def resolve_models(names: str) -> list[ModelSpec]:
    """Comma-separated names; `opt`, `gpt`, `llama` and `paper` expand to the paper's groups.

    Repeated items are dropped; two different models that would share a name are labelled by their paths."""
    groups = {"opt": OPT_MODELS, "gpt": GPT_MODELS, "llama": LLAMA_MODELS, "paper": tuple(PAPER_MODELS)}
    given: dict[ModelSpec, str] = {}  # spec -> the item that named it (first one wins)
    for item in (x.strip() for x in names.split(",")):
        if not item:
            continue
        if item.lower() in groups:
            for n in groups[item.lower()]:
                given.setdefault(PAPER_MODELS[n], n)
        else:
            given.setdefault(resolve_model(item), item)
    if not given:
        raise UserError("no model given; example: --models opt-350m,opt-1.3b")
    names_used = [spec.name for spec in given]
    return [
        spec if names_used.count(spec.name) == 1 else dataclasses.replace(spec, name=item)
        for spec, item in given.items()
    ]
