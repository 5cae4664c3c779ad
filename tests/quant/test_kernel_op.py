"""`llm1bit::quant_linear` (llm1bit/quant/hf/kernel/op.py): a QuantLinear compiled by torch.compile as one
opaque op, with no graph break, computes what the eager layer computes; copies get their own handle; the op's
timer adds up. The whole stories260K decode step compiled against eager is the slow test at the end."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from llm1bit.quant.eval import speed
from llm1bit.quant.hf.kernel import build, op
from llm1bit.quant.hf.linear import QuantLinear

needs_kernel = pytest.mark.skipif(build.load() is None, reason="the LUT kernel is not available here")


def layer(n: int = 40, k: int = 72, seed: int = 0, bias: bool = True) -> QuantLinear:
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 100)) if bias else None
    return QuantLinear(None, b, packed=speed.packed_layer(n, k, 3, "lat", 128, seed))


class Block(nn.Module):
    """Norm, a quantized layer, an activation, another quantized layer: ops around the opaque ones to fuse."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = layer(40, 72, 0), layer(72, 40, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.down(torch.nn.functional.silu(self.up(x))) + 1.0


@needs_kernel
def test_compiled_block_equals_eager_with_no_graph_break() -> None:
    import torch._dynamo

    block = Block()
    x = torch.randn(1, 1, 72, generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    try:
        with torch.inference_mode():
            eager = block(x)
            explained = torch._dynamo.explain(block)(x)
            compiled = torch.compile(block, backend="aot_eager", fullgraph=True, dynamic=False)(x)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert ops.count("llm1bit.quant_linear") == 2, ops
    assert eager.shape == compiled.shape == (1, 1, 72)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6 * float(eager.abs().max()))
    assert block.up.codes_released  # the op ran the layer's own eager forward: the kernel served it


@needs_kernel
def test_the_op_runs_the_registered_layer_and_copies_get_their_own() -> None:
    a = layer(seed=0)
    pickled = pickle.loads(pickle.dumps(a))  # before the kernel serves `a` (a served layer does not pickle)
    x = torch.randn(2, 72, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.equal(op.quant_linear(x, a.op_handle, a.out_features), a(x))
        for twin in (copy.deepcopy(a), pickled):
            assert twin.op_handle != a.op_handle
            with torch.no_grad():
                twin.bias += 1.0  # a different layer now: the op must call it, not `a`
            y = op.quant_linear(x, twin.op_handle, twin.out_features)
            assert torch.equal(y, twin(x)) and torch.allclose(y, a(x) + 1.0, atol=1e-5)
        with op.timing() as spent:
            op.quant_linear(x, a.op_handle, a.out_features)
            assert spent[0] > 0
            with pytest.raises(RuntimeError, match="do not nest"):
                with op.timing():
                    pass
    handle = a.op_handle
    del a
    with pytest.raises(RuntimeError, match=f"no live layer has handle {handle}"):
        op.quant_linear(x, handle, 40)
