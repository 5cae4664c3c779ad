"""The `llm1bit` command: a click group whose subcommands live in `llm1bit.commands`, imported on use.

Each subcommand module imports its heavy dependencies (torch, transformers, scalesim, matplotlib)
inside the command, so `llm1bit simulate --help` starts in well under a second."""

from __future__ import annotations

import importlib

import click

from llm1bit.errors import Interrupted
from llm1bit.version import __version__

# name -> "module:attribute"; the order is the order of `llm1bit --help`.
COMMANDS: dict[str, str] = {
    "models": "llm1bit.commands.models:models",
    "topology": "llm1bit.commands.topology:topology",
    "simulate": "llm1bit.commands.simulate:simulate",
    "sweep": "llm1bit.commands.sweep:sweep",
    "amdahl": "llm1bit.commands.amdahl:amdahl",
    "figures": "llm1bit.commands.figures:figures",
    "quantize": "llm1bit.commands.quantize:quantize",
    "eval": "llm1bit.commands.evaluate:evaluate",
    "bench": "llm1bit.commands.bench:bench",
    "bits": "llm1bit.commands.bits:bits",
    "explore": "llm1bit.commands.explore:explore",
    "cache": "llm1bit.commands.cache:cache",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        """Ctrl-C anywhere: one line and exit 130 (commands with resumable work say what they kept)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted: no output was written; finished work that a command keeps "
                "(simulator runs, quantized layers) is reused when it is run again"
            ) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llm1bit")
def main() -> None:
    """How much of an LLM gets faster when its projections become multiplication-free.

    \b
    Examples:
      llm1bit simulate --model opt-6.7b --hw cloud
      llm1bit sweep --models opt-350m,opt-1.3b --hw cloud,edge -o results.csv
      llm1bit amdahl --model opt-6.7b --hw cloud
    """


if __name__ == "__main__":
    main()
