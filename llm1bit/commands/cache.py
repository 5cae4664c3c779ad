"""`llm1bit cache info|clear`: the result store of simulator runs."""

from __future__ import annotations

from pathlib import Path

import click

from llm1bit.commands.options import cache_option, make_cache


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@click.group()
def cache() -> None:
    """The store of cached simulator runs (one SQLite file, every entry verified before use).

    \b
    Examples:
      llm1bit cache info
      llm1bit cache clear --cache-dir ~/.cache/llm1bit
    """


@cache.command()
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(cache_dir: Path | None, as_json: bool) -> None:
    """Where the store is, how many results it holds, its size, and counts per backend / simulator version.

    \b
    Example:  llm1bit cache info --json
    """
    data = make_cache(cache_dir).info()
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"path     {data['path']}")
    click.echo(f"entries  {data['entries']}")
    click.echo(f"size     {_size(data['bytes'])}")
    for group in data["by_version"]:
        click.echo(
            f"  backend {group['backend'] or 'unknown'}, simulator {group['simulator'] or 'unknown'}: "
            f"{group['entries']}"
        )


@cache.command()
@cache_option
def clear(cache_dir: Path | None) -> None:
    """Delete every cached result (they are recomputed when next needed).

    \b
    Example:  llm1bit cache clear --cache-dir /tmp/llm1bit-cache
    """
    store = make_cache(cache_dir)
    removed = store.clear()
    legacy = store.clear_legacy()
    note = f" and {legacy} file(s) of the old one-file-per-result layout" if legacy else ""
    click.echo(f"removed {removed} entries{note} from {store.path}")
