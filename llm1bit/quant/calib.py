"""Calibration and evaluation tokens from local text files.

The whole file is tokenized once with the tokenizer's defaults (a LLaMA tokenizer adds one BOS at the
start of the text, as in the GPTQ protocol; no BOS per window). Calibration windows are drawn like
GPTQ's `get_loaders`: `random.seed(seed)`, then `randint(0, T - seqlen - 1)` per window."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

from llm1bit.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def shared_data_file(name: str | os.PathLike, what: str = "data file") -> Path:
    """`name` as given if it exists, else under $LLM1BIT_DATA, ./shared/data or ../shared/data."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.is_file():
        if not path.is_file():
            raise UserError(f"{what} {path} does not exist")
        return path
    roots = [Path(os.environ["LLM1BIT_DATA"])] if os.environ.get("LLM1BIT_DATA") else []
    roots += [Path("shared") / "data", Path("..") / "shared" / "data"]
    for root in roots:
        if (root / path).is_file():
            return root / path
    raise UserError(f"{what} {path} not found under $LLM1BIT_DATA, ./shared/data or ../shared/data")


def read_text(path: str | os.PathLike) -> str:
    """The file's text; a one-line error when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as UTF-8 text: {exc}") from None
    if not text.strip():
        raise UserError(f"text file {path} is empty")
    return text


def tokenize_file(path: str | os.PathLike, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """int64 (T,) token ids of the whole file."""
    import torch

    ids = tokenizer(read_text(path), return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(
    ids: torch.Tensor, nsamples: int, seqlen: int, seed: int, source: str = "text"
) -> torch.Tensor:
    """int64 (nsamples, seqlen) random windows of `ids`, reproducible from `seed`."""
    import torch

    if nsamples < 1 or seqlen < 2:
        raise UserError(f"need --nsamples >= 1 and --seqlen >= 2 (got {nsamples} and {seqlen})")
    total = ids.numel()
    if total <= seqlen + 1:
        raise UserError(
            f"calibration {source} is too short: {total} tokens, need more than {seqlen + 1} for "
            f"--seqlen {seqlen}; use a longer file or a smaller --seqlen"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[i : i + seqlen] for i in starts])


def calibration_windows(
    path: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    """Tokenize `path` and draw `nsamples` windows of `seqlen` tokens."""
    return sample_windows(tokenize_file(path, tokenizer), nsamples, seqlen, seed, source=f"text {path}")
