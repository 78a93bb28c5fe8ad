"""The client's early usage checks and the cache keys that keep them from going stale."""

from __future__ import annotations

import pytest

from deepscope import catalogue
from deepscope.v1 import introspection_pb2 as pb
from deepscope.values import to_value


def infos() -> pb.ListMetricsResponse:
    strength = pb.MetricInfo(
        name="cnt.node_strength",
        params=[
            pb.ParamSpec(
                name="mode", type="str", default=to_value("code"), choices=[to_value("code"), to_value("graph")]
            ),
            pb.ParamSpec(name="missing_side_const", type="float", default=to_value(1.0), min=0.0),
            pb.ParamSpec(name="fold_norm", type="bool", default=to_value(True)),
        ],
    )
    return pb.ListMetricsResponse(metrics=[strength, pb.MetricInfo(name="fractal.ss_rate")])


@pytest.mark.parametrize(
    "patterns, params, message",
    [
        (["cnt.node_strenght"], {}, "did you mean: cnt.node_strength"),
        (["nope.*"], {}, "'nope.*' matches no metric"),
        (["all"], {"cnt.nope": {"x": 1}}, "--param for unknown metric 'cnt.nope'"),
        (["cnt.*"], {"cnt.node_strength": {"modes": "graph"}}, "valid: mode, missing_side_const, fold_norm"),
        (["cnt.*"], {"cnt.node_strength": {"mode": "walk"}}, "must be one of code, graph"),
        (["cnt.*"], {"cnt.node_strength": {"missing_side_const": -1}}, "must be >= 0"),
        (["cnt.*"], {"cnt.node_strength": {"missing_side_const": "high"}}, "expects float"),
        (["cnt.*"], {"cnt.node_strength": {"fold_norm": "maybe"}}, "expects true or false"),
    ],
)
def test_bad_requests_are_named(patterns, params, message):
    with pytest.raises(catalogue.UsageError, match=message.replace("(", r"\(").replace(".*", r"\.\*")):
        catalogue.check_metrics(infos(), patterns, params)


def test_good_requests_pass():
    catalogue.check_metrics(
        infos(),
        ["all", "cnt.*", "fractal.ss_rate"],
        {"cnt.node_strength": {"mode": "graph", "missing_side_const": 0, "fold_norm": "false"}},
    )
    layers = [("fc1", "linear"), ("act1", "activation"), ("fc2", "linear")]
    catalogue.check_layers(layers, ["fc1", "fc*", "kind:activation", "act[0-9]"])
    with pytest.raises(catalogue.UsageError, match="'conv\\*' matches no layer"):
        catalogue.check_layers(layers, ["conv*"])
    with pytest.raises(catalogue.UsageError, match="this model's kinds: activation, linear"):
        catalogue.check_layers(layers, ["kind:conv"])


def test_fingerprint_follows_settings_and_cache_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOPE_CACHE", str(tmp_path))
    monkeypatch.delenv("DEEPSCOPE_PLUGINS", raising=False)
    base = catalogue.embedded_fingerprint()
    monkeypatch.setenv("DEEPSCOPE_TOKEN", "irrelevant-secret")
    assert catalogue.embedded_fingerprint() == base
    monkeypatch.setenv("DEEPSCOPE_PLUGINS", "deepscope-metrics")
    assert catalogue.embedded_fingerprint() != base  # another plugin selection, another catalogue
    assert catalogue.load_catalogue(base) is None
    catalogue.save_catalogue(base, infos())
    assert catalogue.load_catalogue(base) == infos()
    (tmp_path / f"metrics-{base}.pb").write_bytes(b"\xff garbage")
    assert catalogue.load_catalogue(base) is None  # unreadable: validated after start instead
