"""RPC handlers: proto <-> domain, blocking work in worker threads, domain errors -> status codes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import numpy as np

from deepscope import times
from deepscope.frames import packed_parts
from deepscope.protocol import PROTOCOL_VERSION
from deepscope.tensors import CHUNK_BYTES, MAX_NDIM, TensorError, checksum, from_proto, tensor_frames
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

from . import __version__, convert, ray_executor, rich_status, shared_memory
from .analysis import RunExecutor, plan_run
from .backends import CaptureRequest
from .backends.inputs import format_shape
from .config import Settings
from .errors import (
    DeadlineExceeded,
    DeepscopeError,
    InvalidInput,
    LimitExceeded,
    ModelCrashed,
    ModelOutOfMemory,
    NotFound,
    StorageFull,
    Unavailable,
    UnknownInputSegment,
    shorten,
    shorten_list,
)
from .input_segments import InputSegments
from .isolation import RunCancelled
from .models import LoadedModel, ModelManager
from .plugins import Registry
from .sandbox import SandboxedBackend
from .store import Store, StoredModel
from .uploads import SideFile
from .wire import last_with_status

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[Exception], grpc.StatusCode]] = [
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelOutOfMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelCrashed, grpc.StatusCode.INTERNAL),
    (RunCancelled, grpc.StatusCode.CANCELLED),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (UnknownInputSegment, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
]


def _lend_reply(
    segments: shared_memory.SegmentPool, backend: Any, tensors: list[tuple[str, np.ndarray]], peer: str
) -> pb.SharedTensors | None:
    """The capture as the worker's own reply buffer, lent on to the client; None: copy it instead."""
    first = next((array for _, array in tensors if array.nbytes), None)
    lendable = backend.lendable(first) if first is not None else None
    return segments.lend_file(tensors, peer, lendable) if lendable is not None else None


def status_for(exc: Exception) -> grpc.StatusCode | None:
    for kind, code in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return code
    return None


#: Longest status message sent, in UTF-8 bytes: it travels percent-encoded (up to 3x) in trailing
#: metadata, whose default limit is 8 KiB. Echoed request strings are shortened where they are echoed;
#: this only stops a message that still grew too long from turning into a transport error.
MAX_STATUS_BYTES = 2000


def _status_message(text: str) -> str:
    raw = text.encode()
    return text if len(raw) <= MAX_STATUS_BYTES else raw[:MAX_STATUS_BYTES].decode(errors="ignore") + "…"


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    code = status_for(exc)
    if code is None:
        log.exception("internal error in %s", method)
        await rich_status.abort(
            context,
            grpc.StatusCode.INTERNAL,
            _status_message(f"internal error in {method}: {type(exc).__name__}: {exc}"),
            metadata={"method": method, "exception": type(exc).__name__},
        )
    reason = "INVALID_TENSOR" if isinstance(exc, TensorError) else None
    await rich_status.abort(context, code, _status_message(str(exc)), error=exc, reason=reason)


def _unexpected(exc: Exception, method: str) -> DeepscopeError | None:
    """Exceptions from libraries that still mean "bad request" or "out of memory", never UNKNOWN."""
    if isinstance(exc, MemoryError):
        return Unavailable(f"{method}: the server ran out of memory for this request; send smaller batches")
    return None


async def _abort_unexpected(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    mapped = _unexpected(exc, method)
    if mapped is not None:
        await _abort_for(mapped, context, method)
    await _abort_for(exc, context, method)  # logged, INTERNAL with the exception named


def rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to status codes for unary and streaming handlers alike.

    Anything else becomes INTERNAL (logged with its traceback), never gRPC's UNKNOWN.
    """
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _status_codes(context, fn.__name__):
                async for item in fn(self, request, context):
                    yield item

        return stream

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _status_codes(context, fn.__name__):
            return await fn(self, request, context)

    return unary


@contextlib.asynccontextmanager
async def _status_codes(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """Domain errors -> their status code; anything unexpected -> INTERNAL (logged), never UNKNOWN."""
    try:
        yield
    except (DeepscopeError, TensorError, RunCancelled) as exc:
        await _abort_for(exc, context, method)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # mapped to a status code
        await _abort_unexpected(exc, context, method)


def server_info(settings: Settings) -> pb.GetServerInfoResponse:
    """What a client needs to know before it sends anything: versions, limits, capabilities."""
    limits = settings.limits
    info = pb.GetServerInfoResponse(
        server_version=__version__,
        protocol_version=PROTOCOL_VERSION,
        limits=pb.ServerLimits(
            max_message_bytes=limits.max_message_bytes,
            max_model_bytes=limits.max_model_bytes,
            max_tensor_elements=limits.max_tensor_elements,
            max_batch_size=limits.max_batch_size,
            max_capture_bytes=limits.max_capture_bytes,
            max_concurrent_runs=limits.max_concurrent_runs,
            recommended_chunk_bytes=CHUNK_BYTES,
        ),
        upload_formats=["onnx", "pt2", "torchscript"],
        executors=["local"],
        metric_isolation=settings.metric_isolation,
        model_isolation=settings.model_isolation,
        auth_required=bool(settings.auth_token),
        tls=settings.tls_cert is not None,
        devices=_devices(settings),
    )
    info.limits.max_run_time.FromTimedelta(datetime.timedelta(seconds=limits.max_run_seconds))
    info.limits.metric_timeout.FromTimedelta(datetime.timedelta(seconds=limits.metric_timeout_seconds))
    info.limits.max_forward_time.FromTimedelta(datetime.timedelta(seconds=limits.max_forward_seconds))
    return info


def _devices(settings: Settings) -> list[str]:
    """Devices models may run on: a forced one, or the CPU plus CUDA where torch sees a GPU."""
    if settings.device != "auto":
        return [settings.device]
    import torch  # already imported by the backends; only asked here

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


#: Outputs up to this size are framed (checksums, shared-memory hand-off) on the event loop: a thread
#: hop would cost more than the work; larger ones are framed in a thread so the loop keeps serving.
_LOOP_FRAMING_BYTES = 64 << 10
#: Inputs up to this size are read out of their input segment on the event loop (a copy of warm
#: pages: well under a millisecond), larger ones in a thread.
_LOOP_INPUT_BYTES = 4 << 20


#: A capture up to this size goes out as one message (``CaptureResponse.parts``) to a client that
#: reads them: the per-message costs of gRPC on both sides are most of a small capture's time.
_PACKED_BYTES = CHUNK_BYTES


def _nbytes(out: Any) -> int:
    """Bytes of a forward pass's outputs and captures."""
    return sum(a.nbytes for a in out.outputs.values()) + sum(a.nbytes for a in out.captured.values())


class _Handoff:
    """A bounded hand-off from the event loop to one consumer thread.

    Waiting never holds an executor thread (the producer awaits, the consumer blocks in its own
    thread), so any number of concurrent uploads and streamed runs cannot starve the pool; once
    the consumer has stopped, ``put`` returns at once instead of blocking on a full queue.
    """

    def __init__(self, maxsize: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.consumer_done: asyncio.Future[None] = self.loop.create_future()

    async def put(self, item: Any) -> None:
        if self.consumer_done.done():
            return
        putter = asyncio.ensure_future(self.queue.put(item))
        try:
            await asyncio.wait([putter, self.consumer_done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not putter.done():
                putter.cancel()

    def force(self, item: Any) -> None:
        """From the loop: drop whatever is pending and deliver ``item`` now (a stop signal)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    def get(self) -> Any:
        """From the consumer thread: the next item (blocks that thread only)."""
        return asyncio.run_coroutine_threadsafe(self.queue.get(), self.loop).result()

    def items(self) -> Iterator[Any]:
        """From the consumer thread: items until a None; an exception put by the producer is raised."""
        while True:
            item = self.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def finished(self) -> None:
        """From the consumer thread: it will take no more items."""

        def settle() -> None:
            if not self.consumer_done.done():
                self.consumer_done.set_result(None)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is gone (shutdown)
            pass


def _in_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run long blocking work (an upload's writer) in its own thread, not the shared executor."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        try:
            value, ok = fn(), True
        except BaseException as exc:  # handed to the awaiting coroutine
            value, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class IntrospectionService(pb_grpc.IntrospectionServiceServicer):
    def __init__(self, settings: Settings, store: Store, models: ModelManager, registry: Registry) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.store = store
        self.models = models
        self.registry = registry
        self._runs = threading.BoundedSemaphore(self.limits.max_concurrent_runs)
        self.active_cancels: set[threading.Event] = set()
        self.segments = shared_memory.SegmentPool(self.limits.max_capture_bytes, self.limits.shared_memory_seconds)
        self.input_segments = InputSegments(self.limits.shared_memory_seconds, self.limits.max_message_bytes)
        self.ray = ray_executor.connect(settings) if settings.executor == "ray" else None

    # ------------------------------------------------------------ server

    @rpc
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.GetServerInfoResponse:
        return server_info(self.settings)

    # ------------------------------------------------------------ models

    @rpc
    async def UploadModel(
        self, request_iterator: AsyncIterator[pb.UploadModelRequest], context
    ) -> pb.UploadModelResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("UploadModel must start with an UploadHeader (name, total_bytes)")
        header = first.header
        if header.total_bytes > self.limits.max_model_bytes:
            raise LimitExceeded("max_model_bytes", self.limits.max_model_bytes, header.total_bytes)
        chunks = _Handoff(maxsize=8)
        name = header.name or "model"

        def write() -> LoadedModel:
            try:
                return self.models.upload(
                    name, chunks.items(), self.limits.max_model_bytes, header.total_bytes or None, header.sha256
                )
            finally:
                chunks.finished()

        task = _in_thread(write, "upload-writer")
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part not in ("chunk", "file"):
                    raise InvalidInput(
                        "UploadModel: only one header, then chunks (and a FileHeader before each side file)"
                    )
                if task.done():
                    break  # the writer failed (e.g. over the limit): stop reading
                f = message.file
                await chunks.put(message.chunk if part == "chunk" else SideFile(f.path, f.total_bytes, f.sha256))
            await chunks.put(None)
        except BaseException as exc:
            # Make the writer stop and delete its temp file, whatever happened to the stream.
            if not task.done():
                chunks.force(exc if isinstance(exc, Exception) else InvalidInput("upload cancelled"))
            if not isinstance(exc, DeepscopeError):
                try:
                    await task
                except BaseException:  # the original exception is what matters
                    pass
            raise
        loaded = await task
        return pb.UploadModelResponse(model=self._model_info(loaded))

    def _model_info(self, loaded: LoadedModel) -> pb.ModelInfo:
        s = loaded.stored
        return convert.model_info_proto(s.id, s.name, s.format, s.size_bytes, s.created_at, loaded.source, loaded.graph)

    @rpc
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        entries = await asyncio.to_thread(self.models.list)
        response = pb.ListModelsResponse()
        for entry in entries:
            loaded = self.models.cached(entry.id) if isinstance(entry, StoredModel) else entry
            if loaded is not None:
                response.models.append(self._model_info(loaded))
            else:
                info = pb.ModelInfo(
                    id=entry.id,
                    name=entry.name,
                    format=entry.format,
                    size_bytes=entry.size_bytes,
                    source=self.models.source(entry),
                )
                times.set_iso(info.created_time, entry.created_at)
                response.models.append(info)
        return response

    @rpc
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        loaded = await asyncio.to_thread(self.models.get, request.model)
        return pb.GetModelResponse(
            info=self._model_info(loaded),
            layers=[convert.layer_proto(layer) for layer in loaded.graph.layers],
            device=getattr(loaded.backend, "device", "cpu"),
            notes=loaded.graph.notes,
        )

    @rpc
    async def DeleteModel(self, request: pb.DeleteModelRequest, context) -> pb.DeleteModelResponse:
        return pb.DeleteModelResponse(deleted=await asyncio.to_thread(self.models.delete, request.model))

    @last_with_status
    @rpc
    async def GetWeights(self, request: pb.GetWeightsRequest, context) -> AsyncIterator[pb.GetWeightsResponse | bytes]:
        loaded = await asyncio.to_thread(self.models.get, request.model)
        graph = loaded.graph
        layers = graph.select(list(request.layers)) if request.layers else graph.layers
        count, total = 0, 0
        for layer in layers:
            for key, weight in layer.weights.items():
                # Parts already serialised (wire.py sends them as they are): one copy per chunk.
                for frame in tensor_frames(f"{layer.name}/{key}", np.asarray(weight)):
                    yield frame
                count += 1
                total += weight.nbytes
        yield pb.GetWeightsResponse(done=pb.WeightsDone(num_tensors=count, total_bytes=total))

    # ------------------------------------------------------------ capture

    def _decode(self, tensor: Any) -> np.ndarray:
        """One wire tensor, its declared element count checked against the limit before decoding."""
        dims = list(tensor.shape)
        if dims and len(dims) <= MAX_NDIM and all(d >= 0 for d in dims):  # else from_proto says what is wrong
            count = math.prod(dims)
            if count > self.limits.max_tensor_elements:
                raise LimitExceeded(
                    f"max_tensor_elements (tensor '{shorten(tensor.name)}' of shape {shorten_list(dims)})",
                    self.limits.max_tensor_elements,
                    count,
                    "elements",
                )
        return from_proto(tensor, self.limits.max_tensor_elements)

    def _decode_inputs(
        self, loaded: LoadedModel, tensors: Any, decoded: list[tuple[str, np.ndarray]] | None = None
    ) -> dict[str, np.ndarray]:
        """The request's inputs bound to the model's; ``decoded``: read from an input segment already."""
        decoded = decoded if decoded is not None else [(t.name, self._decode(t)) for t in tensors]
        if not decoded:
            raise InvalidInput(
                f"no input tensors; the model expects: "
                f"{', '.join(f'{s.name} {s.dtype} {format_shape(s.shape)}' for s in loaded.graph.inputs)}"
            )
        bound = loaded.graph.bind_inputs(decoded)
        for array in bound.values():
            if array.ndim and array.shape[0] > self.limits.max_batch_size:
                raise LimitExceeded("max_batch_size", self.limits.max_batch_size, array.shape[0], "samples")
        return bound

    async def _forward(
        self,
        context: grpc.aio.ServicerContext,
        loaded: LoadedModel,
        inputs: dict[str, np.ndarray],
        captures: list[CaptureRequest],
        then: Callable[[Any], Any] = lambda out: out,
        first: Callable[[Any], Any] | None = None,
    ) -> Any:
        """One forward pass bounded by the call: its deadline, its cancellation and server shutdown;
        ``then(output)`` runs in the same worker thread (after the model's lock is released), unless
        ``first(output)``, tried on the event loop after an idle worker's pass, returns a result. A
        sandboxed model's outputs are borrowed (read-only, in buffers its worker reuses once they
        are dropped): a Capture only copies or streams them.

        A sandboxed model is stopped mid-pass when any of them ends the call, so a model that
        never returns holds neither a thread nor the model past the call.
        """
        cancel = threading.Event()
        self.active_cancels.add(cancel)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        backend = loaded.backend
        try:
            # A sandboxed model that is idle: the event loop talks to its worker directly (no thread
            # hop, no polling); busy (a run or another capture holds it) or stopped: a thread waits.
            if isinstance(backend, SandboxedBackend) and backend.ready and loaded.lock.acquire(blocking=False):
                try:
                    out = await backend.run_async(
                        inputs, captures, cancelled=cancel.is_set, deadline=deadline, borrow=True
                    )
                finally:
                    loaded.lock.release()
                if _nbytes(out) <= _LOOP_FRAMING_BYTES:
                    return then(out)
                done = first(out) if first is not None else None
                return done if done is not None else await asyncio.to_thread(then, out)
            return await asyncio.to_thread(
                lambda: then(loaded.run(inputs, captures, cancelled=cancel.is_set, deadline=deadline, borrow=True))
            )
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            self.active_cancels.discard(cancel)

    @last_with_status
    @rpc
    async def Capture(self, request: pb.CaptureRequest, context) -> AsyncIterator[pb.CaptureResponse | bytes]:
        # A model looked up before is found without a thread hop or a catalogue read.
        loaded = self.models.loaded_upload(request.model) or await asyncio.to_thread(self.models.get, request.model)
        # Same host only: a remote peer could not map a segment, and never gets one made for it.
        peer = context.peer()
        # Input segments go to one connection: Unix-socket clients all share one peer string.
        inputs_peer = self.segments.enabled and shared_memory.local_peer(peer) and not peer.startswith("unix:")
        shared_inputs = None
        if request.HasField("shared_inputs"):
            if not inputs_peer:
                raise UnknownInputSegment("input segments are for loopback TCP clients on the server's host only")
            if request.inputs:
                raise InvalidInput("send inputs or shared_inputs, not both")
            read = functools.partial(
                self.input_segments.read, peer, request.shared_inputs, self.limits.max_tensor_elements
            )
            big = sum(t.total_bytes for t in request.shared_inputs.tensors) > _LOOP_INPUT_BYTES
            shared_inputs = await asyncio.to_thread(read) if big else read()
            self.input_segments.sweep_later(asyncio.get_running_loop())
        inputs = self._decode_inputs(loaded, request.inputs, shared_inputs)
        graph = loaded.graph
        captures = (
            [CaptureRequest(layer.name, "output") for layer in graph.select(list(request.layers))]
            if request.layers
            else []
        )
        captures += (
            [CaptureRequest(layer.name, "input") for layer in graph.select(list(request.layer_inputs))]
            if request.layer_inputs
            else []
        )
        skip_outputs, seconds = request.skip_model_outputs, 0.0
        share = request.accept_shared_memory and self.segments.enabled and shared_memory.local_peer(peer)
        # Segments go back to the connection they were lent to; every Unix-socket client has the
        # same peer string, so those are never reused.
        reusable = share and request.returns_segments and not peer.startswith("unix:")
        # ...and the same connection may get the model worker's reply buffer itself, no copy.
        backend = loaded.backend
        worker_files = reusable and request.accept_worker_files and isinstance(backend, SandboxedBackend)
        loop = asyncio.get_running_loop()
        if request.released_segments:  # kept for this peer's next captures; dropped by this sweep if unused
            self.segments.release(request.released_segments, peer)
            loop.call_later(self.limits.shared_memory_seconds + 1.0, self.segments.sweep)

        Framed = tuple[list[tuple[str, np.ndarray]], list[int], pb.SharedTensors | None]

        def chosen(out: Any) -> list[tuple[str, np.ndarray]]:
            """The tensors the client asked for, by wire name, within --max-capture-bytes."""
            nonlocal seconds
            seconds = time.perf_counter() - start
            tensors = [] if skip_outputs else [(f"output/{k}", v) for k, v in out.outputs.items()]
            tensors += [(f"{'layer' if c.what == 'output' else 'input'}/{c.layer}", out.captured[c]) for c in captures]
            total = sum(a.nbytes for _, a in tensors)
            if total > self.limits.max_capture_bytes:
                raise LimitExceeded("max_capture_bytes", self.limits.max_capture_bytes, total)
            return tensors

        def lent(out: Any) -> Framed | None:
            """On the event loop: the capture as the worker's own reply buffer, lent on without a
            copy (no thread hop needed), or None when it cannot be lent."""
            if not worker_files:
                return None
            tensors = chosen(out)
            shared = _lend_reply(self.segments, backend, tensors, peer)
            if shared is None:
                return None
            loop.call_later(self.limits.shared_memory_seconds + 1.0, self.segments.sweep)
            return tensors, [], shared

        def framed(out: Any) -> Framed:
            """The tensors to send with their checksums, or their shared-memory segment, made in the
            forward's thread: a CRC or a copy over megabytes would otherwise stall every other call
            on the event loop."""
            tensors = chosen(out)
            shared = _lend_reply(self.segments, backend, tensors, peer) if worker_files else None
            if shared is None and share:
                shared = self.segments.share(tensors, peer, reusable)
            if shared is not None:  # freed or handed back by the client; unlinked by this sweep if not
                with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): close() unlinks it
                    loop.call_soon_threadsafe(
                        loop.call_later, self.limits.shared_memory_seconds + 1.0, self.segments.sweep
                    )
            return tensors, [] if shared is not None else [checksum(a) for _, a in tensors], shared

        start = time.perf_counter()
        tensors, crcs, shared = await self._forward(context, loaded, inputs, captures, then=framed, first=lent)
        total = sum(a.nbytes for _, a in tensors)
        done = pb.CaptureResponse(
            done=pb.CaptureDone(
                num_tensors=len(tensors), total_bytes=total, device=getattr(loaded.backend, "device", "cpu")
            )
        )
        times.set_seconds(done.done.forward_time, seconds)
        # Unix-socket clients all share one peer string, so only TCP loopback peers get input segments.
        if request.want_input_segment_bytes and request.accept_shared_memory and inputs_peer:
            lent = self.input_segments.lend(peer, request.want_input_segment_bytes)
            if lent is not None:
                done.done.input_segment.CopyFrom(lent)
                self.input_segments.sweep_later(loop)
        if shared is None:
            frames = (frame for (name, a), crc in zip(tensors, crcs) for frame in tensor_frames(name, a, crc=crc))
            if request.accept_packed_parts and total <= _PACKED_BYTES:
                parts = [*frames, done.SerializeToString()]
                if sum(len(part) for part in parts) <= _PACKED_BYTES:  # headers too: one chunk's size at most
                    yield packed_parts(parts)
                    return
                frames = iter(parts[:-1])
            for frame in frames:  # serialised parts, sent as they are
                yield frame
            yield done
            return
        complete = False
        try:
            if request.accept_packed_parts:  # one message instead of two
                yield packed_parts([pb.CaptureResponse(shared=shared).SerializeToString(), done.SerializeToString()])
            else:
                yield pb.CaptureResponse(shared=shared)
                yield done
            complete = True
        finally:
            if not complete:  # the call ended early: the client will not take the segment
                self.segments.free(shared.segment)

    # ------------------------------------------------------------ metrics and runs

    @rpc
    async def ListMetrics(self, request: pb.ListMetricsRequest, context) -> pb.ListMetricsResponse:
        return pb.ListMetricsResponse(
            metrics=[convert.metric_info_proto(e) for _, e in sorted(self.registry.metrics.items())],
            datasets=sorted(self.registry.datasets),
            plugin_errors=self.registry.errors,
        )

    @rpc
    async def GetRun(self, request: pb.GetRunRequest, context) -> pb.GetRunResponse:
        return await asyncio.to_thread(self.store.get_run, request.run_id)

    @rpc
    async def ListRuns(self, request: pb.ListRunsRequest, context) -> pb.ListRunsResponse:
        return pb.ListRunsResponse(runs=await asyncio.to_thread(self.store.list_runs, request.limit or 100))

    @rpc
    async def Analyze(
        self, request_iterator: AsyncIterator[pb.AnalyzeRequest], context
    ) -> AsyncIterator[pb.AnalyzeResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "config":
            raise InvalidInput("Analyze must start with an AnalyzeConfig message")
        config = first.config
        plan = await asyncio.to_thread(plan_run, config, self.registry, self.models, self.limits)
        if not self._runs.acquire(blocking=False):
            raise LimitExceeded(
                "max_concurrent_runs", self.limits.max_concurrent_runs, self.limits.max_concurrent_runs + 1, "runs"
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[pb.AnalyzeResponse | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()
        self.active_cancels.add(cancel)
        client_queue = _Handoff(maxsize=4)
        needs_client_data = plan.needs_data and plan.dataset_batches is None

        executor = RunExecutor(
            plan,
            self.store,
            lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
            cancel,
            self.limits.max_run_seconds,
            client_queue.items() if needs_client_data else None,
            isolation=self.settings.metric_isolation,
            memory_bytes=self.limits.metric_memory_bytes,
        )
        if self.ray is not None:  # --executor ray: the same run, its checkpoints as Ray tasks
            executor = ray_executor.on_ray(executor, self.ray)
        first_model = plan.checkpoints[0]

        def work() -> None:
            try:
                executor.create()
                executor.execute()
            except BaseException as exc:  # handed to the event loop
                loop.call_soon_threadsafe(events.put_nowait, exc)
            finally:
                client_queue.finished()
                self._runs.release()
                loop.call_soon_threadsafe(events.put_nowait, None)

        async def feed() -> None:
            try:
                async for message in request_iterator:
                    if message.WhichOneof("part") != "batch":
                        raise InvalidInput("Analyze: only one config, then DataBatch messages")
                    inputs = self._decode_inputs(first_model, message.batch.inputs)
                    labels = self._decode(message.batch.labels) if message.batch.HasField("labels") else None
                    await client_queue.put((inputs, labels))
                await client_queue.put(None)
            except BaseException as exc:  # the run reports it
                cancel.set() if isinstance(exc, asyncio.CancelledError) else None
                client_queue.force(exc if isinstance(exc, Exception) else RuntimeError("stream closed"))

        thread = threading.Thread(target=work, name="analysis-run", daemon=True)
        thread.start()
        feeder = asyncio.ensure_future(feed()) if needs_client_data else None
        try:
            while True:
                event = await events.get()
                if event is None:
                    break
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            # Client cancelled, deadline passed or the stream broke: stop the run between steps.
            cancel.set()
            self.active_cancels.discard(cancel)
            if feeder is not None:
                feeder.cancel()
