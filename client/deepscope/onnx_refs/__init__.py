"""Generated from proto/deepscope/onnx_refs (do not edit; run `python proto/generate.py`)."""
