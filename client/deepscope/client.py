"""The Python SDK: ``deepscope.connect(addr)`` or ``deepscope.Client.embedded()``.

Every call has a deadline; status codes become typed exceptions (deepscope.NotFound, ...);
uploads and multi-batch captures show a tqdm progress bar unless ``progress=False``.
"""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import itertools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration

from . import times
from .dtypes import kserve_dtype, numpy_dtype
from .errors import DeepscopeError, FailedPrecondition, InvalidArgument, from_rpc_error  # re-exported
from .frames import ChunkView
from .frames import parser as frame_parser
from .onnx_files import external_data_files
from .progress import ProgressEvent, ProgressTracker, display_for, interactive
from .protocol import PROTOCOL_KEY, PROTOCOL_VERSION
from .results import Run
from .shared_memory import (
    InputSegment,
    InputSegments,
    SharedMemoryUnavailable,
    WorkerFileUnavailable,
    local_address,
)
from .shared_memory import attach as attach_shared
from .shared_memory import available as shared_memory_available
from .tensors import CHUNK_BYTES, Assembler, TensorError, capture_request_bytes, to_proto
from .v1 import introspection_pb2 as pb
from .v1 import introspection_pb2_grpc as pb_grpc
from .values import from_value, to_value

MAX_MESSAGE_BYTES = 256 << 20
DEFAULT_TIMEOUT = 120.0
LONG_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True)
class ServerInfo:
    """What ``GetServerInfo`` says: versions, limits and capabilities of the server."""

    server_version: str
    protocol_version: int
    limits: dict[str, float]
    upload_formats: tuple[str, ...]
    executors: tuple[str, ...]
    metric_isolation: str
    model_isolation: str
    auth_required: bool
    tls: bool
    devices: tuple[str, ...]

    @classmethod
    def from_proto(cls, info: pb.GetServerInfoResponse) -> ServerInfo:
        limits: dict[str, float] = {}
        for field, value in info.limits.ListFields():
            if isinstance(value, Duration):
                limits[f"{field.name}_seconds"] = times.seconds(value)
            else:
                limits[field.name] = int(value)
        return cls(
            info.server_version,
            info.protocol_version,
            limits,
            tuple(info.upload_formats),
            tuple(info.executors),
            info.metric_isolation,
            info.model_isolation,
            info.auth_required,
            info.tls,
            tuple(info.devices),
        )


if TYPE_CHECKING:
    import pandas


class _Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


def _progress_bar(enabled: bool, **kwargs: Any) -> _Bar:
    """tqdm on a terminal, a no-op elsewhere."""
    if not enabled or not interactive():  # a bar in a log file is a pile of carriage returns
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...

    total = None
    n = 0


@dataclass
class Model:
    """A model on the server. ``layers`` is the layer table as a pandas DataFrame."""

    client: Client
    info: pb.ModelInfo

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def format(self) -> str:
        return self.info.format

    def detail(self) -> pb.GetModelResponse:
        return self.client._call(self.client._stub.GetModel, pb.GetModelRequest(model=self.id))

    @property
    def notes(self) -> list[str]:
        """How the server runs this model (e.g. a batch size fixed by the export, which data is split to)."""
        return list(self.detail().notes)

    @property
    def layers(self) -> pandas.DataFrame:
        import json

        import pandas as pd

        rows = []
        for layer in self.detail().layers:
            rows.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "op_type": layer.op_type,
                    "inputs": list(layer.inputs),
                    "input_shape": [tuple(s.dims) for s in layer.input_shapes],
                    "output_shape": [tuple(s.dims) for s in layer.output_shapes],
                    "params": int(sum(int(np.prod(p.shape)) for p in layer.params)),
                    "attrs": {k: json.loads(v) for k, v in layer.attrs.items()},
                }
            )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"Model(id={self.id[:12]}, name={self.name!r}, format={self.format}, layers={self.info.num_layers})"


class Activations(dict[str, np.ndarray]):
    """Layer name -> captured output; ``model_outputs`` and ``layer_inputs`` hold the rest."""

    model_outputs: dict[str, np.ndarray]
    layer_inputs: dict[str, np.ndarray]


class Client:
    """A connection to a deepscope server."""

    def __init__(
        self,
        channel: grpc.Channel,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        progress: bool = True,
        on_close: Callable[[], None] | None = None,
        shared_memory: bool = False,
    ) -> None:
        self._channel = channel
        self._stub = pb_grpc.IntrospectionServiceStub(channel)
        # The tensor streams, with chunks read as views of the received bytes (deepscope.frames).
        self._capture = _tensor_stream(channel, "Capture", pb.CaptureRequest, pb.CaptureResponse)
        self._get_weights = _tensor_stream(channel, "GetWeights", pb.GetWeightsRequest, pb.GetWeightsResponse)
        self._metadata = [(PROTOCOL_KEY, str(PROTOCOL_VERSION))]
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        self.timeout = timeout
        self.progress = progress
        self._on_close = on_close
        #: Captures may come back through a shared-memory segment (a server on this host); see connect().
        self.shared_memory = shared_memory
        #: Reusable segments whose arrays are all gone, to hand back with the next capture.
        self._returned_segments: collections.deque[str] = collections.deque()
        #: Segments the server lent for same-host requests' inputs.
        self._input_segments = InputSegments()
        #: Whether captures may come as the model worker's own buffer (until one cannot be opened).
        self._worker_files = True
        self._summary_cache: dict[str, list[str]] | None = None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def embedded(cls, store: str | Path | None = None, progress: bool = True, **server_flags: Any) -> Client:
        """A local server process on a free loopback port; ``close()`` (or the end of the script) stops it.

        A live embedded server already on ``store`` (another notebook, a CLI run) is shared instead;
        the server stops when its last client closes or exits, however it exits.
        """
        from .embedded import EmbeddedServer

        server = EmbeddedServer(store=store, **server_flags)
        address = server.start()
        client = connect(address, token=server.token, progress=progress)
        # Garbage collection or interpreter exit lets go of the server too (the kernel's closing of
        # the lifeline covers a crash); close() runs the same finalizer once.
        client._on_close = weakref.finalize(client, server.stop)
        return client

    def close(self) -> None:
        self._channel.close()
        self._input_segments.close()
        if self._on_close:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Iterator[Any]:
        try:
            yield from method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING from the standard health service."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def server_info(self) -> ServerInfo:
        """The server's versions, limits (durations in seconds) and capabilities."""
        return ServerInfo.from_proto(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest()))

    # ------------------------------------------------------------ models

    def upload_model(
        self, model: str | os.PathLike[str] | bytes, name: str | None = None, timeout: float | None = None
    ) -> Model:
        """Upload a model file (path or bytes), streamed in chunks; returns the stored Model.

        An ONNX file's external-data files (``net.onnx.data``, as ``torch.onnx.export`` writes them)
        go in the same stream, from the model's own directory only; the model id covers them too.
        """
        source: bytes | Path
        if isinstance(model, (bytes, bytearray, memoryview)):
            source, name, side_files = bytes(model), name or "model", []
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"model file not found: {path}")
            source, name = path, name or path.name
            side_files = [(location, path.parent / location) for location in external_data_files(path)]
        size, sha256 = _size_and_digest(source)
        files: list[tuple[pb.FileHeader | None, bytes | Path]] = [(None, source)]
        total = size
        for location, file in side_files:
            n, digest = _size_and_digest(file)
            files.append((pb.FileHeader(path=location, total_bytes=n, sha256=digest), file))
            total += n
        bar = _progress_bar(
            self.progress and total > 4 * CHUNK_BYTES, total=total, unit="B", unit_scale=True, desc=f"upload {name}"
        )

        def requests() -> Iterator[pb.UploadModelRequest]:
            yield pb.UploadModelRequest(header=pb.UploadHeader(name=name, total_bytes=size, sha256=sha256))
            for header, file in files:
                if header is not None:
                    yield pb.UploadModelRequest(file=header)
                for chunk in _read_chunks(file):
                    yield pb.UploadModelRequest(chunk=chunk)
                    bar.update(len(chunk))

        try:
            info = self._call(self._stub.UploadModel, requests(), timeout or max(self.timeout, 600.0)).model
        finally:
            bar.close()
        return Model(self, info)

    def models(self) -> list[Model]:
        return [Model(self, info) for info in self._call(self._stub.ListModels, pb.ListModelsRequest()).models]

    def model(self, ref: str | Model) -> Model:
        """Look a model up by id, id prefix or name (fetches its info)."""
        ref = ref.id if isinstance(ref, Model) else ref
        return Model(self, self._call(self._stub.GetModel, pb.GetModelRequest(model=ref)).info)

    def delete_model(self, model: str | Model) -> bool:
        ref = model.id if isinstance(model, Model) else model
        return self._call(self._stub.DeleteModel, pb.DeleteModelRequest(model=ref)).deleted

    def weights(self, model: str | Model, layers: Sequence[str] = ()) -> dict[str, dict[str, np.ndarray]]:
        """Layer parameters in PyTorch layout: {layer: {"weight": W, "bias": b, ...}}."""
        ref = model.id if isinstance(model, Model) else model
        assembler = Assembler()
        for part in self._stream(self._get_weights, pb.GetWeightsRequest(model=ref, layers=list(layers))):
            if isinstance(part, ChunkView):
                assembler.add(part)
                continue
            kind = part.WhichOneof("part")
            if kind != "done":
                assembler.add(getattr(part, kind))
        out: dict[str, dict[str, np.ndarray]] = {}
        for name, array in assembler.close().items():
            layer, _, key = name.rpartition("/")
            out.setdefault(layer, {})[key] = array
        return out

    # ------------------------------------------------------------ capture

    def _as_model(self, model: str | Model) -> Model:
        return model if isinstance(model, Model) and model.info.inputs else self.model(model)

    @staticmethod
    def _cast_inputs(model: Model, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Name the inputs and cast floats to the model's dtype (e.g. float64 -> FP32)."""
        specs = {s.name: s for s in model.info.inputs}
        named = dict(x) if isinstance(x, Mapping) else {"": x}
        if "" in named and len(specs) == 1:
            named = {next(iter(specs)): named.pop("")}
        out = {}
        for name, array in named.items():
            array = np.asarray(array)
            spec = specs.get(name)
            if spec is not None:
                want = numpy_dtype(spec.dtype)
                if array.dtype != want and array.dtype.kind == "f" and want.kind == "f":
                    array = array.astype(want)
            out[name] = array
        return out

    def capture(
        self,
        model: str | Model,
        x: np.ndarray | Mapping[str, np.ndarray],
        layers: Sequence[str] = (),
        layer_inputs: Sequence[str] = (),
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> Activations:
        """Run ``x`` through the model and return the selected layers' outputs as numpy arrays.

        ``layers`` and ``layer_inputs`` take names, globs (``conv*``) or ``kind:conv``. Large
        inputs go in batches of ``batch_size`` (default: all at once up to 256 samples).
        """
        model = self._as_model(model)
        inputs = self._cast_inputs(model, x)
        n = len(next(iter(inputs.values())))
        batch_size = batch_size or min(max(n, 1), 256)
        starts = list(range(0, n, batch_size)) or [0]
        bar = _progress_bar(self.progress and len(starts) > 1, total=n, unit="sample", desc="capture")
        result = Activations()
        result.model_outputs, result.layer_inputs = {}, {}
        buckets = {"output": result.model_outputs, "layer": result, "input": result.layer_inputs}

        def start(lo: int) -> tuple[Any, InputSegment | None]:
            """The RPC, started now (its messages are read when iterated), and the input segment it
            uses until its response has arrived."""
            request = pb.CaptureRequest(
                model=model.id,
                layers=list(layers),
                layer_inputs=list(layer_inputs),
                accept_shared_memory=self.shared_memory,
                returns_segments=self.shared_memory,
                accept_worker_files=self.shared_memory and self._worker_files,
                released_segments=_drain(self._returned_segments),
                accept_packed_parts=True,
            )
            batch = {name: a[lo : lo + batch_size] for name, a in inputs.items()}
            segment = None
            if self.shared_memory:  # same host: inputs through a segment the server lent
                span = InputSegments.span(batch)
                segment = self._input_segments.take(span)
                if segment is None:
                    request.want_input_segment_bytes = self._input_segments.wanted(span)
            if segment is not None:
                request.shared_inputs.CopyFrom(self._input_segments.write(segment, batch))
                data = request.SerializeToString()
            else:
                data = capture_request_bytes(request, batch)
            try:
                return self._capture(data, timeout=timeout or self.timeout, metadata=self._metadata), segment
            except grpc.RpcError as error:
                if segment is not None:
                    self._input_segments.give_back(segment)
                raise from_rpc_error(error) from None

        def in_place(lo: int, rows: int, placed: set[str]) -> Callable[..., np.ndarray | None]:
            """Multi-batch: batch rows go straight into their slice of the result (no extra copy)."""

            def out(header: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
                group, _, key = header.name.partition("/")
                target = buckets.get(group)
                if target is None or not shape or shape[0] != rows:
                    return None  # not batch-major: assembled on its own, then placed below
                if key not in target:
                    target[key] = np.empty((n, *shape[1:]), dtype=dtype)
                dest = target[key]
                if dest.dtype != dtype or dest.shape[1:] != shape[1:]:
                    return None
                placed.add(header.name)
                return dest[lo : lo + rows]

            return out

        def place(lo: int, started: tuple[Any, InputSegment | None]) -> None:
            call, segment = started
            rows = min(batch_size, n - lo)
            placed: set[str] = set()
            assembler = Assembler(out=in_place(lo, rows, placed) if len(starts) > 1 else None)
            try:
                tensors = _receive_capture(call, assembler, self._returned_segments, self._input_segments)
            finally:
                if segment is not None:
                    self._input_segments.give_back(segment)
            for name, array in tensors.items():
                if name in placed:
                    continue
                group, _, key = name.partition("/")
                target = buckets.get(group)
                if target is None:
                    raise TensorError(f"capture sent tensor '{name[:200]}' outside output/, layer/ and input/")
                if len(starts) == 1:
                    target[key] = array
                    continue
                if key not in target:  # preallocate once; later batches copy into place
                    target[key] = np.empty((n, *array.shape[1:]), dtype=array.dtype)
                target[key][lo : lo + len(array)] = array
            bar.update(rows)

        # One request ahead: the server runs batch k+1's forward pass while batch k streams.
        pending: tuple[Any, InputSegment | None] | None = start(starts[0])
        try:
            for i, lo in enumerate(starts):
                assert pending is not None
                call, pending = pending, (start(starts[i + 1]) if i + 1 < len(starts) else None)
                try:
                    place(lo, call)
                except (SharedMemoryUnavailable, FailedPrecondition) as exc:
                    if isinstance(exc, WorkerFileUnavailable):
                        self._worker_files = False  # segments still work: the server copies into one
                    elif isinstance(exc, SharedMemoryUnavailable):
                        # Another user's server, or a segment that expired: stream from now on.
                        self.shared_memory = False
                    elif exc.reason == "INPUT_SEGMENT_UNKNOWN":
                        self._input_segments.close()  # expired, or a new connection: ask afresh
                    else:
                        raise
                    if pending is not None:
                        pending[0].cancel()
                        pending = start(starts[i + 1])
                    place(lo, start(lo))
        finally:
            if pending is not None:  # an error stopped us: do not leave the prefetched call running
                pending[0].cancel()
            bar.close()
        return result

    # ------------------------------------------------------------ metrics and runs

    def metrics(self) -> pandas.DataFrame:
        """The server's metrics: name, description, parameters (with defaults), needs, plugin and version."""
        import pandas as pd

        response = self._call(self._stub.ListMetrics, pb.ListMetricsRequest())
        rows = []
        for m in response.metrics:
            params = {p.name: from_value(p.default) for p in m.params}
            rows.append(
                {
                    "name": m.name,
                    "description": m.description,
                    "params": params,
                    "needs": list(m.needs),
                    "layer_kinds": list(m.layer_kinds),
                    "plugin": m.plugin,
                    "version": m.plugin_version,
                    "reconstructed": m.reconstructed,
                    "extension": m.extension,
                    "citation": m.citation,
                }
            )
        return pd.DataFrame(rows)

    def metric_infos(self) -> pb.ListMetricsResponse:
        return self._call(self._stub.ListMetrics, pb.ListMetricsRequest())

    def _summary_keys(self) -> dict[str, list[str]]:
        if self._summary_cache is None:
            self._summary_cache = {m.name: list(m.summary_keys) for m in self.metric_infos().metrics}
        return self._summary_cache

    def analyze(
        self,
        model: str | Model | Sequence[str | Model],
        data: Any = "digits",
        metrics: Sequence[str] = ("all",),
        exclude: Sequence[str] = (),
        layers: Sequence[str] = (),
        params: Mapping[str, Mapping[str, Any]] | None = None,
        batch_size: int = 64,
        seed: int = 0,
        limit: int | None = None,
        split: str = "test",
        metric_timeout: float | None = None,
        timeout: float | None = None,
        label: str = "",
        on_event: Callable[[pb.AnalyzeResponse], None] | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Run:
        """Run metrics over data; returns the finished Run.

        ``model``: one model or a list of checkpoints (a series). ``data``: a server dataset name
        ("digits", "synthetic"), an array ``x``, a tuple ``(x, labels)``, or an iterable of such batches.
        ``metrics`` ("all", globs) minus ``exclude`` (names, globs); a selected metric with no layer it
        applies to comes back as a "skipped" result saying why. Your data is checked against the
        model's inputs before the run starts, even when only weight metrics run.
        ``on_event`` gets the raw wire events; ``on_progress`` the ProgressEvents the bar and the
        CLI's log lines show (``checkpoint i/M · metric k/N``); ``run.events`` keeps the milestones.
        """
        checkpoints: list[str | Model] = [model] if isinstance(model, (str, Model)) else list(model)
        first = self._as_model(checkpoints[0])
        refs = [first.id] + [(c.id if isinstance(c, Model) else c) for c in checkpoints[1:]]
        config = pb.AnalyzeConfig(
            models=refs,
            layers=list(layers),
            exclude=list(exclude),
            batch_size=batch_size,
            seed=seed,
            sample_limit=limit or 0,
            split=split,
            label=label,
        )
        if metric_timeout:
            times.set_seconds(config.metric_timeout, metric_timeout)
        # Parameters go with an exact-name request placed first; the server keeps the first request for
        # a metric, so a later glob ("fractal.*") selecting the same metric does not drop them.
        params = dict(params or {})
        unmatched = [name for name in params if not any(fnmatch.fnmatch(name, p) or p == "all" for p in metrics)]
        if unmatched:
            raise InvalidArgument(f"params given for metrics not requested: {', '.join(unmatched)}")
        for name, values in params.items():
            request = pb.MetricRequest(name=name)
            for key, value in values.items():
                request.params[key].CopyFrom(_param_value(name, key, value))
            config.metrics.append(request)
        config.metrics.extend(pb.MetricRequest(name=name) for name in metrics if name not in params)
        batches: Iterable[tuple[Any, Any]] = ()
        if isinstance(data, str):
            config.dataset = data
        else:
            batches, expected = _client_batches(data, batch_size)
            config.expected_samples = expected
            batches = self._declare_data(first, config, iter(batches))
        return self._run_analysis(first, config, batches, timeout or LONG_TIMEOUT, on_event, on_progress)

    def _declare_data(
        self, model: Model, config: pb.AnalyzeConfig, batches: Iterator[tuple[Any, Any]]
    ) -> Iterator[tuple[Any, Any]]:
        """Put the first batch's dtypes and shapes in the config, so the server checks them before the run."""
        first = next(batches, None)
        if first is None:
            return batches
        for name, array in self._cast_inputs(model, first[0]).items():
            spec = config.data_specs.add(name=name, dtype=_dtype_name(array))
            spec.shape.dims.extend(array.shape)
        return itertools.chain([first], batches)

    def _run_analysis(
        self,
        first: Model,
        config: pb.AnalyzeConfig,
        batches: Iterable[tuple[Any, Any]],
        timeout: float,
        on_event: Callable[[pb.AnalyzeResponse], None] | None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Run:
        def requests() -> Iterator[pb.AnalyzeRequest]:
            yield pb.AnalyzeRequest(config=config)
            for x, y in batches:
                batch = pb.DataBatch(inputs=[to_proto(a, n) for n, a in self._cast_inputs(first, x).items()])
                if y is not None:
                    batch.labels.CopyFrom(to_proto(np.asarray(y, dtype=np.int64)))
                yield pb.AnalyzeRequest(batch=batch)

        tracker, display = ProgressTracker(), display_for(self.progress)
        results: list[pb.MetricResult] = []
        info = pb.RunInfo()
        call = None
        try:
            call = self._stub.Analyze(requests(), timeout=timeout, metadata=self._metadata)
            for event in call:
                if on_event:
                    on_event(event)
                for update in tracker.feed(event):
                    display(update)
                    if on_progress:
                        on_progress(update)
                kind = event.WhichOneof("event")
                if kind == "started":
                    info = event.started
                elif kind == "result":
                    results.append(event.result)
                elif kind == "finished":
                    info = event.finished
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        except BaseException:
            if call is not None:
                call.cancel()  # Ctrl-C: tell the server to stop the run
            raise
        finally:
            display.close()
        return Run(info, results, self._summary_keys(), events=tracker.history)

    def runs(self, limit: int = 100) -> list[Run]:
        return [Run(info) for info in self._call(self._stub.ListRuns, pb.ListRunsRequest(limit=limit)).runs]

    def get_run(self, run_id: str) -> Run:
        detail = self._call(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))
        return Run(detail.info, list(detail.results), self._summary_keys())


def _dtype_name(array: np.ndarray) -> str:
    try:
        return kserve_dtype(array.dtype)
    except ValueError:
        return str(array.dtype)


def _read_chunks(source: bytes | Path) -> Iterator[bytes]:
    """A file's (or a bytes object's) contents in upload-sized chunks, without reading a file whole."""
    if isinstance(source, bytes):
        for offset in range(0, len(source), CHUNK_BYTES):
            yield source[offset : offset + CHUNK_BYTES]
        return
    with open(source, "rb") as fh:
        yield from iter(lambda: fh.read(CHUNK_BYTES), b"")


def _size_and_digest(source: bytes | Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in _read_chunks(source):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _param_value(metric: str, key: str, value: Any) -> pb.Value:
    try:
        return to_value(value)
    except TypeError as exc:
        raise InvalidArgument(f"{metric}.{key}: {exc}") from None


def _client_batches(data: Any, batch_size: int) -> tuple[Iterable[tuple[Any, Any]], int]:
    """Normalise user data into (x, labels) batches plus the sample count (0 if unknown)."""
    if isinstance(data, np.ndarray) or isinstance(data, Mapping):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
        x, y = data
        first = next(iter(x.values())) if isinstance(x, Mapping) else np.asarray(x)
        n = len(first)

        def sliced() -> Iterator[tuple[Any, Any]]:
            for lo in range(0, n, batch_size):
                xs = (
                    {k: np.asarray(v)[lo : lo + batch_size] for k, v in x.items()}
                    if isinstance(x, Mapping)
                    else np.asarray(x)[lo : lo + batch_size]
                )
                yield xs, None if y is None else np.asarray(y)[lo : lo + batch_size]

        return sliced(), n

    def items() -> Iterator[tuple[Any, Any]]:
        for item in data:
            yield item if isinstance(item, tuple) else (item, None)

    return items(), 0


def _tensor_stream(channel: grpc.Channel, method: str, request: Any, response: Any) -> Any:
    """A server-streaming method whose chunk messages arrive as ``ChunkView``s (no payload copies)
    and whose request may be given as bytes."""
    service = pb.DESCRIPTOR.services_by_name["IntrospectionService"]
    serialize = request.SerializeToString
    return channel.unary_stream(
        f"/{service.full_name}/{service.methods_by_name[method].name}",
        # a request may come serialised already (capture_request_bytes)
        request_serializer=lambda r: r if isinstance(r, bytes) else serialize(r),
        response_deserializer=frame_parser(response),
        _registered_method=True,  # as the generated stubs call: the method is registered with the channel once
    )


def _drain(names: collections.deque[str]) -> list[str]:
    """Everything in ``names`` now (finalizers append from any thread)."""
    out = []
    while names:
        out.append(names.popleft())
    return out


def _unpacked(call: Iterable[Any]) -> Iterator[Any]:
    """A Capture stream's parts, those packed into one message (``CaptureResponse.parts``) in turn."""
    for message in call:
        if isinstance(message, ChunkView) or message.WhichOneof("part") != "parts":
            yield message
            continue
        for part in message.parts.parts:
            if part.WhichOneof("part") == "parts":
                raise TensorError("capture sent packed parts inside packed parts")
            yield part


def _receive_capture(
    call: Any,
    assembler: Assembler,
    returned: collections.deque[str] | None = None,
    input_segments: InputSegments | None = None,
) -> dict[str, np.ndarray]:
    """One Capture stream's tensors: chunks through ``assembler`` or one shared-memory segment
    (a reusable one's name goes to ``returned`` once its arrays are gone); an input segment the
    server lent goes to ``input_segments``.

    Complete or nothing: a stream without its done message, or whose done disagrees with what
    arrived, raises instead of returning a partial capture.
    """
    shared: dict[str, np.ndarray] = {}
    done = None
    try:
        for part in _unpacked(call):
            if isinstance(part, ChunkView):
                assembler.add(part)
                continue
            kind = part.WhichOneof("part")
            if kind == "done":
                done = part.done
                break
            if kind is None:
                raise TensorError("capture sent a message with no part this client knows")
            if kind == "shared":
                if shared:
                    raise TensorError("capture sent two shared-memory segments")
                shared = attach_shared(part.shared, returned=returned)
            else:
                assembler.add(getattr(part, kind))
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    tensors = assembler.close()
    if shared and tensors:
        raise TensorError("capture sent tensors both as chunks and in shared memory")
    tensors = tensors or shared
    if done is None:
        raise TensorError("capture stream ended without its done message: the capture is incomplete")
    received = sum(a.nbytes for a in tensors.values())
    if done.num_tensors != len(tensors) or done.total_bytes != received:
        raise TensorError(
            f"capture incomplete: the server sent {done.num_tensors} tensors ({done.total_bytes:,} "
            f"bytes), {len(tensors)} ({received:,} bytes) arrived"
        )
    if input_segments is not None and done.HasField("input_segment"):
        input_segments.adopt(done.input_segment)
    return tensors


def connect(
    address: str,
    token: str | None = None,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    client_certificate: bytes | None = None,
    client_key: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    shared_memory: bool | None = None,
    _on_close: Callable[[], None] | None = None,
) -> Client:
    """Connect to a server at ``host:port``. ``token`` defaults to $DEEPSCOPE_TOKEN.

    ``shared_memory``: captures come back through POSIX shared memory instead of the gRPC stream
    (same arrays, fewer copies). None (default): only for a server on this host (loopback or Unix
    socket); the server may still stream, and a segment this process cannot open (a server run
    by another user) switches the client back to streaming.
    """
    token = token or os.environ.get("DEEPSCOPE_TOKEN") or None
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Server-streaming calls (Capture, GetWeights) read in the calling thread: without it grpc
        # starts a "channel spin" thread whenever a call begins on an idle channel, once per capture.
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]
    if tls or root_certificates or client_certificate:
        credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if shared_memory is None:
        shared_memory = local_address(address) and shared_memory_available()
    return Client(
        channel, token=token, timeout=timeout, progress=progress, on_close=_on_close, shared_memory=shared_memory
    )


__all__ = ["Activations", "Client", "DeepscopeError", "Model", "connect"]
