"""One upload written into the store: the model file plus its side files (ONNX external data).

The chunk stream of an upload carries the model's bytes, then for each side file a ``SideFile``
marker followed by that file's bytes. Every file goes to its own temporary file first; only a
complete, verified upload is moved into the model's directory, so a failed or cut-off upload
never leaves a partial model (or a partial side file) behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import InvalidInput, LimitExceeded

#: The model file's name inside its directory; no side file may take it.
MODEL_FILE = "model"
#: More side files than this is not a model as exporters write them (and would fill the inode table).
MAX_SIDE_FILES = 1024


@dataclass(frozen=True)
class SideFile:
    """Marker in an upload's chunk stream: the chunks after it are this side file's bytes."""

    path: str
    total_bytes: int
    sha256: str = ""


def side_path(path: str) -> PurePosixPath:
    """Where a side file goes inside the model directory; InvalidInput for anything that could escape it.

    The same rule the ONNX loader applies to external-data locations: relative, no ``..``.
    """
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or PureWindowsPath(path).drive
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InvalidInput(
            f"side file path '{path}' must be a relative path inside the model's directory ('/' separators, no '..')"
        )
    if path == MODEL_FILE or parts[0].startswith(".upload-"):
        raise InvalidInput(f"side file path '{path}' is reserved by the store; rename the external data file")
    return PurePosixPath(path)


def content_id(model_sha256: str, sides: Iterable[tuple[str, str]]) -> str:
    """The model id: the model's sha256, or with side files a sha256 over all (sha256, path) pairs."""
    sides = sorted(sides, key=lambda side: side[1])
    if not sides:
        return model_sha256
    text = model_sha256 + "\n" + "".join(f"{sha} {path}\n" for sha, path in sides)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Part:
    """One file of the upload as it is being received."""

    path: PurePosixPath | None  # None: the model itself
    declared_bytes: int | None
    declared_sha256: str
    tmp: Path
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0


class UploadWriter:
    """Receives an upload into temporary files in ``directory``; ``move_into`` publishes it."""

    def __init__(self, directory: Path, name: str, max_bytes: int) -> None:
        self.directory = directory
        self.name = name
        self.max_bytes = max_bytes
        self.parts: list[_Part] = []

    @property
    def total_bytes(self) -> int:
        return sum(part.size for part in self.parts)

    def write(self, chunks: Iterable[bytes | SideFile], declared_bytes: int | None, declared_sha256: str) -> None:
        """Stream every file to disk, checking the size limit (over all files) and each declared size/digest."""
        handle = self._open(None, declared_bytes, declared_sha256)
        try:
            for chunk in chunks:
                if isinstance(chunk, SideFile):
                    self._close(handle)
                    if len(self.parts) > MAX_SIDE_FILES:
                        raise InvalidInput(f"upload of '{self.name}' has more than {MAX_SIDE_FILES} side files")
                    path = side_path(chunk.path)
                    if any(part.path == path for part in self.parts):
                        raise InvalidInput(f"upload of '{self.name}' sends side file '{path}' twice")
                    handle = self._open(path, chunk.total_bytes, chunk.sha256)
                    continue
                part = self.parts[-1]
                part.size += len(chunk)
                if self.total_bytes > self.max_bytes:
                    raise LimitExceeded("max_model_bytes", self.max_bytes, self.total_bytes)
                part.digest.update(chunk)
                handle.write(chunk)
            self._close(handle)
        finally:
            handle.close()

    def model_id(self) -> str:
        model, *sides = self.parts
        return content_id(model.digest.hexdigest(), ((s.digest.hexdigest(), str(s.path)) for s in sides))

    def move_into(self, folder: Path) -> Path:
        """Rename every file into ``folder`` (side files first, the model last); returns the model's path."""
        folder.mkdir(exist_ok=True)
        model, *sides = self.parts
        for side in sides:
            dest = folder / side.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(side.tmp, dest)
        final = folder / MODEL_FILE
        os.replace(model.tmp, final)
        return final

    def discard(self) -> None:
        for part in self.parts:
            part.tmp.unlink(missing_ok=True)

    def _open(self, path: PurePosixPath | None, declared_bytes: int | None, declared_sha256: str):
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=self.directory)
        self.parts.append(_Part(path, declared_bytes, declared_sha256, Path(tmp_name)))
        return os.fdopen(fd, "wb")

    def _close(self, handle) -> None:  # the open temp file of the last part
        """Flush the current file to disk and check it against what its header declared."""
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        part = self.parts[-1]
        what = f"upload of '{self.name}'" + (f", side file '{part.path}'," if part.path else "")
        if part.declared_bytes is not None and part.declared_bytes != part.size:
            raise InvalidInput(f"{what} incomplete: header declared {part.declared_bytes:,} bytes, got {part.size:,}")
        actual = part.digest.hexdigest()
        if part.declared_sha256 and part.declared_sha256.lower() != actual:
            raise InvalidInput(f"{what} corrupted: sha256 {actual} does not match the declared {part.declared_sha256}")
