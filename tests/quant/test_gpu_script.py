"""scripts/gpu_quantize_7b.py, issue 22's one GPU measurement: it must run the first time a GPU is lent, so its CPU
smoke run (Llama-2-7B's shapes divided by 32, one layer) quantizes here, and without CUDA the default run skips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_quantize_7b.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the default run would measure")
def test_without_cuda_the_default_run_skips_cleanly() -> None:
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("skipped: no CUDA device")


def test_cpu_smoke_run_quantizes_every_layer(tmp_path) -> None:
    out = tmp_path / "result.json"
    proc = _run(
        "--device",
        "cpu",
        "--layers",
        "2",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--shrink",
        "32",
        "--dtype",
        "float32",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["shapes"]["hidden_size"] == 128 and result["shapes"]["intermediate_size"] == 344
    assert len(result["layer_seconds"]) == 2 and all(s["solver"] > 0 for s in result["layer_seconds"])
    assert result["peak_device_bytes"] is None and "minutes_for_32_layers" not in result
    assert "no 7B projection" in proc.stdout


def test_bad_shrink_is_one_line() -> None:
    proc = _run("--device", "cpu", "--shrink", "5")
    assert proc.returncode != 0 and "--shrink must divide the 32 heads, got 5" in proc.stderr
