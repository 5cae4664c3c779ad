"""Bits per weight of a saved folder, from its file: SmolLM2-135M's layer shapes (one decoder layer of them:
every layer of SmolLM2 has the same shapes, so the ratio is the whole model's) within the issue's bounds, and
equal to the count by hand from the packed layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm1bit.atomic import atomic_dir
from llm1bit.format.safetensors import bits_per_weight
from llm1bit.quant.hf.checkpoint import save_quantized
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model

SMOLLM2 = dict(
    hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, head_dim=64
)


def saved(tmp_path: Path, spec: QuantSpec) -> tuple[Path, dict]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, num_hidden_layers=1, tie_word_embeddings=True, **SMOLLM2)
    model = LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    quantize_model(model, spec, windows)
    out = tmp_path / "q"
    with atomic_dir(out) as tmp:
        qconfig = save_quantized(model, None, tmp, spec.to_dict())
    return out / "model.safetensors", qconfig["modules"]


def by_hand(meta: dict, q: int, terms: int) -> int:
    """Bytes of one lat module: q bit planes of N x ceil(K/8) bytes, one byte per scale term."""
    n, k = meta["shape"]
    blocks = math.ceil(k / meta["col_block"]) * math.ceil(n / meta["row_block"])
    return q * n * math.ceil(k / 8) + blocks * q * terms


@pytest.mark.parametrize(("groupsize", "bound"), [(128, 3.60), (-1, 3.15)])
def test_lat_bits_per_weight(tmp_path: Path, groupsize: int, bound: float) -> None:
    spec = QuantSpec(method="shiftaddllm", mode="lat", wbits=3, groupsize=groupsize, bcq_rounds=2)
    weights, modules = saved(tmp_path, spec)
    bpw = bits_per_weight(weights, modules)
    n_weights = sum(m["shape"][0] * m["shape"][1] for m in modules.values())
    hand = sum(by_hand(m, 3, 3) for m in modules.values())
    assert bpw["total"] == pytest.approx(8 * hand / n_weights, rel=1e-12)
    assert bpw["total"] <= bound and bpw["incoherence"] == 0


def test_acc_counts_its_rotation_data(tmp_path: Path) -> None:
    spec = QuantSpec(method="shiftaddllm", mode="acc", wbits=3, bcq_rounds=2)
    weights, modules = saved(tmp_path, spec)
    bpw = bits_per_weight(weights, modules)
    n_weights = sum(m["shape"][0] * m["shape"][1] for m in modules.values())
    # per module: a float32 rescale per input column, a 16-byte key and an 8-byte checksum
    rotation = sum(4 * m["shape"][1] + 16 + 8 for m in modules.values())
    assert bpw["incoherence"] == pytest.approx(8 * rotation / n_weights, rel=1e-12)
    assert bpw["total"] == pytest.approx(bpw["without_incoherence"] + bpw["incoherence"], rel=1e-12)
