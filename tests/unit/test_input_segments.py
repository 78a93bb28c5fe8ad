"""The server's input segments: lent per connection, read (never mapped) with every declared
size checked, refused to other connections, closed when unused."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from deepscope.shared_memory import InputSegments as ClientSegments
from deepscope.v1 import introspection_pb2 as pb
from deepscope_server import input_segments
from deepscope_server.errors import InvalidInput, UnknownInputSegment
from deepscope_server.input_segments import InputSegments
from deepscope_server.shared_memory import SHM_DIR, available

pytestmark = pytest.mark.skipif(not available(), reason="needs POSIX shared memory (/dev/shm)")

PEER, OTHER = "ipv4:127.0.0.1:40001", "ipv4:127.0.0.1:40002"


@pytest.fixture()
def segments():
    pool = InputSegments(ttl_seconds=60.0, max_bytes=64 << 20)
    yield pool
    pool.close()


def _client_side(lent: pb.InputSegment) -> tuple[ClientSegments, object]:
    client = ClientSegments()
    client.adopt(lent)
    return client, client.take(1)


def test_inputs_written_by_the_client_are_read_back_exactly(segments) -> None:
    lent = segments.lend(PEER, 300_000)
    assert lent is not None and lent.size_bytes >= 300_000
    path = os.path.join(SHM_DIR, lent.segment)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    client, seg = _client_side(lent)
    assert not os.path.exists(path)  # the client unlinked the name once it had the file open
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((100, 700)).astype(np.float32), "ids": np.arange(7, dtype=">i8")}
    message = client.write(seg, arrays)
    assert ClientSegments.span(arrays) <= lent.size_bytes
    got = dict(segments.read(PEER, message, None))
    np.testing.assert_array_equal(got["x"], arrays["x"])
    np.testing.assert_array_equal(got["ids"], arrays["ids"])  # big-endian in, little-endian on the wire
    assert got["x"].flags.writeable and got["ids"].dtype == np.dtype("<i8")
    got["x"][0, 0] = 1.0  # the server's own copy
    assert dict(segments.read(PEER, message, None))["x"][0, 0] == arrays["x"][0, 0]
    client.close()


def test_only_the_connection_it_was_lent_to_may_name_a_segment(segments) -> None:
    lent = segments.lend(PEER, 100_000)
    message = pb.SharedInputs(segment=lent.segment)
    with pytest.raises(UnknownInputSegment, match="not held by this connection"):
        segments.read(OTHER, message, None)
    with pytest.raises(UnknownInputSegment):
        segments.read(PEER, pb.SharedInputs(segment="deepscope_" + "0" * 32), None)
    with pytest.raises(UnknownInputSegment):
        segments.read(PEER, pb.SharedInputs(segment="../../etc/passwd"), None)


@pytest.mark.parametrize(
    ("tensor", "error"),
    [
        (dict(name="x", dtype="FP32", shape=[10], offset=0, total_bytes=41), "bytes"),
        (dict(name="x", dtype="FP32", shape=[10], offset=1 << 30, total_bytes=40), "outside"),
        (dict(name="x", dtype="NOPE", shape=[10], offset=0, total_bytes=40), "x"),
        (dict(name="x", dtype="FP32", shape=[-1], offset=0, total_bytes=40), "x"),
        (dict(name="b", dtype="BOOL", shape=[4], offset=0, total_bytes=4), "0 or 1"),
    ],
)
def test_declared_sizes_are_checked_against_the_segment(segments, tensor, error) -> None:
    lent = segments.lend(PEER, 100_000)
    fd = os.open(os.path.join(SHM_DIR, lent.segment), os.O_RDWR)
    os.pwrite(fd, b"\x07" * 64, 0)
    os.close(fd)
    message = pb.SharedInputs(segment=lent.segment)
    message.tensors.add(**tensor)
    with pytest.raises(InvalidInput, match=error):
        segments.read(PEER, message, None)


def test_a_segment_the_client_truncated_is_a_clear_error_not_a_crash(segments) -> None:
    lent = segments.lend(PEER, 100_000)
    client, seg = _client_side(lent)
    message = client.write(seg, {"x": np.ones(20_000, np.float32)})
    os.ftruncate(seg.fd, 1000)
    with pytest.raises(InvalidInput, match="shorter"):
        segments.read(PEER, message, None)
    client.close()


def test_a_connection_holds_a_few_segments_each_within_the_size_limit(segments) -> None:
    assert segments.lend(PEER, 65 << 20) is None  # over max_bytes
    assert segments.lend(PEER, 0) is None
    lent = [segments.lend(PEER, 100_000) for _ in range(input_segments.MAX_PER_PEER)]
    assert all(lent) and segments.lend(PEER, 100_000) is None
    assert segments.lend(OTHER, 100_000) is not None


def test_unused_segments_are_closed_and_unlinked_after_their_time() -> None:
    pool = InputSegments(ttl_seconds=0.0, max_bytes=1 << 20)
    lent = pool.lend(PEER, 100_000)
    path = os.path.join(SHM_DIR, lent.segment)
    assert os.path.exists(path)
    pool.sweep()
    assert not os.path.exists(path)
    with pytest.raises(UnknownInputSegment):
        pool.read(PEER, pb.SharedInputs(segment=lent.segment), None)


def test_the_client_keeps_two_segments_and_refuses_names_a_server_would_not_make() -> None:
    client = ClientSegments()
    assert client.wanted(1000) == 0  # small inputs stay in the request
    assert client.wanted(ClientSegments.MIN_BYTES) == ClientSegments.MIN_BYTES
    with pytest.raises(Exception, match="not one a deepscope server makes"):
        client.adopt(pb.InputSegment(segment="../etc/passwd", size_bytes=10))
    client.adopt(pb.InputSegment(segment="deepscope_" + "f" * 32, size_bytes=10))  # gone: input segments off
    assert not client.enabled and client.wanted(1 << 20) == 0


def test_segments_still_in_use_are_swept_again_until_they_go_quiet() -> None:
    """A client that uses its segment, then disconnects, still has it closed: one timer at a time
    keeps sweeping while segments are held."""
    import asyncio

    async def scenario() -> tuple[bool, bool]:
        pool = InputSegments(ttl_seconds=0.2, max_bytes=1 << 20)
        loop = asyncio.get_running_loop()
        lent = pool.lend(PEER, 100_000)
        path = os.path.join(SHM_DIR, lent.segment)
        pool.sweep_later(loop)
        pool.sweep_later(loop)  # one timer, not two
        for _ in range(16):  # used every 0.1 s: outlives the first sweep (at 1.2 s)
            await asyncio.sleep(0.1)
            pool.read(PEER, pb.SharedInputs(segment=lent.segment), None)
        alive = os.path.exists(path)
        await asyncio.sleep(1.2)  # then quiet: the next sweep (at 2.4 s) closes it
        return alive, os.path.exists(path)

    alive, after = asyncio.run(scenario())
    assert alive and not after


def test_the_client_opens_only_sealed_worker_buffers_by_proc_path(tmp_path) -> None:
    from deepscope import shared_memory as sdk_shm
    from deepscope.tensors import TensorError
    from deepscope_server.reply_buffers import _create

    with pytest.raises(TensorError, match="not one a deepscope server sends"):
        sdk_shm._open_worker_file(str(tmp_path / "x"), 0)
    unsealed = os.memfd_create("unsealed")
    sealed = _create(1 << 16)  # a real reply buffer: memfd sealed against shrinking
    try:
        path = f"/proc/{os.getpid()}/fd/{unsealed}"
        with pytest.raises(TensorError, match="not sealed"):
            sdk_shm._open_worker_file(path, os.fstat(unsealed).st_ino)
        path = f"/proc/{os.getpid()}/fd/{sealed.fd}"
        with pytest.raises(TensorError, match="descriptor was reused"):
            sdk_shm._open_worker_file(path, os.fstat(unsealed).st_ino)
        os.close(sdk_shm._open_worker_file(path, os.fstat(sealed.fd).st_ino))
    finally:
        os.close(unsealed)
        sealed.mapping.close()
        os.close(sealed.fd)
    with pytest.raises(sdk_shm.WorkerFileUnavailable):
        sdk_shm._open_worker_file(f"/proc/{os.getpid()}/fd/999999", 0)


def test_a_segment_in_use_when_the_client_drops_them_all_is_closed_when_its_response_arrives(segments) -> None:
    """After FAILED_PRECONDITION the SDK drops its segments; the one a call still uses is closed
    when that call ends, not reused, and counts no longer as held."""
    client, seg = _client_side(segments.lend(PEER, 100_000))
    client.adopt(segments.lend(PEER, 100_000))
    assert client.held == 2
    client.close()
    assert client.held == 0 and client.take(1) is None
    client.give_back(seg)
    assert client.take(1) is None and client.held == 0
    with pytest.raises(OSError):
        os.fstat(seg.fd)
