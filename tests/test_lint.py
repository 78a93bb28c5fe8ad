"""The repository keeps one style and the typed surfaces stay typed: ruff (format + lint) and mypy.

Configuration: ``ruff.toml`` and ``mypy.ini`` at the root (mypy is strict on the SDK and the plugin API).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command",
    [["ruff", "format", "--check", "."], ["ruff", "check", "."], ["mypy"]],
    ids=["ruff-format", "ruff-check", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    tool = Path(sys.executable).with_name(command[0])
    proc = subprocess.run([str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(command)}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
