"""The mappings as PyTorch-native ops: meta and fake tensors, torch.compile with no
graph break, torch.export, torch.func.vmap; eager calls keep the lean path."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import regattn

NAMES = list(regattn.MAPPINGS)


def scores_and_mask():
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    mask = torch.rand(4, 6, 7) > 0.3
    mask[..., 0] = True
    return x, mask


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_and_fake_tensors_give_shape_and_dtype(name, dtype):
    f = regattn.MAPPINGS[name]
    x = torch.empty(3, 5, 9, dtype=dtype, device="meta")
    y = f(x, 1, mask=torch.ones(5, 1, dtype=torch.bool, device="meta"))
    assert y.is_meta and y.shape == x.shape and y.dtype == dtype
    with FakeTensorMode():
        fake = torch.empty(2, 8, dtype=dtype)
        y = f(fake, -1)
        assert y.shape == (2, 8) and y.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_matches_eager_forward_and_backward(name):
    torch._dynamo.reset()
    f = regattn.MAPPINGS[name]
    x, mask = scores_and_mask()

    def loss(scores):
        return (f(scores, 1, mask=mask) ** 2).sum()

    explanation = torch._dynamo.explain(loss)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(loss, fullgraph=True)
    eager_x, compiled_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = loss(eager_x)
    expected.backward()
    got = compiled(compiled_x)
    got.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(compiled_x.grad, eager_x.grad)


def test_export_of_a_model_with_a_mapping():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query = torch.nn.Linear(7, 7, dtype=torch.float64)

        def forward(self, x, mask):
            weights = regattn.fusedmax(self.query(x), mask=mask, lam=0.2)
            return weights @ x.transpose(-1, -2)

    model = Attention()
    x, mask = scores_and_mask()
    exported = torch.export.export(model, (x, mask))
    assert "regattn.mapping_forward" in exported.graph_module.code
    torch.testing.assert_close(exported.module()(x, mask), model(x, mask))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_matches_the_batched_call(name):
    f = regattn.MAPPINGS[name]
    x, mask = scores_and_mask()
    torch.testing.assert_close(torch.func.vmap(lambda s: f(s, -1))(x), f(x, -1))
    # vmapped along dim 1, mapping along (logical) dim 0 = dim 0 of x, with a mask
    vmapped = torch.func.vmap(lambda s, m: f(s, 0, mask=m), in_dims=(1, 1), out_dims=1)
    torch.testing.assert_close(vmapped(x, mask), f(x, 0, mask=mask))
    # an unbatched mask broadcast to every entry
    shared = mask[0, :, :1]  # 6 x 1
    vmapped = torch.func.vmap(lambda s: f(s, -1, mask=shared))
    torch.testing.assert_close(vmapped(x), f(x, -1, mask=shared))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "softmax"])
def test_eager_calls_take_the_lean_autograd_path(name):
    """The registered op costs tens of microseconds per call; eager mode never uses it."""
    x = torch.randn(3, 5, requires_grad=True)
    assert type(regattn.MAPPINGS[name](x).grad_fn).__name__ == "_CompiledMappingBackward"


def test_vmap_over_the_mask_only_and_nan_rows_when_traced():
    scores = torch.randn(6, 7, dtype=torch.float64)
    masks = torch.rand(3, 6, 7) > 0.3
    masks[..., 0] = True
    for name in NAMES:
        f = regattn.MAPPINGS[name]
        vmapped = torch.func.vmap(lambda m, f=f: f(scores, -1, mask=m))(masks)
        torch.testing.assert_close(vmapped, torch.stack([f(scores, -1, mask=m) for m in masks]))
    with_nan = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    traced = torch.compile(lambda s: regattn.softmax(s), fullgraph=True)(with_nan)
    assert traced[0].isnan().all() and torch.isfinite(traced[1]).all()


def test_fake_kernels_give_the_real_strides():
    x = torch.randn(3, 4).t()  # non-contiguous input
    real = regattn.fusedmax(x).stride()
    with FakeTensorMode() as mode:
        assert regattn.fusedmax(mode.from_tensor(x)).stride() == real
