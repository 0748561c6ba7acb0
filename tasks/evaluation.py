"""Evaluate a trained run: beam search or classification on a test split, the task
metric, attention statistics and throughput, written as one JSON per run.

    metrics      BLEU (sacrebleu, signature recorded), ROUGE-1/2/L F1 (rouge-score),
                 or SNLI accuracy
    attention    over every attention distribution of the split (each target step,
                 or each hypothesis for SNLI), on its valid source positions:
                 support size, fused groups (runs of equal consecutive nonzero
                 weights), distinct nonzero values, share of exactly-zero weights
    throughput   decoding (or classification) sentences/s; training target tokens/s
                 from the training log
"""

import datetime
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .pipeline import CHECKPOINTS, REPO, RUN_CONFIG, PipelineError, check_data, warm_up

ATTENTION_EXAMPLES = 3  # attention matrices kept per run for the figures


def attention_stats(weights):
    """Statistics of attention distributions: ``weights`` is a list of 1-D tensors,
    each over the valid positions only."""
    support = groups = runs = zeros = positions = 0
    for w in weights:
        nonzero = w > 0
        support += int(nonzero.sum())
        zeros += int((~nonzero).sum())
        positions += w.numel()
        groups += len(torch.unique(w[nonzero]))
        # A run starts at each nonzero weight that differs from its left neighbour.
        starts = nonzero.clone()
        starts[1:] &= w[1:] != w[:-1]
        runs += int(starts.sum())
    n = max(len(weights), 1)
    return {
        "distributions": len(weights),
        "mean_support": support / n,
        "mean_fused_runs": runs / n,
        "mean_distinct_values": groups / n,
        "zero_share": zeros / max(positions, 1),
    }


def _git_state():
    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "regattn", "tasks", "scripts", "configs")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(dirty)}


def write_text_atomic(path, text):
    """Write a file so that readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def _load(run_dir, cpu):
    from fairseq import checkpoint_utils

    checkpoint = run_dir / CHECKPOINTS / "checkpoint_best.pt"
    if not checkpoint.is_file():
        raise PipelineError(
            f"no checkpoint at {checkpoint}: train the run first (scripts/train.py), or "
            "pass the directory of a finished run"
        )
    cfg = OmegaConf.load(run_dir / RUN_CONFIG)
    check_data(cfg.task)
    warm_up(cfg.mapping)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(cfg.task.data)}
    )
    for model in models:
        model.eval()
        if not cpu:
            model.cuda()
    return cfg, models, task


def _batches(task, split, batch_size):
    task.load_dataset(split)
    return task.get_batch_iterator(
        dataset=task.dataset(split), max_sentences=batch_size
    ).next_epoch_itr(shuffle=False)


def _to_device(sample, cpu):
    from fairseq import utils

    return sample if cpu else utils.move_to_cuda(sample)


def evaluate_seq2seq(cfg, models, task, cpu):
    """Beam search on the evaluation split (metrics, attention, per-example scores) and,
    when that split is not the validation split, on the validation split too: its
    metric is what hyperparameters are chosen by, never the test metric."""
    generator = _beam_generator(cfg, models, task)
    split, metric = cfg.task.eval.split, cfg.task.eval.metric
    start = time.perf_counter()
    ids, hypotheses, weights, examples = _decode(cfg, task, generator, models, split, cpu)
    seconds = time.perf_counter() - start
    references = _references(cfg, task, split, ids)
    metrics = _text_metrics(metric, hypotheses, references)
    per_example = {"hypotheses": hypotheses, **_per_example_scores(metric, hypotheses, references)}
    result = {
        "metrics": metrics,
        "attention": attention_stats(weights),
        "throughput": {"decode_sentences_per_s": len(hypotheses) / seconds},
        "attention_examples": examples,
        "examples": len(hypotheses),
        "per_example": per_example,
    }
    # A sentence of the user's own (task.eval.sentence), for figures that need no
    # checkpoint: the paper's examples, say.
    sentence = cfg.task.eval.get("sentence")
    if sentence:
        result["sentence_attention"] = _attend(cfg, task, generator, models, sentence, cpu)
    if split != "valid":
        valid_ids, valid_hypotheses, _, _ = _decode(cfg, task, generator, models, "valid", cpu)
        valid_references = _references(cfg, task, "valid", valid_ids)
        result["valid_metrics"] = _text_metrics(metric, valid_hypotheses, valid_references)
    return result


def decode_throughput(run_dir, split="valid", cpu=True):
    """Sentences per second at which a trained seq2seq run decodes ``split`` (beam
    search with its beam, as in its evaluation), for timing comparisons."""
    cfg, models, task = _load(run_dir, cpu)
    generator = _beam_generator(cfg, models, task)
    task.load_dataset(split)  # outside the timing
    start = time.perf_counter()
    ids, _, _, _ = _decode(cfg, task, generator, models, split, cpu)
    return len(ids) / (time.perf_counter() - start)


def _beam_generator(cfg, models, task):
    """Beam search with the run's evaluation beam, as every decoding here uses."""
    from fairseq.dataclass.configs import GenerationConfig

    return task.build_generator(models, GenerationConfig(beam=cfg.task.eval.beam))


def _references(cfg, task, split, ids):
    """The references of the examples ``ids``: the prepared text (prepare_data.py), not
    the binarized targets, whose out-of-vocabulary words would read <unk>."""
    reference_file = Path(cfg.task.data) / "text" / f"{split}.{task.cfg.target_lang}"
    lines = reference_file.read_text().splitlines()
    return [lines[i] for i in ids]


def _decode(cfg, task, generator, models, split, cpu):
    """The ids (file order) and best beam hypotheses of ``split``, every attention
    distribution over the valid source positions, and the first examples' attention
    matrices."""
    source_dict, target_dict = task.source_dictionary, task.target_dictionary
    post = "sentencepiece" if cfg.task.vocab == "spm" else None
    outputs_by_id, weights, examples = {}, [], {}
    for sample in _batches(task, split, 32):
        sample = _to_device(sample, cpu)
        with torch.no_grad():
            outputs = task.inference_step(generator, models, sample)
        for i, sample_id in enumerate(sample["id"].tolist()):
            best = outputs[i][0]
            source = _without_padding(sample["net_input"]["src_tokens"][i], source_dict)
            outputs_by_id[sample_id] = target_dict.string(best["tokens"], post)
            attention = best["attention"].float().cpu()  # source positions x target steps
            valid = attention[: len(source)].t()  # each target step over the source
            weights.extend(valid)
            if sample_id < ATTENTION_EXAMPLES:  # the first examples of the file
                examples[sample_id] = {
                    "source": [source_dict[t] for t in source],
                    "target": [target_dict[t] for t in best["tokens"]],
                    "attention": valid.tolist(),
                }
    ids = sorted(outputs_by_id)
    hypotheses = [outputs_by_id[i] for i in ids]
    return ids, hypotheses, weights, [examples[i] for i in sorted(examples)]


def attend(run_dir, sentence, cpu=True):
    """The beam output of a trained seq2seq run for one source sentence, and its
    attention: {"sentence", "source", "target" (tokens, </s> included), "attention"
    (one row per target token over the source tokens)}. ``sentence`` is tokenized
    text, as in the prepared data (word vocabularies: lower-cased, split on spaces)."""
    cfg, models, task = _load(Path(run_dir), cpu)
    if cfg.task.name == "snli":
        raise PipelineError(f"{run_dir} is an SNLI run: attend() needs a seq2seq run")
    return _attend(cfg, task, _beam_generator(cfg, models, task), models, sentence, cpu)


def normalize_sentence(sentence):
    """A source sentence as the prepared data has it: lower-cased, single spaces."""
    return " ".join(sentence.lower().split())


def _attend(cfg, task, generator, models, sentence, cpu):
    normalized = text = normalize_sentence(sentence)
    if cfg.task.vocab == "spm":
        import sentencepiece

        model = Path(cfg.task.data) / "spm.model"
        text = " ".join(sentencepiece.SentencePieceProcessor(model_file=str(model)).encode(
            text, out_type=str))  # fmt: skip
    source_dict, target_dict = task.source_dictionary, task.target_dictionary
    tokens = source_dict.encode_line(text, add_if_not_exist=False, append_eos=True).long()
    sample = {
        "id": torch.tensor([0]),
        "net_input": {
            "src_tokens": tokens.unsqueeze(0),
            "src_lengths": torch.tensor([len(tokens)]),
        },
    }
    sample = _to_device(sample, cpu)
    with torch.no_grad():
        best = task.inference_step(generator, models, sample)[0][0]
    attention = best["attention"].float().cpu()[: len(tokens)].t()
    return {
        "sentence": normalized,
        "source": [source_dict[t] for t in tokens],
        "target": [target_dict[t] for t in best["tokens"]],
        "attention": attention.tolist(),
    }


def _without_padding(tokens, dictionary):
    """Tokens without padding (sources are right-padded: left_pad_source=false)."""
    return tokens[tokens != dictionary.pad()].cpu()


def _text_metrics(metric, hypotheses, references):
    if metric == "bleu":
        import sacrebleu

        bleu = sacrebleu.metrics.BLEU(tokenize="none")  # the data is tokenized already
        score = bleu.corpus_score(hypotheses, [references])
        return {"bleu": score.score, "bleu_signature": str(bleu.get_signature())}
    if metric == "rouge":
        per_example = _per_example_scores(metric, hypotheses, references)
        return {name: sum(scores) / max(len(scores), 1) for name, scores in per_example.items()}
    raise PipelineError(f"unknown evaluation metric {metric!r}; use bleu, rouge or accuracy")


def _per_example_scores(metric, hypotheses, references):
    """What a paired significance test needs, example by example: BLEU's sufficient
    statistics (corpus BLEU is a function of their sums), or each example's ROUGE F1
    (the reported ROUGE is their mean)."""
    if metric == "bleu":
        import sacrebleu

        bleu = sacrebleu.metrics.BLEU(tokenize="none")
        stats = []
        for hypothesis, reference in zip(hypotheses, references, strict=True):
            score = bleu.sentence_score(hypothesis, [reference])
            stats.append([*score.counts, *score.totals, score.sys_len, score.ref_len])
        return {"bleu_stats": stats}
    from rouge_score import rouge_scorer

    names = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(names, use_stemmer=False)
    scores = [scorer.score(r, h) for h, r in zip(hypotheses, references, strict=True)]
    return {f"{name}_f1": [100 * s[name].fmeasure for s in scores] for name in names}


def evaluate_classification(cfg, models, task, cpu):
    (model,) = models
    start = time.perf_counter()
    predictions = task.predict(model, cfg.task.eval.split)
    seconds = time.perf_counter() - start
    correct = [int(p["prediction"] == p["label"]) for p in predictions]
    weights = [torch.tensor(p["attention"]) for p in predictions]
    result = {
        "metrics": {"accuracy": 100 * sum(correct) / max(len(predictions), 1)},
        "attention": attention_stats(weights),
        "throughput": {"classify_sentences_per_s": len(predictions) / seconds},
        "attention_examples": [
            {
                "source": p["premise_tokens"],
                "target": [p["prediction"]],
                "attention": [p["attention"]],
            }
            for p in predictions[:ATTENTION_EXAMPLES]
        ],
        "examples": len(predictions),
        "per_example": {"predictions": [p["prediction"] for p in predictions], "correct": correct},
    }
    if cfg.task.eval.split != "valid":
        result["valid_metrics"] = {"accuracy": task.accuracy(model, "valid")}
    return result


def result_path(cfg, run_dir):
    """<results_dir>/runs/<run name>.json: one file per run, never shared."""
    runs_root = Path(cfg.runs_dir)
    try:
        name = run_dir.resolve().relative_to(runs_root.resolve())
    except ValueError:
        name = Path(run_dir.name)
    return Path(cfg.results_dir) / "runs" / f"{name}.json"


def evaluate_run(run_dir, cpu=True, extra=None):
    """Evaluate the best checkpoint of ``run_dir``; write and return its results."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    cfg, models, task = _load(run_dir, cpu)
    evaluate = evaluate_classification if cfg.task.name == "snli" else evaluate_seq2seq
    evaluated = evaluate(cfg, models, task, cpu)
    evaluated["throughput"].update(extra or _throughput_from_log(run_dir))
    evaluated["throughput"]["train_wall_s"] = training_seconds(run_dir)
    evaluated["throughput"]["evaluate_wall_s"] = time.perf_counter() - start
    metrics = evaluated["metrics"]
    result = {
        "task": cfg.task.name,
        "arch": cfg.task.arch,
        "model": cfg.model.name,
        "mapping": OmegaConf.to_container(cfg.mapping),
        "seed": cfg.seed,
        "profile": cfg.profile.name,
        "profile_note": cfg.profile.note,
        "split": cfg.task.eval.split,
        "examples": evaluated["examples"],
        "metrics": metrics,
        "valid_metrics": evaluated.get("valid_metrics", {}),
        "attention": evaluated["attention"],
        "throughput": evaluated["throughput"],
        "run_dir": _display_path(run_dir),
        "git": _git_state(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": OmegaConf.to_container(cfg),
        "attention_examples": evaluated["attention_examples"],
        "per_example": evaluated["per_example"],
    }
    if "sentence_attention" in evaluated:
        result["sentence_attention"] = evaluated["sentence_attention"]
    path = result_path(cfg, run_dir)
    write_json_atomic(path, result)
    summary = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{cfg.task.name} {cfg.mapping.name} seed {cfg.seed}: {summary}; results in {path}")
    return result


def training_seconds(run_dir):
    """The wall-clock seconds a run trained, summed over its resumed parts (what fairseq
    keeps in its last checkpoint; work lost to an interruption after it is not counted),
    or None without that checkpoint."""
    from fairseq.checkpoint_utils import load_checkpoint_to_cpu

    last = Path(run_dir) / CHECKPOINTS / "checkpoint_last.pt"
    if not last.is_file():
        return None
    return load_checkpoint_to_cpu(str(last))["extra_state"].get("previous_training_time")


def _display_path(path):
    """``path`` relative to the repository when it is inside it (no machine paths in
    committed results)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _throughput_from_log(run_dir):
    from .pipeline import ThroughputLog

    log = ThroughputLog()
    path = run_dir / "train.log"
    if path.is_file():
        for line in path.read_text().splitlines():
            message = line.split("] - ", 1)[-1]  # Hydra's format: [time][logger][LEVEL] - msg
            match = log.EPOCH_STATS.match(message)
            if match:
                log.words_per_second.append(float(match.group(1)))
    return {"train_target_tokens_per_s": log.words_per_second}
