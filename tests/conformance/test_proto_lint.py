"""The protocol stays clean and compatible: ``buf lint`` (STANDARD + COMMENTS) and ``buf breaking``.

``buf breaking`` compares proto/ with the previous commit (with HEAD while proto/ has uncommitted
changes). A deliberate break is declared in the commit message with ``[proto-break]``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def test_buf_lint_is_clean(node_modules) -> None:
    done = subprocess.run(
        [str(node_modules / ".bin" / "buf"), "lint"], cwd=PROTO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_breaking_against_the_previous_commit(node_modules) -> None:
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout: nothing to compare with")
    dirty = _git("diff", "--quiet", "HEAD", "--", "proto").returncode != 0
    if not dirty and "[proto-break]" in _git("log", "-1", "--format=%B").stdout:
        pytest.skip("the last commit declares a deliberate protocol break ([proto-break])")
    against = "HEAD" if dirty else "HEAD~1"
    if _git("rev-parse", "--verify", "--quiet", f"{against}^{{commit}}").returncode != 0:
        pytest.skip(f"{against} is not in this clone (shallow?): nothing to compare with")
    done = subprocess.run(
        [str(node_modules / ".bin" / "buf"), "breaking", "--against", f"{ROOT / '.git'}#ref={against},subdir=proto"],
        cwd=PROTO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
