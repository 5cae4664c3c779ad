"""`llm1bit models`: the built-in models and their shapes."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json: bool) -> None:
    """List the built-in paper models (d, heads, d_FF, layers).

    \b
    Any Hugging Face config.json (OPT, GPT-2, LLaMA/Mistral/Qwen2) also works as --model PATH.
    Example:  llm1bit models
    """
    from llm1bit.models import PAPER_MODELS

    if as_json:
        import json

        rows = [
            {
                "name": m.name,
                "family": m.family,
                "d": m.d_model,
                "h": m.n_heads,
                "d_ff": m.d_ff,
                "layers": m.n_layers,
            }
            for m in PAPER_MODELS.values()
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Built-in models (paper Table 2; OPT-66B with its real 72 heads)")
    for col in ("name", "family", "d", "h", "d_FF", "layers", "d/h"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right")
    for m in PAPER_MODELS.values():
        table.add_row(
            m.name, m.family, str(m.d_model), str(m.n_heads), str(m.d_ff), str(m.n_layers), str(m.dim_head)
        )
    Console().print(table)
