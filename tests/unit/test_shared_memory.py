"""Same-host capture transport: the server's segment pool and the client's attach, on real /dev/shm files."""

from __future__ import annotations

import collections
import os
import stat
import time

import numpy as np
import pytest

from deepscope import shared_memory as client_shm
from deepscope.client import _receive_capture
from deepscope.tensors import Assembler, TensorError
from deepscope.v1 import introspection_pb2 as pb
from deepscope_server import shared_memory as server_shm
from deepscope_server.shared_memory import SegmentPool

pytestmark = pytest.mark.skipif(not server_shm.available(), reason="needs POSIX shared memory (/dev/shm)")

BIG = 1 << 20  # over MIN_BYTES: a capture that goes through shared memory


def _tensors(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        ("layer/a", rng.standard_normal((64, 1000)).astype(np.float32)),
        ("layer/b", rng.integers(0, 100, (3, 7)).astype(np.int64)),  # odd size: the next offset is aligned
        ("output/c", rng.standard_normal((64, 500)).astype(">f8")),  # big-endian arrives little-endian
        ("layer/empty", np.zeros((0, 5), np.float32)),
        ("layer/mask", rng.integers(0, 2, (10,)).astype(bool)),
    ]


def _path(message: pb.SharedTensors) -> str:
    return os.path.join(server_shm.SHM_DIR, message.segment)


def test_round_trip_is_identical_and_the_client_frees_the_segment():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    tensors = _tensors()
    message = pool.share(tensors)
    assert message is not None
    info = os.stat(_path(message))
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()  # other users cannot open it
    assert all(t.offset % server_shm.ALIGN == 0 for t in message.tensors)
    arrays = client_shm.attach(message)
    assert not os.path.exists(_path(message))  # unlinked as soon as it was mapped
    for name, array in tensors:
        got = arrays[name]
        assert got.dtype == array.dtype.newbyteorder("=") and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
    arrays["layer/a"][0, 0] = 42.0  # writable, private: nobody else sees it
    assert pool.outstanding_bytes == 0  # the pool sees the client freed it


def test_zero_seconds_turns_the_path_off():
    assert not SegmentPool(budget_bytes=64 << 20, ttl_seconds=0).enabled
    assert SegmentPool(budget_bytes=64 << 20, ttl_seconds=1).enabled


def test_small_captures_stream():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    assert pool.share([("layer/x", np.zeros(10, np.float32))]) is None


def test_budget_counts_unfreed_segments_and_over_it_the_capture_streams():
    one = sum(a.nbytes for _, a in _tensors())
    pool = SegmentPool(budget_bytes=int(one * 1.5), ttl_seconds=60)
    first = pool.share(_tensors())
    assert first is not None and pool.outstanding_bytes >= one
    assert pool.share(_tensors(1)) is None  # the first is still held: this one streams
    pool.free(first.segment)
    assert not os.path.exists(_path(first)) and pool.outstanding_bytes == 0
    second = pool.share(_tensors(1))
    assert second is not None
    pool.close()
    assert not os.path.exists(_path(second))


def test_segments_past_their_time_are_unlinked():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=0.05)
    message = pool.share(_tensors())
    assert message is not None and os.path.exists(_path(message))
    time.sleep(0.1)
    pool.sweep()
    assert not os.path.exists(_path(message)) and pool.outstanding_bytes == 0
    with pytest.raises(client_shm.SharedMemoryUnavailable, match="cannot open"):
        client_shm.attach(message)


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "psm_0123456789", "deepscope_" + "0" * 31, "deepscope_" + "G" * 32, "/deepscope_" + "0" * 32],
)
def test_client_refuses_names_a_server_does_not_make(name):
    with pytest.raises(TensorError, match="not one a deepscope server makes"):
        client_shm.attach(pb.SharedTensors(segment=name, size_bytes=8))


def test_a_tensor_outside_its_segment_is_refused_and_the_segment_still_freed():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    message = pool.share(_tensors())
    assert message is not None
    message.tensors[0].offset = message.size_bytes - 4
    with pytest.raises(TensorError, match="outside its shared-memory segment"):
        client_shm.attach(message)
    assert not os.path.exists(_path(message))


def test_a_size_larger_than_the_segment_is_refused():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    message = pool.share(_tensors())
    assert message is not None
    message.size_bytes += 1 << 20
    with pytest.raises(TensorError, match="the message says"):
        client_shm.attach(message)
    assert not os.path.exists(_path(message))


#: Addresses a client reaches on this host (loopback, unix sockets) and ones it may not.
LOCAL_ADDRESSES = ["127.0.0.1:50051", "localhost:1", "[::1]:5", "ipv4:127.0.0.2:9", "unix:/tmp/ds.sock"]
REMOTE_ADDRESSES = ["10.0.0.2:50051", "example.org:443", "[2001:db8::1]:5", "dns:///example.org:443"]
#: Peers as grpc names them on the server side.
LOCAL_PEERS = ["ipv4:127.0.0.1:40000", "ipv6:[::1]:40000", "unix:", "ipv6:[::ffff:127.0.0.1]:1"]
REMOTE_PEERS = ["ipv4:10.1.2.3:40000", "ipv6:[2001:db8::1]:40000", "ipv4:128.0.0.1:1"]


@pytest.mark.parametrize("address", LOCAL_ADDRESSES + REMOTE_ADDRESSES)
def test_client_asks_for_shared_memory_only_for_this_host(address):
    assert client_shm.local_address(address) is (address in LOCAL_ADDRESSES)


@pytest.mark.parametrize("peer", LOCAL_PEERS + REMOTE_PEERS)
def test_server_grants_shared_memory_only_to_peers_on_this_host(peer):
    assert server_shm.local_peer(peer) is (peer in LOCAL_PEERS)


def _parts(*parts: pb.CaptureResponse) -> list[pb.CaptureResponse]:
    return list(parts)


def test_a_stream_without_done_is_incomplete_not_a_partial_capture():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    message = pool.share(_tensors())
    with pytest.raises(TensorError, match="without its done message"):
        _receive_capture(_parts(pb.CaptureResponse(shared=message)), Assembler())
    assert not os.path.exists(_path(message))


def test_done_must_agree_with_what_arrived():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    message = pool.share(_tensors())
    total = sum(t.total_bytes for t in message.tensors)
    del message.tensors[-1]
    done = pb.CaptureResponse(done=pb.CaptureDone(num_tensors=5, total_bytes=total))
    with pytest.raises(TensorError, match="capture incomplete"):
        _receive_capture(_parts(pb.CaptureResponse(shared=message), done), Assembler())


def _attach_returning(message: pb.SharedTensors) -> tuple[dict[str, np.ndarray], collections.deque[str]]:
    returned: collections.deque[str] = collections.deque()
    return client_shm.attach(message, returned=returned), returned


def test_a_returned_segment_carries_the_same_peers_next_capture():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=60)
    first = pool.share(_tensors(0), peer="ipv4:127.0.0.1:1", reusable=True)
    assert first is not None and first.reusable
    arrays, returned = _attach_returning(first)
    assert os.path.exists(_path(first))  # lent for reuse: the client does not unlink it
    np.testing.assert_array_equal(arrays["layer/a"], _tensors(0)[0][1])
    assert not returned  # its arrays are alive
    del arrays
    assert list(returned) == [first.segment]  # all gone: handed back
    pool.release(returned, peer="ipv4:127.0.0.1:2")  # another connection cannot hand it back
    other = pool.share(_tensors(1), peer="ipv4:127.0.0.1:1", reusable=True)
    assert other is not None and other.segment != first.segment
    pool.release(returned, peer="ipv4:127.0.0.1:1")
    assert pool.share(_tensors(2), peer="ipv4:127.0.0.1:2", reusable=True).segment != first.segment  # not its own
    again = pool.share(_tensors(3), peer="ipv4:127.0.0.1:1", reusable=True)
    assert again is not None and again.segment == first.segment
    arrays, _ = _attach_returning(again)
    for name, array in _tensors(3):  # the new capture's bytes, nothing of the old one's
        np.testing.assert_array_equal(arrays[name], array)
    pool.close()
    assert not os.path.exists(_path(first))


def test_returned_segments_past_the_keep_limit_or_their_time_are_unlinked():
    one = sum(a.nbytes for _, a in _tensors())
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=0.2, keep_bytes=int(one * 1.5))
    peer = "ipv4:127.0.0.1:1"
    a = pool.share(_tensors(0), peer=peer, reusable=True)
    b = pool.share(_tensors(1), peer=peer, reusable=True)
    assert a is not None and b is not None
    pool.release([a.segment, b.segment], peer)  # two kept would pass keep_bytes: one goes
    assert sum(os.path.exists(_path(m)) for m in (a, b)) == 1
    time.sleep(0.3)
    pool.sweep()  # kept past its time: unlinked, nothing left
    assert not os.path.exists(_path(a)) and not os.path.exists(_path(b)) and pool.outstanding_bytes == 0


def test_kept_segments_give_way_to_a_capture_over_the_budget():
    one = sum(a.nbytes for _, a in _tensors())
    pool = SegmentPool(budget_bytes=int(one * 2), ttl_seconds=60)
    peer = "ipv4:127.0.0.1:1"
    kept = pool.share(_tensors(0), peer=peer, reusable=True)
    assert kept is not None
    pool.release([kept.segment], peer)
    other = pool.share(_tensors(1), peer="ipv4:127.0.0.1:2", reusable=True)  # needs the room
    assert other is not None and not os.path.exists(_path(kept))
    pool.close()


def test_a_lent_segment_past_its_time_is_unlinked_and_its_late_return_ignored():
    pool = SegmentPool(budget_bytes=64 << 20, ttl_seconds=0.05)
    peer = "ipv4:127.0.0.1:1"
    message = pool.share(_tensors(0), peer=peer, reusable=True)
    arrays, returned = _attach_returning(message)
    time.sleep(0.1)
    pool.sweep()
    assert not os.path.exists(_path(message)) and pool.outstanding_bytes == 0
    np.testing.assert_array_equal(arrays["layer/a"], _tensors(0)[0][1])  # the client's mapping still reads
    del arrays
    pool.release(returned, peer)
    fresh = pool.share(_tensors(1), peer=peer, reusable=True)
    assert fresh is not None and fresh.segment != message.segment
    pool.close()
