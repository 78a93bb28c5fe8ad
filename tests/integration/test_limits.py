"""Every configurable limit against a real server started with small limits: RESOURCE_EXHAUSTED,
naming the limit and the size, and the server keeps serving afterwards."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

import deepscope
from deepscope.tensors import to_proto
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

from .conftest import start_server
from .helpers import analyze_slow

LIMITS = dict(
    max_model_bytes=300_000,
    max_message_bytes=1 << 20,
    max_tensor_elements=10_000,
    max_batch_size=100,
    max_capture_bytes=20_000,
    max_concurrent_runs=1,
    max_run_seconds=4.0,
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    server, address = start_server(tmp_path_factory.mktemp("limited"), no_entry_points=True, **LIMITS)
    with deepscope.connect(address, token=server.token, progress=False) as c:
        yield server, address, c
    server.stop()


@pytest.fixture(scope="module")
def mlp(limited, exported):
    return limited[2].upload_model(exported["mlp"]["onnx"])


def test_max_model_bytes_from_the_header_and_from_the_stream(limited, exported):
    _, address, client = limited
    big = exported["cnn"]["onnx"].read_bytes()
    if len(big) <= LIMITS["max_model_bytes"]:  # pad: the limit is on bytes, whatever they are
        big += b"\0" * (LIMITS["max_model_bytes"] + 1 - len(big))
    with pytest.raises(
        deepscope.ResourceExhausted, match=f"max_model_bytes exceeded: {len(big):,} bytes > limit 300,000"
    ):
        client.upload_model(big, name="big.onnx")
    # A header that lies about the size: the stream itself is cut off at the limit.
    server, _, _ = limited
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        chunks = [pb.UploadModelRequest(header=pb.UploadHeader(name="liar.onnx", total_bytes=10))]
        chunks += [pb.UploadModelRequest(chunk=b"\x08" * 100_000) for _ in range(4)]
        with pytest.raises(grpc.RpcError) as info:
            stub.UploadModel(iter(chunks), metadata=[("authorization", f"Bearer {server.token}")], timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_model_bytes exceeded: 400,000 bytes > limit 300,000 bytes" in info.value.details()
    deadline = time.monotonic() + 10  # the writer thread removes its temp file as it unwinds
    while list((server.store / "models").glob(".upload-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((server.store / "models").glob(".upload-*"))
    assert "liar.onnx" not in [m.name for m in client.models()]


def test_max_message_bytes(limited, mlp):
    _, _, client = limited
    # 300,000 FP32 values = 1.2 MB in one message: gRPC refuses it before it is decoded.
    with pytest.raises(deepscope.ResourceExhausted) as info:
        client.capture(mlp, np.zeros((4688, 64), np.float32), batch_size=4688)
    assert "larger than max" in info.value.details and f"{1 << 20}" in info.value.details


def test_max_tensor_elements(limited, mlp):
    _, _, client = limited
    with pytest.raises(
        deepscope.ResourceExhausted, match=r"max_tensor_elements .*exceeded: 12,800 elements > limit 10,000 elements"
    ):
        client.capture(mlp, np.zeros((200, 64), np.float32), batch_size=200)
    # A tensor that declares an absurd shape (with few bytes) is refused by the limit, before decoding.
    server, address, _ = limited
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        bogus = to_proto(np.zeros((1, 64), np.float32))
        bogus.shape[:] = [10**9, 10**9]
        with pytest.raises(grpc.RpcError) as info:
            list(
                stub.Capture(
                    pb.CaptureRequest(model=mlp.id, inputs=[bogus]),
                    metadata=[("authorization", f"Bearer {server.token}")],
                    timeout=30,
                )
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1,000,000,000,000,000,000 elements > limit 10,000" in info.value.details()


def test_max_batch_size(limited, mlp):
    _, _, client = limited
    with pytest.raises(deepscope.ResourceExhausted, match="max_batch_size exceeded: 150 samples > limit 100 samples"):
        client.capture(mlp, np.zeros((150, 64), np.float32), batch_size=150)
    with pytest.raises(deepscope.ResourceExhausted, match="max_batch_size exceeded: 128 samples > limit 100"):
        client.analyze(mlp, data=np.zeros((10, 64), np.float32), metrics=["testing.slow"], batch_size=128)


def test_max_capture_bytes(limited, mlp):
    _, _, client = limited
    # 100 samples: output 10 + fc1 32 + fc2 16 floats per sample = 23,200 bytes > 20,000.
    with pytest.raises(deepscope.ResourceExhausted, match="max_capture_bytes exceeded: 23,200 bytes > limit 20,000"):
        client.capture(mlp, np.zeros((100, 64), np.float32), layers=["fc1", "fc2"], batch_size=100)
    assert client.capture(mlp, np.zeros((10, 64), np.float32), layers=["fc1", "fc2"])["fc1"].shape == (10, 32)


def test_max_concurrent_runs(limited, mlp):
    _, _, client = limited
    x = np.zeros((4, 64), np.float32)
    started = threading.Event()
    outcome: dict[str, object] = {}

    def slow_run() -> None:
        try:
            outcome["run"] = analyze_slow(
                client,
                mlp,
                0.6,
                data=x,
                batch_size=2,
                on_event=lambda ev: started.set() if ev.HasField("started") else None,
            )
        except Exception as exc:  # asserted below
            outcome["error"] = exc

    thread = threading.Thread(target=slow_run)
    thread.start()
    assert started.wait(30)
    with pytest.raises(deepscope.ResourceExhausted, match="max_concurrent_runs exceeded: 2 runs > limit 1 runs"):
        analyze_slow(client, mlp, 0.0, data=x)
    thread.join(60)
    assert "error" not in outcome and outcome["run"].status == "completed"
    # The slot is free again.
    assert analyze_slow(client, mlp, 0.0, data=x).status == "completed"


def test_max_run_seconds(limited, mlp):
    _, _, client = limited
    x = np.zeros((40, 64), np.float32)
    events: list[pb.AnalyzeResponse] = []
    t0 = time.monotonic()
    with pytest.raises(deepscope.ResourceExhausted, match=r"max_run_seconds exceeded: [\d.]+ s > limit 4.0 s"):
        analyze_slow(client, mlp, 1.0, data=x, batch_size=4, on_event=events.append)
    assert time.monotonic() - t0 < 15
    run_id = next(ev.started.id for ev in events if ev.HasField("started"))
    again = client.get_run(run_id)
    assert again.status == "failed" and "max_run_seconds" in again.info.error
    assert client.health() == "SERVING"
