"""Checks of an untrusted ONNX model before onnxruntime sees it: every tensor, node and graph.

An ONNX model holds tensors and nodes in more places than ``graph.initializer`` and
``graph.node``: subgraphs of If/Loop/Scan (graph attributes, nested to any depth), function
bodies (``model.functions``, with their own nested subgraphs and default attributes), sparse
initializers (which onnxruntime densifies: a few bytes can declare a huge dense shape), tensor,
tensor-list and sparse-tensor attributes, and training-info graphs. onnxruntime would catch some
problems, but late (after allocating) or not at all (external data it resolves against its own
working directory), so one walk here visits them all, iteratively (no recursion limit to hit),
and the checks below use it:

- declared element counts (dense shape of sparse tensors included) against ``max_tensor_elements``;
- external data: only relative paths that stay inside the model's directory, loaded here for every
  tensor (onnx's own loader skips sparse tensors), so none is left for onnxruntime to resolve;
- operator domains: a node must use a built-in domain or call a function the model defines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_tensor

from deepscope.paths import side_file

from ..errors import InvalidInput, LimitExceeded

#: Operator domains onnxruntime implements natively; anything else needs a custom-op library.
DEFAULT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True)
class Found:
    """A tensor with where it was found (for messages) and, when sparse, its declared dense shape."""

    tensor: onnx.TensorProto
    where: str
    dense_dims: tuple[int, ...] | None = None


def _graphs_of(attr: onnx.AttributeProto) -> list[tuple[str, onnx.GraphProto]]:
    """Graphs held by an attribute, labelled; by field, not by attr.type (a reader may honour either)."""
    single = [("", attr.g)] if attr.HasField("g") else []
    return single + [(f"[{k}]", g) for k, g in enumerate(attr.graphs)]


def _attributes(g: onnx.GraphProto | onnx.FunctionProto) -> list[tuple[str, onnx.AttributeProto]]:
    """Node attributes of one graph or function body (and a function's default attributes), by owner."""
    attrs = [(n.name or n.op_type, a) for n in g.node for a in n.attribute]
    if isinstance(g, onnx.FunctionProto):
        attrs += [("default", a) for a in g.attribute_proto]
    return attrs


def walk(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto | onnx.FunctionProto]]:
    """Every graph and function body in the model (subgraphs to any depth), with a readable path."""
    stack: list[tuple[str, onnx.GraphProto | onnx.FunctionProto]] = [("graph", model.graph)]
    stack += [(f"function '{f.domain}.{f.name}'", f) for f in model.functions]
    for i, info in enumerate(model.training_info):
        stack += [
            (f"training_info[{i}].initialization", info.initialization),
            (f"training_info[{i}].algorithm", info.algorithm),
        ]
    while stack:
        where, g = stack.pop()
        yield where, g
        for owner, attr in _attributes(g):
            for label, sub in _graphs_of(attr):
                stack.append((f"{where} > node '{owner}' attribute '{attr.name}'{label}", sub))


def nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node of every graph and function body."""
    for where, g in walk(model):
        for node in g.node:
            yield where, node


def tensors(model: onnx.ModelProto) -> Iterator[Found]:
    """Every stored tensor: initializers, sparse initializers, tensor/sparse attributes, anywhere."""
    for where, g in walk(model):
        if isinstance(g, onnx.GraphProto):
            for t in g.initializer:
                yield Found(t, f"{where} initializer")
            for s in g.sparse_initializer:
                yield from _sparse(s, f"{where} sparse initializer")
        for owner, a in _attributes(g):
            at = f"{where} node '{owner}' attribute '{a.name}'"
            if a.HasField("t"):
                yield Found(a.t, at)
            for t in a.tensors:
                yield Found(t, at)
            if a.HasField("sparse_tensor"):
                yield from _sparse(a.sparse_tensor, at)
            for s in a.sparse_tensors:
                yield from _sparse(s, at)


def _sparse(s: onnx.SparseTensorProto, where: str) -> Iterator[Found]:
    yield Found(s.values, where, tuple(int(d) for d in s.dims))
    yield Found(s.indices, f"{where} (indices)")


def _name(f: Found) -> str:
    return f"'{f.tensor.name}' ({f.where})" if f.tensor.name else f"in {f.where}"


def check_sizes(model: onnx.ModelProto, max_elements: int) -> None:
    """Refuse tensors whose declared shape (dense shape for sparse ones) exceeds ``max_elements``."""
    for f in tensors(model):
        for dims in ([int(d) for d in f.tensor.dims], list(f.dense_dims or ())):
            if any(d < 0 for d in dims):
                raise InvalidInput(f"ONNX tensor {_name(f)} declares a negative dimension: {dims}")
            count = math.prod(dims)
            if count > max_elements:
                raise LimitExceeded(
                    f"max_tensor_elements (ONNX tensor {_name(f)} declares shape {dims})",
                    max_elements,
                    count,
                    "elements",
                )


def check_external_data(model: onnx.ModelProto, directory: Path) -> list[onnx.TensorProto]:
    """Refuse external-data locations outside ``directory``; returns the tensors that use external data."""
    external = []
    root = directory.resolve()
    for f in tensors(model):
        if f.tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in f.tensor.external_data if e.key == "location"), "")
        try:
            side_file(root, location, f"tensor {_name(f)}")  # the SDK's rule for which files it uploads, too
        except (ValueError, OSError) as exc:
            raise InvalidInput(str(exc)) from None
        external.append(f.tensor)
    return external


def load_external_data(model: onnx.ModelProto, directory: Path) -> None:
    """Check, then read every external tensor into the model (none is left for onnxruntime to resolve)."""
    for tensor in check_external_data(model, directory):
        try:
            load_external_data_for_tensor(tensor, str(directory))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read external data of ONNX tensor '{tensor.name}': {exc}") from None


def check_domains(model: onnx.ModelProto, allowed: frozenset[str] | set[str]) -> None:
    """Refuse nodes from operator domains onnxruntime cannot run without custom-op code.

    A node in another domain is accepted only when it calls a function the model itself defines.
    """
    local = {(f.domain, f.name) for f in model.functions}
    for where, node in nodes(model):
        if node.domain not in allowed and (node.domain, node.op_type) not in local:
            raise InvalidInput(
                f"node '{node.name or node.op_type}' ({where}) uses operator '{node.op_type}' from custom domain "
                f"'{node.domain}', which needs a custom-op library; allowed domains: "
                f"{', '.join(repr(d) for d in sorted(allowed))}"
            )


def parse(path: Path) -> onnx.ModelProto:
    """The model proto without its external data; InvalidInput for anything protobuf cannot decode."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise
    except Exception as exc:  # the protobuf parser's own errors have many types
        if "alloc failed" in str(exc):  # upb's arena hit the worker's memory limit mid-parse
            raise MemoryError(f"parsing '{path.name}' needed more memory than allowed") from None
        raise InvalidInput(f"'{path.name}' is not a valid ONNX model: {type(exc).__name__}: {exc}") from None


__all__ = [
    "DEFAULT_DOMAINS",
    "check_domains",
    "check_external_data",
    "check_sizes",
    "load_external_data",
    "nodes",
    "parse",
    "tensors",
    "walk",
]
