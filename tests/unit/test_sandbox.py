"""Sandboxed model workers: same results as in-process backends, real deadlines, contained failures."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deepscope_server import wire_codec
from deepscope_server.backends import CaptureRequest
from deepscope_server.backends.detect import load_model
from deepscope_server.config import Limits
from deepscope_server.errors import DeadlineExceeded, InvalidInput, ModelCrashed, ModelOutOfMemory
from deepscope_server.isolation import _MP, RunCancelled
from deepscope_server.model_graph import Layer, ModelGraph, TensorSpec
from deepscope_server.sandbox import SandboxedBackend


def loop_bomb(path: Path) -> Path:
    """A few hundred bytes of ONNX whose Loop runs 2**62 iterations: never returns in practice."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 1]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["trips", "cond", "x"], ["looped"], body=body),
            helper.make_node("Relu", ["looped"], ["y"], name="relu"),
        ],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [
            helper.make_tensor("trips", TensorProto.INT64, [], [2**62]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_codec_round_trip_without_pickle() -> None:
    graph = ModelGraph(
        "onnx",
        [TensorSpec("x", "FP32", (None, 4))],
        [TensorSpec("y", "FP32", (None, 2))],
        [
            Layer(
                "fc",
                "linear",
                "Gemm",
                ["x"],
                [(None, 4)],
                [(None, 2)],
                {"weight": np.arange(8, dtype=np.float32).reshape(2, 4), "bias": np.zeros(0)},
                {"stride": (1, 1), "flag": True, "__nd__": "a user key"},
            )
        ],
    )
    parent, child = _MP.Pipe(duplex=True)
    big = np.random.default_rng(0).standard_normal((600, 512))  # 2.4 MB: through a shared-memory segment
    message = {"graph": graph, "captured": {CaptureRequest("fc"): np.ones((3, 2), np.float16)}, "big": big[:, ::2]}
    wire_codec.send(child, message)
    got = wire_codec.recv(parent, 1 << 22)
    np.testing.assert_array_equal(got["big"], big[:, ::2])
    got["big"][0, 0] = 7.0  # a private mapping: writable, and the sender's segment is untouched
    wire_codec.send(child, {"small": big[:2]})  # small messages travel inline
    np.testing.assert_array_equal(wire_codec.recv(parent, 1 << 22)["small"], big[:2])
    layer = got["graph"].layers[0]
    assert got["graph"].layer("fc") is layer and got["graph"].inputs[0].shape == (None, 4)
    np.testing.assert_array_equal(layer.weights["weight"], graph.layers[0].weights["weight"])
    assert layer.weights["bias"].shape == (0,) and layer.attrs == graph.layers[0].attrs
    assert got["captured"][CaptureRequest("fc")].dtype == np.float16
    got["captured"][CaptureRequest("fc")][0, 0] = 5  # private copy-on-write views are writable


def test_codec_refuses_what_it_does_not_know() -> None:
    parent, child = _MP.Pipe(duplex=True)
    with pytest.raises(wire_codec.CodecError):
        wire_codec.send(child, {"x": object()})
    child.send_bytes(b'{"v": {"__dc__": "Popen", "f": {}}, "a": [], "n": 0}')
    with pytest.raises(wire_codec.CodecError, match="not a message class"):
        wire_codec.recv(parent, 1 << 20)
    child.send_bytes(b'{"v": 1, "a": [], "n": 99999999}')
    with pytest.raises(wire_codec.CodecError, match="over the limit"):
        wire_codec.recv(parent, 1 << 20)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_sandboxed_backend_matches_in_process(zoo_models, name: str, fmt: str) -> None:
    zoo = zoo_models[name]
    direct = load_model(zoo.paths[fmt])
    sandboxed = SandboxedBackend.load(zoo.paths[fmt])
    try:
        assert [layer.name for layer in sandboxed.graph.layers] == [layer.name for layer in direct.graph.layers]
        for a, b in zip(sandboxed.graph.layers, direct.graph.layers):
            assert a.kind == b.kind and a.weights.keys() == b.weights.keys()
            for key in a.weights:
                np.testing.assert_array_equal(a.weights[key], b.weights[key])
        x = {direct.graph.inputs[0].name: zoo.example.numpy()}
        requests = [CaptureRequest(layer.name) for layer in direct.graph.layers[:4]]
        want, got = direct.run(x, requests), sandboxed.run(x, requests)
        for key in want.outputs:
            np.testing.assert_array_equal(got.outputs[key], want.outputs[key])
        for request in requests:
            np.testing.assert_array_equal(got.captured[request], want.captured[request])
        # Weight swaps reach the worker and change the outputs exactly as in process.
        first = next(layer for layer in direct.graph.layers if "weight" in layer.weights)
        swapped = {first.name: {"weight": first.weights["weight"] * 0}}
        np.testing.assert_allclose(
            sandboxed.run_with_weights(x, swapped).outputs[key],
            direct.run_with_weights(x, swapped).outputs[key],
            rtol=1e-6,
        )
        # A bad input is the client's error, and the worker survives it.
        with pytest.raises(InvalidInput):
            sandboxed.run({direct.graph.inputs[0].name: np.zeros((2, 3, 1, 1), np.int8)})
        pid = sandboxed.pid
        sandboxed.run(x)
        assert sandboxed.pid == pid
    finally:
        sandboxed.close()
        direct.close()


def test_forward_past_its_deadline_is_stopped_and_the_next_call_gets_a_fresh_worker(tmp_path) -> None:
    backend = SandboxedBackend.load(loop_bomb(tmp_path / "bomb.onnx"), limits=Limits(max_forward_seconds=1.0))
    try:
        first = backend.pid
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="max-forward-seconds"):
            backend.run({"x": np.zeros((1, 1), np.float32)})
        assert time.monotonic() - started < 30
        assert backend.pid is None and not _alive(first)
        with pytest.raises(DeadlineExceeded, match="call's deadline"):
            backend.run({"x": np.zeros((1, 1), np.float32)}, deadline=time.monotonic() + 0.3)
        flag = {"stop": False}
        with pytest.raises(RunCancelled):
            backend.run({"x": np.zeros((1, 1), np.float32)}, cancelled=lambda: flag.__setitem__("stop", True) or True)
    finally:
        backend.close()


def test_run_on_the_event_loop_matches_run_and_shares_the_pipe(zoo_models) -> None:
    """``run_async`` (the loop reads the worker's pipe itself) gives ``run``'s arrays, for inline and
    shared-memory-file messages both ways, and leaves the pipe framed for ``run`` in between."""
    zoo = zoo_models["cnn"]
    sandboxed = SandboxedBackend.load(zoo.paths["pt2"])
    try:
        name = sandboxed.graph.inputs[0].name
        small = zoo.example.numpy()[:1]
        big = np.repeat(small, wire_codec.INLINE_BYTES // small.nbytes + 1, axis=0)  # passed as a memfd
        requests = [CaptureRequest(layer.name) for layer in sandboxed.graph.layers[:3]]
        pid = sandboxed.pid
        for x in (small, big, small):
            want = sandboxed.run({name: x}, requests)
            got = asyncio.run(sandboxed.run_async({name: x}, requests))
            for key in want.outputs:
                np.testing.assert_array_equal(got.outputs[key], want.outputs[key])
            for request in requests:
                np.testing.assert_array_equal(got.captured[request], want.captured[request])
        assert sum(a.nbytes for a in got.captured.values()) > 0 and sandboxed.pid == pid
        # The model's own error comes back as the same domain error, and the worker survives it.
        with pytest.raises(InvalidInput):
            asyncio.run(sandboxed.run_async({name: np.zeros((2, 3, 1, 1), np.int8)}))
        assert sandboxed.pid == pid
    finally:
        sandboxed.close()


def test_run_on_the_event_loop_stops_the_worker_on_deadline_cancel_and_kill(tmp_path) -> None:
    backend = SandboxedBackend.load(loop_bomb(tmp_path / "bomb.onnx"), limits=Limits(max_forward_seconds=30.0))
    x = {"x": np.zeros((1, 1), np.float32)}

    async def killed_mid_call() -> None:
        task = asyncio.ensure_future(backend.run_async(x))
        await asyncio.sleep(0.5)
        assert backend.pid is not None and not task.done()
        os.kill(backend.pid, signal.SIGKILL)
        await task

    async def cancelled_mid_call() -> None:
        task = asyncio.ensure_future(backend.run_async(x))
        await asyncio.sleep(0.3)
        task.cancel()
        await task

    try:
        first = backend.pid
        with pytest.raises(DeadlineExceeded, match="call's deadline"):
            asyncio.run(backend.run_async(x, deadline=time.monotonic() + 0.3))
        assert not backend.ready and not _alive(first)
        backend._start()
        second = backend.pid
        with pytest.raises(RunCancelled):
            asyncio.run(backend.run_async(x, cancelled=lambda: True))
        assert not backend.ready and not _alive(second)
        backend._start()
        third = backend.pid
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(cancelled_mid_call())
        assert not backend.ready and not _alive(third)
        backend._start()
        with pytest.raises(ModelCrashed, match="SIGKILL.*starts a fresh worker"):
            asyncio.run(killed_mid_call())
        assert not backend.ready
        # The next call starts a fresh worker (which the bomb then keeps past its deadline).
        with pytest.raises(DeadlineExceeded, match="call's deadline"):
            backend.run(x, deadline=time.monotonic() + 0.5)
    finally:
        backend.close()


def test_a_model_over_its_memory_cap_fails_alone(tmp_path) -> None:
    """A MatMul whose output needs ~4 GiB in a worker capped at 1.5 GiB."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "big",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "big.onnx")
    backend = SandboxedBackend.load(tmp_path / "big.onnx", limits=Limits(model_memory_bytes=1536 << 20))
    try:
        n = 32768
        with pytest.raises((ModelOutOfMemory, ModelCrashed, InvalidInput)) as info:
            backend.run({"a": np.ones((n, 1), np.float32), "b": np.ones((1, n), np.float32)})
        assert "memory" in str(info.value).lower() or "alloc" in str(info.value).lower()
        small = backend.run({"a": np.ones((2, 1), np.float32), "b": np.ones((1, 3), np.float32)})
        np.testing.assert_array_equal(small.outputs["y"], np.ones((2, 3)))
    finally:
        backend.close()


def test_worker_holds_none_of_the_servers_files(tmp_path) -> None:
    """Only stdio, pipes, sockets to the server and anonymous handles: no store file, no TCP socket."""
    listening = __import__("socket").create_server(("127.0.0.1", 0))
    secret = open(tmp_path / "server-secret.txt", "w")  # held open on purpose
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "id",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "id.onnx")
    backend = SandboxedBackend.load(tmp_path / "id.onnx")
    try:
        targets = [os.readlink(f"/proc/{backend.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{backend.pid}/fd")]
        assert not [t for t in targets if "server-secret" in t or str(tmp_path) in t], targets
        inodes = {t for t in targets if t.startswith("socket:")}
        tcp = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
        assert not [i for i in inodes if i[8:-1] in tcp], "the worker holds a TCP socket"
    finally:
        backend.close()
        secret.close()
        listening.close()


def test_unloadable_bytes_are_refused_with_the_loaders_reason(tmp_path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(InvalidInput, match="not a valid ONNX model|not a loadable model"):
        SandboxedBackend.load(path)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_a_worker_dying_near_its_memory_cap_is_reported_as_out_of_memory(tmp_path) -> None:
    """Native code may exit or abort where Python raises MemoryError: the peak address space tells."""
    from deepscope_server.sandbox import _address_space_peak

    backend = SandboxedBackend(tmp_path / "m.onnx", Limits(model_memory_bytes=1000 << 20), "cpu", False)
    crashed, loader = _MP.Process(target=os._exit, args=(3,)), _MP.Process(target=os._exit, args=(127,))
    for process in (crashed, loader):
        process.start()
        process.join(30)
    near = backend._death_error("loading the model", crashed, 950 << 20)
    far = backend._death_error("loading the model", crashed, 300 << 20)
    assert isinstance(near, ModelOutOfMemory) and "950 MiB of its 1,000 MiB" in str(near)
    assert isinstance(far, ModelCrashed) and "code 3" in str(far) and "--model-memory-bytes" in str(far)
    # ld.so's fatal exit (a symbol it could not bind for lack of memory) is out of memory too.
    assert isinstance(backend._death_error("loading the model", loader, 300 << 20), ModelOutOfMemory)
    assert _address_space_peak(os.getpid()) > 0 and _address_space_peak(None) == 0


def test_domain_errors_keep_their_details_across_the_worker_boundary(zoo_models) -> None:
    """An unknown input found in the worker arrives as NOT_FOUND with its reason and suggestions."""
    from deepscope_server.errors import NotFound

    backend = SandboxedBackend.load(zoo_models["mlp"].paths["onnx"], limits=Limits())
    try:
        with pytest.raises(NotFound) as missing:
            backend.run({"X": np.zeros((2, 64), np.float32)})
        assert missing.value.reason == "UNKNOWN_INPUT" and missing.value.suggestions == ("x",)
        assert missing.value.field == "inputs" and missing.value.metadata["resource_name"] == "X"
    finally:
        backend.close()
