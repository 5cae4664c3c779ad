"""Half-finished downloads: a truncated model.safetensors or GGUF is a one-line error naming the file."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llm1bit.cli import main

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES, TEXT = DATA / "models" / "stories260K", DATA / "tinystories" / "valid-head.txt"


def one_line_error(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    return res.output


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/data not present")
def test_truncated_safetensors(tmp_path):
    folder = tmp_path / "stories"
    shutil.copytree(STORIES, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = one_line_error("eval", "--model", folder, "--data", TEXT, "--seqlen", 64)
    assert f"{weights}: truncated safetensors file" in out
    out = one_line_error(
        "quantize", "--model", folder, "--calib", TEXT, "--nsamples", 2, "--seqlen", 64, "-o", tmp_path / "q"
    )
    assert "truncated safetensors file" in out and not (tmp_path / "q").exists()


def test_truncated_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for cut in (60, path.stat().st_size // 2):  # inside the header, inside the tensor data
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(path.read_bytes()[:cut])
        out = one_line_error("eval", "--model", truncated, "--data", TEXT, "--seqlen", 64)
        assert f"cannot load GGUF file {truncated}" in out


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/data not present")
def test_packed_tensors_that_do_not_match_their_config(tmp_path):
    import json

    import torch
    from safetensors.torch import load_file, save_file

    good = tmp_path / "good"
    res = CliRunner().invoke(main, [str(a) for a in ("quantize", "--model", STORIES, "--method", "shiftaddllm",
                                                     "--mode", "lat", "--wbits", 3, "--calib", TEXT, "--nsamples", 2,
                                                     "--seqlen", 64, "-o", good)])  # fmt: skip
    assert res.exit_code == 0, res.output
    name = "model.layers.1.mlp.down_proj"
    cases = {
        "missing": lambda t: {k: v for k, v in t.items() if not k.startswith(name + ".")},
        "scales": lambda t: {**t, f"{name}.scale_terms": t[f"{name}.scale_terms"][:1]},
        "codes": lambda t: {**t, f"{name}.codes": torch.zeros_like(t[f"{name}.codes"])[:, :5].contiguous()},
    }
    for case, edit in cases.items():
        bad = tmp_path / case
        shutil.copytree(good, bad)
        save_file(edit(load_file(bad / "model.safetensors")), str(bad / "model.safetensors"))
        out = one_line_error("eval", "--model", bad, "--data", TEXT, "--seqlen", 64)
        assert name in out and "model.safetensors" in out, out
    config = json.loads((good / "config.json").read_text())
    config["quantization_config"]["modules"][name]["shape"] = [64, 171]
    bad = tmp_path / "shape"
    shutil.copytree(good, bad)
    (bad / "config.json").write_text(json.dumps(config))
    out = one_line_error("eval", "--model", bad, "--data", TEXT, "--seqlen", 64)
    assert f"the packed tensors of {name} do not match its quantization_config" in out
