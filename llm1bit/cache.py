"""On-disk result cache keyed by what determines a simulator's answer.

One small JSON file per key (shape, hardware contents incl. dataflow, backend, simulator
version), written atomically, so an interrupted sweep loses nothing it finished and two
processes never see half a file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from llm1bit.atomic import atomic_write_text
from llm1bit.errors import UserError


def default_cache_dir() -> Path:
    """$LLM1BIT_CACHE_DIR, else $XDG_CACHE_HOME/llm1bit, else ~/.cache/llm1bit."""
    if os.environ.get("LLM1BIT_CACHE_DIR"):
        return Path(os.environ["LLM1BIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm1bit"


class ResultCache:
    """Maps a key (a dict of JSON-able parts) to a JSON-able dict. `root=None` disables caching."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot use cache folder {self.root}: {exc.strerror}") from None

    @staticmethod
    def key(**parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        try:
            return json.loads(self._path(key).read_text())["value"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, value: dict, **meta: object) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps({"meta": meta, "value": value}, sort_keys=True))
