"""Model formats: detection and loading. One module per format behind ``Backend``."""

from .base import Backend, CaptureRequest, RunOutput

__all__ = ["Backend", "CaptureRequest", "RunOutput"]
