"""Turn evaluated runs into comparison tables (never typed by hand).

    python scripts/make_tables.py results/reduced           # writes results/reduced/table.md
    python scripts/make_tables.py results/reduced --check   # fails if table.md is stale

Reads every <results dir>/runs/**.json written by scripts/evaluate.py (or train.py).
Runs are grouped into one table per task (and data variant), and within it by their
full settings (the config without seed and output places): a cell never averages
runs of different settings, and the commits each cell comes from are listed. Cells
are mean ± standard deviation over seeds; when some settings of a table have several
seeds, those with one (the selection probes) are listed in a table of their own
below them. Each mapping is compared with softmax of
the same settings on the same test examples: Δ is the mean over the seeds both have
of the difference of the metric, p the two-sided paired bootstrap p-value (1000
resamples of the test examples, each example's scores summed over those seeds;
BLEU from the resampled sufficient statistics, as in Koehn 2004). When the results
directory holds a suite file (suite.yaml, see scripts/run_suite.py), the runs it
lists that have no result yet are named under the tables.
"""

import argparse
import difflib
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.evaluation import write_text_atomic  # noqa: E402

METRICS = {  # task -> the metrics of its table, in order; the first is tested
    "snli": ["accuracy"],
    "nmt": ["bleu"],
    "summarization": ["rouge1_f1", "rouge2_f1", "rougeL_f1"],
}
TITLES = {
    "snli": "SNLI accuracy (%)",
    "nmt": "Translation BLEU",
    "summarization": "Summarization ROUGE F1 (%)",
}
# The SNLI test accuracies commonly quoted for the paper. They could not be checked
# against the paper's text, so every table says they are unverified. The paper's
# Table 2 and 3 numbers are not known well enough to show at all.
PAPER_SNLI = {"softmax": 81.66, "sparsemax": 82.39, "fusedmax": 82.41, "oscarmax": 81.76}
MAPPING_ORDER = ["softmax", "sparsemax", "fusedmax", "oscarmax", "sq_pnorm_max", "entmax15"]
BASELINE = "softmax"
BOOTSTRAP_SAMPLES = 1000
SEED_AND_PLACES = ("seed", "run_name", "runs_dir", "results_dir")


def load_runs(results_dir):
    runs = []
    for path in sorted((results_dir / "runs").rglob("*.json")):
        runs.append(json.loads(path.read_text()))
    if not runs:
        sys.exit(f"error: no run results under {results_dir / 'runs'}: evaluate some runs first")
    return runs


def mapping_label(mapping):
    params = [f"{k}={v:g}" for k, v in mapping.items() if k not in ("name", "gamma")]
    if mapping.get("gamma", 1.0) != 1.0:
        params.append(f"gamma={mapping['gamma']:g}")
    return mapping["name"] + (f" ({', '.join(params)})" if params else "")


def mapping_rank(label):
    """Where a mapping label sorts: the paper's order, then anything else."""
    name = label.split(" ")[0]
    return MAPPING_ORDER.index(name) if name in MAPPING_ORDER else len(MAPPING_ORDER)


def mean_std(values, digits=2):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _settings(run, without_mapping=False):
    """What makes runs comparable as seeds of one setting: the config without the seed
    and the bookkeeping of where things go (and without the mapping, to find the
    softmax runs a mapping is compared with)."""
    config = {k: v for k, v in run["config"].items() if k not in SEED_AND_PLACES}
    # The sentence whose attention a run records for a figure changes none of its results.
    task = config["task"]
    if "sentence" in task.get("eval", {}):
        config["task"] = {
            **task,
            "eval": {k: v for k, v in task["eval"].items() if k != "sentence"},
        }
    if without_mapping:
        config.pop("mapping")
    return json.dumps(config, sort_keys=True)


def _commit(run):
    return run["git"]["commit"][:7] + ("+dirty" if run["git"]["dirty"] else "")


# ---------------------------------------------------------------- significance


def example_scores(run, metric):
    """Per-example scores of a run's test outputs: BLEU's sufficient statistics, or
    the example's accuracy / ROUGE value. None for runs evaluated before they were saved."""
    per_example = run.get("per_example") or {}
    if metric == "bleu":
        stats = per_example.get("bleu_stats")
        return None if stats is None else np.asarray(stats, dtype=float)
    key = "correct" if metric == "accuracy" else metric
    values = per_example.get(key)
    if values is None:
        return None
    return np.asarray(values, dtype=float)[:, None] * (100.0 if metric == "accuracy" else 1.0)


def corpus_value(metric, scores):
    """The corpus metric of per-example scores (summed over seeds): corpus BLEU from
    the summed statistics, else the mean."""
    if metric != "bleu":
        return float(scores.mean())
    from sacrebleu.metrics import BLEU

    totals = [int(v) for v in scores.sum(axis=0)]
    return BLEU.compute_bleu(
        totals[0:4], totals[4:8], totals[8], totals[9], smooth_method="exp"
    ).score


def paired_bootstrap(metric, mapping_runs, baseline_runs):
    """(Δ, p): the mean metric difference over common seeds, and the two-sided paired
    bootstrap p-value of the pooled difference; None when not computable."""
    by_seed = {run["seed"]: run for run in baseline_runs}
    pairs = [(run, by_seed[run["seed"]]) for run in mapping_runs if run["seed"] in by_seed]
    if not pairs:
        return None
    delta = statistics.mean(a["metrics"][metric] - b["metrics"][metric] for a, b in pairs)
    ours = [example_scores(a, metric) for a, _ in pairs]
    theirs = [example_scores(b, metric) for _, b in pairs]
    if any(s is None for s in ours + theirs) or len({len(s) for s in ours + theirs}) != 1:
        return delta, None
    ours, theirs = sum(ours), sum(theirs)
    rng = np.random.default_rng(0)
    n = len(ours)
    differences = np.empty(BOOTSTRAP_SAMPLES)
    for b in range(BOOTSTRAP_SAMPLES):
        sample = rng.integers(0, n, n)
        differences[b] = corpus_value(metric, ours[sample]) - corpus_value(metric, theirs[sample])
    one_sided = min((differences <= 0).mean(), (differences >= 0).mean())
    return delta, min(1.0, 2 * one_sided)


def significance_cell(result):
    if result is None:
        return "–"
    delta, p = result
    if p is None:
        return f"{delta:+.2f} (no per-example outputs)"
    marker = " *" if p < 0.05 else ""
    # No resample went the other way: all the bootstrap can say is p < 1 / samples.
    shown = f"p < {1 / BOOTSTRAP_SAMPLES:g}" if p == 0 else f"p = {p:.3f}"
    return f"{delta:+.2f} ({shown}){marker}"


# ---------------------------------------------------------------------- tables


def task_table(task, runs):
    groups = defaultdict(list)
    for run in runs:
        suffix = run["config"]["task"].get("run_suffix", "")  # a recipe variant's name
        label = (f"{run['arch']} ({run['model']}){suffix}", mapping_label(run["mapping"]))
        groups[(*label, _settings(run))].append(run)
    order = sorted(groups, key=lambda key: (key[0], mapping_rank(key[1]), key[1], key[2]))
    baselines = {}  # settings without the mapping -> the softmax runs (gamma 1 first)
    for group in sorted(groups.values(), key=lambda g: g[0]["mapping"].get("gamma", 1.0) != 1.0):
        if group[0]["mapping"]["name"] == BASELINE:
            baselines.setdefault(_settings(group[0], without_mapping=True), group)
    metrics = METRICS[task]
    header = ["model", "mapping", "seeds", *metrics, f"Δ vs {BASELINE} ({metrics[0]})"]
    header += [f"valid {metrics[0]}"]
    if task == "snli":
        header.append("paper (unverified)")
    header += ["support", "fused runs", "zero share", "commits"]

    def row(key):
        group = sorted(groups[key], key=lambda run: run["seed"])
        cells = [key[0], key[1], str(len(group))]
        cells += [mean_std([run["metrics"][m] for run in group]) for m in metrics]
        baseline = baselines.get(_settings(group[0], without_mapping=True))
        if group[0]["mapping"]["name"] == BASELINE or baseline is None:
            cells.append("–")
        else:
            cells.append(significance_cell(paired_bootstrap(metrics[0], group, baseline)))
        cells.append(
            mean_std([r["valid_metrics"][metrics[0]] for r in group if r.get("valid_metrics")])
        )
        if task == "snli":
            paper = PAPER_SNLI.get(group[0]["mapping"]["name"])
            cells.append(f"{paper:.2f}" if paper is not None else "–")
        cells.append(mean_std([run["attention"]["mean_support"] for run in group]))
        cells.append(mean_std([run["attention"]["mean_fused_runs"] for run in group]))
        cells.append(mean_std([run["attention"]["zero_share"] for run in group], digits=3))
        cells.append(", ".join(sorted({_commit(run) for run in group})))
        return "| " + " | ".join(cells) + " |"

    def table(keys):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *map(row, keys)]

    seeded = [key for key in order if len(groups[key]) > 1]
    single = [key for key in order if len(groups[key]) == 1]
    if not seeded or not single:
        return table(order)
    # The settings compared over seeds first; the selection probes (and any setting
    # whose other seeds are still to run) apart, so that a one-seed row is not read
    # as a result of the same standing.
    return [
        *table(seeded),
        "",
        "Settings with one seed: the probes that chose the settings above (on the valid "
        "column), and any setting whose other seeds are still to run.",
        "",
        *table(single),
    ]


def time_line(runs):
    """The wall-clock time the runs that record it (train_wall_s, evaluate_wall_s)
    took, in all, and how many of the runs that is (older runs did not record it)."""
    timed = [run for run in runs if run["throughput"].get("train_wall_s") is not None]
    if not timed:
        return []
    train = sum(run["throughput"]["train_wall_s"] for run in timed)
    evaluate = sum(run["throughput"].get("evaluate_wall_s") or 0 for run in timed)
    return [
        f"Time: {duration(train)} training and {duration(evaluate)} evaluating (wall clock, "
        f"summed over the runs), for the {len(timed)} of these {len(runs)} runs that record it."
    ]


def duration(seconds):
    """Hours to one decimal, or whole minutes under an hour: "2.5 h", "42 min"."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table_key(run):
    """One table per task and data variant (configs/task/*.yaml ``variant``; for
    translation, the language pair)."""
    task = run["config"]["task"]
    variant = task.get("variant", "")
    if run["task"] == "nmt" and not variant:
        variant = f"{task['source_lang']}→{task['target_lang']}"
    return run["task"], variant


def missing_runs(results_dir):
    """train.py overrides of the suite's runs that have no result file yet."""
    suite = results_dir / "suite.yaml"
    if not suite.is_file():
        return []
    from scripts.run_suite import load_suite, run_paths

    return [
        " ".join(overrides)
        for _, overrides in load_suite(suite)
        if not run_paths(overrides)[1].is_file()
    ]


def make_tables(results_dir):
    runs = load_runs(results_dir)
    by_table = defaultdict(list)
    for run in runs:
        by_table[table_key(run)].append(run)
    profiles = sorted({run["profile"] for run in runs})
    notes = sorted({run["profile_note"] for run in runs})
    lines = [
        f"# Results: profile {', '.join(profiles)}",
        "",
        *[f"*{note}.*" for note in notes],
        "",
        f"Generated by `python scripts/make_tables.py {results_dir}` from {len(runs)} run "
        f"files in `{results_dir / 'runs'}`. Metric cells are mean ± standard deviation "
        f"over seeds. Δ vs {BASELINE}: the mean difference over the seeds both have, with "
        "the two-sided paired bootstrap p-value on the same test examples (* p < 0.05). "
        "Valid: the validation split, on which checkpoints and hyperparameters are "
        "chosen. Support is the mean number of positions with nonzero attention, fused "
        "runs the mean number of runs of equal consecutive nonzero weights, zero share "
        "the fraction of exactly-zero attention weights; commits are those of the runs "
        "in the cell.",
    ]
    order = sorted(by_table, key=lambda key: (list(METRICS).index(key[0]), key[1]))
    for task, variant in order:
        table_runs = by_table[task, variant]
        split = sorted({run["split"] for run in table_runs})
        examples = sorted({run["examples"] for run in table_runs})
        title = TITLES[task] + (f", {variant}" if variant else "")
        lines += ["", f"## {title}", ""]
        lines.append(f"Split: {', '.join(split)} ({', '.join(map(str, examples))} examples).")
        lines += time_line(table_runs)
        data_notes = sorted({run["config"]["task"].get("data_note", "") for run in table_runs})
        lines += [f"Data: {note}" for note in data_notes if note]
        if task == "summarization":
            lines.append(
                "Data: the Gigaword sample; its test split is the first valid pairs "
                '("Gigaword valid-1k sample"), not Gigaword test or DUC.'
            )
        if task != "snli":
            lines.append(
                "The paper's numbers for this table are not shown: no copy of its text "
                "was available to check them."
            )
        lines += ["", *task_table(task, table_runs)]
    missing = missing_runs(results_dir)
    if missing:
        lines += ["", f"## Runs not finished ({len(missing)})", ""]
        lines += [
            f"The suite ({results_dir / 'suite.yaml'}) lists these runs; they have no "
            "result file yet, so the tables above are incomplete:",
            "",
        ]
        lines += [f"- `{overrides}`" for overrides in missing]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="e.g. results/reduced")
    parser.add_argument(
        "--check", action="store_true", help="regenerate and fail if table.md differs"
    )
    args = parser.parse_args()
    text = make_tables(args.results_dir)
    path = args.results_dir / "table.md"
    if args.check:
        committed = path.read_text() if path.is_file() else ""
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(), text.splitlines(), str(path), "regenerated", lineterm=""
            )
            print("\n".join(diff))
            sys.exit(f"error: {path} is not what the run files give; rerun without --check")
        print(f"{path} is up to date")
        return
    write_text_atomic(path, text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
