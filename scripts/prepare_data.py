"""Turn downloaded (or bundled sample) data into fairseq binaries for one task.

    python scripts/prepare_data.py --task nmt --src fr --tgt en --raw data/raw
    python scripts/prepare_data.py --task snli --raw data/samples --dest data-bin/samples/snli

--raw is a directory laid out like the output of download_data.py (or a mirror of it) or
data/samples: snli/, multi30k/tok/, gigaword/ or gigaword_sample/. Text is normalised
here, then fairseq's own preprocessing (fairseq_cli.preprocess) builds the dictionaries
and the mmap indexed datasets; every sequence ends with </s> as fairseq appends it.

Output layout in --dest (the contract tasks/ and scripts/ rely on):
* nmt: dict.{src}.txt, dict.{tgt}.txt, {split}.{src}-{tgt}.{src|tgt}.{bin,idx} for split in
  train, valid, test (Multi30k train, val, test_2016_flickr), from the lower-cased,
  tokenized tok/ files.
* summarization: the same with src=article, tgt=title (Rush et al. Gigaword: already
  lower-cased and tokenized, digits as #; its UNK / <unk> become fairseq's <unk>). Without
  a test set (the sample) the valid pairs are the test split (the "Gigaword valid-1k
  sample") and the validation split is cut from the end of train (--valid-from-train,
  default 1000 or a tenth of train), so checkpoints are never chosen on test pairs.
* snli: dict.txt (one dictionary for premise and hypothesis), {split}.premise.{bin,idx},
  {split}.hypothesis.{bin,idx}, {split}.label (entailment|neutral|contradiction per line);
  dev is valid; pairs without a gold label ("-") are dropped. --dev-into-train K
  moves all but the first K dev pairs into train (a larger-train variant; the first K
  stay the validation split, test is untouched). Tokenizer: lower-case, then
  the regex \\w+|[^\\w\\s] (runs of word characters; every other non-space character is a
  token of its own).
* all: text/{valid,test}.{side} (the word-level text that was binarized, line by line:
  references for scoring), preprocess.log (fairseq's log), spm.model with --vocab spm, and
  meta.json, written last: its presence marks a complete preparation.

The result is built in a temporary directory beside --dest and renamed into place, so a
half-prepared --dest never exists. An existing --dest prepared with the same settings and
inputs is left alone; with different ones the script stops unless --force is given.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece
from tqdm import tqdm

# fairseq is imported where it is used: it takes seconds, and bad arguments should not wait.

SPLITS = ("train", "valid", "test")
LANGS = ("en", "de", "fr", "cs")
LABELS = ("entailment", "neutral", "contradiction")
# Multi30k file names of the splits (the test set of the paper's era is test_2016_flickr).
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
# The Rush et al. files spell unknown words UNK (test) or <unk> (train, valid).
UNK_TOKENS = {"UNK", "<unk>", "<UNK>"}
UNK = "<unk>"  # fairseq's Dictionary.unk_word
SNLI_TOKEN = re.compile(r"\w+|[^\w\s]")


def find(folder, *names):
    """The first of folder/name or folder/name.gz that exists, else None."""
    for name in names:
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                return path
    return None


def require(folder, *names):
    path = find(folder, *names)
    if path is None:
        looked = ", ".join(f"{name}[.gz]" for name in names)
        raise SystemExit(
            f"error: {folder} has no {looked}; run scripts/download_data.py first, "
            "or point --raw at data/samples or a mirror laid out like download_data.py's output"
        )
    return path


def open_text(path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def sha256_of(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def find_inputs(args):
    """{split: {side: raw file}} for the task, and whether test is a copy of valid."""
    if args.task == "snli":
        folder = args.raw / "snli"
        # The full train set if downloaded, else the 1 % train sample of a mirror.
        train = require(folder, "snli_1.0_train.jsonl", "snli_1.0_train_0.01.jsonl")
        files = {"train": train, "valid": require(folder, "snli_1.0_dev.jsonl")}
        files["test"] = require(folder, "snli_1.0_test.jsonl")
        return {split: {"jsonl": path} for split, path in files.items()}, False
    if args.task == "nmt":
        folder = args.raw / "multi30k" / "tok"
        return {
            split: {lang: require(folder, f"{name}.lc.norm.tok.{lang}") for lang in args.sides}
            for split, name in MULTI30K_SPLITS.items()
        }, False
    # summarization: the full data of download_data.py, else the sample of the mirror.
    folder = args.raw / "gigaword"
    if not find(folder, "train.article.txt"):
        folder = args.raw / "gigaword_sample"
    inputs = {
        "train": {side: require(folder, f"train.{side}.txt") for side in args.sides},
        "valid": {side: require(folder, f"valid.{side}.filter.txt") for side in args.sides},
    }
    tests = {side: find(folder, f"test.{side}.txt") for side in args.sides}
    if all(tests.values()):
        inputs["test"] = tests
        return inputs, False
    inputs["test"] = inputs["valid"]
    return inputs, True


def clean(line):
    """Whitespace-normalised tokens, with every spelling of an unknown word as fairseq's."""
    return " ".join(UNK if token in UNK_TOKENS else token for token in line.split())


def snli_tokenize(sentence):
    return " ".join(SNLI_TOKEN.findall(sentence.lower()))


def write_text(inputs, args, stage):
    """Normalised text in stage/{split}.{side} (and {split}.label for SNLI); line counts."""
    sizes = {}
    for split in SPLITS:
        if args.task == "snli":
            path = inputs[split]["jsonl"]
            with (
                open_text(path) as lines,
                open(stage / f"{split}.premise", "w", encoding="utf-8") as premises,
                open(stage / f"{split}.hypothesis", "w", encoding="utf-8") as hypotheses,
                open(stage / f"{split}.label", "w", encoding="utf-8") as labels,
            ):
                sizes[split] = 0
                for number, line in enumerate(tqdm(lines, desc=f"{split} {path.name}"), 1):
                    pair = json.loads(line)
                    if pair["gold_label"] == "-":
                        continue  # No annotator majority: the standard protocol drops it.
                    if pair["gold_label"] not in LABELS:
                        raise SystemExit(
                            f"error: {path}:{number}: unknown gold_label {pair['gold_label']!r}"
                        )
                    premises.write(snli_tokenize(pair["sentence1"]) + "\n")
                    hypotheses.write(snli_tokenize(pair["sentence2"]) + "\n")
                    labels.write(pair["gold_label"] + "\n")
                    sizes[split] += 1
            continue
        counts = {}
        for side, path in inputs[split].items():
            with (
                open_text(path) as lines,
                open(stage / f"{split}.{side}", "w", encoding="utf-8") as out,
            ):
                counts[path] = 0
                for line in tqdm(lines, desc=f"{split}.{side} {path.name}"):
                    out.write(clean(line) + "\n")
                    counts[path] += 1
        if len(set(counts.values())) != 1:
            found = ", ".join(f"{path}: {count}" for path, count in counts.items())
            raise SystemExit(f"error: the {split} files are not line-aligned ({found})")
        sizes[split] = next(iter(counts.values()))
    return sizes


def move_lines(stage, sides, source, target, keep, append):
    """Move the lines of stage/{source}.{side} after the first ``keep`` to
    stage/{target}.{side}, for every side at once (the files stay aligned): appended
    to target, or replacing it."""
    for side in sides:
        lines = (stage / f"{source}.{side}").read_text(encoding="utf-8").splitlines(True)
        (stage / f"{source}.{side}").write_text("".join(lines[:keep]), encoding="utf-8")
        mode = "a" if append else "w"
        with open(stage / f"{target}.{side}", mode, encoding="utf-8") as out:
            out.writelines(lines[keep:])


def resplit(args, stage, sizes, test_is_valid):
    """The split changes asked for (or implied: a test set that is a copy of valid
    gets its own validation split from train); returns the new sizes."""
    sides = (*args.sides, "label") if args.task == "snli" else args.sides
    sizes = dict(sizes)
    if args.valid_from_train is not None and not test_is_valid:
        raise SystemExit(
            f"error: --valid-from-train {args.valid_from_train}: {args.raw} has a test set, "
            "so its valid files are the validation split; leave the option out"
        )
    if args.task == "summarization" and test_is_valid:
        count = args.valid_from_train
        if count is None:
            count = min(1000, sizes["train"] // 10)
        if not 0 < count < sizes["train"]:
            raise SystemExit(
                f"error: --valid-from-train {count}: must be between 1 and the "
                f"{sizes['train'] - 1} training pairs less one"
            )
        move_lines(stage, sides, "train", "valid", sizes["train"] - count, append=False)
        sizes["train"] -= count
        sizes["valid"] = count
    if args.dev_into_train is not None:
        keep = args.dev_into_train
        if not 0 < keep < sizes["valid"]:
            raise SystemExit(
                f"error: --dev-into-train {keep}: must keep between 1 and {sizes['valid'] - 1} "
                "dev pairs for validation"
            )
        move_lines(stage, sides, "valid", "train", keep, append=True)
        sizes["train"] += sizes["valid"] - keep
        sizes["valid"] = keep
    return sizes


def spm_encode(processor, line):
    # <unk> must stay one token (fairseq's unk): sentencepiece would spell it out.
    segments = processor.encode([part.strip() for part in line.split(UNK)], out_type=str)
    return " ".join(f" {UNK} ".join(" ".join(pieces) for pieces in segments).split())


def apply_spm(args, stage, work, out):
    """Train a sentencepiece model on the training text; encode every split into out/."""
    sentencepiece.set_random_generator_seed(1)  # Which sentences are sampled, on big data.
    sentencepiece.SentencePieceTrainer.train(
        input=[str(stage / f"train.{side}") for side in args.sides],
        model_prefix=str(work / "spm"),
        vocab_size=args.spm_vocab_size,
        hard_vocab_limit=False,  # Small data may not support the size asked for.
        character_coverage=1.0,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=args.workers,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(work / "spm.model"))
    for split in SPLITS:
        for side in args.sides:
            with (
                open(stage / f"{split}.{side}", encoding="utf-8") as lines,
                open(out / f"{split}.{side}", "w", encoding="utf-8") as encoded,
            ):
                for line in tqdm(lines, desc=f"spm {split}.{side}"):
                    encoded.write(spm_encode(processor, line) + "\n")


def binarize(args, text, work):
    """fairseq's preprocessing of text/{split}.{side} into work/ (dictionaries + mmap)."""
    # Its import logs a tensorboardX hint about a task we do not use.
    logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq_cli import preprocess

    source, target = args.sides
    word = args.vocab == "word"
    # nwords counts fairseq's special symbols too; -1 keeps every word.
    nwords = args.max_vocab + Dictionary().nspecial if word and args.max_vocab > 0 else -1
    threshold = args.min_freq if word else 0
    argv = [
        *("--source-lang", source, "--target-lang", target, "--destdir", str(work)),
        *("--trainpref", str(text / "train"), "--validpref", str(text / "valid")),
        *("--testpref", str(text / "test"), "--workers", str(args.workers)),
        *("--nwordssrc", str(nwords), "--nwordstgt", str(nwords)),
        *("--thresholdsrc", str(threshold), "--thresholdtgt", str(threshold)),
    ]
    # One vocabulary for premise and hypothesis, and for the pieces of one spm model.
    if args.task == "snli" or not word:
        argv.append("--joined-dictionary")
    logger = logging.getLogger("fairseq_cli.preprocess")
    # fairseq logs to the console and to work/preprocess.log; keep only the file.
    logger.propagate = False
    try:
        preprocess.main(options.get_preprocessing_parser().parse_args(argv))
    finally:
        logger.propagate = True
        # preprocess.main adds a file handler per call and never removes it.
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
    if args.task == "snli":
        # The contract's names: one dict.txt and {split}.{side}.{bin,idx}.
        os.replace(work / "dict.premise.txt", work / "dict.txt")
        (work / "dict.hypothesis.txt").unlink()
        for split in SPLITS:
            for side in args.sides:
                for ext in ("bin", "idx"):
                    pair_name = f"{split}.premise-hypothesis.{side}.{ext}"
                    os.replace(work / pair_name, work / f"{split}.{side}.{ext}")


def settings_of(args, inputs):
    """What decides the output: compared with an existing --dest's meta.json."""
    settings = {"task": args.task, "vocab": args.vocab, "sides": list(args.sides)}
    if args.valid_from_train is not None:
        settings["valid_from_train"] = args.valid_from_train
    if args.dev_into_train is not None:
        settings["dev_into_train"] = args.dev_into_train
    if args.vocab == "word":
        settings.update(max_vocab=args.max_vocab, min_freq=args.min_freq)
    else:
        settings.update(spm_vocab_size=args.spm_vocab_size)
    settings["inputs_sha256"] = {
        f"{split}.{side}": sha256_of(path)
        for split, files in inputs.items()
        for side, path in files.items()
    }
    return settings


def check_dest(dest, settings, force):
    """True if dest already holds this preparation; stop if it holds another one."""
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return False
    meta_file = dest / "meta.json"
    if force:
        print(f"--force: {dest} will be replaced")
        return False
    if not meta_file.is_file():
        raise SystemExit(
            f"error: {dest} exists but has no meta.json (not a finished preparation); "
            "use another --dest, or --force to replace it"
        )
    old = json.loads(meta_file.read_text()).get("settings", {})
    if old == settings:
        print(f"{dest}: already prepared with these settings and inputs, nothing to do")
        return True
    differences = []
    for key in sorted(set(old) | set(settings)):
        before, after = old.get(key), settings.get(key)
        if before == after:
            continue
        if key == "inputs_sha256" and before and after:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            differences.append(f"input files {', '.join(changed)} differ")
        else:
            before, after = ("unset" if v is None else repr(v) for v in (before, after))
            differences.append(f"{key} {before} there, {after} now")
    raise SystemExit(
        f"error: {dest} was prepared with different settings ({'; '.join(differences)}); "
        "use another --dest, or --force to replace it"
    )


def prepare(args, inputs, test_is_valid, settings, work):
    stage = work / "stage"
    stage.mkdir()
    sizes = resplit(args, stage, write_text(inputs, args, stage), test_is_valid)
    text = stage
    if args.vocab == "spm":
        text = work / "spm_text"
        text.mkdir()
        apply_spm(args, stage, work, text)
    binarize(args, text, work)
    if args.task == "snli":
        for split in SPLITS:
            os.replace(stage / f"{split}.label", work / f"{split}.label")
    # Keep the word-level text of valid and test: the references for BLEU / ROUGE.
    (work / "text").mkdir()
    for split in ("valid", "test"):
        for side in args.sides:
            os.replace(stage / f"{split}.{side}", work / "text" / f"{split}.{side}")
    shutil.rmtree(stage)
    if text != stage:
        shutil.rmtree(text)
    from fairseq.data import Dictionary

    if args.task == "snli":
        dict_sizes = {"shared": len(Dictionary.load(str(work / "dict.txt")))}
    else:
        dict_sizes = {s: len(Dictionary.load(str(work / f"dict.{s}.txt"))) for s in args.sides}
    meta = {
        "task": args.task,
        "vocab": args.vocab,
        "sides": list(args.sides),
        "sizes": sizes,
        "dict_sizes": dict_sizes,
        "source": str(args.raw.resolve()),
        "inputs": {
            f"{split}.{side}": {
                "file": str(path.relative_to(args.raw)),
                "sha256": settings["inputs_sha256"][f"{split}.{side}"],
            }
            for split, files in inputs.items()
            for side, path in files.items()
        },
        "settings": settings,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "text_dir": "text",
    }
    if args.task == "nmt":
        meta["langs"] = {"src": args.src, "tgt": args.tgt}
    elif args.task == "summarization":
        meta["langs"] = {"src": "article", "tgt": "title"}
        meta["test_is_valid"] = test_is_valid
        if test_is_valid:
            count = sizes["test"]
            count = f"{count // 1000}k" if count % 1000 == 0 else count
            meta["test_name"] = f"Gigaword valid-{count} sample"
            meta["valid_name"] = f"the last {sizes['valid']} pairs of the training file"
    else:
        meta["labels"] = list(LABELS)
        meta["tokenizer"] = f"lower-case, then the tokens of the regex {SNLI_TOKEN.pattern}"
    if args.vocab == "spm":
        meta["spm_model"] = "spm.model"
    # Written last: a meta.json means the preparation is complete.
    (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("snli", "nmt", "summarization"))
    parser.add_argument(
        "--raw", type=Path, default=Path("data/raw"), help="input directory (default data/raw)"
    )
    parser.add_argument(
        "--dest",
        type=Path,
        help="output directory (default data-bin/snli, data-bin/nmt_SRC-TGT or "
        "data-bin/summarization; _spm appended with --vocab spm)",
    )
    parser.add_argument("--src", choices=LANGS, help="nmt source language (default fr)")
    parser.add_argument("--tgt", choices=LANGS, help="nmt target language (default en)")
    parser.add_argument(
        "--vocab",
        choices=("word", "spm"),
        default="word",
        help="word: word-level vocabularies as in the paper (default); spm: a sentencepiece "
        "model trained on the training text, one vocabulary for both sides",
    )
    parser.add_argument(
        "--max-vocab",
        type=int,
        default=50000,
        help="word vocab: keep the N most frequent training words per dictionary, the "
        "rest become <unk> (default 50000 as in the paper; 0 keeps all)",
    )
    parser.add_argument(
        "--min-freq",
        type=int,
        default=1,
        help="word vocab: words seen fewer than N times in training become <unk> (default 1)",
    )
    parser.add_argument("--spm-vocab-size", type=int, default=8000, help="default 8000")
    parser.add_argument(
        "--valid-from-train",
        type=int,
        metavar="N",
        help="summarization without a test set: the last N training pairs become the "
        "validation split (default min(1000, train / 10)); the valid pairs are the test",
    )
    parser.add_argument(
        "--dev-into-train",
        type=int,
        metavar="K",
        help="snli: keep the first K dev pairs as the validation split and add the rest "
        "to train (test untouched)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument(
        "--force", action="store_true", help="replace a --dest prepared differently"
    )
    args = parser.parse_args(argv)
    if args.task != "nmt" and (args.src or args.tgt):
        parser.error("--src/--tgt apply to --task nmt only")
    if args.valid_from_train is not None and args.task != "summarization":
        parser.error("--valid-from-train applies to --task summarization only")
    if args.dev_into_train is not None and args.task != "snli":
        parser.error("--dev-into-train applies to --task snli only")
    if args.task == "nmt":
        args.src, args.tgt = args.src or "fr", args.tgt or "en"
        if args.src == args.tgt:
            parser.error(f"--src and --tgt must differ, both are {args.src}")
    for name in ("max_vocab", "min_freq", "spm_vocab_size", "workers"):
        value = getattr(args, name)
        if value < (0 if name == "max_vocab" else 1):
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be {'>= 0' if name == 'max_vocab' else '>= 1'}, got {value}")
    if not args.raw.is_dir():
        parser.error(f"--raw directory not found: {args.raw}")
    args.sides = {
        "snli": ("premise", "hypothesis"),
        "nmt": (args.src, args.tgt),
        "summarization": ("article", "title"),
    }[args.task]
    if args.dest is None:
        name = {"nmt": f"nmt_{args.src}-{args.tgt}"}.get(args.task, args.task)
        args.dest = Path("data-bin") / (name + ("_spm" if args.vocab == "spm" else ""))
    return args


def main(argv=None):
    args = parse_args(argv)
    inputs, test_is_valid = find_inputs(args)
    settings = settings_of(args, inputs)
    if check_dest(args.dest, settings, args.force):
        return
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    # Beside dest, so the final rename stays on one file system (and is atomic).
    work = Path(tempfile.mkdtemp(prefix=f".{args.dest.name}.", dir=args.dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; dest should not be.
    try:
        meta = prepare(args, inputs, test_is_valid, settings, work)
        if args.dest.exists():  # Only with --force, or an empty directory.
            old = Path(tempfile.mkdtemp(prefix=f".{args.dest.name}.old.", dir=args.dest.parent))
            os.replace(args.dest, old / "replaced")
            os.replace(work, args.dest)
            shutil.rmtree(old)
        else:
            os.replace(work, args.dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.task} ({args.vocab}): {', '.join(f'{k} {v}' for k, v in meta['sizes'].items())} "
        f"examples; dictionaries {meta['dict_sizes']}; written to {args.dest}"
    )
    if test_is_valid:
        print(
            f"note: no test set in {args.raw}: the valid pairs are the test split "
            f"({meta['test_name']}); validation is {meta['valid_name']}"
        )


if __name__ == "__main__":
    sys.exit(main())
