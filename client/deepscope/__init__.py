"""deepscope client SDK: connect to a server, upload models, capture activations, run metrics.

import deepscope
client = deepscope.connect("127.0.0.1:50051")     # or deepscope.Client.embedded()
model = client.upload_model("net.onnx")
acts = client.capture(model, x, layers=["fc1", "conv*"])
"""

__version__ = "0.1.0"

from .client import Activations, Client, Model, ServerInfo, connect
from .errors import (
    Cancelled,
    DeadlineExceeded,
    DeepscopeError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .results import GraphData, Run
from .values import Curve

__all__ = [
    "Activations",
    "Cancelled",
    "Client",
    "Curve",
    "DeadlineExceeded",
    "DeepscopeError",
    "FailedPrecondition",
    "FieldViolation",
    "GraphData",
    "Internal",
    "InvalidArgument",
    "Model",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Run",
    "ServerInfo",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "connect",
]
