"""fairseq user dir of regattn: models, tasks and criterions whose attention is a
regattn mapping. Pass ``--user-dir tasks`` to every fairseq command (train, generate,
validate); see tasks/README.md.

fairseq imports this package as ``tasks`` and then only its models/ and tasks/
folders, so everything is imported here (criterions included). Inside the package
use relative imports only: importing it under a second name would register every
model twice, which fairseq rejects.
"""

import argparse

import torch

from .criterions import pair_accuracy  # noqa: F401
from .models import lstm_attn, snli_attn, transformer_regattn  # noqa: F401
from .tasks import pair_classification  # noqa: F401

# torch >= 2.6 loads checkpoints with weights_only=True, which rejects the
# argparse.Namespace that fairseq stores for argparse-configured components.
torch.serialization.add_safe_globals([argparse.Namespace])
