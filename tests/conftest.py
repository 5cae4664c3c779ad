"""Shared test fixtures: paths to the project and to ../shared/data (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm1bit.models import CONFIG_DIR

PROJECT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT.parent / "shared" / "data"
CONFIGS = CONFIG_DIR  # the HF configs shipped with the package


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: each test session gets its own."""
    monkeypatch.setenv("LLM1BIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "llm1bit-cache"))
