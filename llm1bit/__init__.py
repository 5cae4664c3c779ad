"""llm1bit: how much of an LLM gets faster when its projection layers become multiplication-free.

Importing llm1bit makes transformers able to load `llm1bit quantize` folders natively
(`AutoModelForCausalLM.from_pretrained(folder)`): post-import hooks register llm1bit's config and quantizer
classes (`llm1bit.quant.hf.register`) as soon as transformers' auto configs and quantizers are imported, or at
once if they already are, so importing llm1bit costs nothing where transformers is not used.

The hook is a meta-path finder of a few lines rather than wrapt's `register_post_import_hook`: importing wrapt
2.x imports asyncio, about 110 ms, which every `llm1bit` command paid at start-up."""

from __future__ import annotations

import sys
from typing import Any

from llm1bit.version import __version__

__all__ = ["__version__"]

# module -> the function of llm1bit.quant.hf.register to call once that module has been executed
_HOOKS = {
    "transformers.models.auto.configuration_auto": "register_config",
    "transformers.quantizers": "register_quantizer",
}


def _run_hook(name: str) -> None:
    function = _HOOKS.pop(name, None)
    if function is not None:
        from llm1bit.quant.hf import register

        getattr(register, function)()


class _HookedLoader:
    """The module's own loader, with the hook run after the module has executed; everything else delegated."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _run_hook(self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)


class _PostImportFinder:
    """A meta-path finder that finds nothing itself: for a hooked module it takes the spec the other finders give and wraps its loader."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _HOOKS:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, name)
                return spec
        return None


def _install_transformers_hooks() -> None:
    for name in [n for n in _HOOKS if n in sys.modules]:  # transformers imported before llm1bit
        _run_hook(name)
    if _HOOKS and not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())


_install_transformers_hooks()
