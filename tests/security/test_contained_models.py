"""Hostile models against a real server: a forward pass that never ends and a parse that eats memory.

Each attack runs through the real gRPC API on a loopback port; the assertions are what the
operator cares about: the attacker gets a clear status within the limits, other clients are
served within their deadlines meanwhile, health stays truthful, runs free their slots, the
server's own memory does not grow and SIGTERM still stops it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from integration.conftest import start_server
from unit.test_sandbox import loop_bomb

import deepscope
from deepscope.embedded import EmbeddedServer

FORWARD_SECONDS = 4.0


@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory) -> Iterator[tuple[EmbeddedServer, str]]:
    server, address = start_server(
        tmp_path_factory.mktemp("store"),
        max_forward_seconds=FORWARD_SECONDS,
        max_concurrent_runs=1,
        model_memory_bytes=3 << 30,
    )
    yield server, address
    server.stop()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return loop_bomb(tmp_path_factory.mktemp("bomb") / "loop.onnx")


def _connect(bomb_server) -> deepscope.Client:
    embedded, address = bomb_server
    return deepscope.connect(address, token=embedded.token, progress=False)


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _model_workers(server: EmbeddedServer) -> list[psutil.Process]:
    """The server's model worker processes (forkserver children named after their model)."""
    root = psutil.Process(server.process.pid)
    return [
        p for p in root.children(recursive=True) if "model" in " ".join(p.cmdline()) or p.name().startswith("model")
    ]


def test_forward_bomb_gets_deadline_exceeded_while_others_are_served(bomb_server, bomb, exported) -> None:
    embedded, address = bomb_server
    with _connect(bomb_server) as client:
        evil = client.upload_model(bomb)
        mlp = client.upload_model(exported["mlp"]["onnx"])
        x = np.zeros((4, 64), np.float32)
        outcomes: list[BaseException | None] = []

        def attack(timeout: float) -> None:
            try:
                client.capture(evil, np.zeros((1, 1), np.float32), timeout=timeout)
                outcomes.append(None)
            except BaseException as exc:  # collected and checked below
                outcomes.append(exc)

        attackers = [threading.Thread(target=attack, args=(3.0 if i % 2 else 120.0,)) for i in range(8)]
        started = time.monotonic()
        for thread in attackers:
            thread.start()
        time.sleep(0.5)
        # Meanwhile: other clients' calls complete within ordinary deadlines, and health is truthful.
        for _ in range(3):
            assert client.capture(mlp, x, layers=["fc1"], timeout=30)["fc1"].shape == (4, 32)
            assert mlp.id in {m.id for m in client.models()}
        assert _health(address) == health_pb2.HealthCheckResponse.SERVING
        for thread in attackers:
            thread.join(90)
        assert not any(t.is_alive() for t in attackers)
        assert time.monotonic() - started < 80
        assert len(outcomes) == 8 and all(isinstance(e, deepscope.DeepscopeError) for e in outcomes), outcomes
        codes = {e.code for e in outcomes}  # type: ignore[union-attr]
        assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, outcomes
        server_limited = [e for e in outcomes if "max-forward-seconds" in str(e)]
        assert server_limited, "the calls with long client deadlines must be stopped by --max-forward-seconds"
        # The killed workers are gone; the bomb still answers (a fresh worker) with the same status.
        time.sleep(1.0)
        with pytest.raises(deepscope.DeepscopeError) as again:
            client.capture(evil, np.zeros((1, 1), np.float32), timeout=2.0)
        assert again.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.capture(mlp, x, layers=["fc1"], timeout=30)["fc1"].shape == (4, 32)


def test_cancelled_capture_stops_the_forward_pass(bomb_server, bomb) -> None:
    embedded, _ = bomb_server
    with _connect(bomb_server) as client:
        evil = client.upload_model(bomb)
        from deepscope.tensors import to_proto
        from deepscope.v1 import introspection_pb2 as pb

        request = pb.CaptureRequest(model=evil.id, inputs=[to_proto(np.zeros((1, 1), np.float32), "x")])
        call = client._stub.Capture(request, timeout=120, metadata=client._metadata)
        deadline = time.monotonic() + 60  # the first call may have to start a fresh worker and load the model
        busy = None
        while busy is None and time.monotonic() < deadline:
            busy = _busiest_descendant(embedded, seconds=2.0)
        assert busy is not None, "the bomb's worker never started computing"
        call.cancel()
        busy.wait(timeout=10)  # raises psutil.TimeoutExpired if the worker kept running


def test_a_worker_killed_mid_capture_is_model_crashed_and_the_next_call_works(bomb_server, bomb, exported) -> None:
    """The event loop waits on the worker's pipe: a SIGKILL there is INTERNAL / MODEL_CRASHED for that
    call only; the next capture of the same model gets a fresh worker, other models are served."""
    embedded, _ = bomb_server
    with _connect(bomb_server) as client:
        evil = client.upload_model(bomb)
        mlp = client.upload_model(exported["mlp"]["onnx"])
        outcome: list[BaseException] = []

        def attack() -> None:
            try:
                client.capture(evil, np.zeros((1, 1), np.float32), timeout=120)
            except BaseException as exc:  # checked below
                outcome.append(exc)

        thread = threading.Thread(target=attack)
        thread.start()
        deadline, busy = time.monotonic() + 60, None
        while busy is None and time.monotonic() < deadline:
            busy = _busiest_descendant(embedded, seconds=1.0)
        assert busy is not None, "the bomb's worker never started computing"
        busy.kill()
        thread.join(30)
        assert not thread.is_alive() and len(outcome) == 1
        crashed = outcome[0]
        assert isinstance(crashed, deepscope.DeepscopeError), crashed
        assert crashed.code == grpc.StatusCode.INTERNAL and crashed.reason == "MODEL_CRASHED", crashed
        assert "SIGKILL" in str(crashed)
        x = np.zeros((4, 64), np.float32)
        assert client.capture(mlp, x, layers=["fc1"], timeout=30)["fc1"].shape == (4, 32)
        with pytest.raises(deepscope.DeepscopeError) as again:  # a fresh worker, stopped at its deadline
            client.capture(evil, np.zeros((1, 1), np.float32), timeout=2.0)
        assert again.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def _busiest_descendant(server: EmbeddedServer, seconds: float) -> psutil.Process | None:
    """The server's descendant that used the most CPU over ``seconds`` (at least a tenth of it)."""

    def cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.NoSuchProcess:
            return 0.0

    procs = psutil.Process(server.process.pid).children(recursive=True)
    before = {p.pid: cpu(p) for p in procs}
    time.sleep(seconds)
    used = sorted(((cpu(p) - before[p.pid], p) for p in procs), key=lambda pair: pair[0], reverse=True)
    return used[0][1] if used and used[0][0] > seconds / 10 else None


def test_analysis_of_a_bomb_fails_and_frees_its_slot(bomb_server, bomb, exported) -> None:
    with _connect(bomb_server) as client:
        evil = client.upload_model(bomb)
        with pytest.raises(deepscope.DeepscopeError) as failed:
            client.analyze(
                evil,
                data=np.zeros((2, 1), np.float32),
                metrics=["testing.slow"],
                batch_size=1,
                params={"testing.slow": {"seconds": 0.0}},
            )
        assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "max-forward-seconds" in str(failed.value)
        runs = client.runs()
        assert runs[0].status == "failed" and "max-forward-seconds" in runs[0].info.error
        # max_concurrent_runs is 1: the next run starts, so the bomb's run released its slot.
        mlp = client.upload_model(exported["mlp"]["onnx"])
        done = client.analyze(
            mlp, data=np.zeros((4, 64), np.float32), metrics=["testing.slow"], params={"testing.slow": {"seconds": 0.0}}
        )
        assert done.status == "completed"


def _node_bomb(nodes: int) -> bytes:
    """An ONNX ModelProto of ``nodes`` empty NodeProtos: 2 bytes each on disk, ~1 kB each once parsed."""
    graph = b"\x0a\x00" * nodes  # GraphProto.node (field 1), empty
    opset = b"\x10\x11"  # OperatorSetIdProto.version = 17
    length = _varint(len(graph))
    return b"\x08\x08" + b"\x3a" + length + graph + b"\x42" + _varint(len(opset)) + opset


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_protobuf_amplification_is_contained_in_its_worker(tmp_path, exported) -> None:
    """A 6 MB file of 3M empty nodes needs GBs to parse: the worker hits its cap, the server does not grow."""
    payload = _node_bomb(3_000_000)
    onnx.ModelProto.FromString(_node_bomb(3))  # the construction is a valid ModelProto
    server, address = start_server(tmp_path / "store", model_memory_bytes=1152 << 20)
    try:
        root = psutil.Process(server.process.pid)
        with deepscope.connect(address, token=server.token, progress=False) as client:
            mlp = client.upload_model(exported["mlp"]["onnx"])
            rss_before = root.memory_info().rss
            with pytest.raises(deepscope.DeepscopeError) as refused:
                client.upload_model(payload, name="nodes.onnx", timeout=300)
            assert refused.value.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), (
                f"{refused.value}\n{server.log()[-3000:]}"
            )
            assert "memory" in str(refused.value).lower(), refused.value
            grown = root.memory_info().rss - rss_before
            assert grown < 300 << 20, f"the server itself grew by {grown / 2**20:.0f} MiB"
            assert "nodes.onnx" not in {m.name for m in client.models()}
            assert client.capture(mlp, np.zeros((2, 64), np.float32), layers=["fc1"])["fc1"].shape == (2, 32)
    finally:
        server.stop()


def test_sigterm_stops_a_server_busy_with_a_bomb(tmp_path, bomb) -> None:
    server, address = start_server(tmp_path / "store")
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            evil = client.upload_model(bomb)
            thread = threading.Thread(target=lambda: _swallow(client, evil), daemon=True)
            thread.start()
            time.sleep(2.0)
            workers = psutil.Process(server.process.pid).children(recursive=True)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(30) == 0
            gone, alive = psutil.wait_procs(workers, timeout=15)
            assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    finally:
        server.stop()


def _swallow(client: deepscope.Client, model) -> None:
    try:
        client.capture(model, np.zeros((1, 1), np.float32), timeout=300)
    except deepscope.DeepscopeError:
        pass
