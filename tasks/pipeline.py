"""Glue between our Hydra configs (configs/) and fairseq: build a fairseq config from
a run's config, train it resumably in its own directory, and find its outputs.

Used by scripts/train.py and scripts/evaluate.py; importing it registers the user
dir (models, tasks, criterions) with fairseq.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path
from unittest import mock

from omegaconf import DictConfig, OmegaConf

import regattn

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "tasks"
RUN_CONFIG = "run.yaml"  # the resolved config a run directory was created with
CHECKPOINTS = "checkpoints"

logger = logging.getLogger("regattn.pipeline")


class PipelineError(Exception):
    """A problem the user can fix; reported as one line, without a traceback."""


def mapping_tag(mapping):
    """A run-directory name for a mapping and its parameters, e.g. fusedmax-lam0.1."""
    params = {k: v for k, v in mapping.items() if k != "name"}
    defaults = regattn.mapping_params(mapping["name"])
    shown = [f"{k}{v:g}" for k, v in sorted(params.items()) if v != defaults.get(k)]
    return "-".join([mapping["name"], *shown])


OmegaConf.register_new_resolver("mapping_tag", mapping_tag, replace=True)


def mapping_function(mapping):
    """The regattn mapping a config selects, with its parameters validated."""
    params = {k: v for k, v in mapping.items() if k != "name"}
    try:
        return regattn.get_mapping(mapping["name"], **params)
    except ValueError as error:
        raise PipelineError(f"mapping: {error}") from None


def warm_up(mapping):
    """Compile (or load from numba's cache) the mapping's kernels, with and without a
    mask (numba compiles each separately), so that the first training step or the
    decoding throughput does not pay for it."""
    import torch

    scores = torch.randn(4, 5, requires_grad=True)
    attend = mapping_function(mapping)
    for mask in (None, scores > -1):
        attend(scores, mask=mask).sum().backward()


def check_data(task):
    """The prepared data directory exists, is complete, and has the task's vocabulary."""
    data = Path(task.data)
    meta_file = data / "meta.json"
    prepare = f"python scripts/prepare_data.py {task.prepare} --vocab {task.vocab} --dest {data}"
    if not meta_file.is_file():
        raise PipelineError(
            f"data directory {data} is missing or incomplete (no meta.json): prepare it with "
            f"`{prepare} --raw RAW_DIR` (RAW_DIR: the output of scripts/download_data.py, "
            "or data/samples for the bundled samples, whose translation pair is fr-en)"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("vocab") != task.vocab:
        raise PipelineError(
            f"data directory {data} was prepared with vocab={meta.get('vocab')!r} but the "
            f"config asks for task.vocab={task.vocab!r}: set task.vocab={meta.get('vocab')} "
            f"or prepare another directory with `{prepare} --raw RAW_DIR`"
        )
    return meta


def check_eval(task):
    """task.eval.sentence (optional): a source sentence whose attention the evaluation
    records in the result file; translation and summarization only."""
    sentence = task.eval.get("sentence")
    if sentence is None:
        return
    if not isinstance(sentence, str) or not sentence.split():
        raise PipelineError(
            f"task.eval.sentence={sentence!r}: give a tokenized source sentence, or leave it out"
        )
    if task.name == "snli":
        raise PipelineError(
            f"task.eval.sentence={sentence!r}: SNLI classifies sentence pairs; recording one "
            "sentence's attention is for the seq2seq tasks (nmt, summarization)"
        )


def check_run_dir(cfg, run_dir):
    """Record the run's config in its directory, or check that the directory holds the
    same run (so that rerunning a command resumes it and never mixes two runs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / RUN_CONFIG
    identity = OmegaConf.to_yaml(_identity(cfg))
    if record.exists():
        previous = record.read_text()
        if previous != identity:
            changed = _changed_keys(OmegaConf.create(previous), OmegaConf.create(identity))
            changed = changed or ["only in formatting"]
            raise PipelineError(
                f"run directory {run_dir} holds a run with other settings ({', '.join(changed)}); "
                "set run_name=... to start a separate run"
            )
    else:
        tmp = record.with_suffix(".tmp")
        tmp.write_text(identity)
        tmp.replace(record)


def _identity(cfg):
    """What defines a run's results: everything but bookkeeping switches."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("evaluate", "device", "hydra"):
        resolved.pop(key, None)
    return OmegaConf.create(resolved)


def _changed_keys(old, new, prefix=""):
    keys = sorted(set(old) | set(new))
    changed = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, DictConfig) and isinstance(b, DictConfig):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a} -> {b}")
    return changed


def attention_options(mapping):
    """The model options that select the regattn mapping (tasks/ model configs)."""
    options = {"attention_mapping": mapping["name"], "attention_gamma": mapping["gamma"]}
    if "lam" in mapping:
        options["attention_lambda"] = mapping["lam"]
    if "p" in mapping:
        options["attention_p"] = mapping["p"]
    return options


def fairseq_config(cfg, run_dir, cpu):
    """The fairseq config of a run: merged onto FairseqConfig, with the registered
    dataclass defaults added (no argparse bridge, which clears Hydra's state)."""
    from fairseq import utils
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.dataclass.initialize import add_defaults

    task, optim = cfg.task, cfg.task.optim
    model = OmegaConf.to_container(cfg.model[task.arch], resolve=True)
    overrides = {
        "common": {
            "seed": cfg.seed,
            "user_dir": str(USER_DIR),
            "cpu": cpu,
            "log_format": "simple",
            "log_interval": 50,
        },
        "task": {**OmegaConf.to_container(task.fairseq, resolve=True), "data": str(task.data)},
        "model": {**model, **attention_options(cfg.mapping)},
        "criterion": OmegaConf.to_container(task.criterion, resolve=True),
        "optimizer": optimizer_config(optim),
        "lr_scheduler": OmegaConf.to_container(optim.lr_scheduler, resolve=True),
        "optimization": {
            "lr": [optim.lr],
            "clip_norm": optim.clip_norm,
            "max_epoch": optim.max_epoch,
            "max_update": optim.max_update,
        },
        "dataset": {"batch_size": optim.batch_size, "num_workers": 0, "validate_interval": 1},
        "checkpoint": {
            "save_dir": str(run_dir / CHECKPOINTS),
            "no_epoch_checkpoints": True,
            "best_checkpoint_metric": task.best_checkpoint_metric,
            "maximize_best_checkpoint_metric": task.maximize_best_checkpoint_metric,
            # Early stopping: stop after this many epochs without a better validation
            # metric (task.optim.patience; -1, the default, trains every epoch).
            "patience": OmegaConf.select(optim, "patience", default=-1),
        },
    }
    fs_cfg = OmegaConf.merge(OmegaConf.structured(FairseqConfig), overrides)
    utils.import_user_module(fs_cfg.common)
    add_defaults(fs_cfg)
    return fs_cfg


def optimizer_config(optim):
    """The fairseq optimizer node. Dataclass optimizers (adam) fill their own options
    from the shared optimisation settings; legacy ones (sgd, the paper's) read ``lr``
    and their argparse options from this node, so it gets them: the argparse defaults,
    then the config's values, then the learning rate."""
    import argparse

    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY, OPTIMIZER_REGISTRY

    node = OmegaConf.to_container(optim.optimizer, resolve=True)
    name = node["_name"]
    if name not in OPTIMIZER_REGISTRY:
        raise PipelineError(
            f"task.optim.optimizer._name={name!r} is not a fairseq optimizer; choose one of "
            f"{', '.join(sorted(OPTIMIZER_REGISTRY))}"
        )
    if OPTIMIZER_DATACLASS_REGISTRY.get(name) is not None:
        return node
    parser = argparse.ArgumentParser(add_help=False)
    OPTIMIZER_REGISTRY[name].add_args(parser)
    return {**vars(parser.parse_args([])), **node, "lr": [optim.lr]}


def reset_fairseq_state():
    """fairseq keeps 'best so far' in function attributes; a second training in the
    same process would skip checkpoint_best.pt."""
    from fairseq import checkpoint_utils
    from fairseq_cli import train as fairseq_train

    for function, names in (
        (checkpoint_utils.save_checkpoint, ("best",)),
        (fairseq_train.should_stop_early, ("best", "num_runs")),
    ):
        for name in names:
            if hasattr(function, name):
                delattr(function, name)


class ThroughputLog(logging.Handler):
    """Keeps the training words-per-second fairseq logs at the end of each epoch."""

    EPOCH_STATS = re.compile(r"^epoch \d+ \| (?!valid).*\| wps ([\d.]+) ")

    def __init__(self):
        super().__init__()
        self.words_per_second = []

    def emit(self, record):
        match = self.EPOCH_STATS.match(record.getMessage())
        if match:
            self.words_per_second.append(float(match.group(1)))


def atomic_copy(src_path, dst_path, overwrite=False):
    """fairseq saves a checkpoint once and copies it to its other names
    (checkpoint_best.pt to checkpoint_last.pt) with a plain copy: a run killed during
    the copy would leave a truncated checkpoint_last.pt that no resume can load. Copy
    to a temporary name and rename, as fairseq's own save does."""
    partial = f"{dst_path}.tmp"
    shutil.copyfile(src_path, partial)
    os.replace(partial, dst_path)
    return True


def train(cfg, run_dir, cpu):
    """Train (or resume) the run of ``cfg`` in ``run_dir``; returns its throughput.
    (Under scripts/train.py, Hydra logs everything to ``run_dir``/train.log.)"""
    from fairseq import distributed_utils
    from fairseq.file_io import PathManager
    from fairseq_cli import train as fairseq_train

    warm_up(cfg.mapping)
    check_data(cfg.task)
    check_eval(cfg.task)
    check_run_dir(cfg, run_dir)
    fs_cfg = fairseq_config(cfg, run_dir, cpu)
    reset_fairseq_state()
    throughput = ThroughputLog()
    # The epoch statistics come from fairseq's progress bar logger (renamed to "train"
    # while it prints them); Hydra and pytest may leave it below INFO.
    epoch_stats = logging.getLogger("fairseq.logging.progress_bar")
    level = epoch_stats.level
    epoch_stats.setLevel(logging.INFO)
    epoch_stats.addHandler(throughput)
    try:
        with mock.patch.object(PathManager, "copy", staticmethod(atomic_copy)):
            distributed_utils.call_main(fs_cfg, fairseq_train.main)
    finally:
        epoch_stats.removeHandler(throughput)
        epoch_stats.setLevel(level)
    logger.info("checkpoints in %s", run_dir / CHECKPOINTS)
    return {"train_target_tokens_per_s": throughput.words_per_second}
