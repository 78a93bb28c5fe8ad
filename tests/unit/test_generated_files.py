"""Committed generated files must match their sources: protocol code and the metrics doc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    fresh = sorted((tmp_path / "deepscope").rglob("*_pb2*.py*")) + [tmp_path / "deepscope" / "v1" / "descriptors.binpb"]
    assert len(fresh) > 1, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / "client" / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), f"{committed.name} is stale: run `make proto`"


def test_metrics_doc_is_fresh():
    """docs/metrics.md is generated from the plugin classes (run `python docs/generate_metrics_doc.py`)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate_metrics_doc
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "metrics.md").read_text() == generate_metrics_doc.render(), (
        "docs/metrics.md is stale: run `python docs/generate_metrics_doc.py`"
    )
