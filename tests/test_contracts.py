"""The operator contracts of docs/design.md section 3: shapes, dims, masks, special values,
dtypes, devices and errors."""

import math

import pytest
import torch
from conftest import case_params

import regattn


def apply(name, params, scores, **kwargs):
    return regattn.get_mapping(name, **params)(scores, **kwargs)


def assert_distribution(y, dim=-1):
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(dim), torch.ones_like(y.sum(dim)))


@case_params()
@pytest.mark.parametrize("shape", [(7,), (1, 5), (3, 1), (2, 3, 4), (4, 1, 6)])
def test_any_shape_and_dim(name, params, shape):
    x = torch.randn(shape, dtype=torch.float64)
    for dim in range(-len(shape), len(shape)):
        y = apply(name, params, x, dim=dim)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert_distribution(y, dim)
        # Same as moving the dim last and back.
        expected = apply(name, params, x.movedim(dim, -1).contiguous()).movedim(-1, dim)
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


@case_params()
def test_non_contiguous_input(name, params):
    x = torch.randn(6, 8, dtype=torch.float64)
    strided = x.t()[::2]  # 4 x 6, neither contiguous nor dense
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        apply(name, params, strided), apply(name, params, strided.contiguous())
    )


@case_params()
def test_zero_rows_and_zero_width(name, params):
    for shape, dim in [((0, 5), -1), ((3, 0, 4), -1), ((3, 0), 0)]:
        x = torch.randn(shape, requires_grad=True)
        y = apply(name, params, x, dim=dim)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


@case_params()
def test_single_position_gets_everything(name, params):
    x = torch.randn(4, 1, dtype=torch.float64)
    torch.testing.assert_close(apply(name, params, x), torch.ones_like(x))


@case_params()
def test_all_equal_row_is_uniform(name, params):
    x = torch.full((2, 5), 3.0, dtype=torch.float64)
    torch.testing.assert_close(apply(name, params, x), torch.full_like(x, 0.2))


@case_params()
def test_mask_zeroes_and_does_not_influence(name, params):
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 9) > 0.4
    mask[:, 0] = True
    y = apply(name, params, x, mask=mask)
    assert (y[~mask] == 0).all()
    assert_distribution(y)
    # Masked positions are removed: the kept ones match the map of the compacted row.
    for row in range(3):
        kept = x[row][mask[row]].detach()
        torch.testing.assert_close(y[row][mask[row]], apply(name, params, kept))
    # Changing masked scores changes nothing, and they get zero gradient.
    noisy = x.detach() + 100 * torch.randn_like(x) * ~mask
    torch.testing.assert_close(apply(name, params, noisy, mask=mask), y.detach())
    (y * torch.randn_like(y)).sum().backward()
    assert (x.grad[~mask] == 0).all()


@case_params()
def test_mask_broadcasts(name, params):
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    key_mask = torch.tensor([[True, True, False, True, False]] * 2).unsqueeze(1)  # 2 x 1 x 5
    y = apply(name, params, x, mask=key_mask)
    torch.testing.assert_close(y, apply(name, params, x, mask=key_mask.expand(2, 3, 5)))


@case_params()
def test_minus_inf_counts_as_masked(name, params):
    x = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.5
    mask[:, 2] = True
    torch.testing.assert_close(
        apply(name, params, x.masked_fill(~mask, -math.inf)), apply(name, params, x, mask=mask)
    )


@case_params()
def test_fully_masked_row_is_zero_with_zero_gradient(name, params):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    y = apply(name, params, x, mask=mask)
    assert (y[1] == 0).all() and not y.isnan().any()
    (y * torch.randn_like(y)).sum().backward()
    assert (x.grad[1] == 0).all() and not x.grad.isnan().any()
    all_minus_inf = torch.full((2, 4), -math.inf, requires_grad=True)
    y = apply(name, params, all_minus_inf)
    assert (y == 0).all()
    y.sum().backward()
    assert (all_minus_inf.grad == 0).all()


@case_params()
def test_plus_inf_and_huge_scores_do_not_create_nan(name, params):
    x = torch.tensor(
        [[1.0, math.inf, 0.0, math.inf], [1e8, 0.0, -1e8, 3.0], [1e8, 1e8, 1e8, 1e8]],
        requires_grad=True,
    )
    y = apply(name, params, x)
    assert not y.isnan().any()
    torch.testing.assert_close(y[0], torch.tensor([0.0, 0.5, 0.0, 0.5]))
    torch.testing.assert_close(y[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(y[2], torch.full((4,), 0.25))
    y.sum().backward()
    assert not x.grad.isnan().any()


@case_params()
def test_nan_stays_in_its_row(name, params):
    x = torch.randn(3, 5, requires_grad=True)
    with torch.no_grad():
        x[1, 2] = math.nan
    y = apply(name, params, x)
    assert y[1].isnan().all()
    assert not y[[0, 2]].isnan().any()
    y.sum().backward()
    assert not x.grad[[0, 2]].isnan().any()


@case_params()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(name, params, dtype):
    x = torch.randn(5, 12, dtype=torch.float64)
    reference = apply(name, params, x)
    x_low = x.to(dtype).requires_grad_()
    y = apply(name, params, x_low)
    assert y.dtype == dtype
    tolerance = {torch.float16: 3e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(y.double(), reference, rtol=0, atol=tolerance)
    y.float().pow(2).sum().backward()
    assert x_low.grad.dtype == dtype and not x_low.grad.isnan().any()


@case_params()
def test_module_matches_functional(name, params):
    module = regattn.Mapping(name, dim=0, **params)
    x = torch.randn(5, 3)
    mask = torch.rand(5, 3) > 0.3
    torch.testing.assert_close(module(x, mask=mask), apply(name, params, x, dim=0, mask=mask))
    assert name in repr(module)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@case_params()
def test_cuda_matches_cpu(name, params):
    x = torch.randn(8, 33, dtype=torch.float64)
    mask = torch.rand(8, 33) > 0.2
    x_gpu = x.cuda().requires_grad_()
    y_gpu = apply(name, params, x_gpu, mask=mask.cuda())
    assert y_gpu.device == x_gpu.device
    torch.testing.assert_close(y_gpu.cpu(), apply(name, params, x, mask=mask))
    y_gpu.sum().backward()
    assert x_gpu.grad.device == x_gpu.device


def test_readme_example():
    y = regattn.fusedmax(torch.tensor([1.0, 2.1, 1.9]), lam=0.1)
    assert y.tolist() == [0.0, 0.5, 0.5]


def test_double_backward_raises_clearly():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = regattn.fusedmax(x)
    (grad,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        grad.sum().backward()


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("sparsemax", {"gamma": 0}, r"gamma must be a finite number > 0, got 0"),
        ("softmax", {"gamma": -1.5}, r"gamma must be a finite number > 0, got -1.5"),
        ("fusedmax", {"gamma": math.inf}, r"gamma must be a finite number > 0, got inf"),
        ("fusedmax", {"lam": -0.1}, r"lam must be a finite number >= 0, got -0.1"),
        ("oscarmax", {"lam": "big"}, r"lam must be a finite number >= 0, got 'big'"),
        ("sq_pnorm_max", {"p": 1.0}, r"p must be a number in \(1, 2\], got 1.0"),
        ("sq_pnorm_max", {"p": 2.5}, r"p must be a number in \(1, 2\], got 2.5"),
        ("fusedmax", {"p": 1.5}, r"mapping 'fusedmax' does not take p; its parameters are"),
    ],
)
def test_bad_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        regattn.get_mapping(name, **params)
    function = regattn.MAPPINGS[name]
    if "does not take" not in message:
        with pytest.raises(ValueError, match=message):
            function(torch.randn(2, 3), **params)


def test_unknown_mapping_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown mapping 'fusemax'; valid mappings are: "):
        regattn.get_mapping("fusemax")
    with pytest.raises(ValueError, match="entmax15, fusedmax, oscarmax, softmax"):
        regattn.Mapping("nope")


@pytest.mark.parametrize("name", list(regattn.MAPPINGS))
def test_bad_inputs(name):
    f = regattn.MAPPINGS[name]
    with pytest.raises(TypeError, match="floating-point tensor .* got torch.int64"):
        f(torch.arange(6).reshape(2, 3))
    with pytest.raises(TypeError, match="scores must be a torch.Tensor, got list"):
        f([1.0, 2.0])
    with pytest.raises(ValueError, match="at least one dimension"):
        f(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"dim must be an integer in \[-2, 1\].* got 2"):
        f(torch.randn(2, 3), dim=2)
    with pytest.raises(ValueError, match=r"mask of shape \(4,\) does not broadcast .* \(2, 3\)"):
        f(torch.randn(2, 3), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 2, 3\) does not broadcast"):
        f(torch.randn(2, 3), mask=torch.ones(5, 2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor .* got torch.int64"):
        f(torch.randn(2, 3), mask=torch.ones(2, 3, dtype=torch.int64))
