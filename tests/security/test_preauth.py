"""Unauthenticated calls are refused before their request is read: a flood of large unauthenticated
requests against a real server with a token leaves its memory flat and its clients served.

grpc.aio reads and buffers a unary request whole before it calls the handler, so a refusal issued
from a unary handler came only after the bytes were in memory (48 x 60 MB took a server from 373 MB
to 3.7 GB). The gate now refuses with a handler that never reads the request. The same flood at full
size, before and after, is ``bench/preauth_flood.py`` (figures in bench/LOAD.md).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deepscope.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
REQUESTS, CLIENTS, REQUEST_BYTES = 8, 8, 20 * MiB
#: Allowed RSS growth during the flood: a third of the bytes sent (measured after the fix: +7 to +18 MiB,
#: HTTP/2 data in flight). Reading the requests, as before the fix, grew the server by +292 MiB.
GROWTH_BOUND = REQUESTS * REQUEST_BYTES // 3


@functools.cache
def _flood_module():
    spec = importlib.util.spec_from_file_location("preauth_flood", ROOT / "bench" / "preauth_flood.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    embedded = EmbeddedServer(store=tmp_path_factory.mktemp("preauth") / "store", no_entry_points=True)
    address = embedded.start()
    yield embedded, address
    embedded.stop()


@pytest.mark.parametrize(
    "methods, code",
    [
        (("CAPTURE", "GET_MODEL"), grpc.StatusCode.UNAUTHENTICATED),  # unary requests, streamed and unary responses
        (("REFLECTION",), grpc.StatusCode.UNAUTHENTICATED),  # reflection needs the token too
        (("HEALTH",), grpc.StatusCode.OK),  # open: answered without reading the request
    ],
    ids=["service", "reflection", "health"],
)
def test_unauthenticated_flood_is_not_buffered(server, methods, code):
    flood = _flood_module()
    embedded, address = server
    result = flood.measure(
        embedded.process.pid,
        address,
        embedded.token,
        REQUESTS,
        CLIENTS,
        REQUEST_BYTES,
        timeout=120,
        methods=[getattr(flood, m) for m in methods],
        settle=1.0,
    )
    assert dict(result.codes) == {code: REQUESTS}
    assert result.probe.served >= 1 and result.probe.failures == []  # served within its deadline throughout
    growth = result.peak - result.baseline
    assert growth < GROWTH_BOUND, (
        f"server RSS grew by {growth / MiB:.0f} MiB (from {result.baseline / MiB:.0f} MiB) during a flood of "
        f"{REQUESTS * REQUEST_BYTES / MiB:.0f} MiB of unauthenticated requests; bound {GROWTH_BOUND / MiB:.0f} MiB"
    )


def test_health_without_the_token_answers_for_the_whole_server(server):
    """Its request unread, an unauthenticated health check gets the overall status; with the token, per service."""
    embedded, address = server
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        bogus = health_pb2.HealthCheckRequest(service="no.such.Service")
        assert stub.Check(bogus, timeout=30).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(bogus, metadata=[("authorization", f"Bearer {embedded.token}")], timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(bogus, timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_wrong_token_and_wrong_version_are_refused_without_reading(server):
    """The refusal does not depend on the request kind or on what the request holds."""
    flood = _flood_module()
    embedded, address = server
    payload = flood.capture_request(MiB)
    for metadata, code in (
        ((("authorization", "Bearer not-the-token"),), grpc.StatusCode.UNAUTHENTICATED),
        (
            (("authorization", f"Bearer {embedded.token}"), ("x-deepscope-protocol", "99")),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ):
        codes = flood.flood(address, 2, 2, payload, 60, (flood.CAPTURE, flood.GET_MODEL), metadata)
        assert dict(codes) == {code: 2}
