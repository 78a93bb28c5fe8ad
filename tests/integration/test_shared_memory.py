"""Same-host captures over a real server: shared memory and the gRPC stream give identical arrays."""

from __future__ import annotations

import os
import stat
import time

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
    return np.random.default_rng(seed).standard_normal((rows, 1, 8, 8)).astype(np.float32)


def _raw_capture(address: str, token: str, model_id: str, x: np.ndarray, accept: bool) -> list[pb.CaptureResponse]:
    import grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        request = pb.CaptureRequest(
            model=model_id, inputs=[to_proto(x, "x")], layers=["*"], accept_shared_memory=accept
        )
        return list(stub.Capture(request, metadata=[("authorization", f"Bearer {token}")], timeout=60))


def test_the_embedded_and_loopback_clients_ask_for_shared_memory_and_remote_ones_do_not(server):
    embedded, address = server
    with deepscope.connect(address, token=embedded.token, progress=False) as local:
        assert local.shared_memory
    remote = deepscope.connect("192.0.2.1:50051", progress=False)  # TEST-NET: never dialled here
    assert not remote.shared_memory
    remote.close()


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("batch_size", [None, 40])
def test_shared_memory_and_stream_give_identical_arrays(client, exported, fmt, batch_size):
    """Through the model sandbox (the server's default isolation), one batch and several."""
    model = client.upload_model(exported["cnn"][fmt])
    x = _x(100)
    client.shared_memory = True
    shared = client.capture(model, x, layers=["*"], layer_inputs=["fc", "layer1.0.conv2"], batch_size=batch_size)
    client.shared_memory = False
    streamed = client.capture(model, x, layers=["*"], layer_inputs=["fc", "layer1.0.conv2"], batch_size=batch_size)
    for mine, theirs in [
        (shared, streamed),
        (shared.model_outputs, streamed.model_outputs),
        (shared.layer_inputs, streamed.layer_inputs),
    ]:
        assert mine.keys() == theirs.keys() and mine
        for name in mine:
            assert mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_the_server_hands_a_private_segment_the_client_maps_and_frees(server, client, exported):
    embedded, address = server
    model = client.upload_model(exported["cnn"]["pt2"])
    x = _x(100, seed=3)
    parts = _raw_capture(address, embedded.token, model.id, x, accept=True)
    kinds = [p.WhichOneof("part") for p in parts]
    assert kinds == ["shared", "done"]
    message = parts[0].shared
    path = os.path.join(shared_memory.SHM_DIR, message.segment)
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    arrays = shared_memory.attach(message)
    assert not os.path.exists(path)
    assert parts[1].done.num_tensors == len(arrays)
    streamed = _raw_capture(address, embedded.token, model.id, x, accept=False)
    assert "shared" not in [p.WhichOneof("part") for p in streamed]  # never sent unless asked for


def test_tiny_captures_stream_even_when_shared_memory_is_accepted(server, client, exported):
    embedded, address = server
    model = client.upload_model(exported["mlp"]["pt2"])
    parts = _raw_capture(address, embedded.token, model.id, np.zeros((1, 64), np.float32), accept=True)
    assert "shared" not in [p.WhichOneof("part") for p in parts] and parts[-1].WhichOneof("part") == "done"


def test_a_segment_no_client_takes_is_unlinked_after_its_time(tmp_path, servers, exported):
    embedded, address = start_server(tmp_path / "store", shared_memory_seconds=1)
    servers.append(embedded)
    with deepscope.connect(address, token=embedded.token, progress=False) as c:
        model = c.upload_model(exported["cnn"]["onnx"])
        parts = _raw_capture(address, embedded.token, model.id, _x(100), accept=True)
        path = os.path.join(shared_memory.SHM_DIR, parts[0].shared.segment)
        for _ in range(300):
            if not os.path.exists(path):
                break
            time.sleep(0.1)
        assert not os.path.exists(path)
        with pytest.raises(shared_memory.SharedMemoryUnavailable):
            shared_memory.attach(parts[0].shared)
        # A client whose segment expired falls back to the stream and still gets the whole capture.
        acts = c.capture(model, _x(100), layers=["*"])
        assert acts and all(a.shape[0] == 100 for a in acts.values())


def _segments() -> set[str]:
    return {n for n in os.listdir(shared_memory.SHM_DIR) if n.startswith("deepscope_")}


def test_segments_are_reused_without_touching_arrays_the_client_still_holds(client, exported):
    """The SDK hands segments back once their arrays are gone; arrays it still holds never change."""
    model = client.upload_model(exported["cnn"]["pt2"])
    client.shared_memory = True
    before = _segments()
    held = client.capture(model, _x(100, seed=0), layers=["*"])
    held_copy = {k: v.copy() for k, v in held.items()}
    for seed in range(1, 8):
        acts = client.capture(model, _x(100, seed=seed), layers=["*"])
        assert not np.array_equal(acts["conv1"], held["conv1"])
        del acts
    for name, array in held_copy.items():
        np.testing.assert_array_equal(held[name], array, err_msg=name)
    assert len(_segments() - before) <= 2  # the held capture's segment and one reused for the rest
    held["conv1"][0] = 0.0  # still a private, writable mapping
    client.shared_memory = False
    streamed = client.capture(model, _x(100, seed=7), layers=["*"])
    client.shared_memory = True
    again = client.capture(model, _x(100, seed=7), layers=["*"])
    for name in streamed:
        np.testing.assert_array_equal(again[name], streamed[name], err_msg=name)


def test_segments_handed_back_are_unlinked_once_unused_for_their_time(tmp_path, servers, exported):
    """A notebook that stops capturing leaves nothing in /dev/shm past --shared-memory-seconds."""
    embedded, address = start_server(tmp_path / "store", shared_memory_seconds=1)
    servers.append(embedded)
    before = _segments()
    with deepscope.connect(address, token=embedded.token, progress=False) as c:
        c._worker_files = False  # segments, not the worker's own buffers (tested below)
        model = c.upload_model(exported["cnn"]["onnx"])
        for seed in range(3):
            assert c.capture(model, _x(100, seed=seed), layers=["*"])
        assert _segments() - before  # the last capture's segment, and the one handed back
        for _ in range(100):
            if not _segments() - before:
                break
            time.sleep(0.1)
        assert not _segments() - before


def test_a_client_that_reads_packed_parts_gets_the_segment_and_done_in_one_message(server, client, exported):
    import grpc

    embedded, address = server
    model = client.upload_model(exported["cnn"]["pt2"])
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        request = pb.CaptureRequest(
            model=model.id,
            inputs=[to_proto(_x(100), "x")],
            layers=["*"],
            accept_shared_memory=True,
            accept_packed_parts=True,
        )
        parts = list(stub.Capture(request, metadata=[("authorization", f"Bearer {embedded.token}")], timeout=60))
    assert [p.WhichOneof("part") for p in parts] == ["parts"]
    inner = parts[0].parts.parts
    assert [p.WhichOneof("part") for p in inner] == ["shared", "done"]
    arrays = shared_memory.attach(inner[0].shared)
    assert inner[1].done.num_tensors == len(arrays) and not os.path.exists(
        os.path.join(shared_memory.SHM_DIR, inner[0].shared.segment)
    )


def _lent_files(client: deepscope.Client, monkeypatch) -> list[str]:
    """The worker-buffer paths the SDK is handed (spy on the real attach)."""
    import deepscope.client as sdk

    seen: list[str] = []
    attach = sdk.attach_shared
    monkeypatch.setattr(sdk, "attach_shared", lambda message, **kw: seen.append(message.file) or attach(message, **kw))
    return seen


def test_the_workers_reply_buffer_is_lent_to_the_client_and_held_arrays_never_change(client, exported, monkeypatch):
    """No server-side copy: the SDK maps the model worker's sealed buffer, and a buffer it still
    holds is never written again, whatever later captures do."""
    model = client.upload_model(exported["cnn"]["pt2"])
    client.shared_memory = False
    want = [client.capture(model, _x(100, seed=s), layers=["*"]) for s in range(3)]
    client.shared_memory = True
    files = _lent_files(client, monkeypatch)
    held = client.capture(model, _x(100, seed=0), layers=["*"])
    for _ in range(2):
        for seed in (1, 2):
            got = client.capture(model, _x(100, seed=seed), layers=["*"])
            for name in want[seed]:
                np.testing.assert_array_equal(got[name], want[seed][name], err_msg=name)
            del got
    assert files and all(f.startswith("/proc/") for f in files)
    for name in want[0]:
        np.testing.assert_array_equal(held[name], want[0][name], err_msg=name)
    held["conv1"][0] = 0.0  # a private mapping: writable, and the worker never sees it


def test_a_buffer_held_past_its_time_is_closed_by_the_worker_never_reused(tmp_path, servers, exported, monkeypatch):
    embedded, address = start_server(tmp_path / "store", shared_memory_seconds=1)
    servers.append(embedded)
    with deepscope.connect(address, token=embedded.token, progress=False) as c:
        model = c.upload_model(exported["cnn"]["pt2"])
        files = _lent_files(c, monkeypatch)
        held = c.capture(model, _x(100, seed=0), layers=["*"])
        copy = {k: v.copy() for k, v in held.items()}
        time.sleep(2.5)  # the server's loan expired while the client still holds the arrays
        for seed in range(1, 5):
            assert c.capture(model, _x(100, seed=seed), layers=["*"])
        assert files and files[0].startswith("/proc/")
        for name, array in copy.items():
            np.testing.assert_array_equal(held[name], array, err_msg=name)


def test_a_client_that_cannot_open_worker_buffers_gets_segments(client, exported, monkeypatch):
    """Another PID namespace or user: the SDK stops asking for worker buffers, still uses segments."""
    model = client.upload_model(exported["cnn"]["pt2"])
    client.shared_memory = False
    want = client.capture(model, _x(100), layers=["*"])
    client.shared_memory = True

    def refuse(path: str, inode: int) -> int:
        raise shared_memory.WorkerFileUnavailable(f"cannot open {path}")

    monkeypatch.setattr(shared_memory, "_open_worker_file", refuse)
    got = client.capture(model, _x(100), layers=["*"])
    assert client.shared_memory and not client._worker_files
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_capture_the_server_cannot_lend_is_copied_into_a_segment(tmp_path, servers, exported, monkeypatch):
    """Every loan slot taken (the SDK holds the arrays of MAX_LENT_FILES captures): the next capture
    is copied into a segment instead, with the same arrays, and the held ones never change."""
    from deepscope_server.shared_memory import MAX_LENT_FILES

    embedded, address = start_server(tmp_path / "store")  # its own server: no other test's loans
    servers.append(embedded)
    with deepscope.connect(address, token=embedded.token, progress=False) as c:
        model = c.upload_model(exported["cnn"]["pt2"])
        c.shared_memory = False
        want = {seed: c.capture(model, _x(100, seed=seed), layers=["*"]) for seed in (0, 1)}
        c.shared_memory = True
        files = _lent_files(c, monkeypatch)
        held = [c.capture(model, _x(100, seed=0), layers=["*"]) for _ in range(MAX_LENT_FILES)]
        assert len(files) == MAX_LENT_FILES and all(f.startswith("/proc/") for f in files)
        got = c.capture(model, _x(100, seed=1), layers=["*"])
        assert files[-1] == ""  # a segment the server copied into, not a worker buffer
        for name in want[1]:
            np.testing.assert_array_equal(got[name], want[1][name], err_msg=name)
        for acts in held:
            for name in want[0]:
                np.testing.assert_array_equal(acts[name], want[0][name], err_msg=name)
