"""Derivatives in every mode PyTorch offers: torch.func (grad, vjp, jvp, jacrev,
jacfwd, vmap over grad), eager forward-mode AD, batched gradients
(``is_grads_batched``, vectorised Jacobians), each checked against the Jacobian that
plain backward builds one row at a time; and second derivatives, which raise in
every mode instead of coming out wrong."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import regattn

NAMES = list(regattn.MAPPINGS)
SPARSE = [n for n in NAMES if n != "softmax"]
LAM_MAPS = ["fusedmax", "oscarmax"]


def scores_and_mask(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) > 0.3
    mask[:, 0] = True
    mask[3] = False  # a fully masked row: zero output, zero derivatives
    return x, mask


def call_variants(name):
    """Keyword arguments that take each of the maps' code paths."""
    variants = [
        {},
        {"gamma": 3.0},
        {"gamma": torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64)},
    ]
    if name in LAM_MAPS:
        variants.append({"lam": torch.tensor([0.1, 0.4, 0.0, 0.3], dtype=torch.float64)})
    return variants


def reference_jacobian(f, x):
    """d f(x) / d x by plain backward, one output at a time (no batching, no
    forward mode): the independent reference."""
    return torch.autograd.functional.jacobian(f, x)


@pytest.mark.parametrize("name", NAMES)
def test_jacobians_in_every_mode_agree_with_plain_backward(name):
    x, mask = scores_and_mask()
    for kwargs in call_variants(name):
        for use_mask in (False, True):

            def f(s, kwargs=kwargs, use_mask=use_mask):
                return regattn.MAPPINGS[name](s, -1, mask=mask if use_mask else None, **kwargs)

            expected = reference_jacobian(f, x)
            assert expected.abs().sum() > 0  # a Jacobian worth comparing
            got = {
                "jacrev": torch.func.jacrev(f)(x),
                "jacfwd": torch.func.jacfwd(f)(x),
                "vectorized reverse": torch.autograd.functional.jacobian(f, x, vectorize=True),
                "vectorized forward": torch.autograd.functional.jacobian(
                    f, x, vectorize=True, strategy="forward-mode"
                ),
            }
            for mode, jacobian in got.items():
                torch.testing.assert_close(jacobian, expected, msg=f"{mode} {kwargs} {use_mask}")


@pytest.mark.parametrize("name", NAMES)
def test_vector_products_in_every_mode(name):
    x, mask = scores_and_mask(1)
    vector = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for kwargs in call_variants(name):
        # along dim 0 where the parameters allow (per-row ones are shaped for dim -1)
        per_row = any(isinstance(value, torch.Tensor) for value in kwargs.values())

        def f(s, kwargs=kwargs, dim=-1 if per_row else 0):
            return regattn.MAPPINGS[name](s, dim, mask=mask, **kwargs)

        jacobian = reference_jacobian(f, x)
        jvp = torch.einsum("ijkl,kl->ij", jacobian, vector)
        vjp = torch.einsum("ij,ijkl->kl", vector, jacobian)
        torch.testing.assert_close(torch.func.jvp(f, (x,), (vector,))[1], jvp)
        torch.testing.assert_close(torch.func.vjp(f, x)[1](vector)[0], vjp)
        torch.testing.assert_close(torch.func.grad(lambda s: (f(s) * vector).sum())(x), vjp)
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(f(fwAD.make_dual(x, vector))).tangent
        assert tangent is not None, "the forward-mode tangent was dropped"
        torch.testing.assert_close(tangent, jvp)
        # a batch of cotangents through one backward
        cotangents = torch.stack([vector, -2 * vector])
        leaf = x.clone().requires_grad_()
        (batched,) = torch.autograd.grad(f(leaf), leaf, cotangents, is_grads_batched=True)
        torch.testing.assert_close(batched, torch.stack([vjp, -2 * vjp]))


@pytest.mark.parametrize("name", SPARSE)
def test_per_example_gradients_with_vmap_over_grad(name):
    x, _ = scores_and_mask()
    weights = torch.randn(4, 6, dtype=torch.float64)

    def loss(row, w):
        return (regattn.MAPPINGS[name](row, -1) * w).sum() ** 2

    got = torch.func.vmap(torch.func.grad(loss))(x, weights)
    for i in range(4):
        row = x[i].clone().requires_grad_()
        loss(row, weights[i]).backward()
        torch.testing.assert_close(got[i], row.grad)


@pytest.mark.parametrize("name", LAM_MAPS)
def test_tensor_lam_gradient_under_torch_func(name):
    x, mask = scores_and_mask()
    lam = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    weights = torch.randn(4, 6, dtype=torch.float64)

    def loss(s, lam_):
        return (regattn.MAPPINGS[name](s, -1, lam=lam_, mask=mask) * weights).sum()

    grad_scores, grad_lam = torch.func.grad(loss, argnums=(0, 1))(x, lam)
    leaf_x, leaf_lam = x.clone().requires_grad_(), lam.clone().requires_grad_()
    loss(leaf_x, leaf_lam).backward()
    torch.testing.assert_close(grad_scores, leaf_x.grad)
    torch.testing.assert_close(grad_lam, leaf_lam.grad)
    assert grad_lam[:3].abs().sum() > 0
    # lam's Jacobian by reverse mode; forward mode in lam raises, naming the way out
    jacobian = torch.func.jacrev(lambda lam_: regattn.MAPPINGS[name](x, -1, lam=lam_))(lam)
    assert jacobian.shape == (4, 6, 4)
    with pytest.raises(NotImplementedError, match="tensor lam.*reverse mode"):
        torch.func.jacfwd(lambda lam_: regattn.MAPPINGS[name](x, -1, lam=lam_))(lam)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="tensor lam"):
        regattn.MAPPINGS[name](x, -1, lam=fwAD.make_dual(lam, torch.ones_like(lam)))


@pytest.mark.parametrize("name", SPARSE)
def test_second_derivatives_raise_in_every_mode(name):
    x = torch.randn(6, dtype=torch.float64)

    def loss(s):
        return regattn.MAPPINGS[name](s).pow(3).sum()

    def grad_of_grad():
        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
        # with respect to the input alone: torch's once_differentiable would report
        # it unused here (and autograd.functional a zero Hessian)
        return torch.autograd.grad(grad.sum(), leaf)

    attempts = {
        "grad of grad": grad_of_grad,
        "autograd.functional.hessian": lambda: torch.autograd.functional.hessian(loss, x),
        "forward over reverse": lambda: torch.autograd.functional.hessian(
            loss, x, outer_jacobian_strategy="forward-mode", vectorize=True
        ),
        "torch.func.hessian": lambda: torch.func.hessian(loss)(x),
        "torch.func.grad of grad": lambda: torch.func.grad(
            lambda s: torch.func.grad(loss)(s).sum()
        )(x),
        "jvp of grad": lambda: torch.func.jvp(torch.func.grad(loss), (x,), (x,)),
    }
    for mode, attempt in attempts.items():
        with pytest.raises(NotImplementedError, match="second derivatives"):
            attempt()
            pytest.fail(f"{mode} did not raise")


def test_softmax_second_derivatives_on_every_path():
    """regattn.softmax is plain PyTorch, or a Function in differentiable operations
    (masks, +inf scores): its second derivatives work."""
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, True, False, True, False])
    with_inf = torch.tensor([[1.0, float("inf"), 0.5], [0.1, 0.2, 0.3]], dtype=torch.float64)
    for f, inputs in [
        (lambda s: regattn.softmax(s), x),
        (lambda s: regattn.softmax(s, mask=mask), x),
        (lambda s: regattn.softmax(s.masked_fill(~mask, -float("inf"))), x),
    ]:
        assert torch.autograd.gradgradcheck(f, (inputs,))
    # the +inf path: the saved output is exact, so its Hessian is zero where defined
    leaf = with_inf.clone().requires_grad_()
    (grad,) = torch.autograd.grad(regattn.softmax(leaf).pow(2).sum(), leaf, create_graph=True)
    (hessian_row,) = torch.autograd.grad(grad[1].sum(), leaf)
    assert torch.isfinite(hessian_row[1]).all()
