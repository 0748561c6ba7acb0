"""Mappings by name: the registry, ``get_mapping`` and the ``Mapping`` module."""

import functools
import inspect

import torch

from . import functional as F

MAPPINGS = {
    "softmax": F.softmax,
    "sparsemax": F.sparsemax,
    "fusedmax": F.fusedmax,
    "oscarmax": F.oscarmax,
    "sq_pnorm_max": F.sq_pnorm_max,
    "entmax15": F.entmax15,
}


def mapping_params(name):
    """The parameters a mapping takes (beyond scores, dim and mask), with their
    defaults.

    Parameters
    ----------
    name : str
        A mapping of ``MAPPINGS``.

    Returns
    -------
    dict
        Parameter name to default, e.g. ``{"gamma": 1.0, "lam": 0.1}`` for fusedmax.
    """
    function = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.name not in ("scores", "dim", "mask")
    }


def _lookup(name):
    if name not in MAPPINGS:
        raise ValueError(
            f"unknown mapping {name!r}; valid mappings are: {', '.join(sorted(MAPPINGS))}"
        )
    return MAPPINGS[name]


def _checked_params(name, params):
    allowed = mapping_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"mapping {name!r} does not take {', '.join(unknown)}; its parameters are: "
            f"{', '.join(allowed)}"
        )
    return {key: F.PARAM_CHECKS[key](value) for key, value in params.items()}


def get_mapping(name, **params):
    """The mapping ``name`` with its parameters bound.

    Parameters
    ----------
    name : str
        A mapping of ``MAPPINGS``; an unknown name raises ValueError listing them.
    **params
        Its parameters (see ``mapping_params``), validated here.

    Returns
    -------
    callable
        ``f(scores, dim=-1, mask=None)``.
    """
    function = _lookup(name)
    return functools.partial(function, **_checked_params(name, params))


class Mapping(torch.nn.Module):
    """A mapping as a module: ``Mapping("fusedmax", lam=0.1)(scores, mask=valid)``.

    Parameters
    ----------
    name : str
        A mapping of ``MAPPINGS``.
    dim : int, default -1
        The dimension the distributions run along.
    **params
        The mapping's parameters; a ``torch.nn.Parameter`` (a learnable gamma or
        lam) is registered as a parameter of the module.
    """

    def __init__(self, name, dim=-1, **params):
        super().__init__()
        self.function = get_mapping(name, **params)
        self.name = name
        self.dim = dim
        self.params = {**mapping_params(name), **self.function.keywords}
        # A learnable parameter belongs to the module, so that optimizers and state
        # dicts see it (e.g. gamma=torch.nn.Parameter(torch.ones(heads, 1)) for
        # scores of shape (batch, heads, queries, keys)).
        for key, value in params.items():
            if isinstance(value, torch.nn.Parameter):
                self.register_parameter(key, value)

    def forward(self, scores, mask=None):
        return self.function(scores, dim=self.dim, mask=mask)

    def extra_repr(self):
        params = ", ".join(f"{key}={value}" for key, value in self.params.items())
        return f"{self.name!r}, dim={self.dim}, {params}"
