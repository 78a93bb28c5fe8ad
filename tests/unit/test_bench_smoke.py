"""The benchmark scripts keep working: ``bench/run_all.py --smoke`` runs every script on tiny sizes.

Checks the exit status and that every table was printed (titles and a table body); never
timings or targets, which depend on the (shared) machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: One table per target; bench_capture prints 1 and 2.
TABLES = (
    "1. PyTorch capture",
    "2. ONNX capture",
    "3. Remote capture",
    "4. Box covering",
    "5. Conv node strength",
    "6. Server peak RSS",
    "7. Concurrency",
    "8. Per-call overhead",
    "9. SDK capture",
    "10. Pre-auth flood",
)


@pytest.mark.timeout(600)  # the run's own limit below; nine scripts, three server processes
def test_bench_smoke_prints_every_table() -> None:
    env = dict(os.environ, DEEPSCOPE_BENCH_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "FAILED" not in out, out
    for title in TABLES:
        match = re.search(rf"^### {re.escape(title)}.*\n\n(\|.*\|\n)(\|[-|]+\|\n)(\|.*\|\n)+", out, re.MULTILINE)
        assert match, f"table '{title}' missing or empty in:\n{out}"
    assert "crashed: none" in out
