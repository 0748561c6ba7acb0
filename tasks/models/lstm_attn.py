"""LSTM encoder-decoder with Luong "general" global attention normalised by a regattn
mapping: the paper's translation and summarization model (OpenNMT-py's 2017 defaults).

fairseq's own LSTMEncoder / LSTMDecoder do the work (input feeding included); only the
attention layer is ours. Its weights are returned by the decoder in eval mode, so
``fairseq-generate --print-alignment`` and our evaluation can read them.

    fairseq-train DATA --user-dir tasks --task translation --left-pad-source \\
        --arch lstm_attn_paper --attention-mapping fusedmax --attention-lambda 0.1 ...

(``--left-pad-source`` alone sets left_pad_source=False: it is a store_false flag.)
"""

import argparse
from dataclasses import dataclass, field

import torch
from fairseq.models import (
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.lstm import AttentionLayer, LSTMDecoder, LSTMEncoder
from omegaconf import II

from ..attention import AttentionConfig, build_mapping


@dataclass
class LSTMAttnConfig(AttentionConfig):
    # The defaults are the small `lstm_attn` architecture; the others change a few.
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    encoder_embed_dim: int = field(default=256, metadata={"help": "encoder embedding dim"})
    encoder_hidden_size: int = field(default=256, metadata={"help": "encoder hidden size"})
    encoder_layers: int = field(default=1, metadata={"help": "number of encoder layers"})
    encoder_bidirectional: bool = field(
        default=False, metadata={"help": "make every encoder layer bidirectional"}
    )
    decoder_embed_dim: int = field(default=256, metadata={"help": "decoder embedding dim"})
    decoder_hidden_size: int = field(default=256, metadata={"help": "decoder hidden size"})
    decoder_layers: int = field(
        default=1, metadata={"help": "number of decoder layers (= encoder layers)"}
    )
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "share decoder input and output embeddings"}
    )
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")


class RegattnAttentionLayer(AttentionLayer):
    """fairseq's LSTM attention (Luong et al. 2015, "general" score h_s^T W h_t, then
    tanh(W_c [c; h_t])) with a regattn mapping in place of the softmax."""

    def __init__(self, input_embed_dim, source_embed_dim, output_embed_dim, mapping):
        super().__init__(input_embed_dim, source_embed_dim, output_embed_dim, bias=False)
        self.mapping = mapping  # a regattn.Mapping over dim 0, the source positions

    def forward(self, input, source_hids, encoder_padding_mask):
        # input: bsz x input_embed_dim; source_hids: srclen x bsz x source_embed_dim;
        # encoder_padding_mask: srclen x bsz, True = pad (fairseq's convention).
        scores = (source_hids * self.input_proj(input).unsqueeze(0)).sum(dim=2)
        # regattn wants True = takes part. Pads then get exactly zero weight and, for
        # fusedmax / oscarmax, do not couple with the real positions either.
        valid = None if encoder_padding_mask is None else ~encoder_padding_mask
        attn = self.mapping(scores, mask=valid)  # srclen x bsz, columns sum to 1
        context = (attn.unsqueeze(2) * source_hids).sum(dim=0)
        out = torch.tanh(self.output_proj(torch.cat((context, input), dim=1)))
        return out, attn


class LSTMAttnDecoder(LSTMDecoder):
    """fairseq's LSTMDecoder (input feeding, attention on the last layer) with our
    attention layer. Returns the attention weights (bsz x tgtlen x srclen) in eval
    mode, laid out like the source tokens the task gave the model."""

    def __init__(self, mapping, left_pad_source, **kwargs):
        super().__init__(attention=True, **kwargs)
        # The parent built a softmax AttentionLayer; swap in the same layer, our mapping.
        self.attention = RegattnAttentionLayer(
            self.hidden_size, self.encoder_output_units, self.hidden_size, mapping
        )
        self.left_pad_source = left_pad_source

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None):
        x, attn = super().extract_features(prev_output_tokens, encoder_out, incremental_state)
        if attn is not None and self.left_pad_source:
            attn = right_to_left_padded(attn, encoder_out[3])
        return x, attn


def right_to_left_padded(attn, encoder_padding_mask):
    """LSTMEncoder turns left-padded sources into right-padded ones before packing, so
    the attention columns are right-padded. Move each row's columns back under its
    left-padded source tokens: a roll by the row's pad count (pads have weight 0).

    attn: bsz x tgtlen x srclen; encoder_padding_mask: srclen x bsz, True = pad."""
    srclen = attn.size(2)
    num_pads = encoder_padding_mask.sum(dim=0).unsqueeze(1)  # bsz x 1
    positions = torch.arange(srclen, device=attn.device).unsqueeze(0)  # 1 x srclen
    index = torch.remainder(positions - num_pads, srclen)  # bsz x srclen
    return attn.gather(2, index.unsqueeze(1).expand_as(attn))


@register_model("lstm_attn", dataclass=LSTMAttnConfig)
class LSTMAttnModel(FairseqEncoderDecoderModel):
    @classmethod
    def build_model(cls, cfg, task):
        if isinstance(cfg, argparse.Namespace):
            # Plain argparse options (e.g. task.build_model(args)) hold only what was
            # given or set by an --arch preset; the config's defaults fill the rest.
            cfg = LSTMAttnConfig.from_namespace(cfg)
        mapping = build_mapping(cfg, dim=0)  # first, so a bad option fails fast
        if cfg.encoder_layers != cfg.decoder_layers:
            # The decoder's layer i starts from the encoder's final state of layer i.
            raise ValueError(
                f"encoder_layers ({cfg.encoder_layers}) must equal decoder_layers "
                f"({cfg.decoder_layers})"
            )
        if cfg.share_decoder_input_output_embed and cfg.decoder_embed_dim != (
            cfg.decoder_hidden_size
        ):
            raise ValueError(
                "share_decoder_input_output_embed needs decoder_embed_dim "
                f"({cfg.decoder_embed_dim}) = decoder_hidden_size ({cfg.decoder_hidden_size})"
            )
        encoder = LSTMEncoder(
            dictionary=task.source_dictionary,
            embed_dim=cfg.encoder_embed_dim,
            hidden_size=cfg.encoder_hidden_size,
            num_layers=cfg.encoder_layers,
            dropout_in=cfg.dropout,
            dropout_out=cfg.dropout,
            bidirectional=cfg.encoder_bidirectional,
            max_source_positions=cfg.max_source_positions,
        )
        decoder = LSTMAttnDecoder(
            mapping=mapping,
            left_pad_source=task_left_pads_source(task),
            dictionary=task.target_dictionary,
            embed_dim=cfg.decoder_embed_dim,
            hidden_size=cfg.decoder_hidden_size,
            out_embed_dim=cfg.decoder_hidden_size,  # no extra projection before the output
            num_layers=cfg.decoder_layers,
            dropout_in=cfg.dropout,
            dropout_out=cfg.dropout,
            encoder_output_units=encoder.output_units,
            share_input_output_embed=cfg.share_decoder_input_output_embed,
            max_target_positions=cfg.max_target_positions,
        )
        return cls(encoder, decoder)


def task_left_pads_source(task):
    """Whether the task gives left-padded source tokens (translation's default)."""
    task_cfg = getattr(task, "cfg", None) or getattr(task, "args", None)
    return bool(getattr(task_cfg, "left_pad_source", False))


# Architectures: presets for `--arch` on the fairseq command line. Each sets only what
# differs from LSTMAttnConfig's defaults, and flags given explicitly still win. With
# Hydra, set `model._name=lstm_attn` and the fields themselves: fairseq applies these
# functions to argparse options only.


@register_model_architecture("lstm_attn", "lstm_attn_paper")
def lstm_attn_paper(args):
    """OpenNMT-py 2017 defaults, as in the paper: 2 layers x 500, embeddings 500,
    dropout 0.3, input feeding, unidirectional encoder."""
    args.dropout = getattr(args, "dropout", 0.3)
    for side in ("encoder", "decoder"):
        for name, value in (("embed_dim", 500), ("hidden_size", 500), ("layers", 2)):
            key = f"{side}_{name}"
            setattr(args, key, getattr(args, key, value))


@register_model_architecture("lstm_attn", "lstm_attn_tiny")
def lstm_attn_tiny(args):
    """For tests and smoke runs: one layer of 32."""
    for side in ("encoder", "decoder"):
        for name, value in (("embed_dim", 32), ("hidden_size", 32), ("layers", 1)):
            key = f"{side}_{name}"
            setattr(args, key, getattr(args, key, value))
