"""Hand-serialised chunk parts: the same bytes as protobuf's, and read back exactly as protobuf reads them."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from deepscope.frames import ChunkView, chunk_frame, packed_parts, parser, read_chunk
from deepscope.tensors import Assembler, capture_request_bytes, tensor_frames, tensor_parts, to_proto
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import tensor_pb2 as tpb


def _stock(message_type, name: str, offset: int, data: bytes) -> bytes:
    message = message_type()
    message.chunk.name, message.chunk.offset, message.chunk.data = name, offset, data
    return message.SerializeToString()


@pytest.mark.parametrize("message_type", [pb.CaptureResponse, pb.GetWeightsResponse])
@pytest.mark.parametrize("name", ["", "layer/fc1", "ünïcode/層", "x" * 300])
@pytest.mark.parametrize("offset", [0, 1, 127, 128, 1 << 20, (1 << 64) - 1])
@pytest.mark.parametrize("size", [0, 1, 200, 1 << 20])
def test_chunk_frame_is_byte_for_byte_what_protobuf_writes(message_type, name, offset, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    frame = chunk_frame(name.encode(), offset, memoryview(data))
    assert frame == _stock(message_type, name, offset, data)
    parsed = message_type.FromString(frame)
    assert (parsed.chunk.name, parsed.chunk.offset, parsed.chunk.data) == (name, offset, data)


def test_tensor_frames_parse_with_the_generated_classes_as_tensor_parts():
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    frames = list(tensor_frames("layer/fc1", array, chunk_bytes=999))
    parts = list(tensor_parts("layer/fc1", array, chunk_bytes=999))
    assert frames == [p.SerializeToString() for p in parts]
    weights = [pb.GetWeightsResponse.FromString(f) for f in frames]
    assert [w.WhichOneof("part") for w in weights] == ["header"] + ["chunk"] * 5


@given(st.text(max_size=20), st.integers(0, (1 << 64) - 1), st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_read_chunk_reads_what_protobuf_reads(name, offset, data):
    raw = _stock(pb.CaptureResponse, name, offset, data)
    view = read_chunk(raw)
    assert view is not None
    assert (view.name, view.offset, bytes(view.data)) == (name, offset, data)


def _fields_of(parsed) -> tuple:
    if isinstance(parsed, ChunkView):
        return ("chunk", parsed.name, parsed.offset, bytes(parsed.data))
    kind = parsed.WhichOneof("part")
    if kind == "chunk":
        return ("chunk", parsed.chunk.name, parsed.chunk.offset, parsed.chunk.data)
    return (kind, parsed.SerializeToString(deterministic=True))


@given(st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_or_fail_exactly_as_the_generated_parser(raw):
    parse = parser(pb.CaptureResponse)
    try:
        expected = _fields_of(pb.CaptureResponse.FromString(raw))
    except DecodeError:
        with pytest.raises(DecodeError):
            parse(raw)
        return
    assert _fields_of(parse(raw)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        # the chunk field twice: protobuf merges them; the fast path steps aside
        _stock(pb.CaptureResponse, "a", 0, b"xy") + _stock(pb.CaptureResponse, "", 2, b"zz"),
        # a field repeated inside the chunk: the last one wins in protobuf
        b"\x12\x09\x0a\x01a\x0a\x01b\x1a\x01z",
        # an unknown field inside the chunk
        b"\x12\x05\x0a\x01a\x20\x05",
    ],
)
def test_unusual_but_valid_encodings_fall_back_to_protobuf(raw):
    assert read_chunk(raw) is None
    assert _fields_of(parser(pb.CaptureResponse)(raw)) == _fields_of(pb.CaptureResponse.FromString(raw))


def test_bad_utf8_names_and_truncated_chunks_are_protobuf_errors():
    bad_name = b"\x12\x05\x0a\x01\xff\x1a\x00"
    truncated = _stock(pb.CaptureResponse, "a", 3, b"payload")[:-2]
    for raw in (bad_name, truncated):
        assert read_chunk(raw) is None
        with pytest.raises(DecodeError):
            parser(pb.CaptureResponse)(raw)


def test_views_assemble_like_messages_and_tampering_is_still_caught():
    array = np.random.default_rng(1).standard_normal((64, 33)).astype(np.float32)
    frames = list(tensor_frames("t", array, chunk_bytes=1000))
    parse = parser(pb.CaptureResponse)
    asm = Assembler()
    parts = [parse(f) for f in frames]
    assert isinstance(parts[0], pb.CaptureResponse) and all(isinstance(p, ChunkView) for p in parts[1:])
    for part in parts:
        asm.add(part.header if isinstance(part, pb.CaptureResponse) else part)
    np.testing.assert_array_equal(asm.close()["t"].view(np.uint8), array.view(np.uint8))

    flipped = bytearray(frames[3])
    flipped[-1] ^= 1
    asm = Assembler()
    asm.add(tpb.TensorHeader.FromString(pb.CaptureResponse.FromString(frames[0]).header.SerializeToString()))
    with pytest.raises(Exception, match="checksum mismatch"):
        for frame in [*frames[1:3], bytes(flipped), *frames[4:]]:
            asm.add(parse(frame))


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": np.arange(12, dtype=np.float32).reshape(3, 4)},
        {"a": np.arange(6, dtype=">i4").reshape(2, 3), "ß": np.ones((2, 0, 5), np.float16), "": np.float64(2.5)},
        {"x": np.random.default_rng(0).standard_normal((256, 784)).astype(np.float32)[::1]},
    ],
)
def test_a_capture_request_serialised_by_hand_is_the_same_message(inputs):
    fields = dict(model="m" * 64, layers=["fc*", "kind:conv"], layer_inputs=["act1"], accept_shared_memory=True)
    raw = capture_request_bytes(pb.CaptureRequest(**fields), inputs)
    stock = pb.CaptureRequest(**fields, inputs=[to_proto(np.asarray(a), n) for n, a in inputs.items()])
    assert pb.CaptureRequest.FromString(raw) == stock
    assert pb.CaptureRequest.FromString(raw).SerializeToString(deterministic=True) == stock.SerializeToString(
        deterministic=True
    )


def _capture_frames(arrays: dict[str, np.ndarray]) -> list[bytes]:
    frames = [f for name, a in arrays.items() for f in tensor_frames(name, a, chunk_bytes=64)]
    total = sum(a.nbytes for a in arrays.values())
    done = pb.CaptureResponse(done=pb.CaptureDone(num_tensors=len(arrays), total_bytes=total, device="cpu"))
    return [*frames, done.SerializeToString()]


def test_packed_parts_are_byte_for_byte_what_protobuf_writes_and_read_as_the_same_capture():
    from deepscope.client import _receive_capture

    arrays = {"output/y": np.arange(40, dtype=np.float32).reshape(4, 10), "layer/fc1": np.ones((4, 3), np.int64)}
    frames = _capture_frames(arrays)
    packed = packed_parts(frames)
    stock = pb.CaptureResponse(parts=pb.CaptureParts(parts=[pb.CaptureResponse.FromString(f) for f in frames]))
    assert packed == stock.SerializeToString()
    parse = parser(pb.CaptureResponse)
    one = _receive_capture(iter([parse(packed)]), Assembler())
    separate = _receive_capture(iter([parse(f) for f in frames]), Assembler())
    assert one.keys() == separate.keys() == arrays.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(one[name], array)
        np.testing.assert_array_equal(separate[name], array)


def test_nested_packed_parts_and_unknown_parts_are_refused():
    from deepscope.client import _receive_capture
    from deepscope.tensors import TensorError

    inner = packed_parts(_capture_frames({"output/y": np.zeros(3, np.float32)}))
    nested = packed_parts([inner])
    with pytest.raises(TensorError, match="inside packed parts"):
        _receive_capture(iter([pb.CaptureResponse.FromString(nested)]), Assembler())
    with pytest.raises(TensorError, match="no part this client knows"):
        _receive_capture(iter([pb.CaptureResponse()]), Assembler())
