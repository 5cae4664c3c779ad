"""act-order defaults like the reference implementations (off for gptq, on for shiftaddllm) and is recorded."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.cli import main
from llm1bit.quant.numerics.methods import QuantSpec

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES, TEXT = DATA / "models" / "stories260K", DATA / "tinystories" / "valid-head.txt"


def test_defaults_per_method():
    assert QuantSpec(method="gptq").validate().act_order is False
    assert QuantSpec(method="shiftaddllm").validate().act_order is True
    assert QuantSpec(method="gptq", act_order=True).validate().act_order is True


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("flag, expected", [(None, False), ("--act-order", True)])
def test_recorded_in_quantization_config(tmp_path, flag, expected):
    args = [
        "quantize",
        "--model",
        STORIES,
        "--method",
        "gptq",
        "--calib",
        TEXT,
        "--nsamples",
        2,
        "--seqlen",
        64,
    ]
    res = CliRunner().invoke(
        main, [str(a) for a in args] + ([flag] if flag else []) + ["-o", str(tmp_path / "q")]
    )
    assert res.exit_code == 0, res.output
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["act_order"] is expected and qc["spec"]["act_order"] is expected
