"""ModelSpec: the shapes of a decoder-only LLM that decide its decode workload.

Model lookup happens here and only here: a built-in paper name, else a Hugging Face
`config.json` (or a folder holding one). The paper's models keep the paper's simplified
shapes (GPT with d_FF = d, LLaMA with a two-matrix FFN); a config.json gives the true
architecture (real FFN size, gated FFN, grouped-query attention, number of layers)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, unknown_choice, warn

# The published Hugging Face configs of six of today's models (package data, read by fig13): configs/README.md.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


ATTENTION_PROJECTION, FFN, EXPERT, ROUTER, SHARED_EXPERT = (
    "attention-projection",
    "ffn",
    "expert",
    "router",
    "shared-expert",
)


@dataclass(frozen=True)
class Proj:
    """One weight matrix of a decoder block: N outputs x K inputs (nn.Linear's [out, in])."""

    name: str
    n: int
    k: int
    kind: str = ATTENTION_PROJECTION  # attention-projection | ffn | expert | router | shared-expert
    per_block: int = 1  # occurrences per block (MLA's absorbed per-head products: the head count)


@dataclass(frozen=True)
class MoE:
    """A mixture-of-experts FFN: `experts` routed experts of which `top_k` per token, each `expert` projections,
    plus what every token always runs (`always`: the router, shared experts and their gate)."""

    experts: int
    top_k: int
    expert: tuple[Proj, ...]
    always: tuple[Proj, ...]
    layers: tuple[bool, ...]  # per decoder layer: the MoE FFN (True) or the dense FFN (False)


@dataclass(frozen=True)
class MLA:
    """Multi-head latent attention (DeepSeek-V2/V3): the cache holds kv_lora_rank + qk_rope_head_dim per token.

    `absorbed` (default): kv_b_proj folded into the query and output sides, the attention products run
    over the latent cache (one shared 'K/V head' of width kv_lora + rope); `expanded`: kv_b_proj
    re-expands K and V per head and the cache holds them (transformers' implementation)."""

    q_lora_rank: int  # 0: q_proj directly
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    form: str = "absorbed"


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
    # A block's projections (Proj) where the family's layout is not the classic one (fused QKV, fused
    # gate/up, Falcon's multi-query QKV, MLA's projections); () = derived from the fields above.
    projections: tuple = ()
    moe: MoE | None = None
    mla: MLA | None = None

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
        if self.kv_heads == 1 and self.n_heads > 1:
            attn = f"MQA {self.n_heads}/1"
        fused = [p.name for p in self.projections if p.name in ("qkv_proj", "gate_up_proj")]
        if fused:
            attn += ", fused " + " and ".join(fused)
        if self.mla:
            attn = f"MLA {self.n_heads} heads ({self.mla.form}, latent {self.mla.kv_lora_rank}+{self.mla.qk_rope_head_dim})"
        if self.moe:
            shared = sum(p.kind == SHARED_EXPERT for p in self.moe.always)
            ffn = (
                f"MoE {self.moe.top_k}/{self.moe.experts} experts"
                + (" + shared" if shared else "")
                + f" in {sum(self.moe.layers)}/{self.n_layers} layers"
            )
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
    from llm1bit.hf_config import QUANTIZED_MODEL_TYPE, spec_from_hf_config

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
