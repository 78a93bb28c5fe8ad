"""Same-host inputs over a real server: the SDK writes large inputs into segments the server lent
its connection, with the same arrays as inputs sent in the request, and recovers when one is gone."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import deepscope
from deepscope import shared_memory
from deepscope.tensors import to_proto
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

from .conftest import start_server

pytestmark = pytest.mark.skipif(not shared_memory.available(), reason="needs POSIX shared memory (/dev/shm)")


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 8, 8)).astype(np.float32)  # 256 B a row


def _count_writes(client: deepscope.Client, monkeypatch) -> list[int]:
    writes: list[int] = []
    write = client._input_segments.write
    monkeypatch.setattr(client._input_segments, "write", lambda seg, arrays: writes.append(1) or write(seg, arrays))
    return writes


@pytest.mark.parametrize("batch_size", [1000, 300])
def test_inputs_through_a_lent_segment_give_the_arrays_of_inputs_in_the_request(
    client, exported, monkeypatch, batch_size
):
    model = client.upload_model(exported["cnn"]["pt2"])
    writes = _count_writes(client, monkeypatch)
    client.shared_memory = False
    want = client.capture(model, _x(1000), layers=["*"], batch_size=batch_size)
    assert not writes and not client._input_segments.held
    client.shared_memory = True
    for _ in range(3):  # the first call asks for a segment (two when a batch is kept ahead), the others use it
        got = client.capture(model, _x(1000), layers=["*"], batch_size=batch_size)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert writes and client._input_segments.held == (1 if batch_size == 1000 else 2)
    small = client.capture(model, _x(4), layers=["*"])  # a few KB stay in the request
    np.testing.assert_array_equal(small["conv1"], want["conv1"][:4])


def _raw(address: str, token: str, request: pb.CaptureRequest) -> list[pb.CaptureResponse]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        return list(stub.Capture(request, metadata=[("authorization", f"Bearer {token}")], timeout=60))


def test_a_segment_is_usable_only_on_the_connection_it_was_lent_to(server, client, exported):
    embedded, address = server
    model = client.upload_model(exported["cnn"]["pt2"])
    client.shared_memory = True
    client.capture(model, _x(1000), layers=["conv1"])
    (segment,) = client._input_segments._free
    request = pb.CaptureRequest(model=model.id, layers=["conv1"], accept_shared_memory=True)
    request.shared_inputs.segment = segment.name
    request.shared_inputs.tensors.add(name="x", dtype="FP32", shape=[1000, 1, 8, 8], offset=0, total_bytes=256_000)
    with pytest.raises(grpc.RpcError) as failed:
        _raw(address, embedded.token, request)  # another channel: another connection
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not held by this connection" in failed.value.details()
    assert client.capture(model, _x(1000), layers=["conv1"])  # its own connection still works


def test_a_request_with_inputs_both_ways_is_refused(server, client, exported):
    embedded, address = server
    model = client.upload_model(exported["cnn"]["pt2"])
    request = pb.CaptureRequest(model=model.id, inputs=[to_proto(_x(1), "x")], accept_shared_memory=True)
    request.shared_inputs.segment = "deepscope_" + "0" * 32
    with pytest.raises(grpc.RpcError) as failed:
        _raw(address, embedded.token, request)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in failed.value.details()


def test_the_sdk_resends_the_inputs_when_its_segment_expired(tmp_path, servers, exported):
    embedded, address = start_server(tmp_path / "store", shared_memory_seconds=1)
    servers.append(embedded)
    with deepscope.connect(address, token=embedded.token, progress=False) as c:
        model = c.upload_model(exported["cnn"]["onnx"])
        first = c.capture(model, _x(1000), layers=["*"], batch_size=1000)
        (old,) = c._input_segments._free
        time.sleep(2.5)  # past --shared-memory-seconds: the server closed it (its sweep runs at ttl + 1 s)
        again = c.capture(
            model, _x(1000), layers=["*"], batch_size=1000
        )  # FAILED_PRECONDITION inside, resent in the request
        for name in first:
            np.testing.assert_array_equal(again[name], first[name], err_msg=name)
        again = c.capture(model, _x(1000), layers=["*"], batch_size=1000)
        assert [s.name for s in c._input_segments._free] != [old.name]  # a new one was lent
