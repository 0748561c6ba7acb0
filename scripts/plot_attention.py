"""Attention heatmaps of evaluated runs: one figure per task and example, one panel
per mapping (the paper's figures 2 and 3, from our own runs).

    python scripts/plot_attention.py results/quick    # writes results/quick/figures/*.png
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.make_tables import load_runs, mapping_label, mapping_rank  # noqa: E402


def plot_example(panels, path):
    """panels: list of (title, example) sharing one source; saves one figure."""
    n = len(panels)
    source = panels[0][1]["source"]
    rows = max(len(example["target"]) for _, example in panels)
    width = max(4.0, 0.32 * len(source)) * min(n, 3)
    height = max(2.0, 0.28 * rows + 1.4) * ((n + 2) // 3)
    fig, axes = plt.subplots(
        (n + 2) // 3,
        min(n, 3),
        figsize=(width, height),
        squeeze=False,
        gridspec_kw={"hspace": 0.25 + 0.03 * max(map(len, source))},  # room for the labels
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
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_runs(results_dir, seed=None):
    runs = load_runs(results_dir)
    chosen = defaultdict(dict)  # (task, arch, model) -> mapping label -> run (lowest seed)
    for run in runs:
        if seed is not None and run["seed"] != seed:
            continue
        label = mapping_label(run["mapping"])
        key = (run["task"], run["arch"], run["model"])
        current = chosen[key].get(label)
        if current is None or run["seed"] < current["seed"]:
            chosen[key][label] = run
    written = []
    for (task, arch, model), by_label in sorted(chosen.items()):
        labels = sorted(by_label, key=lambda x: (mapping_rank(x), x))
        count = min(len(by_label[label]["attention_examples"]) for label in labels)
        for index in range(count):
            panels = [(label, by_label[label]["attention_examples"][index]) for label in labels]
            path = results_dir / "figures" / f"{task}_{arch}-{model}_example{index}.png"
            plot_example(panels, path)
            written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--seed", type=int, help="plot this seed (default: the lowest)")
    args = parser.parse_args()
    for path in plot_runs(args.results_dir, args.seed):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
