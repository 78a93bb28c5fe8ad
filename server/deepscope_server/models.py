"""The server's models: uploads (validated by loading), the model directory, and a cache of loaded backends.

A loaded model is shared by concurrent requests; its lock serialises calls into the backend
(onnxruntime sessions and torch modules with hooks are not safe to drive from many threads).

Before a loader sees a file, ``preflight`` checks what it would allocate from what the file
declares: ONNX tensors over ``max_tensor_elements`` and zip archives (.pt2, TorchScript) whose
members would decompress past ``max_model_bytes`` or at bomb-like ratios are refused first.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backends import Backend, CaptureRequest, Inputs, LayerWeights, RunOutput
from .backends.detect import detect_format, load_model
from .config import Limits
from .errors import DeadlineExceeded, DeepscopeError, InvalidInput, LimitExceeded, NotFound, shorten, unknown
from .isolation import RunCancelled
from .sandbox import SandboxedBackend
from .store import Store, StoredModel, utc_now

Cancel = Callable[[], bool] | None  #: asked between steps: True stops the call

#: Loaders are not all thread-safe (torch.export.load keeps a global deserializer: two at once fail
#: with "_CURRENT_DESERIALIZER is already set"); in-process loading is one file at a time. Sandboxed
#: workers each load in their own process, so one slow load never blocks another.
_LOAD_LOCK = threading.Lock()


def load_checked(path: Path, limits: Limits, device: str, trusted: bool) -> Backend:
    """Preflight, then load (in whichever process calls it)."""
    with _LOAD_LOCK:
        preflight(path, limits)
        return load_model(path, device=device, trusted=trusted, threads=limits.ort_threads)  # ONNX only


def load_backend(path: Path, limits: Limits, device: str, trusted: bool, isolation: str) -> Backend:
    """A backend for ``path``: in a sandboxed worker process, or in this process (``thread``)."""
    if isolation == "process":
        return SandboxedBackend.load(path, device=device, trusted=trusted, limits=limits)
    return load_checked(path, limits, device, trusted)


#: A zip member expanding more than this many times is treated as a decompression bomb...
MAX_COMPRESSION_RATIO = 200
#: ...once it expands past this size (small, very compressible members are normal).
BOMB_MIN_BYTES = 16 << 20


def _zip_sizes(path: Path, limits: Limits) -> None:
    """Refuse archives that would decompress past ``max_model_bytes`` or look like decompression bombs."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"model file '{path.name}' is a damaged zip archive: {exc}") from None
    total = sum(m.file_size for m in members)
    if total > limits.max_model_bytes:
        raise LimitExceeded(
            f"max_model_bytes (uncompressed size of archive '{path.name}')", limits.max_model_bytes, total
        )
    for m in members:
        if m.file_size > BOMB_MIN_BYTES and m.file_size > MAX_COMPRESSION_RATIO * max(m.compress_size, 1):
            raise InvalidInput(
                f"archive member '{m.filename}' of '{path.name}' expands {m.file_size:,} bytes from "
                f"{m.compress_size:,} (ratio > {MAX_COMPRESSION_RATIO}): refused as a decompression bomb"
            )


def preflight(path: Path, limits: Limits) -> None:
    """Cheap checks of what a file declares, so no loader allocates from absurd sizes."""
    fmt = detect_format(path)
    if fmt == "onnx":
        from .backends import onnx_safety

        # Every tensor: subgraphs, function bodies, sparse (dense shape) and list-valued attributes.
        onnx_safety.check_sizes(onnx_safety.parse(path), limits.max_tensor_elements)
    elif fmt in ("pt2", "torchscript", "torch_pickle") and zipfile.is_zipfile(path):
        _zip_sizes(path, limits)


@dataclass
class LoadedModel:
    """A catalogued model with its backend; ``run`` holds the model's lock."""

    stored: StoredModel
    source: str
    backend: Backend
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def graph(self):  # ModelGraph
        return self.backend.graph

    def run(
        self,
        inputs: Inputs,
        capture: Sequence[CaptureRequest] = (),
        *,
        cancelled: Cancel = None,
        deadline: float | None = None,
        borrow: bool = False,
    ) -> RunOutput:
        """Run one batch. ``cancelled`` / ``deadline`` (time.monotonic) stop a sandboxed forward pass;
        ``borrow``: a sandboxed model may return read-only arrays in buffers it reuses once they are
        dropped (``SandboxedBackend.run``), for a caller that only reads them."""
        return self._call("run", (inputs, capture), cancelled, deadline, {"borrow": True} if borrow else {})

    def run_with_weights(
        self,
        inputs: Inputs,
        weights: LayerWeights,
        capture: Sequence[CaptureRequest] = (),
        *,
        cancelled: Cancel = None,
        deadline: float | None = None,
    ) -> RunOutput:
        """``run`` with some layers' weights replaced (``Backend.run_with_weights``)."""
        return self._call("run_with_weights", (inputs, weights, capture), cancelled, deadline)

    def _call(
        self,
        method: str,
        args: tuple[object, ...],
        cancelled: Cancel,
        deadline: float | None,
        sandbox_options: dict[str, bool] | None = None,
    ) -> RunOutput:
        """One call at a time: a sandbox stops it on ``cancelled`` / ``deadline``; in process it is only not started."""
        with self.lock:
            if isinstance(self.backend, SandboxedBackend):
                options = sandbox_options or {}
                return getattr(self.backend, method)(*args, cancelled=cancelled, deadline=deadline, **options)
            _check_before(cancelled, deadline)
            return getattr(self.backend, method)(*args)


def _check_before(cancelled: Cancel, deadline: float | None) -> None:
    """In-process models cannot be interrupted: at least do not start a call that is already over."""
    if cancelled is not None and cancelled():
        raise RunCancelled("cancelled before the forward pass")
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the call's deadline passed before the forward pass started")


class ModelManager:
    """Uploads, lookups and the backend cache (least recently used models are closed first)."""

    def __init__(
        self,
        store: Store,
        model_dir: Path | None = None,
        trust_model_dir: bool = False,
        device: str = "auto",
        cache_size: int = 8,
        limits: Limits | None = None,
        isolation: str = "process",
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.model_dir = Path(model_dir) if model_dir else None
        self.trust_model_dir = trust_model_dir
        self.device = device
        self.cache_size = cache_size
        self.isolation = isolation
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._dir_ids: dict[tuple[str, int, int], str] = {}
        #: How references (ids, names, id prefixes) resolved to loaded uploads, so a repeated
        #: Capture neither lists the catalogue nor builds paths. Cleared whenever the catalogue
        #: changes; a lookup that overlapped a change (``_generation`` moved) records nothing.
        self._resolved: dict[str, str] = {}
        self._generation = 0

    # ------------------------------------------------------------ uploads

    def upload(
        self, name: str, chunks: Iterable[bytes], max_bytes: int, declared_bytes: int | None, declared_sha256: str = ""
    ) -> LoadedModel:
        """Store the bytes, then load them: a file that does not load is removed, never catalogued."""
        model_id, path, size = self.store.write_model(name, chunks, max_bytes, declared_bytes, declared_sha256)
        loaded = self.cached(model_id)
        if loaded is not None and loaded.source == "upload":
            # The same bytes were already loaded as an (untrusted) upload: nothing new to validate.
            # Never reuse a model-directory load: it may have been trusted (a pickle).
            self.store.add_model(model_id, name, loaded.stored.format, size, path)
            self._forget_references()  # the name may now mean this model
            return loaded
        try:
            backend = load_backend(path, self.limits, self.device, False, self.isolation)
        except DeepscopeError:
            self.store.discard_file(path)
            raise
        except Exception as exc:  # a loader's own error means the bytes are not a usable model
            self.store.discard_file(path)
            raise InvalidInput(f"'{name}' is not a loadable model: {type(exc).__name__}: {exc}") from exc
        stored = self.store.add_model(model_id, name, backend.format, size, path)
        self._forget_references()  # the name may now mean this model
        return self._remember(LoadedModel(stored, "upload", backend))

    # ------------------------------------------------------------ lookups

    def get(self, ref: str) -> LoadedModel:
        """By id, id prefix or name; uploads first, then files in the model directory."""
        if not ref:
            raise InvalidInput("no model given: pass a model id or name (see ListModels)")
        loaded = self.loaded_upload(ref)
        if loaded is not None:
            return loaded
        generation = self._generation
        try:
            stored, source, trusted = self.store.find_model(ref), "upload", False
        except NotFound as not_found:
            found = self._find_in_model_dir(ref)
            if found is None:
                raise not_found from None
            stored, source, trusted = found, "model_dir", self.trust_model_dir
        with self._lock:
            if stored.id in self._cache:
                self._cache.move_to_end(stored.id)
                if source == "upload" and generation == self._generation:
                    self._resolved[ref] = stored.id
                return self._cache[stored.id]
        try:
            backend = load_backend(stored.path, self.limits, self.device, trusted, self.isolation)
        except DeepscopeError:
            raise
        except Exception as exc:
            raise InvalidInput(f"model '{shorten(ref)}' failed to load: {type(exc).__name__}: {exc}") from exc
        if source == "model_dir":
            stored = StoredModel(
                stored.id, stored.name, backend.format, stored.size_bytes, stored.created_at, stored.path
            )
        return self._remember(LoadedModel(stored, source, backend))

    def source(self, stored: StoredModel) -> str:
        """Where a listed model comes from: "model_dir" (a file of the model directory) or "upload"."""
        return "model_dir" if self.model_dir is not None and stored.path.parent == self.model_dir else "upload"

    def list(self) -> list[LoadedModel | StoredModel]:
        """Catalogued uploads and model-directory files (not loaded unless cached)."""
        entries: list[LoadedModel | StoredModel] = list(self.store.models())
        entries += self._model_dir_files()
        return entries

    def loaded_upload(self, ref: str) -> LoadedModel | None:
        """The loaded upload ``ref`` resolved to before (its id, name or an id prefix), without
        reading the catalogue: no SQLite, no paths, cheap enough for the event loop. Uploads only:
        a model-directory file may change on disk, so those are looked up each time."""
        with self._lock:
            model_id = self._resolved.get(ref)
            loaded = self._cache.get(model_id) if model_id is not None else None
            if loaded is None or loaded.source != "upload":
                return None
            self._cache.move_to_end(loaded.stored.id)
            return loaded

    def _forget_references(self) -> None:
        with self._lock:
            self._resolved.clear()
            self._generation += 1

    def cached(self, model_id: str) -> LoadedModel | None:
        with self._lock:
            return self._cache.get(model_id)

    def delete(self, ref: str) -> bool:
        stored = self.store.find_model(ref)
        self._forget_references()
        with self._lock:
            loaded = self._cache.pop(stored.id, None)
        if loaded is not None:
            with loaded.lock:
                loaded.backend.close()
        deleted = self.store.delete_model(stored.id)
        self._forget_references()  # a lookup that raced the delete must not be remembered
        return deleted

    def close(self) -> None:
        with self._lock:
            for loaded in self._cache.values():
                loaded.backend.close()
            self._cache.clear()

    # ------------------------------------------------------------ internals

    def _remember(self, loaded: LoadedModel) -> LoadedModel:
        with self._lock:
            existing = self._cache.get(loaded.stored.id)
            if existing is not None:
                loaded.backend.close()
                self._cache.move_to_end(loaded.stored.id)
                return existing
            self._cache[loaded.stored.id] = loaded
            while len(self._cache) > self.cache_size:
                _, evicted = self._cache.popitem(last=False)
                evicted.backend.close()
        return loaded

    def _model_dir_files(self) -> list[StoredModel]:
        if not self.model_dir or not self.model_dir.is_dir():
            return []
        files = sorted(p for p in self.model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        models = []
        for path in files:
            if path.suffix in (".data", ".bin") or path.name.endswith(".onnx.data"):
                continue  # ONNX external-data side files
            st = path.stat()
            key = (str(path), st.st_size, st.st_mtime_ns)
            if key not in self._dir_ids:
                digest = hashlib.sha256()
                with path.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                self._dir_ids[key] = digest.hexdigest()
            models.append(
                StoredModel(self._dir_ids[key], path.name, path.suffix.lstrip(".") or "?", st.st_size, utc_now(), path)
            )
        return models

    def _find_in_model_dir(self, ref: str) -> StoredModel | None:
        files = self._model_dir_files()
        for model in files:
            if ref in (model.id, model.name, Path(model.name).stem) or (len(ref) >= 8 and model.id.startswith(ref)):
                return model
        if files:
            names = [m.name for m in files] + [m.name for m in self.store.models()]
            raise unknown("model", ref, names)
        return None
