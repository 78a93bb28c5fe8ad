"""A stream's last message sent with its status: every message still arrives, in order, and errors
and cancellations end the handler's stream (its cleanup runs) as they would without it."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from deepscope_server.wire import _sent_with_status, decoding_in_handler, last_with_status


class _Context:
    """What a grpc.aio servicer context does here: records writes, aborts with AbortError."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self._code: grpc.StatusCode | None = None
        self.aborted: grpc.StatusCode | None = None

    async def write(self, message: bytes) -> None:
        self.written.append(message)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        self.aborted = code
        raise grpc.aio.AbortError(details)

    def set_trailing_metadata(self, metadata: tuple) -> None:
        pass


def _run(stream, context: _Context):
    return asyncio.run(_sent_with_status(stream, lambda m: m)(b"", context))


def test_all_but_the_last_message_are_written_and_the_last_is_returned():
    async def stream(raw, context):
        for m in (b"a", b"b", b"c"):
            yield m

    context = _Context()
    assert _run(stream, context) == b"c"
    assert context.written == [b"a", b"b"]


def test_an_error_mid_stream_closes_the_stream_and_propagates():
    closed = []

    async def stream(raw, context):
        try:
            yield b"a"
            yield b"b"
            raise ValueError("broken")
        finally:
            closed.append(True)

    context = _Context()
    with pytest.raises(ValueError):
        _run(stream, context)
    assert closed == [True] and context.written == [b"a"]


def test_a_failed_write_runs_the_streams_cleanup():
    cleanup = []

    async def stream(raw, context):
        try:
            yield b"a"
            yield b"b"
            yield b"c"
        finally:
            cleanup.append("done")

    class Broken(_Context):
        async def write(self, message: bytes) -> None:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        _run(stream, Broken())
    assert cleanup == ["done"]


def test_an_error_status_set_without_abort_goes_out_alone():
    async def stream(raw, context):
        context._code = grpc.StatusCode.INVALID_ARGUMENT
        yield b"a"

    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        _run(stream, context)
    assert context.aborted == grpc.StatusCode.INVALID_ARGUMENT and context.written == []


def test_only_marked_streaming_handlers_become_unary():
    async def marked(request, context):
        yield request

    async def plain(request, context):
        yield request

    def handler(behavior):
        return grpc.unary_stream_rpc_method_handler(behavior, request_deserializer=bytes, response_serializer=bytes)

    converted = decoding_in_handler(handler(last_with_status(marked)), "/t.T/M")
    kept = decoding_in_handler(handler(plain), "/t.T/P")
    assert (converted.request_streaming, converted.response_streaming) == (False, False)
    assert (kept.request_streaming, kept.response_streaming) == (False, True)
