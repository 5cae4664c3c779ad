"""llm1bit: how much of an LLM gets faster when its projection layers become multiplication-free."""

__version__ = "0.1.0"
