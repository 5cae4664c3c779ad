"""Acc-mode rotations (procedure 2): portable signed Hadamard stages keyed per module, stored with a checksum.

The golden values below were computed once; a numpy whose Philox raw stream or stable argsort changed,
or a machine whose float64 arithmetic differed, fails them (and would fail the checksum on reload).
Calibration windows come from the first half of tinystories/valid-head.txt (tests only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llm1bit.atomic import atomic_dir
from llm1bit.errors import UserError
from llm1bit.quant.calib import sample_windows, tokenize_file
from llm1bit.quant.hf.checkpoint import load_quantized, quant_linears, save_quantized
from llm1bit.quant.hf.loading import load_model
from llm1bit.quant.hf.packing import pack, unpack
from llm1bit.quant.numerics.codes import (
    LEGACY_BUTTERFLY,
    PHILOX_HADAMARD,
    BinaryCodes,
    Incoherence,
    QuantizedWeight,
)
from llm1bit.quant.numerics.column_solver import quantize_weight
from llm1bit.quant.numerics.incoherence import (
    RotationMismatch,
    SignedHadamard,
    key_hex,
    rotation_key,
    rotations,
    stage_count,
)
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = DATA / "models" / "stories260K"
VALID = DATA / "tinystories" / "valid-head.txt"

DOWN = "model.layers.0.mlp.down_proj"
GOLDEN_KEY = "c0092d5c8e54ed3ed471e307f95b0636"  # rotation_key(0, DOWN), high word first
GOLDEN_CHECKSUM = "11c386d74def2c3b"  # rotations of DOWN (64 x 172) under seed 0
GOLDEN_V_DENSE = "dfecbc7693e0c13f"  # sha256 prefix of the dense float64 V (172 x 172) of DOWN


@pytest.mark.parametrize("n", [1, 2, 7, 64, 172, 576])
def test_transform_is_orthogonal_for_any_size(n: int) -> None:
    m = SignedHadamard.generate(n, rotation_key(3, "layer"), 0)
    assert m.negative.shape == m.perms.shape == (stage_count(n), n)
    dense = m.dense()
    assert np.abs(dense @ dense.T - np.eye(n)).max() < 1e-12
    assert np.abs(m.apply_t(np.eye(n)) - dense.T).max() < 1e-15  # apply_t is the transpose, not an inverse
    x = np.random.default_rng(1).standard_normal((n, 3))
    assert np.abs(m.apply_t(m.apply(x)) - x).max() < 1e-12
    assert _reached(m).all()  # every output depends on every input: the stages mix completely


def _reached(m: SignedHadamard) -> np.ndarray:
    """bool (n, n): which entries of M the stages' pairings connect (an entry may still be 0 by cancellation)."""
    n, h = m.n, m.n - m.n % 2
    reach = np.eye(n, dtype=bool)
    for perm in m.perms:
        y = reach[perm]
        reach = y.copy()
        reach[0:h:2] = reach[1:h:2] = y[0:h:2] | y[1:h:2]
    return reach


def test_stage_count() -> None:
    assert [stage_count(n) for n in (1, 2, 3, 7, 64, 65, 172, 576, 4096)] == [2, 2, 4, 6, 12, 14, 16, 20, 24]


def test_regeneration_is_bit_identical_and_golden() -> None:
    key = rotation_key(0, DOWN)
    assert key_hex(key) == GOLDEN_KEY
    first = rotations(key, 64, 172)
    rotations.cache_clear()
    again = rotations(key, 64, 172)
    assert first is not again
    for a, b in ((first.u, again.u), (first.v, again.v)):
        assert np.array_equal(a.negative, b.negative) and np.array_equal(a.perms, b.perms)
        assert a.dense().tobytes() == b.dense().tobytes()
    assert again.checksum == first.checksum == GOLDEN_CHECKSUM
    assert hashlib.sha256(again.v.dense().tobytes()).hexdigest()[:16] == GOLDEN_V_DENSE
    # U and V come from different sub-streams even when N == K
    square = rotations(key, 64, 64)
    assert not np.array_equal(square.u.perms, square.v.perms)


def test_keys_depend_on_seed_and_module() -> None:
    keys = {rotation_key(s, m) for s in (0, 1) for m in ("a.q_proj", "a.k_proj", "")}
    assert len(keys) == 6 and all(0 <= w < 1 << 64 for key in keys for w in key)
    spec = QuantSpec().validate()
    assert spec.for_module("x").module == "x" and "module" not in spec.for_module("x").to_dict()


SPEC = QuantSpec(method="shiftaddllm", wbits=2, mode="acc", bcq_rounds=3)


@pytest.fixture(scope="module")
def quantized_stories():
    """(model, tokenizer, {module name: (QuantizedWeight, the solver's dequantized weight)}) of an acc run on
    stories260K."""
    model, tokenizer = load_model(STORIES)
    tokens = tokenize_file(VALID, tokenizer)
    calib = sample_windows(tokens[: tokens.numel() // 2], nsamples=2, seqlen=64, seed=0)
    out = {}

    def spy(weight, hessian, spec):
        result = quantize_weight(weight, hessian, spec)
        out[spec.module] = (result, result.dequantize())
        return result

    quantize_model(model, SPEC, calib, solver=spy)
    return model, tokenizer, out


def test_same_shape_layers_get_their_own_rotations(quantized_stories) -> None:
    quantized_stories = quantized_stories[2]
    assert len(quantized_stories) == 35 and "" not in quantized_stories
    same_shape = [
        name for name, (q, _) in quantized_stories.items() if tuple(q.codes.codes.shape[1:]) == (64, 64)
    ]
    assert len(same_shape) >= 10  # q_proj and o_proj of every layer
    incs = {name: quantized_stories[name][0].incoherence for name in same_shape}
    assert all(inc.key == rotation_key(0, name) for name, inc in incs.items())
    assert len({inc.checksum for inc in incs.values()}) == len(incs)


def test_pack_unpack_dequantize_equals_the_solver(quantized_stories) -> None:
    quantized_stories = quantized_stories[2]
    for name, (quantized, weight) in quantized_stories.items():
        tensors, meta = pack(quantized, bits=2)
        assert tensors["incoherence_key"].dtype == torch.int64 and tensors["incoherence_key"].shape == (2,)
        assert tensors["incoherence_sha256"].dtype == torch.uint8 and tensors["incoherence_sha256"].shape == (
            8,
        )
        assert "incoherence_seed" not in tensors
        assert meta["rotation_version"] == PHILOX_HADAMARD
        assert meta["rotation_sha256"] == quantized.incoherence.checksum
        rotations.cache_clear()  # regenerate from the stored key
        back = unpack(tensors, meta)
        assert back.incoherence.key == quantized.incoherence.key
        assert torch.equal(back.dequantize(), weight), name


def test_a_folder_whose_rotations_do_not_regenerate_is_refused(tmp_path: Path, quantized_stories) -> None:
    model, tokenizer, _ = quantized_stories
    out = tmp_path / "q"
    with atomic_dir(out) as tmp:
        save_quantized(model, tokenizer, tmp, SPEC.to_dict())
    reloaded = load_quantized(out)
    for name, mod in quant_linears(model).items():
        assert torch.equal(quant_linears(reloaded)[name].quantized.dequantize(), mod.quantized.dequantize())
    tensors = load_file(str(out / "model.safetensors"))
    tensors[f"{DOWN}.incoherence_key"] = tensors[f"{DOWN}.incoherence_key"] ^ 1  # as another generator would
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        load_quantized(out)
    message = err.value.format_message()
    assert "\n" not in message and DOWN in message and "checksum" in message


def _one_layer():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 17, generator=gen) * 0.02
    x = torch.randn(200, 17, generator=gen)
    h = x.T.double() @ x.double() / 200
    return quantize_weight(w, h, QuantSpec(wbits=2, bcq_rounds=3).for_module("blk.0.proj"))


def test_a_checksum_that_does_not_match_is_a_one_line_user_error() -> None:
    quantized = _one_layer()
    tensors, meta = pack(quantized, bits=2)
    bad = dict(tensors, incoherence_key=tensors["incoherence_key"] + torch.tensor([1, 0]))
    with pytest.raises(UserError) as err:
        unpack(bad, meta)
    message = err.value.format_message()
    assert "\n" not in message and "checksum" in message and quantized.incoherence.checksum in message
    assert isinstance(err.value, RotationMismatch) and isinstance(err.value, ValueError)
    # the config's checksum and the file's must agree too
    with pytest.raises(UserError, match="differs from the one in the tensors"):
        unpack(tensors, dict(meta, rotation_sha256="0" * 16))
    assert torch.equal(unpack(tensors, meta).dequantize(), quantized.dequantize())


def test_legacy_seed_records_still_pack_and_load() -> None:
    gen = torch.Generator().manual_seed(2)
    codes = torch.where(torch.rand((2, 24, 17), generator=gen) > 0.5, 1, -1).to(torch.int8)
    scales = torch.rand((17, 1, 2), generator=gen)
    inc = Incoherence(rescale=torch.rand(17, generator=gen) + 0.5, version=LEGACY_BUTTERFLY, seed=7)
    legacy = QuantizedWeight(BinaryCodes(codes, scales, col_block=1, row_block=24), inc)
    tensors, meta = pack(legacy, bits=2)
    assert {"incoherence_seed", "incoherence_rescale"} <= set(tensors) and "incoherence_key" not in tensors
    assert meta["incoherence_seed"] == 7 and "rotation_sha256" not in meta
    back = unpack(tensors, meta)
    assert back.incoherence.version == LEGACY_BUTTERFLY and back.incoherence.seed == 7
    assert torch.equal(back.dequantize(), legacy.dequantize())
