"""Settings declared once: every field has its flag and its environment variable, a flag wins over
its variable, a variable over the default, and a bad value is one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from deepscope_server.config import Declared, Limits, Settings, _base_type, declared, settings_from_args
from deepscope_server.models import load_checked

SERVER = str(Path(sys.executable).with_name("deepscope-server"))


def _other_value(d: Declared, tmp_path: Path) -> tuple[str, object]:
    """A valid text for ``d`` that is not its default, and the value it must become."""
    base = _base_type(d.kind)
    if d.name in ("auth_token_file", "auth_token"):
        token = "t" * 24
        (tmp_path / "token").write_text(token + "\n")
        return (str(tmp_path / "token"), token) if d.name == "auth_token_file" else (token, token)
    if base is bool:
        return "1", not d.default
    if base in (int, float):
        return "3", base(3)
    if base is Path:
        return str(tmp_path / d.name), tmp_path / d.name
    if base is set:
        return "a, b", {"a", "b"}
    if base is list:
        return "pkg.mod", ["pkg.mod"]
    if d.option.choices:
        choice = next(c for c in d.option.choices if c != d.default)
        return choice, choice
    return "10.1.2.3", "10.1.2.3"


def _get(settings: Settings, d: Declared) -> object:
    value = getattr(settings if d.owner is Settings else settings.limits, d.name)
    return settings.auth_token if d.name == "auth_token_file" else value


def _needs(d: Declared) -> None:
    if d.name == "executor":
        pytest.importorskip("ray")  # --executor ray refuses to start without Ray (test_ray_settings.py)


SETTINGS = declared()


def test_every_field_is_declared_with_unique_flag_and_variable():
    names = {(d.owner, d.name) for d in SETTINGS}
    assert names == {(Settings, f.name) for f in fields(Settings) if f.name != "limits"} | {
        (Limits, f.name) for f in fields(Limits)
    }
    flags = [d.flag for d in SETTINGS if d.flag]
    envs = [d.env for d in SETTINGS if d.env]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    # The documented exceptions: a secret has no flag (it would show in ps); commands have no variable.
    assert [d.name for d in SETTINGS if d.flag is None] == ["auth_token"]
    assert sorted(d.name for d in SETTINGS if d.env is None) == ["check_store", "rebuild_catalogue"]


@pytest.mark.parametrize("d", SETTINGS, ids=lambda d: d.name)
def test_variable_overrides_default_and_flag_overrides_variable(d, tmp_path):
    _needs(d)
    text, value = _other_value(d, tmp_path)
    assert _get(settings_from_args([], environ={}), d) != value
    if d.env:
        assert _get(settings_from_args([], environ={d.env: text}), d) == value
    if d.flag:
        argv = [d.flag] if _base_type(d.kind) is bool else [d.flag, text]
        env = {d.env: "junk"} if d.env else {}  # overridden by the flag, so never parsed
        assert _get(settings_from_args(argv, environ=env), d) == value


def test_flag_wins_over_a_valid_variable():
    s = settings_from_args(
        ["--port", "4321", "--max-run-seconds", "5", "--device", "cpu"],
        environ={
            "DEEPSCOPE_PORT": "1234",
            "DEEPSCOPE_MAX_RUN_SECONDS": "7",
            "DEEPSCOPE_DEVICE": "cuda",
            "DEEPSCOPE_WORKERS": "9",
        },
    )
    assert (s.port, s.limits.max_run_seconds, s.device, s.workers) == (4321, 5.0, "cpu", 9)


def test_negated_booleans_and_lists():
    s = settings_from_args(
        [],
        environ={
            "DEEPSCOPE_NO_REFLECTION": "yes",
            "DEEPSCOPE_NO_ENTRY_POINTS": "0",
            "DEEPSCOPE_PLUGINS": "modes,",
            "DEEPSCOPE_PLUGIN_MODULES": "a.b, c",
        },
    )
    assert (s.reflection, s.entry_points, s.plugins, s.plugin_modules) == (False, True, {"modes"}, ["a.b", "c"])
    s = settings_from_args(["--no-entry-points", "--plugin-module", "x", "--plugin-module", "y"], environ={})
    assert (s.reflection, s.entry_points, s.plugin_modules) == (True, False, ["x", "y"])
    assert settings_from_args([], environ={"DEEPSCOPE_PORT": "  "}).port == 50051  # blank: unset


def test_the_token_variable_leaves_the_environment(monkeypatch):
    monkeypatch.setenv("DEEPSCOPE_AUTH_TOKEN", "s" * 20)
    assert settings_from_args([]).auth_token == "s" * 20
    assert "DEEPSCOPE_AUTH_TOKEN" not in os.environ  # no worker process inherits it


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        ([], {"DEEPSCOPE_MAX_RUN_SECONDS": "abc"}, "DEEPSCOPE_MAX_RUN_SECONDS='abc': expected a number >= 0"),
        (["--max-model-bytes", "-5"], {}, "argument --max-model-bytes: expected an integer >= 0, got '-5'"),
        ([], {"DEEPSCOPE_DEVICE": "gpu"}, "DEEPSCOPE_DEVICE='gpu': expected one of auto, cpu, cuda"),
        ([], {"DEEPSCOPE_TRUST_MODEL_DIR": "maybe"}, "DEEPSCOPE_TRUST_MODEL_DIR='maybe': expected one of 1, true"),
        (["--port", "70000"], {}, "argument --port: expected an integer >= 0 and <= 65535, got '70000'"),
        (["--auth-token-file", "/nonexistent/token"], {}, "--auth-token-file /nonexistent/token: No such file"),
    ],
)
def test_bad_values_are_one_line_with_exit_code_2(argv, env, expected, tmp_path):
    """The real console script: what an operator sees (no traceback, no usage block)."""
    result = subprocess.run(
        [SERVER, "--store", str(tmp_path / "store"), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepscope-server: error: ") and expected in lines[0], lines


def _tiny_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_ort_threads_reach_the_onnx_session(tmp_path):
    """DEEPSCOPE_ORT_THREADS travels in Limits to wherever the model loads (a worker process too)."""
    limits = settings_from_args([], environ={"DEEPSCOPE_ORT_THREADS": "2"}).limits
    backend = load_checked(_tiny_onnx(tmp_path / "m.onnx"), limits, "cpu", False)
    try:
        assert backend._session(()).get_session_options().intra_op_num_threads == 2
    finally:
        backend.close()
