"""`llm1bit quantize` and `llm1bit eval`: in-process with CliRunner, one real subprocess, bad input.

Calibration text here is wikitext-2/valid.tokenized.txt (or, where stated, tinystories/valid-head.txt);
data is read in place from ../shared/data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from llm1bit.cli import main

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = str(DATA / "models" / "stories260K")
VALID = str(DATA / "tinystories" / "valid-head.txt")
WIKI_CALIB = str(DATA / "wikitext-2" / "valid.tokenized.txt")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert match in lines[0], lines[0]


def test_quantize_then_eval_in_process(tmp_path: Path) -> None:
    out = tmp_path / "lat3"
    result = invoke(
        "quantize", "--model", STORIES, "--method", "shiftaddllm", "--mode", "lat", "--wbits", "3",
        "--bcq-rounds", "5", "--calib", VALID, "--nsamples", "4", "--seqlen", "128", "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "llm1bit-shiftaddllm" and qc["mode"] == "lat"
    assert qc["calibration"] == {"file": "valid-head.txt", "nsamples": 4, "seqlen": 128, "seed": 0}
    from llm1bit.quant.walk.layers import resolve_dtype

    assert qc["compute_dtype"] == resolve_dtype("auto", "cpu")  # --dtype auto by default: bf16 on this CPU
    assert (out / "llm1bit_report.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    result = invoke("eval", "--model", str(out), "--data", VALID, "--seqlen", "256", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"model", "data", "seqlen", "windows", "tokens", "perplexity"}
    assert report["windows"] == 9 and report["tokens"] == 2304
    assert math.isfinite(report["perplexity"]) and report["perplexity"] > 5.8

    # --overwrite replaces the folder; bits config sets one module's width
    bits = tmp_path / "bits.json"
    bits.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_proj": {"bits": 4}}}))
    result = invoke(
        "quantize", "--model", STORIES, "--method", "rtn", "--wbits", "2", "--bits-config", str(bits),
        "--overwrite", "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "llm1bit-rtn" and qc["layer_bits"]["model.layers.0.mlp.down_proj"] == 4
    assert qc["calibration"] is None


def test_eval_fp_text_output() -> None:
    result = invoke("eval", "--model", STORIES, "--data", VALID, "--seqlen", "256", "--max-windows", "3")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("perplexity ") and "3 windows of 256 tokens" in result.output


def test_real_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "bcq2"
    cmd = [sys.executable, "-m", "llm1bit.cli"]
    done = subprocess.run(
        [
            *cmd,
            "quantize",
            "--model",
            STORIES,
            "--method",
            "bcq",
            "--wbits",
            "2",
            "--bcq-rounds",
            "3",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*cmd, "eval", "--model", str(out), "--data", VALID, "--seqlen", "256", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["windows"] == 9
    done = subprocess.run(
        [*cmd, "quantize", "--model", STORIES, "--wbits", "9", "-o", str(out)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr and "--wbits 9" in done.stderr


def test_interrupted_write_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llm1bit.quant.hf.checkpoint as checkpoint

    def half_write(model, tokenizer, out, *args, **kwargs):
        (Path(out) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted while writing")

    monkeypatch.setattr(checkpoint, "save_quantized", half_write)
    result = invoke("quantize", "--model", STORIES, "--method", "rtn", "-o", str(tmp_path / "x"))
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    left = [p.name for p in tmp_path.iterdir()]
    assert all(".resume-" in name for name in left), left  # only the finished-layer cache stays


def test_interrupted_quantization_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finished layers survive an interruption in a hidden folder; the re-run skips them and matches."""
    from safetensors.torch import load_file

    import llm1bit.quant.numerics.column_solver as solver

    real = solver.quantize_weight
    calls = []

    def crash_in_layer_2(weight, hessian, spec):
        calls.append(1)
        if len(calls) > 14:  # 7 linears per layer: layers 0 and 1 finish
            raise KeyboardInterrupt
        return real(weight, hessian, spec)

    args = ["quantize", "--model", STORIES, "--method", "gptq", "--calib", WIKI_CALIB]
    args += ["--nsamples", "4", "--seqlen", "64"]
    monkeypatch.setattr(solver, "quantize_weight", crash_in_layer_2)
    interrupted = invoke(*args, "-o", str(tmp_path / "a"))
    assert interrupted.exit_code == 130 and "interrupted: no output was written" in interrupted.output
    assert not (tmp_path / "a").exists()
    (cache,) = [p for p in tmp_path.iterdir() if ".resume-" in p.name]
    assert len(list(cache.glob("layer-*.safetensors"))) == 2
    monkeypatch.setattr(solver, "quantize_weight", real)

    resumed = invoke(*args, "-o", str(tmp_path / "a"))
    assert resumed.exit_code == 0, resumed.output
    assert "resumed 2 finished layer(s)" in resumed.output and not cache.exists()
    fresh = invoke(*args, "-o", str(tmp_path / "b"))
    assert fresh.exit_code == 0 and "resumed" not in fresh.output
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model", "/no/such/model", "--method", "rtn"], "does not exist"),
        (["--model", "acme/no-such-model", "--method", "rtn"], "acme/no-such-model"),
        (["--model", STORIES, "--method", "rtn", "--wbits", "9"], "--wbits 9"),
        (["--model", STORIES, "--method", "rtn", "--wbits", "0"], "--wbits 0"),
        (["--model", STORIES, "--mode", "fast", "--calib", VALID], "unknown mode 'fast'"),
        (["--model", STORIES, "--method", "gtpq", "--calib", VALID], "did you mean gptq"),
        (["--model", STORIES, "--method", "gptq"], "needs --calib"),
        (
            ["--model", STORIES, "--method", "gptq", "--calib", VALID, "--seqlen", "2048"],
            "exceeds the model's context",
        ),
        (["--model", STORIES, "--method", "rtn", "--device", "cuda"], "cuda"),
        (["--model", STORIES, "--method", "rtn", "--bits-config", "/no/bits.json"], "does not exist"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], match: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = invoke("quantize", *args, "-o", str(tmp_path / "out"))
    assert_one_line_error(result, match)
    assert not (tmp_path / "out").exists()


def test_calibration_text_too_short(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.\n")
    args = ["--model", STORIES, "--method", "gptq", "--calib", str(short), "--seqlen", "128"]
    assert_one_line_error(invoke("quantize", *args, "-o", str(tmp_path / "out")), "too short")


def test_non_empty_output_refused(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("quantize", "--model", STORIES, "--method", "rtn", "-o", str(out))
    assert_one_line_error(result, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_bits_config_module(tmp_path: Path) -> None:
    bits = tmp_path / "bits.json"
    bits.write_text(json.dumps({"layers": {"model.layers.9.mlp.down_proj": 2}}))
    result = invoke(
        "quantize",
        "--model",
        STORIES,
        "--method",
        "rtn",
        "--bits-config",
        str(bits),
        "-o",
        str(tmp_path / "o"),
    )
    assert_one_line_error(result, "unknown module")


def test_eval_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(
        invoke("eval", "--model", STORIES, "--data", str(tmp_path / "none.txt")), "does not exist"
    )
    assert_one_line_error(invoke("eval", "--model", STORIES, "--data", VALID, "--seqlen", "4096"), "context")
    assert_one_line_error(
        invoke("eval", "--model", str(tmp_path / "m.gguf"), "--data", VALID), "does not exist"
    )


def test_help_has_examples() -> None:
    for command in ("quantize", "eval"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output


@pytest.mark.parametrize(
    ("save_dtype", "want"),
    [(None, torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)],
    ids=["auto", "bf16", "f32"],
)
def test_unquantized_tensors_are_saved_in_16_bits(tmp_path: Path, save_dtype: str | None, want) -> None:
    """stories260K declares float32 (as a GGUF source does once dequantized): by default its embeddings and
    norms are written in float16, so the folder is smaller than the FP16 model; --save-dtype overrides it.
    Whatever the storage, the model computes in float32 and the reloaded folder equals what was written."""
    from safetensors.torch import load_file

    from llm1bit.quant.hf.checkpoint import load_quantized

    out = tmp_path / "rtn4"
    extra = ["--save-dtype", save_dtype] if save_dtype else []
    result = invoke("quantize", "--model", STORIES, "--method", "rtn", "--wbits", "4", "-o", str(out), *extra)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert config["quantization_config"]["save_dtype"] == str(want).removeprefix("torch.")
    stored = load_file(str(out / "model.safetensors"))
    modules = tuple(f"{name}." for name in config["quantization_config"]["modules"])
    plain = {k: t.dtype for k, t in stored.items() if not k.startswith(modules)}
    assert plain and set(plain.values()) == {want}, plain
    size = (out / "model.safetensors").stat().st_size
    if want != torch.float32:
        assert size < 2 * 260_032, size  # smaller than the FP16 model
    model = load_quantized(out)
    assert model.dtype == torch.float32
    assert torch.equal(model.model.embed_tokens.weight, stored["model.embed_tokens.weight"].float())


def test_save_dtype_choices_are_refused_in_one_line(tmp_path: Path) -> None:
    result = invoke(
        "quantize", "--model", STORIES, "--method", "rtn", "--save-dtype", "fp8", "-o", str(tmp_path / "x")
    )
    assert result.exit_code != 0 and "fp8" in result.output and "float16" in result.output
    assert not (tmp_path / "x").exists()


def test_bits_config_naming_a_module_twice_is_refused(tmp_path: Path) -> None:
    """quantize reads bits files with the simulator's strict reader: the last of two widths is not kept."""
    bits = tmp_path / "bits.json"
    name = "model.layers.0.mlp.down_proj"
    bits.write_text('{"layers": {"NAME": 2, "NAME": 4}}'.replace("NAME", name))
    out = tmp_path / "out"
    result = invoke(
        "quantize", "--model", STORIES, "--method", "rtn", "--bits-config", str(bits), "-o", str(out)
    )
    assert_one_line_error(result, "appears twice")
    assert not out.exists()
