"""Attention heatmaps of evaluated runs: one figure per task and example, one panel
per mapping (the paper's figures 2 and 3, from our own runs). Every nonzero weight
is written in its cell, so groups of equal weights (fusedmax, oscarmax) show.

    python scripts/plot_attention.py results/quick    # writes results/quick/figures/*.png
    python scripts/plot_attention.py results/reduced --task nmt   # one task (fr->en)

Each mapping is drawn at its settings with the most seeds (those of the table, not the
probes that chose them); --all-settings draws every setting.

    # a sentence of your own, through the trained checkpoints of a task's runs:
    python scripts/plot_attention.py results/reduced --task nmt --name fr-en_paper \
        --sentence "son application est en fin de compte laissée à la discrétion des états ."

With --sentence, each panel shows the model's own output. A run trained with that
sentence as ``task.eval.sentence`` recorded its output and attention in its result
file; any other run (the lowest seed of each mapping, or --seed) must still have its
run directory (``run_dir`` in its result file, below --runs-root) with
checkpoint_best.pt.

    # the chosen settings only, in this order (labels as in table.md):
    python scripts/plot_attention.py results/reduced --task nmt --name fr-en_paper \
        --sentence "..." --mappings "fusedmax (lam=0.1, gamma=3)" softmax "sparsemax (gamma=3)"
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.make_tables import load_runs, mapping_label, mapping_rank  # noqa: E402


def plot_example(panels, path, caption=None):
    """panels: list of (title, example) sharing one source; saves one figure."""
    n = len(panels)
    source = panels[0][1]["source"]
    rows = max(len(example["target"]) for _, example in panels)
    width = max(4.0, 0.32 * len(source)) * min(n, 3)
    height = max(2.0, 0.28 * rows + 1.4) * ((n + 2) // 3)
    # The constrained layout makes room for each panel's rotated source words.
    fig, axes = plt.subplots(
        (n + 2) // 3, min(n, 3), figsize=(width, height), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, example) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(example["attention"], cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(example["source"])))
        ax.set_xticklabels(example["source"], rotation=90, fontsize=7)
        ax.set_yticks(range(len(example["target"])))
        ax.set_yticklabels(example["target"], fontsize=7)
        for row, weights in enumerate(example["attention"]):
            for column, weight in enumerate(weights):
                if weight > 0.005:
                    text = f"{weight:.2f}"
                    text = "1" if text == "1.00" else text[1:]  # .37, not 0.37
                    color = "white" if weight > 0.5 else "black"
                    ax.text(column, row, text, ha="center", va="center", fontsize=4.5,
                            color=color)  # fmt: skip
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    if caption:
        fig.suptitle(caption, fontsize=8, wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def choose_runs(results_dir, seed=None, task=None, all_settings=False):
    """(task, arch, model) -> mapping label -> run of that seed (default: the lowest).
    The task is named with its recipe's run suffix (task.run_suffix), as the figures
    are: a data variant or recipe gets figures of its own; ``task`` picks one (exits
    with the task names there when it has no runs). Unless ``all_settings``, each
    mapping keeps only its settings with the most seeds: the ones chosen for the
    table, not the probes that chose them."""
    chosen = defaultdict(dict)
    seeds = defaultdict(lambda: defaultdict(set))  # key -> label -> seeds run
    task_names = set()
    for run in load_runs(results_dir):
        task_name = run["task"] + run["config"]["task"].get("run_suffix", "")
        key = (task_name, run["arch"], run["model"])
        label = mapping_label(run["mapping"])
        seeds[key][label].add(run["seed"])
        if seed is not None and run["seed"] != seed:
            continue
        task_names.add(task_name)
        if task and task_name != task:
            continue
        current = chosen[key].get(label)
        if current is None or run["seed"] < current["seed"]:
            chosen[key][label] = run
    if task and not chosen:
        sys.exit(f"error: --task {task!r}: no runs{'' if seed is None else f' of seed {seed}'}; "
                 f"the tasks there are {', '.join(sorted(task_names)) or 'none'} (with their "
                 "recipes' run suffixes, as in the figure names)")  # fmt: skip
    if not all_settings:
        for key, by_label in chosen.items():
            kept = most_seeded(seeds[key])
            chosen[key] = {label: run for label, run in by_label.items() if label in kept}
    return chosen


def most_seeded(seeds_by_label):
    """The labels whose setting has the most seeds among its mapping's settings."""
    most = defaultdict(int)
    for label, seeds in seeds_by_label.items():
        name = label.split(" ")[0]
        most[name] = max(most[name], len(seeds))
    return {
        label for label, seeds in seeds_by_label.items() if len(seeds) == most[label.split(" ")[0]]
    }


def panel_labels(by_label, mappings=None):
    """The mapping labels to plot: ``mappings`` in their order (each must have a run),
    or every label, in the paper's order."""
    if not mappings:
        return sorted(by_label, key=lambda x: (mapping_rank(x), x))
    missing = [label for label in mappings if label not in by_label]
    if missing:
        sys.exit(
            f"error: --mappings {', '.join(map(repr, missing))}: no such run; the labels "
            f"there are {', '.join(map(repr, sorted(by_label)))}"
        )
    return list(mappings)


def plot_runs(results_dir, seed=None, mappings=None, task=None, all_settings=False):
    chosen = choose_runs(results_dir, seed, task, all_settings or bool(mappings))
    written = []
    for (task, arch, model), by_label in sorted(chosen.items()):
        if mappings and not set(mappings) <= set(by_label):
            continue  # a model without the chosen runs (another task, say)
        labels = panel_labels(by_label, mappings)
        count = min(len(by_label[label]["attention_examples"]) for label in labels)
        for index in range(count):
            panels = [(label, by_label[label]["attention_examples"][index]) for label in labels]
            path = results_dir / "figures" / f"{task}_{arch}-{model}_example{index}.png"
            plot_example(panels, path)
            written.append(path)
    return written


def sentence_attention(run, sentence, runs_root, label):
    """The run's output and attention for ``sentence``: from its result file when it
    recorded that sentence (task.eval.sentence), else through its checkpoint."""
    from tasks.evaluation import attend, normalize_sentence

    recorded = run.get("sentence_attention")
    if recorded and recorded["sentence"] == normalize_sentence(sentence):
        return recorded
    run_dir = runs_root / run["run_dir"]
    if not (run_dir / "checkpoints" / "checkpoint_best.pt").is_file():
        sys.exit(f"error: no checkpoint for {label} at {run_dir} and its result file has no "
                 "attention for this sentence: train it first (or point --runs-root to where "
                 "the run directories are, or --seed to runs trained with "
                 "task.eval.sentence set to it)")  # fmt: skip
    return attend(run_dir, sentence)


def plot_sentence(
    results_dir, task, sentence, name, runs_root, seed=None, caption=None, mappings=None,
    all_settings=False,
):  # fmt: skip
    """One figure per model of ``task``: every mapping's attention on ``sentence``
    (or that of ``mappings``, in their order)."""
    chosen = choose_runs(results_dir, seed, task, all_settings or bool(mappings))
    written = []
    for (task_name, arch, model), by_label in sorted(chosen.items()):
        panels = []
        for label in panel_labels(by_label, mappings):
            run = by_label[label]
            example = sentence_attention(run, sentence, runs_root, label)
            panels.append((f"{label} (seed {run['seed']})", example))
        path = results_dir / "figures" / f"{task_name}_{arch}-{model}_{name}.png"
        plot_example(panels, path, caption)
        written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--seed", type=int, help="plot this seed (default: the lowest)")
    parser.add_argument("--sentence", help="a tokenized source sentence to translate")
    parser.add_argument(
        "--task",
        help="the task to draw, with its recipe's run suffix if it has one, as in the "
        "figure names (nmt, nmt_de-en_drop0.3-patience3); needed with --sentence, whose "
        "task's runs translate it; without, every task",
    )
    parser.add_argument("--name", default="sentence", help="with --sentence: figure name")
    parser.add_argument("--caption", help="with --sentence: a caption for the figure")
    parser.add_argument(
        "--runs-root", type=Path, default=REPO, help="where run_dir paths start (default: repo)"
    )
    parser.add_argument(
        "--mappings",
        nargs="+",
        metavar="LABEL",
        help="plot these mappings only, in this order (labels as in table.md)",
    )
    parser.add_argument(
        "--all-settings",
        action="store_true",
        help="a panel for every setting of a mapping, probes included (default: each "
        "mapping's settings with the most seeds, those of the table)",
    )
    args = parser.parse_args()
    if args.sentence:
        if not args.task:
            parser.error("--sentence needs --task (nmt, summarization, or one with a suffix)")
        written = plot_sentence(args.results_dir, args.task, args.sentence, args.name,
                                args.runs_root, args.seed, args.caption, args.mappings,
                                args.all_settings)  # fmt: skip
    else:
        written = plot_runs(
            args.results_dir, args.seed, args.mappings, args.task, args.all_settings
        )
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
