"""regattn against independent cvxpy solutions of each mapping's defining problem
(``tests/reference.py``): outputs, masks, the smoothed max, and the identities of the
paper. Scores are float64 so that disagreements of 1e-6 mean a wrong answer, not
rounding."""

import functools

import cvxpy as cp
import numpy as np
import pytest
import reference  # tests/reference.py: pytest puts tests/ (no __init__.py) on sys.path
import torch

import regattn

# Agreement required with the reference. The references are accurate to ~1e-10 (see
# reference.py), so anything above 1e-6 is an error in regattn.
ATOL = 1e-6

GAMMAS = [0.5, 1.0, 2.0]

# (mapping name, parameters): every mapping, and for the structured ones lam = 0
# (sparsemax), small lam and lam large enough to fuse most or all positions.
CASES = [
    ("softmax", {}),
    ("sparsemax", {}),
    *[("fusedmax", {"lam": lam}) for lam in (0.0, 0.01, 0.1, 1.0, 10.0)],
    *[("oscarmax", {"lam": lam}) for lam in (0.0, 0.01, 0.1, 1.0, 10.0)],
    *[("sq_pnorm_max", {"p": p}) for p in (1.25, 1.5, 1.9)],
    ("entmax15", {}),
]

# (dimension, standard deviation of the scores, seed). d = 1 and 2 are the corner
# cases; scale 3 gives peaked, sparse outputs, scale 1 wide supports.
DRAWS = [(1, 1.0, 0), (2, 1.0, 1), (2, 3.0, 2), (3, 1.0, 3), (5, 3.0, 4), (8, 1.0, 5)]
DRAWS += [(13, 3.0, 6), (20, 1.0, 7), (20, 3.0, 8)]


def case_id(case):
    name, params = case
    return name + "".join(f"-{key}={value}" for key, value in params.items())


def gamma_id(gamma):
    return f"gamma={gamma:g}"


def draw_id(draw):
    d, scale, seed = draw
    return f"d={d}-scale={scale:g}-seed={seed}"


def draw_scores(d, scale, seed, masked):
    """Scores N(0, scale^2) and, if ``masked``, a random mask keeping about 60% of the
    positions (at least one). Masked positions keep their random scores: the
    mapping must ignore them."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, scale, d)
    if not masked:
        return scores, None
    mask = rng.random(d) < 0.6
    mask[rng.integers(d)] = True
    return scores, mask


@functools.cache
def reference_solution(name, params_items, gamma, draw, masked):
    """(scores, mask, y, value) from the reference; cached, because the output test
    and the max_omega test use the same solves."""
    scores, mask = draw_scores(*draw, masked)
    y, value = reference.REFERENCES[name](scores, gamma=gamma, mask=mask, **dict(params_items))
    return scores, mask, y, value


def as_tensors(scores, mask):
    return torch.tensor(scores), None if mask is None else torch.tensor(mask)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("draw", DRAWS, ids=draw_id)
@pytest.mark.parametrize("gamma", GAMMAS, ids=gamma_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_mapping_matches_reference(case, gamma, draw, masked):
    name, params = case
    scores, mask, expected, _ = reference_solution(name, tuple(params.items()), gamma, draw, masked)
    x, valid = as_tensors(scores, mask)
    got = regattn.get_mapping(name, gamma=gamma, **params)(x, mask=valid)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=ATOL)
    if mask is not None:
        # Exactly zero, not merely small.
        assert (got.numpy()[~mask] == 0).all()


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("draw", DRAWS, ids=draw_id)
@pytest.mark.parametrize("gamma", GAMMAS, ids=gamma_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_max_omega_matches_reference_value(case, gamma, draw, masked):
    name, params = case
    scores, mask, _, expected = reference_solution(name, tuple(params.items()), gamma, draw, masked)
    x, valid = as_tensors(scores, mask)
    got = regattn.max_omega(x, name, mask=valid, gamma=gamma, **params)
    assert got.item() == pytest.approx(expected, rel=0, abs=ATOL)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_columns_along_dim0_with_masks_match_reference(case):
    """A batch mapped along dim 0, each column with its own mask, equals the
    reference column by column: rows of the kernel do not leak into each other."""
    name, params = case
    rng = np.random.default_rng(11)
    scores = rng.normal(0.0, 2.0, (7, 4))
    mask = rng.random((7, 4)) < 0.6
    mask[0, :] = True
    expected = np.stack(
        [
            reference.REFERENCES[name](scores[:, j], mask=mask[:, j], **params)[0]
            for j in range(scores.shape[1])
        ],
        axis=1,
    )
    got = regattn.get_mapping(name, **params)(torch.tensor(scores), dim=0, mask=torch.tensor(mask))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fully_masked_scores_give_zeros_and_value_zero(case):
    name, params = case
    scores = np.array([0.3, -1.2, 2.0])
    mask = np.zeros(3, dtype=bool)
    y, value = reference.REFERENCES[name](scores, mask=mask, **params)
    x, valid = as_tensors(scores, mask)
    assert regattn.get_mapping(name, **params)(x, mask=valid).tolist() == y.tolist() == [0.0] * 3
    assert regattn.max_omega(x, name, mask=valid, **params).item() == value == 0.0


def test_fusedmax_docstring_example():
    """The example of the package docstring: 2.1 and 1.9 fuse at lam = 0.1."""
    scores = [1.0, 2.1, 1.9]
    expected = [0.0, 0.5, 0.5]
    got = regattn.fusedmax(torch.tensor(scores), lam=0.1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=ATOL)
    y, _ = reference.fusedmax(np.array(scores), lam=0.1)
    np.testing.assert_allclose(y, expected, rtol=0, atol=ATOL)


# Rows for the structured maps' shortcuts, which skip positions that cannot reach
# the support: fusedmax solves the TV prox only on blocks, between certain jumps,
# that hold a value within 1 + 4 lam of the top; oscarmax sorts and fits only the
# values within 1 + lam (d - 1) of it (regattn._cpu._tv_prox_near_top, _top_first).
# Skipped runs at both ends, between kept blocks and one position long; a block
# ending on a certain jump into another kept block; values just either side of
# oscarmax's cut, which pool with each other.
NEAR_TOP_ROWS = [
    [-5.0, -5.1, 0.0, 0.05, 0.1, -6.0, -6.0, 0.3, 0.25, -4.0],
    [0.0, -3.0, 0.02, -3.0, 0.01, -2.9, -2.8, 0.03],
    [1.0, 1.0, 1.5, -4.0, 0.9, 0.95, 0.3, 0.35, -7.0, -7.2, -7.1],
    [-9.0, -9.0, -9.0, 0.0, -9.0, -9.0],
    [0.0, -1.05, -1.1, -1.12, -1.2, -1.95, -2.0, -0.5, -1.0, -3.7, -3.75],
]


# Irregular lams: at round ones these rows sit on kinks of y(lam) (ties after the
# shifts), where finite differences do not give the gradient.
@pytest.mark.parametrize("lam", [0.013, 0.047, 0.11, 0.29], ids=lambda lam: f"lam={lam:g}")
@pytest.mark.parametrize("row", range(len(NEAR_TOP_ROWS)), ids=lambda row: f"row={row}")
@pytest.mark.parametrize("name", ["fusedmax", "oscarmax"])
def test_structured_maps_skip_only_positions_that_cannot_reach_the_support(name, row, lam):
    scores = np.array(NEAR_TOP_ROWS[row])
    mapping = regattn.MAPPINGS[name]
    y, _ = reference.REFERENCES[name](scores, lam=lam)
    got = mapping(torch.tensor(scores), lam=lam)
    np.testing.assert_allclose(got.numpy(), y, rtol=0, atol=ATOL)
    # The lam gradient reads the support's groups: their neighbours (fusedmax, cold
    # runs included) and their ranks among all kept positions (oscarmax).
    weights = torch.tensor(np.random.default_rng(row).normal(size=len(scores)))
    lam_tensor = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    (mapping(torch.tensor(scores), lam=lam_tensor) * weights).sum().backward()
    eps = 1e-7
    up = (mapping(torch.tensor(scores), lam=lam + eps) * weights).sum()
    down = (mapping(torch.tensor(scores), lam=lam - eps) * weights).sum()
    np.testing.assert_allclose(lam_tensor.grad.item(), (up - down).item() / (2 * eps), atol=1e-6)


# Mixed-sign scores (seeds picked where the two maps differ by more than 0.1).
FOIL_SEEDS = [0, 4, 5, 7]


@pytest.mark.parametrize("seed", FOIL_SEEDS, ids=lambda seed: f"seed={seed}")
def test_oscarmax_is_the_exact_minimiser_not_the_abs_based_variant(seed):
    scores = np.random.default_rng(seed).normal(0.0, 1.0, 6)
    assert (scores > 0).any() and (scores < 0).any()
    exact, _ = reference.oscarmax(scores, lam=0.2)
    foil = reference.torchsparseattn_oscarmax_foil(scores, lam=0.2)
    # Guard: on these scores the two definitions really are far apart.
    assert np.abs(exact - foil).max() > 0.1
    got = regattn.oscarmax(torch.tensor(scores), lam=0.2)
    np.testing.assert_allclose(got.numpy(), exact, rtol=0, atol=ATOL)


@pytest.mark.parametrize("lam", [0.01, 0.3, 1.0, 5.0], ids=lambda lam: f"lam={lam:g}")
@pytest.mark.parametrize("gamma", GAMMAS, ids=gamma_id)
@pytest.mark.parametrize("seed", range(3), ids=lambda seed: f"seed={seed}")
def test_two_positions_oscarmax_equals_fusedmax_with_half_lam(seed, gamma, lam):
    """On the simplex max(y1, y2) = (1 + |y1 - y2|) / 2, so with d = 2 the OSCAR
    penalty lam * max is the TV penalty (lam/2) * |y1 - y2| plus a constant."""
    scores = np.random.default_rng(seed).normal(0.0, 2.0, 2)
    x = torch.tensor(scores)
    oscar = regattn.oscarmax(x, gamma=gamma, lam=lam)
    fused = regattn.fusedmax(x, gamma=gamma, lam=lam / 2)
    np.testing.assert_allclose(oscar.numpy(), fused.numpy(), rtol=0, atol=1e-12)
    y, _ = reference.fusedmax(scores, gamma=gamma, lam=lam / 2)
    np.testing.assert_allclose(oscar.numpy(), y, rtol=0, atol=ATOL)


# lam = 0 short-circuits to sparsemax inside regattn; lam = 1e-12 runs the
# structured kernels themselves, which must then agree with sparsemax too.
@pytest.mark.parametrize("lam", [0.0, 1e-12], ids=lambda lam: f"lam={lam:g}")
@pytest.mark.parametrize("name", ["fusedmax", "oscarmax"])
@pytest.mark.parametrize("draw", DRAWS, ids=draw_id)
def test_zero_lam_is_sparsemax(draw, name, lam):
    scores, mask = draw_scores(*draw, masked=True)
    x, valid = as_tensors(scores, mask)
    got = regattn.get_mapping(name, lam=lam)(x, mask=valid)
    sparse = regattn.sparsemax(x, mask=valid)
    np.testing.assert_allclose(got.numpy(), sparse.numpy(), rtol=0, atol=1e-9)
    y, _ = reference.sparsemax(scores, mask=mask)
    np.testing.assert_allclose(got.numpy(), y, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["fusedmax", "oscarmax"])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_large_lam_fuses_into_uniform_over_kept_positions(name, masked):
    # lam = 10 is far more than these N(0, 1) scores over 8 positions need to fuse
    # into one group (for TV: more than every partial sum of the centred scores).
    scores, mask = draw_scores(8, 1.0, 5, masked)
    kept = np.ones(8, dtype=bool) if mask is None else mask
    uniform = kept / kept.sum()
    y, _ = reference.REFERENCES[name](scores, lam=10.0, mask=mask)
    np.testing.assert_allclose(y, uniform, rtol=0, atol=ATOL)
    x, valid = as_tensors(scores, mask)
    got = regattn.get_mapping(name, lam=10.0)(x, mask=valid)
    np.testing.assert_allclose(got.numpy(), uniform, rtol=0, atol=ATOL)


# ------------------------------------------------------ checks of the reference itself


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("draw", DRAWS, ids=draw_id)
@pytest.mark.parametrize("gamma", GAMMAS, ids=gamma_id)
def test_reference_softmax_matches_closed_form(gamma, draw, masked):
    """The cvxpy softmax (exponential cone + polish) against softmax(x / gamma) and
    gamma * logsumexp(x / gamma): evidence that the polish really reaches ~1e-10."""
    scores, mask, y, value = reference_solution("softmax", (), gamma, draw, masked)
    y_exact, value_exact = reference.softmax_closed_form(scores, gamma=gamma, mask=mask)
    np.testing.assert_allclose(y, y_exact, rtol=0, atol=1e-9)
    assert value == pytest.approx(value_exact, rel=0, abs=1e-9)


SMOOTH_REGULARIZERS = {
    "negative_entropy": reference.NEGATIVE_ENTROPY,
    "tsallis_15": reference.TSALLIS_15,
    **{f"half_squared_{p}_norm": reference.half_squared_pnorm(p) for p in (1.25, 1.5, 1.9)},
}


@pytest.mark.parametrize("regularizer", SMOOTH_REGULARIZERS.values(), ids=SMOOTH_REGULARIZERS)
def test_reference_regularizer_formulas_agree(regularizer):
    """The polish trusts the hand-written gradient and Hessian: check them by central
    differences, and the numpy value against the cvxpy expression."""
    y = np.random.default_rng(0).uniform(0.05, 1.0, 5)
    step = 1e-6
    basis = np.eye(y.size) * step
    numeric_gradient = [
        (regularizer.value(y + e) - regularizer.value(y - e)) / (2 * step) for e in basis
    ]
    numeric_hessian = [
        (regularizer.gradient(y + e) - regularizer.gradient(y - e)) / (2 * step) for e in basis
    ]
    np.testing.assert_allclose(regularizer.gradient(y), numeric_gradient, rtol=1e-7)
    np.testing.assert_allclose(regularizer.hessian(y), numeric_hessian, rtol=1e-6, atol=1e-7)
    variable = cp.Variable(y.size, value=y)
    assert regularizer.cvxpy(variable).value == pytest.approx(regularizer.value(y), rel=1e-12)
