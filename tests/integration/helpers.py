"""Helpers several integration tests share: a raw server process, a slow run to cut short, headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import deepscope

from .conftest import _child_env


def launch(store: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """A raw ``python -m deepscope_server`` (no token file unless given) with its store in ``store/store``;
    returns once it has a port (0: it exited first; its output is on ``proc.stdout``)."""
    _child_env()
    port_file = store / "port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "deepscope_server", "--port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [*command, "--store", str(store / "store"), "--no-entry-points", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc, 0
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def analyze_slow(client: deepscope.Client, models: Any, seconds: float, **kwargs: Any) -> deepscope.Run:
    """An Analyze of the test plugin ``testing.slow`` (sleeps ``seconds`` per batch): a run to cancel,
    time out or kill mid-way."""
    return client.analyze(models, metrics=["testing.slow"], params={"testing.slow": {"seconds": seconds}}, **kwargs)


def settled(latest: Callable[[], Any], within: float = 20.0) -> Any:
    """What ``latest()`` returns (a run or its info) once its status is no longer "running", or after ``within`` s."""
    deadline = time.monotonic() + within
    while (run := latest()).status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (make test installs it where apt is available)")
    return browser


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with its own profile, nothing fetched from the network, 5 s of virtual time."""
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def fail_alone(client: deepscope.Client, model: Any, misbehaving: list[str], **kwargs: Any) -> dict[str, str]:
    """Analyze the ``misbehaving`` test metrics beside example.activation_moments on fc1 over 100 digits;
    checks that the run completes with the good metric's result whole and that the server still serves.
    Returns each failed metric's error."""
    metrics = [*misbehaving, "example.activation_moments"]
    run = client.analyze(model, data="digits", limit=100, layers=["fc1"], metrics=metrics, **kwargs)
    assert run.status == "completed"
    failures = {metric: error for (metric, _, _), error in run.failures.items()}
    assert "example.activation_moments" not in failures
    assert run.result("example.activation_moments", "fc1")["num_samples"] == 100
    assert client.health() == "SERVING"
    return failures
