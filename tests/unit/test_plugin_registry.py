"""Plugin discovery through really installed entry points, allow-lists, and parameter validation."""

from __future__ import annotations

import types

import numpy as np
import pytest

from deepscope_server.errors import NotFound
from deepscope_server.model_graph import Layer
from deepscope_server.plugin_api import Metric, Param, hookimpl
from deepscope_server.plugins import load_registry
from deepscope_server.testing import run_metric, validate_params


def test_installed_example_plugin_and_builtin_datasets_are_discovered():
    registry = load_registry()
    entry = registry.metric("example.activation_moments")
    assert entry.plugin == "deepscope-example-plugin" and entry.version == "0.2.0"
    assert {"digits", "synthetic"} <= set(registry.datasets)


def test_allow_list_limits_plugins():
    registry = load_registry(allow={"deepscope-server"})  # --plugins / DEEPSCOPE_PLUGINS: see test_config.py
    assert "example.activation_moments" not in registry.metrics
    assert "digits" in registry.datasets
    assert not load_registry(use_entry_points=False).metrics


def test_broken_plugins_are_reported_not_fatal():
    class NotAMetric:
        name = "x.y"

    class BadName(Metric):
        name = "noperiod"
        description = "d"

    module = types.ModuleType("broken")

    @hookimpl
    def deepscope_register_metrics(register):
        register(NotAMetric)
        register(BadName)

    module.deepscope_register_metrics = deepscope_register_metrics
    registry = load_registry(use_entry_points=False, extra_plugins=[module])
    assert not registry.metrics
    assert any("not a subclass" in e for e in registry.errors)
    assert any("family.metric" in e for e in registry.errors)


def test_expand_and_near_matches():
    registry = load_registry()
    assert registry.expand(["example.*"]) == ["example.activation_moments", "example.weight_spectrum"]
    with pytest.raises(NotFound, match="did you mean: example.weight_spectrum"):
        registry.expand(["example.weight_spectrun"])
    with pytest.raises(NotFound, match="dataset 'mnist' not found; available: digits, synthetic"):
        registry.dataset("mnist")


def test_param_validation_messages():
    p = Param("k", int, 3, min=1, max=10)
    assert p.validate("4") == 4
    with pytest.raises(ValueError, match="must be <= 10"):
        p.validate(11)
    with pytest.raises(ValueError, match="expects an integer"):
        p.validate(2.5)
    with pytest.raises(ValueError, match="expects int, got a bool"):
        p.validate(True)
    assert Param("f", bool, False).validate("true") is True
    with pytest.raises(ValueError, match="must be one of a, b"):
        Param("m", str, "a", choices=("a", "b")).validate("c")

    class M(Metric):
        name = "t.m"
        description = "d"
        params = (p,)

    assert validate_params(M, {}) == {"k": 3}
    with pytest.raises(ValueError, match="unknown parameter.*bogus.*valid: k"):
        validate_params(M, {"bogus": 1})


def test_example_metric_matches_numpy_on_arrays_without_a_server():
    """The shipped test helper drives the same contract as the server; oracle: numpy mean/var."""
    from deepscope_example_plugin import ActivationMoments

    rng = np.random.default_rng(1)
    a = rng.standard_normal((130, 4, 3, 3))
    layer = Layer("conv", "conv", "Conv2d", channel_axis=1)
    out = run_metric(ActivationMoments, [layer], outputs={"conv": a}, batch_size=32)["conv"]
    per_channel = a.mean(axis=(2, 3))
    np.testing.assert_allclose(out["mean"], per_channel.mean(axis=0))
    np.testing.assert_allclose(out["variance"], per_channel.var(axis=0))
    assert out["num_samples"] == 130


def _plugin(name, **hooks):
    """A plugin module made of the given hook implementations."""
    module = types.ModuleType(name)
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    return module


class _Good(Metric):
    name = "t.good"
    description = "registered by a well-formed plugin"


def test_a_misspelled_hook_is_reported_and_the_others_still_load():
    misspelled = _plugin("misspelled", deepscope_register_metric=lambda register: register(_Good))
    good = _plugin("good", deepscope_register_metrics=lambda register: register(_Good))
    registry = load_registry(use_entry_points=False, extra_plugins=[misspelled, good])
    assert list(registry.metrics) == ["t.good"]
    [error] = registry.errors
    assert "deepscope_register_metric" in error and "known hooks: deepscope_register_datasets" in error


def test_a_hook_with_wrong_arguments_is_rejected_by_pluggy():
    wrong = _plugin("wrong", deepscope_register_metrics=lambda register, extra: None)
    registry = load_registry(use_entry_points=False, extra_plugins=[wrong])
    assert not registry.metrics
    assert any("rejected" in e and "extra" in e for e in registry.errors)


def test_a_raising_hook_fails_only_its_own_plugin():
    def boom(register):
        raise RuntimeError("no metrics today")

    raising = _plugin("raising", deepscope_register_metrics=boom)
    good = _plugin("good", deepscope_register_metrics=lambda register: register(_Good))
    registry = load_registry(use_entry_points=False, extra_plugins=[raising, good])
    assert "t.good" in registry.metrics and registry.metrics["t.good"].plugin == good.__name__
    assert any("no metrics today" in e and raising.__name__ in e for e in registry.errors)
