"""The attention options every model of this user dir shares, and the mapping they select.

Each model config inherits ``AttentionConfig``, so every model gets the same flags
(``--attention-mapping fusedmax --attention-lambda 0.1``) and Hydra keys
(``model.attention_mapping=fusedmax``). The mapping itself always comes from regattn.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

import regattn

logger = logging.getLogger(__name__)

MAPPING_CHOICES = ChoiceEnum(list(regattn.MAPPINGS))


@dataclass
class AttentionConfig(FairseqDataclass):
    attention_mapping: MAPPING_CHOICES = field(
        default="softmax",
        metadata={"help": "the regattn mapping that turns attention scores into weights"},
    )
    attention_gamma: float = field(
        default=1.0, metadata={"help": "temperature / regularization strength gamma (> 0)"}
    )
    # typing.Optional, not `float | None`: fairseq only parses the former into flags.
    attention_lambda: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "lam of fusedmax / oscarmax (default: the mapping's own, 0.1 for "
            "fusedmax, 0.01 for oscarmax); ignored by mappings without lam"
        },
    )
    attention_p: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "p in (1, 2] of sq_pnorm_max (default 1.5); ignored by the others"},
    )


def build_mapping(cfg, dim=-1):
    """The regattn mapping (a ``regattn.Mapping`` module normalising along ``dim``)
    that ``cfg``'s attention options select. regattn validates the name and the
    parameters and raises ValueError naming the bad one."""
    # Enum values arrive as str subclasses from argparse and Hydra: pass plain strings.
    name = str(cfg.attention_mapping)
    takes = regattn.mapping_params(name)  # ValueError for an unknown name
    params = {"gamma": cfg.attention_gamma}
    for option, param in (("attention_lambda", "lam"), ("attention_p", "p")):
        value = getattr(cfg, option, None)
        if value is None:
            continue
        if param in takes:
            params[param] = value
        else:
            logger.warning("%s=%s is ignored: %s takes no %s", option, value, name, param)
    return regattn.Mapping(name, dim=dim, **params)
