"""End to end with fairseq's own command line, one subprocess per command (fairseq
keeps state between trainings in one process): binarize tiny data, train a few
updates with `--user-dir tasks`, resume, generate with beam 5 and print alignments,
reload a checkpoint for the pair-classification inference helpers."""

import argparse
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from fairseq.dataclass.initialize import add_defaults
from fairseq_cli import preprocess
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "tasks"
utils.import_user_module(argparse.Namespace(user_dir=str(USER_DIR)))

from tasks.tasks.pair_classification import LABELS, write_pair_split  # noqa: E402

WORDS = [f"w{i}" for i in range(30)]
TEST_PAIRS = 8
# Toy runs: no dataloader worker process, no progress bar, a handful of updates.
COMMON = ["--user-dir", str(USER_DIR), "--cpu", "--num-workers", "0", "--log-format", "simple"]
TRAIN = COMMON + ["--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "fixed"]
TRAIN += ["--batch-size", "8", "--no-epoch-checkpoints", "--seed", "1", "--log-interval", "1"]


def run(module, *argv):
    """Run ``python -m module argv`` from the repository root; its stdout + stderr."""
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{module} failed:\n{output[-4000:]}"
    return output


def sentences(rng, n, low, high):
    return [" ".join(rng.choices(WORDS, k=rng.randint(low, high))) for _ in range(n)]


@pytest.fixture(scope="module")
def translation_data(tmp_path_factory):
    """Binarized src -> tgt pairs (the target: the source reversed)."""
    raw = tmp_path_factory.mktemp("raw")
    rng = random.Random(0)
    for split, n in (("train", 40), ("valid", 8), ("test", TEST_PAIRS)):
        source = sentences(rng, n, 2, 9)
        target = [" ".join(reversed(s.split())) for s in source]
        (raw / f"{split}.src").write_text("\n".join(source) + "\n")
        (raw / f"{split}.tgt").write_text("\n".join(target) + "\n")
    dest = tmp_path_factory.mktemp("nmt-bin")
    parser = options.get_preprocessing_parser()
    args = parser.parse_args(
        ["--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary"]
        + ["--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid"]
        + ["--testpref", f"{raw}/test", "--destdir", str(dest), "--workers", "1"]
    )
    preprocess.main(args)
    return dest


@pytest.fixture(scope="module")
def snli_data(tmp_path_factory):
    dest = tmp_path_factory.mktemp("snli-bin")
    rng = random.Random(1)
    dictionary = Dictionary()
    for word in WORDS:
        dictionary.add_symbol(word)
    dictionary.finalize()
    for split, n in (("train", 48), ("valid", 16), ("test", TEST_PAIRS)):
        premises, hypotheses = sentences(rng, n, 2, 9), sentences(rng, n, 1, 6)
        labels = [rng.choice(LABELS) for _ in range(n)]
        write_pair_split(dest, split, premises, hypotheses, labels, dictionary)
    return dest


def train_and_generate(data, save_dir, arch, mapping_flags, task_flags):
    log = run(
        "fairseq_cli.train",
        data,
        *TRAIN,
        *task_flags,
        "--arch", arch,
        *mapping_flags,
        "--max-update", 3,
        "--save-dir", save_dir,
    )  # fmt: skip
    assert "num_updates 3" in log
    output = run(
        "fairseq_cli.generate",
        data,
        *COMMON,
        *task_flags,
        "--path", save_dir / "checkpoint_best.pt",
        "--gen-subset", "test",
        "--beam", 5,
        # A batch size below --required-batch-size-multiple (8) makes fairseq drop sentences.
        "--batch-size", TEST_PAIRS,
        "--max-len-b", 10,
        "--print-alignment",
    )  # fmt: skip
    return log, output


def check_generation(output):
    """A hypothesis and an alignment for every test sentence, alignments pointing
    at source words."""
    lines = output.splitlines()
    sources = {m[1]: m[2].split() for m in (re.match(r"S-(\d+)\t(.*)", x) for x in lines) if m}
    hypotheses = {m[1]: m[2] for m in (re.match(r"H-(\d+)\t\S+\t(.*)", x) for x in lines) if m}
    alignments = {m[1]: m[2] for m in (re.match(r"A-(\d+)\t(.*)", x) for x in lines) if m}
    assert len(sources) == len(hypotheses) == len(alignments) == TEST_PAIRS
    for i, alignment in alignments.items():
        assert hypotheses[i].split()
        for pair in alignment.split():
            source_index, _ = map(int, pair.split("-"))
            assert 0 <= source_index < len(sources[i])
    assert f"Translated {TEST_PAIRS} sentences" in output


@pytest.mark.parametrize(
    "mapping_flags",
    [
        ["--attention-mapping", "fusedmax", "--attention-lambda", 0.1],
        ["--attention-mapping", "sq_pnorm_max", "--attention-p", 1.5],
    ],
    ids=["fusedmax", "sq_pnorm_max"],
)
def test_lstm_attn_cli(translation_data, tmp_path, mapping_flags):
    # --left-pad-source alone sets left_pad_source=False (a store_false flag).
    task_flags = ["--task", "translation", "--left-pad-source"]
    log, output = train_and_generate(
        translation_data, tmp_path, "lstm_attn_tiny", mapping_flags, task_flags
    )
    assert f"Mapping('{mapping_flags[1]}', dim=0" in log  # the model printed at start
    assert "'left_pad_source': False" in log
    check_generation(output)


def test_transformer_regattn_cli(translation_data, tmp_path):
    task_flags = ["--task", "translation"]  # left-padded sources: the transformer minds not
    log, output = train_and_generate(
        translation_data,
        tmp_path,
        "transformer_regattn_tiny",
        ["--attention-mapping", "oscarmax", "--attention-lambda", 0.05],
        task_flags,
    )
    assert "RegattnMultiheadAttention" in log and "Mapping('oscarmax'" in log
    check_generation(output)


@pytest.mark.parametrize("mapping", ["sparsemax", "entmax15"])
def test_snli_attn_cli(snli_data, tmp_path, mapping):
    flags = ["--task", "pair_classification", "--criterion", "pair_accuracy"]
    flags += ["--arch", "snli_attn_tiny", "--attention-mapping", mapping]
    flags += ["--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]
    flags += ["--save-dir", tmp_path]
    glove = tmp_path / "glove.txt"
    if mapping == "entmax15":  # fixed pretrained embeddings, once
        glove.write_text("".join(f"{w} " + " ".join(["0.5"] * 16) + "\n" for w in WORDS[:5]))
        flags += ["--glove-path", glove, "--freeze-embeddings"]
    log = run("fairseq_cli.train", snli_data, *TRAIN, *flags, "--max-update", 4)
    valid = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert valid and re.search(r"\| accuracy \d+(\.\d+)? \|", valid[-1])
    assert re.search(r"\| train \| .*\| accuracy ", log)
    assert (tmp_path / "checkpoint_best.pt").exists()
    assert re.search(r"checkpoint_best\.pt \(epoch \d+ @ 4 updates, score \d", log)

    if mapping == "sparsemax":  # resuming once is enough
        log = run("fairseq_cli.train", snli_data, *TRAIN, *flags, "--max-update", 8)
        assert "Loaded checkpoint" in log and "num_updates 8" in log

    # The evaluation path: load the best checkpoint, predict the test split. The
    # checkpoint holds the embeddings: the GloVe file is not needed any more.
    glove.unlink(missing_ok=True)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(tmp_path / "checkpoint_best.pt")], arg_overrides={"data": str(snli_data)}
    )
    assert str(models[0].mapping.name) == mapping
    if mapping == "entmax15":
        embedding = models[0].embed_tokens.weight[task.dictionary.index(WORDS[0])]
        assert embedding.eq(0.5).all()  # loaded, then kept fixed by training
    results = task.predict(models[0], "test")
    assert len(results) == TEST_PAIRS
    assert 0 <= task.accuracy(models[0], "test") <= 100


@pytest.mark.parametrize("model", ["lstm_attn", "transformer_regattn"])
def test_hydra_style_config_builds(translation_data, model):
    """What scripts/ do: FairseqConfig merged with our keys, no argparse; the model's
    max positions come from the task by interpolation."""
    cfg = OmegaConf.merge(
        OmegaConf.structured(FairseqConfig),
        {
            "common": {"user_dir": str(USER_DIR)},
            "task": {"_name": "translation", "data": str(translation_data)}
            | {"left_pad_source": False, "max_source_positions": 77},
            "model": {"_name": model, "encoder_layers": 1, "decoder_layers": 1}
            | {"attention_mapping": "fusedmax", "attention_lambda": 0.2},
        },
    )
    add_defaults(cfg)
    task = tasks.setup_task(cfg.task)
    built = task.build_model(cfg.model)
    assert built.max_positions()[0] == 77
    mappings = [m for m in built.modules() if m.__class__.__name__ == "Mapping"]
    assert mappings and all(m.params == {"gamma": 1.0, "lam": 0.2} for m in mappings)
