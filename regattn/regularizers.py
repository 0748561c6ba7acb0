"""The regularizers Omega and the smoothed max

    max_Omega(x) = max_{y in simplex} <y, x> - gamma * Omega(y),

whose gradient is the mapping y = Pi_Omega(x) (Niculae & Blondel 2017, section 2).
Useful for Fenchel-Young losses (``regattn.losses``) and for checking a mapping
against its definition.

Both functions follow the mappings' conventions: the tensor first, then the
mapping's name, ``dim`` (default -1), and keyword-only ``mask`` (a bool tensor
broadcastable to the input, True = the position takes part) and parameters.
"""

import math

import torch

from . import functional as F
from .registry import _checked_params, _lookup, mapping_params


def _kept_first(y, valid):
    """y's rows with the kept positions first, in their order, and the validity of
    the reordered positions (used by the penalties that depend on adjacency)."""
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)
    return y.gather(-1, order), valid.gather(-1, order)


# Each Omega below works along the last dim of y, on the positions where ``valid`` is
# True; y is already 0 elsewhere.


def _negative_entropy(y, valid, params):
    return torch.special.xlogy(y, y).sum(-1)


def _half_squared_norm(y, valid, params):
    return 0.5 * (y * y).sum(-1)


def _fused_penalty(y, valid, params):
    # Masked positions are skipped, so kept positions on either side of them count as
    # neighbours, as in fusedmax.
    ordered, kept = _kept_first(y, valid)
    jumps = (ordered[..., 1:] - ordered[..., :-1]).abs() * kept[..., 1:]
    return _half_squared_norm(y, valid, params) + params["lam"] * jumps.sum(-1)


def _oscar_penalty(y, valid, params):
    # sum_{i<j} max(y_i, y_j) = sum_k y_(k) (n - k) over the n kept positions,
    # y_(1) >= y_(2) >= ... (positions outside the support add 0).
    ordered = torch.sort(y, dim=-1, descending=True).values
    n = valid.sum(-1, keepdim=True)
    rank = torch.arange(1, y.shape[-1] + 1, device=y.device)
    oscar = (ordered * (n - rank).clamp(min=0)).sum(-1)
    return _half_squared_norm(y, valid, params) + params["lam"] * oscar


def _half_squared_pnorm(y, valid, params):
    p = params["p"]
    return 0.5 * (y**p).sum(-1) ** (2.0 / p)


def _tsallis_15(y, valid, params):
    return (y**1.5).sum(-1).sub(1.0) / 0.75


_OMEGAS = {
    "softmax": _negative_entropy,
    "sparsemax": _half_squared_norm,
    "fusedmax": _fused_penalty,
    "oscarmax": _oscar_penalty,
    "sq_pnorm_max": _half_squared_pnorm,
    "entmax15": _tsallis_15,
}


def _omega_function(name):
    """The Omega of mapping ``name``; refuses names outside the registry and mappings
    of the registry that have no Omega here."""
    _lookup(name)
    if name not in _OMEGAS:
        raise NotImplementedError(
            f"omega is not defined for mapping {name!r}; it is defined for: "
            f"{', '.join(sorted(_OMEGAS))}"
        )
    return _OMEGAS[name]


def _omega_last(name, y, valid, params):
    """Omega(y) along the last dim; ``params`` holds every parameter of the mapping."""
    return _omega_function(name)(torch.where(valid, y, 0.0), valid, params)


def _check_y(y, dim):
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor, got {y.dtype}")
    if y.dim() == 0:
        raise ValueError("y must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -y.dim() <= dim < y.dim():
        raise ValueError(
            f"dim must be an integer in [{-y.dim()}, {y.dim() - 1}] for y of shape "
            f"{tuple(y.shape)}, got {dim!r}"
        )
    return dim % y.dim()


def omega(y, name, dim=-1, *, mask=None, **params):
    """The regularizer Omega(y) of the mapping ``name``, along ``dim``.

    Parameters
    ----------
    y : torch.Tensor
        Floating-point tensor of distributions along ``dim`` (Omega is meant for
        points of the simplex; it is evaluated as written elsewhere too).
    name : str
        A mapping of ``regattn.MAPPINGS``.
    dim : int, default -1
        The dimension that holds the distributions.
    mask : torch.Tensor of bool, optional
        Broadcastable to ``y``; True where a position takes part. Masked positions
        are treated as 0, and for fusedmax and oscarmax they are left out of the
        penalty (kept positions on either side of a masked one are neighbours).
    **params
        The mapping's own parameters, e.g. ``lam`` for fusedmax or ``p`` for
        sq_pnorm_max, with the mapping's defaults. Not ``gamma``: Omega is the
        regularizer itself, which the mappings scale by gamma.

    Returns
    -------
    torch.Tensor
        Omega of each distribution: ``y``'s shape without ``dim``. Differentiable
        with respect to ``y`` where Omega is (the negative entropy of softmax is
        not at 0).

    Raises
    ------
    ValueError
        For ``gamma``, an unknown name or parameter, a bad ``dim`` or a mask that
        does not broadcast.
    NotImplementedError
        For a mapping of the registry that has no Omega here.
    """
    if "gamma" in params:
        raise ValueError(
            "omega does not take gamma: Omega is the regularizer itself, and the mappings "
            "and max_omega scale it by gamma; drop gamma (it was "
            f"{params['gamma']!r})"
        )
    _omega_function(name)
    dim = _check_y(y, dim)
    mask = F._check_mask(mask, y)
    params = {**mapping_params(name), **_checked_params(name, params)}
    valid = torch.ones_like(y, dtype=torch.bool) if mask is None else mask
    return _omega_last(name, y.movedim(dim, -1), valid.movedim(dim, -1), params)


class _MaxOmega(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, gamma, dim, mask, name, params):
        # gamma is an argument of its own so that a tensor gamma gets its gradient.
        params = {**params, "gamma": gamma}
        y = _lookup(name)(scores, dim=dim, mask=mask, **params)
        valid = scores != -math.inf
        if mask is not None:
            valid = valid & mask
        x = scores.movedim(dim, -1).masked_fill(~valid.movedim(dim, -1), 0.0)
        y_last, valid_last = y.movedim(dim, -1), valid.movedim(dim, -1)
        regularizer = _omega_last(name, y_last, valid_last, params)
        value = (y_last * x).sum(-1) - gamma * regularizer
        # An empty row has no maximiser; its value is defined as 0.
        live = valid_last.any(-1)
        value = torch.where(live, value, 0.0)
        ctx.save_for_backward(scores, y, torch.where(live, regularizer, 0.0))
        ctx.dim, ctx.mask, ctx.name, ctx.params = dim, mask, name, params
        ctx.gamma_shape = gamma.shape if isinstance(gamma, torch.Tensor) else None
        return value

    @staticmethod
    def backward(ctx, grad_value):
        scores, y, regularizer = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph: the gradient must itself be differentiable, and the saved y
            # carries no graph; the mapping, run again, does (its Jacobian is the
            # Hessian of max_Omega).
            y = _lookup(ctx.name)(scores, dim=ctx.dim, mask=ctx.mask, **ctx.params)
        grad_gamma = None
        if ctx.needs_input_grad[1]:
            # Danskin: the derivative of the max in gamma is -Omega at the maximiser.
            grad_gamma = (-grad_value * regularizer).sum_to_size(ctx.gamma_shape)
        return grad_value.unsqueeze(ctx.dim) * y, grad_gamma, None, None, None, None


def max_omega(scores, name, dim=-1, *, mask=None, **params):
    """The smoothed max of ``scores`` along ``dim`` for the mapping ``name``:
    max_{y in simplex} <y, scores> - gamma * Omega(y).

    Its gradient with respect to the scores is the mapping,
    ``get_mapping(name, **params)(scores, dim=dim, mask=mask)``.

    Parameters
    ----------
    scores : torch.Tensor
        Floating-point scores; ``-inf`` marks a position that does not take part.
    name : str
        A mapping of ``regattn.MAPPINGS``.
    dim : int, default -1
        The dimension to take the max along.
    mask : torch.Tensor of bool, optional
        Broadcastable to ``scores``; True where a position takes part.
    **params
        The mapping's parameters, ``gamma`` included, with the mapping's defaults.

    Returns
    -------
    torch.Tensor
        The scores' shape without ``dim``; 0 for a row with no position taking part.
        Half-precision scores are computed in float32 and the result returned in
        their dtype.
    """
    _omega_function(name)
    dim = F._check_scores(scores, dim)
    mask = F._check_mask(mask, scores)
    params = {**mapping_params(name), **_checked_params(name, params)}
    z = scores.to(F._compute_dtype(scores.dtype))
    gamma = params.pop("gamma")
    return _MaxOmega.apply(z, gamma, dim, mask, name, params).to(scores.dtype)
