"""Bad input at the wire level, over real gRPC: request bytes that are not protobuf, tensor shapes
numpy cannot hold, and request strings of many kilobytes echoed into errors. Each is refused with
INVALID_ARGUMENT or NOT_FOUND and a message the user can act on, and the server keeps serving."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc
from deepscope.v1 import tensor_pb2 as tpb

SERVICE = "/deepscope.v1.IntrospectionService/"
#: method -> (request streaming, response streaming)
METHODS = {
    "UploadModel": (True, False),
    "ListModels": (False, False),
    "GetModel": (False, False),
    "DeleteModel": (False, False),
    "GetWeights": (False, True),
    "Capture": (False, True),
    "ListMetrics": (False, False),
    "Analyze": (True, True),
    "GetRun": (False, False),
    "ListRuns": (False, False),
}
GARBAGE = {  # not a valid encoding of any message
    "truncated varint": b"\xff",
    "length past the end": b"\x0a\xff\xff\x03abc",
    "end-group tag without a start": b"\x0c",
}
LONG = "x" * 16_384  # a string of many kilobytes; no error message may echo it whole


@pytest.fixture()
def channel(server):
    _, address = server
    with grpc.insecure_channel(address) as channel:
        yield channel


@pytest.fixture()
def auth(server):
    embedded, _ = server
    return [("authorization", f"Bearer {embedded.token}")]


@pytest.fixture()
def mlp_id(client, exported) -> str:
    return client.upload_model(exported["mlp"]["onnx"], name="mlp.onnx").id


def raw_call(channel: grpc.Channel, method: str, payload: bytes, metadata) -> None:
    """Send ``payload`` as the (only) request message, undecoded; consume the whole response."""
    request_streaming, response_streaming = METHODS[method]
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    call = kind[(request_streaming, response_streaming)](
        SERVICE + method, request_serializer=None, response_deserializer=None
    )
    response = call(iter([payload]) if request_streaming else payload, metadata=metadata, timeout=30)
    if response_streaming:
        list(response)


def assert_serving(channel: grpc.Channel, metadata) -> None:
    pb_grpc.IntrospectionServiceStub(channel).ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=30)


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
@pytest.mark.parametrize("method", METHODS)
def test_garbage_request_bytes_are_invalid_argument(channel, auth, method, garbage):
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, method, garbage, auth)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details()
    assert f"{SERVICE}{method}: the request is not a valid protobuf message" in details
    assert "deepscope.v1." in details  # names the message type it expected
    assert_serving(channel, auth)


def test_invalid_utf8_in_a_string_field_is_invalid_argument(channel, auth):
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, "GetModel", b"\x0a\x02\xff\xfe", auth)  # GetModelRequest.model = b"\xff\xfe"
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in info.value.details()


def test_garbage_to_the_health_service(channel, auth):
    """With the token the request is read and refused; without it health answers unread (for probes)."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=None,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        check(GARBAGE["truncated varint"], metadata=auth, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert check(GARBAGE["truncated varint"], timeout=30).status == health_pb2.HealthCheckResponse.SERVING
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unauthenticated_garbage_is_unauthenticated_not_decoded(channel):
    """Authentication comes first: nothing of an unauthenticated request is read, let alone decoded."""
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, "Capture", GARBAGE["truncated varint"], [])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _capture(channel: grpc.Channel, request: pb.CaptureRequest, metadata) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(pb_grpc.IntrospectionServiceStub(channel).Capture(request, metadata=metadata, timeout=30))
    return info.value


@pytest.mark.parametrize(
    "shape",
    [[2**63 - 1, 0], [0, 2**63 - 1], [2**40, 2**40, 0], [2**62, 0, 4]],
    ids=["max-int64-then-0", "0-then-max-int64", "2^80-elements-times-0", "2^64-bytes-times-0"],
)
def test_shape_whose_product_overflows_is_invalid_argument(channel, auth, mlp_id, shape):
    tensor = tpb.Tensor(name="x", dtype="FP32", shape=shape, data=b"")
    error = _capture(channel, pb.CaptureRequest(model=mlp_id, inputs=[tensor]), auth)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is too large" in error.details() and str(shape[0]) in error.details()
    assert_serving(channel, auth)


def test_more_dimensions_than_numpy_holds_is_invalid_argument(channel, auth, mlp_id):
    tensor = tpb.Tensor(name="x", dtype="FP32", shape=[1] * 65, data=np.zeros(1, np.float32).tobytes())
    error = _capture(channel, pb.CaptureRequest(model=mlp_id, inputs=[tensor]), auth)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "65 dimensions; at most 64" in error.details()


def _long_string_requests(model: str) -> dict[str, tuple[str, object]]:
    """Requests that put LONG into one string field each: {case: (method, request message)}."""
    x = np.zeros((1, 64), np.float32)
    ok_input = tpb.Tensor(dtype="FP32", shape=[1, 64], data=x.tobytes())

    needs_data = pb.MetricRequest(name="fractal.ss_rate")  # a metric that reads activations: the dataset is used

    def analyze(**config) -> list[pb.AnalyzeRequest]:
        return [
            pb.AnalyzeRequest(
                config=pb.AnalyzeConfig(
                    **{
                        "models": [model],
                        "dataset": "digits",
                        "metrics": [pb.MetricRequest(name="cnt.node_strength")],
                        **config,
                    }
                )
            )
        ]

    return {
        "GetModel id": ("GetModel", pb.GetModelRequest(model=LONG)),
        "DeleteModel id": ("DeleteModel", pb.DeleteModelRequest(model=LONG)),
        "GetRun id": ("GetRun", pb.GetRunRequest(run_id=LONG)),
        "GetWeights id": ("GetWeights", pb.GetWeightsRequest(model=LONG)),
        "GetWeights layer": ("GetWeights", pb.GetWeightsRequest(model=model, layers=[LONG])),
        "Capture id": ("Capture", pb.CaptureRequest(model=LONG, inputs=[ok_input])),
        "Capture layer": ("Capture", pb.CaptureRequest(model=model, inputs=[ok_input], layers=[LONG])),
        "Capture layer glob": ("Capture", pb.CaptureRequest(model=model, inputs=[ok_input], layers=[LONG + "*"])),
        "Capture layer input": ("Capture", pb.CaptureRequest(model=model, inputs=[ok_input], layer_inputs=[LONG])),
        "Capture input name": (
            "Capture",
            pb.CaptureRequest(
                model=model, inputs=[tpb.Tensor(name=LONG, dtype="FP32", shape=[1, 64], data=x.tobytes())]
            ),
        ),
        "Capture input dtype": (
            "Capture",
            pb.CaptureRequest(model=model, inputs=[tpb.Tensor(name="x", dtype=LONG, shape=[1, 64], data=x.tobytes())]),
        ),
        "Capture bad tensor name": (
            "Capture",
            pb.CaptureRequest(model=model, inputs=[tpb.Tensor(name=LONG, dtype="FP32", shape=[1, 64], data=b"short")]),
        ),
        "Capture shape": (
            "Capture",
            pb.CaptureRequest(
                model=model, inputs=[tpb.Tensor(name="x", dtype="FP32", shape=[-1] + [2] * 3000, data=b"")]
            ),
        ),
        "Analyze model": (
            "Analyze",
            [
                pb.AnalyzeRequest(
                    config=pb.AnalyzeConfig(
                        models=[LONG], dataset="digits", metrics=[pb.MetricRequest(name="cnt.node_strength")]
                    )
                )
            ],
        ),
        "Analyze metric": ("Analyze", analyze(metrics=[pb.MetricRequest(name=LONG)])),
        "Analyze metric glob": ("Analyze", analyze(metrics=[pb.MetricRequest(name=LONG + "*")])),
        "Analyze param": (
            "Analyze",
            analyze(metrics=[pb.MetricRequest(name="cnt.node_strength", params={LONG: pb.Value(number=1.0)})]),
        ),
        "Analyze param text": (
            "Analyze",
            analyze(metrics=[pb.MetricRequest(name="cnt.node_strength", params={"mode": pb.Value(text=LONG)})]),
        ),
        "Analyze layer": ("Analyze", analyze(layers=[LONG])),
        "Analyze dataset": ("Analyze", analyze(dataset=LONG, metrics=[needs_data])),
        "Analyze split": ("Analyze", analyze(split=LONG, metrics=[needs_data])),
    }


CASES = list(_long_string_requests("").keys())


@pytest.mark.parametrize("case", CASES)
def test_long_request_strings_are_shortened_in_errors(channel, auth, mlp_id, case):
    """A 16 KiB id, name or pattern is refused with its own status and a short message.

    Echoed whole, it would overflow gRPC's 8 KiB metadata limit and reach the client as a transport
    error (INTERNAL) instead of the message meant for it.
    """
    method, request = _long_string_requests(mlp_id)[case]
    stub = pb_grpc.IntrospectionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        response = getattr(stub, method)(
            iter(request) if isinstance(request, list) else request, metadata=auth, timeout=60
        )
        if METHODS[method][1]:
            list(response)
    code, details = info.value.code(), info.value.details()
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (code, details[:500])
    assert len(details) < 1000, details[:500]
    assert LONG[:300] not in details  # echoed, if at all, in a shortened form
    if LONG[:50] in details:
        assert re.search(r"x… \(16,3\d\d characters\)", details), details
    assert_serving(channel, auth)
