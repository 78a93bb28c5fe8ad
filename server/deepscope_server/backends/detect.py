"""Model format detection by content (never by file extension) and the one loading entry point."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import InvalidInput
from .base import Backend

#: Formats ``detect_format`` reports.
FORMATS = ("onnx", "pt2", "torchscript", "torch_pickle")


def detect_format(path: str | Path) -> str:
    """``onnx`` (protobuf), ``pt2`` / ``torchscript`` / ``torch_pickle`` (zip archives or legacy pickles).

    Raises InvalidInput for anything else, including truncated or corrupt files.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InvalidInput(f"cannot read model file '{path.name}': {exc.strerror}") from None
    if not head:
        raise InvalidInput(f"model file '{path.name}' is empty")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidInput(f"model file '{path.name}' is a damaged zip archive: {exc}") from None
        if any(n.endswith("archive_format") or "serialized_exported_program" in n for n in names):
            return "pt2"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_pickle"
        raise InvalidInput(f"zip archive '{path.name}' is not a torch.export (.pt2), TorchScript or torch.save file")
    if head[:1] == b"\x80":  # legacy (non-zip) torch.save: a bare pickle stream
        return "torch_pickle"
    if head[:1] == b"\x08":  # ONNX ModelProto starts with field 1 (ir_version, varint)
        return "onnx"
    raise InvalidInput(f"unrecognised model format in '{path.name}'; supported: ONNX, torch.export (.pt2), TorchScript")


def _is_state_dict(path: Path) -> bool:
    """True when the pickle holds only tensors (safe to check: ``weights_only=True`` runs no code)."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # refused globals (a module class) or corrupt data
        return False
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_model(path: str | Path, *, device: str = "auto", trusted: bool = False, **options) -> Backend:  # type: ignore[no-untyped-def]
    """Detect the format of ``path`` and load it with the matching backend.

    ``trusted`` allows pickled full modules (they execute code when loaded): server-side files only.
    ``options`` go to the backend (e.g. ``allowed_domains`` for ONNX).
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend.load(path, device=device, trusted=trusted, **options)
    from . import torch_backend as tb

    if fmt == "pt2":
        return tb.ExportedProgramBackend.load(path, device=device, trusted=trusted)
    if fmt == "torchscript":
        return tb.TorchScriptBackend.load(path, device=device, trusted=trusted)
    if _is_state_dict(path):
        raise InvalidInput(
            f"'{path.name}' holds weights only, no architecture (a state_dict); load it into the model and "
            "export with torch.export (.pt2) or to ONNX"
        )
    return tb.PickledModuleBackend.load(path, device=device, trusted=trusted)
