"""The training pipeline end to end (configs -> fairseq -> evaluation -> tables) on
tiny cuts of the bundled samples, for every task and every mapping; resuming a
killed run; configuration errors."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import regattn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tasks import evaluation, pipeline  # noqa: E402

LINES = {"train": 96, "valid": 24, "test": 24}  # per split, cut from data/samples
PREPARE = {
    "snli": ["--task", "snli"],
    "nmt_fr-en": ["--task", "nmt", "--src", "fr", "--tgt", "en"],
    "summarization": ["--task", "summarization"],
}


def _cut(source, target, lines):
    with gzip.open(source, "rt") as src, gzip.open(target, "wt") as dst:
        for _, line in zip(range(lines), src, strict=False):
            dst.write(line)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """data/samples cut to a few dozen examples per split, prepared for all tasks."""
    raw = tmp_path_factory.mktemp("raw")
    for path in (REPO / "data" / "samples").rglob("*.gz"):
        split = next((s for s in LINES if s in path.name), "valid")  # dev/val/test_2016
        target = raw / path.relative_to(REPO / "data" / "samples")
        target.parent.mkdir(parents=True, exist_ok=True)
        _cut(path, target, LINES["test" if "test" in path.name else split])
    root = tmp_path_factory.mktemp("data-bin")
    for name, args in PREPARE.items():
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "prepare_data.py"), *args,
             "--raw", str(raw), "--dest", str(root / name)],
            check=True, capture_output=True,
        )  # fmt: skip
    return root


def make_config(data_root, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(
            "main",
            overrides=[
                next((o for o in overrides if o.startswith("profile=")), "profile=smoke"),
                f"data_root={data_root}",
                f"runs_dir={tmp_path / 'runs'}",
                f"results_dir={tmp_path / 'results'}",
                "task.optim.max_update=3",
                *(o for o in overrides if not o.startswith("profile=")),
            ],
        )


def run_dir_of(cfg):
    return Path(cfg.runs_dir) / cfg.run_name


@pytest.mark.parametrize("task", ["snli", "nmt", "summarization"])
@pytest.mark.parametrize("mapping", list(regattn.MAPPINGS))
def test_train_and_evaluate_every_task_and_mapping(data_root, tmp_path, task, mapping):
    cfg = make_config(data_root, tmp_path, f"task={task}", f"mapping={mapping}")
    run_dir = run_dir_of(cfg)
    throughput = pipeline.train(cfg, run_dir, cpu=True)
    assert (run_dir / "checkpoints" / "checkpoint_best.pt").is_file()
    result = evaluation.evaluate_run(run_dir, cpu=True, extra=throughput)
    saved = json.loads(evaluation.result_path(cfg, run_dir).read_text())
    assert saved["metrics"] == result["metrics"]
    assert saved["mapping"]["name"] == mapping and saved["seed"] == cfg.seed
    assert saved["git"]["commit"] and saved["config"]["task"]["name"] == task
    metric = {"snli": "accuracy", "nmt": "bleu", "summarization": "rouge1_f1"}[task]
    assert 0 <= saved["metrics"][metric] <= 100
    attention = saved["attention"]
    assert attention["distributions"] > 0 and attention["mean_support"] >= 1
    assert 0 <= attention["zero_share"] < 1
    if mapping == "softmax":
        assert attention["zero_share"] == 0
    assert saved["throughput"]["train_target_tokens_per_s"]
    assert saved["throughput"]["train_wall_s"] > 0 and saved["throughput"]["evaluate_wall_s"] > 0
    assert saved["attention_examples"][0]["attention"]
    # What paired significance tests and model selection need.
    per_example = saved["per_example"]
    scores = {"snli": "correct", "nmt": "bleu_stats", "summarization": "rouge1_f1"}[task]
    assert len(per_example[scores]) == saved["examples"]
    assert metric in saved["valid_metrics"]


@pytest.mark.parametrize("task", ["snli", "nmt", "summarization"])
def test_paper_profile_trains_a_few_updates(data_root, tmp_path, task):
    """The paper's model sizes and optimisation (SGD for translation and summarization,
    whose legacy fairseq optimizer reads its lr from its own config node; Adam for SNLI)."""
    cfg = make_config(data_root, tmp_path, f"task={task}", "profile=paper", "mapping=fusedmax")
    assert cfg.profile.name == "paper" and cfg.model.name == "paper"
    run_dir = run_dir_of(cfg)
    pipeline.train(cfg, run_dir, cpu=True)
    assert (run_dir / "checkpoints" / "checkpoint_best.pt").is_file()
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    optimizer = {"snli": "adam", "nmt": "sgd", "summarization": "sgd"}[task]
    assert cfg.task.optim.optimizer._name == optimizer, log[-500:]


def plot_sentence_command(results, sentence, name):
    """plot_attention.py on ``sentence`` through the nmt runs of ``results`` (run_dir is
    repo-relative when the run is inside the repository, absolute otherwise)."""
    script = str(REPO / "scripts" / "plot_attention.py")
    return [sys.executable, script, str(results), "--task", "nmt", "--sentence", sentence,
            "--name", name, "--runs-root", "/"]  # fmt: skip


def test_tables_and_figures_from_run_files(data_root, tmp_path):
    for mapping in ("softmax", "fusedmax"):
        cfg = make_config(data_root, tmp_path, "task=nmt", f"mapping={mapping}")
        throughput = pipeline.train(cfg, run_dir_of(cfg), cpu=True)
        evaluation.evaluate_run(run_dir_of(cfg), cpu=True, extra=throughput)
    results = tmp_path / "results"
    for script in ("make_tables.py", "plot_attention.py"):
        subprocess.run([sys.executable, str(REPO / "scripts" / script), str(results)], check=True)
    table = (results / "table.md").read_text()
    assert "| lstm_attn (tiny) | softmax | 1 |" in table and "fusedmax (lam=0.1)" in table
    assert list((results / "figures").glob("nmt_lstm_attn-tiny_example*.png"))
    # A sentence of one's own, through the checkpoints.
    sentence = "un homme regarde la mer ."
    example = evaluation.attend(run_dir_of(cfg), sentence)
    assert example["source"][:2] == ["un", "homme"] and example["source"][-1] == "</s>"
    assert len(example["attention"]) == len(example["target"])
    assert all(abs(sum(row) - 1) < 1e-5 for row in example["attention"])
    command = plot_sentence_command(results, sentence, "mine")
    command += ["--mappings", "fusedmax (lam=0.1)", "softmax"]  # these panels, in this order
    subprocess.run(command, check=True)
    assert (results / "figures" / "nmt_lstm_attn-tiny_mine.png").is_file()


def test_a_recorded_sentence_draws_without_checkpoint(data_root, tmp_path):
    """task.eval.sentence records the model's output and attention for a sentence in the
    result file (figures from runs whose checkpoints are gone), and changes nothing
    else: such a run is a seed of the same setting as one without it."""
    sentence = "Un homme  regarde la mer ."
    plain = make_config(data_root, tmp_path, "task=nmt", "seed=1")
    recording = make_config(data_root, tmp_path, "task=nmt", "seed=2",
                            f"+task.eval.sentence='{sentence}'")  # fmt: skip
    for cfg in (plain, recording):
        throughput = pipeline.train(cfg, run_dir_of(cfg), cpu=True)
        evaluation.evaluate_run(run_dir_of(cfg), cpu=True, extra=throughput)
    saved = json.loads(evaluation.result_path(recording, run_dir_of(recording)).read_text())
    recorded = saved["sentence_attention"]
    assert recorded == evaluation.attend(run_dir_of(recording), sentence)
    assert recorded["sentence"] == "un homme regarde la mer ."
    assert recorded["source"][:2] == ["un", "homme"]
    assert "sentence_attention" not in json.loads(
        evaluation.result_path(plain, run_dir_of(plain)).read_text()
    )
    results = tmp_path / "results"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(results)],
                   check=True)  # fmt: skip
    assert "| lstm_attn (tiny) | softmax | 2 |" in (results / "table.md").read_text()
    for checkpoint in (tmp_path / "runs").rglob("checkpoint*.pt"):
        checkpoint.unlink()
    plot = plot_sentence_command(results, sentence, "recorded")
    subprocess.run([*plot, "--seed", "2"], check=True)
    assert (results / "figures" / "nmt_lstm_attn-tiny_recorded.png").is_file()
    # Seed 1 recorded nothing and has no checkpoint left: a clear error, not a traceback.
    missing = subprocess.run([*plot, "--seed", "1"], capture_output=True, text=True)
    assert missing.returncode != 0
    assert "no checkpoint for softmax" in missing.stderr and "task.eval.sentence" in missing.stderr
    # --task names one recipe (run suffix included): another recipe's runs, which did
    # not record the sentence, are not drawn, nor needed.
    other = json.loads(evaluation.result_path(recording, run_dir_of(recording)).read_text())
    other["config"]["task"]["run_suffix"] = "_de-en"
    del other["sentence_attention"]
    (results / "runs" / "other_recipe.json").write_text(json.dumps(other))
    (results / "figures" / "nmt_lstm_attn-tiny_recorded.png").unlink()
    subprocess.run([*plot, "--seed", "2"], check=True)
    assert [path.name for path in (results / "figures").glob("*recorded.png")] == [
        "nmt_lstm_attn-tiny_recorded.png"
    ]
    unknown = subprocess.run([*plot, "--seed", "2", "--task", "nmt_fr-en"], capture_output=True,
                             text=True)  # fmt: skip
    assert unknown.returncode != 0 and "the tasks there are nmt, nmt_de-en" in unknown.stderr


@pytest.mark.parametrize(
    ("task", "sentence", "message"),
    [
        ("snli", "a man .", "SNLI classifies sentence pairs"),
        ("nmt", "  ", "give a tokenized source sentence"),
    ],
)
def test_a_sentence_to_record_is_checked_before_training(
    data_root, tmp_path, task, sentence, message
):
    cfg = make_config(data_root, tmp_path, f"task={task}", f"+task.eval.sentence='{sentence}'")
    with pytest.raises(pipeline.PipelineError, match=message):
        pipeline.train(cfg, run_dir_of(cfg), cpu=True)
    assert not (run_dir_of(cfg) / "checkpoints").exists()


def test_rerun_resumes_and_other_settings_are_refused(data_root, tmp_path):
    cfg = make_config(data_root, tmp_path, "task=snli")
    pipeline.train(cfg, run_dir_of(cfg), cpu=True)
    pipeline.train(cfg, run_dir_of(cfg), cpu=True)  # the same run: resumes, trains nothing
    changed = make_config(data_root, tmp_path, "task=snli", "task.optim.lr=0.5")
    assert run_dir_of(changed) == run_dir_of(cfg)
    with pytest.raises(pipeline.PipelineError, match=r"other settings \(task.optim.lr"):
        pipeline.train(changed, run_dir_of(changed), cpu=True)


def test_killed_training_resumes_from_its_last_checkpoint(data_root, tmp_path):
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), "task=snli", "profile=smoke",
        f"data_root={data_root}", f"runs_dir={tmp_path / 'runs'}",
        f"results_dir={tmp_path / 'results'}", "evaluate=false",
        "task.optim.max_update=0", "task.optim.max_epoch=40", "task.optim.batch_size=2",
    ]  # fmt: skip
    run_dir = tmp_path / "runs" / "snli" / "snli_attn-tiny" / "softmax" / "seed1"
    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "training never wrote its first checkpoint"
    log = (run_dir / "train.log").read_text()
    assert "done training" not in log, "the run finished before it could be killed"
    trained_before = evaluation.training_seconds(run_dir)
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "Loaded checkpoint" in log and "done training" in log
    assert "epoch 040" in log
    # The training time a result file records adds up the resumed parts.
    assert evaluation.training_seconds(run_dir) > trained_before > 0


def test_a_checkpoint_copy_killed_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """fairseq copies checkpoint_best.pt to checkpoint_last.pt; training makes the
    copy atomic, so a kill during it leaves the previous checkpoint_last.pt."""
    best, last = tmp_path / "checkpoint_best.pt", tmp_path / "checkpoint_last.pt"
    best.write_bytes(b"new state " * 100)
    last.write_bytes(b"old state")

    def killed_midway(source, target):
        Path(target).write_bytes(Path(source).read_bytes()[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        pipeline.atomic_copy(str(best), str(last))
    assert last.read_bytes() == b"old state"
    monkeypatch.undo()
    assert pipeline.atomic_copy(str(best), str(last))
    assert last.read_bytes() == best.read_bytes()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mapping.lam=-1", "mapping=fusedmax"], "mapping: lam must be a finite number >= 0"),
        (["mapping.gamma=0"], "mapping: gamma must be a finite number > 0"),
        (["data_root=/nonexistent"], "data directory /nonexistent/snli is missing"),
        (["task.vocab=spm"], "was prepared with vocab='word' but the config asks for"),
    ],
)
def test_config_errors_are_one_clear_line(data_root, tmp_path, overrides, message):
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), "task=snli", "profile=smoke",
        f"data_root={data_root}", f"runs_dir={tmp_path / 'runs'}", *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line, result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "mapping=fusemax"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Could not find 'mapping/fusemax'" in result.stderr
    assert "fusedmax" in result.stderr and "oscarmax" in result.stderr


def test_evaluate_script_rejects_a_directory_without_a_run(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "evaluate.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "is not a run directory of scripts/train.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_early_stopping_patience_reaches_fairseq(data_root, tmp_path):
    default = make_config(data_root, tmp_path, "task=summarization")
    assert pipeline.fairseq_config(default, tmp_path, cpu=True).checkpoint.patience == -1
    cfg = make_config(data_root, tmp_path, "task=summarization", "+task.optim.patience=3")
    assert pipeline.fairseq_config(cfg, tmp_path, cpu=True).checkpoint.patience == 3
