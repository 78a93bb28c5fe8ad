"""Regenerate the committed Python code from the .proto files: ``python proto/generate.py``.

Writes ``client/deepscope/v1/*_pb2*.py`` (importable as ``deepscope.v1``; the SDK's private subset
of onnx.proto goes to ``deepscope/onnx_refs``, outside the service's package) and
``descriptors.binpb``, a FileDescriptorSet with the comments that server reflection serves. ``--out DIR``
writes elsewhere (the staleness test compares a fresh generation with the committed files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "client"
#: The protocol's descriptors with their comments (source info), served by reflection.
DESCRIPTOR_SET = "descriptors.binpb"


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto file; return the generated Python files."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    (out / "deepscope" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "--include_source_info",
        "--include_imports",
        f"--descriptor_set_out={out / 'deepscope' / 'v1' / DESCRIPTOR_SET}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted([*(out / "deepscope").rglob("*_pb2*.py*"), out / "deepscope" / "v1" / DESCRIPTOR_SET])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    sys.exit(main())
