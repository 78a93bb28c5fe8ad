"""Wire tensors: round trips for every dtype, chunk reassembly and every malformed stream."""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepscope.dtypes import NUMPY_BY_KSERVE, kserve_dtype, numpy_dtype
from deepscope.tensors import Assembler, TensorError, checksum, from_proto, tensor_parts, to_proto
from deepscope.v1 import tensor_pb2 as tpb


@pytest.mark.parametrize("name", list(NUMPY_BY_KSERVE))
def test_every_dtype_round_trips(name):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5)) * 10).astype(numpy_dtype(name))
    message = to_proto(array, "t")
    assert message.dtype == name
    back = from_proto(message)
    assert back.dtype == array.dtype and back.shape == (3, 5)
    np.testing.assert_array_equal(back.view(np.uint8), array.view(np.uint8))


def test_big_endian_input_is_sent_little_endian():
    array = np.arange(4, dtype=">i4")
    message = to_proto(array)
    assert message.data == np.arange(4, dtype="<i4").tobytes()
    assert kserve_dtype(np.dtype(">f4")) == "FP32"


def test_unsupported_dtypes_are_named():
    with pytest.raises(ValueError, match="complex"):
        kserve_dtype(np.complex64)
    with pytest.raises(ValueError, match="supported: FP32"):
        numpy_dtype("FP8")
    assert numpy_dtype("bf16") == np.dtype(ml_dtypes.bfloat16)


def test_bytes_that_do_not_match_the_shape_are_refused():
    message = tpb.Tensor(name="x", dtype="FP32", shape=[2, 3], data=b"\0" * 20)
    with pytest.raises(TensorError, match="needs 24 bytes, got 20"):
        from_proto(message)
    with pytest.raises(TensorError, match="negative"):
        from_proto(tpb.Tensor(name="x", dtype="FP32", shape=[-1, 3], data=b""))
    with pytest.raises(TensorError, match="exceeds the limit"):
        from_proto(tpb.Tensor(name="x", dtype="UINT8", shape=[10, 10], data=b"\0" * 100), max_elements=99)
    with pytest.raises(TensorError, match="0 or 1"):
        from_proto(tpb.Tensor(name="b", dtype="BOOL", shape=[2], data=b"\x00\x02"))


def _parts(array, chunk=7):
    """The server's stream (``tensor_parts``) unwrapped to the header and chunk messages the client assembles."""
    return [getattr(p, p.WhichOneof("part")) for p in tensor_parts("t", array, chunk_bytes=chunk)]


def test_chunked_round_trip_without_concatenation():
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    parts = _parts(array, chunk=333)
    assert len(parts) == 1 + int(np.ceil(4000 / 333))
    asm = Assembler()
    names = [asm.add(p) for p in parts]
    assert names[-1] == "t" and names[:-1] == [None] * (len(parts) - 1)
    np.testing.assert_array_equal(asm.close()["t"], array)


def test_empty_tensor_needs_no_chunk():
    asm = Assembler()
    assert asm.add(_parts(np.zeros((0, 4), np.float32))[0]) == "t"
    assert asm.close()["t"].shape == (0, 4)


def test_missing_duplicate_and_out_of_order_chunks():
    parts = _parts(np.arange(10, dtype=np.int32))  # 40 bytes in chunks of 7
    header, chunks = parts[0], parts[1:]
    cases = {
        "missing": [header, chunks[0], chunks[2]],
        "duplicate or overlapping": [header, chunks[0], chunks[0]],
    }
    for message, sequence in cases.items():
        asm = Assembler()
        with pytest.raises(TensorError, match=message):
            for p in sequence:
                asm.add(p)
    asm = Assembler()
    with pytest.raises(TensorError, match="without its header"):
        asm.add(chunks[0])
    asm = Assembler()
    for p in [header, *chunks[:-1]]:
        asm.add(p)
    with pytest.raises(TensorError, match="stream ended inside tensor 't'"):
        asm.close()


def test_wrong_totals_oversize_and_checksum():
    header, *chunks = _parts(np.arange(4, dtype=np.int8), chunk=4)
    lying = tpb.TensorHeader(name="t", dtype="INT8", shape=[4], total_bytes=5, crc32=header.crc32)
    with pytest.raises(TensorError, match="needs 4 bytes, got 5"):
        Assembler().add(lying)
    asm = Assembler()
    asm.add(header)
    with pytest.raises(TensorError, match="past the declared total"):
        asm.add(tpb.TensorChunk(name="t", offset=0, data=b"\0" * 5))
    asm = Assembler()
    asm.add(header)
    with pytest.raises(TensorError, match="checksum"):
        asm.add(tpb.TensorChunk(name="t", offset=0, data=b"\x09\x01\x02\x03"))
    with pytest.raises(TensorError, match="exceeds the limit of 3 bytes"):
        Assembler(max_bytes=3).add(header)
    asm = Assembler()
    asm.add(header)
    asm.add(chunks[0])
    with pytest.raises(TensorError, match="duplicate tensor"):
        asm.add(header)


def test_checksum_is_zlib_crc32_and_a_flipped_bit_anywhere_is_caught():
    """The header's CRC-32 stays zlib's (IEEE) whichever implementation computes it, and a
    precomputed checksum (the server's, from a worker thread) frames exactly like a fresh one."""
    rng = np.random.default_rng(3)
    array = rng.standard_normal((37, 301)).astype(np.float32)  # 44,548 bytes: 11 chunks of 4 KiB
    assert checksum(array) == zlib.crc32(array.tobytes())
    assert checksum(array.astype(">f4")) == zlib.crc32(array.tobytes())  # little-endian on the wire
    fresh = [p.SerializeToString() for p in tensor_parts("t", array, chunk_bytes=4096)]
    given_crc = [p.SerializeToString() for p in tensor_parts("t", array, chunk_bytes=4096, crc=checksum(array))]
    assert fresh == given_crc
    header, *chunks = _parts(array, chunk=4096)
    for victim in (0, 5, len(chunks) - 1):
        asm = Assembler()
        asm.add(header)
        with pytest.raises(TensorError, match="checksum mismatch"):
            for i, chunk in enumerate(chunks):
                data = bytearray(chunk.data)
                if i == victim:
                    data[len(data) // 2] ^= 0x10
                asm.add(tpb.TensorChunk(name=chunk.name, offset=chunk.offset, data=bytes(data)))
    asm = Assembler()
    asm.add(header)
    for chunk in chunks:
        asm.add(chunk)
    np.testing.assert_array_equal(asm.close()["t"], array)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["h", "c"]), st.integers(0, 64), st.binary(max_size=24)), max_size=8))
def test_arbitrary_part_sequences_never_crash(ops):
    """Fuzz: any sequence of headers/chunks either assembles correctly or raises TensorError."""
    asm = Assembler(max_elements=1000, max_bytes=4000)
    try:
        for kind, number, data in ops:
            if kind == "h":
                asm.add(
                    tpb.TensorHeader(
                        name="t", dtype="UINT8", shape=[number], total_bytes=number, crc32=zlib.crc32(data[:number])
                    )
                )
            else:
                asm.add(tpb.TensorChunk(name="t", offset=number, data=data))
        for array in asm.close().values():
            assert array.dtype == np.uint8
    except TensorError:
        pass


def test_assembling_into_a_caller_supplied_slice():
    """Multi-batch captures land straight in their slice of the result array, no extra buffer."""
    result = np.full((6, 4), -1.0, np.float32)
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    asm = Assembler(out=lambda header, dtype, shape: result[2:4])
    for part in _parts(batch, chunk=5):
        asm.add(part)
    assembled = asm.close()["t"]
    np.testing.assert_array_equal(result[2:4], batch)
    assert np.shares_memory(assembled, result)
    assert (result[:2] == -1).all() and (result[4:] == -1).all()


@pytest.mark.parametrize("shape", [[2**63 - 1, 0], [0, 2**62, 2], [2**40, 2**40, 0], [1] * 65])
def test_shapes_numpy_cannot_hold_are_tensor_errors(shape):
    """An empty tensor with a huge dimension, or too many dimensions: TensorError, not numpy's ValueError."""
    with pytest.raises(TensorError, match="too large|at most 64"):
        from_proto(tpb.Tensor(name="x", dtype="FP32", shape=shape, data=b"" if 0 in shape else b"\0" * 4))
    with pytest.raises(TensorError, match="too large|at most 64"):
        Assembler().add(tpb.TensorHeader(name="x", dtype="FP32", shape=shape, total_bytes=0 if 0 in shape else 4))


def test_long_names_are_shortened_in_errors():
    name = "n" * 20_000
    with pytest.raises(TensorError) as info:
        from_proto(tpb.Tensor(name=name, dtype="FP32", shape=[2], data=b"\0"))
    assert len(str(info.value)) < 500 and "… (20,000 characters)" in str(info.value)
    with pytest.raises(ValueError) as info:
        numpy_dtype("Q" * 20_000)
    assert len(str(info.value)) < 500
