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


def time_mappings_report(rounds, mappings):
    return {
        "task": "nmt", "profile": "reduced", "updates": 100, "threads": 1, "note": "",
        "date": "2026-12-01T00:00:00+00:00", "command": "python scripts/time_mappings.py",
        "git": {"commit": "0" * 40, "dirty": False},
        "machine": {"cpu_model": "CPU", "processor": None, "cpu_count": 2,
                    "versions": {"torch": "t", "numba": "n"}},
        "mappings": mappings, "baseline": "softmax", "rounds": rounds,
        "threads_experiment": [
            {"one_run_two_threads": 300.0, "two_runs_one_thread": [200.0, 220.0]}
        ],
    }  # fmt: skip


def test_time_mappings_tables_are_medians_of_same_round_ratios():
    from scripts import time_mappings

    labels = ["softmax", "sparsemax (gamma=10)", "fusedmax (lam=0.3)"]
    rounds = [
        {"train_tokens_per_s": {n: 100.0 * f for n in labels}, "decode_sentences_per_s": {}}
        for f in (1.0, 2.0, 4.0)
    ]
    # sparsemax: half of softmax's speed in every round, whatever the round's speed.
    for r in rounds:
        r["train_tokens_per_s"]["sparsemax (gamma=10)"] = r["train_tokens_per_s"]["softmax"] / 2
        r["decode_sentences_per_s"] = {"softmax": 10.0, "fusedmax (lam=0.3)": 5.0}
    mappings = [
        {"label": label, "mapping": {}, "decode_run": f"runs/{label}" if label[0] != "s" else None}
        for label in labels
    ]
    mappings[0]["decode_run"] = "runs/softmax"
    ratios = time_mappings.median_ratios(rounds, "train_tokens_per_s", labels, "softmax")
    assert ratios["sparsemax (gamma=10)"] == 0.5
    text = time_mappings.markdown(time_mappings_report(rounds, mappings))
    assert "| sparsemax (gamma=10) | 100 | 0.50 | – | – |" in text
    assert "| fusedmax (lam=0.3) | 200 | 1.00 | 5.0 | 0.50 |" in text
    assert "- fusedmax (lam=0.3): `runs/fusedmax (lam=0.3)`" in text
    assert "`None`" not in text  # runs given but not decoded are not listed
    assert "the settings of the trained runs decoded" in text
    assert "| 2 runs x 1 thread | 210 | 420 |" in text
    assert "two single-threaded runs get more done (1.40x)" in text


def test_time_mappings_reads_each_runs_mapping_and_refuses_what_it_cannot_time(tmp_path):
    import pytest

    from scripts import time_mappings

    def trained_run(name, task="nmt", **settings):
        run_dir = tmp_path / f"{name}-{task}-{len(settings)}"
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "checkpoint_best.pt").write_bytes(b"")
        mapping = "".join(f"  {k}: {v}\n" for k, v in {"name": name, **settings}.items())
        (run_dir / "run.yaml").write_text(f"task:\n  name: {task}\nmapping:\n{mapping}")
        return run_dir

    softmax, fusedmax = trained_run("softmax"), trained_run("fusedmax", gamma=3, lam=0.3)
    found = time_mappings.mappings_of_runs([softmax, fusedmax], "nmt")
    assert found == [
        {"label": "softmax", "mapping": {"name": "softmax"}, "decode_run": str(softmax)},
        {
            "label": "fusedmax (lam=0.3, gamma=3)",
            "mapping": {"name": "fusedmax", "gamma": 3, "lam": 0.3},
            "decode_run": str(fusedmax),
        },
    ]
    assert time_mappings.mapping_overrides(found[1]["mapping"]) == [
        "mapping=fusedmax", "mapping.gamma=3", "mapping.lam=0.3"
    ]  # fmt: skip
    refused = [
        ([fusedmax], "must be softmax's"),
        ([softmax, trained_run("sparsemax", task="summarization")], "a summarization run"),
        ([softmax, tmp_path], "not a trained run"),
        ([softmax, softmax], "two runs of one mapping"),
    ]
    for runs, message in refused:
        with pytest.raises(SystemExit, match=message):
            time_mappings.mappings_of_runs(runs, "nmt")
