"""deepscope server: loads models, captures activations and runs metric plugins over gRPC."""

__version__ = "0.1.0"
