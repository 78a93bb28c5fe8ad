"""Result values -> typed wire items and back (the SDK's decoding is the oracle for the encoding)."""

from __future__ import annotations

import numpy as np
import pytest

from deepscope.results import Curve as ClientCurve
from deepscope.results import GraphData, decode_item
from deepscope_server.convert import MalformedResult, item_proto, wire_result_kinds
from deepscope_server.plugin_api import Curve, Graph, Table


def round_trip(value):
    return decode_item(item_proto("k", value))


def test_values_round_trip():
    assert round_trip(2) == 2.0 and round_trip("text") == "text"
    assert round_trip(True) is True and round_trip(np.bool_(False)) is False  # a flag, not 1.0/0.0
    assert item_proto("k", True).WhichOneof("value") == "flag"
    assert np.isnan(round_trip(float("nan")))
    np.testing.assert_array_equal(round_trip(np.arange(6).reshape(2, 3)), np.arange(6).reshape(2, 3))
    curve = round_trip(Curve(np.array([1.0, 2.0]), np.array([3.0, 4.0]), "a", "b"))
    assert isinstance(curve, ClientCurve) and curve.x_label == "a" and list(curve.y) == [3.0, 4.0]
    table = round_trip(Table({"layer": ["a", "b"], "v": [1.5, 2.5]}))
    assert table["layer"] == ["a", "b"] and list(table["v"]) == [1.5, 2.5]


def test_graph_round_trip_to_networkx():
    graph = Graph(3, np.array([0, 1]), np.array([1, 2]), np.array([0.5, -1.0]), True, {"name": ["a", "b", "c"]})
    decoded = round_trip(graph)
    assert isinstance(decoded, GraphData)
    g = decoded.to_networkx()
    assert g.is_directed() and g.edges[1, 2]["weight"] == -1.0 and g.nodes[2]["name"] == "c"
    undirected = round_trip(Graph(2, np.array([0]), np.array([1]), directed=False)).to_networkx()
    assert not undirected.is_directed() and undirected.has_edge(1, 0)


@pytest.mark.parametrize(
    "value, message",
    [
        (object(), "unsupported type"),
        (np.array(["a", "b"]), "expected numbers"),
        (Curve(np.arange(3), np.arange(4)), "equal length"),
        (Table({"a": [1, 2], "b": [1]}), "has 1 rows, expected 2"),
        (Graph(2, np.array([0]), np.array([2])), r"node ids must lie in \[0, 2\)"),
        (Graph(2, np.array([0]), np.array([1]), np.array([1.0, 2.0])), "2 weights for 1 edges"),
        (Graph(2, np.array([0]), np.array([1]), nodes={"x": [1, 2, 3]}), "num_nodes = 2 rows"),
    ],
)
def test_malformed_values_are_named(value, message):
    with pytest.raises(MalformedResult, match=message):
        item_proto("k", value)


def test_result_kinds_use_the_wire_field_names():
    assert wire_result_kinds(("scalar", "vector", "matrix", "string", "curve")) == ["scalar", "tensor", "text", "curve"]
