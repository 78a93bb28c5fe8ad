"""The one small interface every model format implements (after Polygraphy's runners)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..model_graph import ModelGraph

CaptureWhat = Literal["output", "input"]


@dataclass(frozen=True)
class CaptureRequest:
    """Capture a layer's output, or its (first) input, which is the pre-activation for activation layers."""

    layer: str
    what: CaptureWhat = "output"


@dataclass
class RunOutput:
    """Model outputs by output name and captured tensors by request. Arrays are owned (safe to keep)."""

    outputs: dict[str, np.ndarray]
    captured: dict[CaptureRequest, np.ndarray] = field(default_factory=dict)


class Backend(abc.ABC):
    """A loaded model that can describe itself and run batches with capture.

    Implementations must: validate inputs against ``graph.inputs`` (raise InvalidInput with
    expected vs got), return every requested capture or raise naming the missing one, and be
    safe to call from one thread at a time (the service serialises calls per model).
    """

    format: ClassVar[str]
    graph: ModelGraph
    device: str

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path, *, device: str = "auto", trusted: bool = False) -> "Backend":
        """Load the model at ``path``. ``trusted`` allows formats that can execute code (server-side files only)."""

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        """Run one batch; the model is in eval mode."""

    @abc.abstractmethod
    def run_with_weights(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, Mapping[str, np.ndarray]],
        capture: Sequence[CaptureRequest] = (),
    ) -> RunOutput:
        """Run with some layers' weights temporarily replaced ({layer: {"weight": W, ...}}, PyTorch layout)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
