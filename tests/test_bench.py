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
