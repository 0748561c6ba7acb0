"""regattn: sparse and structured regularized attention mappings for PyTorch.

Niculae & Blondel, "A Regularized Framework for Sparse and Structured Neural
Attention" (NIPS 2017). Every mapping sends scores to probability distributions:

    y = argmax_{y in simplex} <y, scores> - gamma * Omega(y)

>>> import torch, regattn
>>> regattn.fusedmax(torch.tensor([1.0, 2.1, 1.9]), lam=0.1)
tensor([0.0000, 0.5000, 0.5000])
"""

from . import losses, nn
from .dot_product import attention
from .functional import entmax15, fusedmax, oscarmax, softmax, sparsemax, sq_pnorm_max
from .losses import FenchelYoungLoss, fenchel_young_loss
from .registry import MAPPINGS, Mapping, get_mapping, mapping_params
from .regularizers import max_omega, omega

__all__ = [
    "MAPPINGS",
    "FenchelYoungLoss",
    "Mapping",
    "attention",
    "entmax15",
    "fenchel_young_loss",
    "fusedmax",
    "get_mapping",
    "losses",
    "mapping_params",
    "max_omega",
    "nn",
    "omega",
    "oscarmax",
    "softmax",
    "sparsemax",
    "sq_pnorm_max",
]
