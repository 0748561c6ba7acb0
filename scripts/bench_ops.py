"""Benchmark the regattn mappings against torch.softmax on the CPU.

Three parts: five row shapes, 1024x16 to 16x4096 (ratios to torch.softmax);
decoder-step shapes with a padding mask, where a call is overhead-bound (ratios to
torch.softmax after masked_fill); and adversarial rows (ramps, sines, nearly equal
scores) at d = 1e3, 1e4, 1e5, in ns per score beside random rows.

For each shape (rows x d, float32, randn scores with seed 0) and each implementation
(torch.softmax as the baseline, every mapping in ``regattn.MAPPINGS``, and
``entmax.sparsemax`` as an outside reference) this measures the forward time and the
forward+backward time per call, and reports both as ratios to torch.softmax measured
in the same run.

Timing protocol, made for a noisy shared machine:
* warm-up calls first, so numba compilation / cache loading is never timed;
* each timed block is a loop of N calls, N chosen so a block lasts about --block-ms;
* blocks run round-robin over all implementations of a shape, so load drift hits the
  baseline and the mappings alike; a time is the median over --blocks, a ratio the
  median over rounds of (block time / torch.softmax block time of the same round).

    python scripts/bench_ops.py --threads 1      # writes results/bench/ops_threads1.{json,md}
    python scripts/bench_ops.py --quick --out /tmp/b   # smoke run, writes *_quick.*

With ``--device cuda`` it measures the native CUDA kernels instead (results/bench/
ops_cuda.{json,md}): forward and forward+backward at 32768x64, 4096x512 and
1024x4096 in float32 and bfloat16, as ratios to torch.softmax on the device, beside
the CPU round trip (copy to the host, CPU kernels, copy back) of each mapping.
"""

import argparse
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import entmax
import numba
import numpy
import torch

import regattn

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(1024, 16), (1024, 64), (256, 256), (64, 1024), (16, 4096)]
QUICK_SHAPES = [(1024, 16), (64, 1024)]
# Parameters of the parametrized mappings: each one's default regime (fusedmax and
# oscarmax fuse a few positions of N(0, 1) scores).
PARAMS = {"fusedmax": {"lam": 0.1}, "oscarmax": {"lam": 0.01}, "sq_pnorm_max": {"p": 1.5}}
BASELINE = "torch.softmax"
MODES = ("fwd", "fwdbwd")


def implementations():
    """name -> (label for the tables, function of (scores) along the last dim)."""
    impls = {BASELINE: (BASELINE, lambda x: torch.softmax(x, -1))}
    for name in regattn.MAPPINGS:
        params = PARAMS.get(name, {})
        label = f"regattn.{name}"
        if params:
            label += " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
        impls[f"regattn.{name}"] = (label, regattn.get_mapping(name, **params))
    # k=None is entmax's full-sort sparsemax, the usual point of comparison.
    impls["entmax.sparsemax"] = (
        f"entmax {importlib.metadata.version('entmax')} sparsemax, full sort",
        lambda x: entmax.sparsemax(x, dim=-1, k=None),
    )
    return impls


def make_call(function, mode, scores, grad_out):
    """A no-argument function doing one forward (or forward+backward) call."""
    if mode == "fwd":
        return lambda: function(scores)
    x = scores.clone().requires_grad_(True)

    def forward_backward():
        # autograd.grad is y.backward(grad_out) without accumulating into x.grad,
        # so every call does the same work.
        torch.autograd.grad(function(x), x, grad_out)

    return forward_backward


def time_loop(call, n, sync=None):
    """Seconds taken by n calls; gc is off so a collection does not land in one block.
    ``sync`` (torch.cuda.synchronize for a device) waits for queued work before the
    clock starts and before it stops."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if sync is not None:
            sync()
        start = time.perf_counter()
        for _ in range(n):
            call()
        if sync is not None:
            sync()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calls_per_block(call, block_s, sync=None):
    """Warm up, then pick N so that N calls last about block_s."""
    for _ in range(3):  # the first call may load numba's cache or allocate buffers
        call()
    n = 1
    while time_loop(call, n, sync) < 0.2 * block_s:
        n *= 2
    # Best of three: a load burst during calibration would otherwise shrink N for good.
    elapsed = min(time_loop(call, n, sync) for _ in range(3))
    return max(1, round(n * block_s / elapsed))


def round_robin(cases, blocks, block_s, sync=None):
    """Per-call times (ms), one per block, for every no-argument call in ``cases``;
    blocks run round-robin over the cases."""
    sized = {key: (call, calls_per_block(call, block_s, sync)) for key, call in cases.items()}
    per_call_ms = {key: [] for key in sized}
    keys = list(sized)
    for block in range(blocks):
        # Rotate the order each block so no implementation always runs first (or
        # always right after the same neighbour).
        shift = block % len(keys)
        for key in keys[shift:] + keys[:shift]:
            call, n = sized[key]
            per_call_ms[key].append(1e3 * time_loop(call, n, sync) / n)
    return per_call_ms, {key: n for key, (_, n) in sized.items()}


def summarise(per_call_ms, calls, names, baseline):
    """Median times and ratios to ``baseline`` (same round) for each name and mode."""
    results = {}
    for name in names:
        entry = {}
        for mode in MODES:
            blocks_ms = per_call_ms[name, mode]
            baseline_ms = per_call_ms[baseline, mode]
            entry[f"{mode}_ms"] = statistics.median(blocks_ms)
            entry[f"{mode}_ms_min"] = min(blocks_ms)
            # The ratio pairs each block with the baseline block of the same round and
            # takes the median of those ratios: slow load drift cancels within a round,
            # which makes it steadier from run to run than a ratio of two medians.
            entry[f"{mode}_ratio"] = statistics.median(
                t / base for t, base in zip(blocks_ms, baseline_ms, strict=True)
            )
            entry[f"{mode}_ms_blocks"] = [round(t, 6) for t in blocks_ms]
            entry[f"{mode}_calls_per_block"] = calls[name, mode]
        results[name] = entry
    return results


def bench_shape(shape, impls, blocks, block_s):
    """Per-call times (ms) and ratios to the baseline for every implementation and
    mode of one shape."""
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    cases = {
        (name, mode): make_call(function, mode, scores, grad_out)
        for name, (_, function) in impls.items()
        for mode in MODES
    }
    per_call_ms, calls = round_robin(cases, blocks, block_s)
    return summarise(per_call_ms, calls, impls, BASELINE)


# Decoder-step shapes, where a call is overhead-bound: (name, shape, dim). The first
# is the LSTM's attention over 22 source positions for a batch of 64 (along dim 0,
# padding mask); the second one step of incremental cross-attention, batch 64 x 8
# heads x 1 query over 20 keys (last dim, key mask).
STEP_SHAPES = [("22x64 dim 0", (22, 64), 0), ("64x8x1x20 dim -1", (64, 8, 1, 20), -1)]
MASKED_BASELINE = "torch.softmax + masked_fill"


def step_mask(shape, dim):
    """A padding mask: each sequence keeps a prefix of its positions along ``dim``."""
    generator = torch.Generator().manual_seed(2)
    d = shape[dim]
    lengths_shape = [1 if i == dim % len(shape) else n for i, n in enumerate(shape)]
    lengths = torch.randint(d // 4, d + 1, lengths_shape, generator=generator)
    positions = torch.arange(d).view(
        [-1 if i == dim % len(shape) else 1 for i in range(len(shape))]
    )
    return positions < lengths


def bench_step(shape, dim, blocks, block_s):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    valid = step_mask(shape, dim)
    functions = {MASKED_BASELINE: lambda x: torch.softmax(x.masked_fill(~valid, -math.inf), dim)}
    for name in regattn.MAPPINGS:
        mapping = regattn.get_mapping(name, **PARAMS.get(name, {}))
        functions[f"regattn.{name}"] = lambda x, mapping=mapping: mapping(x, dim, mask=valid)
    cases = {
        (name, mode): make_call(function, mode, scores, grad_out)
        for name, function in functions.items()
        for mode in MODES
    }
    per_call_ms, calls = round_robin(cases, blocks, block_s)
    return summarise(per_call_ms, calls, functions, MASKED_BASELINE)


# Rows that are hard for some algorithm: slowly varying rows (the worst case of
# Condat's TV sweep), nearly equal scores (radix-sort ties) and random rows beside
# them. Forward time in ns per score, at about 1e5 scores per call.
ADVERSARIAL_ROWS = {
    "randn": lambda rows, d, g: torch.randn(rows, d, generator=g),
    "ramp": lambda rows, d, g: torch.linspace(0, 1, d).expand(rows, d).contiguous(),
    "sine": lambda rows, d, g: torch.sin(torch.linspace(0, 6, d)).expand(rows, d).contiguous(),
    "nearly equal": lambda rows, d, g: 1 + 1e-6 * torch.randn(rows, d, generator=g),
}
ADVERSARIAL_D = (1000, 10000, 100000)


def bench_adversarial(blocks, block_s):
    results = []
    for d in ADVERSARIAL_D:
        rows = max(1, 100_000 // d)
        for kind, make in ADVERSARIAL_ROWS.items():
            scores = make(rows, d, torch.Generator().manual_seed(0))
            cases = {}
            for name in regattn.MAPPINGS:
                if name == "softmax":
                    continue
                mapping = regattn.get_mapping(name, **PARAMS.get(name, {}))
                cases[name] = lambda mapping=mapping, scores=scores: mapping(scores)
            per_call_ms, _ = round_robin(cases, blocks, block_s)
            for name, blocks_ms in per_call_ms.items():
                ns = 1e6 * statistics.median(blocks_ms) / scores.numel()
                results.append({"d": d, "rows": rows, "kind": kind, "mapping": name,
                                "fwd_ns_per_score": ns})  # fmt: skip
        print(f"adversarial d={d}: done", file=sys.stderr)
    return results


# ------------------------------------------------------------------------- CUDA

CUDA_SHAPES = [(32768, 64), (4096, 512), (1024, 4096)]
CUDA_QUICK_SHAPES = [(4096, 512)]
CUDA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ROUND_TRIP = " via the CPU"  # suffix of the CPU round-trip implementations


def cuda_implementations():
    """name -> (label, function) for the device: torch.softmax, every mapping's native
    kernels, entmax's sparsemax (torch operations) and, as the baseline the native
    kernels replace, each mapping computed on the CPU and copied back."""
    impls = implementations()
    for name in regattn.MAPPINGS:
        if name == "softmax":
            continue
        mapping = regattn.get_mapping(name, **PARAMS.get(name, {}))
        impls[f"regattn.{name}{ROUND_TRIP}"] = (
            f"regattn.{name}{ROUND_TRIP} (round trip)",
            lambda x, mapping=mapping: mapping(x.cpu()).to(x.device),
        )
    return impls


def bench_cuda(args):
    """Run the device benchmark and write ops_cuda{_quick}.{json,md}."""
    blocks = args.blocks or (3 if args.quick else 11)
    block_ms = args.block_ms or (20.0 if args.quick else 50.0)
    shapes = args.shapes or (CUDA_QUICK_SHAPES if args.quick else CUDA_SHAPES)
    dtypes = ["float32"] if args.quick else list(CUDA_DTYPES)
    impls = cuda_implementations()
    started = time.perf_counter()
    report = {
        **report_header(args.note),
        "device": torch.cuda.get_device_name(),
        "torch_cuda": torch.version.cuda,
        "numba_cuda": getattr(importlib.import_module("numba.cuda"), "implementation", None),
        "threads": torch.get_num_threads(),
        "settings": {
            "quick": args.quick,
            "blocks": blocks,
            "block_ms": block_ms,
            "seed": 0,
            "params": PARAMS,
            "baseline": BASELINE,
        },  # fmt: skip
        "results": [],
    }
    for dtype_name in dtypes:
        for shape in shapes:
            t0 = time.perf_counter()
            generator = torch.Generator().manual_seed(0)
            scores = torch.randn(shape, generator=generator).to("cuda", CUDA_DTYPES[dtype_name])
            grad_out = torch.randn(shape, generator=generator).to("cuda", CUDA_DTYPES[dtype_name])
            cases = {
                (name, mode): make_call(function, mode, scores, grad_out)
                for name, (_, function) in impls.items()
                for mode in MODES
            }
            per_call_ms, calls = round_robin(cases, blocks, block_ms / 1e3, torch.cuda.synchronize)
            report["results"].append({
                "shape": shape_name(shape), "dtype": dtype_name,
                "implementations": summarise(per_call_ms, calls, impls, BASELINE),
            })  # fmt: skip
            print(f"{dtype_name} {shape_name(shape)}: {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)  # fmt: skip
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = cuda_markdown(report, impls)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ops_cuda" + ("_quick" if args.quick else "")
    write_atomic(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(args.out / f"{stem}.md", text)
    print(text)
    print(f"wrote {args.out / stem}.json and .md ({report['elapsed_s']} s)", file=sys.stderr)


def cuda_markdown(report, impls):
    results = report["results"]
    columns = [f"{r['shape'].replace('x', '×')} {r['dtype']}" for r in results]

    def table(mode, title):
        lines = [f"**{title}**", "", "| implementation | " + " | ".join(columns) + " |",
                 "|---|" + "---:|" * len(columns)]  # fmt: skip
        base = [r["implementations"][BASELINE][f"{mode}_ms"] for r in results]
        lines.append(f"| {BASELINE} (ms) | " + " | ".join(f"{ms:.4f}" for ms in base) + " |")
        for name, (label, _) in impls.items():
            if name == BASELINE:
                continue
            cells = [
                f"{fmt_ratio(r['implementations'][name][f'{mode}_ratio'])} "
                f"({r['implementations'][name][f'{mode}_ms']:.3f} ms)"
                for r in results
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    return "\n".join([
        f"# regattn op benchmark on {report['device']}",
        "",
        f"{provenance(report)}, CUDA {report['torch_cuda']}, numba CUDA target "
        f"{report['numba_cuda']}.",
        f"randn scores (seed 0); median of {report['settings']['blocks']} blocks of "
        f"~{report['settings']['block_ms']:g} ms each (the device synchronised around a "
        f"block), round-robin over the implementations; ratio = median over rounds of "
        f"(block time / {BASELINE} block time of the same round). Rows ending in "
        f"'{ROUND_TRIP}' copy to the host, run the CPU kernels and copy back. Command: "
        f"`{report['command']}`",
        *([f"Note: {report['note']}"] if report.get("note") else []),
        "",
        *table("fwdbwd", "Forward+backward, ratio to torch.softmax forward+backward"),
        "",
        *table("fwd", "Forward, ratio to torch.softmax forward"),
        "",
    ])  # fmt: skip


# ------------------------------------------------------------------ run description


def git_state():
    def git(*args):
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    # Benchmark outputs under results/ do not make the measured code dirty.
    changed = git("status", "--porcelain", "--", ".", ":!results")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(changed) if changed is not None else None,
        "changed_paths": changed.splitlines() if changed else [],
    }


def cpu_model():
    # platform.processor() is often empty on Linux; /proc/cpuinfo names the CPU.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def report_header(note):
    """What every benchmark report starts with: when, by which command, on what
    machine and at which commit it was measured, and the caller's note."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(),
        "git": git_state(),
        "note": note,
    }


def provenance(report):
    """When, at which commit and on what a report was measured, as one line."""
    git = report["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (dirty)" if git["dirty"] else "")
    machine = report["machine"]
    cpu = machine["cpu_model"] or machine["processor"] or "unknown CPU"
    return (
        f"{report['date']}, commit {commit}, {cpu} ({machine['cpu_count']} CPUs), "
        f"torch {machine['versions']['torch']}, numba {machine['versions']['numba']}"
    )


def machine_info():
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else None,
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "numba": numba.__version__,
            "numpy": numpy.__version__,
            "entmax": importlib.metadata.version("entmax"),
            "regattn": importlib.metadata.version("regattn"),
        },
    }


# ------------------------------------------------------------------------- output


def shape_name(shape):
    return f"{shape[0]}x{shape[1]}"


def fmt_ratio(ratio):
    # About three significant digits; more would only show noise.
    if ratio < 10:
        return f"{ratio:.2f}×"
    if ratio < 100:
        return f"{ratio:.1f}×"
    return f"{ratio:.0f}×"


def markdown(report, impls):
    shapes = [r["shape"] for r in report["results"]]
    header = "| implementation | " + " | ".join(s.replace("x", "×") for s in shapes) + " |"
    rule = "|---|" + "---:|" * len(shapes)

    def table(mode, title):
        lines = [f"**{title}**", "", header, rule]
        baseline = [r["implementations"][BASELINE][f"{mode}_ms"] for r in report["results"]]
        lines.append(
            f"| {BASELINE} {mode.replace('fwdbwd', 'fwd+bwd')} (ms) | "
            + " | ".join(f"{ms:.4f}" for ms in baseline)
            + " |"
        )
        for name, (label, _) in impls.items():
            if name == BASELINE:
                continue
            cells = [
                fmt_ratio(r["implementations"][name][f"{mode}_ratio"]) for r in report["results"]
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    lines = [
        f"# regattn op benchmark, {report['threads']} thread(s)",
        "",
        f"{provenance(report)}.",
        f"float32, randn scores (seed 0); median of {report['settings']['blocks']} blocks of "
        f"~{report['settings']['block_ms']:g} ms each, run round-robin over the implementations; "
        f"ratio = median over rounds of (block time / {BASELINE} block time of the same "
        f"round). Command: `{report['command']}`",
        *([f"Note: {report['note']}"] if report.get("note") else []),
        "",
        *table("fwdbwd", "Forward+backward, ratio to torch.softmax forward+backward"),
        "",
        *table("fwd", "Forward, ratio to torch.softmax forward"),
        "",
        *step_table(report),
        *adversarial_table(report),
    ]
    return "\n".join(lines)


def step_table(report):
    if not report.get("steps"):
        return []
    steps = report["steps"]
    header = (
        "| implementation | "
        + " | ".join(f"{step['shape']} fwd+bwd | fwd" for step in steps)
        + " |"
    )
    lines = [
        f"**Decoder-step shapes, with a padding mask: ratio to {MASKED_BASELINE}**",
        "",
        header,
        "|---|" + "---:|---:|" * len(steps),
    ]
    base = [step["implementations"][MASKED_BASELINE] for step in steps]
    cells = [f"{b['fwdbwd_ms'] * 1e3:.1f} µs | {b['fwd_ms'] * 1e3:.1f} µs" for b in base]
    lines.append(f"| {MASKED_BASELINE} (time) | " + " | ".join(cells) + " |")
    for name in steps[0]["implementations"]:
        if name == MASKED_BASELINE:
            continue
        cells = [
            f"{fmt_ratio(step['implementations'][name]['fwdbwd_ratio'])} | "
            f"{fmt_ratio(step['implementations'][name]['fwd_ratio'])}"
            for step in steps
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def adversarial_table(report):
    if not report.get("adversarial"):
        return []
    rows = report["adversarial"]
    ds = sorted({r["d"] for r in rows})
    lines = [
        "**Adversarial rows: forward ns per score (one call of about 1e5 scores)**",
        "",
        "| mapping | rows | " + " | ".join(f"d = {d:g}" for d in ds) + " |",
        "|---|---|" + "---:|" * len(ds),
    ]
    by_key = {(r["mapping"], r["kind"], r["d"]): r["fwd_ns_per_score"] for r in rows}
    for name in dict.fromkeys(r["mapping"] for r in rows):
        for kind in ADVERSARIAL_ROWS:
            cells = [f"{by_key[name, kind, d]:.1f}" for d in ds if (name, kind, d) in by_key]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_atomic(path, text):
    """Write via a temp file in the same directory, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_shapes(text):
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per case (21)")
    parser.add_argument(
        "--note", default="", help="a line for the report, e.g. what else ran on the machine"
    )
    parser.add_argument("--block-ms", type=float, default=None, help="length of a block in ms (20)")
    parser.add_argument("--shapes", type=parse_shapes, default=None, help="e.g. 1024x16,64x1024")
    parser.add_argument(
        "--out", type=Path, default=REPO / "results" / "bench", help="output directory"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 shapes, 3 short blocks; writes ops_threads{N}_quick.* so the "
        "real outputs stay untouched",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the native CUDA kernels against torch.softmax on the device and the "
        "CPU round trip (writes ops_cuda.*)",
    )
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error(
                "--device cuda needs a CUDA device, and torch sees none here "
                "(torch.cuda.is_available() is False: a CPU-only torch build, or no GPU "
                "visible to this process)"
            )
        torch.set_num_threads(args.threads)  # for the CPU round trips
        bench_cuda(args)
        return
    blocks = args.blocks or (3 if args.quick else 21)
    block_ms = args.block_ms or (5.0 if args.quick else 20.0)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)

    # regattn's kernels follow torch.get_num_threads().
    torch.set_num_threads(args.threads)
    impls = implementations()
    started = time.perf_counter()
    report = {
        **report_header(args.note),
        "threads": torch.get_num_threads(),
        "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
        "settings": {
            "quick": args.quick,
            "blocks": blocks,
            "block_ms": block_ms,
            "dtype": "float32",
            "seed": 0,
            "params": PARAMS,
            "baseline": BASELINE,
            "ms": "median over blocks of the per-call time (ms_min: the fastest block)",
            "ratio": f"median over rounds of block time / {BASELINE} block time of the same round",
        },
        "results": [],
    }
    for shape in shapes:
        t0 = time.perf_counter()
        results = bench_shape(shape, impls, blocks, block_ms / 1e3)
        report["results"].append(
            {
                "shape": shape_name(shape),
                "rows": shape[0],
                "d": shape[1],
                "implementations": results,
            }
        )
        print(f"{shape_name(shape)}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report["steps"] = [
        {"shape": name, "dims": list(shape), "dim": dim,
         "implementations": bench_step(shape, dim, blocks, block_ms / 1e3)}
        for name, shape, dim in STEP_SHAPES
    ]  # fmt: skip
    print("decoder-step shapes: done", file=sys.stderr)
    if not args.quick:
        report["adversarial"] = bench_adversarial(max(3, blocks // 4), block_ms / 1e3)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ops_threads{args.threads}" + ("_quick" if args.quick else "")
    text = markdown(report, impls)
    write_atomic(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(args.out / f"{stem}.md", text)
    print(text)
    print(
        f"wrote {args.out / stem}.json and .md ({report['elapsed_s']} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
