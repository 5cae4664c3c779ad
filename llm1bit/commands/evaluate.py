"""`llm1bit eval`: perplexity of an original checkpoint or a quantized folder over non-overlapping windows,
or (`--tasks`) zero-shot accuracy through lm-evaluation-harness."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from llm1bit.errors import UserError
from llm1bit.quant.device import KERNEL_MODES

DEFAULT_DATA = Path("wikitext-2") / "test.gptq-join.txt"

EPILOG = """\b
Examples:
  llm1bit eval --model ../shared/data/models/stories260K \\
      --data ../shared/data/tinystories/valid-head.txt --seqlen 256
  llm1bit eval --model out/smol-rtn3 --data ../shared/data/wikitext-2/test.gptq-join.txt --max-windows 40 --json
  llm1bit eval --model out/smol-rtn3 --tasks tinystories_lastword --limit 200   # needs llm1bit[eval]
  llm1bit eval --model out/smol-rtn3 --tasks my_task --include-path my_tasks/ --json
  llm1bit eval --model out/smol-rtn3 --tasks my_tasks/my_task.yaml,hellaswag --limit 100
"""


def default_data() -> Path:
    """WikiText-2 test (GPTQ join) under $LLM1BIT_DATA, ./shared/data or ../shared/data."""
    from llm1bit.quant.calib import shared_data_file

    try:
        return shared_data_file(DEFAULT_DATA)
    except UserError:
        raise UserError(
            f"no --data FILE given and no {DEFAULT_DATA} found under $LLM1BIT_DATA or ../shared/data"
        ) from None


@click.command(name="eval", epilog=EPILOG)
@click.option(
    "--model", "model_src", required=True, help="Folder (original or quantized), FILE.gguf or hub id."
)
@click.option("--data", type=click.Path(dir_okay=False), help="Plain-text evaluation file [WikiText-2 test].")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per window.")
@click.option("--max-windows", type=int, help="Evaluate only the first N windows.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--tasks",
    help="Comma-separated lm-evaluation-harness task names or task YAML files: zero-shot accuracy "
    "instead of perplexity (needs `pip install 'llm1bit[eval]'`). llm1bit ships tinystories_lastword.",
)
@click.option("--limit", type=int, help="With --tasks: evaluate only the first N docs of each task.")
@click.option(
    "--include-path",
    "include_paths",
    multiple=True,
    type=click.Path(file_okay=False),
    help="With --tasks: a folder of extra task YAMLs (repeatable).",
)
@click.option(
    "--batch-size", type=int, default=1, show_default=True, help="With --tasks: requests per forward."
)
@click.option(
    "--bootstrap-iters",
    type=int,
    default=1000,
    show_default=True,
    help="With --tasks: bootstrap resamples for the stderr of non-mean metrics (perplexity); 0: none.",
)
@click.option(
    "--cache-weights/--lean",
    default=True,
    show_default=True,
    help="Only for quantized layers the LUT kernel does not serve (rtn / gptq codes, a GPU, --kernel dense): "
    "rebuild each dense weight once and keep it (fast; the memory of the FP linears), or --lean: keep only "
    "the packed codes and rebuild each weight in every forward. Layers the kernel serves (shiftaddllm, bcq on "
    "the CPU) keep only their codes either way (windows of many tokens: W rebuilt in C for the call).",
)
@click.option(
    "--kernel",
    type=click.Choice(KERNEL_MODES),
    help="Path of binary-coded layers: auto (the LUT kernel where it applies and is faster), lut (the kernel, "
    "or a one-line error naming a layer it cannot serve), dense (rebuild W) [LLM1BIT_KERNEL, else auto]; "
    "wins over LLM1BIT_KERNEL.",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    model_src: str,
    data: str | None,
    seqlen: int,
    max_windows: int | None,
    device: str,
    as_json: bool,
    tasks: str | None,
    limit: int | None,
    include_paths: tuple[str, ...],
    batch_size: int,
    bootstrap_iters: int,
    cache_weights: bool,
    kernel: str | None,
) -> None:
    """Perplexity over non-overlapping windows: exp(mean over windows of the mean next-token loss).

    The whole file is tokenized once; the tail shorter than a window is dropped.

    With --tasks: zero-shot metrics (accuracy, ...) of lm-evaluation-harness tasks, the model wrapped in
    lm-eval's HFLM; task data is fetched from the Hugging Face hub except for local tasks
    (tinystories_lastword, --include-path folders, YAML files)."""
    zeroshot_only = ("limit", "include_paths", "batch_size", "bootstrap_iters")
    perplexity_only = ("data", "seqlen", "max_windows")
    given = {
        name
        for name in zeroshot_only + perplexity_only
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    if tasks is not None:
        if given & set(perplexity_only):
            flags = ", ".join("--" + n.replace("_", "-") for n in perplexity_only if n in given)
            raise UserError(f"{flags}: perplexity options, not used with --tasks")
        return _zeroshot(
            model_src,
            tasks,
            limit,
            include_paths,
            batch_size,
            bootstrap_iters,
            device,
            as_json,
            cache_weights,
            kernel,
        )
    if given & set(zeroshot_only):
        flags = ", ".join("--" + n.replace("_", "-") for n in zeroshot_only if n in given)
        raise UserError(f"{flags}: only used with --tasks")

    from llm1bit.progress import progress_bar
    from llm1bit.quant.calib import tokenize_file
    from llm1bit.quant.device import check_device
    from llm1bit.quant.eval.perplexity import perplexity, window_count
    from llm1bit.quant.hf.kernel import use_kernel
    from llm1bit.quant.hf.linear import require_lut_model, set_weight_cache
    from llm1bit.quant.hf.loading import check_seqlen, load_model

    data_path = Path(data) if data else default_data()
    if not data_path.is_file():
        raise UserError(f"evaluation file {data_path} does not exist")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows {max_windows} must be at least 1")
    device = check_device(device)
    model, tokenizer = load_model(model_src)
    set_weight_cache(model, cache_weights)
    check_seqlen(model, seqlen)
    ids = tokenize_file(data_path, tokenizer)
    windows = window_count(ids.numel(), seqlen, max_windows)
    with progress_bar("windows", rate_text=lambda speed, _: f"{speed * seqlen:,.0f} tokens/s") as bar:
        task = bar.add_task("perplexity", total=windows)
        with use_kernel(kernel):
            model = model.to(device)
            if kernel == "lut":
                require_lut_model(model)
            result = perplexity(model, ids, seqlen, max_windows, device, on_window=lambda: bar.advance(task))
    if as_json:
        out = {"model": str(model_src), "data": str(data_path), **result.to_dict()}
        click.echo(
            json.dumps({k: out[k] for k in ("model", "data", "seqlen", "windows", "tokens", "perplexity")})
        )
    else:
        click.echo(
            f"perplexity {result.perplexity:.4f} on {data_path.name}: {result.windows} windows of "
            f"{seqlen} tokens ({result.tokens} tokens), model {model_src}"
        )


def _zeroshot(
    model_src: str,
    tasks: str,
    limit: int | None,
    include_paths: tuple[str, ...],
    batch_size: int,
    bootstrap_iters: int,
    device: str,
    as_json: bool,
    cache_weights: bool,
    kernel: str | None = None,
) -> None:
    from rich.console import Console

    from llm1bit.format.folder import is_quantized_folder
    from llm1bit.quant.device import check_device
    from llm1bit.quant.eval.zeroshot import SEEDS, import_lm_eval, load_tasks, results_table, run_tasks
    from llm1bit.quant.hf.kernel import use_kernel
    from llm1bit.quant.hf.linear import require_lut_model, set_weight_cache
    from llm1bit.quant.hf.loading import check_model_source, load_model

    check_model_source(model_src)  # a missing model is reported before any task data is looked for
    specs = [t.strip() for t in tasks.split(",") if t.strip()]
    if not specs:
        raise UserError("--tasks needs at least one task name or task YAML file")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} must be at least 1")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1")
    if bootstrap_iters < 0:
        raise UserError(f"--bootstrap-iters {bootstrap_iters} must be at least 0")
    import_lm_eval()
    device = check_device(device)
    loaded = load_tasks(specs, list(include_paths))  # unknown / unfetchable tasks: before the model loads
    console = Console(file=sys.stderr)  # bound now: lm-eval's own stderr output is silenced during the run
    path = Path(model_src).expanduser()
    kind = "llm1bit quantized" if is_quantized_folder(path) else "original"
    with console.status(f"loading {model_src}"):
        model, tokenizer = load_model(model_src)
    set_weight_cache(model, cache_weights)
    model = model.to(device)
    with use_kernel(kernel):
        if kernel == "lut":
            require_lut_model(model)
        result = run_tasks(
            model,
            tokenizer,
            specs,
            include_paths=list(include_paths),
            limit=limit,
            batch_size=batch_size,
            bootstrap_iters=bootstrap_iters,
            console=None if as_json else console,
            loaded=loaded,
        )
    if as_json:
        out = {
            "model": str(model_src),
            "model_kind": kind,
            "tasks": specs,
            "include_paths": list(include_paths),
            "limit": limit,
            "batch_size": batch_size,
            "bootstrap_iters": bootstrap_iters,
            "device": device,
            "lm_eval_version": result.lm_eval_version,
            "seed": SEEDS,
            "seconds": round(result.seconds, 3),
            "results": result.tasks,
        }
        click.echo(json.dumps(out))
    else:
        title = f"{model_src} ({kind}), zero-shot" + (f", --limit {limit}" if limit else "")
        Console().print(results_table(result, title))
        click.echo(f"lm-eval {result.lm_eval_version}, {result.seconds:.1f} s")
