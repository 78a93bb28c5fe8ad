"""Fuzz fixtures: one real server (all plugins plus the misbehaving ones) and a raw stub with the token.

``DEEPSCOPE_FUZZ_EXAMPLES`` scales the number of examples per test (``make fuzz`` sets thousands);
the normal test run uses a few hundred in total.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from integration.conftest import exported, start_server  # noqa: F401 - re-exported fixture

from deepscope.v1 import introspection_pb2_grpc as pb_grpc

#: Status codes a bad input may get; UNKNOWN and INTERNAL mean a bug (an unmapped exception).
ACCEPTABLE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def examples(default: int) -> int:
    """Examples for one fuzz test: the default, or $DEEPSCOPE_FUZZ_EXAMPLES."""
    return int(os.environ.get("DEEPSCOPE_FUZZ_EXAMPLES", default))


class Raw:
    """A raw generated stub plus the auth metadata, for sending malformed messages."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)])
        self.stub = pb_grpc.IntrospectionServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory) -> Iterator[tuple[object, str]]:
    # A wild sample_limit on the synthetic dataset asks for up to 2**64 samples: the run limit ends it
    # (RESOURCE_EXHAUSTED). Valid configs (<= 60 digits) finish in about a second.
    server, address = start_server(tmp_path_factory.mktemp("fuzz-store"), max_run_seconds=15.0)
    yield server, address
    server.stop()


@pytest.fixture(scope="session")
def raw(fuzz_server) -> Iterator[Raw]:
    server, address = fuzz_server
    r = Raw(address, server.token)
    yield r
    r.channel.close()
