"""--executor ray settings: flags and environment variables, and one clear line when Ray is missing."""

import sys

import pytest

from deepscope_server.config import settings_from_args


def test_ray_flags_and_environment(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("DEEPSCOPE_EXECUTOR", "ray")
    monkeypatch.setenv("DEEPSCOPE_RAY_GPUS_PER_TASK", "0.5")
    s = settings_from_args(["--ray-address", "10.0.0.1:6379", "--ray-data-shards", "3"])
    assert (s.executor, s.ray_address, s.ray_gpus_per_task, s.ray_data_shards) == ("ray", "10.0.0.1:6379", 0.5, 3)
    assert settings_from_args([]).executor == "ray"
    monkeypatch.delenv("DEEPSCOPE_EXECUTOR")
    assert (settings_from_args([]).executor, settings_from_args([]).ray_address) == ("local", "auto")


def test_executor_ray_without_ray_installed_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what the import system reports for an absent package
    with pytest.raises(SystemExit) as exc:
        settings_from_args(["--executor", "ray"])
    message = str(exc.value)
    assert "\n" not in message and "pip install 'deepscope-server[ray]'" in message
    assert settings_from_args([]).executor == "local"  # the local executor never needs Ray


def test_negative_ray_numbers_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        settings_from_args(["--ray-gpus-per-task", "-1"])
    assert exc.value.code == 2
    assert "--ray-gpus-per-task: expected a number >= 0, got '-1'" in capsys.readouterr().err
