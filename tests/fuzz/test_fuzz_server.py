"""Property-based fuzzing of the running server (hypothesis): Capture with mutated tensors, uploads
of truncated and mutated model bytes, Analyze with random configs. Every bad input must get a
proper status code (never UNKNOWN or INTERNAL), no call may hang, and the server stays healthy."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import deepscope
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import tensor_pb2 as tpb

from .conftest import ACCEPTABLE, examples

FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
DTYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BF16", "BYTES", "fp32", "", "FP128"]


def _code(call) -> grpc.StatusCode:
    try:
        call()
        event("OK")
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        assert error.code() in ACCEPTABLE, f"{error.code()}: {error.details()}"
        if "larger than max" not in (error.details() or ""):  # gRPC's own transport limit has no details
            reason = deepscope.errors.from_rpc_error(error).reason
            assert reason, f"no ErrorInfo reason in {error.code()}: {error.details()}"
            event(f"{error.code().name} {reason}")
        return error.code()


@pytest.fixture(scope="module")
def models(fuzz_server, raw, exported) -> dict[str, str]:
    server, address = fuzz_server
    with deepscope.connect(address, token=server.token, progress=False) as client:
        return {fmt: client.upload_model(exported["mlp"][fmt]).id for fmt in ("onnx", "pt2", "pt")}


def _healthy(fuzz_server, models) -> None:
    server, address = fuzz_server
    assert server.process.poll() is None, server.log()
    with deepscope.connect(address, token=server.token, progress=False) as client:
        assert client.health() == "SERVING"
        assert client.capture(models["onnx"], np.ones((2, 64), np.float32), layers=["fc1"])["fc1"].shape == (2, 32)
    assert "internal error" not in server.log().lower()


dims = st.one_of(st.integers(0, 80), st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1))
tensors = st.builds(
    lambda name, dtype, shape, data: tpb.Tensor(name=name, dtype=dtype, shape=shape, data=data),
    name=st.sampled_from(["", "x", "input", "nope"]) | st.text(max_size=8),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(dims, max_size=5) | st.sampled_from([[2, 64], [1, 64], [0, 64], [3, 63]]),
    data=st.binary(max_size=1200) | st.sampled_from([bytes(512), bytes(256), bytes(2 * 64 * 8)]),
) | st.builds(
    lambda x: tpb.Tensor(name="", dtype="FP32", shape=list(x.shape), data=x.tobytes()),
    st.integers(0, 5).map(lambda n: np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)),
)


@settings(max_examples=examples(150), **FUZZ)
@given(
    inputs=st.lists(tensors, max_size=3),
    layers=st.lists(st.sampled_from(["fc1", "fc*", "kind:linear", "", "*", "zz", "[", "act1"]), max_size=3),
    fmt=st.sampled_from(["onnx", "pt2", "pt"]),
)
def test_capture_with_mutated_tensors(raw, models, inputs, layers, fmt):
    request = pb.CaptureRequest(model=models[fmt], inputs=inputs, layers=layers)
    _code(lambda: list(raw.stub.Capture(request, metadata=raw.metadata, timeout=30)))


def _mutate(data: bytes, how: str, position: float, value: int, length: int) -> bytes:
    at = int(position * len(data))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        out = bytearray(data)
        for k in range(length):
            out[(at + k * 997) % len(out)] ^= value or 1
        return bytes(out)
    if how == "insert":
        return data[:at] + bytes([value]) * length + data[at:]
    return data[:at] + data[at + length :]  # delete


@settings(max_examples=examples(40), **FUZZ)
@given(
    fmt=st.sampled_from(["onnx", "pt2", "pt"]),
    how=st.sampled_from(["truncate", "flip", "insert", "delete"]),
    position=st.floats(0, 1),
    value=st.integers(0, 255),
    length=st.integers(1, 64),
)
def test_upload_truncated_and_mutated_models(raw, exported, fmt, how, position, value, length):
    data = _mutate(exported["mlp"][fmt].read_bytes(), how, position, value, length)
    requests = [pb.UploadModelRequest(header=pb.UploadHeader(name=f"fuzz.{fmt}", total_bytes=len(data)))]
    requests += [pb.UploadModelRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)]
    _code(lambda: raw.stub.UploadModel(iter(requests), metadata=raw.metadata, timeout=60))


values = st.one_of(
    st.builds(lambda v: pb.Value(number=v), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda v: pb.Value(integer=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: pb.Value(flag=v), st.booleans()),
    st.builds(lambda v: pb.Value(text=v), st.text(max_size=10)),
    st.just(pb.Value()),
)
METRICS = [
    "example.activation_moments",
    "example.weight_spectrum",
    "testing.malformed",
    "testing.raises",
    "example.*",
    "nope.metric",
    "",
    "*",
]
PARAMS = ["reduce", "absolute", "seconds", "k", "", "bins"]


def _fields(models: dict[str, str]) -> dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]:
    """Per AnalyzeConfig field: (a valid value, a wild value)."""
    metric = st.builds(
        lambda name, params: pb.MetricRequest(name=name, params=params),
        st.sampled_from(METRICS),
        st.dictionaries(st.sampled_from(PARAMS), values, max_size=2),
    )
    good_metric = st.builds(lambda name: pb.MetricRequest(name=name), st.sampled_from(METRICS[:4]))
    return {
        "models": (
            st.sampled_from([[models["onnx"]], [models["pt2"]], [models["onnx"], models["onnx"]]]),
            st.lists(st.sampled_from([models["onnx"], models["pt"], "missing", "", models["onnx"][:8]]), max_size=3),
        ),
        "metrics": (st.lists(good_metric, min_size=1, max_size=2), st.lists(metric, max_size=3)),
        "layers": (
            st.sampled_from([[], ["fc1"], ["fc*"]]),
            st.lists(st.sampled_from(["fc1", "fc*", "zz", "kind:linear", "", "[", "act*"]), max_size=3),
        ),
        "dataset": (st.sampled_from(["digits", "synthetic"]), st.one_of(st.just(""), st.text(max_size=8))),
        "split": (st.sampled_from(["", "test", "train"]), st.text(max_size=8)),
        "batch_size": (st.sampled_from([0, 16, 50]), st.integers(0, 2**32 - 1)),
        "seed": (st.integers(0, 10), st.integers(0, 2**64 - 1)),
        "sample_limit": (st.integers(1, 60), st.integers(0, 2**64 - 1)),
        "expected_samples": (st.just(0), st.integers(0, 2**64 - 1)),
        "metric_timeout": (
            st.sampled_from([Duration(), Duration(seconds=20)]),
            st.builds(Duration, seconds=st.integers(-(2**40), 2**40), nanos=st.integers(-999_999_999, 999_999_999)),
        ),
        "label": (st.just(""), st.text(max_size=20)),
    }


@settings(max_examples=examples(30), **FUZZ)
@given(data=st.data())
def test_analyze_with_random_configs(raw, models, data):
    fields = _fields(models)
    mode = data.draw(st.sampled_from(["valid", "one-wild", "one-wild", "wild"]))
    wild = (
        set(fields) if mode == "wild" else {data.draw(st.sampled_from(sorted(fields)))} if mode == "one-wild" else set()
    )
    config = pb.AnalyzeConfig(**{name: data.draw(pair[name in wild]) for name, pair in fields.items()})
    batches = data.draw(st.lists(tensors, max_size=2)) if not config.dataset else []
    requests = [pb.AnalyzeRequest(config=config)] + [pb.AnalyzeRequest(batch=pb.DataBatch(inputs=[t])) for t in batches]
    if mode == "valid":  # a valid config must run to the end, whatever its metrics' own results say
        events = list(raw.stub.Analyze(iter(requests), metadata=raw.metadata, timeout=120))
        assert events[-1].WhichOneof("event") == "finished", events[-1]
        assert events[-1].finished.status == pb.RUN_STATUS_COMPLETED, events[-1].finished
        event("valid: completed")
        return
    _code(lambda: list(raw.stub.Analyze(iter(requests), metadata=raw.metadata, timeout=120)))


def test_server_still_healthy_after_fuzzing(fuzz_server, models):
    _healthy(fuzz_server, models)
