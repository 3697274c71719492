"""The benchmark script runs (a smoke test: one round of its cheapest sections; no timings asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_and_prints_its_table(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--reps",
            "1",
            "--deviation-images",
            "1",
            "--skip",
            "startup,forward",
            "--json",
            str(tmp_path / "bench.json"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "torch" in lines[0] and "tinyvit" in lines[0]  # the machine line
    for row in ("load weights from a cached safetensors file", "preprocess 12 MP JPEG, fast",
                "deviation of bf16 weights from exact fp32"):  # fmt: skip
        assert any(row in line for line in lines), row
    assert (tmp_path / "bench.json").is_file()
