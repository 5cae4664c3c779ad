"""The LUT kernel (llm1bit.quant.hf.kernel): y = x W^T from packed binary codes, against x dequantize(W)^T in float64.

Every weight here goes through the real format: random `BinaryCodes` (power-of-two scale terms, or float
scales for bcq) packed by `packing.pack`, or the solver's own output (`quantize_weight`). The kernel's
paths are fp32 throughout (fp32 tables, fp32 accumulation), so the bound is
max|y - y_ref| <= 1e-5 max|y_ref| on every path (AVX-512 and AVX2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llm1bit.quant import native
from llm1bit.quant.hf.kernel import build
from llm1bit.quant.hf.kernel.gemv import ISAS, lut_linear, rotate
from llm1bit.quant.hf.kernel.layout import prepare
from llm1bit.quant.hf.packing import apot_scales, pack
from llm1bit.quant.numerics.codes import (
    LEGACY_BUTTERFLY,
    BinaryCodes,
    Incoherence,
    QuantizedWeight,
    UniformCodes,
)
from llm1bit.quant.numerics.incoherence import rotation_key, rotations

TOL = 1e-5
LIB = build.load()
pytestmark = pytest.mark.skipif(
    LIB is None, reason=build.unavailable_reason() or "the LUT kernel did not build"
)
PATHS = [name for name, isa in ISAS.items() if LIB is not None and isa <= LIB.isa]

STORIES = [(64, 64), (32, 64), (172, 64), (64, 172)]  # q/o, k/v, gate/up, down (N out, K in)
SMOLLM = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
ODD = [(1, 1), (37, 45), (173, 77), (3, 300), (129, 33), (17, 259)]
BATCHES = (1, 2, 3, 4, 5, 16, 17)


def layout(mode: str, n: int, groupsize: int) -> tuple[int, int]:
    """(col_block, row_block) as the solver sets them (llm1bit.quant.numerics.column_solver)."""
    if mode == "lat":
        return 8, (-(-n // 8) if groupsize <= 0 else groupsize // 8)
    return 1, (n if groupsize <= 0 else groupsize)


def random_weight(
    mode: str, n: int, k: int, q: int, groupsize: int, seed: int = 0, legacy: bool = False
) -> QuantizedWeight:
    """Random +-1 codes and scales in the layout of `mode` (lat / acc: power-of-two terms, acc with its
    rotations and rescale; bcq: float scales)."""
    gen = torch.Generator().manual_seed(seed)
    col_block, row_block = layout(mode, n, groupsize)
    codes = torch.where(torch.rand((q, n, k), generator=gen) > 0.5, 1, -1).to(torch.int8)
    shape = (-(-k // col_block), -(-n // row_block), q)
    if mode == "bcq":
        scales = torch.rand(shape, generator=gen) * 0.1 + 1e-3
        binary = BinaryCodes(codes, scales, col_block, row_block)
    else:
        signs = torch.randint(-1, 2, (*shape, 3), generator=gen).to(torch.int8)
        signs[..., 0] = 1
        exps = torch.randint(-14, -1, (*shape, 3), generator=gen).to(torch.int8)
        binary = BinaryCodes(codes, apot_scales(signs, exps), col_block, row_block, signs, exps)
    inc = None
    if mode == "acc":
        rescale = torch.rand(k, generator=gen) * 2 + 0.25
        if legacy:
            inc = Incoherence(rescale=rescale, version=LEGACY_BUTTERFLY, seed=seed)
        else:
            key = rotation_key(seed, f"layer{n}x{k}")
            inc = Incoherence(rescale=rescale, key=key, checksum=rotations(key, n, k).checksum)
    return QuantizedWeight(binary, inc)


def check(quantized: QuantizedWeight, batches=BATCHES, paths=None, threads=2, seed=1) -> float:
    """Pack, prepare, run every batch size on every path; return the worst relative error."""
    q = quantized.codes.codes.shape[0]
    tensors, meta = pack(quantized, q)
    prepared = prepare(tensors, meta)
    w = quantized.dequantize().double()
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for m in batches:
        x = torch.randn(m, w.shape[1], generator=gen)
        ref = x.double() @ w.T
        scale = float(ref.abs().max()) or 1.0
        for path in paths or PATHS:
            y = lut_linear(prepared, x, isa=path, threads=threads)
            assert y.dtype == torch.float32 and y.shape == ref.shape
            err = float((y.double() - ref).abs().max()) / scale
            assert err <= TOL, (path, m, meta["shape"], err)
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("mode", ["lat", "acc", "bcq"])
@pytest.mark.parametrize("groupsize", [-1, 128])
def test_stories_and_odd_shapes_every_plane_count(mode: str, groupsize: int) -> None:
    for i, (n, k) in enumerate(STORIES + ODD):
        for q in (1, 2, 3, 4):
            check(random_weight(mode, n, k, q, groupsize, seed=i * 10 + q), batches=(1, 3, 4, 17))


@pytest.mark.parametrize("mode", ["lat", "acc", "bcq"])
def test_every_batch_size_1_to_16(mode: str) -> None:
    check(random_weight(mode, 173, 77, 3, 128, seed=5), batches=tuple(range(1, 17)))


@pytest.mark.parametrize("mode", ["lat", "acc", "bcq"])
@pytest.mark.parametrize("groupsize", [-1, 128])
def test_smollm_shapes(mode: str, groupsize: int) -> None:
    for i, (n, k) in enumerate(SMOLLM):
        check(random_weight(mode, n, k, 1 + (i + len(mode)) % 4, groupsize, seed=i), batches=(1, 5))


@pytest.mark.parametrize(
    "mode,n,k,q,groupsize",
    [("lat", 8960, 1536, 3, 128), ("bcq", 1536, 8960, 2, -1), ("acc", 256, 1536, 4, 128)],
    ids=["lat-up", "bcq-down", "acc-k"],
)
def test_qwen_shapes(mode: str, n: int, k: int, q: int, groupsize: int) -> None:
    check(random_weight(mode, n, k, q, groupsize), batches=(1, 4))


def test_legacy_rotations() -> None:
    """Folders of format versions 1 and 2 (butterfly rotations, applied in numpy around the kernel)."""
    check(random_weight("acc", 60, 90, 2, -1, legacy=True), batches=(1, 3))


def test_solver_output(make_layer) -> None:
    """Real solver results (lat and acc with incoherence, bcq) for an odd-sized layer."""
    from llm1bit.quant.numerics.column_solver import quantize_weight
    from llm1bit.quant.numerics.methods import QuantSpec

    w, h, _ = make_layer(45, 172, tokens=256)
    for spec in (
        QuantSpec(method="shiftaddllm", mode="lat", wbits=3, groupsize=128, bcq_rounds=3),
        QuantSpec(method="shiftaddllm", mode="lat", wbits=2, bcq_rounds=3),
        QuantSpec(method="shiftaddllm", mode="acc", wbits=2, bcq_rounds=3, module="m.down_proj"),
        QuantSpec(method="bcq", wbits=4, groupsize=128, bcq_rounds=3),
    ):
        quantized = quantize_weight(w, h, spec)
        assert isinstance(quantized.codes, BinaryCodes)
        assert (quantized.incoherence is not None) == (spec.mode == "acc" and spec.method == "shiftaddllm")
        check(quantized, batches=(1, 7))


def test_one_thread_equals_two() -> None:
    """Threads split output rows only: the result is the same bits whatever the thread count."""
    quantized = random_weight("lat", 1536, 576, 3, 128)
    tensors, meta = pack(quantized, 3)
    prepared = prepare(tensors, meta)
    x = torch.randn(3, 576, generator=torch.Generator().manual_seed(0))
    one = lut_linear(prepared, x, threads=1)
    assert torch.equal(one, lut_linear(prepared, x, threads=2))
    assert torch.equal(one, lut_linear(prepared, x, threads=7))


def test_concurrent_callers_and_fork() -> None:
    """Two Python threads in the kernel at once (ctypes drops the GIL), and a forked child (no helper threads
    there) get the same bits as one caller."""
    import os
    import threading

    prepared = prepare(*pack(random_weight("lat", 2048, 1536, 3, 128), 3))
    x = torch.randn(2, 1536, generator=torch.Generator().manual_seed(0))
    want = lut_linear(prepared, x, threads=2)
    got: list[torch.Tensor] = []

    def run() -> None:
        for _ in range(20):
            got.append(lut_linear(prepared, x, threads=2))

    workers = [threading.Thread(target=run) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(got) == 40 and all(torch.equal(g, want) for g in got)
    pid = os.fork()
    if pid == 0:  # child: report equality through the exit code
        ok = torch.equal(lut_linear(prepared, x, threads=2), want)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_rotations_match_numpy_bit_for_bit() -> None:
    for n in (1, 2, 7, 64, 173):
        key = rotation_key(3, f"r{n}")
        rot = rotations(key, n, n)
        tensors = {"codes": torch.zeros((1, n, -(-n // 8)), dtype=torch.uint8)}
        prepared = prepare(
            {
                **tensors,
                "scales": torch.ones(n, 1, 1),
                "incoherence_rescale": torch.ones(n),
                "incoherence_key": torch.tensor([w - (1 << 64) if w >= 1 << 63 else w for w in key]),
                "incoherence_sha256": torch.tensor(list(bytes.fromhex(rot.checksum)), dtype=torch.uint8),
            },
            {
                "format": "binary",
                "bits": 1,
                "shape": [n, n],
                "col_block": 1,
                "row_block": n,
                "rotation_version": 2,
                "rotation_sha256": rot.checksum,
            },
        )
        x = np.random.default_rng(n).standard_normal((4, n))
        assert np.array_equal(rotate(LIB, prepared.v, x.copy(), transpose=False), rot.v.apply(x.T).T)
        assert np.array_equal(rotate(LIB, prepared.u, x.copy(), transpose=True), rot.u.apply_t(x.T).T)


# ---------------------------------------------------------------- QuantLinear, modes, fallbacks


def quant_linear(mode: str = "lat", n: int = 172, k: int = 64, q: int = 3, bias: bool = True):
    from llm1bit.quant.hf.linear import QuantLinear

    quantized = random_weight(mode, n, k, q, 128)
    b = torch.randn(n, generator=torch.Generator().manual_seed(2)) if bias else None
    return QuantLinear(quantized, b), quantized


def test_forward_modes(monkeypatch) -> None:
    from llm1bit.quant.hf.kernel import forward

    layer, quantized = quant_linear("acc")
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    ref = x.double() @ quantized.dequantize().double().T + layer.bias.double()
    monkeypatch.setenv("LLM1BIT_KERNEL", "dense")
    assert forward(layer, x) is None
    for mode in ("auto", "lut"):
        monkeypatch.setenv("LLM1BIT_KERNEL", mode)
        y = forward(layer, x)
        assert y is not None and y.shape == (2, 5, 172) and y.dtype == torch.float32
        assert float((y.double() - ref).abs().max()) <= TOL * float(ref.abs().max())
    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    big = torch.randn(1000, 64)
    assert (
        forward(layer, big) is not None
    )  # many rows: W rebuilt in C for one matmul, never the Python rebuild
    layer.set_cache(True)
    assert forward(layer, big) is not None and layer._weight is None  # the weight cache does not apply here
    assert forward(layer, x) is not None
    monkeypatch.setenv("LLM1BIT_KERNEL", "lut")
    assert forward(layer, big) is not None
    layer.set_cache(False)
    y16 = forward(layer, x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    monkeypatch.setenv("LLM1BIT_KERNEL", "fast")
    from llm1bit.errors import UserError

    with pytest.raises(UserError, match="unknown LLM1BIT_KERNEL 'fast'"):
        forward(layer, x)


def test_forced_avx2_through_the_environment(monkeypatch) -> None:
    from llm1bit.quant.hf.kernel import forward

    layer, quantized = quant_linear("lat", bias=False)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("LLM1BIT_KERNEL", "lut")
    monkeypatch.setenv("LLM1BIT_KERNEL_ISA", "avx2")
    ref = x.double() @ quantized.dequantize().double().T
    y = forward(layer, x)
    assert float((y.double() - ref).abs().max()) <= TOL * float(ref.abs().max())


def test_lut_refuses_uniform_codes_naming_the_layer(monkeypatch) -> None:
    from llm1bit.quant.hf.kernel import KernelRefused, forward, require_lut
    from llm1bit.quant.hf.linear import QuantLinear, require_lut_model

    gen = torch.Generator().manual_seed(0)
    uniform = UniformCodes(
        torch.randint(0, 16, (8, 32), generator=gen, dtype=torch.uint8),
        torch.rand(8, 1, generator=gen),
        torch.full((8, 1), 7.0),
        groupsize=32,
    )
    layer = QuantLinear(QuantizedWeight(uniform), None, bits=4)
    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    assert forward(layer, torch.randn(1, 32)) is None
    monkeypatch.setenv("LLM1BIT_KERNEL", "lut")
    with pytest.raises(
        KernelRefused,
        match=r"layer QuantLinear 8x32 uniform 4-bit cannot use the LUT kernel: its codes are uniform",
    ):
        forward(layer, torch.randn(1, 32))
    model = torch.nn.Sequential()
    model.add_module("proj", layer)
    with pytest.raises(KernelRefused, match=r"^LLM1BIT_KERNEL=lut: layer proj \(8x32 uniform 4-bit\)"):
        require_lut_model(model)
    good, _ = quant_linear("bcq")
    require_lut(good, "ok")


def test_prepared_layout_follows_the_buffers() -> None:
    """Loading new codes into a layer (in place, as load_state_dict does) rebuilds the kernel's layout."""
    from llm1bit.quant.hf.kernel import forward, prepared_for

    layer, _ = quant_linear("lat", bias=False)
    other, other_q = quant_linear("lat", bias=False)
    x = torch.randn(1, 64)
    first = prepared_for(layer)
    assert prepared_for(layer) is first
    layer.load_state_dict(other.state_dict())
    assert prepared_for(layer) is not first
    ref = x.double() @ other_q.dequantize().double().T
    y = forward(layer, x)
    assert float((y.double() - ref).abs().max()) <= TOL * float(ref.abs().max())


def test_no_compiler_warns_once_and_runs_dense(monkeypatch, tmp_path, capsys) -> None:
    from llm1bit.quant.hf.kernel import KernelRefused, forward

    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setenv("LLM1BIT_CACHE_DIR", str(tmp_path))
    build.load.cache_clear()
    try:
        layer, _ = quant_linear("lat")
        monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
        assert forward(layer, torch.randn(1, 64)) is None
        assert forward(layer, torch.randn(1, 64)) is None
        err = capsys.readouterr().err
        assert err.count("warning:") == 1 and "no C compiler" in err and "dense path" in err
        y = layer(torch.randn(2, 64))  # QuantLinear itself: the dense path, no error
        assert y.shape == (2, 172)
        monkeypatch.setenv("LLM1BIT_KERNEL", "lut")
        with pytest.raises(KernelRefused, match="no C compiler"):
            forward(layer, torch.randn(1, 64))
    finally:
        build.load.cache_clear()


def test_builds_from_scratch_into_the_cache(tmp_path, monkeypatch) -> None:
    """A fresh clone (empty cache): compiled at first use under $LLM1BIT_CACHE_DIR/kernels/<hash>/."""
    monkeypatch.setenv("LLM1BIT_CACHE_DIR", str(tmp_path))
    cc = native.compiler()
    target = native.build_dir(build.SOURCE, cc) / "liblut.so"
    assert target.parent.parent == Path(tmp_path) / "kernels" and not target.exists()
    native.compile_library(cc, build.SOURCE, target)
    assert target.exists() and list(target.parent.iterdir()) == [target]


# ---------------------------------------------------------------- end to end


def test_perplexity_kernel_equals_dense(tmp_path, monkeypatch, one_thread) -> None:
    """A quantized stories260K folder (lat and bcq layers): perplexity through the kernel agrees with the dense
    rebuild to 1e-3 relative."""
    from llm1bit.atomic import atomic_dir
    from llm1bit.quant.calib import sample_windows, tokenize_file
    from llm1bit.quant.eval.perplexity import perplexity
    from llm1bit.quant.hf.checkpoint import load_quantized, save_quantized
    from llm1bit.quant.hf.loading import load_model
    from llm1bit.quant.numerics.methods import QuantSpec
    from llm1bit.quant.quantize import quantize_model

    data = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    model, tokenizer = load_model(data / "models" / "stories260K")
    ids = tokenize_file(data / "tinystories" / "valid-head.txt", tokenizer)
    calib = sample_windows(ids[: ids.numel() // 2], nsamples=2, seqlen=64, seed=0)
    results = {}
    for spec in (
        QuantSpec(method="shiftaddllm", mode="lat", wbits=3, bcq_rounds=3),
        QuantSpec(method="shiftaddllm", mode="acc", wbits=3, bcq_rounds=3),
    ):
        model, tokenizer = load_model(data / "models" / "stories260K")
        quantize_model(model, spec, calib)
        out = tmp_path / spec.mode
        with atomic_dir(out) as tmp:
            save_quantized(model, tokenizer, tmp, spec.to_dict(), extra={"calibration": None})
        reloaded = load_quantized(out)
        evals = ids[ids.numel() // 2 :]
        for kernel in ("dense", "lut"):
            monkeypatch.setenv("LLM1BIT_KERNEL", kernel)
            results[spec.mode, kernel] = perplexity(reloaded, evals, seqlen=128, max_windows=4).perplexity
        dense, lut = results[spec.mode, "dense"], results[spec.mode, "lut"]
        assert abs(lut - dense) <= 1e-3 * dense, (spec.mode, dense, lut)


# ---------------------------------------------------------------- codes held once, large batches


@pytest.mark.parametrize(("mode", "n", "k", "q", "groupsize"), [("lat", 173, 77, 3, 128), ("bcq", 37, 45, 2, -1),
                                                                ("acc", 64, 172, 4, 128), ("lat", 1, 1, 1, -1)])  # fmt: skip
def test_packed_codes_give_the_packed_tensor_back(mode: str, n: int, k: int, q: int, groupsize: int) -> None:
    from llm1bit.quant.hf.kernel import packed_codes

    tensors, meta = pack(random_weight(mode, n, k, q, groupsize), q)
    assert np.array_equal(packed_codes(prepare(tensors, meta)), tensors["codes"].numpy())


def test_a_served_layer_holds_its_codes_once(monkeypatch) -> None:
    """The kernel's layout keeps the codes; the buffer is released and rebuilt bit for bit for state_dict,
    `quantized`, the dense path and a reload; loading new codes replaces the layout."""
    from llm1bit.quant.hf.kernel import forward, prepared_for

    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    layer, quantized = quant_linear("lat", bias=False)
    codes = layer.codes.clone()
    x = torch.randn(2, 64)
    ref = x.double() @ quantized.dequantize().double().T
    y = forward(layer, x)
    assert layer.codes_released and layer._buffers["codes"] is None
    assert "codes" not in dict(layer.named_buffers())
    assert torch.equal(layer.state_dict()["codes"], codes)
    assert torch.equal(layer.packed_tensors()["codes"], codes)
    assert torch.equal(layer.quantized.codes.codes, quantized.codes.codes)
    monkeypatch.setenv("LLM1BIT_KERNEL", "dense")
    assert torch.allclose(layer(x).double(), ref, atol=1e-5 * float(ref.abs().max()))
    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    first = prepared_for(layer)
    layer.to(torch.bfloat16)  # a dtype cast on the CPU keeps the codes with the layout
    assert layer.codes_released and prepared_for(layer) is first
    layer.to(torch.float32)
    from llm1bit.quant.hf.linear import QuantLinear

    other_q = random_weight("lat", 172, 64, 3, 128, seed=1)
    other = QuantLinear(other_q, None)
    assert not torch.equal(other.codes, codes)
    layer.load_state_dict(other.state_dict())
    assert not layer.codes_released and torch.equal(layer.codes, other.codes)
    ref = x.double() @ other_q.dequantize().double().T
    y = forward(layer, x)
    assert float((y.double() - ref).abs().max()) <= TOL * float(ref.abs().max())
    assert layer.codes_released


@pytest.mark.parametrize("mode", ["lat", "bcq"])
def test_dense_weight_equals_dequantize(mode: str) -> None:
    from llm1bit.quant.hf.kernel import dense_weight

    weight = random_weight(mode, 173, 77, 3, 128)
    ref = weight.dequantize().double()
    w = dense_weight(prepare(*pack(weight, 3)), torch.float32, threads=2)
    assert w.shape == (173, 77)
    assert float((w.double() - ref).abs().max()) <= TOL * float(ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_rows_take_a_dense_matmul_and_stay_right(monkeypatch, dtype) -> None:
    """auto: more than 256 rows (64 in bf16) go through one matmul on W rebuilt from the layout; lut keeps the
    kernel; both agree with the float64 reference (bf16: to bf16 rounding)."""
    from llm1bit.quant.hf.kernel import gemv

    layer, quantized = quant_linear("lat")
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(3))
    ref = x.double() @ quantized.dequantize().double().T + layer.bias.double()
    calls = []
    real = gemv.dense_weight
    monkeypatch.setattr(gemv, "dense_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    tol = TOL if dtype == torch.float32 else 2e-2
    for mode, dense_calls in (("auto", 1), ("lut", 0)):
        calls.clear()
        monkeypatch.setenv("LLM1BIT_KERNEL", mode)
        y = gemv.forward(layer, x.to(dtype))
        assert len(calls) == dense_calls and y.dtype == dtype
        assert float((y.double() - ref).abs().max()) <= tol * float(ref.abs().max())
    calls.clear()
    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    gemv.forward(layer, x[:64].to(dtype))
    assert not calls  # up to 64 rows: the kernel, in either dtype


# ---------------------------------------------------------------- scales held once per value (mode 0)


def lat_packed(n: int, k: int, q: int, seed: int, distinct: int = 40) -> tuple[dict, dict]:
    """A packed lat layer whose scale terms take `distinct` values, as real ones take a few hundred (random
    terms take thousands, and the layout then keeps fp32 scales)."""
    tensors, meta = pack(random_weight("lat", n, k, q, 128, seed=seed), q)
    terms = tensors["scale_terms"]
    gen = torch.Generator().manual_seed(seed)
    pool = terms.reshape(-1, terms.shape[-1])[torch.randperm(terms[..., 0].numel(), generator=gen)[:distinct]]
    pick = torch.randint(0, len(pool), terms.shape[:-1], generator=gen)
    tensors["scale_terms"] = pool[pick].contiguous()
    return tensors, meta


def test_lat_scales_indexed_or_fp32_give_the_same_bits(monkeypatch) -> None:
    """Lat layouts hold each distinct scale once (uint16 index); past MAX_DISTINCT_SCALES values, fp32 per
    entry. Both feed the kernel (both instruction sets) and the dense rebuild the same fp32 scales."""
    from llm1bit.quant.hf.kernel import dense_weight
    from llm1bit.quant.hf.kernel import layout as layout_mod

    tensors, meta = lat_packed(333, 300, 3, seed=3)
    indexed = prepare(tensors, meta)
    assert indexed.alpha_index is not None and indexed.alpha_index.dtype == np.uint16
    monkeypatch.setattr(layout_mod, "MAX_DISTINCT_SCALES", 4)
    plain = prepare(tensors, meta)
    assert plain.alpha_index is None and plain.alpha.dtype == np.float32
    assert indexed.nbytes < plain.nbytes
    assert np.array_equal(indexed.alpha[indexed.alpha_index], plain.alpha)
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    for path in PATHS:
        assert torch.equal(lut_linear(indexed, x, isa=path), lut_linear(plain, x, isa=path))
    assert torch.equal(dense_weight(indexed, torch.float32), dense_weight(plain, torch.float32))


# ---------------------------------------------------------------- bf16 GEMV (unquantized linears)

BF16_PATHS = [
    p for p, isa in (("avx2", 1), ("avx512", 2), ("avx512bf16", 3)) if LIB is not None and isa <= LIB.bf16_isa
]


@pytest.mark.parametrize("path", BF16_PATHS)
@pytest.mark.parametrize("n,k", [(1, 1), (37, 45), (129, 33), (5, 100), (576, 1536), (1000, 576)])
def test_bf16_gemv_against_float64(path: str, n: int, k: int) -> None:
    """bf16 inputs (exact products in fp32), fp32 sums: max|y - y_ref| <= 1e-5 max|y_ref| against float64."""
    from llm1bit.quant.hf.kernel.bf16 import gemv_bf16

    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    x = torch.randn(1, k, generator=gen).to(torch.bfloat16)
    ref = w.double() @ x.double().reshape(k)
    for threads in (1, 2):
        y = gemv_bf16(x, w, threads=threads, isa=path)
        assert y.dtype == torch.float32 and y.shape == (n,)
        assert float((y.double() - ref).abs().max()) <= TOL * float(ref.abs().max())
    strided = torch.randn(n, k + 7, generator=gen).to(torch.bfloat16)[:, :k]  # a row stride other than k
    ref = strided.double() @ x.double().reshape(k)
    y = gemv_bf16(x, strided, isa=path)
    assert float((y.double() - ref).abs().max()) <= TOL * float(ref.abs().max())


def test_gemv_linear_takes_the_c_path_for_decode_calls_only(monkeypatch) -> None:
    """A GemvLinear (what the loaders make of a quantized model's unquantized linears) runs the C GEMV for one
    bf16 row under auto / lut, F.linear otherwise; the output is the fp32 result (+ bias) rounded once."""
    from llm1bit.quant.hf.kernel import bf16 as bf16_mod

    monkeypatch.setattr(bf16_mod, "MIN_WEIGHTS", 1)
    model = torch.nn.Sequential(
        torch.nn.Linear(300, 517), torch.nn.ReLU(), torch.nn.Linear(517, 64, bias=False)
    )
    assert bf16_mod.attach(model) == 2 and isinstance(model[0], bf16_mod.GemvLinear)
    model.to(torch.bfloat16)
    lin = model[0]
    calls = []
    real = bf16_mod.gemv_bf16
    monkeypatch.setattr(bf16_mod, "gemv_bf16", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(1, 1, 300).to(torch.bfloat16)
    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    with torch.inference_mode():
        y = lin(x)
    assert calls and y.dtype == torch.bfloat16 and y.shape == (1, 1, 517)
    want = (real(x, lin.weight) + lin.bias.float()).to(torch.bfloat16).reshape(1, 1, 517)
    assert torch.equal(y, want)
    ref = x.double().reshape(300) @ lin.weight.detach().double().T + lin.bias.detach().double()
    # one bf16 rounding of the output
    assert float((y.double().reshape(517) - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
    calls.clear()
    with torch.inference_mode():
        lin(torch.randn(2, 300).to(torch.bfloat16))  # two rows: torch
    lin(x)  # gradients wanted (the weight requires them): torch
    monkeypatch.setenv("LLM1BIT_KERNEL", "dense")
    with torch.inference_mode():
        lin(x)
    assert not calls
    import pickle

    again = pickle.loads(pickle.dumps(model))
    assert isinstance(again[0], bf16_mod.GemvLinear)


def test_gemv_linear_is_one_op_under_torch_compile(monkeypatch) -> None:
    """Compiled (as the bench's decode step is), a decode-shaped call is the `llm1bit::bf16_linear` op: the
    same bits as the eager call."""
    from llm1bit.quant.hf.kernel import bf16 as bf16_mod

    monkeypatch.setattr(bf16_mod, "MIN_WEIGHTS", 1)
    lin = torch.nn.Linear(96, 333).to(torch.bfloat16)
    bf16_mod.attach(torch.nn.ModuleList([lin]))
    x = torch.randn(1, 1, 96).to(torch.bfloat16)
    torch._dynamo.reset()
    with torch.inference_mode():
        eager = lin(x)
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        compiled = torch.compile(lin, backend=backend, fullgraph=True)(x)
    assert torch.equal(compiled, eager)
    assert any("llm1bit.bf16_linear" in str(node.target) for gm in graphs for node in gm.graph.nodes)


@pytest.mark.parametrize(("mode", "n", "k", "q"), [("lat", 333, 300, 3), ("lat", 173, 1000, 2)])
def test_packed_scales_give_the_stored_scales_back(mode: str, n: int, k: int, q: int) -> None:
    from llm1bit.quant.hf.kernel.layout import packed_scales

    tensors, meta = lat_packed(n, k, q, seed=n)
    prepared = prepare(tensors, meta)
    assert prepared.scales_stored is not None and prepared.scales_stored.name == "scale_terms"
    assert np.array_equal(packed_scales(prepared), tensors["scale_terms"].numpy())
    # float32 scales (format "binary"), -0.0 among them: given back bit for bit
    scales = torch.rand(40) * 0.1
    scales = scales[torch.randint(0, 40, (-(-k // 8), -(-n // 16), q))]
    scales[0, 0, 0] = -0.0
    tensors = {"codes": tensors["codes"], "scales": scales}
    meta = {**meta, "format": "binary", "col_block": 8, "row_block": 16}
    meta.pop("apot_terms", None)
    prepared = prepare(tensors, meta)
    back = packed_scales(prepared)
    assert back.dtype == np.float32 and np.array_equal(back.view(np.uint32), scales.numpy().view(np.uint32))


def test_a_served_lat_layer_holds_its_scales_once(monkeypatch) -> None:
    """A served lat layer releases its stored scale terms too (the layout's index gives them back): state_dict,
    `quantized` and a move give the same bits."""
    from llm1bit.quant.hf.kernel import forward
    from llm1bit.quant.hf.linear import QuantLinear
    from llm1bit.quant.hf.packing import unpack

    monkeypatch.setenv("LLM1BIT_KERNEL", "auto")
    tensors, meta = lat_packed(333, 300, 3, seed=4)
    quantized = unpack(tensors, meta)
    layer = QuantLinear(None, None, packed=({key: t.clone() for key, t in tensors.items()}, meta))
    terms = layer.scale_terms.clone()
    x = torch.randn(2, 300)
    y = forward(layer, x)
    assert layer._buffers["scale_terms"] is None and "scale_terms" not in dict(layer.named_buffers())
    assert torch.equal(layer.state_dict()["scale_terms"], terms)
    assert torch.equal(layer.packed_tensors()["scale_terms"], terms)
    assert torch.equal(layer.quantized.codes.scales, quantized.codes.scales)
    assert torch.equal(forward(layer, x), y)
    layer.restore_codes()
    assert torch.equal(layer.scale_terms, terms) and not layer.codes_released


@pytest.mark.parametrize("mode", ["lat", "bcq", "acc"])
def test_bf16_activations_give_the_fp32_path_rounded_once(mode: str) -> None:
    """bf16 x: converted in C (lat / bcq) or by torch (acc), the same bits as fp32 x, the fp32 result plus
    the bias rounded once to bf16."""
    tensors, meta = pack(random_weight(mode, 173, 77, 3, 128, seed=2), 3)
    prepared = prepare(tensors, meta)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 77, generator=gen).to(torch.bfloat16)
    bias = torch.randn(173, generator=gen)
    for path in PATHS:
        for b in (None, bias):
            y = lut_linear(prepared, x, b, isa=path)
            ref = lut_linear(prepared, x.float(), isa=path)
            if b is not None:
                ref = ref + b
            assert y.dtype == torch.bfloat16 and torch.equal(y, ref.to(torch.bfloat16))


# ---------------------------------------------------------------- several layers in one call (lean decode)


def test_fused_layers_give_each_layers_bits(monkeypatch) -> None:
    """q/k/v-like lat layers of odd widths (one without a bias) through one `FusedLayers` call, on every
    instruction set and 1-16 tokens: each output has the bits of that layer's own bf16 call; `bind` too."""
    from llm1bit.quant.hf.kernel.gemv import FusedLayers

    sizes, k = (37, 173, 64), 300
    prepared, biases = [], []
    for i, n in enumerate(sizes):
        tensors, meta = pack(random_weight("lat", n, k, 3, 128, seed=10 + i), 3)
        prepared.append(prepare(tensors, meta))
        biases.append(None if i == 1 else torch.randn(n, generator=torch.Generator().manual_seed(i)))
    gen = torch.Generator().manual_seed(0)
    for path in PATHS:
        monkeypatch.setenv("LLM1BIT_KERNEL_ISA", path)
        fused = FusedLayers(prepared, biases)
        for m in (1, 2, 5, 16):
            x = torch.randn(1, m, k, generator=gen).to(torch.bfloat16)
            y = fused(x, threads=2)
            assert y.shape == (1, m, sum(sizes)) and y.dtype == torch.bfloat16
            ref = torch.cat(
                [lut_linear(p, x, b, isa=path) for p, b in zip(prepared, biases, strict=True)], -1
            )
            assert torch.equal(y, ref), (path, m)
        x = torch.randn(k, generator=gen).to(torch.bfloat16)
        out = torch.empty(sum(sizes), dtype=torch.bfloat16)
        assert fused.bind(x, out, threads=2)() == 0
        assert torch.equal(out, fused(x[None], threads=1)[0])


def test_fusable_refuses_what_one_call_cannot_take() -> None:
    from llm1bit.quant.hf.kernel.gemv import FusedLayers, fusable

    lat = prepare(*pack(random_weight("lat", 16, 64, 2, 128), 2))
    other_k = prepare(*pack(random_weight("lat", 16, 72, 2, 128), 2))
    assert fusable([lat, lat]) is None
    assert "different widths" in fusable([lat, other_k])
    for mode in ("acc", "bcq"):
        assert "only lat layouts" in fusable([lat, prepare(*pack(random_weight(mode, 16, 64, 2, 128), 2))])
    assert "1 to 8" in fusable([lat] * 9)
    with pytest.raises(ValueError, match="different widths"):
        FusedLayers([lat, other_k], [None, None])
    fused = FusedLayers([lat], [None])
    with pytest.raises(ValueError, match="1-16 bf16 rows of 64"):
        fused(torch.zeros(17, 64, dtype=torch.bfloat16))
