"""ModelSpec: the shapes of a decoder-only LLM that decide its decode workload.

Model lookup happens here and only here: a built-in paper name, else a Hugging Face
`config.json` (or a folder holding one). The paper's models keep the paper's simplified
shapes (GPT with d_FF = d, LLaMA with a two-matrix FFN); a config.json gives the true
architecture (real FFN size, gated FFN, grouped-query attention, number of layers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, unknown_choice

# The published Hugging Face configs of six of today's models (package data, read by fig13): configs/README.md.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # gpt | opt | llama
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head attention)
    head_dim: int = 0  # 0: d_model // n_heads
    gated_ffn: bool = False  # gate + up + down projections (LLaMA/Mistral) instead of two matrices
    source: str = "paper"  # "paper" or the config.json it was read from

    def __post_init__(self) -> None:
        for field in ("d_model", "n_heads", "d_ff", "n_layers"):
            if getattr(self, field) <= 0:
                raise UserError(
                    f"model {self.name}: {field} = {getattr(self, field)} must be a positive integer"
                )
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise UserError(
                f"model {self.name}: {self.n_heads} heads do not divide d_model = {self.d_model}; "
                "give head_dim explicitly or use a head count that divides d_model"
            )
        if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            raise UserError(
                f"model {self.name}: {self.n_kv_heads} key/value heads must divide the {self.n_heads} attention heads"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def architecture(self) -> str:
        ffn = "gated FFN" if self.gated_ffn else "FFN"
        attn = f"GQA {self.n_heads}/{self.kv_heads}" if self.kv_heads != self.n_heads else "MHA"
        return f"{attn}, {ffn}"


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

SUPPORTED_MODEL_TYPES = ("opt", "gpt2", "llama", "mistral", "qwen2", "qwen3")


def _get_int(cfg: dict, path: Path, *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"malformed config {path}: {key} = {value!r} must be a positive integer")
            return value
    if default is not None:
        return default
    raise UserError(f"malformed config {path}: missing {' / '.join(keys)}")


def spec_from_hf_config(cfg: dict, path: Path, name: str | None = None) -> ModelSpec:
    """Read the true decode-relevant architecture from a Hugging Face config dict."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported model_type {model_type!r} in {path}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    name = name or cfg.get("_name_or_path") or path.parent.name or path.stem
    if model_type == "gpt2":
        d = _get_int(cfg, path, "n_embd", "hidden_size")
        return ModelSpec(
            name=name,
            family="gpt",
            d_model=d,
            n_heads=_get_int(cfg, path, "n_head", "num_attention_heads"),
            d_ff=_get_int(cfg, path, "n_inner", default=4 * d),
            n_layers=_get_int(cfg, path, "n_layer", "num_hidden_layers"),
            source=str(path),
        )
    if model_type == "opt":
        return ModelSpec(
            name=name,
            family="opt",
            d_model=_get_int(cfg, path, "hidden_size"),
            n_heads=_get_int(cfg, path, "num_attention_heads"),
            d_ff=_get_int(cfg, path, "ffn_dim"),
            n_layers=_get_int(cfg, path, "num_hidden_layers"),
            source=str(path),
        )
    heads = _get_int(cfg, path, "num_attention_heads")
    return ModelSpec(
        name=name,
        family="llama",
        d_model=_get_int(cfg, path, "hidden_size"),
        n_heads=heads,
        n_kv_heads=_get_int(cfg, path, "num_key_value_heads", default=heads),
        head_dim=_get_int(cfg, path, "head_dim") if cfg.get("head_dim") is not None else 0,
        d_ff=_get_int(cfg, path, "intermediate_size"),
        n_layers=_get_int(cfg, path, "num_hidden_layers"),
        gated_ffn=True,
        source=str(path),
    )


def load_hf_config(path: str | Path) -> ModelSpec:
    """A `config.json`, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UserError(f"folder {path.parent} holds no config.json")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed config {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"malformed config {path}: expected a JSON object")
    name = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_hf_config(cfg, path, name=name)


def resolve_model(name_or_path: str) -> ModelSpec:
    """Built-in paper name -> local config.json / folder; otherwise a one-line error listing the names."""
    key = name_or_path.strip().lower()
    if key in PAPER_MODELS:
        return PAPER_MODELS[key]
    path = Path(name_or_path)
    if path.exists():
        return load_hf_config(path)
    if "/" in name_or_path or name_or_path.endswith(".json"):
        raise UserError(f"model config {name_or_path} does not exist")
    raise unknown_choice("model", name_or_path, list(PAPER_MODELS))


def resolve_models(names: str) -> list[ModelSpec]:
    """Comma-separated names; `opt`, `gpt`, `llama` and `paper` expand to the paper's groups."""
    groups = {"opt": OPT_MODELS, "gpt": GPT_MODELS, "llama": LLAMA_MODELS, "paper": tuple(PAPER_MODELS)}
    out: list[ModelSpec] = []
    for item in (x.strip() for x in names.split(",")):
        if not item:
            continue
        if item.lower() in groups:
            out += [PAPER_MODELS[n] for n in groups[item.lower()]]
        else:
            out.append(resolve_model(item))
    if not out:
        raise UserError("no model given; example: --models opt-350m,opt-1.3b")
    return out
