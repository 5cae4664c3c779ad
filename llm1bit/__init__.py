"""llm1bit: how much of an LLM gets faster when its projection layers become multiplication-free.

Importing llm1bit makes transformers able to load `llm1bit quantize` folders natively
(`AutoModelForCausalLM.from_pretrained(folder)`): post-import hooks register llm1bit's config and
quantizer classes (`llm1bit.quant.hf`) when transformers' auto classes and quantizers are imported, or at
once if they already are, so importing llm1bit costs nothing where transformers is not used."""

__version__ = "0.1.0"


def _install_transformers_hooks() -> None:
    try:
        import wrapt  # installed with the quant extra, like transformers
    except ImportError:
        return

    def hook(function_name: str):
        def run(_module: object) -> None:
            from llm1bit.quant import hf

            getattr(hf, function_name)()

        return run

    wrapt.register_post_import_hook(hook("register_config"), "transformers.models.auto.configuration_auto")
    wrapt.register_post_import_hook(hook("register_quantizer"), "transformers.quantizers")


_install_transformers_hooks()
