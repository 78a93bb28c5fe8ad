"""A model worker's reusable reply buffers: lent to the server, handed back when its arrays are gone,
refused when they could fault the server (unsealed) or do not hold what the reply says."""

from __future__ import annotations

import asyncio
import gc
import glob
import os

import numpy as np
import pytest

from deepscope_server import reply_buffers, wire_codec
from deepscope_server.backends import CaptureRequest
from deepscope_server.isolation import _MP
from deepscope_server.reply_buffers import BorrowedReplies, WorkerBuffers
from deepscope_server.sandbox import SandboxedBackend

BIG = (600, 512)  # 2.4 MB of float64: over INLINE_BYTES, so it goes through a buffer


def _big(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(BIG)


def test_a_lent_buffer_is_read_in_place_and_reused_once_its_arrays_are_gone() -> None:
    parent, child = _MP.Pipe(duplex=True)
    buffers, borrowed = WorkerBuffers(), BorrowedReplies()
    wire_codec.send(child, {"x": _big(0)}, buffers)
    first = wire_codec.recv(parent, 1 << 30, borrowed)["x"]
    np.testing.assert_array_equal(first, _big(0))
    assert not first.flags.writeable  # a view of the worker's buffer: read, never written
    wire_codec.send(child, {"x": _big(1)}, buffers)  # the first is still held: a second buffer
    second = wire_codec.recv(parent, 1 << 30, borrowed)["x"]
    np.testing.assert_array_equal(first, _big(0))  # untouched by the later reply
    np.testing.assert_array_equal(second, _big(1))
    assert borrowed.returned() == ([], [])
    del first
    gc.collect()
    returned, _ = borrowed.returned()
    assert returned == [1]
    buffers.give_back(returned)
    header = {}

    def spy(conn, message, bufs):  # the header of the next reply, to see which buffer it used
        doc, *_ = wire_codec._prepare(message)
        header.update(doc)
        wire_codec.send(conn, message, bufs)

    spy(child, {"x": _big(2)}, buffers)
    third = wire_codec.recv(parent, 1 << 30, borrowed)["x"]
    np.testing.assert_array_equal(third, _big(2))
    np.testing.assert_array_equal(second, _big(1))
    # Without borrowing, a reply still gets its own private, writable mapping.
    wire_codec.send(child, {"x": _big(3)})
    own = wire_codec.recv(parent, 1 << 30)["x"]
    own[0, 0] = 1.0
    assert len(buffers._lent) == 2 and len(buffers._free) == 0  # buffer 1 was lent again, no third


def test_free_buffers_past_the_keep_limit_are_closed_and_the_server_unmaps_them() -> None:
    parent, child = _MP.Pipe(duplex=True)
    buffers, borrowed = WorkerBuffers(keep_bytes=1), BorrowedReplies()
    wire_codec.send(child, {"x": _big(0)}, buffers)
    got = wire_codec.recv(parent, 1 << 30, borrowed)["x"]
    del got
    gc.collect()
    buffers.give_back(borrowed.returned()[0])  # free, but over keep_bytes: closed
    assert not buffers._free
    wire_codec.send(child, {"x": _big(1)}, buffers)  # its header tells the server to forget buffer 1
    np.testing.assert_array_equal(wire_codec.recv(parent, 1 << 30, borrowed)["x"], _big(1))
    assert list(borrowed._maps) == [2]


def test_an_unsealed_or_unknown_or_short_buffer_is_refused() -> None:
    from multiprocessing import reduction

    parent, child = _MP.Pipe(duplex=True)
    borrowed = BorrowedReplies()
    total = 8 << 20
    header = f'{{"v": 1, "a": [], "n": {total}, "inline": false, "buf": 1, "new": true}}'.encode()
    unsealed = os.memfd_create("not-sealed")
    os.ftruncate(unsealed, total)
    child.send_bytes(header)
    reduction.send_handle(child, unsealed, 0)
    with pytest.raises(wire_codec.CodecError, match="not sealed"):
        wire_codec.recv(parent, 1 << 30, borrowed)
    child.send_bytes(header.replace(b'"new": true', b'"new": false').replace(b'"buf": 1', b'"buf": 7'))
    with pytest.raises(wire_codec.CodecError, match="never lent"):
        wire_codec.recv(parent, 1 << 30, borrowed)
    buffers = WorkerBuffers()
    wire_codec.send(child, {"x": _big(0)}, buffers)  # a real, sealed buffer 1 (~2.4 MB + slack)
    wire_codec.recv(parent, 1 << 30, borrowed)
    child.send_bytes(header.replace(b'"new": true', b'"new": false').replace(b"8388608", b"999999999"))
    with pytest.raises(wire_codec.CodecError, match="does not fit"):
        wire_codec.recv(parent, 1 << 30, borrowed)
    child.send_bytes(header.replace(b'"new": true', b'"new": false'))
    with pytest.raises(wire_codec.CodecError, match="did not borrow"):
        wire_codec.recv(parent, 1 << 30)  # the server did not ask to borrow


def _memfds(pid: int) -> int:
    """Reply buffers open in process ``pid`` (distinct files: an mmap object holds its own descriptor)."""
    fds = [f for f in glob.glob(f"/proc/{pid}/fd/*") if "deepscope-reply" in os.readlink(f)]
    return len({os.stat(f).st_ino for f in fds})


def test_a_sandboxed_capture_reuses_the_workers_buffers_and_never_changes_held_arrays(zoo_models) -> None:
    zoo = zoo_models["cnn"]
    sandboxed = SandboxedBackend.load(zoo.paths["pt2"])
    try:
        name = sandboxed.graph.inputs[0].name
        x = np.repeat(zoo.example.numpy()[:1], 200, axis=0)
        requests = [CaptureRequest(layer.name) for layer in sandboxed.graph.layers[:4]]
        inputs = [{name: x + i} for i in range(4)]
        want = [sandboxed.run(inp, requests) for inp in inputs]
        assert sum(a.nbytes for a in want[0].captured.values()) > wire_codec.INLINE_BYTES
        held = sandboxed.run(inputs[0], requests, borrow=True)  # kept across the calls below
        assert not any(a.flags.writeable for a in held.captured.values())
        for i in range(12):
            got = asyncio.run(sandboxed.run_async(inputs[i % 4], requests, borrow=True))
            for request in requests:
                np.testing.assert_array_equal(got.captured[request], want[i % 4].captured[request])
            del got
        for request in requests:
            np.testing.assert_array_equal(held.captured[request], want[0].captured[request])
        assert _memfds(sandboxed.pid) == 2  # the held reply's buffer and one reused for every other
    finally:
        sandboxed.close()


def test_a_worker_cannot_make_the_server_map_buffers_without_bound_or_by_a_malformed_id() -> None:
    borrowed = BorrowedReplies()
    for ident in ("1", [1], True):
        fd = os.memfd_create("x")
        with pytest.raises(wire_codec.CodecError, match="malformed"):
            borrowed.adopt(ident, fd)
    buffers = WorkerBuffers()
    for ident in range(reply_buffers.MAX_BUFFERS):
        ident_, _, view = buffers.lend(1)
        view.release()
        borrowed.adopt(ident, os.dup(buffers.fd(ident_)))
    ident_, _, view = buffers.lend(1)
    view.release()
    with pytest.raises(wire_codec.CodecError, match="more than"):
        borrowed.adopt(reply_buffers.MAX_BUFFERS, os.dup(buffers.fd(ident_)))
    borrowed.forget([0, "x", [2]])  # ids that are not ints are ignored
    borrowed.adopt(reply_buffers.MAX_BUFFERS, os.dup(buffers.fd(ident_)))  # room again


def test_replies_over_the_reuse_threshold_but_under_the_inline_limit_use_a_buffer_too() -> None:
    parent, child = _MP.Pipe(duplex=True)
    buffers, borrowed = WorkerBuffers(), BorrowedReplies()
    medium = np.arange(50_000, dtype=np.float32)  # 200 KB
    assert wire_codec.REUSED_FILE_BYTES < medium.nbytes < wire_codec.INLINE_BYTES
    wire_codec.send(child, {"x": medium}, buffers)
    got = wire_codec.recv(parent, 1 << 30, borrowed)["x"]
    np.testing.assert_array_equal(got, medium)
    assert not got.flags.writeable and len(buffers._lent) == 1
    wire_codec.send(child, {"x": medium})  # not borrowing: inline, as before
    assert wire_codec.recv(parent, 1 << 30)["x"].flags.writeable


def test_a_forfeited_buffer_is_closed_by_the_worker_not_lent_again() -> None:
    parent, child = _MP.Pipe(duplex=True)
    buffers, borrowed = WorkerBuffers(), BorrowedReplies()
    wire_codec.send(child, {"x": _big(0)}, buffers)
    got = wire_codec.recv(parent, 1 << 30, borrowed)["x"]
    base, fd, ident = borrowed.lendable(got)
    assert base is got.base and ident == 1
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:deepscope-reply")
    borrowed.forfeit(ident)
    del got, base
    gc.collect()
    free, discard = borrowed.returned()
    assert free == [] and discard == [1]
    buffers.give_back(free, discard)
    assert not buffers._lent and not buffers._free  # closed, not kept for reuse
    assert buffers.dropped() == [1]
    assert borrowed.lendable(np.zeros(3)) is None  # an array not on a lent buffer
