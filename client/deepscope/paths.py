"""Where a model's side files may be: one rule for the SDK (which files it uploads next to an ONNX
model) and the server (which external-data locations it refuses), so the two never disagree.

Light on purpose (pathlib only), like ``deepscope.text``: the server imports it too.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


def side_file(root: Path, location: str, owner: str) -> Path:
    """The file that ``location`` names inside the model's directory ``root``; ``owner`` (``tensor 'w'``)
    starts the error messages.

    ValueError when the location is empty, absolute, has a drive or a ``..`` component, or resolves
    (through a symlink) outside ``root``; FileNotFoundError when no such file is there.
    """
    windows = PureWindowsPath(location)
    if (
        not location
        or location.startswith(("/", "\\"))
        or windows.drive
        or ".." in PurePosixPath(location.replace("\\", "/")).parts
    ):
        raise ValueError(
            f"{owner} keeps its data at '{location}', outside the model's directory; "
            "external data must be a relative path next to the .onnx file"
        )
    root = root.resolve()
    resolved = (root / location).resolve()
    if root not in resolved.parents:
        raise ValueError(f"{owner} keeps its data at '{location}', which resolves outside the model's directory")
    if not resolved.is_file():
        raise FileNotFoundError(f"{owner}: external data file '{location}' not found next to the model")
    return resolved
