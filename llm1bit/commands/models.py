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

    from llm1bit.commands.tables import Column, build_table, print_table

    columns = [
        Column("name", lambda m: m.name, text=True),
        Column("family", lambda m: m.family, text=True),
        Column("d", lambda m: str(m.d_model)),
        Column("h", lambda m: str(m.n_heads)),
        Column("d_FF", lambda m: str(m.d_ff)),
        Column("layers", lambda m: str(m.n_layers)),
        Column("d/h", lambda m: str(m.dim_head)),
    ]
    title = "Built-in models (paper Table 2; OPT-66B with its real 72 heads)"
    console = Console()
    print_table(console, build_table(title, columns, list(PAPER_MODELS.values())))
