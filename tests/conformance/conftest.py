"""Node.js tooling for the protocol tests: the conformance client's packages and buf, as locked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``npm ci`` of tests/conformance/node (package-lock.json); skipped where node or npm is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed (the Node.js conformance client and buf ship as npm packages)")
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return NODE_DIR / "node_modules"
