"""Hugging Face `config.json` -> ModelSpec, field by field, as transformers' model of each `model_type` reads it.

Every default this module relies on is transformers' own (its `configuration_<type>.py` dataclass
default or `__post_init__`), named where it is used; a field it does not understand is refused with
one line, never guessed. Multimodal wrappers that nest the language model under `text_config`
(Gemma-3) are read through it."""

from __future__ import annotations

from pathlib import Path

from llm1bit.errors import UserError, warn
from llm1bit.format.folder import unwrap_quantized
from llm1bit.model_spec import EXPERT, FFN, MLA, ROUTER, SHARED_EXPERT, ModelSpec, MoE, Proj

SUPPORTED_MODEL_TYPES = (
    "opt",
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi3",
    "gpt_neox",
    "falcon",
    "bloom",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
)
# Defaults of GemmaConfig, Gemma2Config and Gemma3TextConfig (transformers 5) for fields Hub configs omit.
GEMMA_DEFAULTS = {
    "gemma": {
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "max_position_embeddings": 8192,
    },
    "gemma2": {
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 8192,
    },
    "gemma3_text": {
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131072,
    },
}
# transformers' attention-type names in `layer_types`; any other type is refused, never guessed.
LAYER_TYPES = {"full_attention": False, "sliding_attention": True}
# MistralConfig, Qwen2/Qwen3Config and Gemma2/Gemma3TextConfig default `sliding_window` to 4096.
HF_DEFAULT_WINDOW = 4096


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


def _get_bool(cfg: dict, path: Path, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"malformed config {path}: {key} = {value!r} must be true or false")
    return value


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


def _pattern_windows(
    cfg: dict, path: Path, n_layers: int, pattern: int, window: int | None
) -> tuple[int, ...]:
    """Gemma-2 / Gemma-3: layer_types where given, else every `pattern`-th layer global, the others sliding."""
    sliding = _layer_types(cfg, path, n_layers)
    if sliding is None:
        sliding = [bool((i + 1) % pattern) for i in range(n_layers)]
    if any(sliding) and window is None:
        raise UserError(f"malformed config {path}: sliding layers but sliding_window is null")
    return tuple(window if s else 0 for s in sliding)


def _windows(cfg: dict, path: Path, model_type: str, n_layers: int) -> tuple[int, ...]:
    """Per-layer sliding windows exactly as transformers' model of this `model_type` applies them."""
    if model_type == "qwen2_moe":
        # Qwen2MoeConfig.__post_init__: layer_types, else with use_sliding_window every other layer (from
        # layer 0) below max_window_layers (default 28) is sliding
        use = _get_bool(cfg, path, "use_sliding_window", False)
        window = _optional_window(cfg, path) if use else None
        sliding = _layer_types(cfg, path, n_layers)
        if sliding is None:
            first = _get_int(cfg, path, "max_window_layers", default=28)
            sliding = [use and bool((i + 1) % 2) and i < first for i in range(n_layers)]
        if any(sliding) and window is None:
            raise UserError(f"malformed config {path}: sliding layers but use_sliding_window is false")
        return tuple(window if x else 0 for x in sliding) if any(sliding) else ()
    if model_type in ("mistral", "phi3", "mixtral", "qwen3_moe"):
        # Every layer masked with `sliding_window` when it is set: MistralModel (it ignores layer_types;
        # MistralConfig defaults the window to 4096), Phi3Model and MixtralModel (their configs default it to
        # None), Qwen3MoeModel (only with use_sliding_window).
        if model_type == "qwen3_moe":
            on = _get_bool(cfg, path, "use_sliding_window", False)
        else:
            on = model_type == "mistral" or cfg.get("sliding_window") is not None
        window = _optional_window(cfg, path) if on else None
        return (window,) * n_layers if window else ()
    if model_type in ("qwen2", "qwen3"):
        # Qwen2/Qwen3Config: the window applies only with use_sliding_window; then layer_types,
        # else the layers from max_window_layers on (default 28) are sliding.
        use = _get_bool(cfg, path, "use_sliding_window", False)
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
    if model_type == "gemma2":
        # Gemma2Config.__post_init__: layer_types, else sliding / full alternating 1:1 (layer 0 sliding)
        return _pattern_windows(cfg, path, n_layers, 2, _optional_window(cfg, path))
    if model_type == "gemma3_text":
        # Gemma3TextConfig.__post_init__: layer_types, else sliding_window_pattern (default 6: 5 local, 1 global);
        # with use_bidirectional_attention the window becomes sliding_window // 2 + 1.
        window = _optional_window(cfg, path)
        if window and _get_bool(cfg, path, "use_bidirectional_attention", False):
            window = window // 2 + 1
        pattern = _get_int(cfg, path, "sliding_window_pattern", default=6)
        return _pattern_windows(cfg, path, n_layers, pattern, window)
    # LlamaModel, Gemma, OPT, GPT-2, GPT-NeoX, Falcon and BLOOM attend to every cached token.
    sliding = _layer_types(cfg, path, n_layers) or []
    if cfg.get("sliding_window") is not None or any(sliding):
        warn(
            f"{path}: transformers' {model_type} model ignores sliding_window / layer_types; full attention used"
        )
    return ()


def _text_config(cfg: dict, path: Path) -> tuple[dict, str]:
    """(the language model's config, its model_type): Gemma-3 wrappers hold it under text_config."""
    cfg = unwrap_quantized(cfg)
    model_type = cfg.get("model_type")
    text = cfg.get("text_config")
    if model_type == "gemma3":
        if not isinstance(text, dict):
            raise UserError(f"malformed config {path}: a gemma3 config needs its text_config")
        return text, "gemma3_text"  # Gemma3Config's text_config is a Gemma3TextConfig
    if model_type not in SUPPORTED_MODEL_TYPES:
        inner = text.get("model_type") if isinstance(text, dict) else None
        hint = (
            f"; its text_config holds a supported {inner!r} model: save that object as its own config.json "
            "to simulate the language model"
            if inner in SUPPORTED_MODEL_TYPES
            else ""
        )
        raise UserError(
            f"unsupported model_type {model_type!r} in {path}{hint}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return cfg, model_type


def spec_from_hf_config(cfg: dict, path: Path, name: str | None = None) -> ModelSpec:
    """Read the true decode-relevant architecture from a Hugging Face config dict."""
    name = name or cfg.get("_name_or_path") or path.parent.name or path.stem
    cfg, model_type = _text_config(cfg, path)
    common = {
        "name": name,
        "source": str(path.resolve()),
        "max_positions": _get_int(
            cfg,
            path,
            "max_position_embeddings",
            "n_positions",
            default=GEMMA_DEFAULTS.get(model_type, {}).get("max_position_embeddings", 0),
        ),
    }
    if model_type == "gpt2":
        d = _get_int(cfg, path, "n_embd", "hidden_size")
        return ModelSpec(
            family="gpt",
            d_model=d,
            n_heads=_get_int(cfg, path, "n_head", "num_attention_heads"),
            d_ff=_get_int(cfg, path, "n_inner", default=4 * d),
            n_layers=_get_int(cfg, path, "n_layer", "num_hidden_layers"),
            **common,
        )
    if model_type == "opt":
        return ModelSpec(
            family="opt",
            d_model=_get_int(cfg, path, "hidden_size"),
            n_heads=_get_int(cfg, path, "num_attention_heads"),
            d_ff=_get_int(cfg, path, "ffn_dim"),
            n_layers=_get_int(cfg, path, "num_hidden_layers"),
            **common,
        )
    if model_type in ("gpt_neox", "bloom", "falcon"):
        return _fused_qkv_family(cfg, path, model_type, common)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        return _deepseek(cfg, path, model_type, common)
    # Gemma configs on the Hub omit fields their config class fills in (Gemma-3-4B's text_config gives no
    # head counts): those dataclass defaults are what transformers builds, so they are ours too.
    gemma = GEMMA_DEFAULTS.get(model_type, {})
    heads = _get_int(cfg, path, "num_attention_heads", default=gemma.get("num_attention_heads"))
    d_model = _get_int(cfg, path, "hidden_size")
    kv_heads = _get_int(cfg, path, "num_key_value_heads", default=gemma.get("num_key_value_heads", heads))
    if gemma:
        head_dim = _get_int(cfg, path, "head_dim", default=gemma["head_dim"])
    else:
        head_dim = _get_int(cfg, path, "head_dim", default=0)
    d_ff = _get_int(cfg, path, "intermediate_size")
    n_layers = _get_int(cfg, path, "num_hidden_layers")
    projections = ()
    if model_type == "phi3":  # fused qkv_proj and gate_up_proj (Phi3Attention / Phi3MLP): same work, one GEMM
        dh = head_dim or d_model // heads
        projections = (
            Proj("qkv_proj", (heads + 2 * kv_heads) * dh, d_model),
            Proj("out_proj", d_model, heads * dh),
            Proj("gate_up_proj", 2 * d_ff, d_model, FFN),
            Proj("down_proj", d_model, d_ff, FFN),
        )
    family = "gemma" if model_type.startswith("gemma") else "phi3" if model_type == "phi3" else "llama"
    moe = (
        _moe(cfg, path, model_type, d_model, n_layers)
        if model_type in ("mixtral", "qwen2_moe", "qwen3_moe")
        else None
    )
    return ModelSpec(
        family=family,
        d_model=d_model,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        n_layers=n_layers,
        gated_ffn=True,
        windows=_windows(cfg, path, model_type, n_layers),
        projections=projections,
        moe=moe,
        **common,
    )


def _gated(prefix: str, ff: int, d: int, kind: str) -> tuple[Proj, ...]:
    return (
        Proj(f"{prefix}gate_proj", ff, d, kind),
        Proj(f"{prefix}up_proj", ff, d, kind),
        Proj(f"{prefix}down_proj", d, ff, kind),
    )


def _moe(cfg: dict, path: Path, model_type: str, d: int, n_layers: int) -> MoE:
    """Mixtral (MixtralSparseMoeBlock), Qwen2-MoE (with a gated shared expert), Qwen3-MoE."""
    if model_type == "mixtral":  # every layer sparse; experts of intermediate_size (no separate field)
        experts = _get_int(cfg, path, "num_local_experts", "num_experts", default=8)  # MixtralConfig defaults
        top_k = _get_int(cfg, path, "num_experts_per_tok", default=2)
        ff = _get_int(cfg, path, "intermediate_size")
        layers = (True,) * n_layers
        always: tuple[Proj, ...] = ()
    else:
        experts = _get_int(cfg, path, "num_experts", "num_local_experts")  # attribute_map aliases
        top_k = _get_int(cfg, path, "num_experts_per_tok")
        ff = _get_int(cfg, path, "moe_intermediate_size")
        step = _get_int(cfg, path, "decoder_sparse_step", default=1)
        only = cfg.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in only
        ):
            raise UserError(
                f"malformed config {path}: mlp_only_layers = {only!r} must be a list of layer indices"
            )
        # Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer: sparse unless in mlp_only_layers, every step-th layer
        layers = tuple(i not in only and (i + 1) % step == 0 for i in range(n_layers))
        always = ()
        if model_type == "qwen2_moe":
            shared = _get_int(cfg, path, "shared_expert_intermediate_size")
            always = (
                *_gated("shared_expert.", shared, d, SHARED_EXPERT),
                Proj("shared_expert_gate", 1, d, SHARED_EXPERT),
            )
    if top_k > experts:
        raise UserError(f"malformed config {path}: {top_k} experts per token but only {experts} experts")
    router = Proj("router", experts, d, ROUTER)
    return MoE(experts, top_k, _gated("expert.", ff, d, EXPERT), (router, *always), layers)


def _deepseek(cfg: dict, path: Path, model_type: str, common: dict) -> ModelSpec:
    """DeepSeek-V2 / V3: multi-head latent attention, routed + shared experts after `first_k_dense_replace`
    dense layers (DeepseekV2/V3DecoderLayer; transformers has no moe_layer_freq, so neither do we)."""
    d = _get_int(cfg, path, "hidden_size")
    heads = _get_int(cfg, path, "num_attention_heads")
    n_layers = _get_int(cfg, path, "num_hidden_layers")
    d_ff = _get_int(cfg, path, "intermediate_size")
    if cfg.get("moe_layer_freq", 1) not in (None, 1):
        raise UserError(
            f"unsupported config {path}: moe_layer_freq = {cfg['moe_layer_freq']!r} (transformers and llm1bit model 1)"
        )
    mla = MLA(
        q_lora_rank=_get_int(cfg, path, "q_lora_rank", default=0),
        kv_lora_rank=_get_int(cfg, path, "kv_lora_rank"),
        qk_nope_head_dim=_get_int(cfg, path, "qk_nope_head_dim"),
        qk_rope_head_dim=_get_int(cfg, path, "qk_rope_head_dim"),
        v_head_dim=_get_int(cfg, path, "v_head_dim"),
    )
    experts = _get_int(cfg, path, "n_routed_experts", "num_experts", "num_local_experts")
    top_k = _get_int(cfg, path, "num_experts_per_tok")
    moe_ff = _get_int(cfg, path, "moe_intermediate_size")
    first_dense = cfg.get("first_k_dense_replace") or 0
    shared = cfg.get("n_shared_experts") or 0
    always = _gated("shared_experts.", shared * moe_ff, d, SHARED_EXPERT) if shared else ()
    moe = MoE(
        experts,
        top_k,
        _gated("expert.", moe_ff, d, EXPERT),
        (Proj("router", experts, d, ROUTER), *always),
        tuple(i >= first_dense for i in range(n_layers)),
    )
    return ModelSpec(
        family=model_type,
        d_model=d,
        n_heads=heads,
        head_dim=mla.v_head_dim,
        d_ff=d_ff,
        n_layers=n_layers,
        gated_ffn=True,
        moe=moe,
        mla=mla,
        windows=_windows(cfg, path, model_type, n_layers),
        **common,
    )


def _fused_qkv_family(cfg: dict, path: Path, model_type: str, common: dict) -> ModelSpec:
    """GPT-NeoX, BLOOM and Falcon: one fused query_key_value projection, a dense output, a two-matrix MLP."""
    if (
        model_type == "bloom"
    ):  # BloomConfig: n_layer / n_head (num_hidden_layers / num_attention_heads alias them)
        d = _get_int(cfg, path, "hidden_size", "n_embed")
        heads = _get_int(cfg, path, "n_head", "num_attention_heads")
        n_layers = _get_int(cfg, path, "n_layer", "num_hidden_layers")
        d_ff, kv_heads = 4 * d, heads  # BloomMLP: 4 x hidden
    elif model_type == "gpt_neox":
        d = _get_int(cfg, path, "hidden_size")
        heads = _get_int(cfg, path, "num_attention_heads")
        n_layers = _get_int(cfg, path, "num_hidden_layers")
        d_ff, kv_heads = _get_int(cfg, path, "intermediate_size"), heads
    else:  # falcon (FalconAttention): new_decoder_architecture -> num_kv_heads; multi_query -> one K/V head
        d = _get_int(cfg, path, "hidden_size", "n_embed")
        heads = _get_int(cfg, path, "num_attention_heads", "n_head")
        n_layers = _get_int(cfg, path, "num_hidden_layers", "n_layer")
        d_ff = _get_int(cfg, path, "ffn_hidden_size", default=4 * d)  # FalconConfig: 4 x hidden when absent
        new_arch = _get_bool(cfg, path, "new_decoder_architecture", False)
        multi_query = _get_bool(cfg, path, "multi_query", True)  # FalconConfig default
        kv_heads = _get_int(cfg, path, "num_kv_heads", default=heads) if new_arch or not multi_query else 1
    if d % heads:
        raise UserError(f"model {common['name']}: {heads} heads do not divide hidden_size = {d}")
    dh = d // heads
    projections = (
        Proj("qkv_proj", (heads + 2 * kv_heads) * dh, d),
        Proj("out_proj", d, d),
        Proj("ffn_in", d_ff, d, FFN),
        Proj("ffn_out", d, d_ff, FFN),
    )
    return ModelSpec(
        family=model_type,
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv_heads,
        d_ff=d_ff,
        n_layers=n_layers,
        projections=projections,
        windows=_windows(cfg, path, model_type, n_layers),
        **common,
    )
