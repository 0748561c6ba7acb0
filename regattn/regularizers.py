"""The regularizers Omega and the smoothed max

    max_Omega(x) = max_{y in simplex} <y, x> - gamma * Omega(y),

whose gradient is the mapping y = Pi_Omega(x) (Niculae & Blondel 2017, section 2).
Useful for Fenchel-Young losses and for checking a mapping against its definition.
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


def omega(name, y, valid, gamma=1.0, **params):
    """Omega(y) along the last dim for the mapping ``name``; ``valid`` marks the
    positions that take part (a bool tensor of y's shape)."""
    params = {**mapping_params(name), **_checked_params(name, params)}
    y = torch.where(valid, y, 0.0)
    squared = 0.5 * (y * y).sum(-1)
    if name == "softmax":
        return torch.special.xlogy(y, y).sum(-1)
    if name == "sparsemax":
        return squared
    if name == "fusedmax":
        ordered, kept = _kept_first(y, valid)
        jumps = (ordered[..., 1:] - ordered[..., :-1]).abs() * kept[..., 1:]
        return squared + params["lam"] * jumps.sum(-1)
    if name == "oscarmax":
        # sum_{i<j} max(y_i, y_j) = sum_k y_(k) (n - k) over the n kept positions,
        # y_(1) >= y_(2) >= ... (positions outside the support add 0).
        ordered = torch.sort(y, dim=-1, descending=True).values
        n = valid.sum(-1, keepdim=True)
        rank = torch.arange(1, y.shape[-1] + 1, device=y.device)
        return squared + params["lam"] * (ordered * (n - rank).clamp(min=0)).sum(-1)
    if name == "sq_pnorm_max":
        p = params["p"]
        return 0.5 * (y**p).sum(-1) ** (2.0 / p)
    if name == "entmax15":
        return (y**1.5).sum(-1).sub(1.0) / 0.75
    raise AssertionError(name)


class _MaxOmega(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, dim, mask, name, params):
        y = _lookup(name)(scores, dim=dim, mask=mask, **params)
        valid = scores != -math.inf
        if mask is not None:
            valid = valid & mask
        x = scores.movedim(dim, -1).masked_fill(~valid.movedim(dim, -1), 0.0)
        y_last, valid_last = y.movedim(dim, -1), valid.movedim(dim, -1)
        value = (y_last * x).sum(-1) - params["gamma"] * omega(name, y_last, valid_last, **params)
        # An empty row has no maximiser; its value is defined as 0.
        value = torch.where(valid_last.any(-1), value, 0.0)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return value

    @staticmethod
    def backward(ctx, grad_value):
        (y,) = ctx.saved_tensors
        return grad_value.unsqueeze(ctx.dim) * y, None, None, None, None


def max_omega(scores, name, dim=-1, mask=None, **params):
    """The smoothed max of ``scores`` along ``dim`` for the mapping ``name``; its
    gradient with respect to the scores is ``get_mapping(name, **params)(scores)``.

    Returns a tensor of the scores' shape without ``dim``.
    """
    dim = F._check_scores(scores, dim)
    mask = F._check_mask(mask, scores)
    params = {**mapping_params(name), **_checked_params(name, params)}
    return _MaxOmega.apply(scores, dim, mask, name, params)
