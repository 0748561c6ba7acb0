"""Evaluate trained runs: beam search (beam 5) or classification on the test split,
the task metric, attention statistics and throughput, one JSON per run.

    python scripts/evaluate.py runs/quick/nmt/lstm_attn-small/fusedmax/seed1
    python scripts/evaluate.py runs/quick/*/*/*/seed1          # several runs

Each run's results go to <results_dir>/runs/<run name>.json (results_dir comes from
the run's profile), written atomically; scripts/make_tables.py turns them into tables.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import evaluation, pipeline  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories of train.py")
    parser.add_argument("--cpu", action="store_true", help="evaluate on the CPU even with a GPU")
    args = parser.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    for run_dir in args.run_dirs:
        if not (run_dir / pipeline.RUN_CONFIG).is_file():
            sys.exit(f"error: {run_dir} is not a run directory of scripts/train.py (no run.yaml)")
        try:
            evaluation.evaluate_run(run_dir, cpu=cpu)
        except pipeline.PipelineError as error:
            sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
