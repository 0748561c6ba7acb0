"""Fenchel-Young losses (``regattn.losses``; Blondel, Martins & Niculae, JMLR 2020) and
the regularizers Omega they are built from: against entmax's losses, torch's
cross-entropy and the cvxpy references, their defining properties (>= 0, zero at
the mapping's output, gradient Pi_Omega(x) - y_true), masks, ignore_index,
reductions and error messages."""

import math

import entmax
import numpy as np
import pytest
import reference  # tests/reference.py: pytest puts tests/ (no __init__.py) on sys.path
import torch
import torch.nn.functional as TF
from conftest import case_params

import regattn
from regattn import losses, registry
from regattn.losses import FenchelYoungLoss, fenchel_young_loss


def mapping(name, params, x, dim=-1, mask=None):
    return regattn.get_mapping(name, **params)(x, dim=dim, mask=mask)


def distributions(shape, dim=-1, mask=None):
    """Random float64 distributions along ``dim``, > 0 where ``mask`` is True (and
    away from 0 and from ties), 0 elsewhere."""
    return regattn.softmax(torch.randn(shape, dtype=torch.float64), dim, mask=mask)


def classes_among(valid):
    """A random class per row of ``valid`` (classes along the last dim) among its
    True positions; -100 for a row with none."""
    weights = valid.reshape(-1, valid.shape[-1]).double()
    live = weights.sum(-1) > 0
    drawn = torch.multinomial(torch.where(live[:, None], weights, 1.0), 1).squeeze(-1)
    return torch.where(live, drawn, -100).reshape(valid.shape[:-1])


def one_hot(target, n, dim=-1):
    """One-hot rows along ``dim`` for class indices; zeros for -100."""
    hot = TF.one_hot(target.clamp(min=0), n).double() * (target != -100)[..., None]
    return hot.movedim(-1, dim)


# --------------------------------------------------------------------------- omega


@pytest.mark.parametrize(("gamma", "masked"), [(0.5, False), (2.0, True)])
@case_params()
def test_omega_matches_reference_solution(name, params, gamma, masked):
    """At the reference maximiser y, value = <y, x> - gamma * Omega(y): so Omega(y)
    = (<y, x> - value) / gamma, computed by cvxpy from its own Omega."""
    rng = np.random.default_rng(3)
    scores = rng.normal(0.0, 2.0, 7)
    mask = np.array([True, False, True, True, False, True, True]) if masked else None
    y, value = reference.REFERENCES[name](scores, gamma=gamma, mask=mask, **params)
    expected = (y @ scores - value) / gamma
    valid = None if mask is None else torch.tensor(mask)
    got = regattn.omega(torch.tensor(y), name, mask=valid, **params)
    assert got.item() == pytest.approx(expected, rel=0, abs=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5])
@case_params()
def test_omega_closed_forms(name, params, n):
    """Omega at a vertex (here the middle one) and at the centre of the simplex."""
    lam, p = params.get("lam", 0.0), params.get("p", 1.5)
    vertex = {
        "softmax": 0.0,
        "sparsemax": 0.5,
        "fusedmax": 0.5 + lam * min(n - 1, 2),  # a jump to each neighbour
        "oscarmax": 0.5 + lam * (n - 1),  # the vertex is the max of n - 1 pairs
        "sq_pnorm_max": 0.5,
        "entmax15": 0.0,
    }[name]
    centre = {
        "softmax": -math.log(n),
        "sparsemax": 0.5 / n,
        "fusedmax": 0.5 / n,
        "oscarmax": 0.5 / n + lam * (n - 1) / 2,
        "sq_pnorm_max": 0.5 * n ** (2 * (1 - p) / p),
        "entmax15": (n**-0.5 - 1) / 0.75,
    }[name]
    e = torch.zeros(n, dtype=torch.float64)
    e[n // 2] = 1.0
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    assert regattn.omega(e, name, **params).item() == pytest.approx(vertex, abs=1e-12)
    assert regattn.omega(uniform, name, **params).item() == pytest.approx(centre, abs=1e-12)


@case_params()
def test_omega_along_dim_with_mask_is_omega_of_the_kept_positions(name, params):
    y = distributions((3, 6, 2), dim=1)
    mask = torch.tensor([True, False, True, True, False, True])[:, None]  # broadcasts
    y = torch.where(mask, y, 5.0)  # masked entries are ignored, whatever they hold
    got = regattn.omega(y, name, dim=1, mask=mask, **params)
    assert got.shape == (3, 2)
    kept = y.movedim(1, -1)[..., mask.squeeze(-1)]
    torch.testing.assert_close(got, regattn.omega(kept, name, **params))


def test_omega_gradient():
    y = distributions((2, 5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: regattn.omega(t, "oscarmax", lam=0.2), (y,))
    (grad,) = torch.autograd.grad(regattn.omega(y, "sparsemax").sum(), y)
    torch.testing.assert_close(grad, y.detach())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "sparsemax", "gamma": 2.0}, ValueError, "omega does not take gamma"),
        ({"name": "argmax"}, ValueError, "unknown mapping 'argmax'; valid mappings are"),
        ({"name": "sparsemax", "lam": 0.1}, ValueError, "'sparsemax' does not take lam"),
        ({"name": "fusedmax", "lam": -1.0}, ValueError, "lam must be a finite number >= 0"),
        ({"name": "softmax", "dim": 2}, ValueError, r"dim must be an integer in \[-2, 1\]"),
        ({"name": "softmax", "mask": torch.ones(2, 3)}, TypeError, "mask must be a bool"),
        ({"name": "softmax", "mask": torch.ones(4, dtype=bool)}, ValueError, "broadcast"),
    ],
)
def test_omega_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        regattn.omega(distributions((2, 3)), **kwargs)


def test_omega_refuses_integer_y():
    with pytest.raises(TypeError, match="y must be a floating-point tensor, got torch.int64"):
        regattn.omega(torch.ones(3, dtype=torch.long), "sparsemax")


def test_a_mapping_without_omega_is_refused(monkeypatch):
    monkeypatch.setitem(registry.MAPPINGS, "newmax", regattn.sparsemax)
    x = torch.randn(2, 3)
    match = "omega is not defined for mapping 'newmax'; it is defined for: entmax15"
    with pytest.raises(NotImplementedError, match=match):
        regattn.omega(x.softmax(-1), "newmax")
    with pytest.raises(NotImplementedError, match=match):
        regattn.max_omega(x, "newmax")
    with pytest.raises(NotImplementedError, match=match):
        fenchel_young_loss(x, torch.tensor([0, 1]), "newmax")
    with pytest.raises(NotImplementedError, match=match):
        FenchelYoungLoss("newmax")


def test_max_omega_mask_is_keyword_only():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError):
        regattn.max_omega(x, "sparsemax", -1, torch.ones(2, 3, dtype=bool))


def test_max_omega_in_half_precision_is_computed_in_float32():
    x = torch.randn(4, 9).to(torch.bfloat16)
    got = regattn.max_omega(x, "fusedmax", lam=0.2)
    assert got.dtype == torch.bfloat16
    expected = regattn.max_omega(x.float(), "fusedmax", lam=0.2).to(torch.bfloat16)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ------------------------------------------------------------------- references


@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize(
    ("name", "loss_class"), [("sparsemax", entmax.SparsemaxLoss), ("entmax15", entmax.Entmax15Loss)]
)
def test_matches_entmax_losses(name, loss_class, reduction, ignore_index):
    # entmax ignores targets only for ignore_index >= 0 and calls the mean
    # "elementwise_mean"; both average over the targets that are not ignored.
    x = 2 * torch.randn(12, 6, dtype=torch.float64)
    target = torch.randint(0, 6, (12,))
    target[:3] = 2
    theirs = loss_class(
        ignore_index=ignore_index,
        reduction="elementwise_mean" if reduction == "mean" else reduction,
    )
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = theirs(x_theirs, target)
    got = fenchel_young_loss(x_ours, target, name, ignore_index=ignore_index, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_loss_is_cross_entropy(reduction, gamma):
    """With gamma the loss is gamma * cross_entropy(x / gamma); classes along dim 1."""
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    target = torch.randint(0, 5, (4, 3))
    target[0, 1] = target[2, 0] = -100
    got = losses.softmax_loss(x, target, dim=1, gamma=gamma, reduction=reduction)
    expected = gamma * TF.cross_entropy(x / gamma, target, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_loss_with_distribution_target_is_kl_divergence(reduction):
    """The cross-entropy minus the target's entropy: KL(q || softmax(x))."""
    x = torch.randn(6, 5, dtype=torch.float64)
    q = distributions((6, 5))
    got = fenchel_young_loss(x, q, "softmax", reduction=reduction)
    kl = TF.cross_entropy(x, q, reduction="none") + torch.special.xlogy(q, q).sum(-1)
    torch.testing.assert_close(TF.kl_div(x.log_softmax(-1), q, reduction="none").sum(-1), kl)
    expected = {"none": kl, "sum": kl.sum(), "mean": kl.mean()}[reduction]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- properties


@pytest.mark.parametrize("gamma", [0.5, 3.0])
@case_params()
def test_gamma_scaling(name, params, gamma):
    """max_Omega with gamma is gamma * max_Omega(x / gamma) with gamma = 1, so the loss
    is gamma * loss(x / gamma; gamma = 1): this fails if Omega(y_true) misses gamma."""
    x = 2 * torch.randn(5, 7, dtype=torch.float64)
    for target in (torch.randint(0, 7, (5,)), distributions((5, 7))):
        got = fenchel_young_loss(x, target, name, reduction="none", gamma=gamma, **params)
        expected = gamma * fenchel_young_loss(x / gamma, target, name, reduction="none", **params)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@case_params()
def test_nonnegative_and_zero_exactly_at_the_mapping_output(name, params):
    x = 2 * torch.randn(8, 6, dtype=torch.float64)
    predicted = mapping(name, params, x)
    at_output = fenchel_young_loss(x, predicted, name, reduction="none", **params)
    torch.testing.assert_close(at_output, torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-12)

    # Omega is strictly convex: any other target has a positive loss.
    classes = torch.randint(0, 6, (8,))
    for target, y_true in ((classes, one_hot(classes, 6)), (distributions((8, 6)),) * 2):
        loss = fenchel_young_loss(x, target, name, reduction="none", **params)
        differs = (predicted - y_true).abs().amax(-1) > 1e-3
        assert differs.any()
        assert (loss[differs] > 1e-8).all() and (loss >= -1e-12).all()

    # A score far ahead of the others: the mapping gives its vertex (softmax, within
    # e^-40), and the loss at that class vanishes.
    peaked = torch.zeros(3, 6, dtype=torch.float64)
    peaked[torch.arange(3), torch.tensor([0, 2, 5])] = 40.0
    loss = fenchel_young_loss(peaked, torch.tensor([0, 2, 5]), name, reduction="none", **params)
    torch.testing.assert_close(loss, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("target_kind", ["classes", "distributions"])
@case_params()
def test_gradient_is_mapping_minus_target(name, params, target_kind):
    x = (2 * torch.randn(4, 6, 5, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(4, 6, 5) > 0.3
    mask[1, :, 2] = False  # a row with no position taking part
    if target_kind == "classes":
        target = classes_among(mask.movedim(1, -1))
        target[0, 0] = -100
        y_true = one_hot(target, 6, dim=1)
    else:
        target = y_true = distributions((4, 6, 5), dim=1, mask=mask)
    counted = (y_true.sum(1) > 0).unsqueeze(1)  # an ignored target gets no gradient
    for reduction, scale in (("sum", 1.0), ("mean", 1.0 / int(counted.sum()))):
        loss = fenchel_young_loss(x, target, name, dim=1, mask=mask, reduction=reduction, **params)
        (grad,) = torch.autograd.grad(loss, x)
        predicted = mapping(name, params, x.detach(), dim=1, mask=mask)
        expected = scale * torch.where(counted, predicted - y_true, 0.0)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
    assert (grad[~mask] == 0).all() and (grad[1, :, 2] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@case_params()
def test_gradcheck(name, params, gamma):
    """In the scores (with a mask, classes along dim 0) and in a distribution target."""
    params = {**params, "gamma": gamma}
    x = (2 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(6, 4) > 0.3
    target = classes_among(mask.T)
    assert torch.autograd.gradcheck(
        lambda s: fenchel_young_loss(s, target, name, dim=0, mask=mask, **params), (x,)
    )
    x = (2 * torch.randn(4, 6, dtype=torch.float64)).requires_grad_()
    q = distributions((4, 6)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s, t: fenchel_young_loss(s, t, name, reduction="none", **params), (x, q)
    )


@case_params()
def test_gradgradcheck(name, params):
    """The Hessian in the scores is the mapping's Jacobian."""
    x = (2 * torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    target = torch.tensor([0, 3, 4])
    assert torch.autograd.gradgradcheck(
        lambda s: fenchel_young_loss(s, target, name, reduction="sum", **params), (x,)
    )


# ------------------------------------------------------ masks, ignore_index, reductions


@case_params()
def test_masked_scores_are_ignored_and_kept_positions_are_neighbours(name, params):
    """The loss with a mask equals the loss on the kept scores alone, and neither
    masked scores nor -inf scores change it."""
    x = 2 * torch.randn(5, 7, dtype=torch.float64)
    keep = torch.tensor([True, True, False, True, False, True, True])
    compact = torch.randint(0, 5, (5,))
    target = keep.nonzero().squeeze(-1)[compact]
    q_compact = distributions((5, 5))
    q = torch.zeros(5, 7, dtype=torch.float64)
    q[:, keep] = q_compact
    garbage = torch.where(keep, x, 30.0)
    minus_inf = torch.where(keep, x, -math.inf)
    for kept_target, full_target in ((compact, target), (q_compact, q)):
        expected = fenchel_young_loss(x[:, keep], kept_target, name, reduction="none", **params)
        for scores, mask in ((garbage, keep), (minus_inf, None), (minus_inf, keep[None])):
            got = fenchel_young_loss(
                scores, full_target, name, mask=mask, reduction="none", **params
            )
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "entmax15"])
def test_rows_with_no_position_taking_part(name):
    """A fully masked row gives 0 and is left out of the mean, with a class target
    (which must then be ignored) or an all-zero distribution target; no NaN."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False] * 4, [True, False, True, True]])
    for target in (torch.tensor([1, -100, 3]), distributions((3, 4), mask=mask)):
        loss = fenchel_young_loss(x, target, name, mask=mask, reduction="none")
        assert loss[1] == 0
        mean = fenchel_young_loss(x, target, name, mask=mask)
        torch.testing.assert_close(mean, loss.sum() / 2)
        (grad,) = torch.autograd.grad(mean, x)
        assert not grad.isnan().any() and (grad[1] == 0).all()


def test_ignore_index():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 3, 1, 4, 3])
    loss = fenchel_young_loss(x, target, "fusedmax", ignore_index=3, reduction="none")
    assert (loss[target == 3] == 0).all() and (loss[target != 3] > 0).all()
    mean = fenchel_young_loss(x, target, "fusedmax", ignore_index=3)
    torch.testing.assert_close(mean, loss.sum() / 3)
    # The default -100 ignores nothing here: class 3 counts.
    assert (fenchel_young_loss(x, target, "fusedmax", reduction="none") > 0).all()

    # Everything ignored: the mean is 0, with a zero gradient (not NaN).
    nothing = fenchel_young_loss(x, torch.full((6,), -100), "fusedmax")
    (grad,) = torch.autograd.grad(nothing, x)
    assert nothing.item() == 0 and (grad == 0).all()


@pytest.mark.parametrize("target_kind", ["classes", "distributions"])
def test_reductions(target_kind):
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (3, 4)) if target_kind == "classes" else distributions(x.shape)
    none = fenchel_young_loss(x, target, "oscarmax", reduction="none", lam=0.1)
    assert none.shape == (3, 4)
    total = fenchel_young_loss(x, target, "oscarmax", reduction="sum", lam=0.1)
    mean = fenchel_young_loss(x, target, "oscarmax", reduction="mean", lam=0.1)
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(mean, none.mean())


def test_half_precision_is_computed_in_float32():
    x = torch.randn(4, 6).to(torch.bfloat16)
    target = torch.tensor([0, 5, 2, 2])
    got = fenchel_young_loss(x, target, "entmax15", reduction="none")
    assert got.dtype == torch.bfloat16
    expected = fenchel_young_loss(x.float(), target, "entmax15", reduction="none")
    torch.testing.assert_close(got, expected.to(torch.bfloat16), rtol=0, atol=0)


# ------------------------------------------------------------ module and wrappers


@case_params()
def test_module_equals_the_function(name, params):
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    mask = torch.rand(6, 1) > 0.3
    mask[0] = True
    target = torch.zeros(4, 3, dtype=torch.long)
    module = FenchelYoungLoss(name, dim=1, reduction="sum", **params)
    expected = fenchel_young_loss(x, target, name, dim=1, mask=mask, reduction="sum", **params)
    torch.testing.assert_close(module(x, target, mask=mask), expected, rtol=0, atol=0)
    assert repr(module).startswith(f"FenchelYoungLoss({name!r}, dim=1, ignore_index=-100")
    assert "gamma=1.0" in repr(module)


WRAPPERS = {
    "softmax": losses.softmax_loss,
    "sparsemax": losses.sparsemax_loss,
    "fusedmax": losses.fusedmax_loss,
    "oscarmax": losses.oscarmax_loss,
    "sq_pnorm_max": losses.sq_pnorm_max_loss,
    "entmax15": losses.entmax15_loss,
}


@case_params()
def test_wrappers(name, params):
    x = torch.randn(5, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, -100, 3])
    expected = fenchel_young_loss(x, target, name, dim=0, reduction="none", **params)
    got = WRAPPERS[name](x, target, dim=0, reduction="none", **params)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------- errors

X = torch.randn(3, 4)
MASK = torch.tensor([True, True, False, True])
TARGET = torch.tensor([0, 1, 3])


@pytest.mark.parametrize(
    ("target", "kwargs", "error", "match"),
    [
        (TARGET, {"reduction": "avg"}, ValueError, "reduction must be 'none', 'sum' or 'mean'"),
        (TARGET, {"ignore_index": 1.0}, TypeError, "ignore_index must be an integer, got 1.0"),
        (TARGET, {"name": "argmax"}, ValueError, "unknown mapping 'argmax'"),
        (TARGET, {"name": "softmax", "lam": 0.1}, ValueError, "'softmax' does not take lam"),
        (TARGET, {"gamma": 0.0}, ValueError, "gamma must be a finite number > 0, got 0.0"),
        (TARGET, {"dim": 2}, ValueError, r"dim must be an integer in \[-2, 1\]"),
        (TARGET, {"mask": MASK.int()}, TypeError, "mask must be a bool tensor"),
        (
            torch.tensor([0, 1]),
            {},
            ValueError,
            r"class-index target must have the scores' shape without dim 1, \(3,\), got \(2,\)",
        ),
        (
            torch.zeros(3, 4, dtype=torch.long),
            {},
            ValueError,
            "got \\(3, 4\\); for a distribution target pass a floating-point tensor",
        ),
        (
            torch.tensor([0, 4, 1]),
            {},
            ValueError,
            r"target class 4 at index \(1,\) is out of range for 4 classes along dim 1: "
            "allowed are 0 to 3, or ignore_index=-100",
        ),
        (torch.tensor([0, -1, 1]), {}, ValueError, "target class -1 at index"),
        (
            torch.tensor([0, 2, 1]),
            {"mask": MASK},
            ValueError,
            r"target class 2 at index \(1,\) is masked out \(mask False or score -inf\)",
        ),
        (torch.tensor([True, False, True]), {}, TypeError, "target must be class indices"),
        ([0, 1, 3], {}, TypeError, "target must be a torch.Tensor, got list"),
        (
            torch.full((3, 5), 0.2),
            {},
            ValueError,
            r"distribution target must have the scores' shape \(3, 4\), got \(3, 5\)",
        ),
        (
            torch.tensor([[1.5, -0.5, 0, 0]] * 3),
            {},
            ValueError,
            r"must be finite and >= 0, got -0.5 at index \(0, 1\)",
        ),
        (
            torch.full((3, 4), 0.25),
            {"mask": MASK},
            ValueError,
            r"puts mass on position \(0, 2\), which is masked out",
        ),
        (
            torch.full((3, 4), 0.3),
            {},
            ValueError,
            r"must sum to 1 along dim 1 \(to within 3.5e-04\), got 1.2",
        ),
    ],
    ids=lambda value: None if isinstance(value, (torch.Tensor, list)) else str(value)[:40],
)
def test_errors(target, kwargs, error, match):
    kwargs = {"name": "sparsemax", **kwargs}
    with pytest.raises(error, match=match):
        fenchel_young_loss(X, target, **kwargs)


def test_minus_inf_target_class_is_masked_out():
    x = torch.tensor([[0.0, -math.inf, 1.0]])
    with pytest.raises(ValueError, match=r"target class 1 at index \(0,\) is masked out"):
        fenchel_young_loss(x, torch.tensor([1]), "entmax15")


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="reduction must be .*, got 'elementwise_mean'"):
        FenchelYoungLoss("sparsemax", reduction="elementwise_mean")
    with pytest.raises(ValueError, match="p must be a number in"):
        FenchelYoungLoss("sq_pnorm_max", p=3.0)
