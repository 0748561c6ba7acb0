"""The paper's SNLI model (Rocktäschel et al. 2016 attention with GRUs, as in Martins &
Astudillo 2016), with the attention over the premise normalised by a regattn mapping.

    premise     h_1 .. h_L = GRU_p(E premise)
    hypothesis  h_N        = GRU_h(E hypothesis), started from the last premise state
    attention   z_t = v^T tanh(W_p h_t + W_h h_N),   p = mapping(z) over the premise
    summary     r = sum_t p_t h_t,                   u = tanh(W r + W' h_N)
    classes     softmax(C u) over (entailment, neutral, contradiction)

E: word embeddings (optionally GloVe, optionally fixed) projected to the hidden size.
Used with the ``pair_classification`` task and the ``pair_accuracy`` criterion:

    fairseq-train DATA --user-dir tasks --task pair_classification \\
        --criterion pair_accuracy --arch snli_attn --attention-mapping sparsemax ...
"""

import argparse
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from torch import nn

from ..attention import AttentionConfig, build_mapping

logger = logging.getLogger(__name__)

NUM_CLASSES = 3  # entailment, neutral, contradiction (tasks/tasks/pair_classification.py)


@dataclass
class SNLIAttnConfig(AttentionConfig):
    # The defaults are the `snli_attn` architecture: 300-d embeddings (GloVe's size)
    # projected to GRUs of 300 (our choice, as in configs/model/paper.yaml: the
    # paper's hidden size is unverified).
    embed_dim: int = field(default=300, metadata={"help": "word embedding dim"})
    hidden_size: int = field(default=300, metadata={"help": "GRU hidden size"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    glove_path: Optional[str] = field(  # noqa: UP045 (fairseq parses typing.Optional only)
        default=None,
        metadata={"help": "GloVe text file (word v1 .. vD per line) to initialise embeddings"},
    )
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "keep the word embeddings fixed (the paper: GloVe)"}
    )


@register_model("snli_attn", dataclass=SNLIAttnConfig)
class SNLIAttnModel(BaseFairseqModel):
    def __init__(self, cfg, dictionary, mapping):
        super().__init__()
        hidden = cfg.hidden_size
        self.embed_tokens = nn.Embedding(len(dictionary), cfg.embed_dim, dictionary.pad())
        if cfg.glove_path:
            load_glove(cfg.glove_path, dictionary, self.embed_tokens.weight.data)
        self.embed_tokens.weight.requires_grad = not cfg.freeze_embeddings
        self.embed_proj = nn.Linear(cfg.embed_dim, hidden)
        self.premise_rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.hypothesis_rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.W_p = nn.Linear(hidden, hidden, bias=False)  # premise states
        self.W_h = nn.Linear(hidden, hidden)  # last hypothesis state
        self.v = nn.Linear(hidden, 1, bias=False)
        self.W_r = nn.Linear(hidden, hidden, bias=False)  # attended premise summary
        self.W_x = nn.Linear(hidden, hidden)  # last hypothesis state
        self.classifier = nn.Linear(hidden, NUM_CLASSES)
        self.dropout = nn.Dropout(cfg.dropout)
        self.mapping = mapping  # a regattn.Mapping over the last dim, the premise

    @classmethod
    def build_model(cls, cfg, task):
        if isinstance(cfg, argparse.Namespace):
            # Plain argparse options (e.g. task.build_model(args)) hold only what was
            # given or set by an --arch preset; the config's defaults fill the rest.
            cfg = SNLIAttnConfig.from_namespace(cfg)
        return cls(cfg, task.source_dictionary, build_mapping(cfg))

    def encode(self, rnn, tokens, lengths, h0=None):
        """Run ``rnn`` over right-padded ``tokens``: all states (bsz x len x hidden, 0
        at pads) and the state after each sentence's last token (1 x bsz x hidden)."""
        x = self.dropout(self.embed_proj(self.embed_tokens(tokens)))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, last = rnn(packed, h0)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            states, batch_first=True, total_length=tokens.size(1)
        )
        return states, last

    def forward(self, premise_tokens, premise_lengths, hypothesis_tokens, hypothesis_lengths):
        """Class scores (bsz x 3) and ``{"attn": p}``, p (bsz x premise length) the
        attention over the premise tokens: rows sum to 1, exactly 0 at pads."""
        premise_states, premise_last = self.encode(
            self.premise_rnn, premise_tokens, premise_lengths
        )
        _, hypothesis_last = self.encode(
            self.hypothesis_rnn, hypothesis_tokens, hypothesis_lengths, h0=premise_last
        )
        h_n = hypothesis_last.squeeze(0)  # bsz x hidden

        scores = self.v(torch.tanh(self.W_p(premise_states) + self.W_h(h_n).unsqueeze(1)))
        valid = premise_tokens.ne(self.embed_tokens.padding_idx)  # True = takes part
        p = self.mapping(scores.squeeze(2), mask=valid)  # bsz x premise length
        r = torch.bmm(p.unsqueeze(1), premise_states).squeeze(1)  # bsz x hidden
        u = torch.tanh(self.W_r(r) + self.W_x(h_n))
        return self.classifier(self.dropout(u)), {"attn": p}


def load_glove(path, dictionary, weight):
    """Copy the GloVe vectors of the dictionary's words into ``weight`` (in place);
    the other words keep their random initialisation."""
    dim = weight.size(1)
    found = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            # rsplit: a few GloVe "words" contain spaces; the last `dim` fields are numbers.
            parts = line.rstrip().rsplit(" ", dim)
            if len(parts) != dim + 1:
                raise ValueError(
                    f"{path}: expected a word and {dim} numbers per line (embed_dim={dim}), "
                    f"got {len(parts) - 1} numbers on: {line[:60]!r}"
                )
            index = dictionary.index(parts[0])
            if index != dictionary.unk() or parts[0] == dictionary.unk_word:
                weight[index] = torch.tensor([float(v) for v in parts[1:]])
                found += 1
    logger.info("GloVe vectors for %d of %d dictionary words from %s", found, len(dictionary), path)


@register_model_architecture("snli_attn", "snli_attn_tiny")
def snli_attn_tiny(args):
    """For tests and smoke runs: 16-d embeddings and GRUs."""
    args.embed_dim = getattr(args, "embed_dim", 16)
    args.hidden_size = getattr(args, "hidden_size", 16)
