"""The models of the fairseq user dir (tasks/), in process, for every mapping: padding is
excluded exactly, weights sum to 1, gradients flow, beam search runs, and with softmax
each attention layer reproduces fairseq's own."""

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import options, utils
from fairseq.data import Dictionary
from fairseq.models.lstm import AttentionLayer
from fairseq.modules import MultiheadAttention
from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks.translation import TranslationConfig, TranslationTask

import regattn

# fairseq imports the user dir as the module `tasks`; do the same (one module name).
USER_DIR = Path(__file__).resolve().parents[1] / "tasks"
utils.import_user_module(argparse.Namespace(user_dir=str(USER_DIR)))

from tasks.attention import build_mapping  # noqa: E402
from tasks.models.lstm_attn import (  # noqa: E402
    LSTMAttnConfig,
    LSTMAttnModel,
    RegattnAttentionLayer,
)
from tasks.models.snli_attn import SNLIAttnConfig, SNLIAttnModel  # noqa: E402
from tasks.models.transformer_regattn import (  # noqa: E402
    RegattnMultiheadAttention,
    TransformerRegattnConfig,
    TransformerRegattnModel,
)

# Every mapping, with a parameter that makes the structured ones fuse at this size.
ATTENTION = {
    "softmax": {},
    "sparsemax": {},
    "fusedmax": {"attention_lambda": 0.3},
    "oscarmax": {"attention_lambda": 0.05},
    "sq_pnorm_max": {"attention_p": 1.5},
    "entmax15": {},
}
MAPPINGS = list(regattn.MAPPINGS)
assert set(ATTENTION) == set(MAPPINGS)

SOURCE_LENGTHS = [7, 5, 2]  # with </s>; sorted longest first, as fairseq batches them
TARGET_LENGTH = 4


def attention(name):
    return {"attention_mapping": name, "attention_gamma": 1.0, **ATTENTION[name]}


def make_dictionary(words=20):
    dictionary = Dictionary()
    for i in range(words):
        dictionary.add_symbol(f"w{i}")
    dictionary.finalize()
    return dictionary


def translation_task(left_pad_source=False):
    dictionary = make_dictionary()
    cfg = TranslationConfig(left_pad_source=left_pad_source)
    return TranslationTask(cfg, dictionary, dictionary)


def sentences(dictionary, lengths, seed=0):
    """Random sentences of the given lengths, </s> last."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.arange(dictionary.nspecial, len(dictionary))
    return [
        torch.cat(
            [words[torch.randint(len(words), (n - 1,), generator=generator)], torch.tensor([2])]
        )
        for n in lengths
    ]


def collate(tokens, pad, left=False):
    """Pad sentences into a batch, on the right (or the left)."""
    width = max(len(t) for t in tokens)
    out = torch.full((len(tokens), width), pad, dtype=torch.long)
    for row, t in enumerate(tokens):
        if left:
            out[row, width - len(t) :] = t
        else:
            out[row, : len(t)] = t
    return out


def translation_batch(dictionary, left=False):
    src = sentences(dictionary, SOURCE_LENGTHS)
    tgt = sentences(dictionary, [TARGET_LENGTH] * len(SOURCE_LENGTHS), seed=1)
    # prev_output_tokens: </s> first, then the target shifted right
    prev = torch.stack([torch.cat([t[-1:], t[:-1]]) for t in tgt])
    return {
        "src_tokens": collate(src, dictionary.pad(), left=left),
        "src_lengths": torch.tensor(SOURCE_LENGTHS),
        "prev_output_tokens": prev,
    }, src


def build_lstm(name, task=None, **overrides):
    task = task or translation_task()
    sizes = {"encoder_embed_dim": 16, "encoder_hidden_size": 16}
    sizes |= {"decoder_embed_dim": 16, "decoder_hidden_size": 16}
    cfg = LSTMAttnConfig(
        **sizes, **attention(name), max_source_positions=64, max_target_positions=64
    )
    cfg = dataclasses.replace(cfg, **overrides)
    return LSTMAttnModel.build_model(cfg, task), task


TINY = {"embed_dim": 16, "ffn_embed_dim": 32, "layers": 1, "attention_heads": 2}


def build_transformer(name, task=None):
    task = task or translation_task()
    sizes = {f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in TINY.items()}
    cfg = TransformerRegattnConfig(
        **sizes, **attention(name), max_source_positions=64, max_target_positions=64
    )
    return TransformerRegattnModel.build_model(cfg, task), task


def spread(model):
    """Larger random weights than fairseq's +-0.1 init: attention scores then differ
    enough for the sparse mappings to pick supports (instead of fusing everything
    into a uniform distribution, whose gradient is zero)."""
    torch.manual_seed(0)
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.5)
    return model


def check_distributions(weights, valid):
    """weights: (..., positions), valid: broadcastable bool; exact zeros at pads."""
    valid = valid.expand_as(weights)
    assert torch.all(weights[~valid] == 0), "padding got attention weight"
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


# ----------------------------------------------------------------------- lstm_attn


@pytest.mark.parametrize("name", MAPPINGS)
def test_lstm_attention_excludes_padding(name):
    torch.manual_seed(0)
    model, task = build_lstm(name)
    spread(model).eval()
    batch, src = translation_batch(task.source_dictionary)
    _, attn = model(**batch)  # bsz x tgtlen x srclen
    valid = batch["src_tokens"].ne(task.source_dictionary.pad()).unsqueeze(1)
    check_distributions(attn, valid)

    # A sentence gets the same attention alone as in a padded batch: pads do not
    # couple with real positions (fusedmax / oscarmax would show it).
    for row, tokens in enumerate(src):
        _, alone = model(
            tokens.unsqueeze(0),
            torch.tensor([len(tokens)]),
            batch["prev_output_tokens"][row : row + 1],
        )
        torch.testing.assert_close(attn[row, :, : len(tokens)], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MAPPINGS)
def test_lstm_trains(name):
    torch.manual_seed(0)
    model, task = build_lstm(name, encoder_bidirectional=True, encoder_layers=2, decoder_layers=2)
    spread(model).train()
    batch, _ = translation_batch(task.source_dictionary)
    logits, attn = model(**batch)
    assert attn is None  # fairseq's LSTMDecoder returns attention in eval mode only
    logits.logsumexp(-1).sum().backward()
    grad = model.decoder.attention.input_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_lstm_left_padded_source_lines_up_with_tokens():
    """With left-padded sources (translation's default) the attention columns still
    sit under their source tokens."""
    torch.manual_seed(0)
    right_model, task = build_lstm("fusedmax")
    left_model, left_task = build_lstm("fusedmax", task=translation_task(left_pad_source=True))
    left_model.load_state_dict(right_model.state_dict())
    assert left_model.decoder.left_pad_source and not right_model.decoder.left_pad_source
    right_model.eval()
    left_model.eval()
    right_batch, _ = translation_batch(task.source_dictionary)
    left_batch, _ = translation_batch(task.source_dictionary, left=True)
    _, right_attn = right_model(**right_batch)
    _, left_attn = left_model(**left_batch)
    pad = task.source_dictionary.pad()
    for row in range(len(SOURCE_LENGTHS)):
        right_valid = right_batch["src_tokens"][row].ne(pad)
        left_valid = left_batch["src_tokens"][row].ne(pad)
        torch.testing.assert_close(
            left_attn[row][:, left_valid], right_attn[row][:, right_valid], atol=1e-6, rtol=0
        )
        assert torch.all(left_attn[row][:, ~left_valid] == 0)


def test_lstm_softmax_layer_is_fairseqs():
    torch.manual_seed(0)
    ours = RegattnAttentionLayer(8, 6, 8, regattn.Mapping("softmax", dim=0))
    theirs = AttentionLayer(8, 6, 8, bias=False)
    theirs.load_state_dict(ours.state_dict())
    hidden, source = torch.randn(3, 8), torch.randn(5, 3, 6)
    pads = torch.zeros(5, 3, dtype=torch.bool)
    pads[3:, 1] = True
    pads[1:, 2] = True
    for a, b in zip(ours(hidden, source, pads), theirs(hidden, source, pads), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", MAPPINGS)
def test_lstm_beam_search(name):
    torch.manual_seed(0)
    model, task = build_lstm(name)
    model.eval()
    batch, _ = translation_batch(task.source_dictionary)
    sample = {"net_input": {k: batch[k] for k in ("src_tokens", "src_lengths")}}
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=5, max_len_b=6)
    hypos = generator.generate([model], sample)
    assert len(hypos) == len(SOURCE_LENGTHS)
    for length, beams in zip(SOURCE_LENGTHS, hypos, strict=True):
        assert len(beams) == 5
        for hypo in beams:
            assert len(hypo["tokens"]) >= 1 and torch.isfinite(hypo["score"])
            weights = hypo["attention"].t()  # tgtlen x srclen (the padded width)
            valid = torch.arange(weights.size(1)) < length
            check_distributions(weights, valid)


# -------------------------------------------------------------- transformer_regattn


@pytest.mark.parametrize("name", MAPPINGS)
def test_transformer_attention_excludes_padding(name):
    torch.manual_seed(0)
    model, task = build_transformer(name)
    spread(model).eval()
    assert all(
        isinstance(layer.encoder_attn, RegattnMultiheadAttention) for layer in model.decoder.layers
    )
    batch, src = translation_batch(task.source_dictionary, left=True)  # fairseq's default
    encoder_out = model.encoder(batch["src_tokens"], batch["src_lengths"])
    layer = model.decoder.layers[-1]
    queries = torch.randn(TARGET_LENGTH, len(src), 16)
    pads = encoder_out["encoder_padding_mask"][0]
    keys = encoder_out["encoder_out"][0]
    _, per_head = layer.encoder_attn(
        queries, keys, keys, key_padding_mask=pads, need_head_weights=True
    )  # heads x bsz x tgtlen x srclen
    check_distributions(per_head, ~pads.view(1, len(src), 1, -1))

    _, extra = model(**batch)
    check_distributions(extra["attn"][0], ~pads.unsqueeze(1))  # averaged over heads


@pytest.mark.parametrize("name", ["softmax", "fusedmax"])
def test_transformer_trains(name):
    torch.manual_seed(0)
    model, task = build_transformer(name)
    spread(model).train()
    batch, _ = translation_batch(task.source_dictionary)
    logits, _ = model(**batch)
    logits.logsumexp(-1).sum().backward()
    grad = model.decoder.layers[0].encoder_attn.q_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("beam", [1, 2])
def test_transformer_softmax_layer_is_fairseqs(beam):
    """Same weights, softmax: our layer gives fairseq's output, also with fairseq's
    beam-search sharing of encoder keys (beam_size > 1)."""
    torch.manual_seed(0)
    theirs = MultiheadAttention(8, 2, encoder_decoder_attention=True)
    ours = RegattnMultiheadAttention.replacing(theirs, regattn.Mapping("softmax"))
    theirs.eval()
    ours.eval()
    theirs.set_beam_size(beam)
    ours.set_beam_size(beam)
    bsz, src_len = 2 * beam, 5
    query = torch.randn(3, bsz, 8)
    key = torch.randn(src_len, bsz // beam, 8).repeat_interleave(beam, dim=1)
    pads = torch.zeros(bsz, src_len, dtype=torch.bool)
    pads[-beam:, 3:] = True
    kwargs = {"key_padding_mask": pads, "static_kv": True, "need_head_weights": True}
    a_out, a_weights = ours(query, key, key, **kwargs)
    b_out, b_weights = theirs(query, key, key, **kwargs)
    torch.testing.assert_close(a_out, b_out)
    torch.testing.assert_close(a_weights, b_weights)


@pytest.mark.parametrize("name", ["sparsemax", "oscarmax"])
def test_transformer_beam_search(name):
    torch.manual_seed(0)
    model, task = build_transformer(name)
    model.eval()
    batch, _ = translation_batch(task.source_dictionary, left=True)
    sample = {"net_input": {k: batch[k] for k in ("src_tokens", "src_lengths")}}
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=5, max_len_b=6)
    hypos = generator.generate([model], sample)
    assert [len(beams) for beams in hypos] == [5] * len(SOURCE_LENGTHS)
    pads = batch["src_tokens"].eq(task.source_dictionary.pad())
    for row, beams in enumerate(hypos):
        for hypo in beams:
            assert torch.isfinite(hypo["score"])
            check_distributions(hypo["attention"].t(), ~pads[row])


# ------------------------------------------------------------------------ snli_attn


def build_snli(name, **overrides):
    dictionary = make_dictionary()
    task = argparse.Namespace(source_dictionary=dictionary)
    cfg = SNLIAttnConfig(embed_dim=12, hidden_size=10, **(attention(name) | overrides))
    return SNLIAttnModel.build_model(cfg, task), dictionary


def snli_batch(dictionary):
    premises = sentences(dictionary, [3, 8, 5])  # any order: the model sorts itself
    hypotheses = sentences(dictionary, [4, 2, 6], seed=1)
    return {
        "premise_tokens": collate(premises, dictionary.pad()),
        "premise_lengths": torch.tensor([len(p) for p in premises]),
        "hypothesis_tokens": collate(hypotheses, dictionary.pad()),
        "hypothesis_lengths": torch.tensor([len(h) for h in hypotheses]),
    }


@pytest.mark.parametrize("name", MAPPINGS)
def test_snli_attention_excludes_padding(name):
    torch.manual_seed(0)
    model, dictionary = build_snli(name)
    spread(model).eval()
    batch = snli_batch(dictionary)
    logits, extra = model(**batch)
    assert logits.shape == (3, 3)
    p = extra["attn"]
    check_distributions(p, batch["premise_tokens"].ne(dictionary.pad()))
    for row in range(3):
        n, m = int(batch["premise_lengths"][row]), int(batch["hypothesis_lengths"][row])
        _, alone = model(
            batch["premise_tokens"][row : row + 1, :n],
            batch["premise_lengths"][row : row + 1],
            batch["hypothesis_tokens"][row : row + 1, :m],
            batch["hypothesis_lengths"][row : row + 1],
        )
        torch.testing.assert_close(p[row, :n], alone["attn"][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MAPPINGS)
def test_snli_trains(name):
    torch.manual_seed(0)
    model, dictionary = build_snli(name)
    spread(model).train()
    logits, _ = model(**snli_batch(dictionary))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for param in (model.v.weight, model.W_p.weight, model.embed_tokens.weight):
        assert param.grad is not None and torch.isfinite(param.grad).all()
    assert model.v.weight.grad.abs().sum() > 0


def test_snli_glove_and_frozen_embeddings(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("w3 1 2 3 4 5 6 7 8 9 10 11 12\nnot_in_dict 0 0 0 0 0 0 0 0 0 0 0 0\n")
    model, dictionary = build_snli("softmax", glove_path=str(glove), freeze_embeddings=True)
    vector = model.embed_tokens.weight[dictionary.index("w3")]
    torch.testing.assert_close(vector, torch.arange(1.0, 13.0))
    assert not model.embed_tokens.weight.requires_grad

    glove.write_text("w3 1 2 3\n")
    with pytest.raises(ValueError, match="embed_dim=12"):
        build_snli("softmax", glove_path=str(glove))


# --------------------------------------------------------------------------- errors


def test_unknown_mapping_is_a_clear_error():
    cfg = argparse.Namespace(
        attention_mapping="softermax", attention_gamma=1.0, attention_lambda=None, attention_p=None
    )
    with pytest.raises(ValueError, match="unknown mapping 'softermax'.*fusedmax"):
        build_mapping(cfg)
    with pytest.raises(ValueError, match="unknown mapping"):
        build_lstm("softmax", attention_mapping="softermax")


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="lam must be"):
        build_lstm("fusedmax", attention_lambda=-1.0)
    with pytest.raises(ValueError, match="p must be"):
        build_transformer_with(attention_mapping="sq_pnorm_max", attention_p=3.0)
    with pytest.raises(ValueError, match="gamma must be"):
        build_snli("sparsemax", attention_gamma=0.0)
    with pytest.raises(ValueError, match="encoder_layers"):
        build_lstm("softmax", encoder_layers=2)


def build_transformer_with(**options):
    cfg = TransformerRegattnConfig(max_source_positions=64, max_target_positions=64)
    return TransformerRegattnModel.build_model(
        dataclasses.replace(cfg, **options), translation_task()
    )


def test_parameters_only_go_to_mappings_that_take_them():
    options = {"attention_gamma": 0.5, "attention_lambda": 0.2, "attention_p": 1.2}
    for name, expected in [
        ("softmax", {"gamma": 0.5}),
        ("fusedmax", {"gamma": 0.5, "lam": 0.2}),
        ("sq_pnorm_max", {"gamma": 0.5, "p": 1.2}),
    ]:
        mapping = build_mapping(argparse.Namespace(attention_mapping=name, **options))
        assert mapping.params == expected
    defaults = build_mapping(
        argparse.Namespace(
            attention_mapping="oscarmax",
            attention_gamma=1.0,
            attention_lambda=None,
            attention_p=None,
        )
    )
    assert defaults.params == regattn.mapping_params("oscarmax")


# -------------------------------------------------------------- command-line options


def parse_train_args(*argv):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(
        parser, ["/nonexistent", "--user-dir", str(USER_DIR), "--task", "translation", *argv]
    )


def test_flags_and_presets():
    args = parse_train_args("--arch", "lstm_attn_paper", "--attention-mapping", "fusedmax")
    assert (args.encoder_layers, args.decoder_hidden_size, args.dropout) == (2, 500, 0.3)
    assert str(args.attention_mapping) == "fusedmax"
    # explicit flags win over the preset
    args = parse_train_args(
        "--arch", "lstm_attn_paper", "--encoder-layers", "1", "--decoder-layers", "1"
    )
    assert (args.encoder_layers, args.decoder_layers, args.encoder_hidden_size) == (1, 1, 500)
    args = parse_train_args("--arch", "transformer_regattn_tiny", "--attention-lambda", "0.2")
    assert (args.encoder_embed_dim, args.attention_lambda) == (32, 0.2)
    args = parse_train_args("--task", "pair_classification", "--arch", "snli_attn_tiny")
    assert args.hidden_size == 16


def test_unknown_mapping_flag_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_train_args("--arch", "lstm_attn_tiny", "--attention-mapping", "softermax")
    assert "invalid choice: 'softermax'" in capsys.readouterr().err


@pytest.mark.parametrize("asked, expected", [(None, "INFO"), ("DEBUG", "DEBUG")])
def test_importing_tasks_leaves_the_root_logger_at_info(asked, expected):
    """fairseq's models set the root logger to DEBUG on import (then every library's
    debug messages, numba's compiler passes among them, reach stderr); importing the
    user dir restores INFO, unless DEBUG was asked for before."""
    setup = f"logging.basicConfig(level=logging.{asked}); " if asked else ""
    level = "print(logging.getLevelName(logging.getLogger().level))"
    code = f"import logging; {setup}import tasks; {level}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=USER_DIR.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == expected
