"""Independent reference solvers for the regularized attention mappings.

Each mapping is solved straight from its definition (Niculae & Blondel, 2017):

    y = argmax_{y in simplex} <y, x> - gamma * Omega(y),    value = the maximum,

as a convex program in cvxpy with the interior-point solver Clarabel. Nothing here
imports regattn: these functions exist to check it.

Every mapping function takes a 1-D float64 score vector ``x``, ``gamma``, the
mapping's own parameters and an optional bool ``mask`` (True = the position takes
part), and returns ``(y, value)``. A mask is handled by compaction: the problem is
solved on the kept positions in their order (so for fusedmax kept positions are
neighbours even if masked ones sit between them) and zeros are scattered back. A
fully masked vector has no maximiser; like regattn we return zeros and the value 0.

Accuracy. The quadratic programs (sparsemax, fusedmax, oscarmax) reach a duality
gap of 1e-12 and agree with exact solutions to ~1e-10 on random scores (~1e-7 in
degenerate cases, where the solution sits exactly on a kink, e.g. round scores that
fuse exactly at the given lam). The problems that need exponential or power cones
(softmax, sq_pnorm_max, entmax15) do not: Clarabel stalls at a feasibility residual
of ~1e-10 on about a quarter of them (no setting we tried - tolerances,
regularization, iterative refinement, equilibration, step length - changes that),
and as the objective is only ~gamma-strongly concave, a gap eps leaves y off by up
to sqrt(2 eps / gamma): ~1e-5 at the tolerances Clarabel does reach. So for those
three Clarabel only finds the neighbourhood and we *polish*: Newton's method on the
KKT equations of the same problem restricted to the support, an active-set loop
that moves positions in or out of the support, and a final KKT check. The problem
is convex, so a point that passes the check is the maximiser (to ~1e-11); one that
cannot pass raises.
"""

import itertools
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
from scipy.optimize import isotonic_regression
from scipy.special import logsumexp, xlogy

# Clarabel stops at a duality gap of 1e-8 by default; ask for near machine
# precision. A solve that reaches only Clarabel's "reduced" tolerances raises.
QUADRATIC_SOLVER_SETTINGS = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 500,
}
# For the exp/power-cone problems Clarabel only has to land near the maximiser
# (Newton polishing and the KKT check take it from there), so its default 1e-8
# tolerances will do, and an "inaccurate" answer is accepted as a starting point.
CONIC_SOLVER_SETTINGS = {"max_iter": 500}


def solve_on_simplex(x, gamma, omega, settings=QUADRATIC_SOLVER_SETTINGS, accept=(cp.OPTIMAL,)):
    """max_{y in simplex} <y, x> - gamma * omega(y) for a cvxpy-expression ``omega``:
    returns (maximiser, maximum)."""
    y = cp.Variable(x.size)
    problem = cp.Problem(cp.Maximize(x @ y - gamma * omega(y)), [y >= 0, cp.sum(y) == 1])
    problem.solve(solver=cp.CLARABEL, **settings)
    if problem.status not in accept:
        raise RuntimeError(f"Clarabel did not solve the problem to tolerance: {problem.status}")
    return y.value, problem.value


def _on_kept_positions(x, mask, solve_compact):
    """Run ``solve_compact`` on the kept scores only and scatter zeros back."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be a 1-D score vector, got shape {x.shape}")
    kept = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    y = np.zeros_like(x)
    if not kept.any():
        return y, 0.0
    y[kept], value = solve_compact(x[kept])
    return y, float(value)


# ------------------------------------------------------------ nonsmooth regularizers


def squared_norm(y):
    return 0.5 * cp.sum_squares(y)


def total_variation(y):
    """sum_i |y_{i+1} - y_i| (0 for a single position)."""
    return cp.norm1(cp.diff(y)) if y.size > 1 else 0.0


def oscar_penalty(y):
    """sum_{i<j} max(|y_i|, |y_j|), written pair by pair as in the paper."""
    if y.size < 2:
        return 0.0
    first, second = np.array(list(itertools.combinations(range(y.size), 2))).T
    return cp.sum(cp.maximum(cp.abs(y[first]), cp.abs(y[second])))


# --------------------------------------------------------------- smooth regularizers


@dataclass(frozen=True)
class SmoothRegularizer:
    """Omega as a cvxpy expression (for Clarabel) and as numpy functions of y > 0
    (value, gradient, Hessian: for the Newton polish and the KKT check). The
    gradient must accept zeros: it is evaluated there to test the positions outside
    the support."""

    cvxpy: object
    value: object
    gradient: object
    hessian: object


NEGATIVE_ENTROPY = SmoothRegularizer(
    cvxpy=lambda y: -cp.sum(cp.entr(y)),
    value=lambda y: xlogy(y, y).sum(),
    # log 0 = -inf: a position outside the support always violates the KKT
    # conditions, so the polish keeps every position (softmax is never sparse).
    gradient=lambda y: np.log(y) + 1.0,
    hessian=lambda y: np.diag(1.0 / y),
)

TSALLIS_15 = SmoothRegularizer(
    # approx=False: power cones. The default SOC approximation of y^1.5 stalls
    # Clarabel at a feasibility residual of ~1e-9 whatever the tolerance.
    cvxpy=lambda y: (cp.sum(cp.power(y, 1.5, approx=False)) - 1.0) / 0.75,
    value=lambda y: ((y**1.5).sum() - 1.0) / 0.75,
    gradient=lambda y: 2.0 * np.sqrt(y),
    hessian=lambda y: np.diag(1.0 / np.sqrt(y)),
)


def half_squared_pnorm(p):
    """Omega(y) = 1/2 ||y||_p^2. With n = ||y||_p: gradient y^(p-1) n^(2-p);
    Hessian (p-1) n^(2-p) diag(y^(p-2)) + (2-p) n^(2-2p) y^(p-1) (y^(p-1))^T."""

    def norm(y):
        return (y**p).sum() ** (1.0 / p)

    def hessian(y):
        n, u = norm(y), y ** (p - 1.0)
        diagonal = (p - 1.0) * n ** (2.0 - p) * np.diag(y ** (p - 2.0))
        rank_one = (2.0 - p) * n ** (2.0 - 2.0 * p) * np.outer(u, u)
        return diagonal + rank_one

    return SmoothRegularizer(
        cvxpy=lambda y: 0.5 * cp.power(cp.pnorm(y, p, approx=False), 2),
        value=lambda y: 0.5 * norm(y) ** 2,
        gradient=lambda y: y ** (p - 1.0) * norm(y) ** (2.0 - p),
        hessian=hessian,
    )


def kkt_residuals(x, gamma, y, tau, regularizer):
    """The KKT conditions of max_{y in simplex} <y, x> - gamma * Omega(y) with the
    multiplier tau of sum(y) = 1: on the support x_i - gamma * grad_i = tau, off it
    x_i - gamma * grad_i <= tau. Returns (stationarity error on the support, worst
    violation off it)."""
    support = y > 0
    with np.errstate(divide="ignore"):
        slack = x - gamma * regularizer.gradient(y) - tau
    stationarity = np.abs(slack[support]).max()
    violation = slack[~support].max(initial=-np.inf)
    return stationarity, violation


def _newton_on_support(x, gamma, y, regularizer, tolerance, max_steps=60):
    """Solve x - gamma * grad(y) = tau * 1, sum(y) = 1 for y > 0 (all positions of
    x) by damped Newton from y. Returns (y, tau, converged); it does not converge
    when some position wants to leave the support (go to 0 or below)."""
    tau = np.mean(x - gamma * regularizer.gradient(y))
    for _ in range(max_steps):
        residual = np.append(x - gamma * regularizer.gradient(y) - tau, y.sum() - 1.0)
        if np.abs(residual).max() <= tolerance:
            return y, tau, True
        jacobian = np.block(
            [
                [-gamma * regularizer.hessian(y), -np.ones((y.size, 1))],
                [np.ones((1, y.size)), np.zeros((1, 1))],
            ]
        )
        step = np.linalg.solve(jacobian, -residual)
        # Stay inside y > 0: go at most halfway to the boundary.
        shrinking = step[:-1] < 0
        length = min(1.0, 0.5 * np.min(-y[shrinking] / step[:-1][shrinking], initial=np.inf))
        y, tau = y + length * step[:-1], tau + length * step[-1]
    return y, tau, False


def polish(x, gamma, y_start, regularizer):
    """The exact maximiser near Clarabel's ``y_start``: active-set Newton on the
    KKT equations, certified by ``kkt_residuals`` (sufficient for optimality, as the
    problem is convex). Returns (y, tau)."""
    # The residuals are in units of x: allow rounding errors of its size.
    tolerance = 1e-11 * max(gamma, np.abs(x).max())
    # Clarabel's zeros come out as ~1e-9: start from the clearly positive weights.
    support = y_start > 1e-6 * y_start.max()
    for _ in range(2 * x.size + 2):
        start = np.maximum(y_start[support], 1e-12)
        y_support, tau, converged = _newton_on_support(
            x[support], gamma, start / start.sum(), regularizer, tolerance
        )
        if not converged:
            # A position of the support wants to reach 0: drop the one nearest.
            support[np.flatnonzero(support)[np.argmin(y_support)]] = False
            continue
        y = np.zeros_like(x)
        y[support] = y_support
        stationarity, violation = kkt_residuals(x, gamma, y, tau, regularizer)
        if violation <= tolerance and stationarity <= tolerance:
            return y, tau
        # The most violated position outside the support belongs in it.
        with np.errstate(divide="ignore"):
            slack = np.where(support, -np.inf, x - gamma * regularizer.gradient(y) - tau)
        support[np.argmax(slack)] = True
        y_start = np.where(support, np.maximum(y, 1e-12), 0.0)
    raise RuntimeError(f"could not polish the solution for x={x.tolist()}, gamma={gamma}")


def solve_smooth_on_simplex(x, gamma, regularizer):
    """Clarabel's solution polished to ~1e-12, and the maximum at it."""
    # cvxpy evaluates the objective at Clarabel's y, whose zeros may come out as
    # -1e-12: y**1.5 is then NaN. We evaluate it ourselves at y clipped to >= 0.
    with np.errstate(invalid="ignore"):
        y_clarabel, _ = solve_on_simplex(
            x, gamma, regularizer.cvxpy, CONIC_SOLVER_SETTINGS, (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
        )
    y_clarabel = np.maximum(y_clarabel, 0.0)
    value_clarabel = x @ y_clarabel - gamma * regularizer.value(y_clarabel)
    y, _ = polish(x, gamma, y_clarabel, regularizer)
    value = x @ y - gamma * regularizer.value(y)
    # The polish must refine Clarabel's answer, not replace it with another one.
    if not (np.abs(y - y_clarabel).max() <= 1e-3 and abs(value - value_clarabel) <= 1e-6):
        raise RuntimeError(f"polish moved far from Clarabel's solution for x={x.tolist()}")
    return y, value


# ----------------------------------------------------------------------- mappings


def softmax(x, gamma=1.0, mask=None):
    """Omega(y) = sum y log y (negative entropy), through cvxpy's exponential cone."""
    return _on_kept_positions(
        x, mask, lambda kept: solve_smooth_on_simplex(kept, gamma, NEGATIVE_ENTROPY)
    )


def softmax_closed_form(x, gamma=1.0, mask=None):
    """The same problem in closed form: y = softmax(x / gamma), value =
    gamma * logsumexp(x / gamma). Used to check the cvxpy softmax itself."""

    def closed_form(kept):
        log_partition = logsumexp(kept / gamma)
        return np.exp(kept / gamma - log_partition), gamma * log_partition

    return _on_kept_positions(x, mask, closed_form)


def sparsemax(x, gamma=1.0, mask=None):
    """Omega(y) = 1/2 ||y||^2."""
    return _on_kept_positions(x, mask, lambda kept: solve_on_simplex(kept, gamma, squared_norm))


def fusedmax(x, gamma=1.0, lam=0.1, mask=None):
    """Omega(y) = 1/2 ||y||^2 + lam * TV(y). Dividing the objective by gamma gives
    argmin_{y in simplex} 1/2 ||y - x/gamma||^2 + lam * TV(y): lam acts after x/gamma."""

    def omega(y):
        return squared_norm(y) + lam * total_variation(y)

    return _on_kept_positions(x, mask, lambda kept: solve_on_simplex(kept, gamma, omega))


def oscarmax(x, gamma=1.0, lam=0.01, mask=None):
    """Omega(y) = 1/2 ||y||^2 + lam * sum_{i<j} max(|y_i|, |y_j|): the paper's exact
    minimiser over the simplex (compare ``torchsparseattn_oscarmax_foil``)."""

    def omega(y):
        return squared_norm(y) + lam * oscar_penalty(y)

    return _on_kept_positions(x, mask, lambda kept: solve_on_simplex(kept, gamma, omega))


def sq_pnorm_max(x, gamma=1.0, p=1.5, mask=None):
    """Omega(y) = 1/2 ||y||_p^2, p in (1, 2]."""
    regularizer = half_squared_pnorm(p)
    return _on_kept_positions(
        x, mask, lambda kept: solve_smooth_on_simplex(kept, gamma, regularizer)
    )


def entmax15(x, gamma=1.0, mask=None):
    """Omega(y) = (sum y^1.5 - 1) / 0.75, the Tsallis 1.5-entropy regularizer."""
    return _on_kept_positions(
        x, mask, lambda kept: solve_smooth_on_simplex(kept, gamma, TSALLIS_15)
    )


REFERENCES = {
    "softmax": softmax,
    "sparsemax": sparsemax,
    "fusedmax": fusedmax,
    "oscarmax": oscarmax,
    "sq_pnorm_max": sq_pnorm_max,
    "entmax15": entmax15,
}


# -------------------------------------------------------------------------- foil


def torchsparseattn_oscarmax_foil(x, gamma=1.0, lam=0.01):
    """NOT oscarmax: the |x|-based variant of the authors' torchsparseattn package,
    kept here so that a test can show regattn does not compute it.

    torchsparseattn applies the OWL prox to |x| - sort |x| descending, subtract the
    OSCAR weights lam * (d - k), fit a non-increasing sequence (pool adjacent
    violators), clip at 0, restore the order and the signs - and then sparsemax.
    Prox-then-project is the constrained minimiser only when the prox does not meet
    the |.| kink, so the two differ on mixed-sign scores. Returns y only.
    """
    v = np.asarray(x, dtype=np.float64) / gamma
    order = np.argsort(-np.abs(v), kind="stable")
    weights = lam * np.arange(v.size - 1, -1, -1)
    fitted = isotonic_regression(np.abs(v)[order] - weights, increasing=False).x
    prox = np.empty_like(v)
    prox[order] = np.maximum(fitted, 0.0)
    y, _ = sparsemax(np.sign(v) * prox)
    return y
