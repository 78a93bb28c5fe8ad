"""Model lookups for Capture: a loaded upload is found without reading the catalogue, and
references (names, id prefixes) still resolve to what the catalogue says after uploads and
deletes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from deepscope_server.errors import NotFound
from deepscope_server.models import ModelManager
from deepscope_server.store import Store


def scale_model(factor: float) -> bytes:
    """``y = x * factor`` as ONNX bytes (a different factor: different bytes, different id)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"], name="scale")],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture()
def manager(tmp_path: Path):
    models = ModelManager(Store(tmp_path / "store"), isolation="thread")
    yield models
    models.close()


def _upload(models: ModelManager, name: str, factor: float):
    data = scale_model(factor)
    return models.upload(name, [data], 1 << 20, len(data))


def _factor(models: ModelManager, ref: str) -> float:
    loaded = models.get(ref)
    return float(loaded.run({"x": np.ones((1, 2), np.float32)}).outputs["y"][0, 0])


def test_a_loaded_upload_is_found_without_listing_the_catalogue(manager, monkeypatch):
    first = _upload(manager, "net", 2.0)
    refs = (first.stored.id, "net", first.stored.id[:12])
    for ref in refs:
        assert manager.get(ref) is first  # each reference resolved once through the catalogue...

    def no_listing() -> None:
        raise AssertionError("the catalogue was listed for a loaded model")

    monkeypatch.setattr(manager.store, "models", no_listing)
    for ref in refs:
        assert manager.get(ref) is first  # ...and never again
        assert manager.loaded_upload(ref) is first


def test_references_follow_uploads_and_deletes(manager):
    first = _upload(manager, "net", 2.0)
    assert _factor(manager, "net") == 2.0
    second = _upload(manager, "net", 3.0)  # same name, newer: the name now means this one
    assert _factor(manager, "net") == 3.0
    assert _factor(manager, first.stored.id) == 2.0
    assert manager.delete(second.stored.id)
    assert _factor(manager, "net") == 2.0  # the older upload of that name again
    assert manager.delete(first.stored.id)
    for ref in ("net", first.stored.id, second.stored.id[:12]):
        with pytest.raises(NotFound):
            manager.get(ref)
