"""Errors a program can act on: google.rpc.Status details over real gRPC, and the GetServerInfo handshake."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import deepscope
from deepscope.protocol import PROTOCOL_KEY
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

#: One row more than the server's default max_batch_size (4096) of the MLP's 64 features: 1 MiB.
TOO_MANY_ROWS = np.zeros((4097, 64), np.float32)


@pytest.fixture(scope="module")
def small(server, exported):
    """The shared server (default limits) with the MLP uploaded."""
    embedded, address = server
    with deepscope.connect(address, token=embedded.token, progress=False) as client:
        yield embedded, address, client, client.upload_model(exported["mlp"]["onnx"])


def _details(error: grpc.RpcError) -> dict[str, object]:
    """The status details as the wire carries them, decoded with googleapis' own types."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no grpc-status-details-bin on {error.code()}: {error.details()}"
    assert status.message == error.details() and status.code == error.code().value[0]
    out: dict[str, object] = {}
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
            error_details_pb2.ResourceInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                out[kind.__name__] = detail
    return out


def test_unknown_names_are_not_found_with_reason_and_suggestions(small) -> None:
    _, _, client, mlp = small
    with pytest.raises(deepscope.NotFound) as missing_layer:
        client.capture(mlp, np.zeros((2, 64), np.float32), layers=["fc9"])
    err = missing_layer.value
    assert err.reason == "UNKNOWN_LAYER" and "fc1" in err.suggestions and "fc2" in err.suggestions
    assert [v.field for v in err.field_violations] == ["layers"]
    with pytest.raises(deepscope.NotFound) as missing_model:
        client.model("no-such-model")
    assert missing_model.value.reason == "UNKNOWN_MODEL"
    assert missing_model.value.metadata["resource_name"] == "no-such-model"
    # The same rule for metrics, named or by a pattern: NOT_FOUND, with the field at fault.
    for metric in ("cnt.node_strenght", "nope.*"):
        with pytest.raises(deepscope.NotFound) as missing_metric:
            client.analyze(mlp, data=np.zeros((4, 64), np.float32), metrics=[metric])
        assert missing_metric.value.reason == "UNKNOWN_METRIC", missing_metric.value
        assert [v.field for v in missing_metric.value.field_violations] == ["metrics"]
    with pytest.raises(deepscope.NotFound) as typo:
        client.analyze(mlp, data=np.zeros((4, 64), np.float32), metrics=["cnt.node_strenght"])
    assert "cnt.node_strength" in typo.value.suggestions


def test_limits_and_bad_params_say_which(small) -> None:
    _, _, client, mlp = small
    with pytest.raises(deepscope.ResourceExhausted) as limit:
        client.capture(mlp, TOO_MANY_ROWS, layers=["fc1"], batch_size=len(TOO_MANY_ROWS))
    assert limit.value.reason == "LIMIT_MAX_BATCH_SIZE"
    assert limit.value.metadata["limit"] == "4096" and limit.value.metadata["size"] == "4097"
    with pytest.raises(deepscope.InvalidArgument) as param:
        client.analyze(
            mlp,
            data=np.zeros((4, 64), np.float32),
            metrics=["cnt.node_strength"],
            params={"cnt.node_strength": {"no_such_param": 1}},
        )
    assert param.value.reason == "INVALID_PARAM"
    assert [v.field for v in param.value.field_violations] == ["metrics[cnt.node_strength].params"]


def test_details_on_the_wire_for_any_client(small) -> None:
    """What a non-Python client sees: the standard trailer, decodable with googleapis' types alone."""
    server, address, _, mlp = small
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        auth = (("authorization", f"Bearer {server.token}"),)
        with pytest.raises(grpc.RpcError) as limit:
            list(
                stub.Capture(
                    pb.CaptureRequest(model=mlp.id, inputs=[deepscope.tensors.to_proto(TOO_MANY_ROWS, "")]),
                    metadata=auth,
                    timeout=30,
                )
            )
        details = _details(limit.value)
        assert details["ErrorInfo"].domain == "deepscope.dev"
        assert details["ErrorInfo"].reason == "LIMIT_MAX_BATCH_SIZE"
        assert details["QuotaFailure"].violations[0].subject == "max_batch_size"
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetModel(pb.GetModelRequest(model="nope"), metadata=auth, timeout=30)
        assert details_of(missing)["ResourceInfo"].resource_type == "model"
        with pytest.raises(grpc.RpcError) as unauthenticated:
            stub.ListModels(pb.ListModelsRequest(), timeout=30)
        assert details_of(unauthenticated)["ErrorInfo"].reason == "UNAUTHENTICATED"
        with pytest.raises(grpc.RpcError) as mismatch:
            stub.ListModels(pb.ListModelsRequest(), metadata=(*auth, (PROTOCOL_KEY, "2")), timeout=30)
        assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details_of(mismatch)["ErrorInfo"].reason == "PROTOCOL_VERSION_MISMATCH"
        garbage = channel.unary_unary("/deepscope.v1.IntrospectionService/GetModel")
        with pytest.raises(grpc.RpcError) as malformed:
            garbage(b"\xff\xff\xff", metadata=auth, timeout=30)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details_of(malformed)["ErrorInfo"].reason == "MALFORMED_REQUEST"
        # The handshake answers a client of any protocol version.
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=(*auth, (PROTOCOL_KEY, "2")), timeout=30)
        assert info.protocol_version == 1 and info.limits.max_batch_size == 4096


def details_of(info: pytest.ExceptionInfo) -> dict[str, object]:
    return _details(info.value)


def test_server_info_tells_versions_limits_and_capabilities(small) -> None:
    server, _, client, _ = small
    info = client.server_info()
    assert info.protocol_version == deepscope.protocol.PROTOCOL_VERSION == 1
    assert info.server_version and info.auth_required is bool(server.token) and info.tls is False
    assert info.limits["max_batch_size"] == 4096
    assert info.limits["max_run_time_seconds"] > 0 and info.limits["recommended_chunk_bytes"] > 0
    assert {"onnx", "pt2"} <= set(info.upload_formats) and "cpu" in info.devices
    assert info.model_isolation == "process"
