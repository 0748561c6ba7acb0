"""Run a suite of training runs resumably: skip finished runs, continue interrupted
ones from their last checkpoint, several at once.

    python scripts/run_suite.py results/reduced/suite.yaml                # everything
    python scripts/run_suite.py results/reduced/suite.yaml --only nmt_fr-en_seed1
    python scripts/run_suite.py results/reduced/suite.yaml --jobs 2 --threads 1 --dry-run

A suite file (YAML) maps group names to lists of scripts/train.py command lines in
Hydra's sweep syntax (``task=nmt mapping=softmax,sparsemax seed=1,2,3`` is six runs).
A run is finished when its result file (<results_dir>/runs/<run name>.json) exists;
any other is started with scripts/train.py, which resumes from the run directory's
last checkpoint. Each run's output goes to <run dir>/driver.log; the driver
prints one line per run started or ended, and where its results went.

The driver reads the suite file again whenever it starts a run, so runs added,
removed or reordered while it works take effect at its next start, without
stopping the runs under way. A run that fails is not retried until the next driver.
"""

import argparse
import datetime
import functools
import itertools
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tasks import evaluation  # noqa: E402  (registers the mapping_tag resolver)

logging.getLogger("hydra").setLevel(logging.INFO)  # no DEBUG line per composed config


def expand(overrides):
    """Hydra sweep overrides -> one list of plain overrides per run (the grid, in
    order: the last key varies fastest)."""
    parser = OverridesParser.create()
    choices = []
    for override in parser.parse_overrides(overrides):
        key = override.get_key_element()
        values = override.sweep_string_iterator() if override.is_sweep_override() else None
        values = list(values) if values is not None else [override.get_value_element_as_str()]
        choices.append([f"{key}={value}" for value in values])
    return [list(run) for run in itertools.product(*choices)]


class SuiteError(ValueError):
    """A suite file that cannot be read as one."""


def load_suite(path, only=None):
    """(group, overrides) for every run of the suite file, in file order."""
    try:
        suite = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SuiteError(f"{path}: {error}") from None
    if not isinstance(suite, dict) or not suite:
        raise SuiteError(f"{path} must map group names to lists of train.py command lines")
    unknown = sorted(set(only or ()) - set(suite))
    if unknown:
        raise SuiteError(f"--only {', '.join(unknown)}: not in {path} (groups: {', '.join(suite)})")
    runs = []
    for group, overrides in suite.items():
        if only and group not in only:
            continue
        for line in overrides:
            try:
                runs += [(group, run) for run in expand(shlex.split(str(line)))]
            except (HydraException, ValueError) as error:
                raise SuiteError(f"{path}, group {group}: {line}: {error}") from None
    _check_distinct(path, runs)
    return runs


def _check_distinct(path, runs):
    """Two different command lines with one run directory would share checkpoints
    (and the second would count as finished when the first is): for example a
    setting changed without a ``+task.run_suffix`` to name it."""
    first = {}
    for group, overrides in runs:
        key = tuple(overrides)
        try:
            run_dir = _run_paths(key)[0]
        except (HydraException, OmegaConfBaseException) as error:
            raise SuiteError(f"{path}, group {group}: {' '.join(key)}: {error}") from None
        earlier = first.setdefault(run_dir, (group, key))
        if earlier[1] != key:
            raise SuiteError(
                f"{path}: these runs share the run directory {run_dir} "
                f"(give one a +task.run_suffix=...):\n  {earlier[0]}: {' '.join(earlier[1])}"
                f"\n  {group}: {' '.join(key)}"
            )


@functools.cache
def _run_paths(overrides):
    return run_paths(list(overrides))


def run_paths(overrides):
    """The run directory and result file that train.py would use for ``overrides``."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("main", overrides=overrides)
    run_dir = REPO / cfg.runs_dir / cfg.run_name
    return run_dir, REPO / evaluation.result_path(cfg, run_dir)


def _now():
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class Scheduler:
    """Hands out the suite's unfinished runs in file order, one at a time, to the
    driver's workers, reading the suite file again for each (an unreadable edit is
    reported and the last readable version kept)."""

    def __init__(self, path, only=None):
        self.path, self.only = path, only
        self.runs = load_suite(path, only)
        self.taken = set()  # started by this driver: running, done or failed
        self.lock = threading.Lock()

    def next(self):
        """(overrides, run dir, result file) of the next run to start, or None."""
        with self.lock:
            try:
                self.runs = load_suite(self.path, self.only)
            except SuiteError as error:
                print(f"{_now()} warning: {error}; keeping its last readable version", flush=True)
            for _, overrides in self.runs:
                key = tuple(overrides)
                run_dir, result = _run_paths(key)
                if key not in self.taken and not result.is_file():
                    self.taken.add(key)
                    return overrides, run_dir, result
            return None


def train_one(overrides, run_dir, result, threads):
    """Train and evaluate one run in a subprocess with ``threads`` threads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *overrides]
    start = time.monotonic()
    print(f"{_now()} start  {' '.join(overrides)}  (log: {run_dir / 'driver.log'})", flush=True)
    with open(run_dir / "driver.log", "a") as log:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=log).returncode
    minutes = (time.monotonic() - start) / 60
    status = f"done, results in {result}" if code == 0 and result.is_file() else f"FAILED ({code})"
    print(f"{_now()} end    {' '.join(overrides)}  {minutes:.1f} min: {status}", flush=True)
    return code == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="a suite file, e.g. results/reduced/suite.yaml")
    parser.add_argument("--only", nargs="+", metavar="GROUP", help="run these groups only")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads per run (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    args = parser.parse_args()
    if args.jobs < 1 or args.threads < 1:
        sys.exit(f"error: --jobs {args.jobs} --threads {args.threads}: both must be >= 1")

    try:
        scheduler = Scheduler(args.suite, args.only)
    except SuiteError as error:
        sys.exit(f"error: {error}")
    finished = 0
    for group, overrides in scheduler.runs:
        done = _run_paths(tuple(overrides))[1].is_file()
        finished += done
        if args.dry_run:
            print(f"{'finished' if done else 'to run':9} {group}: {' '.join(overrides)}")
    to_run = len(scheduler.runs) - finished
    print(f"{finished} runs finished, {to_run} to run ({args.jobs} at once)", flush=True)
    if args.dry_run or not to_run:
        return
    failed = []

    def work():
        while (job := scheduler.next()) is not None:
            if not train_one(*job, args.threads):
                failed.append(job)

    workers = [threading.Thread(target=work) for _ in range(args.jobs)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failed:
        sys.exit(f"error: {len(failed)} runs failed; see their driver.log")


if __name__ == "__main__":
    main()
