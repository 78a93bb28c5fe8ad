"""The service over real gRPC on a loopback port: models, capture, errors, health and reflection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

import deepscope
from deepscope.tensors import to_proto
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc
from deepscope.v1 import tensor_pb2 as tpb


def torch_outputs(model: torch.nn.Module, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Oracle: a plain forward pass with hooks on the original torch module."""
    modules = dict(model.named_modules())
    got: dict[str, np.ndarray] = {}
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.detach().clone().numpy()))
        for n in names
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return got


def test_health_serving_and_client_version(client):
    assert client.health() == "SERVING"
    assert client.health("deepscope.v1.IntrospectionService") == "SERVING"


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_upload_list_layers_and_capture_match_torch(client, exported, torch_models, fmt):
    model = client.upload_model(exported["cnn"][fmt])
    assert model.format == fmt and len(model.id) == 64
    assert model.id in {m.id for m in client.models()}
    table = model.layers
    assert {"conv1", "bn1", "fc", "layer1.0.conv1"} <= set(table["name"])
    assert table.set_index("name").loc["conv1", "kind"] == "conv"
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    acts = client.capture(model, x, layers=["conv1", "layer1.0.conv*", "fc"])
    assert set(acts) == {"conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"}
    oracle = torch_outputs(torch_models["cnn"][0], x, list(acts))
    for name, array in acts.items():
        np.testing.assert_allclose(array, oracle[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(acts.model_outputs["output"], oracle["fc"], rtol=1e-4, atol=1e-5)


def test_multi_batch_capture_equals_one_batch(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    x = np.random.default_rng(1).standard_normal((50, 64))  # float64: the SDK casts to FP32
    whole = client.capture(model, x, layers=["fc1"], layer_inputs=["act1"])
    pieces = client.capture(model, x, layers=["fc1"], layer_inputs=["act1"], batch_size=7)
    np.testing.assert_array_equal(whole["fc1"], pieces["fc1"])
    np.testing.assert_array_equal(whole.layer_inputs["act1"], whole["fc1"])  # act1's input is fc1's output


def test_hand_serialised_streams_parse_with_the_generated_classes(client, exported):
    """What an older client or another language gets: the stock stub's messages, reassembled, equal
    the SDK's arrays (its chunks are read as views by ``deepscope.frames``), weights too."""
    from deepscope.tensors import Assembler

    model = client.upload_model(exported["mlp"]["pt2"])
    x = np.random.default_rng(2).standard_normal((4096, 64)).astype(np.float32)
    client.shared_memory = False
    sdk = client.capture(model, x, layers=["fc1", "act1"])
    request = pb.CaptureRequest(model=model.id, layers=["fc1", "act1"], inputs=[to_proto(x)])
    asm, kinds = Assembler(), []
    for part in client._stub.Capture(request, timeout=60, metadata=client._metadata):
        kinds.append(part.WhichOneof("part"))
        if kinds[-1] != "done":
            asm.add(getattr(part, kinds[-1]))
    assert kinds.count("chunk") >= 3 and kinds[-1] == "done"
    stock = asm.close()
    for name in ("fc1", "act1"):
        np.testing.assert_array_equal(stock[f"layer/{name}"].view(np.uint8), sdk[name].view(np.uint8))
    asm = Assembler()
    for part in client._stub.GetWeights(pb.GetWeightsRequest(model=model.id), timeout=60, metadata=client._metadata):
        if part.WhichOneof("part") != "done":
            asm.add(getattr(part, part.WhichOneof("part")))
    stock, sdk_weights = asm.close(), client.weights(model)
    assert stock.keys() == {f"{layer}/{key}" for layer, params in sdk_weights.items() for key in params}
    for name, array in stock.items():
        layer, _, key = name.rpartition("/")
        np.testing.assert_array_equal(array, sdk_weights[layer][key])


def test_a_small_capture_comes_packed_in_one_message_only_to_a_client_that_asks(client, exported):
    """accept_packed_parts: the header, chunk and done of a small capture in one CaptureResponse;
    a request without it (an older client) gets one part per message, the same tensors."""
    model = client.upload_model(exported["mlp"]["pt2"])
    x = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)

    def stream(packed: bool) -> list[pb.CaptureResponse]:
        request = pb.CaptureRequest(model=model.id, layers=["fc1"], inputs=[to_proto(x)], accept_packed_parts=packed)
        return list(client._stub.Capture(request, timeout=60, metadata=client._metadata))

    packed, plain = stream(True), stream(False)
    assert [m.WhichOneof("part") for m in packed] == ["parts"]
    parts = list(packed[0].parts.parts)
    assert [m.WhichOneof("part") for m in plain] == ["header", "chunk", "header", "chunk", "done"]
    plain[-1].done.ClearField("forward_time")
    parts[-1].done.ClearField("forward_time")
    assert [m.SerializeToString() for m in parts] == [m.SerializeToString() for m in plain]
    client.shared_memory = False
    sdk = client.capture(model, x, layers=["fc1"])
    np.testing.assert_array_equal(sdk["fc1"], _assembled(plain, "layer/fc1"))


def _assembled(messages: list[pb.CaptureResponse], name: str) -> np.ndarray:
    from deepscope.tensors import Assembler

    asm = Assembler()
    for m in messages:
        if m.WhichOneof("part") != "done":
            asm.add(getattr(m, m.WhichOneof("part")))
    return asm.close()[name]


def test_a_capture_cancelled_mid_stream_leaves_the_server_serving(client, exported):
    model = client.upload_model(exported["mlp"]["pt2"])
    x = np.random.default_rng(3).standard_normal((4096, 64)).astype(np.float32)
    request = pb.CaptureRequest(model=model.id, layers=["fc1"], inputs=[to_proto(x)])
    call = client._capture(request, timeout=60, metadata=client._metadata)
    first = next(call)
    assert first.WhichOneof("part") == "header"
    call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    client.shared_memory = False
    again = client.capture(model, x[:5], layers=["fc1"])
    np.testing.assert_array_equal(again["fc1"], client.capture(model, x, layers=["fc1"])["fc1"][:5])


def test_weights_in_pytorch_layout(client, exported, torch_models):
    model = client.upload_model(exported["mlp"]["onnx"])
    weights = client.weights(model, ["fc*"])
    reference = torch_models["mlp"][0]
    np.testing.assert_allclose(weights["fc2"]["weight"], reference.fc2.weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(weights["fc2"]["bias"], reference.fc2.bias.detach().numpy(), rtol=1e-6)


def _raw_stub(server):
    embedded, address = server
    channel = grpc.insecure_channel(address)
    metadata = [("authorization", f"Bearer {embedded.token}")]
    return channel, pb_grpc.IntrospectionServiceStub(channel), metadata


def test_bad_requests_get_clear_codes_and_the_server_keeps_serving(client, server, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    x = np.zeros((2, 64), np.float32)

    with pytest.raises(deepscope.NotFound, match="model 'mpl.onnx' not found.*did you mean: model.onnx"):
        client.capture("mpl.onnx", x)
    with pytest.raises(deepscope.NotFound, match="'fc9' matches no layer.*did you mean:.*fc1"):
        client.capture(model, x, layers=["fc9"])
    with pytest.raises(deepscope.InvalidArgument, match=r"expected FP32.*got INT32"):
        client.capture(model, x.astype(np.int32))
    with pytest.raises(deepscope.InvalidArgument, match=r"63"):
        client.capture(model, np.zeros((2, 63), np.float32))
    with pytest.raises(deepscope.ResourceExhausted, match="max_batch_size exceeded: 5,000 samples > limit 4,096"):
        client.capture(model, np.zeros((5000, 64), np.float32), batch_size=5000)
    with pytest.raises(deepscope.InvalidArgument, match="not a loadable model|not a model|unrecognised|unknown format"):
        client.upload_model(b"this is not a model at all", name="junk.onnx")
    with pytest.raises(deepscope.InvalidArgument):
        client.upload_model(exported["mlp"]["onnx"].read_bytes()[:500], name="truncated.onnx")

    channel, stub, metadata = _raw_stub(server)
    with channel:
        bad = tpb.Tensor(name="x", dtype="FP32", shape=[2, 64], data=b"\0" * 100)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Capture(pb.CaptureRequest(model=model.id, inputs=[bad]), metadata=metadata, timeout=30))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 512 bytes, got 100" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(pb.ListModelsRequest(), timeout=10)  # no token
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=[*metadata, ("x-deepscope-protocol", "9")])
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Junk uploads are not catalogued, and the server still answers correctly.
    assert not any(m.name in ("junk.onnx", "truncated.onnx") for m in client.models())
    assert client.capture(model, x, layers=["fc1"])["fc1"].shape == (2, 32)


def test_delete_model(client, exported):
    model = client.upload_model(exported["transformer"]["pt2"], name="to-delete.pt2")
    assert client.delete_model(model)
    with pytest.raises(deepscope.NotFound):
        client.model(model.id)


def test_reflection_alone_is_enough_to_call_every_rpc(server, exported):
    """A client with no generated code: descriptors from reflection, messages built dynamically."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    embedded, address = server
    metadata = [("authorization", f"Bearer {embedded.token}")]

    class Token(grpc.StreamStreamClientInterceptor):  # reflection needs the token too
        def intercept_stream_stream(self, continuation, details, requests):
            return continuation(details._replace(metadata=metadata), requests)

    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(grpc.intercept_channel(channel, Token()))
        assert "deepscope.v1.IntrospectionService" in database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("deepscope.v1.IntrospectionService")
        methods = {m.name: m for m in service.methods}
        assert set(methods) >= {
            "UploadModel",
            "ListModels",
            "GetModel",
            "DeleteModel",
            "Capture",
            "ListMetrics",
            "Analyze",
            "GetRun",
            "ListRuns",
            "GetWeights",
        }

        def cls(method, which):
            return message_factory.GetMessageClass(getattr(method, which))

        def call(name, request):
            m = methods[name]
            kind = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }
            fn = kind[(m.client_streaming, m.server_streaming)](
                f"/deepscope.v1.IntrospectionService/{name}",
                request_serializer=lambda r: r.SerializeToString(),
                response_deserializer=cls(m, "output_type").FromString,
            )
            return fn(request, metadata=metadata, timeout=60)

        Upload = cls(methods["UploadModel"], "input_type")
        data = exported["mlp"]["onnx"].read_bytes()
        info = call(
            "UploadModel",
            iter([Upload(header={"name": "reflected.onnx", "total_bytes": len(data)}), Upload(chunk=data)]),
        ).model
        assert info.format == "onnx"
        assert any(m.id == info.id for m in call("ListModels", cls(methods["ListModels"], "input_type")()).models)
        detail = call("GetModel", cls(methods["GetModel"], "input_type")(model=info.id))
        assert "fc1" in [layer.name for layer in detail.layers]
        x = np.ones((1, 64), np.float32)
        request = cls(methods["Capture"], "input_type")(
            model=info.id, layers=["fc1"], inputs=[{"name": "", "dtype": "FP32", "shape": [1, 64], "data": x.tobytes()}]
        )
        parts = list(call("Capture", request))
        assert parts[-1].done.num_tensors == 2
        weights = list(call("GetWeights", cls(methods["GetWeights"], "input_type")(model=info.id, layers=["fc1"])))
        assert weights[-1].done.num_tensors == 2
        metrics = call("ListMetrics", cls(methods["ListMetrics"], "input_type")())
        assert "example.weight_spectrum" in [m.name for m in metrics.metrics]
        Analyze = cls(methods["Analyze"], "input_type")
        events = list(
            call(
                "Analyze",
                iter([Analyze(config={"models": [info.id], "metrics": [{"name": "example.weight_spectrum"}]})]),
            )
        )
        run_id = events[-1].finished.id
        assert call("GetRun", cls(methods["GetRun"], "input_type")(run_id=run_id)).info.id == run_id
        assert call("ListRuns", cls(methods["ListRuns"], "input_type")()).runs
        assert call("DeleteModel", cls(methods["DeleteModel"], "input_type")(model=info.id)).deleted


def test_tensor_messages_decode_in_any_language_by_spec():
    """The wire format is plain: raw little-endian bytes a C/Go/Rust client can produce without us."""
    message = to_proto(np.array([[1.5, -2.0]], dtype=np.float32))
    assert message.data == b"\x00\x00\xc0\x3f\x00\x00\x00\xc0"
    assert list(message.shape) == [1, 2] and message.dtype == "FP32"


def test_reflection_v1_and_v1alpha_serve_the_protocols_comments(server):
    """grpcurl-style clients (v1 first) see the descriptors with their comments (source info)."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    embedded, address = server
    metadata = [("authorization", f"Bearer {embedded.token}")]
    with grpc.insecure_channel(address) as channel:
        for service in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
            reflect = channel.stream_stream(
                f"/{service}/ServerReflectionInfo",
                request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                response_deserializer=rpb.ServerReflectionResponse.FromString,
            )
            requests = [
                rpb.ServerReflectionRequest(list_services=""),
                rpb.ServerReflectionRequest(file_containing_symbol="deepscope.v1.IntrospectionService"),
            ]
            listed, found = list(reflect(iter(requests), metadata=metadata, timeout=30))
            names = {s.name for s in listed.list_services_response.service}
            assert {"deepscope.v1.IntrospectionService", "grpc.reflection.v1.ServerReflection"} <= names
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in found.file_descriptor_response.file_descriptor_proto
            ]
            ours = next(f for f in files if f.name == "deepscope/v1/introspection.proto")
            comments = [loc.leading_comments + loc.trailing_comments for loc in ours.source_code_info.location]
            assert any("versions, limits and capabilities" in c for c in comments), service
