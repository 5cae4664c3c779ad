"""Native loading: `AutoModelForCausalLM.from_pretrained(folder)` on an `llm1bit quantize` folder.

`import llm1bit` installs import hooks (`llm1bit/__init__.py`) that call the `register_*` functions below as
soon as the transformers modules they extend are imported (so `import llm1bit` itself stays light):

* `Llm1bitConfig`, model_type "llm1bit", with `AutoConfig`: a quantized folder's config.json says
  model_type "llm1bit", so a process that has not imported llm1bit gets transformers' "does not recognize
  this architecture" error instead of a model with random weights (transformers 5 only warns on an unknown
  `quant_method`). With llm1bit imported, `Llm1bitConfig.from_dict` (the public hook `AutoConfig` builds
  every config through) returns the original architecture's config (`llm1bit_base_model_type`) with its
  `quantization_config`, so the auto classes pick the original model class themselves: no model class of
  our own, no second `from_pretrained` call and none of the auto classes' private keywords.
* `Llm1bitHfQuantizer` (an `HfQuantizer`, in `llm1bit.quant.hf.quantizer`) for every `llm1bit-<method>`
  quant_method: on the meta-device skeleton transformers builds, it replaces the quantized modules by empty
  `QuantLinear` shells shaped from the safetensors header (`checkpoint.build_shells`); transformers' loader
  fills them; afterwards `checkpoint.check_loaded` refuses anything missing or inconsistent."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from llm1bit.format import QUANTIZED_MODEL_TYPE
from llm1bit.format.folder import unwrap_quantized


class Llm1bitConfig(PretrainedConfig):
    """A quantized folder's config.json: every field of the original model's, model_type "llm1bit".
    Loading it gives the original architecture's config, its `quantization_config` kept."""

    model_type = QUANTIZED_MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        from transformers import CONFIG_MAPPING

        fields = unwrap_quantized(dict(config_dict))
        base_type = fields.get("model_type")
        if base_type == QUANTIZED_MODEL_TYPE or base_type not in CONFIG_MAPPING:
            raise ValueError(
                f"llm1bit folder: base model type {base_type!r} is not one this transformers release knows"
            )
        return CONFIG_MAPPING[base_type].from_dict(fields, **kwargs)


def register_config() -> None:
    from transformers import AutoConfig

    AutoConfig.register(QUANTIZED_MODEL_TYPE, Llm1bitConfig, exist_ok=True)


def register_quantizer() -> None:
    """Import the quantizer module, which registers itself with transformers as its last step. Importing it
    imports `transformers.quantizers`, whose hook calls this again: then the module is half-initialized
    in sys.modules, the import returns at once, and the module's own last step still registers it."""
    import llm1bit.quant.hf.quantizer  # noqa: F401
