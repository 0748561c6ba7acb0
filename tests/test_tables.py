"""scripts/make_tables.py on synthetic run files: grouping, the paired significance
test, missing runs and --check."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts import make_tables, plot_attention  # noqa: E402

N = 400  # test examples


def run_file(mapping, seed, correct, task="snli", commit="abc1234"):
    """A run result as tasks/evaluation.py writes it, for SNLI accuracy."""
    accuracy = 100 * float(np.mean(correct))
    config = {"task": {"name": task}, "mapping": mapping, "seed": seed, "model": {"name": "tiny"}}
    return {
        "task": task, "arch": "snli_attn", "model": "tiny", "mapping": mapping, "seed": seed,
        "profile": "test", "profile_note": "synthetic runs", "split": "test", "examples": N,
        "metrics": {"accuracy": accuracy}, "valid_metrics": {"accuracy": accuracy - 1},
        "attention": {"mean_support": 3.0, "mean_fused_runs": 2.0, "zero_share": 0.5},
        "throughput": {}, "git": {"commit": commit + "0" * 33, "dirty": False},
        "config": config, "per_example": {"correct": [int(c) for c in correct]},
    }  # fmt: skip


def write_runs(results, runs):
    for run in runs:
        mapping = run["mapping"]
        name = f"{run['task']}/{mapping['name']}/{mapping.get('lam', '')}-{mapping['gamma']}"
        path = results / "runs" / name / f"seed{run['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))


def correctness(rng, accuracy):
    return rng.random(N) < accuracy


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    runs = []
    for seed in (1, 2, 3):
        base = correctness(rng, 0.6)
        runs.append(run_file({"name": "softmax", "gamma": 1.0}, seed, base))
        # sparsemax: the same predictions as softmax but 2 examples of 400
        same = base.copy()
        same[:2] = ~same[:2]
        runs.append(run_file({"name": "sparsemax", "gamma": 1.0}, seed, same))
        # fusedmax: right on 40 % of the examples softmax gets wrong
        better = base | (rng.random(N) < 0.4)
        runs.append(run_file({"name": "fusedmax", "gamma": 1.0, "lam": 0.1}, seed, better))
    write_runs(tmp_path, runs)
    return tmp_path


def rows(text):
    return {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| snli")}


def test_paired_bootstrap_separates_a_real_gain_from_noise(results):
    table = rows(make_tables.make_tables(results))
    assert set(table) == {"softmax", "sparsemax", "fusedmax (lam=0.1)"}
    better = table["fusedmax (lam=0.1)"]
    assert "(p < 0.001) *" in better and "| 3 |" in better
    noise = table["sparsemax"]
    p = float(noise.split("(p = ")[1].split(")")[0])
    assert p > 0.05 and "*" not in noise.split("(p =")[1].split("|")[0]
    assert "81.66" in table["softmax"] and "82.41" in better  # the paper's, unverified


def test_identical_systems_have_p_one():
    rng = np.random.default_rng(1)
    runs = [run_file({"name": m, "gamma": 1.0}, 1, correctness(rng, 0.5)) for m in ("softmax",)]
    twin = copy.deepcopy(runs[0])
    twin["mapping"] = twin["config"]["mapping"] = {"name": "sparsemax", "gamma": 1.0}
    delta, p = make_tables.paired_bootstrap("accuracy", [twin], runs)
    assert delta == 0 and p == 1.0


def test_bleu_bootstrap_uses_the_sufficient_statistics():
    import sacrebleu

    hypotheses = ["a cat sat on the mat", "the dog ran", "hello there world"]
    references = ["a cat sat on a mat", "the dog ran away", "hello world"]
    bleu = sacrebleu.metrics.BLEU(tokenize="none")
    stats = []
    for h, r in zip(hypotheses, references, strict=True):
        s = bleu.sentence_score(h, [r])
        stats.append([*s.counts, *s.totals, s.sys_len, s.ref_len])
    corpus = bleu.corpus_score(hypotheses, [references]).score
    assert make_tables.corpus_value("bleu", np.asarray(stats, float)) == pytest.approx(corpus)


def test_settings_and_commits_are_never_mixed_silently(results):
    extra = run_file({"name": "softmax", "gamma": 1.0}, 4, np.ones(N, bool), commit="def5678")
    extra["config"]["task"]["optim"] = {"lr": 0.5}  # another setting: another row
    write_runs(results, [extra])
    text = make_tables.make_tables(results)
    softmax_rows = [
        line for line in text.splitlines() if line.startswith("| snli_attn (tiny) | softmax |")
    ]
    assert len(softmax_rows) == 2
    assert any("def5678" in row and "| 1 |" in row for row in softmax_rows)


def test_one_seed_settings_are_listed_apart_from_the_seeded_ones(results):
    probe = run_file({"name": "sparsemax", "gamma": 4.0}, 1, np.ones(N, bool))
    write_runs(results, [probe])
    lines = make_tables.make_tables(results).splitlines()
    probes = lines.index(next(line for line in lines if line.startswith("Settings with one seed")))
    seeded = [line for line in lines[:probes] if line.startswith("| snli_attn")]
    apart = [line for line in lines[probes:] if line.startswith("| snli_attn")]
    assert len(seeded) == 3 and all("| 3 |" in line for line in seeded)
    assert len(apart) == 1 and "sparsemax (gamma=4) | 1 |" in apart[0]
    assert lines[probes + 2].startswith("| model | mapping | seeds |")  # a table of its own
    # Without any seeded setting there is nothing to set apart: one table.
    for path in (results / "runs").rglob("seed[23].json"):
        path.unlink()
    assert "Settings with one seed" not in make_tables.make_tables(results)


def test_a_recorded_sentence_does_not_make_another_setting(results):
    for path in (results / "runs").rglob("seed*.json"):
        run = json.loads(path.read_text())
        run["config"]["task"]["eval"] = {"beam": 5}
        if run["seed"] == 2:
            run["config"]["task"]["eval"]["sentence"] = "a man ."
        path.write_text(json.dumps(run))
    assert "| snli_attn (tiny) | softmax | 3 |" in make_tables.make_tables(results)


def test_the_time_runs_took_is_summed_over_those_that_record_it(results):
    assert "Time:" not in make_tables.make_tables(results)  # runs from before it was kept
    for path in (results / "runs").rglob("seed[12].json"):
        run = json.loads(path.read_text())
        run["throughput"] = {"train_wall_s": 1800.0, "evaluate_wall_s": 360.0}
        path.write_text(json.dumps(run))
    text = make_tables.make_tables(results)
    assert "Time: 3.0 h training and 36 min evaluating" in text
    assert "for the 6 of these 9 runs that record it" in text


def test_check_fails_on_a_stale_table_and_passes_after_regeneration(results):
    script = [sys.executable, str(REPO / "scripts" / "make_tables.py"), str(results)]
    subprocess.run(script, check=True, capture_output=True)
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0
    table = results / "table.md"
    table.write_text(table.read_text().replace("softmax", "softmax (edited)", 1))
    stale = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert stale.returncode != 0 and "not what the run files give" in stale.stderr


def test_missing_suite_runs_are_named(results):
    line = f"task=snli profile=reduced results_dir={results} mapping=entmax15 seed=1,2"
    (results / "suite.yaml").write_text(f"snli_more:\n  - {line}\n")
    text = make_tables.make_tables(results)
    assert "## Runs not finished (2)" in text
    assert f"- `task=snli profile=reduced results_dir={results} mapping=entmax15 seed=2`" in text


def test_plot_attention_task_names_one_recipe(results):
    recipe = run_file({"name": "softmax", "gamma": 1.0}, 1, np.ones(N, dtype=bool))
    recipe["config"]["task"]["run_suffix"] = "_more-data"
    (results / "runs" / "recipe.json").write_text(json.dumps(recipe))
    assert sorted(key[0] for key in plot_attention.choose_runs(results)) == [
        "snli", "snli_more-data"
    ]  # fmt: skip
    assert list(plot_attention.choose_runs(results, task="snli")) == [("snli", "snli_attn", "tiny")]
    with pytest.raises(SystemExit, match="'snli_other': no runs; the tasks there are snli, snli_m"):
        plot_attention.plot_runs(results, task="snli_other")


def test_plot_attention_panels_follow_the_paper_or_the_chosen_mappings():
    by_label = {"fusedmax (lam=0.1)": 1, "sparsemax (gamma=3)": 2, "softmax": 3, "sparsemax": 4}
    assert plot_attention.panel_labels(by_label) == [
        "softmax", "sparsemax", "sparsemax (gamma=3)", "fusedmax (lam=0.1)"
    ]  # fmt: skip
    chosen = ["fusedmax (lam=0.1)", "softmax", "sparsemax (gamma=3)"]
    assert plot_attention.panel_labels(by_label, chosen) == chosen
    with pytest.raises(SystemExit, match="--mappings 'oscarmax': no such run; the labels"):
        plot_attention.panel_labels(by_label, ["softmax", "oscarmax"])


def test_plot_attention_draws_the_seeded_settings_not_the_probes(results):
    # A one-seed probe of sparsemax at gamma 3 beside the fixture's three seeds at gamma 1.
    probe = run_file({"name": "sparsemax", "gamma": 3.0}, 1, np.ones(N, dtype=bool))
    write_runs(results, [probe])
    labels = set(plot_attention.choose_runs(results)[("snli", "snli_attn", "tiny")])
    assert labels == {"softmax", "sparsemax", "fusedmax (lam=0.1)"}
    # The seed picked does not change which settings are the table's.
    assert set(plot_attention.choose_runs(results, seed=1)[("snli", "snli_attn", "tiny")]) == labels
    every = plot_attention.choose_runs(results, all_settings=True)[("snli", "snli_attn", "tiny")]
    assert set(every) == labels | {"sparsemax (gamma=3)"}


def test_most_seeded_keeps_ties_and_single_seed_mappings():
    seeds = {"softmax": {1}, "sparsemax": {1}, "sparsemax (gamma=3)": {1}, "fusedmax": {1, 2}}
    assert plot_attention.most_seeded(seeds) == {"softmax", "sparsemax", "sparsemax (gamma=3)",
                                                 "fusedmax"}  # fmt: skip
    seeds["sparsemax (gamma=3)"] = {1, 2}
    assert plot_attention.most_seeded(seeds) == {"softmax", "sparsemax (gamma=3)", "fusedmax"}
