"""Properties and identities of the mappings (docs/design.md section 8), with hypothesis
drawing random shapes, masks and magnitudes."""

import math

import entmax
import torch
from conftest import case_params
from hypothesis import given, settings
from hypothesis import strategies as st

import regattn

PERMUTATION_EQUIVARIANT = ["softmax", "sparsemax", "oscarmax", "sq_pnorm_max", "entmax15"]


MAGNITUDES = st.sampled_from([1e-3, 1.0, 10.0, 1e4])


def rows(max_rows=6, max_width=24, scale=MAGNITUDES):
    """Random score matrices with a mask; the magnitudes span several decades."""
    return st.tuples(
        st.integers(1, max_rows), st.integers(1, max_width), scale, st.integers(0, 2**31 - 1)
    ).map(_draw)


def _draw(args):
    n, d, scale, seed = args
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    mask = torch.rand(n, d, generator=g) > 0.3
    return x, mask


@case_params()
@settings(max_examples=25, deadline=None)
@given(data=rows())
def test_distribution_shift_invariance_and_mask(name, params, data):
    x, mask = data
    f = regattn.get_mapping(name, **params)
    y = f(x, mask=mask)
    assert (y >= 0).all() and (y[~mask] == 0).all()
    has_kept = mask.any(-1)
    torch.testing.assert_close(y.sum(-1), has_kept.double())
    shift = 7.0 * torch.randn(x.shape[0], 1, dtype=torch.float64)
    atol = 1e-9 * max(1.0, x.abs().max().item())
    torch.testing.assert_close(f(x + shift, mask=mask), y, rtol=0, atol=atol)


@settings(max_examples=25, deadline=None)
@given(data=rows(), name=st.sampled_from(PERMUTATION_EQUIVARIANT))
def test_permutation_equivariance(data, name):
    x, mask = data
    perm = torch.randperm(x.shape[1])
    f = regattn.get_mapping(name)
    torch.testing.assert_close(f(x[:, perm], mask=mask[:, perm]), f(x, mask=mask)[:, perm])


@settings(max_examples=25, deadline=None)
@given(data=rows(max_width=40))
def test_sparsemax_equals_entmax_package(data):
    x, mask = data
    x = x.float()
    expected = entmax.sparsemax(x.masked_fill(~mask, -1e9), dim=-1) * mask
    ours = regattn.sparsemax(x, mask=mask)
    keep = mask.any(-1)  # entmax gives no meaningful answer for empty rows
    torch.testing.assert_close(ours[keep], expected[keep], rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(data=rows(max_width=40))
def test_entmax15_equals_entmax_package(data):
    x, _ = data
    torch.testing.assert_close(regattn.entmax15(x), entmax.entmax15(x, dim=-1))
    torch.testing.assert_close(regattn.entmax15(x, gamma=2.5), entmax.entmax15(x / 2.5, dim=-1))


def test_sparsemax_gradient_equals_entmax_package():
    x = torch.randn(16, 30, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(16, 30)
    (regattn.sparsemax(x) * g).sum().backward()
    (entmax.sparsemax(x_ref, dim=-1) * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@settings(max_examples=25, deadline=None)
@given(data=rows())
def test_no_fusion_is_sparsemax(data):
    x, mask = data
    expected = regattn.sparsemax(x, mask=mask)
    for f in (regattn.fusedmax, regattn.oscarmax):
        torch.testing.assert_close(f(x, lam=0.0, mask=mask), expected)
        torch.testing.assert_close(f(x, lam=1e-12, mask=mask), expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(regattn.sq_pnorm_max(x, p=2.0, mask=mask), expected)


@settings(max_examples=25, deadline=None)
@given(data=rows(max_width=2), lam=st.floats(0.0, 3.0))
def test_two_positions_oscarmax_is_fusedmax_at_half_lam(data, lam):
    x, mask = data
    torch.testing.assert_close(
        regattn.oscarmax(x, lam=lam, mask=mask), regattn.fusedmax(x, lam=lam / 2, mask=mask)
    )


@settings(max_examples=25, deadline=None)
@given(data=rows(scale=st.just(1.0)))
def test_large_lam_gives_uniform_over_kept(data):
    x, mask = data
    uniform = mask / mask.sum(-1, keepdim=True).clamp(min=1)
    for f in (regattn.fusedmax, regattn.oscarmax):
        torch.testing.assert_close(f(x, lam=1e3, mask=mask), uniform.double())


def test_fusedmax_fuses_contiguous_runs_and_oscarmax_any_group():
    x = torch.tensor([3.0, 2.9, 0.0, 2.95, -1.0], dtype=torch.float64)
    fused = regattn.fusedmax(x, lam=0.2)
    assert fused[0] == fused[1] and fused[3] != fused[0]
    oscar = regattn.oscarmax(x, lam=0.06)  # 0.05 would tie exactly: fused or not by rounding
    assert oscar[0] == oscar[1] == oscar[3] and oscar[2] == 0


def test_gamma_is_a_temperature():
    x = torch.randn(3, 8, dtype=torch.float64)
    for name in regattn.MAPPINGS:
        f = regattn.MAPPINGS[name]
        torch.testing.assert_close(f(x, gamma=0.25), f(4 * x), msg=name)
    sharp = regattn.softmax(x, gamma=1e-6)
    torch.testing.assert_close(sharp, torch.nn.functional.one_hot(x.argmax(-1), 8).double())


def test_softmax_matches_torch():
    x = torch.randn(4, 5, 6)
    torch.testing.assert_close(regattn.softmax(x, dim=1), torch.softmax(x, dim=1))
    torch.testing.assert_close(regattn.softmax(x, gamma=2.0), torch.softmax(x / 2, dim=-1))
    two = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    assert math.isclose(regattn.softmax(two)[1].item(), 0.75)


def test_oscar_fusion_grows_with_length_at_fixed_lam():
    # The OSCAR penalty has O(d^2) pairs (documented): support grows with d.
    g = torch.Generator().manual_seed(0)
    support = {
        d: (regattn.oscarmax(torch.randn(64, d, generator=g), lam=0.01) > 0)
        .sum(-1)
        .float()
        .mean()
        .item()
        for d in (16, 1024)
    }
    assert support[16] < 4 and support[1024] == 1024
