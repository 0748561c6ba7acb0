"""The pair_classification task and the pair_accuracy criterion, in process: the data
layout, fairseq's batching, a few training steps for every mapping with the accuracy
logged, the inference helpers, and the errors a user can hit."""

import argparse
import random
from pathlib import Path

import pytest
import torch
from fairseq import metrics, options, tasks, utils
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from fairseq.dataclass.initialize import add_defaults
from omegaconf import OmegaConf

import regattn

USER_DIR = Path(__file__).resolve().parents[1] / "tasks"
utils.import_user_module(argparse.Namespace(user_dir=str(USER_DIR)))

from tasks.tasks.pair_classification import LABELS, write_pair_split  # noqa: E402

WORDS = [f"w{i}" for i in range(25)]
SPLITS = {"train": 40, "valid": 12, "test": 12}


def random_pairs(n, seed):
    rng = random.Random(seed)
    premises = [" ".join(rng.choices(WORDS, k=rng.randint(2, 9))) for _ in range(n)]
    hypotheses = [" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(n)]
    labels = [rng.choice(LABELS) for _ in range(n)]
    return premises, hypotheses, labels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("snli-bin")
    dictionary = Dictionary()
    for word in WORDS[:-3]:  # the last words stay out: they become <unk>
        dictionary.add_symbol(word)
    dictionary.finalize()
    for seed, (split, n) in enumerate(SPLITS.items()):
        write_pair_split(path, split, *random_pairs(n, seed), dictionary)
    return path


def setup(data_dir, arch="snli_attn_tiny", *flags):
    """Task, model and criterion as fairseq-train builds them from these flags."""
    parser = options.get_training_parser()
    argv = [str(data_dir), "--user-dir", str(USER_DIR), "--task", "pair_classification"]
    argv += ["--criterion", "pair_accuracy", "--arch", arch, *flags]
    args = options.parse_args_and_arch(parser, argv)
    task = tasks.setup_task(args)
    return task, task.build_model(args), task.build_criterion(args)


def test_layout_and_batches(data_dir):
    task, _, _ = setup(data_dir)
    for split, n in SPLITS.items():
        assert len(task.load_dataset(split)) == n
    dataset = task.dataset("train")
    premises, hypotheses, labels = random_pairs(SPLITS["train"], seed=0)
    item = dataset[3]
    assert task.dictionary.string(item["premise"]) == premises[3]  # </s> is left out
    assert item["premise"][-1] == task.dictionary.eos()
    assert LABELS[int(item["label"])] == labels[3]

    iterator = task.get_batch_iterator(
        dataset, max_tokens=60, max_positions=task.max_positions(), seed=1
    ).next_epoch_itr(shuffle=True)
    seen = []
    for batch in iterator:
        net_input = batch["net_input"]
        assert set(net_input) == {
            "premise_tokens",
            "premise_lengths",
            "hypothesis_tokens",
            "hypothesis_lengths",
        }
        # right-padded, with the lengths given
        for side in ("premise", "hypothesis"):
            tokens, lengths = net_input[f"{side}_tokens"], net_input[f"{side}_lengths"]
            assert torch.equal(tokens.ne(task.dictionary.pad()).sum(1), lengths)
            assert torch.all(tokens[torch.arange(len(tokens)), lengths - 1] == 2)
        assert len(batch["target"]) * int(dataset.sizes[batch["id"]].max()) <= 60
        seen += batch["id"].tolist()
    assert sorted(seen) == list(range(SPLITS["train"]))


def test_long_pairs_are_filtered(data_dir):
    task, _, _ = setup(data_dir, "snli_attn_tiny", "--max-positions", "6")
    dataset = task.load_dataset("train")
    indices, ignored = dataset.filter_indices_by_size(dataset.ordered_indices(), 6)
    assert len(indices) + len(ignored) == len(dataset) and ignored
    for i in indices:
        assert max(dataset.size(i)) <= 6


@pytest.mark.parametrize("name", list(regattn.MAPPINGS))
def test_a_few_updates_log_accuracy(data_dir, name):
    torch.manual_seed(0)
    task, model, criterion = setup(data_dir, "snli_attn_tiny", "--attention-mapping", name)
    assert model.mapping.name == name
    task.load_dataset("train")
    task.load_dataset("valid")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batches(split):
        return task.get_batch_iterator(task.dataset(split), max_sentences=8).next_epoch_itr(
            shuffle=False
        )

    for update, batch in enumerate(batches("train")):
        model.train()
        loss, sample_size, _ = criterion(model, batch)
        optimizer.zero_grad()
        (loss / sample_size).backward()
        optimizer.step()
        if update == 2:
            break

    logs = [task.valid_step(batch, model, criterion)[2] for batch in batches("valid")]
    with metrics.aggregate() as aggregate:
        task.reduce_metrics(logs, criterion)
    stats = aggregate.get_smoothed_values()
    correct = sum(log["ncorrect"] for log in logs)
    assert stats["accuracy"] == pytest.approx(100 * correct / SPLITS["valid"], abs=0.01)
    assert stats["loss"] > 0 and stats["bsz"] > 0

    # The inference helper agrees with the criterion's count.
    assert task.accuracy(model, "valid", batch_size=5) == pytest.approx(
        100 * correct / SPLITS["valid"]
    )


def test_predict_gives_attention_per_premise_token(data_dir):
    task, model, _ = setup(data_dir, "snli_attn_tiny", "--attention-mapping", "fusedmax")
    results = task.predict(model, "test", batch_size=5)
    premises, _, labels = random_pairs(SPLITS["test"], seed=2)
    assert [r["id"] for r in results] == list(range(SPLITS["test"]))
    for r in results:
        assert r["label"] == labels[r["id"]] and r["prediction"] in LABELS
        words = premises[r["id"]].split()
        expected = [w if w in task.dictionary.indices else "<unk>" for w in words] + ["</s>"]
        assert r["premise_tokens"] == expected
        assert len(r["attention"]) == len(expected)
        assert sum(r["attention"]) == pytest.approx(1.0, abs=1e-5)


def test_hydra_style_config_builds(data_dir):
    """What scripts/ do: a FairseqConfig merged with our keys, no argparse."""
    cfg = OmegaConf.merge(
        OmegaConf.structured(FairseqConfig),
        {
            "common": {"user_dir": str(USER_DIR)},
            "task": {"_name": "pair_classification", "data": str(data_dir)},
            "model": {"_name": "snli_attn", "hidden_size": 8, "embed_dim": 8}
            | {"attention_mapping": "oscarmax", "attention_lambda": 0.2},
            "criterion": {"_name": "pair_accuracy"},
        },
    )
    add_defaults(cfg)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    assert model.mapping.params == {"gamma": 1.0, "lam": 0.2}
    assert model.classifier.in_features == 8


def test_label_errors(data_dir, tmp_path):
    dictionary = Dictionary.load(str(data_dir / "dict.txt"))
    with pytest.raises(ValueError, match="'-' is not one of entailment"):
        write_pair_split(tmp_path, "train", ["a"], ["b"], ["-"], dictionary)
    write_pair_split(tmp_path, "train", ["w1 w2"], ["w3"], ["neutral"], dictionary)
    (tmp_path / "train.label").write_text("neutral\nentailment\n")
    task, _, _ = setup(tmp_path)
    with pytest.raises(ValueError, match="1 premises, 1 hypotheses and 2 labels"):
        task.load_dataset("train")
    (tmp_path / "train.label").write_text("Neutral\n")
    with pytest.raises(ValueError, match=r"train.label:1: label 'Neutral'"):
        task.load_dataset("train")
    with pytest.raises(FileNotFoundError, match="valid.premise"):
        task.load_dataset("valid")
