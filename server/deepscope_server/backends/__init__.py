"""Model formats: detection and loading. One module per format behind ``Backend``."""

from .base import Backend, CaptureRequest, RunOutput
from .detect import detect_format, load_model

__all__ = ["Backend", "CaptureRequest", "RunOutput", "detect_format", "load_model"]
