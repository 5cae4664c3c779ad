"""A quantized folder's config: "is this an llm1bit folder", its config.json and quantization_config read
strictly (a key given twice is refused, not silently dropped), the format version it needs, and the original
model's config it wraps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llm1bit.errors import UserError
from llm1bit.format import BASE_MODEL_TYPE_KEY, FORMAT_VERSION, QUANT_METHOD_PREFIX, QUANTIZED_MODEL_TYPE


def quantization_config(config: Any) -> dict[str, Any] | None:
    """The llm1bit quantization_config of a config dict; None for any other config (an FP model's)."""
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(qc, dict) and str(qc.get("quant_method", "")).startswith(QUANT_METHOD_PREFIX):
        return qc
    return None


def read_folder_config(folder: str | os.PathLike, where: str) -> dict[str, Any]:
    """config.json of a model folder, read strictly; no folder or no config.json is one line naming `where`."""
    from llm1bit.jsonfile import read_json

    folder = Path(folder)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise UserError(f"{where}: not a folder written by `llm1bit quantize` (no config.json)")
    return read_json(folder / "config.json", "config", constants=True)  # constants: HF configs may hold NaN


def is_quantized_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder whose config.json carries an llm1bit quantization_config (never raises)."""
    try:
        return quantization_config(read_folder_config(path, str(path))) is not None
    except UserError:
        return False


def read_quantized_config(folder: str | os.PathLike, where: str | None = None) -> tuple[dict, dict]:
    """(config.json, its quantization_config) of an llm1bit quantized folder of a format this llm1bit reads;
    anything else is one line naming `where` (default: the folder)."""
    where = where or str(folder)
    config = read_folder_config(folder, where)
    qc = quantization_config(config)
    if qc is None:
        raise UserError(f"{where}: not an llm1bit quantized folder (no llm1bit quantization_config)")
    check_format_version(where, qc)
    return config, qc


def check_format_version(where: str | os.PathLike, qc: dict[str, Any]) -> None:
    if int(qc.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(
            f"{where} uses format version {qc['format_version']}; this llm1bit reads up to {FORMAT_VERSION}"
        )


def unwrap_quantized(cfg: dict) -> dict:
    """The original model's config dict of a quantized folder's config (unchanged for any other config)."""
    if cfg.get("model_type") != QUANTIZED_MODEL_TYPE or BASE_MODEL_TYPE_KEY not in cfg:
        return cfg
    cfg = dict(cfg)
    cfg["model_type"] = cfg.pop(BASE_MODEL_TYPE_KEY)
    return cfg
