"""`llm1bit eval`: perplexity of an original checkpoint or a quantized folder over non-overlapping windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from llm1bit.errors import UserError

DEFAULT_DATA = Path("wikitext-2") / "test.gptq-join.txt"

EPILOG = """\b
Examples:
  llm1bit eval --model ../shared/data/models/stories260K \\
      --data ../shared/data/tinystories/valid-head.txt --seqlen 256
  llm1bit eval --model out/smol-rtn3 --data ../shared/data/wikitext-2/test.gptq-join.txt --max-windows 40 --json
"""


def default_data() -> Path:
    """WikiText-2 test (GPTQ join) under $LLM1BIT_DATA, ./shared/data or ../shared/data."""
    roots = [Path(os.environ["LLM1BIT_DATA"])] if os.environ.get("LLM1BIT_DATA") else []
    roots += [Path("shared") / "data", Path("..") / "shared" / "data"]
    for root in roots:
        if (root / DEFAULT_DATA).is_file():
            return root / DEFAULT_DATA
    raise UserError(f"no --data FILE given and no {DEFAULT_DATA} found under $LLM1BIT_DATA or ../shared/data")


@click.command(name="eval", epilog=EPILOG)
@click.option(
    "--model", "model_src", required=True, help="Folder (original or quantized), FILE.gguf or hub id."
)
@click.option("--data", type=click.Path(dir_okay=False), help="Plain-text evaluation file [WikiText-2 test].")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per window.")
@click.option("--max-windows", type=int, help="Evaluate only the first N windows.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def evaluate(
    model_src: str, data: str | None, seqlen: int, max_windows: int | None, device: str, as_json: bool
) -> None:
    """Perplexity over non-overlapping windows: exp(mean over windows of the mean next-token loss).

    The whole file is tokenized once; the tail shorter than a window is dropped."""
    from llm1bit.quant.calib import tokenize_file
    from llm1bit.quant.models import check_seqlen, load_model
    from llm1bit.quant.perplexity import perplexity
    from llm1bit.quant.pipeline import check_device

    data_path = Path(data) if data else default_data()
    if not data_path.is_file():
        raise UserError(f"evaluation file {data_path} does not exist")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows {max_windows} must be at least 1")
    device = check_device(device)
    model, tokenizer = load_model(model_src)
    check_seqlen(model, seqlen)
    ids = tokenize_file(data_path, tokenizer)
    result = perplexity(model.to(device), ids, seqlen, max_windows=max_windows, device=device)
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
