"""`llm1bit bench`: decode and prefill speed measured on this machine, against the bound the simulator predicts
(bytes per token / memory bandwidth measured on the spot); or, with --gemv, one layer's kernel time."""

from __future__ import annotations

import json

import click

from llm1bit.errors import UserError
from llm1bit.quant.device import DECODE_LOOPS, KERNEL_MODES
from llm1bit.quant.numerics.methods import MODES

EPILOG = """\b
Examples:
  llm1bit bench --model out/smol-lat3 --baseline bf16
  llm1bit bench --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt-len 128 --gen 64 --threads 2 --json
  llm1bit bench --gemv 4096x11008 --wbits 3 --groupsize 128
  llm1bit bench --gemv 4096x11008 --wbits 2 --mode acc --json
"""


FLAGS = {"compile_step": "--compile/--no-compile"}  # parameters not spelled as their flag


@click.command(name="bench", epilog=EPILOG)
@click.option("--model", "model_src", help="Model folder, FILE.gguf or an `llm1bit quantize` folder.")
@click.option("--prompt-len", type=int, default=128, show_default=True, help="Prompt tokens (prefill).")
@click.option("--gen", type=int, default=64, show_default=True, help="Decode steps timed per run.")
@click.option(
    "--threads", type=int, help="CPU threads for the model, the kernel and the bandwidth read [all cores]."
)
@click.option(
    "--kernel",
    type=click.Choice(KERNEL_MODES),
    default="auto",
    show_default=True,
    help="Path of binary-coded layers: auto (the LUT kernel where it applies and is faster), lut (the kernel "
    "or a one-line error naming the layer), dense (rebuild W); wins over LLM1BIT_KERNEL.",
)
@click.option(
    "--baseline",
    type=click.Choice(["bf16"]),
    help="Also time the folder's source model in bf16 (its dequantized weights where the source is gone), "
    "through the same loop, and print the ratio.",
)
@click.option(
    "--loop",
    type=click.Choice(DECODE_LOOPS),
    default="auto",
    show_default=True,
    help="The decode step: lean (the model's own modules in a short loop, q/k/v and gate/up as one kernel "
    "call each, the glue between them in C; Llama-family models: llama, mistral, qwen2), hf (transformers' "
    "forward), auto (lean where the model can run it, else hf with a note). The baseline runs the same step.",
)
@click.option(
    "--compile/--no-compile",
    "compile_step",
    default=False,
    show_default=True,
    help="Compile transformers' 1-token decode step (with --loop hf; torch.compile, inductor: one graph per "
    "model, the quantized layers "
    "as opaque kernel calls), the baseline's too; compiling takes tens of seconds per model, counted as "
    "warm-up and reported (compile_s). Where it fails, a note and the eager step; each result's `loop` says "
    "which ran. Prefill stays eager. Off by default: on this project's 2-core test machine it sped SmolLM2 up "
    "(+19%) but slowed Qwen2.5-1.5B and added ~110 MB of inductor runtime to the resident memory.",
)
@click.option(
    "--repeats", type=int, default=3, show_default=True, help="Timed runs after one warm-up (medians)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--gemv", "gemv", metavar="NxK", help="Time one N x K layer on random codes instead of a model."
)
@click.option("--wbits", type=int, help="With --gemv: code planes (1 to 4).")
@click.option(
    "--groupsize", type=int, default=128, show_default=True, help="With --gemv: rows per scale; -1 = one."
)
@click.option(
    "--mode", type=click.Choice(MODES), default="lat", show_default=True, help="With --gemv: layout."
)
@click.pass_context
def bench(
    ctx: click.Context,
    model_src: str | None,
    prompt_len: int,
    gen: int,
    threads: int | None,
    kernel: str,
    baseline: str | None,
    loop: str,
    compile_step: bool,
    repeats: int,
    as_json: bool,
    gemv: str | None,
    wbits: int | None,
    groupsize: int,
    mode: str,
) -> None:
    """Prefill and decode tokens/s, the weight bytes read per decode token, the memory bandwidth measured now
    with the same --threads, the bound (bandwidth / bytes per token) and the fraction of it reached.

    The model runs in bf16 through one loop (static KV cache, one step per token: the lean step or
    transformers' forward, --loop); warm-up first, then medians of --repeats runs. With --gemv: the LUT kernel on one N x K
    layer of random codes (batch 1) against torch F.linear on bf16 and fp32 weights and against the dense
    rebuild, at least 8 weight sets in rotation."""
    from llm1bit.quant.eval import speed

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    gemv_only = [n for n in ("wbits", "groupsize", "mode") if given(n) and not gemv]
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    if repeats < 1:
        raise UserError(f"--repeats {repeats} must be at least 1")
    if gemv:
        if model_src:
            raise UserError("--gemv times one layer on random codes: leave out --model")
        model_only = [n for n in ("prompt_len", "gen", "baseline", "loop", "compile_step") if given(n)]
        if model_only:
            raise UserError(
                f"{', '.join(FLAGS.get(n, '--' + n.replace('_', '-')) for n in model_only)}: not used with --gemv"
            )
        if kernel != "auto":
            raise UserError("--kernel: --gemv always times the LUT kernel against the dense paths")
        if wbits is None:
            raise UserError("--gemv needs --wbits (1 to 4)")
        n, k = speed.parse_shape(gemv)
        speed.check_gemv_args(wbits, groupsize, mode)
        result = speed.bench_gemv(n, k, wbits, groupsize, mode, threads=threads, repeats=max(repeats, 5))
        _print_gemv(result, as_json)
        return
    if gemv_only:
        raise UserError(f"{', '.join('--' + n for n in gemv_only)}: only used with --gemv")
    if not model_src:
        raise UserError("give --model PATH (a folder, FILE.gguf or quantized folder) or --gemv NxK --wbits B")
    speed.check_decode_args(prompt_len, gen, threads, repeats)
    result = speed.bench_decode(
        model_src,
        prompt_len,
        gen,
        threads=threads,
        kernel=kernel,
        baseline=baseline,
        repeats=repeats,
        compile_step=compile_step,
        loop=loop,
    )
    _print_decode(result, as_json)


def _print_gemv(r: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(r))
        return
    n, k = r["shape"]
    click.echo(
        f"gemv {n}x{k} {r['mode']} {r['wbits']}-bit g{r['groupsize']}, batch 1, {r['threads']} threads, "
        f"{r['kernel']} on {r['cpu']}"
    )
    click.echo(
        f"  kernel {r['us']:9.1f} us   {r['gbps']:6.1f} GB/s for {r['bytes'] / 1e6:.2f} MB = "
        f"{100 * r['fraction_of_bandwidth']:.0f}% of the {r['bandwidth_gbps']:.1f} GB/s streaming read"
    )
    click.echo(f"  bf16   {r['bf16_us']:9.1f} us   kernel / bf16 = {r['vs_bf16']:.3f}")
    click.echo(f"  fp32   {r['fp32_us']:9.1f} us   kernel / fp32 = {r['vs_fp32']:.3f}")
    click.echo(f"  dense rebuild {r['dense_us'] / 1e3:9.1f} ms   kernel {r['speedup_vs_dense']:.0f}x faster")


def _line(r: dict, label: str) -> str:
    b = r["bytes"]
    return (
        f"{label}: decode {r['decode_tokens_per_s']:.2f} tok/s, prefill {r['prefill_tokens_per_s']:.1f} tok/s; "
        f"{r['bytes_per_token'] / 1e6:.1f} MB/token (quantized linears {b['quantized_linears'] / 1e6:.1f}, other "
        f"linears {b['other_linears'] / 1e6:.1f}, lm_head {b['lm_head'] / 1e6:.1f}, embedding row "
        f"{b['embedding_row'] / 1e3:.1f} kB, KV {b['kv_cache'] / 1e6:.2f}, other {b['other'] / 1e6:.2f}); bound "
        f"{r['bound_tokens_per_s']:.2f} tok/s at {r['bandwidth_gbps']:.1f} GB/s: {100 * r['fraction_of_bound']:.0f}% "
        f"of it; kernel {r['kernel']}"
    )


def _print_decode(r: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(r))
        return
    click.echo(
        f"{r['model']}: prompt {r['prompt_len']}, {r['gen']} decode steps, {r['threads']} threads, {r['cpu']}"
    )
    click.echo(_line(r, "  model"))
    parts = r.get("seconds_per_token")
    if parts:
        click.echo(
            "  per decode token: "
            + ", ".join(f"{k.replace('_', ' ')} {1e3 * v:.2f} ms" for k, v in parts.items())
        )
    mem = r["memory"]
    if mem.get("resident_over_held"):
        click.echo(
            f"  memory: holds {mem['held_bytes'] / 2**20:.1f} MiB of weights; resident growth while generating "
            f"{(mem['rss_generating_bytes'] - mem['rss_before_load_bytes']) / 2**20:.1f} MiB "
            f"({mem['resident_over_held']:.2f}x the weights held"
            + (
                f", {mem['resident_over_stored']:.2f}x the {mem['stored_bytes'] / 2**20:.1f} MiB stored"
                if mem.get("resident_over_stored")
                else ""
            )
            + f"; runtime warm-up before loading {mem.get('runtime_warmup_bytes', 0) / 2**20:.1f} MiB)"
        )
    base = r.get("baseline")
    if base:
        click.echo(_line(base, f"  baseline ({base['label']})"))
        ratio = r["ratio"]
        click.echo(
            f"  ratio: decode {ratio['decode']:.2f}x, prefill {ratio['prefill']:.2f}x the baseline; "
            f"{ratio['bytes_per_token']:.2f}x fewer bytes per token"
        )
