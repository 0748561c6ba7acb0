"""fairseq's transformer whose encoder-decoder attention is normalised by a regattn
mapping (beyond the paper, which used LSTMs).

Only the cross attention of each decoder layer changes: self-attention stays softmax.
Each head normalises its scores over the source positions with the mapping, pads
excluded exactly.

    fairseq-train DATA --user-dir tasks --task translation \\
        --arch transformer_regattn --attention-mapping sparsemax ...
"""

import argparse
import dataclasses
from dataclasses import dataclass, field

import torch
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModelBase
from fairseq.models.transformer import base_architecture as transformer_defaults
from fairseq.modules import MultiheadAttention
from omegaconf import II

from ..attention import AttentionConfig, build_mapping


@dataclass
class TransformerRegattnConfig(AttentionConfig):
    # The defaults are the small `transformer_regattn` architecture (3 + 3 layers x 256).
    # Everything not listed here takes fairseq's transformer default.
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the attention weights"}
    )
    activation_dropout: float = field(
        default=0.0, metadata={"help": "dropout after the FFN activation"}
    )
    encoder_embed_dim: int = field(default=256, metadata={"help": "encoder embedding dim"})
    encoder_ffn_embed_dim: int = field(default=1024, metadata={"help": "encoder FFN dim"})
    encoder_layers: int = field(default=3, metadata={"help": "number of encoder layers"})
    encoder_attention_heads: int = field(default=4, metadata={"help": "encoder heads"})
    decoder_embed_dim: int = field(default=256, metadata={"help": "decoder embedding dim"})
    decoder_ffn_embed_dim: int = field(default=1024, metadata={"help": "decoder FFN dim"})
    decoder_layers: int = field(default=3, metadata={"help": "number of decoder layers"})
    decoder_attention_heads: int = field(default=4, metadata={"help": "decoder heads"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "share decoder input and output embeddings"}
    )
    share_all_embeddings: bool = field(
        default=False, metadata={"help": "share encoder, decoder and output embeddings"}
    )
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")


class RegattnMultiheadAttention(MultiheadAttention):
    """Encoder-decoder multi-head attention whose weights are a regattn mapping of
    the scaled dot-product scores, over the keys, for every head."""

    def __init__(self, embed_dim, num_heads, mapping, kdim=None, vdim=None, dropout=0.0):
        super().__init__(
            embed_dim,
            num_heads,
            kdim=kdim,
            vdim=vdim,
            dropout=dropout,
            encoder_decoder_attention=True,
        )
        self.mapping = mapping  # a regattn.Mapping over the last dim, the keys

    @classmethod
    def replacing(cls, attention, mapping):
        """The same layer as fairseq's ``attention``, same weights, our normaliser."""
        new = cls(
            attention.embed_dim,
            attention.num_heads,
            mapping,
            kdim=attention.kdim,
            vdim=attention.vdim,
            dropout=attention.dropout_module.p,
        )
        new.load_state_dict(attention.state_dict())
        return new

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        incremental_state=None,
        need_weights=True,
        static_kv=False,
        attn_mask=None,
        before_softmax=False,
        need_head_weights=False,
    ):
        # fairseq computes the scaled scores (bsz * heads) x tgtlen x srclen, pads at
        # -inf, and the values, caching keys and values for incremental decoding.
        # static_kv=True: encoder keys never change during decoding (fairseq's decoder
        # passes True too), and it keeps fairseq off its fused torch path, which would
        # ignore before_softmax and apply a softmax.
        scores, v = super().forward(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            incremental_state=incremental_state,
            need_weights=False,
            static_kv=True,
            attn_mask=attn_mask,
            before_softmax=True,
        )
        if before_softmax:
            return scores, v

        tgt_len, bsz, _ = query.shape
        src_len = scores.size(-1)
        scores = scores.view(bsz, self.num_heads, tgt_len, src_len)
        valid = None
        if key_padding_mask is not None:
            # fairseq: bsz x srclen, True = pad; regattn: True = takes part.
            valid = ~key_padding_mask.bool().view(bsz, 1, 1, src_len)
        probs = self.mapping(scores, mask=valid)
        probs = probs.view(bsz * self.num_heads, tgt_len, src_len)
        dropped = self.dropout_module(probs)

        kv_bsz = v.size(0) // self.num_heads
        if kv_bsz != bsz:
            # Beam search with fairseq's shared encoder keys: one set per sentence,
            # bsz = kv_bsz * beam (as in MultiheadAttention.forward).
            out = torch.einsum(
                "bxhts,bhsd->bxhtd",
                dropped.view(kv_bsz, -1, self.num_heads, tgt_len, src_len),
                v.view(kv_bsz, self.num_heads, src_len, self.head_dim),
            ).reshape(bsz * self.num_heads, tgt_len, self.head_dim)
        else:
            out = torch.bmm(dropped, v)
        out = out.transpose(0, 1).reshape(tgt_len, bsz, self.embed_dim)
        out = self.out_proj(out)

        weights = None
        if need_weights or need_head_weights:
            weights = probs.view(bsz, self.num_heads, tgt_len, src_len).transpose(1, 0)
            if not need_head_weights:
                weights = weights.mean(dim=0)  # bsz x tgtlen x srclen, like fairseq
        return out, weights


@register_model("transformer_regattn", dataclass=TransformerRegattnConfig)
class TransformerRegattnModel(TransformerModelBase):
    @classmethod
    def add_args(cls, parser):
        # TransformerModelBase would add the flags of its own config; ours are these
        # (no defaults, so that `--arch` presets can fill the options not given).
        gen_parser_from_dataclass(parser, TransformerRegattnConfig(), delete_default=True)

    @classmethod
    def build_model(cls, cfg, task):
        if isinstance(cfg, argparse.Namespace):
            # Plain argparse options (e.g. task.build_model(args)) hold only what was
            # given or set by an --arch preset; the config's defaults fill the rest.
            cfg = TransformerRegattnConfig.from_namespace(cfg)
        mapping = build_mapping(cfg)  # first, so a bad option fails fast
        # fairseq's transformer reads a hierarchical TransformerConfig; fill the options
        # we do not expose with fairseq's own defaults, then convert.
        names = [f.name for f in dataclasses.fields(TransformerRegattnConfig)]
        args = argparse.Namespace(**{name: getattr(cfg, name) for name in names})
        transformer_defaults(args)
        model = super().build_model(TransformerConfig.from_namespace(args), task)
        for layer in model.decoder.layers:
            layer.encoder_attn = RegattnMultiheadAttention.replacing(layer.encoder_attn, mapping)
        return model


# Architectures: presets for `--arch` on the fairseq command line (see lstm_attn.py).


@register_model_architecture("transformer_regattn", "transformer_regattn_tiny")
def transformer_regattn_tiny(args):
    """For tests and smoke runs: 1 + 1 layers x 32, 2 heads."""
    for side in ("encoder", "decoder"):
        for name, value in (
            ("embed_dim", 32),
            ("ffn_embed_dim", 64),
            ("layers", 1),
            ("attention_heads", 2),
        ):
            key = f"{side}_{name}"
            setattr(args, key, getattr(args, key, value))
