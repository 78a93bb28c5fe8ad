"""Every numeric parameter of the built-in metrics is bounded, so a client cannot ask for 10^9 restarts,
and a value past a bound is refused naming the metric, the parameter, the bound and the value."""

from __future__ import annotations

import math

import pytest

from deepscope_server import convert
from deepscope_server.plugins import load_registry
from deepscope_server.testing import validate_params

REGISTRY = load_registry()
BUILTIN = sorted(name for name, entry in REGISTRY.metrics.items() if entry.plugin == "deepscope-metrics")
NUMERIC = [(name, p) for name in BUILTIN for p in REGISTRY.metric(name).cls.params if p.type in (int, float)]


def test_the_builtins_are_loaded():
    assert len(BUILTIN) >= 10 and len(NUMERIC) >= 30, BUILTIN  # the checks below see the real metrics


@pytest.mark.parametrize(("metric", "param"), NUMERIC, ids=[f"{m}.{p.name}" for m, p in NUMERIC])
def test_every_numeric_param_has_finite_bounds_around_its_default(metric, param):
    assert param.min is not None and param.max is not None, f"{metric}.{param.name} needs min and max"
    assert math.isfinite(param.min) and math.isfinite(param.max)
    assert param.min <= param.default <= param.max
    # Both bounds are valid values; one step past either is refused.
    cls = REGISTRY.metric(metric).cls
    step = 1 if param.type is int else max(abs(param.max), 1.0) * 1e-3
    for bound in (param.min, param.max):
        assert validate_params(cls, {param.name: bound})[param.name] == bound
    with pytest.raises(ValueError, match=f"^{metric}: parameter '{param.name}' must be <= "):
        validate_params(cls, {param.name: param.max + step})
    with pytest.raises(ValueError, match=f"^{metric}: parameter '{param.name}' must be >= "):
        validate_params(cls, {param.name: param.min - (1 if param.type is int else max(abs(param.min), 1.0) * 1e-3)})


def test_the_message_names_metric_parameter_bound_and_value():
    cls = REGISTRY.metric("fractal.box_dimension").cls
    with pytest.raises(ValueError) as info:
        validate_params(cls, {"restarts": 10**9})
    assert str(info.value) == "fractal.box_dimension: parameter 'restarts' must be <= 100, got 1000000000"


@pytest.mark.parametrize(
    "name", ["fractal.box_dimension", "fractal.ss_rate", "fractal.correlation_dimension", "cnt.weight_graph"]
)
def test_list_metrics_carries_the_bounds(name):
    info = convert.metric_info_proto(REGISTRY.metric(name))
    specs = {spec.name: spec for spec in info.params}
    for param in REGISTRY.metric(name).cls.params:
        if param.type in (int, float):
            assert specs[param.name].HasField("min") and specs[param.name].HasField("max")
            assert (specs[param.name].min, specs[param.name].max) == (param.min, param.max)
