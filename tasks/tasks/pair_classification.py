"""Sentence-pair classification (SNLI): a premise, a hypothesis and one of three labels.

Data layout (written by ``write_pair_split``, e.g. from scripts/prepare_data.py):

    DATA/dict.txt                               one fairseq Dictionary for both sides
    DATA/{split}.premise.bin, .idx              fairseq indexed datasets of token ids
    DATA/{split}.hypothesis.bin, .idx
    DATA/{split}.label                          one label per line: entailment, neutral
                                                or contradiction
    splits: train, valid, test

Batches are built by fairseq (``--batch-size`` / ``--max-tokens``) from ``PairDataset``;
the model gets ``premise_tokens, premise_lengths, hypothesis_tokens,
hypothesis_lengths`` (right-padded) and the criterion the label ids as ``target``.
"""

import contextlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq import utils
from fairseq.data import Dictionary, FairseqDataset, data_utils, indexed_dataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import MISSING, OmegaConf, open_dict

logger = logging.getLogger(__name__)

LABELS = ("entailment", "neutral", "contradiction")  # label id = position here
SIDES = ("premise", "hypothesis")


@dataclass
class PairClassificationConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "path to the data directory"})
    max_positions: int = field(
        default=512, metadata={"help": "longest premise or hypothesis (tokens) to keep"}
    )


class PairDataset(FairseqDataset):
    """Premise and hypothesis token tensors with a label id per pair."""

    def __init__(self, premises, hypotheses, labels, pad, shuffle=True):
        if not len(premises) == len(hypotheses) == len(labels):
            raise ValueError(
                f"{len(premises)} premises, {len(hypotheses)} hypotheses and "
                f"{len(labels)} labels: the counts must be equal"
            )
        self.premises = premises
        self.hypotheses = hypotheses
        self.labels = labels  # a LongTensor of label ids
        self.pad = pad
        self.shuffle = shuffle
        self.premise_sizes = np.asarray(premises.sizes)
        self.hypothesis_sizes = np.asarray(hypotheses.sizes)
        # What batching by --max-tokens counts: both sentences are padded into the batch.
        self.sizes = self.premise_sizes + self.hypothesis_sizes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {
            "id": index,
            "premise": self.premises[index],
            "hypothesis": self.hypotheses[index],
            "label": self.labels[index],
        }

    def collater(self, samples):
        if len(samples) == 0:
            return {}

        def tokens_and_lengths(side):
            sentences = [s[side] for s in samples]
            tokens = data_utils.collate_tokens(sentences, self.pad, left_pad=False)
            return tokens, torch.LongTensor([s.numel() for s in sentences])

        premise_tokens, premise_lengths = tokens_and_lengths("premise")
        hypothesis_tokens, hypothesis_lengths = tokens_and_lengths("hypothesis")
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(premise_lengths.sum() + hypothesis_lengths.sum()),
            "net_input": {
                "premise_tokens": premise_tokens,
                "premise_lengths": premise_lengths,
                "hypothesis_tokens": hypothesis_tokens,
                "hypothesis_lengths": hypothesis_lengths,
            },
            "target": torch.stack([s["label"] for s in samples]),
        }

    def num_tokens(self, index):
        return self.sizes[index]

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def size(self, index):
        return (self.premise_sizes[index], self.hypothesis_sizes[index])

    def ordered_indices(self):
        # Pairs of similar lengths batch together (less padding); shuffling first
        # varies the order among equal lengths. The global numpy RNG on purpose:
        # fairseq seeds it per epoch (data_utils.numpy_seed) around this call.
        order = np.arange(len(self))
        if self.shuffle:
            order = np.random.permutation(len(self))  # noqa: NPY002
        order = order[np.argsort(self.premise_sizes[order], kind="mergesort")]
        return order[np.argsort(self.hypothesis_sizes[order], kind="mergesort")]

    def filter_indices_by_size(self, indices, max_sizes):
        # max_sizes bounds each sentence of a pair, not their sum.
        keep = (self.premise_sizes[indices] <= max_sizes) & (
            self.hypothesis_sizes[indices] <= max_sizes
        )
        return indices[keep], indices[~keep].tolist()


@register_task("pair_classification", dataclass=PairClassificationConfig)
class PairClassificationTask(FairseqTask):
    """Classify (premise, hypothesis) pairs into LABELS; see the module docstring."""

    def __init__(self, cfg, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        path = os.path.join(cfg.data, "dict.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no dictionary {path}: is {cfg.data} a prepared data dir?")
        dictionary = Dictionary.load(path)
        logger.info("dictionary: %d types", len(dictionary))
        return cls(cfg, dictionary)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        prefix = os.path.join(self.cfg.data, split)
        sides = {}
        for side in SIDES:
            sides[side] = data_utils.load_indexed_dataset(f"{prefix}.{side}", self.dictionary)
            if sides[side] is None:
                raise FileNotFoundError(f"no indexed dataset {prefix}.{side}.bin/.idx")
        labels = torch.LongTensor(read_labels(f"{prefix}.label"))
        self.datasets[split] = PairDataset(
            sides["premise"],
            sides["hypothesis"],
            labels,
            self.dictionary.pad(),
            shuffle=split == "train",
        )
        logger.info("%s: %d pairs", split, len(labels))
        return self.datasets[split]

    def build_model(self, cfg, from_checkpoint=False):
        if from_checkpoint and getattr(cfg, "glove_path", None):
            # The checkpoint holds the embeddings: don't read (or need) the GloVe file.
            with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.nullcontext():
                cfg.glove_path = None
        return super().build_model(cfg, from_checkpoint)

    def max_positions(self):
        return self.cfg.max_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(self, model, split, batch_size=64):
        """The model's prediction for every pair of ``split``, in file order: a list of
        dicts with id, label, prediction (label names), premise_tokens (the premise's
        symbols, </s> included) and attention (one weight per premise token)."""
        if split not in self.datasets:
            self.load_dataset(split)
        dataset = self.datasets[split]
        model.eval()
        device = next(model.parameters()).device
        results = []
        for start in range(0, len(dataset), batch_size):
            end = min(start + batch_size, len(dataset))
            batch = dataset.collater([dataset[i] for i in range(start, end)])
            batch = utils.move_to_cuda(batch, device) if device.type == "cuda" else batch
            logits, extra = model(**batch["net_input"])
            predictions = logits.argmax(dim=-1).tolist()
            for row, index in enumerate(batch["id"].tolist()):
                length = int(batch["net_input"]["premise_lengths"][row])
                tokens = batch["net_input"]["premise_tokens"][row, :length].tolist()
                results.append(
                    {
                        "id": index,
                        "label": LABELS[int(batch["target"][row])],
                        "prediction": LABELS[predictions[row]],
                        "premise_tokens": [self.dictionary[t] for t in tokens],
                        "attention": extra["attn"][row, :length].float().cpu().tolist(),
                    }
                )
        return results

    def accuracy(self, model, split, batch_size=64):
        """Accuracy (percent) of ``model`` on ``split``."""
        results = self.predict(model, split, batch_size)
        if not results:
            raise ValueError(f"split {split!r} has no pairs")
        return 100.0 * sum(r["prediction"] == r["label"] for r in results) / len(results)


def read_labels(path):
    """Label ids of a ``.label`` file (one label name per line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no label file {path}")
    ids = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            name = line.strip()
            if name not in LABELS:
                raise ValueError(
                    f"{path}:{number}: label {name!r} is not one of {', '.join(LABELS)}"
                )
            ids.append(LABELS.index(name))
    return ids


def write_pair_split(data_dir, split, premises, hypotheses, labels, dictionary):
    """Write one split in the layout ``load_dataset`` reads: tokenized premise and
    hypothesis strings (words separated by spaces) and label names. The dictionary
    encodes them (unknown words become <unk>; </s> is appended to each sentence) and
    is written as dict.txt. Returns the number of pairs."""
    if not len(premises) == len(hypotheses) == len(labels):
        raise ValueError("premises, hypotheses and labels must have the same length")
    for label in labels:
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)}")
    os.makedirs(data_dir, exist_ok=True)
    dictionary.save(os.path.join(data_dir, "dict.txt"))
    for side, sentences in zip(SIDES, (premises, hypotheses), strict=True):
        prefix = os.path.join(data_dir, f"{split}.{side}")
        builder = indexed_dataset.make_builder(
            f"{prefix}.bin", impl="mmap", vocab_size=len(dictionary)
        )
        for sentence in sentences:
            builder.add_item(dictionary.encode_line(sentence, add_if_not_exist=False))
        builder.finalize(f"{prefix}.idx")
    with open(os.path.join(data_dir, f"{split}.label"), "w", encoding="utf-8") as f:
        f.writelines(f"{label}\n" for label in labels)
    return len(labels)
