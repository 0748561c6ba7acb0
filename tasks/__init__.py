"""fairseq user dir of regattn: models, tasks and criterions whose attention is a
regattn mapping. Pass ``--user-dir tasks`` to every fairseq command (train, generate,
validate); see tasks/README.md.

fairseq imports this package as ``tasks`` and then only its models/ and tasks/
folders, so everything is imported here (criterions included). Inside the package
use relative imports only: importing it under a second name would register every
model twice, which fairseq rejects.
"""

import argparse
import logging

_root_level_before_fairseq = logging.getLogger().level
import fairseq.models  # noqa: E402, F401
import torch  # noqa: E402

# Importing fairseq's models runs logging.basicConfig(level=logging.DEBUG) (in
# fairseq/models/wav2vec/wav2vec2_classification.py), after which every library's
# debug messages reach stderr (hundreds of matplotlib font lookups per figure).
# fairseq's own commands log at INFO: restore that, unless DEBUG was asked for.
if logging.getLogger().level == logging.DEBUG and _root_level_before_fairseq != logging.DEBUG:
    logging.getLogger().setLevel(logging.INFO)

from .criterions import pair_accuracy  # noqa: E402, F401
from .models import lstm_attn, snli_attn, transformer_regattn  # noqa: E402, F401
from .tasks import pair_classification  # noqa: E402, F401

# torch >= 2.6 loads checkpoints with weights_only=True, which rejects the
# argparse.Namespace that fairseq stores for argparse-configured components.
torch.serialization.add_safe_globals([argparse.Namespace])
