"""Generated protocol code (do not edit; run `python proto/generate.py`)."""
