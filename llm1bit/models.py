"""ModelSpec: the shapes of a decoder-only LLM that decide its decode workload.

Model lookup happens here and only here: a built-in paper name, else a Hugging Face
`config.json` (or a folder holding one). The paper's models keep the paper's simplified
shapes (GPT with d_FF = d, LLaMA with a two-matrix FFN); a config.json gives the true
architecture (real FFN size, gated FFN, grouped-query attention, number of layers)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, unknown_choice, warn

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
    source: str = "paper"  # "paper" or the absolute path of the config.json it was read from
    # Per decoder layer: the sliding attention window W (0 = full attention); () = every layer full.
    windows: tuple[int, ...] = ()
    max_positions: int = 0  # the config's max_position_embeddings (0: not given)
    # Per decoder block: ((projection name, layer_bits.ProjBits), ...) for projections with their own
    # width (from a bits file or a quantized folder); () = every projection at the point's precision.
    proj_bits: tuple = ()

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
        if self.windows and (len(self.windows) != self.n_layers or min(self.windows) < 0):
            raise UserError(f"model {self.name}: give one window >= 0 per layer ({self.n_layers}), or none")

    @property
    def window_groups(self) -> dict[int, int]:
        """Window -> number of layers using it (0 = full attention), full attention first."""
        groups: dict[int, int] = {}
        for w in sorted(self.windows or (0,) * self.n_layers):
            groups[w] = groups.get(w, 0) + 1
        return groups

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
        windowed = {w: n for w, n in self.window_groups.items() if w}
        if windowed:
            attn += ", " + ", ".join(f"{n}/{self.n_layers} layers window {w}" for w, n in windowed.items())
        bits = ""
        if self.proj_bits:
            widths = sorted({pb.bits for block in self.proj_bits for _, pb in block})
            bits = ", per-layer weight bits " + "/".join(f"{b:g}" for b in widths)
        return f"{attn}, {ffn}{bits}"


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


# transformers' attention-type names in `layer_types`; any other type is refused, never guessed.
LAYER_TYPES = {"full_attention": False, "sliding_attention": True}
# MistralConfig and Qwen2/Qwen3Config default `sliding_window` to 4096 when the key is absent.
HF_DEFAULT_WINDOW = 4096


def _optional_window(cfg: dict, path: Path) -> int | None:
    """The config's `sliding_window` (transformers' default 4096 when absent), None when it is null."""
    value = cfg.get("sliding_window", HF_DEFAULT_WINDOW)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(
            f"malformed config {path}: sliding_window = {value!r} must be a positive integer or null"
        )
    return value


def _layer_types(cfg: dict, path: Path, n_layers: int) -> list[bool] | None:
    """`layer_types` as a per-layer "is sliding" list, or None when the config does not give it."""
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != n_layers:
        raise UserError(f"malformed config {path}: layer_types must list one type per layer ({n_layers})")
    for t in types:
        if t not in LAYER_TYPES:
            raise UserError(
                f"unsupported layer type {t!r} in {path}: layer_types; supported: {', '.join(LAYER_TYPES)}"
            )
    return [LAYER_TYPES[t] for t in types]


def _windows(cfg: dict, path: Path, model_type: str, n_layers: int) -> tuple[int, ...]:
    """Per-layer sliding windows exactly as transformers' model of this `model_type` applies them."""
    if model_type == "mistral":
        # MistralModel masks every layer with `sliding_window` (it ignores layer_types).
        window = _optional_window(cfg, path)
        return (window,) * n_layers if window else ()
    if model_type in ("qwen2", "qwen3"):
        # Qwen2/Qwen3Config: the window applies only with use_sliding_window; then layer_types,
        # else the layers from max_window_layers on (default 28) are sliding.
        use = cfg.get("use_sliding_window", False)
        if not isinstance(use, bool):
            raise UserError(f"malformed config {path}: use_sliding_window = {use!r} must be true or false")
        window = _optional_window(cfg, path) if use else None
        sliding = _layer_types(cfg, path, n_layers)
        if sliding is None:
            first = cfg.get("max_window_layers", 28)
            if isinstance(first, bool) or not isinstance(first, int) or first < 0:
                raise UserError(
                    f"malformed config {path}: max_window_layers = {first!r} must be an integer >= 0"
                )
            sliding = [window is not None and i >= first for i in range(n_layers)]
        if any(sliding) and window is None:
            raise UserError(
                f"malformed config {path}: layer_types has sliding layers but use_sliding_window is false "
                "or sliding_window is null"
            )
        return tuple(window if s else 0 for s in sliding) if any(sliding) else ()
    # LlamaModel, OPT and GPT-2 attend to every cached token; say so if the config suggests otherwise.
    sliding = _layer_types(cfg, path, n_layers) or []
    if cfg.get("sliding_window") is not None or any(sliding):
        warn(
            f"{path}: transformers' {model_type} model ignores sliding_window / layer_types; full attention used"
        )
    return ()


def spec_from_hf_config(cfg: dict, path: Path, name: str | None = None) -> ModelSpec:
    """Read the true decode-relevant architecture from a Hugging Face config dict."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported model_type {model_type!r} in {path}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    name = name or cfg.get("_name_or_path") or path.parent.name or path.stem
    source = str(path.resolve())
    max_positions = _get_int(cfg, path, "max_position_embeddings", "n_positions", default=0)
    if model_type == "gpt2":
        d = _get_int(cfg, path, "n_embd", "hidden_size")
        return ModelSpec(
            name=name,
            family="gpt",
            d_model=d,
            n_heads=_get_int(cfg, path, "n_head", "num_attention_heads"),
            d_ff=_get_int(cfg, path, "n_inner", default=4 * d),
            n_layers=_get_int(cfg, path, "n_layer", "num_hidden_layers"),
            source=source,
            max_positions=max_positions,
        )
    if model_type == "opt":
        return ModelSpec(
            name=name,
            family="opt",
            d_model=_get_int(cfg, path, "hidden_size"),
            n_heads=_get_int(cfg, path, "num_attention_heads"),
            d_ff=_get_int(cfg, path, "ffn_dim"),
            n_layers=_get_int(cfg, path, "num_hidden_layers"),
            source=source,
            max_positions=max_positions,
        )
    heads = _get_int(cfg, path, "num_attention_heads")
    d_model = _get_int(cfg, path, "hidden_size")
    kv_heads = _get_int(cfg, path, "num_key_value_heads", default=heads)
    head_dim = _get_int(cfg, path, "head_dim") if cfg.get("head_dim") is not None else 0
    d_ff = _get_int(cfg, path, "intermediate_size")
    n_layers = _get_int(cfg, path, "num_hidden_layers")
    return ModelSpec(
        name=name,
        family="llama",
        d_model=d_model,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        n_layers=n_layers,
        gated_ffn=True,
        source=source,
        windows=_windows(cfg, path, model_type, n_layers),
        max_positions=max_positions,
    )


def load_hf_config(path: str | Path, label: str | None = None) -> ModelSpec:
    """A `config.json`, or a folder holding one; `label` overrides the name taken from the path."""
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
    name = label or (path.parent.name if path.name == "config.json" else path.stem)
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
