"""The committed generated code must match the .proto files (run `make proto` after editing them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = sorted((tmp_path / "deepscope" / "v1").glob("*_pb2*.py*"))
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / "client" / "deepscope" / "v1" / path.name
        assert committed.exists(), f"{committed} missing: run `make proto`"
        assert committed.read_text() == path.read_text(), f"{committed.name} is stale: run `make proto`"
