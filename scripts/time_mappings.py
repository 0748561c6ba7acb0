"""Training and decoding speed of every mapping relative to softmax, in one sitting.

Identical runs vary by about 15 % on a shared machine, so the mappings are measured
interleaved: each round trains every mapping for the same number of updates (in a
fresh run directory, the order rotated from round to round) and decodes the
validation split with each trained checkpoint given; a mapping's ratio is the
median over rounds of its speed over softmax's in the same round. A second
experiment compares one run with two threads against two single-threaded runs at
once (what the suite driver does).

    python scripts/time_mappings.py --task nmt --updates 100 --rounds 3 \
        --checkpoints runs/reduced --out results/reduced/timing

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

MAPPINGS = ["softmax", "sparsemax", "fusedmax", "oscarmax", "sq_pnorm_max", "entmax15"]
# fairseq's end-of-epoch training statistics (as tasks/pipeline.py's ThroughputLog).
EPOCH_STATS = re.compile(r"epoch \d+ \| (?!valid).*\| wps ([\d.]+) ")


def train(task, profile, mapping, updates, runs_dir, threads):
    """Start a short training run (no evaluation) in a subprocess; returns it."""
    command = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        f"task={task}",
        f"profile={profile}",
        f"mapping={mapping}",
        "seed=1",
        f"task.optim.max_update={updates}",
        "evaluate=false",
        f"runs_dir={runs_dir}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    log = open(Path(runs_dir) / f"{mapping}.out", "w")  # noqa: SIM115 (closed by wait_for)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = log
    return process


def wait_for(process, runs_dir, mapping):
    """Wait for a run of ``train``; returns its training target tokens per second."""
    process.wait()
    process.log.close()
    output = Path(process.log.name).read_text()
    if process.returncode != 0:
        sys.exit(f"error: training {mapping} failed (exit {process.returncode}):\n{output[-3000:]}")
    logs = list(Path(runs_dir).rglob("train.log"))
    speeds = [float(m.group(1)) for log in logs for m in EPOCH_STATS.finditer(log.read_text())]
    if not speeds:
        sys.exit(f"error: no epoch statistics in the logs of {mapping} under {runs_dir}")
    return speeds[-1]


def decode_speed(run_dir, threads):
    """Validation sentences decoded per second (beam search) by a trained run."""
    import torch

    from tasks import evaluation

    torch.set_num_threads(threads)
    return evaluation.decode_throughput(Path(run_dir), split="valid")


def median_ratios(rounds, key):
    """Per mapping: the median over rounds of its value over softmax's in the round."""
    ratios = {}
    for name in MAPPINGS:
        values = [r[key][name] / r[key]["softmax"] for r in rounds if name in r.get(key, {})]
        if values:
            ratios[name] = statistics.median(values)
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
    lines += [
        "",
        f"Each of {len(report['rounds'])} rounds trains every mapping for "
        f"{report['updates']} updates from scratch (mappings' default parameters) and "
        "decodes the validation split (beam search) with each trained checkpoint given; "
        "the order rotates from round to round. Ratio: the median over rounds of the "
        "mapping's speed over softmax's in the same round (> 1 is faster than softmax).",
        "",
        "| mapping | train target tokens/s | ratio | decode sentences/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    train_ratio = median_ratios(report["rounds"], "train_tokens_per_s")
    decode_ratio = median_ratios(report["rounds"], "decode_sentences_per_s")
    for name in MAPPINGS:
        train_values = [r["train_tokens_per_s"][name] for r in report["rounds"]]
        decode_values = [
            r["decode_sentences_per_s"][name]
            for r in report["rounds"]
            if name in r.get("decode_sentences_per_s", {})
        ]
        decode = (
            f"{statistics.median(decode_values):.1f} | {decode_ratio[name]:.2f}"
            if decode_values
            else "– | – (no trained checkpoint given)"
        )
        lines.append(
            f"| {name} | {statistics.median(train_values):.0f} | {train_ratio[name]:.2f} | "
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
        "--checkpoints",
        type=Path,
        default=None,
        help="a runs directory (e.g. runs/reduced) whose seed-1 runs of this task are "
        "decoded; without it, decoding is not timed",
    )
    parser.add_argument(
        "--no-threads-experiment", action="store_true", help="skip 1x2 vs 2x1 threads"
    )
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", type=Path, required=True, help="output stem, e.g. results/x")
    args = parser.parse_args()
    if args.updates < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--updates, --rounds and --threads must be >= 1")
    if args.task == "snli" and args.checkpoints:
        parser.error("--checkpoints: decoding speed is for the seq2seq tasks (nmt, summarization)")

    decode_dirs = {}
    if args.checkpoints:
        for name in MAPPINGS:
            found = sorted(args.checkpoints.glob(f"{args.task}/*/{name}/seed1"))
            if found and (found[0] / "checkpoints" / "checkpoint_best.pt").is_file():
                decode_dirs[name] = found[0]
        print(f"decoding with: {', '.join(decode_dirs) or 'none found'}", file=sys.stderr)

    report = {
        **report_header(args.note),
        "task": args.task,
        "profile": args.profile,
        "updates": args.updates,
        "threads": args.threads,
        "decode_runs": {name: str(path) for name, path in decode_dirs.items()},
        "rounds": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="time_mappings_") as scratch:
        for index in range(args.rounds):
            order = MAPPINGS[index % len(MAPPINGS) :] + MAPPINGS[: index % len(MAPPINGS)]
            measured = {"order": order, "train_tokens_per_s": {}, "decode_sentences_per_s": {}}
            for name in order:
                runs_dir = Path(scratch) / f"round{index}" / name
                runs_dir.mkdir(parents=True)
                process = train(args.task, args.profile, name, args.updates, runs_dir, args.threads)
                measured["train_tokens_per_s"][name] = wait_for(process, runs_dir, name)
                if name in decode_dirs:
                    speed = decode_speed(decode_dirs[name], args.threads)
                    measured["decode_sentences_per_s"][name] = speed
                print(f"round {index + 1}: {name} done", file=sys.stderr)
            report["rounds"].append(measured)
        if not args.no_threads_experiment:
            report["threads_experiment"] = []
            for index in range(args.rounds):
                base = Path(scratch) / f"threads{index}"
                one_dir, a_dir, b_dir = base / "one", base / "a", base / "b"
                for path in (one_dir, a_dir, b_dir):
                    path.mkdir(parents=True)
                one = wait_for(
                    train(args.task, args.profile, "softmax", args.updates, one_dir, 2),
                    one_dir,
                    "softmax",
                )
                pair = [
                    train(args.task, args.profile, "softmax", args.updates, path, 1)
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
