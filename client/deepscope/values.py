"""Python scalars <-> the wire ``Value`` (metric parameters), shared by client and server."""

from __future__ import annotations

from typing import Any

import numpy as np

from .v1 import introspection_pb2 as pb


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
