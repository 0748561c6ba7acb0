"""The benchmark script runs end to end (timings themselves are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_ops.py"


def test_bench_ops_quick_writes_json_and_markdown(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    report = json.loads((tmp_path / "ops_threads1_quick.json").read_text())
    assert report["threads"] == 1 and report["git"]["commit"]
    table = (tmp_path / "ops_threads1_quick.md").read_text()
    for name in ("fusedmax", "oscarmax", "sparsemax", "entmax"):
        assert name in table


def test_time_mappings_tables_are_medians_of_same_round_ratios():
    from scripts import time_mappings

    names = time_mappings.MAPPINGS
    rounds = [
        {"train_tokens_per_s": {n: 100.0 * f for n in names}, "decode_sentences_per_s": {}}
        for f in (1.0, 2.0, 4.0)
    ]
    # sparsemax: half of softmax's speed in every round, whatever the round's speed.
    for r in rounds:
        r["train_tokens_per_s"]["sparsemax"] = r["train_tokens_per_s"]["softmax"] / 2
        r["decode_sentences_per_s"] = {"softmax": 10.0, "fusedmax": 5.0}
    report = {
        "task": "nmt", "profile": "reduced", "updates": 100, "threads": 1, "note": "",
        "date": "2026-12-01T00:00:00+00:00", "command": "python scripts/time_mappings.py",
        "git": {"commit": "0" * 40, "dirty": False},
        "machine": {"cpu_model": "CPU", "processor": None, "cpu_count": 2,
                    "versions": {"torch": "t", "numba": "n"}},
        "rounds": rounds,
        "threads_experiment": [
            {"one_run_two_threads": 300.0, "two_runs_one_thread": [200.0, 220.0]}
        ],
    }  # fmt: skip
    assert time_mappings.median_ratios(rounds, "train_tokens_per_s")["sparsemax"] == 0.5
    text = time_mappings.markdown(report)
    assert "| sparsemax | 100 | 0.50 |" in text
    assert "| fusedmax | 200 | 1.00 | 5.0 | 0.50 |" in text
    assert "| oscarmax | 200 | 1.00 | – | – (no trained checkpoint given) |" in text
    assert "| 2 runs x 1 thread | 210 | 420 |" in text
    assert "two single-threaded runs get more done (1.40x)" in text
