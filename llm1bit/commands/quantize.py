"""`llm1bit quantize`: ShiftAddLLM (or a baseline) layer by layer, written as a Hugging Face folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from llm1bit.errors import UserError
from llm1bit.format import SAVE_DTYPES
from llm1bit.quant.numerics.methods import METHODS, MODES, choices_text

DTYPES = ("auto", "float32", "bfloat16")  # llm1bit.quant.walk.layers.DTYPES (not imported: torch-free help)

EPILOG = """\b
Examples:
  llm1bit quantize --model ../shared/data/models/stories260K --method shiftaddllm --mode lat \\
      --wbits 3 --calib calib.txt --nsamples 8 --seqlen 256 -o out/stories-lat3
  llm1bit quantize --model SmolLM2-135M-Instruct.Q4_1.gguf --method rtn --wbits 3 -o out/smol-rtn3
"""


@click.command(epilog=EPILOG)
@click.option(
    "--model", "model_src", required=True, help="Local folder, FILE.gguf or hub id (hub only if reachable)."
)
@click.option("--method", default=METHODS[0], show_default=True, help=f"{choices_text(METHODS)}.")
@click.option("--wbits", type=int, default=3, show_default=True, help="Bits per weight (1 to 8).")
@click.option(
    "--mode",
    default="acc",
    show_default=True,
    help=f"shiftaddllm: {choices_text(MODES)} (acc: column scales; lat: blocks).",
)
@click.option(
    "--groupsize", type=int, default=-1, show_default=True, help="Rows (or columns) per scale; -1 = none."
)
@click.option("--bits-config", type=click.Path(dir_okay=False), help='JSON {"layers": {"<module>": bits}}.')
@click.option(
    "--calib", type=click.Path(dir_okay=False), help="Plain-text calibration file (gptq, shiftaddllm)."
)
@click.option("--nsamples", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per calibration window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of window sampling and rotations.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="auto",
    show_default=True,
    help="Compute precision of the calibration forwards (Hessians are float32 either way); auto: bfloat16 "
    "where the device runs it well (CUDA; a CPU with AVX512-BF16 or AMX), else float32. On SmolLM2-135M (lat3 "
    "g128, 32 x 2048, seeds 0-2) bfloat16 forwards took half the time of float32 ones; mean perplexity was "
    "0.7% above float32's before issue 22, less than the +-2% a seed alone moves it (README). Recorded as compute_dtype in quantization_config; not the "
    "precision of the saved tensors (--save-dtype).",
)
@click.option(
    "--bcq-rounds", type=int, default=50, show_default=True, help="Alternating BCQ refinement rounds."
)
@click.option("--apot-terms", type=int, default=3, show_default=True, help="Power-of-two terms per scale.")
@click.option("--no-incoherence", is_flag=True, help="acc mode: skip the rescale + random rotations.")
@click.option(
    "--act-order/--no-act-order",
    default=None,
    help="Quantize columns by decreasing Hessian diagonal [default: on for shiftaddllm, off for gptq, as the "
    "reference implementations; recorded as act_order in quantization_config].",
)
@click.option(
    "--save-dtype",
    type=click.Choice(SAVE_DTYPES),
    default="auto",
    show_default=True,
    help="dtype of the tensors kept unquantized (embeddings, norms, lm_head); auto: the model's declared "
    "dtype where it is float16 or bfloat16, else float16 (a GGUF source is dequantized to float32). "
    "The model still computes in its config's dtype.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output folder.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder.")
def quantize(
    model_src: str,
    method: str,
    wbits: int,
    mode: str,
    groupsize: int,
    bits_config: str | None,
    calib: str | None,
    nsamples: int,
    seqlen: int,
    seed: int,
    device: str,
    dtype: str,
    bcq_rounds: int,
    apot_terms: int,
    no_incoherence: bool,
    act_order: bool | None,
    save_dtype: str,
    overwrite: bool,
    output: str,
) -> None:
    """Quantize a causal LM's decoder linears layer by layer and save a reloadable folder.

    Embeddings, norms and lm_head stay in the original precision. Calibration text is required for
    gptq and shiftaddllm; never calibrate on the text you evaluate on. The output folder appears only
    when complete; an interrupted run keeps its finished layers in a hidden folder beside it, and the
    same command run again resumes from them."""
    from llm1bit.format.bits_file import check_storage, read_bits_file
    from llm1bit.quant.device import check_device
    from llm1bit.quant.numerics.methods import QuantSpec

    spec = QuantSpec(
        method=method,
        wbits=wbits,
        mode=mode,
        groupsize=groupsize,
        bcq_rounds=bcq_rounds,
        apot_terms=apot_terms,
        incoherence=not no_incoherence,
        act_order=act_order,
        seed=seed,
    ).validate()
    layer_bits, stored = read_bits_file(bits_config) if bits_config else (None, {})
    if method == "shiftaddllm":  # the method whose storage a bits file's settings describe
        check_storage(bits_config, stored, spec.to_dict())
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if not out.absolute().parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.absolute().parent} does not exist")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} exists and is not empty (use --overwrite to replace it)")
    needs_calib = spec.info.needs_hessian
    if needs_calib and not calib:
        raise UserError(f"--method {method} needs --calib FILE (plain text, not your evaluation text)")
    if calib and not Path(calib).is_file():
        raise UserError(f"calibration file {calib} does not exist")
    device = check_device(device)
    run_quantize(
        model_src,
        spec,
        out,
        layer_bits,
        calib if needs_calib else None,
        nsamples,
        seqlen,
        device,
        overwrite,
        save_dtype,
        dtype,
    )


def run_quantize(
    model_src: str,
    spec,
    out: Path,
    layer_bits: dict[str, int] | None,
    calib: str | None,
    nsamples: int,
    seqlen: int,
    device: str,
    overwrite: bool,
    save_dtype: str = "auto",
    dtype: str = "auto",
) -> None:
    from rich.console import Console

    from llm1bit.atomic import atomic_dir
    from llm1bit.format.safetensors import bits_per_weight
    from llm1bit.quant.calib import calibration_windows
    from llm1bit.quant.hf.checkpoint import save_quantized
    from llm1bit.quant.hf.loading import check_seqlen, load_model
    from llm1bit.quant.quantize import quantize_model, resume_folder, summary_table
    from llm1bit.quant.walk.layers import resolve_dtype

    console = Console(stderr=True)
    model, tokenizer = load_model(model_src)
    windows = None
    calibration = None
    if calib:
        check_seqlen(model, seqlen)
        windows = calibration_windows(calib, tokenizer, nsamples, seqlen, spec.seed)
        calibration = {"file": Path(calib).name, "nsamples": nsamples, "seqlen": seqlen, "seed": spec.seed}
    total_fp16 = 2 * sum(p.numel() for p in model.parameters())  # tied weights counted once
    dtype = resolve_dtype(dtype, device)
    cache = resume_folder(out, model_src, spec, windows, layer_bits, dtype)
    cache.mkdir(exist_ok=True)
    report = quantize_model(
        model,
        spec,
        windows,
        device=device,
        bits_config=layer_bits,
        console=console,
        cache_dir=cache,
        dtype=dtype,
    )
    resumed = sum(layer.resumed for layer in report.layers)
    if resumed:
        console.print(f"resumed {resumed} finished layer(s) from {cache}")
    extra = {"calibration": calibration, "source_model": str(model_src), "compute_dtype": dtype}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        qconfig = save_quantized(model, tokenizer, tmp, spec.to_dict(), extra=extra, save_dtype=save_dtype)
        (tmp / "llm1bit_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        disk = (tmp / "model.safetensors").stat().st_size
    shutil.rmtree(cache, ignore_errors=True)
    packed = sum(m["nbytes"] for m in qconfig["modules"].values())
    linear_fp16 = sum(2 * m["shape"][0] * m["shape"][1] for m in qconfig["modules"].values())
    bpw = bits_per_weight(out / "model.safetensors", qconfig["modules"])
    console.print(summary_table(report))
    console.print(
        f"time: {report.total_seconds:.1f} s (forward passes {report.forward_seconds:.1f} s, "
        f"solver {report.solver_seconds:.1f} s)",
        soft_wrap=True,
    )
    console.print(
        f"size: model.safetensors {disk / 2**20:.2f} MiB vs {total_fp16 / 2**20:.2f} MiB in FP16 "
        f"({disk / total_fp16:.1%}); quantized linears {packed / 2**20:.2f} MiB packed vs "
        f"{linear_fp16 / 2**20:.2f} MiB in FP16 ({packed / linear_fp16:.1%}); "
        f"{bpw['total']:.4f} bits per weight"
        + (
            f" ({bpw['without_incoherence']:.4f} without the acc rotations' keys and rescales)"
            if bpw["incoherence"]
            else ""
        ),
        soft_wrap=True,
    )
    click.echo(f"wrote {out}")
