"""Model formats: detection and loading. One module per format behind ``Backend``."""

from .base import Backend, CaptureRequest, Inputs, LayerWeights, RunOutput
from .detect import detect_format, load_model

__all__ = ["Backend", "CaptureRequest", "Inputs", "LayerWeights", "RunOutput", "detect_format", "load_model"]
