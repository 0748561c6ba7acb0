"""Tensor (learnable) parameters: gamma for every mapping, one value per distribution
(for example per head), with exact gradients; validation elementwise."""

import pytest
import torch

import regattn

NAMES = sorted(regattn.MAPPINGS)


def scores_and_mask(shape=(3, 4, 7), seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=generator, dtype=torch.float64)
    mask = torch.rand(shape, generator=generator) > 0.3
    mask[..., 0] = True
    return scores.requires_grad_(), mask


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("gamma_shape", [(4,), (3, 4), (3, 1), ()])
def test_gamma_tensor_gradcheck(name, gamma_shape):
    scores, mask = scores_and_mask()
    generator = torch.Generator().manual_seed(1)
    gamma = 0.5 + torch.rand(gamma_shape, generator=generator, dtype=torch.float64)
    gamma.requires_grad_()
    mapping = regattn.MAPPINGS[name]
    assert torch.autograd.gradcheck(
        lambda x, g: mapping(x, -1, gamma=g, mask=mask), (scores, gamma)
    )


@pytest.mark.parametrize("name", NAMES)
def test_gamma_tensor_equals_the_number_it_holds(name):
    scores, mask = scores_and_mask()
    mapping = regattn.MAPPINGS[name]
    by_tensor = mapping(scores, 1, gamma=torch.full((3, 7), 0.6, dtype=torch.float64), mask=mask)
    by_number = mapping(scores, 1, gamma=0.6, mask=mask)
    torch.testing.assert_close(by_tensor, by_number, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_per_head_gamma_is_each_heads_own_temperature(name):
    scores, _ = scores_and_mask((2, 3, 5, 6))  # batch x heads x queries x keys
    gamma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1)
    out = regattn.MAPPINGS[name](scores, gamma=gamma)
    for head, value in enumerate(gamma.flatten().tolist()):
        expected = regattn.MAPPINGS[name](scores[:, head], gamma=value)
        torch.testing.assert_close(out[:, head], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_gamma_tensor_keeps_huge_scores_finite_and_half_types(name):
    scores = torch.tensor([[1e300, 5e299, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    out = regattn.MAPPINGS[name](scores, gamma=torch.tensor([1e-3, 2.0], dtype=torch.float64))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(2, dtype=torch.float64))
    half = regattn.MAPPINGS[name](scores.float().bfloat16()[1:], gamma=torch.tensor([0.5]))
    assert half.dtype == torch.bfloat16


def test_gamma_is_learned_per_head():
    """A per-head temperature trained to make head 0 sharper and head 1 flatter."""
    torch.manual_seed(0)
    scores = torch.randn(16, 2, 10)
    log_gamma = torch.zeros(2, requires_grad=True)  # rows are (batch, head)
    optimizer = torch.optim.SGD([log_gamma], lr=0.5)
    target_support = torch.tensor([1.0, 8.0])
    for _ in range(60):
        attn = regattn.entmax15(scores, gamma=log_gamma.exp())
        # Smooth stand-in for the support size: the inverse of the sum of squares.
        support = 1.0 / (attn**2).sum(-1).mean(0)
        loss = ((support - target_support) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gamma = log_gamma.exp().flatten()
    assert gamma[0] < 0.8 < 1.5 < gamma[1], gamma


def test_mapping_module_registers_a_learnable_gamma():
    gamma = torch.nn.Parameter(torch.ones(4))  # one per row of the (2, 4) rows
    module = regattn.Mapping("sparsemax", gamma=gamma)
    assert [name for name, _ in module.named_parameters()] == ["gamma"]
    module(torch.randn(2, 4, 5)).sum().backward()
    assert gamma.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_losses_and_max_omega_differentiate_gamma(name):
    scores, mask = scores_and_mask()
    gamma = torch.tensor([0.7, 1.3, 0.9, 1.1], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(3, 4, dtype=torch.long)  # position 0 always takes part
    assert torch.autograd.gradcheck(
        lambda x, g: regattn.max_omega(x, name, gamma=g, mask=mask), (scores, gamma)
    )
    assert torch.autograd.gradcheck(
        lambda x, g: regattn.fenchel_young_loss(x, target, name, gamma=g, mask=mask),
        (scores, gamma),
    )


@pytest.mark.parametrize(
    "gamma, error, match",
    [
        (
            torch.tensor([1.0, 0.0, 1.0, 1.0]),
            ValueError,
            r"gamma must be finite and > 0 elementwise.*0\.0",
        ),
        (torch.tensor([1.0, -2.0, 1.0, 1.0]), ValueError, r"gamma must be finite and > 0.*-2\.0"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), ValueError, r"gamma must be finite"),
        (  # checked in float64 (numpy has no bfloat16)
            torch.tensor([1.0, -2.0, 1.0, 1.0], dtype=torch.bfloat16),
            ValueError,
            r"gamma must be finite and > 0.*-2\.0",
        ),
        (torch.tensor([1.0, float("inf"), 1.0, 1.0]), ValueError, r"gamma must be finite"),
        (torch.tensor([1, 2, 1, 1]), TypeError, r"gamma must be a floating-point tensor"),
        (torch.ones(5), ValueError, r"gamma of shape \(5,\) does not broadcast to .*\(3, 4\)"),
        (torch.ones(3, 4, 7), ValueError, r"gamma of shape \(3, 4, 7\) does not broadcast"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_gamma_tensors_are_refused_clearly(name, gamma, error, match):
    scores = torch.randn(3, 4, 7)
    with pytest.raises(error, match=match):
        regattn.MAPPINGS[name](scores, gamma=gamma)


# ------------------------------------------------------------------------------ lam

STRUCTURED = {"fusedmax": 0.1, "oscarmax": 0.02}


@pytest.mark.parametrize("name", sorted(STRUCTURED))
@pytest.mark.parametrize("lam_shape", [(4,), (3, 4), (3, 1), ()])
def test_lam_tensor_gradcheck(name, lam_shape):
    scores, mask = scores_and_mask((3, 4, 9))
    generator = torch.Generator().manual_seed(2)
    base = STRUCTURED[name]
    lam = base * (0.5 + torch.rand(lam_shape, generator=generator, dtype=torch.float64))
    lam.requires_grad_()
    mapping = regattn.MAPPINGS[name]
    assert torch.autograd.gradcheck(
        lambda x, lam: mapping(x, -1, lam=lam, mask=mask), (scores, lam)
    )


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_and_gamma_tensors_together_along_another_dim(name):
    scores, mask = scores_and_mask((3, 9, 4))  # the mapped dim in the middle
    lam = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64) * STRUCTURED[name]
    gamma = torch.tensor([0.7, 1.3, 0.9, 1.1], dtype=torch.float64)
    mapping = regattn.MAPPINGS[name]
    assert torch.autograd.gradcheck(
        lambda x, lam, g: mapping(x, 1, lam=lam, gamma=g, mask=mask),
        (scores, lam.requires_grad_(), gamma.requires_grad_()),
    )


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_equals_the_numbers_it_holds(name):
    scores, mask = scores_and_mask((2, 3, 5, 8))
    lam = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64).view(3, 1) * STRUCTURED[name]
    out = regattn.MAPPINGS[name](scores, lam=lam, mask=mask)
    for head, value in enumerate(lam.flatten().tolist()):
        expected = regattn.MAPPINGS[name](scores[:, head], lam=value, mask=mask[:, head])
        torch.testing.assert_close(out[:, head], expected, rtol=0, atol=0)
    zero = regattn.MAPPINGS[name](scores, lam=torch.zeros(()), mask=mask)
    torch.testing.assert_close(zero, regattn.sparsemax(scores, mask=mask), rtol=0, atol=1e-15)


def test_lam_gradient_against_finite_differences_on_many_rows():
    """dy/dlam from the groups' boundary signs (fusedmax) and mean ranks (oscarmax),
    against central differences, on rows with fused groups and masked positions."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(400, 12, generator=generator, dtype=torch.float64) * 2
    mask = torch.rand(400, 12, generator=generator) > 0.2
    mask[:, 0] = True
    weights = torch.randn(400, 12, generator=generator, dtype=torch.float64)
    for name, base in STRUCTURED.items():
        mapping = regattn.MAPPINGS[name]
        lam = torch.full((400,), base, dtype=torch.float64, requires_grad=True)
        (mapping(scores, lam=lam, mask=mask) * weights).sum().backward()
        eps = 1e-7
        up = (mapping(scores, lam=base + eps, mask=mask) * weights).sum(-1)
        down = (mapping(scores, lam=base - eps, mask=mask) * weights).sum(-1)
        torch.testing.assert_close(lam.grad, (up - down) / (2 * eps), rtol=1e-5, atol=1e-6)


def test_lam_is_learned_per_head():
    """A per-head fusion strength trained towards more fusing in head 1 only."""
    torch.manual_seed(0)
    scores = torch.randn(32, 2, 12)
    lam = torch.tensor([0.05, 0.05], requires_grad=True)
    optimizer = torch.optim.SGD([lam], lr=0.02)
    for _ in range(40):
        attn = regattn.fusedmax(scores, lam=lam.clamp(min=0))
        # Total variation of the weights: small when neighbours are fused.
        tv = (attn[..., 1:] - attn[..., :-1]).abs().sum(-1).mean(0)
        loss = tv[1] - tv[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert lam[1] > 0.1 and lam[0] <= 0.05, lam


@pytest.mark.parametrize(
    "lam, error, match",
    [
        (torch.tensor([0.1, -0.1, 0.1, 0.1]), ValueError, r"lam must be finite and >= 0.*-0\.1"),
        (torch.tensor([0.1, float("nan"), 0.1, 0.1]), ValueError, r"lam must be finite"),
        (torch.tensor([0, 1, 0, 1]), TypeError, r"lam must be a floating-point tensor"),
        (torch.ones(5), ValueError, r"lam of shape \(5,\) does not broadcast"),
    ],
)
@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_bad_lam_tensors_are_refused_clearly(name, lam, error, match):
    with pytest.raises(error, match=match):
        regattn.MAPPINGS[name](torch.randn(3, 4, 7), lam=lam)


def lam_case(name, seed=0):
    """Scores (4 x 3 x 7, mapped along dim 1) with a mask, one lam per distribution."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 7, 3, generator=generator, dtype=torch.float64)
    mask = torch.rand(4, 7, 3, generator=generator) > 0.3
    mask[:, 0] = True
    lam = 0.05 + 0.3 * torch.rand(4, 3, generator=generator, dtype=torch.float64)
    return regattn.MAPPINGS[name], scores, mask, lam


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_compiles_without_graph_break_and_matches_eager(name):
    torch._dynamo.reset()
    mapping, scores, mask, lam = lam_case(name)
    weights = torch.randn(4, 7, 3, dtype=torch.float64)

    def loss(x, lam):
        return (mapping(x, 1, lam=lam, mask=mask) * weights).sum()

    explanation = torch._dynamo.explain(loss)(scores, lam)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(loss, fullgraph=True)
    grads = []
    for function in (loss, compiled):
        x, lam_ = scores.clone().requires_grad_(), lam.clone().requires_grad_()
        value = function(x, lam_)
        value.backward()
        grads.append((value, x.grad, lam_.grad))
    (value, x_grad, lam_grad), (got, got_x_grad, got_lam_grad) = grads
    torch.testing.assert_close(got, value)
    torch.testing.assert_close(got_x_grad, x_grad)
    torch.testing.assert_close(got_lam_grad, lam_grad)
    assert lam_grad.abs().sum() > 0  # the rows fuse: lam has a gradient to compare


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_ops_pass_opcheck(name):
    """torch.library's own checks of both ops: schema, fake kernels against the real
    ones, the autograd registration, and that they survive tracing."""
    from regattn import _cpu, _ops

    _, scores, mask, lam = lam_case(name)
    kind = {"fusedmax": _cpu.FUSEDMAX, "oscarmax": _cpu.OSCARMAX}[name]
    lam_rows = lam.requires_grad_()
    torch.library.opcheck(_ops.lam_rows_forward, (scores, lam_rows, 1, mask, kind, 2.0))
    _, y, aux, counts = _ops.lam_rows_forward(scores, lam_rows, 1, mask, kind, 2.0)
    # The backward op has no autograd formula of its own (it is not differentiable).
    state = (y.detach(), aux, counts, torch.randn_like(scores))
    torch.library.opcheck(_ops.lam_rows_backward, (*state, 1, kind, 2.0))


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_in_an_exported_model(name):
    class FusedAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lam = torch.nn.Parameter(torch.tensor([0.1, 0.3], dtype=torch.float64))

        def forward(self, scores, mask):  # scores: batch x heads x queries x keys
            return regattn.MAPPINGS[name](scores, mask=mask, lam=self.lam[:, None])

    model = FusedAttention()
    scores = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    mask = torch.rand(3, 1, 1, 6) > 0.3
    mask[..., 0] = True
    exported = torch.export.export(model, (scores, mask))
    assert "regattn.lam_rows_forward" in exported.graph_module.code
    torch.testing.assert_close(exported.module()(scores, mask), model(scores, mask))


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_under_vmap(name):
    mapping, scores, mask, lam = lam_case(name)
    expected = mapping(scores, 1, lam=lam, mask=mask)
    # vmapped over the batch: each entry maps its 7 x 3 scores along dim 0
    vmapped = torch.func.vmap(lambda x, m, lam_: mapping(x, 0, lam=lam_, mask=m))(scores, mask, lam)
    torch.testing.assert_close(vmapped, expected)
    # a lam shared by every entry
    shared = lam[0]
    vmapped = torch.func.vmap(lambda x: mapping(x, 0, lam=shared))(scores)
    torch.testing.assert_close(vmapped, mapping(scores, 1, lam=shared.expand(4, 3)))


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_on_meta_and_fake_tensors(name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mapping = regattn.MAPPINGS[name]
    x = torch.empty(3, 5, 9, device="meta")
    y = mapping(x, 1, lam=torch.full((3, 9), 0.1, device="meta"))
    assert y.is_meta and y.shape == x.shape
    with FakeTensorMode():
        y = mapping(torch.empty(2, 8), lam=torch.full((2,), 0.1))
        assert y.shape == (2, 8)


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_unusable_lam_under_compile_gives_nan_rows_not_an_error(name):
    """Under tracing the values of lam cannot be checked at the call: a negative or
    non-finite lam makes its row NaN, and the other rows are untouched."""
    torch._dynamo.reset()
    mapping, scores, _, _ = lam_case(name)
    scores = scores[:, :, 0]  # 4 x 7
    lam = torch.tensor([0.1, -0.5, float("nan"), float("inf")], dtype=torch.float64)
    got = torch.compile(lambda x, lam_: mapping(x, lam=lam_), fullgraph=True)(scores, lam)
    assert got[1:].isnan().all()
    torch.testing.assert_close(got[0], mapping(scores[0], lam=0.1))
    # and so are their gradients, for the scores and for lam
    x, lam = scores.clone().requires_grad_(), lam.clone().requires_grad_()
    torch.compile(lambda x, lam_: mapping(x, lam=lam_), fullgraph=True)(x, lam).sum().backward()
    assert x.grad[1:].isnan().all() and lam.grad[1:].isnan().all()
    assert torch.isfinite(x.grad[0]).all() and torch.isfinite(lam.grad[0])


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_lam_tensor_gradients_through_vmap(name):
    mapping, scores, mask, lam = lam_case(name)
    weights = torch.randn(4, 7, 3, dtype=torch.float64)
    grads = []
    for vmapped in (False, True):
        x, lam_ = scores.clone().requires_grad_(), lam.clone().requires_grad_()
        if vmapped:
            out = torch.func.vmap(lambda x, m, l_: mapping(x, 0, lam=l_, mask=m))(x, mask, lam_)
        else:
            out = mapping(x, 1, lam=lam_, mask=mask)
        grads.append(torch.autograd.grad((out * weights).sum(), (x, lam_)))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_the_lam_backward_op_batching_rule(name):
    """vmap over regattn::lam_rows_backward against one call per batch entry."""
    from regattn import _cpu, _ops

    _, scores, mask, lam = lam_case(name)
    kind = {"fusedmax": _cpu.FUSEDMAX, "oscarmax": _cpu.OSCARMAX}[name]
    grad_outputs = torch.randn_like(scores)
    states = [_ops.lam_rows_forward(scores[b], lam[b], 0, mask[b], kind, 2.0)[1:] for b in range(4)]
    y, aux, counts = (torch.stack(parts) for parts in zip(*states, strict=True))
    expected = [_ops.lam_rows_backward(*states[b], grad_outputs[b], 0, kind, 2.0) for b in range(4)]
    got = torch.func.vmap(lambda *args: _ops.lam_rows_backward(*args, 0, kind, 2.0))(
        y, aux, counts, grad_outputs
    )
    for got_part, parts in zip(got, zip(*expected, strict=True), strict=True):
        torch.testing.assert_close(got_part, torch.stack(parts))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_rows_of_width_zero(name):
    mapping = regattn.MAPPINGS[name]
    scores = torch.randn(3, 2, 0, dtype=torch.float64)
    assert torch.func.vmap(lambda x: mapping(x, -1))(scores).shape == (3, 2, 0)
    if name in STRUCTURED:
        lam = torch.full((3, 2), 0.1, dtype=torch.float64)
        vmapped = torch.func.vmap(lambda x, lam_: mapping(x, -1, lam=lam_))(scores, lam)
        assert vmapped.shape == (3, 2, 0)


def test_eager_lam_tensor_takes_the_lean_autograd_path():
    x = torch.randn(3, 5, requires_grad=True)
    lam = torch.full((3,), 0.1, requires_grad=True)
    assert type(regattn.fusedmax(x, lam=lam).grad_fn).__name__ == "_TensorLamBackward"
