import datetime

from deepscope.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_COMPLETED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
    RUN_STATUS_INTERRUPTED: _ClassVar[RunStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_COMPLETED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_STATUS_INTERRUPTED: RunStatus

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_message_bytes", "max_model_bytes", "max_tensor_elements", "max_batch_size", "max_capture_bytes", "max_concurrent_runs", "max_run_time", "metric_timeout", "max_forward_time", "recommended_chunk_bytes")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CAPTURE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUN_TIME_FIELD_NUMBER: _ClassVar[int]
    METRIC_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_FORWARD_TIME_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_model_bytes: int
    max_tensor_elements: int
    max_batch_size: int
    max_capture_bytes: int
    max_concurrent_runs: int
    max_run_time: _duration_pb2.Duration
    metric_timeout: _duration_pb2.Duration
    max_forward_time: _duration_pb2.Duration
    recommended_chunk_bytes: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_model_bytes: _Optional[int] = ..., max_tensor_elements: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_capture_bytes: _Optional[int] = ..., max_concurrent_runs: _Optional[int] = ..., max_run_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metric_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_forward_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., recommended_chunk_bytes: _Optional[int] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "protocol_version", "limits", "upload_formats", "executors", "metric_isolation", "model_isolation", "auth_required", "tls", "devices")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FORMATS_FIELD_NUMBER: _ClassVar[int]
    EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    METRIC_ISOLATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ISOLATION_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    protocol_version: int
    limits: ServerLimits
    upload_formats: _containers.RepeatedScalarFieldContainer[str]
    executors: _containers.RepeatedScalarFieldContainer[str]
    metric_isolation: str
    model_isolation: str
    auth_required: bool
    tls: bool
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., upload_formats: _Optional[_Iterable[str]] = ..., executors: _Optional[_Iterable[str]] = ..., metric_isolation: _Optional[str] = ..., model_isolation: _Optional[str] = ..., auth_required: _Optional[bool] = ..., tls: _Optional[bool] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("name", "total_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    total_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class FileHeader(_message.Message):
    __slots__ = ("path", "total_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    total_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk", "file")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    file: FileHeader
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., file: _Optional[_Union[FileHeader, _Mapping]] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "name", "format", "size_bytes", "inputs", "outputs", "num_layers", "num_params", "source", "created_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    format: str
    size_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    num_layers: int
    num_params: int
    source: str
    created_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., num_layers: _Optional[int] = ..., num_params: _Optional[int] = ..., source: _Optional[str] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ParamInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "kind", "op_type", "inputs", "input_shapes", "output_shapes", "params", "attrs", "channel_axis")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OP_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_AXIS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    op_type: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    input_shapes: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Shape]
    output_shapes: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Shape]
    params: _containers.RepeatedCompositeFieldContainer[ParamInfo]
    attrs: _containers.ScalarMap[str, str]
    channel_axis: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., op_type: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., input_shapes: _Optional[_Iterable[_Union[_tensor_pb2.Shape, _Mapping]]] = ..., output_shapes: _Optional[_Iterable[_Union[_tensor_pb2.Shape, _Mapping]]] = ..., params: _Optional[_Iterable[_Union[ParamInfo, _Mapping]]] = ..., attrs: _Optional[_Mapping[str, str]] = ..., channel_axis: _Optional[int] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("info", "layers", "device", "notes")
    INFO_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    info: ModelInfo
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    device: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, info: _Optional[_Union[ModelInfo, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., device: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class GetWeightsRequest(_message.Message):
    __slots__ = ("model", "layers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ...) -> None: ...

class GetWeightsResponse(_message.Message):
    __slots__ = ("header", "chunk", "done")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    header: _tensor_pb2.TensorHeader
    chunk: _tensor_pb2.TensorChunk
    done: WeightsDone
    def __init__(self, header: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., done: _Optional[_Union[WeightsDone, _Mapping]] = ...) -> None: ...

class WeightsDone(_message.Message):
    __slots__ = ("num_tensors", "total_bytes")
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    num_tensors: int
    total_bytes: int
    def __init__(self, num_tensors: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("model", "inputs", "layers", "layer_inputs", "skip_model_outputs", "accept_shared_memory", "returns_segments", "released_segments", "accept_packed_parts", "want_input_segment_bytes", "shared_inputs", "accept_worker_files")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_INPUTS_FIELD_NUMBER: _ClassVar[int]
    SKIP_MODEL_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    RETURNS_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_PACKED_PARTS_FIELD_NUMBER: _ClassVar[int]
    WANT_INPUT_SEGMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARED_INPUTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_WORKER_FILES_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    layers: _containers.RepeatedScalarFieldContainer[str]
    layer_inputs: _containers.RepeatedScalarFieldContainer[str]
    skip_model_outputs: bool
    accept_shared_memory: bool
    returns_segments: bool
    released_segments: _containers.RepeatedScalarFieldContainer[str]
    accept_packed_parts: bool
    want_input_segment_bytes: int
    shared_inputs: SharedInputs
    accept_worker_files: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., layers: _Optional[_Iterable[str]] = ..., layer_inputs: _Optional[_Iterable[str]] = ..., skip_model_outputs: _Optional[bool] = ..., accept_shared_memory: _Optional[bool] = ..., returns_segments: _Optional[bool] = ..., released_segments: _Optional[_Iterable[str]] = ..., accept_packed_parts: _Optional[bool] = ..., want_input_segment_bytes: _Optional[int] = ..., shared_inputs: _Optional[_Union[SharedInputs, _Mapping]] = ..., accept_worker_files: _Optional[bool] = ...) -> None: ...

class SharedInputs(_message.Message):
    __slots__ = ("segment", "tensors")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    tensors: _containers.RepeatedCompositeFieldContainer[SharedTensor]
    def __init__(self, segment: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[SharedTensor, _Mapping]]] = ...) -> None: ...

class InputSegment(_message.Message):
    __slots__ = ("segment", "size_bytes")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    segment: str
    size_bytes: int
    def __init__(self, segment: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("header", "chunk", "done", "shared", "parts")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    header: _tensor_pb2.TensorHeader
    chunk: _tensor_pb2.TensorChunk
    done: CaptureDone
    shared: SharedTensors
    parts: CaptureParts
    def __init__(self, header: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., done: _Optional[_Union[CaptureDone, _Mapping]] = ..., shared: _Optional[_Union[SharedTensors, _Mapping]] = ..., parts: _Optional[_Union[CaptureParts, _Mapping]] = ...) -> None: ...

class CaptureParts(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[CaptureResponse]
    def __init__(self, parts: _Optional[_Iterable[_Union[CaptureResponse, _Mapping]]] = ...) -> None: ...

class SharedTensors(_message.Message):
    __slots__ = ("segment", "size_bytes", "tensors", "reusable", "file", "file_inode")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    REUSABLE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FILE_INODE_FIELD_NUMBER: _ClassVar[int]
    segment: str
    size_bytes: int
    tensors: _containers.RepeatedCompositeFieldContainer[SharedTensor]
    reusable: bool
    file: str
    file_inode: int
    def __init__(self, segment: _Optional[str] = ..., size_bytes: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[SharedTensor, _Mapping]]] = ..., reusable: _Optional[bool] = ..., file: _Optional[str] = ..., file_inode: _Optional[int] = ...) -> None: ...

class SharedTensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "total_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    total_bytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class CaptureDone(_message.Message):
    __slots__ = ("num_tensors", "total_bytes", "device", "forward_time", "input_segment")
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TIME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    num_tensors: int
    total_bytes: int
    device: str
    forward_time: _duration_pb2.Duration
    input_segment: InputSegment
    def __init__(self, num_tensors: _Optional[int] = ..., total_bytes: _Optional[int] = ..., device: _Optional[str] = ..., forward_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., input_segment: _Optional[_Union[InputSegment, _Mapping]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("number", "integer", "flag", "text")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    flag: bool
    text: str
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., flag: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class ParamSpec(_message.Message):
    __slots__ = ("name", "type", "default", "description", "min", "max", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default: Value
    description: str
    min: float
    max: float
    choices: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default: _Optional[_Union[Value, _Mapping]] = ..., description: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., choices: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class MetricInfo(_message.Message):
    __slots__ = ("name", "description", "citation", "params", "needs", "layer_kinds", "result_kinds", "plugin", "plugin_version", "reconstructed", "extension", "summary_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CITATION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NEEDS_FIELD_NUMBER: _ClassVar[int]
    LAYER_KINDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_KINDS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTED_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    citation: str
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    needs: _containers.RepeatedScalarFieldContainer[str]
    layer_kinds: _containers.RepeatedScalarFieldContainer[str]
    result_kinds: _containers.RepeatedScalarFieldContainer[str]
    plugin: str
    plugin_version: str
    reconstructed: bool
    extension: bool
    summary_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., citation: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ..., needs: _Optional[_Iterable[str]] = ..., layer_kinds: _Optional[_Iterable[str]] = ..., result_kinds: _Optional[_Iterable[str]] = ..., plugin: _Optional[str] = ..., plugin_version: _Optional[str] = ..., reconstructed: _Optional[bool] = ..., extension: _Optional[bool] = ..., summary_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ListMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMetricsResponse(_message.Message):
    __slots__ = ("metrics", "datasets", "plugin_errors")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_ERRORS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricInfo]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    plugin_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, metrics: _Optional[_Iterable[_Union[MetricInfo, _Mapping]]] = ..., datasets: _Optional[_Iterable[str]] = ..., plugin_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricRequest(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.MessageMap[str, Value]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class AnalyzeConfig(_message.Message):
    __slots__ = ("models", "metrics", "layers", "dataset", "split", "batch_size", "seed", "sample_limit", "expected_samples", "label", "exclude", "data_specs", "metric_timeout")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    DATA_SPECS_FIELD_NUMBER: _ClassVar[int]
    METRIC_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricRequest]
    layers: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    split: str
    batch_size: int
    seed: int
    sample_limit: int
    expected_samples: int
    label: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    data_specs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    metric_timeout: _duration_pb2.Duration
    def __init__(self, models: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[_Union[MetricRequest, _Mapping]]] = ..., layers: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., split: _Optional[str] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., sample_limit: _Optional[int] = ..., expected_samples: _Optional[int] = ..., label: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ..., data_specs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., metric_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DataBatch(_message.Message):
    __slots__ = ("inputs", "labels")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    labels: _tensor_pb2.Tensor
    def __init__(self, inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class AnalyzeRequest(_message.Message):
    __slots__ = ("config", "batch")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    config: AnalyzeConfig
    batch: DataBatch
    def __init__(self, config: _Optional[_Union[AnalyzeConfig, _Mapping]] = ..., batch: _Optional[_Union[DataBatch, _Mapping]] = ...) -> None: ...

class Curve(_message.Message):
    __slots__ = ("x", "y", "x_label", "y_label")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    X_LABEL_FIELD_NUMBER: _ClassVar[int]
    Y_LABEL_FIELD_NUMBER: _ClassVar[int]
    x: _tensor_pb2.Tensor
    y: _tensor_pb2.Tensor
    x_label: str
    y_label: str
    def __init__(self, x: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., y: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., x_label: _Optional[str] = ..., y_label: _Optional[str] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "numbers", "strings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    numbers: _tensor_pb2.Tensor
    strings: StringList
    def __init__(self, name: _Optional[str] = ..., numbers: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., strings: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("columns",)
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    def __init__(self, columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ...) -> None: ...

class Graph(_message.Message):
    __slots__ = ("num_nodes", "sources", "targets", "weights", "directed", "nodes")
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    num_nodes: int
    sources: _tensor_pb2.Tensor
    targets: _tensor_pb2.Tensor
    weights: _tensor_pb2.Tensor
    directed: bool
    nodes: Table
    def __init__(self, num_nodes: _Optional[int] = ..., sources: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., targets: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., directed: _Optional[bool] = ..., nodes: _Optional[_Union[Table, _Mapping]] = ...) -> None: ...

class ResultItem(_message.Message):
    __slots__ = ("key", "scalar", "tensor", "curve", "table", "text", "graph", "flag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCALAR_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    scalar: float
    tensor: _tensor_pb2.Tensor
    curve: Curve
    table: Table
    text: str
    graph: Graph
    flag: bool
    def __init__(self, key: _Optional[str] = ..., scalar: _Optional[float] = ..., tensor: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., curve: _Optional[_Union[Curve, _Mapping]] = ..., table: _Optional[_Union[Table, _Mapping]] = ..., text: _Optional[str] = ..., graph: _Optional[_Union[Graph, _Mapping]] = ..., flag: _Optional[bool] = ...) -> None: ...

class MetricResult(_message.Message):
    __slots__ = ("metric", "layer", "checkpoint", "status", "error", "items", "warnings", "params", "num_samples", "duration")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    metric: str
    layer: str
    checkpoint: int
    status: str
    error: str
    items: _containers.RepeatedCompositeFieldContainer[ResultItem]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    params: _containers.MessageMap[str, Value]
    num_samples: int
    duration: _duration_pb2.Duration
    def __init__(self, metric: _Optional[str] = ..., layer: _Optional[str] = ..., checkpoint: _Optional[int] = ..., status: _Optional[str] = ..., error: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ResultItem, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., params: _Optional[_Mapping[str, Value]] = ..., num_samples: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    message: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("id", "status", "config", "model_ids", "num_samples", "plugin_versions", "error", "num_results", "num_failed", "model_names", "created_time", "finished_time", "duration")
    class PluginVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NUM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NUM_FAILED_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: RunStatus
    config: AnalyzeConfig
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    num_samples: int
    plugin_versions: _containers.ScalarMap[str, str]
    error: str
    num_results: int
    num_failed: int
    model_names: _containers.RepeatedScalarFieldContainer[str]
    created_time: _timestamp_pb2.Timestamp
    finished_time: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., config: _Optional[_Union[AnalyzeConfig, _Mapping]] = ..., model_ids: _Optional[_Iterable[str]] = ..., num_samples: _Optional[int] = ..., plugin_versions: _Optional[_Mapping[str, str]] = ..., error: _Optional[str] = ..., num_results: _Optional[int] = ..., num_failed: _Optional[int] = ..., model_names: _Optional[_Iterable[str]] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("started", "progress", "result", "finished")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    started: RunInfo
    progress: Progress
    result: MetricResult
    finished: RunInfo
    def __init__(self, started: _Optional[_Union[RunInfo, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[MetricResult, _Mapping]] = ..., finished: _Optional[_Union[RunInfo, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("info", "results")
    INFO_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    info: RunInfo
    results: _containers.RepeatedCompositeFieldContainer[MetricResult]
    def __init__(self, info: _Optional[_Union[RunInfo, _Mapping]] = ..., results: _Optional[_Iterable[_Union[MetricResult, _Mapping]]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ...) -> None: ...
