"""Value types shared by client and server: the wire ``Value`` (metric parameters) and ``Curve``.

The server imports these (never the SDK's ``results``), so plugins and the SDK use one ``Curve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .v1 import introspection_pb2 as pb


@dataclass(frozen=True)
class Curve:
    """y(x) with axis labels (a KDE, FVU(K), N_B(l_B), ...)."""

    x: np.ndarray
    y: np.ndarray
    x_label: str = "x"
    y_label: str = "y"


def to_value(value: Any) -> pb.Value:
    """bool, int, float or str as a typed Value; TypeError for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return pb.Value(flag=bool(value))
    if isinstance(value, (int, np.integer)):
        return pb.Value(integer=int(value))
    if isinstance(value, (float, np.floating)):
        return pb.Value(number=float(value))
    if isinstance(value, str):
        return pb.Value(text=value)
    raise TypeError(f"parameter values must be bool, int, float or str; got {type(value).__name__}")


def from_value(value: pb.Value) -> Any:
    """The Python scalar in a Value (None when unset)."""
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)
