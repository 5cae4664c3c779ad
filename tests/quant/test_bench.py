"""`llm1bit bench` and the library under it (llm1bit.quant.eval.speed): a real decode of quantized stories260K
folders through the LUT kernel, fields, consistency and refusals. Nothing here checks a speed: timings on a
shared CI machine prove nothing; the numbers are measured with `llm1bit bench` and reported in the README.

The bandwidth read is shrunk to 16 MiB here (the command reads max(1 GiB, 2 x LLC))."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.quant.eval import speed
from llm1bit.quant.hf.kernel import build

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = str(DATA / "models" / "stories260K")
VALID = str(DATA / "tinystories" / "valid-head.txt")
FIELDS = set(speed.RESULT_FIELDS)
GEMV_FIELDS = {"us", "gbps", "fraction_of_bandwidth", "bf16_us", "fp32_us", "dense_us"}
needs_kernel = pytest.mark.skipif(build.load() is None, reason="the LUT kernel is not available here")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert match in lines[0], lines[0]


@pytest.fixture(autouse=True)
def small_bandwidth_read(monkeypatch):
    real = speed.stream_bandwidth
    monkeypatch.setattr(
        speed, "stream_bandwidth", lambda threads, repeats=5, nbytes=None: real(threads, 2, 1 << 24)
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """stories260K quantized: shiftaddllm lat 3-bit g128 and rtn 3-bit (uniform codes: the dense path)."""
    root = tmp_path_factory.mktemp("bench")
    out = {}
    for name, args in (
        ("lat3", ["--method", "shiftaddllm", "--mode", "lat", "--groupsize", "128", "--bcq-rounds", "3",
                  "--calib", VALID, "--nsamples", "2", "--seqlen", "64"]),
        ("rtn3", ["--method", "rtn"]),
    ):  # fmt: skip
        out[name] = root / name
        result = invoke("quantize", "--model", STORIES, "--wbits", "3", *args, "-o", str(out[name]))
        assert result.exit_code == 0, result.output
    return out


def simulated_projection_bytes(folder: Path) -> float:
    """Weight bytes of the quantized projections per decode step, as `simulate --quantized` prices them."""
    result = invoke("simulate", "--quantized", str(folder), "--hw", "edge", "--seq-len", "64", "--json")
    assert result.exit_code == 0, result.output
    layers = json.loads(result.output[result.output.index("{") :])["layers"]
    return sum(
        r["count"] * r["N"] * r["K"] * r["filter_bits"] / 8 for r in layers if r["part"] == "matmul_free"
    )


def check_consistent(r: dict) -> None:
    assert FIELDS <= set(r)
    assert r["bytes_per_token"] == r["bytes"]["total"] > 0
    assert math.isclose(
        r["bound_tokens_per_s"], r["bandwidth_gbps"] * 1e9 / r["bytes_per_token"], rel_tol=1e-9
    )
    assert math.isclose(
        r["fraction_of_bound"], r["decode_tokens_per_s"] / r["bound_tokens_per_s"], rel_tol=1e-9
    )
    assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["bandwidth_gbps"] > 0
    assert r["threads"] == 1 and r["cpu"]


@needs_kernel
def test_decode_of_a_quantized_folder_against_its_bf16_source(folders) -> None:
    folder = folders["lat3"]
    result = invoke(
        "bench", "--model", str(folder), "--prompt-len", "16", "--gen", "4", "--threads", "1",
        "--repeats", "1", "--baseline", "bf16", "--no-compile", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    check_consistent(r)
    check_consistent(r["baseline"])
    assert r["kernel"].startswith("lut-") and r["baseline"]["kernel"] == "none"
    assert r["loop"] == r["baseline"]["loop"] == "lean" and r["compile_s"] is None and "loop_note" not in r
    # the same step for both: q/k/v and gate/up one kernel call each, against one bf16 matmul each
    assert r["lean_projections"] == {"lut": 20} and r["baseline"]["lean_projections"] == {
        "cat": 10,
        "each": 10,
    }
    assert r["baseline"]["label"].startswith("bf16 source model") and "stories260K" in r["baseline"]["label"]
    b, base = r["bytes"], r["baseline"]["bytes"]
    # the quantized projections weigh what the simulator prices; lm_head once (tied or not), one embedding row
    assert abs(b["quantized_linears"] - simulated_projection_bytes(folder)) < 1
    assert b["other_linears"] == 0 and base["quantized_linears"] == 0
    assert b["lm_head"] == base["lm_head"] == 512 * 64 * 2 and b["embedding_row"] == 64 * 2
    assert b["kv_cache"] == base["kv_cache"] == round(5 * 2 * 4 * 8 * 2 * (16 + 1.5))  # GQA 8/4, head 8
    assert r["ratio"]["bytes_per_token"] == base["total"] / b["total"] > 2
    assert math.isclose(r["ratio"]["decode"], r["decode_tokens_per_s"] / r["baseline"]["decode_tokens_per_s"])
    parts = r["seconds_per_token"]
    assert (
        set(parts) == {"quantized_linears", "other_linears", "rest", "total"}
        and parts["quantized_linears"] > 0
    )
    mem = r["memory"]
    assert mem["held_bytes"] > 0 and mem["rss_generating_bytes"] > 0


@needs_kernel
def test_baseline_without_its_source_is_the_dequantized_folder(folders, tmp_path) -> None:
    moved = tmp_path / "lat3"
    moved.mkdir()
    for f in folders["lat3"].iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((moved / "config.json").read_text())
    cfg["quantization_config"]["source_model"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    r = speed.bench_decode(
        str(moved), prompt_len=8, gen=2, threads=1, baseline="bf16", repeats=1, breakdown=False,
        compile_step=False,
    )  # fmt: skip
    assert (
        r["baseline"]["label"].startswith("bf16 dequantized weights of")
        and "not found" in r["baseline"]["label"]
    )
    assert r["baseline"]["bytes"]["other_linears"] > 0 and "seconds_per_token" not in r


@needs_kernel
def test_text_output_and_kernel_choice(folders) -> None:
    result = invoke("bench", "--model", str(folders["lat3"]), "--prompt-len", "8", "--gen", "2", "--threads", "1",
                    "--repeats", "1", "--kernel", "dense", "--no-compile")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decode" in result.output and "bound" in result.output and "kernel dense" in result.output
    r = speed.bench_decode(
        str(folders["rtn3"]), prompt_len=8, gen=2, threads=1, repeats=1, breakdown=False, compile_step=False
    )
    assert r["kernel"] == "dense"  # uniform codes: the dense path under auto


@needs_kernel
def test_a_step_that_does_not_compile_is_timed_eager_with_a_note(folders, monkeypatch) -> None:
    """Whatever torch.compile raises (here: an option inductor does not know) costs a note, not the run."""
    monkeypatch.setattr(speed, "COMPILE_OPTIONS", {"no_such_inductor_option": 1})
    r = speed.bench_decode(str(folders["lat3"]), prompt_len=8, gen=2, threads=1, repeats=1, compile_step=True)
    assert r["loop"] == "eager" and r["compile_s"] is None and r["decode_tokens_per_s"] > 0
    assert r["loop_note"].startswith("torch.compile failed (RuntimeError: Unexpected optimization option")
    assert r["loop_note"].endswith("the eager step was timed") and "\n" not in r["loop_note"]
    assert r["seconds_per_token"]["quantized_linears"] > 0  # the eager breakdown (hooks)


@pytest.mark.slow
@needs_kernel
def test_compiled_step_equals_eager_and_the_bench_names_its_loop(folders) -> None:
    """The whole stories260K decode step compiled (inductor, one graph) against the eager step, in float32:
    the same logits to 1e-5 of their largest, the same greedy tokens. Slow: compiling takes 5-30 s."""
    import torch._dynamo

    from llm1bit.quant.hf.checkpoint import load_quantized

    model = load_quantized(folders["lat3"]).float()
    prompt = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    logits = {}
    try:
        with torch.inference_mode():
            for compiled in (False, True):
                stepper = speed.decode_step(model, prompt, 12 + 9, compiled)
                assert stepper.loop == ("compiled" if compiled else "eager") and stepper.note is None
                cache = stepper.new_cache()
                token = stepper.prefill(prompt, cache).logits[:, -1:].argmax(-1)
                rows = []
                for i in range(8):
                    out = stepper.decode(token, cache, 12 + i).logits[:, -1]
                    token = out.argmax(-1, keepdim=True)
                    rows.append(out)
                logits[compiled] = torch.cat(rows)
    finally:
        torch._dynamo.reset()
    eager, compiled_logits = logits[False], logits[True]
    assert torch.equal(eager.argmax(-1), compiled_logits.argmax(-1))
    assert float((compiled_logits - eager).abs().max()) <= 1e-5 * float(eager.abs().max())
    result = invoke("bench", "--model", str(folders["lat3"]), "--prompt-len", "8", "--gen", "4", "--threads", "1",
                    "--repeats", "1", "--baseline", "bf16", "--compile", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    check_consistent(r)
    for x in (r, r["baseline"]):
        assert x["loop"] == "compiled" and x["compile_s"] > 0 and "loop_note" not in x
        parts = x["seconds_per_token"]
        assert math.isclose(
            sum(parts[k] for k in ("quantized_linears", "other_linears", "rest")), parts["total"]
        )
    assert r["seconds_per_token"]["quantized_linears"] > 0  # timed inside the ops
    assert r["baseline"]["seconds_per_token"]["other_linears"] > 0


@needs_kernel
def test_kernel_lut_refuses_uniform_codes_in_one_line(folders) -> None:
    for command in (
        ["bench", "--gen", "2", "--prompt-len", "4"],
        ["eval", "--data", VALID, "--seqlen", "64"],
    ):
        result = invoke(*command, "--model", str(folders["rtn3"]), "--kernel", "lut")
        assert_one_line_error(
            result, "--kernel lut: layer model.layers.0.self_attn.q_proj (64x64 uniform 3-bit)"
        )
        assert "cannot use the LUT kernel: its codes are uniform" in result.output


@needs_kernel
def test_eval_kernel_flag_wins_over_the_environment(folders, monkeypatch) -> None:
    monkeypatch.setenv("LLM1BIT_KERNEL", "lut")
    ppl = {}
    for kernel in ("dense", "lut"):
        result = invoke("eval", "--model", str(folders["lat3"]), "--data", VALID, "--seqlen", "64",
                        "--max-windows", "4", "--kernel", kernel, "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        ppl[kernel] = json.loads(result.output[result.output.index("{") :])["perplexity"]
    assert abs(ppl["lut"] - ppl["dense"]) <= 1e-3 * ppl["dense"]
    result = invoke("eval", "--model", str(folders["rtn3"]), "--data", VALID, "--seqlen", "64", "--max-windows",
                    "1", "--kernel", "auto")  # fmt: skip
    assert result.exit_code == 0, result.output  # the flag overrides LLM1BIT_KERNEL=lut


def test_eval_help_says_what_the_weight_cache_still_does() -> None:
    result = invoke("eval", "--help")
    text = " ".join(result.output.split())
    assert "--kernel [auto|lut|dense]" in text and "wins over LLM1BIT_KERNEL" in text
    assert "rtn / gptq codes" in text and "keep only their codes either way" in text and "Only for" in text


@needs_kernel
def test_memory_codes_held_once(folders) -> None:
    """After generating, each kernel-served layer keeps its codes in the kernel's layout only (the buffer is
    released, rebuilt bit for bit for saving), no dense weight, and the model holds within 1.25x of the packed
    bytes plus the unquantized tensors."""
    from safetensors.torch import load_file

    from llm1bit.quant.hf.checkpoint import load_quantized
    from llm1bit.quant.hf.linear import QuantLinear

    folder = folders["lat3"]
    model = load_quantized(folder)
    file_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    stored = load_file(str(folder / "model.safetensors"))
    with torch.inference_mode():
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert layers and all(m.codes_released and m._buffers["codes"] is None for m in layers.values())
    assert all(m._weight is None for m in layers.values())
    state = model.state_dict()
    for name in layers:
        assert torch.equal(state[f"{name}.codes"], stored[f"{name}.codes"])
    assert speed.held_bytes(model) <= 1.25 * file_bytes


@needs_kernel
def test_gemv_fields_and_consistency() -> None:
    result = invoke(
        "bench", "--gemv", "40x72", "--wbits", "2", "--groupsize", "-1", "--threads", "1", "--json"
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert GEMV_FIELDS | {"kernel", "threads", "cpu", "bandwidth_gbps"} <= set(r)
    assert r["shape"] == [40, 72] and r["wbits"] == 2 and r["mode"] == "lat"
    assert all(s >= speed.MIN_SETS for s in (r["sets"]["lut"], r["sets"]["bf16"], r["sets"]["fp32"]))
    assert (
        r["bytes"] == 2 * 40 * 9 + 9 * 8 * 2 * 3
    )  # codes (q, N, K/8) + 3 one-byte terms per (col block, row block of 5, q)
    assert math.isclose(r["gbps"], r["bytes"] / r["us"] / 1e3, rel_tol=1e-9)
    assert math.isclose(r["fraction_of_bandwidth"], r["gbps"] / r["bandwidth_gbps"], rel_tol=1e-9)
    result = invoke("bench", "--gemv", "33x40", "--wbits", "3", "--mode", "acc", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "kernel" in result.output and "bf16" in result.output and "dense rebuild" in result.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--gemv", "4096by11008", "--wbits", "3"], "expected NxK"),
        (["--gemv", "0x8", "--wbits", "3"], "at least 1"),
        (["--gemv", "64x64"], "--gemv needs --wbits"),
        (["--gemv", "64x64", "--wbits", "5"], "--wbits 5: the kernel reads 1 to 4"),
        (["--gemv", "64x64", "--wbits", "3", "--groupsize", "100"], "--groupsize 100"),
        (["--gemv", "64x64", "--wbits", "3", "--model", STORIES], "leave out --model"),
        (["--gemv", "64x64", "--wbits", "3", "--gen", "3"], "--gen: not used with --gemv"),
        (["--gemv", "64x64", "--wbits", "3", "--no-compile"], "--compile/--no-compile: not used with --gemv"),
        (["--gemv", "64x64", "--wbits", "3", "--kernel", "dense"], "--kernel"),
        (["--gemv", "64x64", "--wbits", "3", "--loop", "hf"], "--loop: not used with --gemv"),
        (["--model", STORIES, "--wbits", "3"], "--wbits: only used with --gemv"),
        ([], "give --model PATH"),
        (["--model", STORIES, "--gen", "0"], "--gen 0 must be at least 1"),
        (["--model", STORIES, "--prompt-len", "0"], "--prompt-len 0 must be at least 1"),
        (["--model", STORIES, "--threads", "0"], "--threads 0 must be at least 1"),
        (["--model", STORIES, "--prompt-len", "600"], "exceeds the model's 512 positions"),
        (["--model", "no/such/dir/"], "does not exist"),
    ],
)
def test_refusals_are_one_line(args: list[str], match: str) -> None:
    assert_one_line_error(invoke("bench", *args), match)


def test_listed_and_has_examples() -> None:
    assert "bench" in invoke("--help").output
    out = invoke("bench", "--help").output
    assert "llm1bit bench --gemv 4096x11008 --wbits 3" in out and "--baseline" in out
