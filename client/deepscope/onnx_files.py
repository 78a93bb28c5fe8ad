"""The external-data files an ONNX model references (``torch.onnx.export`` writes ``net.onnx.data``).

Read with a subset of onnx.proto (``onnx_refs/onnx_refs_pb2``, same field numbers) so the SDK needs no
onnx package: only the tensors' ``external_data`` entries are decoded, everything else is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from .onnx_refs import onnx_refs_pb2 as onnx_refs
from .paths import side_file

EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


def _tensors(message: Message) -> Iterator[onnx_refs.TensorProto]:
    """Every TensorProto anywhere in the model: initializers, attributes, subgraphs, functions."""
    if isinstance(message, onnx_refs.TensorProto):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        for item in value if descriptor.is_repeated else (value,):
            yield from _tensors(item)


def external_data_files(model_path: Path) -> list[str]:
    """Relative paths (as the model names them) of the files holding its external data, in first-use order.

    Only files inside the model's own directory qualify: an absolute path, a ``..`` component or a
    symlink leading elsewhere raises ValueError; a missing file raises FileNotFoundError. Not an
    ONNX file (by suffix) or not parseable: no side files (the server says what is wrong with it).
    """
    model_path = Path(model_path)
    if model_path.suffix.lower() != ".onnx":
        return []
    model = onnx_refs.ModelProto()
    try:
        model.ParseFromString(model_path.read_bytes())
    except DecodeError:
        return []
    root = model_path.parent.resolve()
    found: dict[str, None] = {}
    for tensor in _tensors(model):
        if tensor.data_location != EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location in found:
            continue
        side_file(root, location, f"{model_path.name}: tensor '{tensor.name}'")  # only files next to the model
        found[location] = None
    return list(found)
