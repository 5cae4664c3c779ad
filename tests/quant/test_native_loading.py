"""Native loading and lean memory: `from_pretrained` needs `import llm1bit`, builds nothing in full precision
first, and the quantized linears hold their packed tensors only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm1bit.atomic import atomic_dir
from llm1bit.quant.hf.checkpoint import load_quantized, quant_linears, save_quantized
from llm1bit.quant.hf.linear import QuantLinear, set_weight_cache
from llm1bit.quant.hf.loading import load_model
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model

STORIES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "models" / "stories260K"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    model, tokenizer = load_model(STORIES)
    spec = QuantSpec(method="rtn", wbits=3)
    quantize_model(model, spec)
    out = tmp_path_factory.mktemp("native") / "rtn3"
    with atomic_dir(out) as tmp:
        save_quantized(model, tokenizer, tmp, spec.to_dict())
    return out


def test_config_guards_the_folder(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llm1bit" and config["llm1bit_base_model_type"] == "llama"
    assert config["quantization_config"]["format_version"] == 3


def test_refused_without_llm1bit(folder: Path, tmp_path: Path) -> None:
    """transformers alone must fail loudly, never load random weights in place of the codes."""
    code = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        "assert 'llm1bit' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    assert "llm1bit" in run.stderr and "does not recognize this architecture" in run.stderr


def test_native_in_a_fresh_process_after_import(folder: Path, tmp_path: Path) -> None:
    code = (
        "import llm1bit, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "from llm1bit.quant.hf.checkpoint import load_quantized\n"
        f"a = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        f"b = load_quantized({str(folder)!r})\n"
        "x = torch.arange(1, 40)[None]\n"
        "assert torch.equal(a(x).logits, b(x).logits)\n"
        "print(type(a.model.layers[0].mlp.down_proj).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "QuantLinear"


def test_linears_hold_packed_tensors_only(folder: Path) -> None:
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    for model in (load_quantized(folder), AutoModelForCausalLM.from_pretrained(folder)):
        linears = quant_linears(model)
        assert set(linears) == set(qc["modules"])
        for name, layer in linears.items():
            held = sum(t.numel() * t.element_size() for t in layer.buffers())
            assert held == qc["modules"][name]["nbytes"], name  # the packed bytes, nothing dense beside them
            assert layer._weight is None
            assert all(t.dtype in (torch.uint8, torch.float32) for t in layer.buffers())
        x = torch.arange(1, 30)[None]
        with torch.no_grad():
            model(x)
        assert all(layer._weight is None for layer in linears.values())  # a forward keeps nothing dense


def test_weight_cache_is_optional_and_exact(folder: Path) -> None:
    model = load_quantized(folder)
    x = torch.arange(1, 30)[None]
    with torch.no_grad():
        lean = model(x).logits
        set_weight_cache(model, True)
        cached = model(x).logits
        layer = quant_linears(model)["model.layers.0.mlp.up_proj"]
        assert layer._weight is not None and torch.equal(layer._weight, layer.quantized.dequantize())
    assert torch.equal(lean, cached)


def test_loading_builds_no_full_precision_linear(folder: Path, monkeypatch) -> None:
    """Both loaders build the skeleton on the meta device: no nn.Linear gets real (random) weights."""
    real: list[str] = []
    original = torch.nn.Linear.reset_parameters

    def record(self):
        if self.weight.device.type != "meta":
            real.append(f"{self.out_features}x{self.in_features}")
        return original(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", record)
    load_quantized(folder)
    AutoModelForCausalLM.from_pretrained(folder)
    assert real == []


def test_dtype_casts_keep_scales_exact(folder: Path) -> None:
    model = load_quantized(folder)
    layer = quant_linears(model)["model.layers.0.self_attn.q_proj"]
    before = layer.quantized.dequantize()
    model.to(torch.bfloat16)
    assert layer.scale.dtype == torch.float32 and layer.compute_dtype == torch.bfloat16
    assert torch.equal(layer.quantized.dequantize(), before)
    assert layer.weight.dtype == torch.bfloat16
    native = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    q = quant_linears(native)["model.layers.0.self_attn.q_proj"]
    assert q.scale.dtype == torch.float32 and torch.equal(q.quantized.dequantize(), before)
    assert isinstance(q, QuantLinear)


def test_format_2_config_still_loads_with_both_loaders(folder: Path, tmp_path: Path) -> None:
    """A folder written before format 3 (original model_type, no llm1bit_base_model_type) loads natively
    through the registered quant_method, and with load_quantized, to the same model."""
    import shutil

    old = tmp_path / "v2"
    shutil.copytree(folder, old)
    config = json.loads((old / "config.json").read_text())
    config["model_type"] = config.pop("llm1bit_base_model_type")
    config["quantization_config"]["format_version"] = 2
    (old / "config.json").write_text(json.dumps(config))
    x = torch.arange(1, 30)[None]
    with torch.no_grad():
        want = load_quantized(folder)(x).logits
        native = AutoModelForCausalLM.from_pretrained(old)
        assert isinstance(native.model.layers[0].self_attn.q_proj, QuantLinear)
        assert torch.equal(native(x).logits, want)
        assert torch.equal(load_quantized(old)(x).logits, want)


def test_save_pretrained_of_a_loaded_model_is_refused(folder: Path, tmp_path: Path) -> None:
    """Re-saving through transformers would drop the model_type guard: folders are written by quantize."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again").exists()
