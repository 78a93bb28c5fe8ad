"""Units behind the user path: side files of an upload, ONNX external-data discovery, the lock record."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, helper, numpy_helper

from deepscope import lock_record
from deepscope.onnx_files import external_data_files
from deepscope_server.errors import InvalidInput, LimitExceeded
from deepscope_server.store import Store, StoreInUse
from deepscope_server.uploads import SideFile


def _stream(model: bytes, sides: dict[str, bytes]) -> list:
    parts: list = [model[:3], model[3:]]
    for path, data in sides.items():
        parts += [SideFile(path, len(data), hashlib.sha256(data).hexdigest()), data]
    return parts


def test_side_files_are_stored_beside_the_model_and_counted_in_its_id(tmp_path):
    store = Store(tmp_path)
    model_id, path, size = store.write_model(
        "net.onnx", _stream(b"model-bytes", {"net.onnx.data": b"w" * 10, "sub/more.bin": b"m"}), 1000
    )
    assert path.read_bytes() == b"model-bytes" and size == 11 + 10 + 1
    assert (path.parent / "net.onnx.data").read_bytes() == b"w" * 10 and (
        path.parent / "sub/more.bin"
    ).read_bytes() == b"m"
    assert model_id != hashlib.sha256(b"model-bytes").hexdigest()
    again, _, _ = store.write_model(
        "x", _stream(b"model-bytes", {"sub/more.bin": b"m", "net.onnx.data": b"w" * 10}), 1000
    )
    other, _, _ = store.write_model(
        "x", _stream(b"model-bytes", {"net.onnx.data": b"v" * 10, "sub/more.bin": b"m"}), 1000
    )
    assert again == model_id and other != model_id
    alone, alone_path, _ = store.write_model("m", [b"model-bytes"], 1000)
    assert alone == hashlib.sha256(b"model-bytes").hexdigest() and sorted(os.listdir(alone_path.parent)) == ["model"]
    store.close()


@pytest.mark.parametrize(
    "sides, max_bytes, error, message",
    [
        ({"../up.data": b"x"}, 1000, InvalidInput, "relative path inside"),
        ({"a/../../up.data": b"x"}, 1000, InvalidInput, "relative path inside"),
        ({"/abs.data": b"x"}, 1000, InvalidInput, "relative path inside"),
        ({"C:evil": b"x"}, 1000, InvalidInput, "relative path inside"),
        ({"model": b"x"}, 1000, InvalidInput, "reserved"),
        ({"w.data": b"x" * 100}, 50, LimitExceeded, "max_model_bytes"),
    ],
)
def test_bad_side_files_leave_nothing_behind(tmp_path, sides, max_bytes, error, message):
    store = Store(tmp_path)
    with pytest.raises(error, match=message):
        store.write_model("net.onnx", _stream(b"model", sides), max_bytes)
    assert os.listdir(store.models_dir) == []
    store.close()


def test_a_short_or_corrupted_side_file_is_refused(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(InvalidInput, match="side file 'w.data', incomplete: header declared 5 bytes, got 3"):
        store.write_model("m", [b"model", SideFile("w.data", 5), b"abc"], 1000)
    with pytest.raises(InvalidInput, match="side file 'w.data', corrupted"):
        store.write_model("m", [b"model", SideFile("w.data", 3, "00" * 32), b"abc"], 1000)
    with pytest.raises(InvalidInput, match="twice"):
        store.write_model("m", [b"model", SideFile("w.data", 1), b"a", SideFile("w.data", 1), b"a"], 1000)
    assert os.listdir(store.models_dir) == []
    store.close()


def _model_with_external_data(tmp_path, locations: list[str]) -> str:
    """An ONNX model whose initializers (one in a Loop body subgraph too) live in external files."""
    tensors = [numpy_helper.from_array(np.full((4,), i, np.float32), f"w{i}") for i in range(len(locations))]
    for tensor, location in zip(tensors, locations):
        external_data_helper.set_external_data(tensor, location=location)
        tensor.ClearField("raw_data")
    body = helper.make_graph(
        [helper.make_node("Identity", ["w_last"], ["y"])], "body", [], [], initializer=tensors[-1:]
    )
    node = helper.make_node("If", ["c"], ["out"], then_branch=body, else_branch=body)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [4])],
        initializer=tensors[:-1],
    )
    path = tmp_path / "net.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return str(path)


def test_external_data_files_agree_with_onnx(tmp_path):
    locations = ["net.onnx.data", "sub/b.bin", "net.onnx.data", "c.bin"]
    for location in set(locations):
        (tmp_path / location).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / location).write_bytes(b"\0" * 16)
    path = _model_with_external_data(tmp_path, locations)
    found = external_data_files(path)
    model = onnx.load(path, load_external_data=False)
    oracle = {
        external_data_helper.ExternalDataInfo(t).location
        for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)
    }
    assert set(found) == oracle == set(locations) and len(found) == len(oracle)


def test_external_data_outside_the_directory_or_missing_is_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "outside.bin").write_bytes(b"x")
    os.symlink(tmp_path / "outside.bin", tmp_path / "sub" / "link.bin")
    model_dir = tmp_path / "sub"
    with pytest.raises(ValueError, match="outside the model's directory"):
        external_data_files(_model_with_external_data(model_dir, ["../outside.bin"]))
    with pytest.raises(ValueError, match="resolves outside"):
        external_data_files(_model_with_external_data(model_dir, ["link.bin"]))
    with pytest.raises(FileNotFoundError, match="'gone.bin' not found"):
        external_data_files(_model_with_external_data(model_dir, ["gone.bin"]))
    (tmp_path / "not.onnx").write_bytes(b"\xff\xff garbage")
    assert external_data_files(tmp_path / "not.onnx") == []


def test_lock_record_is_private_and_describes_without_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv(lock_record.LIFELINE_ENV, "/tmp/x/lifeline")
    store = Store(tmp_path)
    assert stat.S_IMODE((tmp_path / "server.lock").stat().st_mode) == 0o600
    lock_record.publish(tmp_path, address="127.0.0.1:5", token="secret-token")
    record = lock_record.read_live(tmp_path)
    assert record == {
        "pid": os.getpid(),
        "lifeline": "/tmp/x/lifeline",
        "address": "127.0.0.1:5",
        "token": "secret-token",
    }
    with pytest.raises(StoreInUse) as refused:
        Store(tmp_path)
    assert "secret-token" not in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    store.close()
    assert lock_record.read_live(tmp_path) is None  # the text is still there, but nobody holds the lock
    with open(tmp_path / "server.lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and it is really free
    assert lock_record.parse("pid 12") == {"pid": 12} and lock_record.describe("garbage") == "another process"
