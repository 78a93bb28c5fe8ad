"""The server's request file: large requests' arrays reach a model worker through one reusable
file, which the worker can read but never write or shrink, and whose pages are kept between calls."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from deepscope_server import request_file, wire_codec
from deepscope_server.backends import CaptureRequest
from deepscope_server.errors import ModelCrashed
from deepscope_server.isolation import _MP
from deepscope_server.request_file import RequestFile, RequestReader
from deepscope_server.sandbox import SandboxedBackend

MEDIUM = (256, 784)  # 803 KB of float32: over REUSED_FILE_BYTES, under INLINE_BYTES


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal(MEDIUM).astype(np.float32), "ids": np.arange(seed, seed + 5)}


def test_requests_share_one_file_whose_descriptor_is_sent_once_and_arrive_writable() -> None:
    parent, child = _MP.Pipe(duplex=True)
    file, reader = RequestFile(), RequestReader()
    try:
        for seed in range(3):
            wire_codec.send(parent, {"inputs": _arrays(seed)}, request_file=file)
            got = wire_codec.recv(child, 1 << 30, requests=reader)["inputs"]
            for key, want in _arrays(seed).items():
                np.testing.assert_array_equal(got[key], want)
            assert got["x"].flags.writeable  # the worker's own copy: the model may write its inputs
            got["x"][0, 0] = 42.0
            if seed == 0:
                first_fd = reader.fd
            assert reader.fd == first_fd  # adopted once; later headers carry no descriptor
        assert not child.poll(0)  # nothing left over on the pipe
        # framed (the event loop's sender) writes the file too, and sends the header alone
        data = wire_codec.framed({"inputs": _arrays(7)}, file)
        assert data is not None and len(data) < 1024
        parent.send_bytes(data[4:])
        np.testing.assert_array_equal(wire_codec.recv(child, 1 << 30, requests=reader)["inputs"]["x"], _arrays(7)["x"])
        # small requests still travel inline
        wire_codec.send(parent, {"inputs": {"x": np.ones(3)}}, request_file=file)
        assert "file" not in wire_codec.parse_header(child.recv_bytes(), 1 << 30)
    finally:
        file.close()


def test_framed_defers_to_send_until_the_worker_has_the_descriptor() -> None:
    file = RequestFile()
    try:
        assert wire_codec.framed({"x": _arrays(0)["x"]}, file) is None
        assert wire_codec.framed({"x": np.ones(4)}, file) is not None  # inline needs no descriptor
    finally:
        file.close()


def test_the_worker_can_neither_write_nor_truncate_the_file() -> None:
    file = RequestFile()
    try:
        file.write([np.arange(100, dtype=np.uint8)], [0])
        fd = file.reader_fd()
        try:
            assert os.pread(fd, 100, 0) == bytes(range(100))
            with pytest.raises(OSError) as wrote:
                os.pwrite(fd, b"x", 0)
            assert wrote.value.errno == errno.EBADF
            with pytest.raises(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    finally:
        file.close()


def test_an_outsized_request_gives_its_pages_back_once_answered(monkeypatch) -> None:
    monkeypatch.setattr(request_file, "KEEP_BYTES", 1 << 20)
    file = RequestFile()
    try:
        file.write([np.zeros(300_000)], [0])  # 2.4 MB
        assert os.fstat(file.fd).st_size == 2_400_000
        file.trim()
        assert os.fstat(file.fd).st_size == 0
        file.write([np.zeros(1000)], [64])
        file.trim()  # under the limit: kept
        assert os.fstat(file.fd).st_size == 8064
    finally:
        file.close()


def test_a_reference_to_the_file_is_refused_outside_a_worker_or_before_the_descriptor() -> None:
    parent, child = _MP.Pipe(duplex=True)
    header = b'{"v": 1, "a": [], "n": 100000, "inline": false, "file": 1, "new": false}'
    parent.send_bytes(header)
    with pytest.raises(wire_codec.CodecError, match="only a worker reads"):
        wire_codec.recv(child, 1 << 30)
    parent.send_bytes(header)
    with pytest.raises(wire_codec.CodecError, match="before it was sent"):
        wire_codec.recv(child, 1 << 30, requests=RequestReader())


def test_a_sandboxed_worker_gets_medium_inputs_through_the_file_also_after_a_restart(zoo_models) -> None:
    zoo = zoo_models["cnn"]
    sandboxed = SandboxedBackend.load(zoo.paths["pt2"])
    try:
        name = sandboxed.graph.inputs[0].name
        one = zoo.example.numpy()[:1]
        x = np.repeat(one, wire_codec.REUSED_FILE_BYTES // one.nbytes + 2, axis=0)
        assert wire_codec.REUSED_FILE_BYTES < x.nbytes < wire_codec.INLINE_BYTES
        requests = [CaptureRequest(layer.name) for layer in sandboxed.graph.layers[:2]]
        inline = sandboxed.run({name: one}, requests)
        for restart in (False, True):
            if restart:
                os.kill(sandboxed.pid, 9)
                with pytest.raises(ModelCrashed):
                    sandboxed.run({name: one}, requests)
            # first through the thread (passes the descriptor), then on the loop (header only)
            got = [sandboxed.run({name: x}, requests), asyncio.run(sandboxed.run_async({name: x}, requests))]
            for out in got:
                for request in requests:
                    np.testing.assert_array_equal(out.captured[request][:1], inline.captured[request])
                    np.testing.assert_array_equal(out.captured[request][-1:], inline.captured[request])
    finally:
        sandboxed.close()


def test_heap_settings_apply_to_glibc_processes_unless_the_user_set_their_own() -> None:
    code = "from deepscope_server import heap; print(heap.keep_freed_memory())"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.strip() == "True"
    theirs = subprocess.run(
        [sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "2"}, capture_output=True, text=True, check=True
    )
    assert theirs.stdout.strip() == "False"
