"""Exact gradients: torch.autograd.gradcheck in float64, and grad max_Omega = Pi_Omega."""

import pytest
import torch
from conftest import case_params

import regattn

# A regime per extreme: no fusion (lam = 0 is sparsemax), moderate, and total fusion.
EXTRA_REGIMES = [
    ("fusedmax", {"lam": 0.0}),
    ("fusedmax", {"lam": 10.0}),
    ("oscarmax", {"lam": 0.0}),
    ("oscarmax", {"lam": 5.0}),
    ("sq_pnorm_max", {"p": 1.9}),
    ("softmax", {"gamma": 0.5}),
    ("sparsemax", {"gamma": 2.0}),
    ("fusedmax", {"lam": 0.3, "gamma": 0.5}),
    ("oscarmax", {"lam": 0.05, "gamma": 3.0}),
    ("sq_pnorm_max", {"p": 1.5, "gamma": 0.7}),
    ("entmax15", {"gamma": 2.0}),
]


def check(name, params, x, dim, mask):
    f = regattn.get_mapping(name, **params)
    assert torch.autograd.gradcheck(lambda t: f(t, dim=dim, mask=mask), (x,), atol=1e-6)


@case_params()
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gradcheck_with_mask(name, params, dim):
    x = 2 * torch.randn(5, 4, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 4, 7) > 0.3
    mask[1, 2] = False  # a fully masked row along the last dim
    check(name, params, x, dim, mask)


@case_params()
def test_gradcheck_without_mask(name, params):
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    check(name, params, x, -1, None)


@pytest.mark.parametrize(("name", "params"), EXTRA_REGIMES, ids=str)
def test_gradcheck_regimes(name, params):
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    check(name, params, x, -1, torch.rand(4, 8) > 0.2)


@case_params()
def test_max_omega_gradient_is_the_mapping(name, params):
    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 3, 6) > 0.3
    value = regattn.max_omega(x, name, dim=1, mask=mask, **params)
    assert value.shape == (4, 6)
    (grad,) = torch.autograd.grad(value.sum(), x)
    expected = regattn.get_mapping(name, **params)(x, dim=1, mask=mask)
    torch.testing.assert_close(grad, expected)
    # The gradient is exact: check it against finite differences too.
    assert torch.autograd.gradcheck(
        lambda t: regattn.max_omega(t, name, dim=1, mask=mask, **params), (x,)
    )


@case_params()
def test_max_omega_of_empty_row_is_zero(name, params):
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True], [False] * 4])
    value = regattn.max_omega(x, name, mask=mask, **params)
    assert value[1] == 0 and not value.isnan().any()
    value.sum().backward()
    assert (x.grad[1] == 0).all()
