"""Training and decoding speed of every mapping relative to softmax, in one sitting.

Identical runs vary by about 15 % on a shared machine, so the mappings are measured
interleaved: each round trains every mapping for the same number of updates (in a
fresh run directory, the order rotated from round to round) and decodes the
validation split with each trained run given; a mapping's ratio is the median over
rounds of its speed over softmax's in the same round. A second experiment compares
one run with two threads against two single-threaded runs at once (what the suite
driver does).

    python scripts/time_mappings.py --task nmt --updates 100 --rounds 3 \
        --runs runs/reduced/nmt/lstm_attn-small/{softmax,sparsemax-gamma10}/seed1 \
        --out results/reduced/timing

With ``--runs`` the mappings are those of the runs, with their settings (gamma, lam,
p, read from each run's run.yaml), one of them softmax; without it, every mapping at
its default settings, and decoding is not timed.

Writes ``timing.json`` (every measurement) and ``timing.md`` (the tables), atomically.
Pause other jobs first, or say what ran beside it with ``--note``.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_ops import provenance, report_header, write_atomic  # noqa: E402
from scripts.make_tables import mapping_label  # noqa: E402

MAPPINGS = ["softmax", "sparsemax", "fusedmax", "oscarmax", "sq_pnorm_max", "entmax15"]
# fairseq's end-of-epoch training statistics (as tasks/pipeline.py's ThroughputLog).
EPOCH_STATS = re.compile(r"epoch \d+ \| (?!valid).*\| wps ([\d.]+) ")


def mapping_overrides(mapping):
    """train.py overrides selecting a mapping config, e.g. {"name": "fusedmax",
    "lam": 0.3} -> ["mapping=fusedmax", "mapping.lam=0.3"]."""
    return [f"mapping={mapping['name']}"] + [
        f"mapping.{key}={value}" for key, value in mapping.items() if key != "name"
    ]


def mappings_of_runs(run_dirs, task):
    """The label, mapping config and run directory (decode_run) of each trained run,
    in the order given; exits with a clear error on a directory that is not a
    finished run of ``task``."""
    from omegaconf import OmegaConf

    found = []
    for run_dir in run_dirs:
        config = run_dir / "run.yaml"
        if not config.is_file() or not (run_dir / "checkpoints" / "checkpoint_best.pt").is_file():
            sys.exit(
                f"error: --runs {run_dir}: not a trained run of scripts/train.py "
                "(needs run.yaml and checkpoints/checkpoint_best.pt)"
            )
        cfg = OmegaConf.load(config)
        if cfg.task.name != task:
            sys.exit(f"error: --runs {run_dir}: a {cfg.task.name} run, not {task} (--task)")
        mapping = OmegaConf.to_container(cfg.mapping)
        found.append(
            {"label": mapping_label(mapping), "mapping": mapping, "decode_run": str(run_dir)}
        )
    labels = [entry["label"] for entry in found]
    if len(set(labels)) < len(labels):
        sys.exit(f"error: --runs: two runs of one mapping and settings ({', '.join(labels)})")
    if not any(entry["mapping"]["name"] == "softmax" for entry in found):
        sys.exit("error: --runs: one of the runs must be softmax's, the ratios' baseline")
    return found


def train(task, profile, mapping, updates, runs_dir, threads):
    """Start a short training run (no evaluation) of ``mapping`` (a mapping config)
    in a subprocess; returns it."""
    command = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        f"task={task}",
        f"profile={profile}",
        *mapping_overrides(mapping),
        "seed=1",
        f"task.optim.max_update={updates}",
        "evaluate=false",
        f"runs_dir={runs_dir}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    log = open(Path(runs_dir) / "train.out", "w")  # noqa: SIM115 (closed by wait_for)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = log
    return process


def wait_for(process, runs_dir, label):
    """Wait for a run of ``train``; returns its training target tokens per second."""
    process.wait()
    process.log.close()
    output = Path(process.log.name).read_text()
    if process.returncode != 0:
        sys.exit(f"error: training {label} failed (exit {process.returncode}):\n{output[-3000:]}")
    logs = list(Path(runs_dir).rglob("train.log"))
    speeds = [float(m.group(1)) for log in logs for m in EPOCH_STATS.finditer(log.read_text())]
    if not speeds:
        sys.exit(f"error: no epoch statistics in the logs of {label} under {runs_dir}")
    return speeds[-1]


def decode_speed(run_dir, threads):
    """Validation sentences decoded per second (beam search) by a trained run."""
    import torch

    from tasks import evaluation

    torch.set_num_threads(threads)
    return evaluation.decode_throughput(Path(run_dir), split="valid")


def median_ratios(rounds, key, labels, baseline):
    """Per mapping label: the median over rounds of its value over the baseline's
    (softmax's) in the same round."""
    ratios = {}
    for label in labels:
        values = [r[key][label] / r[key][baseline] for r in rounds if label in r.get(key, {})]
        if values:
            ratios[label] = statistics.median(values)
    return ratios


def markdown(report):
    lines = [
        f"# Training and decoding speed per mapping ({report['task']}, profile "
        f"{report['profile']})",
        "",
        f"{provenance(report)}; {report['threads']} thread(s) per run. Command: "
        f"`{report['command']}`",
    ]
    if report["note"]:
        lines += ["", f"Note: {report['note']}"]
    decoded = [m["label"] for m in report["mappings"] if m["decode_run"]]
    settings = (
        "the settings of the trained runs decoded"
        if decoded
        else "each mapping's default settings; no trained runs given, so decoding is not timed"
    )
    lines += [
        "",
        f"Each of {len(report['rounds'])} rounds trains every mapping for "
        f"{report['updates']} updates from scratch ({settings}) and decodes the validation "
        "split (beam search) with each trained run given; the order rotates from round "
        "to round. Ratio: the median over rounds of the mapping's speed over softmax's "
        "in the same round (> 1 is faster than softmax).",
    ]
    if decoded:
        lines += ["", "Runs decoded:", ""]
        lines += [
            f"- {m['label']}: `{m['decode_run']}`" for m in report["mappings"] if m["decode_run"]
        ]
    lines += [
        "",
        "| mapping | train target tokens/s | ratio | decode sentences/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = [m["label"] for m in report["mappings"]]
    rounds, baseline = report["rounds"], report["baseline"]
    train_ratio = median_ratios(rounds, "train_tokens_per_s", labels, baseline)
    decode_ratio = median_ratios(rounds, "decode_sentences_per_s", labels, baseline)
    for label in labels:
        train_values = [r["train_tokens_per_s"][label] for r in rounds]
        decode_values = [
            r["decode_sentences_per_s"][label]
            for r in rounds
            if label in r.get("decode_sentences_per_s", {})
        ]
        decode = (
            f"{statistics.median(decode_values):.1f} | {decode_ratio[label]:.2f}"
            if decode_values
            else "– | –"
        )
        lines.append(
            f"| {label} | {statistics.median(train_values):.0f} | {train_ratio[label]:.2f} | "
            f"{decode} |"
        )
    threads = report.get("threads_experiment")
    if threads:
        lines += [
            "",
            "## One run with two threads, or two single-threaded runs at once",
            "",
            f"softmax, {report['updates']} updates per run, {len(threads)} rounds "
            "(median). Total: the target tokens per second of the machine.",
            "",
            "| setting | tokens/s per run | total tokens/s |",
            "|---|---:|---:|",
        ]
        one = statistics.median(t["one_run_two_threads"] for t in threads)
        each = statistics.median(statistics.mean(t["two_runs_one_thread"]) for t in threads)
        lines.append(f"| 1 run x 2 threads | {one:.0f} | {one:.0f} |")
        lines.append(f"| 2 runs x 1 thread | {each:.0f} | {2 * each:.0f} |")
        lines.append("")
        better = "two single-threaded runs" if 2 * each > one else "one two-threaded run"
        lines.append(f"On this machine {better} get more done ({2 * each / one:.2f}x).")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="nmt", choices=["nmt", "summarization", "snli"])
    parser.add_argument("--profile", default="reduced")
    parser.add_argument("--updates", type=int, default=100, help="updates per training run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    parser.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="trained run directories of this task (one of them softmax's): each is "
        "decoded, and its mapping, with its settings, is the one trained; without it, "
        "every mapping at its defaults, and decoding is not timed",
    )
    parser.add_argument(
        "--no-threads-experiment", action="store_true", help="skip 1x2 vs 2x1 threads"
    )
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", type=Path, required=True, help="output stem, e.g. results/x")
    args = parser.parse_args()
    if args.updates < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--updates, --rounds and --threads must be >= 1")
    if args.task == "snli" and args.runs:
        parser.error("--runs: decoding speed is for the seq2seq tasks (nmt, summarization)")

    if args.runs:
        mappings = mappings_of_runs(args.runs, args.task)
    else:
        mappings = [
            {"label": name, "mapping": {"name": name}, "decode_run": None} for name in MAPPINGS
        ]
    baseline = next(m["label"] for m in mappings if m["mapping"]["name"] == "softmax")

    report = {
        **report_header(args.note),
        "task": args.task,
        "profile": args.profile,
        "updates": args.updates,
        "threads": args.threads,
        "mappings": mappings,
        "baseline": baseline,
        "rounds": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="time_mappings_") as scratch:
        for index in range(args.rounds):
            shift = index % len(mappings)
            order = mappings[shift:] + mappings[:shift]
            measured = {
                "order": [m["label"] for m in order],
                "train_tokens_per_s": {},
                "decode_sentences_per_s": {},
            }
            for position, entry in enumerate(order):
                label = entry["label"]
                runs_dir = Path(scratch) / f"round{index}" / str(position)
                runs_dir.mkdir(parents=True)
                process = train(
                    args.task, args.profile, entry["mapping"], args.updates, runs_dir, args.threads
                )
                measured["train_tokens_per_s"][label] = wait_for(process, runs_dir, label)
                if entry["decode_run"]:
                    speed = decode_speed(entry["decode_run"], args.threads)
                    measured["decode_sentences_per_s"][label] = speed
                print(f"round {index + 1}: {label} done", file=sys.stderr)
            report["rounds"].append(measured)
        if not args.no_threads_experiment:
            report["threads_experiment"] = []
            for index in range(args.rounds):
                base = Path(scratch) / f"threads{index}"
                one_dir, a_dir, b_dir = base / "one", base / "a", base / "b"
                for path in (one_dir, a_dir, b_dir):
                    path.mkdir(parents=True)
                softmax = {"name": "softmax"}
                one = wait_for(
                    train(args.task, args.profile, softmax, args.updates, one_dir, 2),
                    one_dir,
                    "softmax",
                )
                pair = [
                    train(args.task, args.profile, softmax, args.updates, path, 1)
                    for path in (a_dir, b_dir)
                ]
                two = [wait_for(p, d, "softmax") for p, d in zip(pair, (a_dir, b_dir), strict=True)]
                report["threads_experiment"].append(
                    {"one_run_two_threads": one, "two_runs_one_thread": two}
                )
                print(f"threads round {index + 1} done", file=sys.stderr)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_atomic(args.out.with_suffix(".md"), text)
    print(text)
    print(f"wrote {args.out}.json and .md ({report['elapsed_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
