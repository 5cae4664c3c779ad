"""The simulation side loads no torch: `import llm1bit`, the CLI and a whole `simulate` run in a fresh process
leave torch, transformers, safetensors and accelerate out of sys.modules (the import contracts in pyproject.toml forbid
such imports statically; this checks what actually gets loaded, hooks included)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "safetensors", "accelerate")

PROGRAM = """
import sys
import llm1bit
from click.testing import CliRunner
from llm1bit.cli import main
result = CliRunner().invoke(main, {args!r})
assert result.exit_code == 0, result.output
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""


def loaded_after(args: list[str]) -> str:
    code = PROGRAM.format(args=args, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_and_simulate_load_no_torch() -> None:
    assert loaded_after(["--help"]) == ""
    assert (
        loaded_after(["simulate", "--model", "opt-350m", "--hw", "cloud", "--backend", "analytic", "--json"])
        == ""
    )
