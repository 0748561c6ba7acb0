"""Fenchel-Young losses of the regularized mappings (Blondel, Martins & Niculae,
"Learning with Fenchel-Young Losses", JMLR 2020).

For a mapping Pi_Omega(x) = argmax_{y in simplex} <y, x> - gamma * Omega(y), the loss
of scores x against a target distribution y_true is

    L(x; y_true) = max_Omega(x) + gamma * Omega(y_true) - <x, y_true>,

with max_Omega(x) = max_{y in simplex} <y, x> - gamma * Omega(y). It is >= 0, is 0
exactly when Pi_Omega(x) = y_true (the Omegas here are strictly convex), and its
gradient in x is Pi_Omega(x) - y_true. With softmax it is the cross-entropy (the
Kullback-Leibler divergence for a distribution target), with sparsemax the
sparsemax loss of Martins & Astudillo (2016).
"""

import math
import numbers

import torch

from . import functional as F
from .registry import _checked_params, mapping_params
from .regularizers import _omega_function, _omega_last, max_omega

REDUCTIONS = ("none", "sum", "mean")


def _check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    return reduction


def _check_ignore_index(ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    return int(ignore_index)


def _loss_params(name, params):
    """All the mapping's parameters, defaults filled in, after the name is checked."""
    _omega_function(name)
    return {**mapping_params(name), **_checked_params(name, params)}


def _first_index(flags):
    """The index (a tuple) of the first True in ``flags``."""
    return tuple(int(i) for i in flags.nonzero()[0])


def _class_target(target, valid, dim, ignore_index):
    """One-hot rows (dim last) for the class indices in ``target``, and which rows
    have a target. ``valid`` has dim last."""
    expected = valid.shape[:-1]
    n = valid.shape[-1]
    if target.shape != expected:
        hint = ""
        if target.shape == valid.movedim(-1, dim).shape:
            hint = "; for a distribution target pass a floating-point tensor"
        raise ValueError(
            f"a class-index target must have the scores' shape without dim {dim}, "
            f"{tuple(expected)}, got {tuple(target.shape)}{hint}"
        )
    target = target.long()  # gather takes int64 indices
    has_target = target != ignore_index
    out_of_range = has_target & ((target < 0) | (target >= n))
    if out_of_range.any():
        index = _first_index(out_of_range)
        raise ValueError(
            f"target class {int(target[index])} at index {index} is out of range for "
            f"{n} classes along dim {dim}: allowed are 0 to {n - 1}, or "
            f"ignore_index={ignore_index}"
        )
    classes = torch.where(has_target, target, 0).unsqueeze(-1)
    masked_out = has_target & ~valid.gather(-1, classes).squeeze(-1)
    if masked_out.any():
        index = _first_index(masked_out)
        raise ValueError(
            f"target class {int(target[index])} at index {index} is masked out (mask "
            "False or score -inf): a target class must be a position that takes part, "
            f"or ignore_index={ignore_index}"
        )
    rows = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
    rows.scatter_(-1, classes, has_target.unsqueeze(-1))
    return rows, has_target


def _distribution_target(target, scores, valid, dim):
    """Validate a distribution target (``valid`` has dim last) and say which rows
    have a target: those with a position that takes part."""
    if target.shape != scores.shape:
        raise ValueError(
            f"a distribution target must have the scores' shape {tuple(scores.shape)}, got "
            f"{tuple(target.shape)}; for class indices pass an integer tensor of shape "
            f"{tuple(valid.shape[:-1])}"
        )
    bad = ~(target.detach() >= 0) | (target.detach() == math.inf)  # negative, NaN, +inf
    if bad.any():
        index = _first_index(bad)
        raise ValueError(
            f"a distribution target must be finite and >= 0, got {float(target[index])!r} "
            f"at index {index}"
        )
    values = target.detach().movedim(dim, -1)
    leaked = (values != 0) & ~valid
    if leaked.any():
        index = _first_index(leaked.movedim(-1, dim))
        raise ValueError(
            f"the target puts mass on position {index}, which is masked out (mask False or "
            "score -inf): a distribution target must be 0 where a position does not take part"
        )
    has_target = valid.any(-1)
    # Loose enough for a target computed in float32 or half precision and cast.
    tolerance = max(1e-4, math.sqrt(torch.finfo(values.dtype).eps))
    off = has_target & ((values.sum(-1) - 1).abs() > tolerance)
    if off.any():
        index = _first_index(off)
        raise ValueError(
            f"a distribution target must sum to 1 along dim {dim} (to within {tolerance:.1e}), "
            f"got {float(values.sum(-1)[index])!r} for the row at {index} of the other dims"
        )
    return has_target


def fenchel_young_loss(
    scores, target, name, dim=-1, *, mask=None, ignore_index=-100, reduction="mean", **params
):
    """The Fenchel-Young loss of the mapping ``name``:
    max_Omega(scores) + gamma * Omega(y_true) - <scores, y_true>.

    Parameters
    ----------
    scores : torch.Tensor
        Floating-point scores; ``-inf`` marks a position that does not take part.
    target : torch.Tensor
        Either class indices, an integer tensor of the scores' shape without ``dim``
        (y_true is the one-hot vector of the class), or distributions, a
        floating-point tensor of the scores' shape (finite, >= 0, summing to 1 along
        ``dim`` and 0 where a position does not take part).
    name : str
        A mapping of ``regattn.MAPPINGS``.
    dim : int, default -1
        The dimension of the classes.
    mask : torch.Tensor of bool, optional
        Broadcastable to ``scores``; True where a position takes part. A class
        target must take part.
    ignore_index : int, default -100
        For class targets: positions of ``target`` equal to it contribute 0 and are
        left out of the mean.
    reduction : {"none", "sum", "mean"}, default "mean"
        "none" gives a loss per target (the scores' shape without ``dim``); "mean"
        averages over the targets that count: class indices other than
        ``ignore_index``, distributions over a row with a position that takes part.
        When no target counts the mean is 0, with a zero gradient (torch's
        ``cross_entropy`` gives NaN), so that a batch of padding changes nothing.
    **params
        The mapping's parameters, ``gamma`` included, with the mapping's defaults.

    Returns
    -------
    torch.Tensor
        The loss, in the scores' dtype (half precision is computed in float32). Its
        gradient with respect to the scores is ``Pi_Omega(scores) - y_true`` (0 at
        ignored targets and at positions that do not take part); with respect to a
        distribution target it is ``gamma * grad Omega(y_true) - scores``, where
        Omega is differentiable (for softmax, where the target is > 0).
    """
    params = _loss_params(name, params)
    reduction = _check_reduction(reduction)
    ignore_index = _check_ignore_index(ignore_index)
    dim = F._check_scores(scores, dim)
    mask = F._check_mask(mask, scores)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != scores.device:
        raise ValueError(
            f"target is on {target.device} but scores are on {scores.device}: put both on "
            "the same device"
        )
    x = scores.to(F._compute_dtype(scores.dtype))
    valid = x != -math.inf
    if mask is not None:
        valid = valid & mask
    valid_last = valid.movedim(dim, -1)
    if target.is_floating_point():
        has_target = _distribution_target(target, scores, valid_last, dim)
        y_true = target.movedim(dim, -1).to(x.dtype)
    elif target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            "target must be class indices (an integer tensor) or distributions (a "
            f"floating-point tensor), got {target.dtype}"
        )
    else:
        rows, has_target = _class_target(target, valid_last, dim, ignore_index)
        y_true = rows.to(x.dtype)
    x_last = x.movedim(dim, -1)
    # max_omega's gradient is Pi_Omega(x) and the linear term's is -y_true; -inf and
    # masked scores are zeroed first, as they meet only y_true = 0 and must get no
    # gradient.
    linear = (torch.where(valid_last, x_last, 0.0) * y_true).sum(-1)
    loss = (
        max_omega(x, name, dim, mask=mask, **params)
        + params["gamma"] * _omega_last(name, y_true, valid_last, params)
        - linear
    )
    loss = torch.where(has_target, loss, 0.0)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / has_target.sum().clamp(min=1)
    return loss.to(scores.dtype)


class FenchelYoungLoss(torch.nn.Module):
    """The Fenchel-Young loss of a mapping as a module:
    ``FenchelYoungLoss("sparsemax")(scores, target)``.

    Parameters
    ----------
    name : str
        A mapping of ``regattn.MAPPINGS``.
    dim : int, default -1
        The dimension of the classes.
    ignore_index : int, default -100
        Class targets equal to it contribute 0 and are left out of the mean.
    reduction : {"none", "sum", "mean"}, default "mean"
        As in ``fenchel_young_loss``.
    **params
        The mapping's parameters, ``gamma`` included; validated here.

    See Also
    --------
    fenchel_young_loss : the loss, its targets and its gradients.
    """

    def __init__(self, name, dim=-1, ignore_index=-100, reduction="mean", **params):
        super().__init__()
        self.params = _loss_params(name, params)
        self.name = name
        self.dim = dim
        self.ignore_index = _check_ignore_index(ignore_index)
        self.reduction = _check_reduction(reduction)

    def forward(self, scores, target, mask=None):
        """The loss of ``scores`` against ``target`` (class indices or distributions),
        with an optional bool ``mask`` (True = take part)."""
        return fenchel_young_loss(
            scores,
            target,
            self.name,
            self.dim,
            mask=mask,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            **self.params,
        )

    def extra_repr(self):
        params = ", ".join(f"{key}={value}" for key, value in self.params.items())
        return (
            f"{self.name!r}, dim={self.dim}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, {params}"
        )


def sparsemax_loss(scores, target, dim=-1, **kwargs):
    """The sparsemax loss (Martins & Astudillo, 2016):
    ``fenchel_young_loss(scores, target, "sparsemax", dim, **kwargs)``."""
    return fenchel_young_loss(scores, target, "sparsemax", dim, **kwargs)


def fusedmax_loss(scores, target, dim=-1, **kwargs):
    """``fenchel_young_loss(scores, target, "fusedmax", dim, **kwargs)``; ``lam``
    is fusedmax's."""
    return fenchel_young_loss(scores, target, "fusedmax", dim, **kwargs)


def oscarmax_loss(scores, target, dim=-1, **kwargs):
    """``fenchel_young_loss(scores, target, "oscarmax", dim, **kwargs)``; ``lam``
    is oscarmax's."""
    return fenchel_young_loss(scores, target, "oscarmax", dim, **kwargs)


def sq_pnorm_max_loss(scores, target, dim=-1, **kwargs):
    """``fenchel_young_loss(scores, target, "sq_pnorm_max", dim, **kwargs)``; ``p``
    is sq_pnorm_max's."""
    return fenchel_young_loss(scores, target, "sq_pnorm_max", dim, **kwargs)


def entmax15_loss(scores, target, dim=-1, **kwargs):
    """The 1.5-entmax loss (Peters et al., 2019):
    ``fenchel_young_loss(scores, target, "entmax15", dim, **kwargs)``."""
    return fenchel_young_loss(scores, target, "entmax15", dim, **kwargs)


def softmax_loss(scores, target, dim=-1, **kwargs):
    """The cross-entropy of softmax(scores / gamma), minus the target's entropy for a
    distribution target: ``fenchel_young_loss(scores, target, "softmax", dim, **kwargs)``."""
    return fenchel_young_loss(scores, target, "softmax", dim, **kwargs)
